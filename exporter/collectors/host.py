"""Host collectors: CPU and load, memory, disks, filesystems, network."""
import os

from ..sources import host
from .base import Collector, counter, gauge


def _ratio(prev, cur):
    """Busy share between two CPUTimes; None when the counters did not move (or reset)."""
    dt = cur.total - prev.total
    if dt <= 0:
        return None
    return min(1.0, max(0.0, (cur.busy - prev.busy) / dt))


class CPUCollector(Collector):
    name = "cpu"

    def __init__(self, procfs="/proc", sysfs="/sys"):
        super().__init__()
        self.procfs, self.sysfs = procfs, sysfs
        self.prev = None
        self.usage = None

    @classmethod
    def create(cls, config):
        return cls(config["paths"]["procfs"], config["paths"]["sysfs"])

    def update(self, now):
        snap = host.read_cpu(self.procfs, self.sysfs)
        prev, self.prev, self.snapshot = self.prev, snap, snap
        usage = gauge("hoofhearted_cpu_usage_ratio", "Share of all CPU time spent busy since the last refresh (0-1).")
        core_usage = gauge("hoofhearted_cpu_core_usage_ratio",
                           "Share of one logical CPU's time spent busy since the last refresh (0-1).", ["core"])
        self.usage = None
        if prev is not None:
            self.usage = _ratio(prev.total, snap.total)
            if self.usage is not None:
                usage.add_metric([], self.usage)
            for core, times in snap.cores.items():
                before = prev.cores.get(core)
                r = _ratio(before, times) if before else None
                if r is not None:
                    core_usage.add_metric([core], r)
        seconds = counter("hoofhearted_cpu_seconds", "Seconds each logical CPU spent in each mode (as "
                          "node_exporter's node_cpu_seconds_total).", ["cpu", "mode"])
        for core, times in snap.cores.items():
            for mode, jiffies in zip(host.CPU_MODES, times.modes):
                seconds.add_metric([core, mode], jiffies / host.CLK_TCK)
        cores = gauge("hoofhearted_cpu_cores", "Logical CPUs online.")
        cores.add_metric([], len(snap.cores))
        freq = gauge("hoofhearted_cpu_frequency_hertz", "Current frequency of a logical CPU.", ["core"])
        for core, hz in snap.frequency_hz.items():
            freq.add_metric([core], hz)
        load = gauge("hoofhearted_load_average", "System load average.", ["window"])
        if snap.load:
            for window, value in zip(("1m", "5m", "15m"), snap.load):
                load.add_metric([window], value)
        return [usage, core_usage, seconds, cores, freq, load]

    def hot(self, thresholds):
        if self.usage is not None and self.usage >= thresholds["cpu_busy_ratio"]:
            return ("cpu_busy",)
        return ()


class MemoryCollector(Collector):
    name = "memory"

    def __init__(self, procfs="/proc"):
        super().__init__()
        self.procfs = procfs

    @classmethod
    def create(cls, config):
        return cls(config["paths"]["procfs"])

    def update(self, now):
        m = self.snapshot = host.read_memory(self.procfs)
        fams = []
        for name, doc, value in (
            ("hoofhearted_memory_total_bytes", "Physical memory.", m.total),
            ("hoofhearted_memory_available_bytes", "Memory available for new work without swapping.", m.available),
            ("hoofhearted_memory_used_bytes", "Memory in use: total minus available.", m.total - m.available),
            ("hoofhearted_swap_total_bytes", "Swap space.", m.swap_total),
            ("hoofhearted_swap_used_bytes", "Swap space in use.", m.swap_total - m.swap_free),
        ):
            g = gauge(name, doc)
            g.add_metric([], value)
            fams.append(g)
        return fams


class DiskCollector(Collector):
    name = "disk"

    def __init__(self, procfs="/proc", exclude=r"^$"):
        super().__init__()
        self.procfs, self.exclude = procfs, exclude

    @classmethod
    def create(cls, config):
        return cls(config["paths"]["procfs"], config["disk"]["exclude"])

    def update(self, now):
        disks = self.snapshot = host.read_disks(self.procfs, self.exclude)
        read = counter("hoofhearted_disk_read_bytes", "Bytes read from a block device.", ["device"])
        written = counter("hoofhearted_disk_written_bytes", "Bytes written to a block device.", ["device"])
        for d in disks:
            read.add_metric([d.device], d.read_bytes)
            written.add_metric([d.device], d.written_bytes)
        return [read, written]


class FilesystemCollector(Collector):
    name = "filesystem"

    def __init__(self, procfs="/proc", rootfs="/"):
        super().__init__()
        self.procfs, self.rootfs = procfs, rootfs
        self.statvfs = os.statvfs

    @classmethod
    def create(cls, config):
        return cls(config["paths"]["procfs"], config["paths"]["rootfs"])

    def update(self, now):
        fss = self.snapshot = host.read_filesystems(self.procfs, self.rootfs, self.statvfs)
        size = gauge("hoofhearted_filesystem_size_bytes", "Size of a device-backed filesystem.",
                     ["mountpoint", "fstype"])
        free = gauge("hoofhearted_filesystem_free_bytes", "Space available to unprivileged users.",
                     ["mountpoint", "fstype"])
        for fs in fss:
            size.add_metric([fs.mountpoint, fs.fstype], fs.size_bytes)
            free.add_metric([fs.mountpoint, fs.fstype], fs.free_bytes)
        return [size, free]


class NetworkCollector(Collector):
    name = "network"

    def __init__(self, procfs="/proc", exclude=r"^$"):
        super().__init__()
        self.procfs, self.exclude = procfs, exclude

    @classmethod
    def create(cls, config):
        return cls(config["paths"]["procfs"], config["network"]["exclude"])

    def update(self, now):
        nics = self.snapshot = host.read_network(self.procfs, self.exclude)
        rx = counter("hoofhearted_network_receive_bytes", "Bytes received on an interface.", ["interface"])
        tx = counter("hoofhearted_network_transmit_bytes", "Bytes sent on an interface.", ["interface"])
        for n in nics:
            rx.add_metric([n.interface], n.receive_bytes)
            tx.add_metric([n.interface], n.transmit_bytes)
        return [rx, tx]
