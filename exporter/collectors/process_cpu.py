"""The CPU-seconds counters of the top processes, re-read every critical interval.

The process collector chooses which processes have series (a whole /proc pass, every 2 s by
default); this one re-reads only those processes' stat files each second. A counter read on a
2 s grid and scraped every 15 s is, at alternate scrapes, one second older: rate() over a
minute of a bursty process then misses or gains up to a second of CPU (11 % of a load that
burns 3 s in 15). Read each second, the lag is the same at every scrape and cancels out.
"""
from ..sources import processes
from .base import Collector, counter


class ProcessCPUCollector(Collector):
    name = "process_cpu"
    reads = "process"         # the process collector: whose series, and their labels

    def __init__(self, procfs="/proc", source=None):
        super().__init__()
        self.procfs = procfs
        self.source = source

    @classmethod
    def create(cls, config):
        return cls(config["paths"]["procfs"])

    def update(self, now):
        top = self.source.exported if self.source is not None else ()
        fam = counter("hoofhearted_process_cpu_seconds",
                      "CPU seconds a top process used since it started (user and system).",
                      self.source.labels() if self.source is not None else ())
        read = processes.cpu_seconds(self.procfs, [key for key, _ in top])
        self.snapshot = read
        for key, values in top:
            seconds = read.get(key)
            if seconds is not None:          # gone since the process collector's pass: no sample
                fam.add_metric(values, seconds)
        return [fam]
