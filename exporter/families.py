"""Metric families: the small part of prometheus_client's data model the collectors need.

Same attributes as prometheus_client's Metric and Sample (name, documentation, type, unit,
samples; name, labels, value, timestamp, exemplar, native_histogram), so a collector still plugs
into a prometheus_client CollectorRegistry in tests. Importing prometheus_client itself would
pull in its HTTP servers and cost the exporter about 12 MB of memory.
"""
import math
from typing import NamedTuple


class Sample(NamedTuple):
    name: str
    labels: dict
    value: float
    timestamp: float = None
    exemplar: object = None
    native_histogram: object = None


class Family:
    """One metric family. Counters are named without '_total'; their samples carry it."""

    __slots__ = ("name", "documentation", "type", "unit", "samples", "_labelnames", "_sample_name")

    def __init__(self, name, documentation, kind, labels=()):
        if kind == "counter" and name.endswith("_total"):
            name = name[:-len("_total")]
        self.name = name
        self.documentation = documentation
        self.type = kind
        self.unit = ""
        self.samples = []
        self._labelnames = tuple(labels)
        self._sample_name = name + "_total" if kind == "counter" else name

    def add_metric(self, labels, value, timestamp=None, exemplar=None):
        if len(labels) != len(self._labelnames):
            raise ValueError(f"{self.name}: {len(labels)} label values for {len(self._labelnames)} labels")
        try:
            plain = "".join(labels).isascii()
        except TypeError:           # a value that is not a string
            plain = False
        if not plain:
            labels = [label_value(v) for v in labels]
        self.samples.append(Sample(self._sample_name, dict(zip(self._labelnames, labels)), value, timestamp,
                                   exemplar))

    def __repr__(self):
        return f"Family({self.name!r}, {self.type!r}, {len(self.samples)} samples)"


def label_value(v):
    """A label value that encodes as UTF-8: lone surrogates (a user or file name that was not
    UTF-8, decoded with surrogateescape) become U+FFFD, as a 'replace' decode would have made them."""
    if not isinstance(v, str):
        v = str(v)
    try:
        v.encode("utf-8")
        return v
    except UnicodeEncodeError:
        return "".join("\ufffd" if "\ud800" <= c <= "\udfff" else c for c in v)


def float_to_go(d):
    """A float as Go's strconv writes it, as Prometheus' own clients do (1e+06, +Inf, NaN)."""
    d = float(d)
    if d == math.inf:
        return "+Inf"
    if d == -math.inf:
        return "-Inf"
    if math.isnan(d):
        return "NaN"
    s = repr(d)
    dot = s.find(".")
    if d > 0 and dot > 6:  # Go switches to an exponent sooner than Python
        mantissa = f"{s[0]}.{s[1:dot]}{s[dot + 1:]}".rstrip("0.")
        return f"{mantissa}e+{dot - 1:02d}"
    return s
