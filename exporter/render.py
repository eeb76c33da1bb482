"""Exposition: metric families to bytes, once per refresh.

Text format 0.0.4 is written by hand (about 20x faster than generate_latest for the same
families); OpenMetrics, asked for rarely, goes through prometheus_client's own writer.
"""
from prometheus_client.openmetrics import exposition as om
from prometheus_client.utils import floatToGoString

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


def text(families):
    """Render families as Prometheus text format 0.0.4."""
    out = []
    for fam in families:
        if not fam.samples:
            continue
        name = fam.name + "_total" if fam.type == "counter" else fam.name
        kind = fam.type if fam.type in ("counter", "gauge", "histogram", "summary") else "untyped"
        out.append(f"# HELP {name} {_escape_help(fam.documentation)}\n# TYPE {name} {kind}\n")
        for s in fam.samples:
            if s.labels:
                labels = ",".join(f'{k}="{_escape_label(v)}"' for k, v in s.labels.items())
                out.append(f"{s.name}{{{labels}}} {_value(s.value)}\n")
            else:
                out.append(f"{s.name} {_value(s.value)}\n")
    return "".join(out).encode("utf-8")


class _Families:
    def __init__(self, families):
        self.families = families

    def collect(self):
        return iter(self.families)


def openmetrics(families):
    """Render families as OpenMetrics 1.0 without the closing '# EOF' line."""
    body = om.generate_latest(_Families([f for f in families if f.samples]))
    return body[: -len(b"# EOF\n")] if body.endswith(b"# EOF\n") else body
