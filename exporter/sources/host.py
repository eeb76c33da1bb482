"""Host counters: CPU, load, memory, disks, filesystems, network.

psutil reads CPU times, memory, swap, disk and network counters; its PROCFS_PATH is the
configured procfs root (tests point it at fixture trees, containers at /host/proc). Read
directly: the load average (psutil's is os.getloadavg(), the real host's whatever the root),
CPU frequencies (psutil's paths are fixed to /sys) and the mount table (psutil reads
<procfs>/self/mounts, which in a container is the container's own; the host's is
<procfs>/1/mounts). docs/design.md has the measurements.
"""
import errno
import os
import re
import socket
import stat
import threading
import warnings
from dataclasses import dataclass, field

import psutil

CLK_TCK = os.sysconf("SC_CLK_TCK")   # /proc/stat counts in USER_HZ ticks

_psutil_lock = threading.Lock()


def with_procfs(procfs, fn, *args, **kwargs):
    """Call a psutil function with PROCFS_PATH set to ``procfs``.

    PROCFS_PATH is one global and collectors refresh in threads of their own (tests give them
    different roots): one call at a time. psutil warns when a root lacks a file it wants
    for a field we do not read (vmstat's swap-in counts): quietly."""
    with _psutil_lock:
        psutil.PROCFS_PATH = procfs
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            return fn(*args, **kwargs)


SYSFS_LIMIT = 8192              # a sysfs attribute is at most a page
PROCFS_LIMIT = 16 << 20         # /proc tables: thousands of CPUs, mounts or interfaces fit


class TooLarge(bytes):
    """What read_bytes returns for a file over its limit: a reading no sensor could give."""


class FileTooLarge(OSError):
    """read_file: the file is longer than the limit."""


def read_file(path, limit, regular_only=True):
    """The bytes of a file of at most ``limit`` bytes. ``regular_only``: opened non-blocking and
    only a regular file is read, so a FIFO or a device in its place is an error, not a hang.
    Raises OSError whose strerror says why not: the system's reason, "not a regular file", or
    FileTooLarge ("larger than N bytes") instead of filling memory."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | (os.O_NONBLOCK if regular_only else 0))
    try:
        if regular_only and not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file")
        chunks, size = [], 0
        while size <= limit:
            b = os.read(fd, min(65536, limit + 1 - size))
            if not b:
                break
            chunks.append(b)
            size += len(b)
    finally:
        os.close(fd)
    if size > limit:
        raise FileTooLarge(errno.EFBIG, f"larger than {limit} bytes")
    return b"".join(chunks)


def read_bytes(path, limit=SYSFS_LIMIT):
    """At most ``limit`` bytes of a regular file (read_file), or None; a file longer than
    ``limit`` gives TooLarge(b"")."""
    try:
        return read_file(path, limit)
    except FileTooLarge:
        return TooLarge(b"")
    except (OSError, ValueError):
        return None


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
    """Clock ticks (as /proc/stat counts them) per CPU_MODES entry, from psutil's seconds;
    busy excludes idle and iowait, guest is already inside user."""
    busy: int
    total: int
    modes: tuple = ()     # ticks per CPU_MODES entry


CPU_MODES = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")


def _times(modes):
    total = sum(modes)
    return CPUTimes(busy=total - modes[3] - modes[4], total=total, modes=modes)


@dataclass
class CPUSnapshot:
    total: CPUTimes
    cores: dict = field(default_factory=dict)        # "0" -> CPUTimes
    frequency_hz: dict = field(default_factory=dict)  # "0" -> Hz
    load: tuple = None                               # (1m, 5m, 15m)


def _cpu_list(text):
    """'0-3,5' (sysfs' online CPU list) -> ["0", "1", "2", "3", "5"]."""
    out = []
    for part in text.strip().split(","):
        lo, _, hi = part.partition("-")
        if lo.isdigit() and (hi.isdigit() or not hi):
            out += [str(n) for n in range(int(lo), int(hi or lo) + 1)]
        else:
            return []
    return out


def read_cpu(procfs, sysfs):
    try:
        per_cpu = with_procfs(procfs, psutil.cpu_times, percpu=True)
    except (OSError, ValueError, TypeError) as e:
        raise OSError(f"cannot read {os.path.join(procfs, 'stat')}: {e}") from None
    if not per_cpu:
        raise ValueError("no cpu lines in stat")
    # psutil numbers CPUs by position; with CPUs offline the kernel's numbers skip, and stat
    # lists the online ones in order
    names = _cpu_list(read_text(os.path.join(sysfs, "devices", "system", "cpu", "online")) or "")
    if len(names) != len(per_cpu):
        names = [str(i) for i in range(len(per_cpu))]
    cores = {name: _times(tuple(round(getattr(t, m) * CLK_TCK) for m in CPU_MODES))
             for name, t in zip(names, per_cpu)}
    total = _times(tuple(sum(c.modes[i] for c in cores.values()) for i in range(len(CPU_MODES))))
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
    try:
        vm = with_procfs(procfs, psutil.virtual_memory)
        swap = with_procfs(procfs, psutil.swap_memory)
    except (OSError, KeyError, ValueError) as e:
        raise OSError(f"cannot read {os.path.join(procfs, 'meminfo')}: {e!r}") from None
    return MemorySnapshot(total=vm.total, available=vm.available, swap_total=swap.total, swap_free=swap.free)


@dataclass
class DiskIO:
    device: str
    read_bytes: int
    written_bytes: int


def read_disks(procfs, exclude):
    if not os.path.isfile(os.path.join(procfs, "diskstats")):    # a wrong --path.procfs: a failure
        raise OSError(f"cannot read {os.path.join(procfs, 'diskstats')}")
    try:
        disks = with_procfs(procfs, psutil.disk_io_counters, perdisk=True, nowrap=False)
    except (OSError, NotImplementedError, ValueError):
        return []
    pattern = re.compile(exclude)
    return [DiskIO(name, d.read_bytes, d.write_bytes) for name, d in disks.items() if not pattern.match(name)]


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
    # <procfs>/1/net is the host's namespace when the exporter shares the host's PID namespace
    nics = None
    for root in (os.path.join(procfs, "1"), procfs):
        try:
            nics = with_procfs(root, psutil.net_io_counters, pernic=True, nowrap=False)
            break
        except (OSError, ValueError, AssertionError):
            continue
    if nics is None:             # a wrong --path.procfs: a failure, not a box without interfaces
        raise OSError(f"cannot read {os.path.join(procfs, 'net', 'dev')}")
    pattern = re.compile(exclude)
    return [NetIO(name, n.bytes_recv, n.bytes_sent) for name, n in nics.items() if not pattern.match(name)]


_HOSTNAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,62})(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,62}))*")


def hostname(rootfs="/"):
    """The machine's name: with the host's root mounted elsewhere (a container), its /etc/hostname;
    else the kernel's. None when the mounted root names none (a container's own name is no answer)."""
    if rootfs and os.path.realpath(rootfs) != "/":
        text = read_text(os.path.join(rootfs, "etc", "hostname"), 256)
        name = (text or "").strip()
        return name if _HOSTNAME.fullmatch(name) and len(name) <= 253 else None
    return socket.gethostname()
