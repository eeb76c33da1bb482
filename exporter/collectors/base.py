"""What every collector is: a source read into a snapshot, turned into metric families.

A collector is also a prometheus_client collector (``collect()`` yields the families of the
last refresh), so tests can register one in a fresh ``CollectorRegistry`` and read values
with ``get_sample_value``. The scheduler calls ``update(now)`` from its tier thread; scrapes
never call into a collector.
"""
from ..families import Family

__all__ = ["Collector", "gauge", "counter"]


def gauge(name, documentation, labels=()):
    return Family(name, documentation, "gauge", labels)


def counter(name, documentation, labels=()):
    return Family(name, documentation, "counter", labels)


class Collector:
    """Base class. Subclasses set ``name`` and implement ``update``; the tier is declared with
    the collector in ``exporter.collectors.COLLECTORS``.

    ``escalates``: refresh at the critical interval while the host is hot, because this
    collector explains why (sensors, processes, GPUs).
    """

    name = ""
    escalates = False
    follows = None    # name of a collector this one reads after, on the same pass, when tiers match

    def __init__(self):
        self.families = []
        self.snapshot = None

    def update(self, now):
        """Read the source, remember the snapshot, return the metric families.

        ``now`` is the scheduler's monotonic clock in seconds; use it, never time.time(),
        for rates so tests can drive them exactly.
        """
        raise NotImplementedError

    def refresh(self, now):
        self.families = self.update(now)
        return self.families

    def hot(self, thresholds):
        """Reasons (short strings) this collector's last snapshot crosses a hot threshold."""
        return ()

    def close(self):
        """Release devices or handles on shutdown."""

    def collect(self):
        return iter(self.families)
