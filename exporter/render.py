"""Exposition: metric families to bytes, once per refresh.

Text format 0.0.4 and OpenMetrics 1.0 are written here: OpenMetrics byte for byte what
prometheus_client's writer gives, text sample for sample (tests/test_render_openmetrics.py
compares them). Importing prometheus_client in the exporter costs about 3 MB of peak RSS, and
under 40 MB at 5,000 processes is a README target (docs/design.md has the figures).
"""
from .families import float_to_go as floatToGoString

TEXT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
OPENMETRICS_TYPE = "application/openmetrics-text; version=1.0.0; charset=utf-8"


def _escape_label(v):
    if "\\" in v or "\n" in v or '"' in v:
        v = v.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')
    return v


def _escape_help(v):
    return v.replace("\\", "\\\\").replace("\n", "\\n")


def _value(v):
    if type(v) is int:
        return str(v)
    return floatToGoString(v)


def text_parts(families):
    """[(family name, HELP/TYPE header, sample lines)] for every family that has samples.

    Kept apart so a scrape can join families that several collectors emit (NVIDIA and AMD
    GPUs share the gpu families) under one header.
    """
    out = []
    for fam in families:
        if not fam.samples:
            continue
        name = fam.name + "_total" if fam.type == "counter" else fam.name
        kind = fam.type if fam.type in ("counter", "gauge", "histogram", "summary") else "untyped"
        head = f"# HELP {name} {_escape_help(fam.documentation)}\n# TYPE {name} {kind}\n"
        lines = []
        for s in fam.samples:
            if s.labels:
                labels = ",".join(f'{k}="{_escape_label(v)}"' for k, v in s.labels.items())
                lines.append(f"{s.name}{{{labels}}} {_value(s.value)}\n")
            else:
                lines.append(f"{s.name} {_value(s.value)}\n")
        out.append((name, head.encode("utf-8"), "".join(lines).encode("utf-8")))
    return out


def join_parts(part_lists):
    """One exposition from several text_parts lists: each family's header once, samples merged."""
    merged, order = {}, []
    for parts in part_lists:
        for name, head, lines in parts:
            chunks = merged.get(name)
            if chunks is None:
                merged[name] = [head, lines]
                order.append(name)
            else:
                chunks.append(lines)
    return b"".join(b"".join(merged[n]) for n in order)


def text(families):
    """Render families as Prometheus text format 0.0.4."""
    return join_parts([text_parts(families)])


def _escape_om(v):
    if "\\" in v or "\n" in v or '"' in v:
        v = v.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')
    return v


def openmetrics_parts(families):
    """Like text_parts, in OpenMetrics 1.0 (what Prometheus asks for first); same bytes as
    prometheus_client's writer, about 10x faster. Samples with a timestamp or an exemplar go
    through prometheus_client's writer."""
    out = []
    for fam in families:
        if not fam.samples:
            continue
        if any(s.timestamp is not None or s.exemplar or getattr(s, "native_histogram", None)
               for s in fam.samples):
            n = 3 if fam.unit else 2           # HELP, TYPE, UNIT lines, then the samples
            chunks = openmetrics([fam]).split(b"\n", n)
            out.append((fam.name, b"\n".join(chunks[:n]) + b"\n", chunks[n]))
            continue
        head = f"# HELP {fam.name} {_escape_om(fam.documentation)}\n# TYPE {fam.name} {fam.type}\n"
        if fam.unit:
            head += f"# UNIT {fam.name} {fam.unit}\n"
        lines = []
        for s in fam.samples:
            if s.labels:
                labels = ",".join(f'{k}="{_escape_om(v)}"' for k, v in sorted(s.labels.items()))
                lines.append(f"{s.name}{{{labels}}} {floatToGoString(s.value)}\n")
            else:
                lines.append(f"{s.name} {floatToGoString(s.value)}\n")
        out.append((fam.name, head.encode("utf-8"), "".join(lines).encode("utf-8")))
    return out


class _Families:
    def __init__(self, families):
        self.families = families

    def collect(self):
        return iter(self.families)


def openmetrics(families):
    """Render families as OpenMetrics 1.0 without the closing '# EOF' line."""
    from prometheus_client.openmetrics import exposition as om   # only for timestamps and exemplars

    body = om.generate_latest(_Families([f for f in families if f.samples]))
    return body[: -len(b"# EOF\n")] if body.endswith(b"# EOF\n") else body


class Rendered:
    """Families of a stage or sink (the verdict, Grafana Live's counters), rendered in both formats
    when they change, so the scrape that joins them into /metrics only joins bytes."""

    def __init__(self, families=()):
        self.version = 0
        self.set(list(families))

    def set(self, families):
        self._text, self._om = text_parts(families), openmetrics_parts(families)
        self.version += 1

    def parts(self):
        return self._text

    def om_parts(self):
        return self._om
