"""Exposition: metric families to bytes, once per refresh.

prometheus_client writes the bytes (text format 0.0.4 and OpenMetrics 1.0). Its output is
cut into one (name, header, samples) part per family, so a scrape can join the cached parts of
several collectors and give a family that two of them feed (NVIDIA and AMD GPUs share the gpu
families) one HELP/TYPE header.
"""
from prometheus_client import exposition as _text
from prometheus_client.openmetrics import exposition as _om

TEXT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
OPENMETRICS_TYPE = "application/openmetrics-text; version=1.0.0; charset=utf-8"

_EOF = b"# EOF\n"


class _Families:
    """The one method generate_latest asks of a registry."""

    __slots__ = ("families",)

    def __init__(self, families):
        self.families = families

    def collect(self):
        return iter(self.families)


def _parts(body):
    """Cut an exposition at its '# HELP' lines into [(name, header, sample lines)].

    Help texts and label values have their newlines escaped, so a line that starts with
    '# HELP ' always starts a family."""
    out = []
    if not body:
        return out
    chunks = body.split(b"\n# HELP ")
    last = len(chunks) - 1
    for i, chunk in enumerate(chunks):
        if i:
            chunk = b"# HELP " + chunk
        if i != last:
            chunk += b"\n"
        end = chunk.index(b"\n", chunk.index(b"\n") + 1) + 1       # HELP and TYPE lines
        if chunk.startswith(b"# UNIT ", end):
            end = chunk.index(b"\n", end) + 1
        out.append((chunk[7:chunk.index(b" ", 7)].decode(), chunk[:end], chunk[end:]))
    return out


def text_parts(families):
    """[(family name, HELP/TYPE header, sample lines)] in text format 0.0.4, for every family that
    has samples."""
    return _parts(_text.generate_latest(_Families([f for f in families if f.samples])))


def openmetrics_parts(families):
    """Like text_parts, in OpenMetrics 1.0 (what Prometheus asks for first), without '# EOF'."""
    body = _om.generate_latest(_Families([f for f in families if f.samples]))
    return _parts(body[:-len(_EOF)] if body.endswith(_EOF) else body)


def join_parts(part_lists):
    """One exposition from several parts lists: each family's header once, samples merged."""
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


def openmetrics(families):
    """Render families as OpenMetrics 1.0, '# EOF' included."""
    return join_parts([openmetrics_parts(families)]) + _EOF
