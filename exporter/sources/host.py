"""Host counters straight from procfs and sysfs: CPU, load, memory, disks, filesystems, network.

Read directly (as node_exporter does) rather than through psutil so the roots can be any
directory: tests point them at fixture trees, containers at /host/proc and /host/sys.
"""
import os
import re
import stat
from dataclasses import dataclass, field

CLK_TCK = os.sysconf("SC_CLK_TCK")   # /proc/stat counts in USER_HZ ticks

SECTOR_BYTES = 512


SYSFS_LIMIT = 8192              # a sysfs attribute is at most a page
PROCFS_LIMIT = 16 << 20         # /proc tables: thousands of CPUs, mounts or interfaces fit


class TooLarge(bytes):
    """What read_bytes returns for a file over its limit: a reading no sensor could give."""


def read_bytes(path, limit=SYSFS_LIMIT):
    """At most ``limit`` bytes of a regular file, or None. Never blocks on a FIFO or a device
    (opened non-blocking, and only regular files are read, as every sysfs and procfs file
    is); a file longer than ``limit`` gives TooLarge(b"") instead of filling memory."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except (OSError, ValueError):
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        chunks, size = [], 0
        while size <= limit:
            b = os.read(fd, min(65536, limit + 1 - size))
            if not b:
                break
            chunks.append(b)
            size += len(b)
        if size > limit:
            return TooLarge(b"")
        return b"".join(chunks)
    except OSError:
        return None
    finally:
        os.close(fd)


def read_text(path, limit=SYSFS_LIMIT):
    """A small text file (sysfs attribute) as str, or None when it is missing, unreadable,
    not a regular file or longer than ``limit``."""
    data = read_bytes(path, limit)
    if data is None or isinstance(data, TooLarge):
        return None
    return data.decode("utf-8", "replace")


def read_table(path):
    """A procfs table (/proc/stat, mounts, net/dev): the same, with room for big machines."""
    return read_text(path, PROCFS_LIMIT)


@dataclass
class CPUTimes:
    """Jiffies from /proc/stat; busy excludes idle and iowait, guest is already inside user."""
    busy: int
    total: int
    modes: tuple = ()     # jiffies per CPU_MODES entry


CPU_MODES = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")


@dataclass
class CPUSnapshot:
    total: CPUTimes
    cores: dict = field(default_factory=dict)        # "0" -> CPUTimes
    frequency_hz: dict = field(default_factory=dict)  # "0" -> Hz
    load: tuple = None                               # (1m, 5m, 15m)


def _times(fields):
    vals = [int(x) for x in fields[:8]]
    vals += [0] * (8 - len(vals))
    user, nice, system, idle, iowait, irq, softirq, steal = vals
    total = user + nice + system + idle + iowait + irq + softirq + steal
    return CPUTimes(busy=total - idle - iowait, total=total, modes=tuple(vals))


def read_cpu(procfs, sysfs):
    text = read_table(os.path.join(procfs, "stat"))
    if text is None:
        raise OSError(f"cannot read {os.path.join(procfs, 'stat')}")
    total, cores = None, {}
    for line in text.splitlines():
        if not line.startswith("cpu"):
            continue
        parts = line.split()
        if parts[0] == "cpu":
            total = _times(parts[1:])
        else:
            cores[parts[0][3:]] = _times(parts[1:])
    if total is None:
        raise ValueError("no cpu line in stat")
    snap = CPUSnapshot(total=total, cores=cores)
    snap.frequency_hz = read_cpu_frequency(procfs, sysfs, cores)
    load = read_table(os.path.join(procfs, "loadavg"))
    if load:
        parts = load.split()
        snap.load = (float(parts[0]), float(parts[1]), float(parts[2]))
    return snap


def read_cpu_frequency(procfs, sysfs, cores):
    """Current frequency per core: cpufreq in sysfs (kHz), else 'cpu MHz' from cpuinfo."""
    out = {}
    base = os.path.join(sysfs, "devices", "system", "cpu")
    for core in cores:
        for name in ("scaling_cur_freq", "cpuinfo_cur_freq"):
            text = read_text(os.path.join(base, f"cpu{core}", "cpufreq", name))
            if text and text.strip().isascii() and text.strip().isdigit() and len(text.strip()) < 12:
                out[core] = int(text) * 1000
                break
    if out:
        return out
    text = read_table(os.path.join(procfs, "cpuinfo")) or ""
    core = None
    for line in text.splitlines():
        key, _, val = line.partition(":")
        key = key.strip()
        if key == "processor":
            core = val.strip()
        elif key == "cpu MHz" and core in cores:
            try:
                out[core] = float(val) * 1e6
            except ValueError:
                pass
    return out


@dataclass
class MemorySnapshot:
    total: int
    available: int
    swap_total: int
    swap_free: int


def read_memory(procfs):
    text = read_table(os.path.join(procfs, "meminfo"))
    if text is None:
        raise OSError(f"cannot read {os.path.join(procfs, 'meminfo')}")
    kb = {}
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        parts = rest.split()
        if parts and parts[0].isascii() and parts[0].isdigit():
            kb[key] = int(parts[0]) * 1024
    available = kb.get("MemAvailable")
    if available is None:  # kernels before 3.14
        available = kb.get("MemFree", 0) + kb.get("Buffers", 0) + kb.get("Cached", 0)
    return MemorySnapshot(total=kb["MemTotal"], available=available,
                          swap_total=kb.get("SwapTotal", 0), swap_free=kb.get("SwapFree", 0))


@dataclass
class DiskIO:
    device: str
    read_bytes: int
    written_bytes: int


def read_disks(procfs, exclude):
    text = read_table(os.path.join(procfs, "diskstats"))
    if text is None:        # a wrong --path.procfs is a failure, not a box without disks
        raise OSError(f"cannot read {os.path.join(procfs, 'diskstats')}")
    pattern = re.compile(exclude)
    out = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) < 10 or pattern.match(parts[2]):
            continue
        out.append(DiskIO(parts[2], int(parts[5]) * SECTOR_BYTES, int(parts[9]) * SECTOR_BYTES))
    return out


@dataclass
class Filesystem:
    mountpoint: str
    device: str
    fstype: str
    size_bytes: int
    free_bytes: int


def _unescape_mount(path):
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), path)


def real_fstypes(procfs):
    """Filesystem types backed by a device (no 'nodev' in /proc/filesystems)."""
    text = read_table(os.path.join(procfs, "filesystems")) or ""
    out = {"zfs"}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 1:
            out.add(parts[0])
    return out


def read_filesystems(procfs, rootfs, statvfs=os.statvfs):
    text = read_table(os.path.join(procfs, "1", "mounts")) or read_table(os.path.join(procfs, "self", "mounts")) or ""
    real = real_fstypes(procfs)
    seen, out = set(), []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) < 3 or parts[2] not in real:
            continue
        mountpoint = _unescape_mount(parts[1])
        if mountpoint in seen:
            continue
        seen.add(mountpoint)
        try:
            st = statvfs(os.path.join(rootfs, mountpoint.lstrip("/")))
        except OSError:
            continue
        out.append(Filesystem(mountpoint, parts[0], parts[2], st.f_blocks * st.f_frsize,
                              st.f_bavail * st.f_frsize))
    return out


@dataclass
class NetIO:
    interface: str
    receive_bytes: int
    transmit_bytes: int


def read_network(procfs, exclude):
    # /proc/1/net is the host's namespace when the exporter shares the host's PID namespace
    text = read_table(os.path.join(procfs, "1", "net", "dev")) or read_table(os.path.join(procfs, "net", "dev"))
    if text is None:
        raise OSError(f"cannot read {os.path.join(procfs, 'net', 'dev')}")
    pattern = re.compile(exclude)
    out = []
    for line in text.splitlines()[2:]:
        name, sep, rest = line.partition(":")
        name = name.strip()
        parts = rest.split()
        if not sep or len(parts) < 9 or pattern.match(name):
            continue
        out.append(NetIO(name, int(parts[0]), int(parts[8])))
    return out
