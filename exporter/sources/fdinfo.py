"""Per-process GPU use from DRM fdinfo (/proc/<pid>/fdinfo/<fd>): the kernel's drm-usage-stats.

Works for amdgpu, i915, xe, panfrost, panthor, msm and any driver that follows
Documentation/gpu/drm-usage-stats.rst:

- a DRM file descriptor is one whose link points into /dev/dri and whose fdinfo has
  ``drm-driver``; one client (``drm-client-id`` on one ``drm-pdev``) can sit behind several fds
  and several processes (dup, fork, fd passing): it is counted once, for the lowest pid;
- utilisation of an engine is the growth of ``drm-engine-<e>`` (ns busy) over the wall time
  between two reads, divided by ``drm-engine-capacity-<e>`` (engines grouped under one name);
  drivers that count cycles instead (xe) give ``drm-cycles-<e>`` over ``drm-total-cycles-<e>``;
  a counter that goes backwards keeps its previous value, as the spec asks;
- memory per region is what is resident there, ``drm-resident-<region>`` (``drm-memory-<region>``
  is its deprecated alias, never added to it), else ``drm-total-<region>``, with units KiB/MiB;
  buffers a client shares (``drm-shared-<region>``, counted by every importer) are left out, so
  a shared buffer is never counted once per importer. GPU memory is the device-local regions
  (vram*, local*); a GPU without any (integrated: system memory only) counts all its regions,
  and an AMD APU counts GTT beside its small VRAM carve-out.

Reading other users' fd directories needs root (or CAP_SYS_PTRACE); without it only the
exporter's own user's processes are seen.
"""
import os
from dataclasses import dataclass, field

from .drm import list_cards
from .host import read_text

UNITS = {"": 1, "B": 1, "KiB": 1024, "MiB": 1024 ** 2, "GiB": 1024 ** 3}
LOCAL_REGIONS = ("vram", "local")
SKIP_DRIVERS = {"nvidia-drm", "nvidia"}       # NVIDIA's numbers come from NVML
FULL_SCAN_EVERY = 10.0                          # seconds between looks at every process's fds


def gpu_cards(sysfs):
    """The DRM cards whose per-process use comes from fdinfo: GPUs that render, NVIDIA's left to NVML."""
    return [c for c in list_cards(sysfs) if c.driver not in SKIP_DRIVERS and c.renders]


@dataclass
class DrmClient:
    pid: int
    driver: str
    pdev: str                   # PCI slot ('0000:03:00.0'), '' for platform devices
    client_id: str
    engines: dict = field(default_factory=dict)        # name -> ns busy
    capacity: dict = field(default_factory=dict)       # name -> engines in the group
    cycles: dict = field(default_factory=dict)         # name -> busy cycles
    total_cycles: dict = field(default_factory=dict)   # name -> elapsed cycles
    memory: dict = field(default_factory=dict)         # region -> bytes (resident, not shared)

    @property
    def device(self):
        return self.pdev or self.driver

    @property
    def key(self):
        return (self.device, self.client_id)

    def gpu_memory(self, apu=False):
        """Bytes of GPU memory, or None when the driver reports no memory at all. ``apu``: the
        GPU's memory is system memory mapped through GTT, its VRAM only a carve-out."""
        if not self.memory:
            return None
        if apu:
            return sum(v for r, v in self.memory.items() if r.startswith(LOCAL_REGIONS + ("gtt",)))
        local = [v for r, v in self.memory.items() if r.startswith(LOCAL_REGIONS)]
        return sum(local) if local else sum(self.memory.values())


def _number(value):
    """'544428 KiB' -> 557494272; '39456116802 ns' -> 39456116802; None if not a number."""
    num, _, unit = value.partition(" ")
    try:
        n = int(num)
    except ValueError:
        return None
    unit = unit.strip()
    if unit in UNITS:
        return n * UNITS[unit]
    return n                    # ns, Hz: the number as it is


def parse(text, pid=0):
    """One fdinfo file -> DrmClient, or None when it is not a DRM client."""
    keys = {}
    for line in text.splitlines():
        k, sep, v = line.partition(":")
        if sep and k.startswith("drm-"):
            keys[k] = v.strip()
    driver = keys.get("drm-driver")
    if not driver:
        return None
    c = DrmClient(pid, driver, keys.get("drm-pdev", "").lower(), keys.get("drm-client-id", ""))
    legacy, resident, shared = {}, {}, {}
    for k, v in keys.items():
        if k.startswith("drm-engine-capacity-"):
            n = _number(v)
            if n:
                c.capacity[k[20:]] = n
        elif k.startswith("drm-engine-"):
            n = _number(v)
            if n is not None:
                c.engines[k[11:]] = n
        elif k.startswith("drm-total-cycles-"):
            n = _number(v)
            if n is not None:
                c.total_cycles[k[17:]] = n
        elif k.startswith("drm-cycles-"):
            n = _number(v)
            if n is not None:
                c.cycles[k[11:]] = n
        elif k.startswith("drm-total-"):
            n = _number(v)
            if n is not None:
                c.memory[k[10:]] = n
        elif k.startswith("drm-memory-"):
            n = _number(v)
            if n is not None:
                legacy[k[11:]] = n
        elif k.startswith("drm-resident-"):
            n = _number(v)
            if n is not None:
                resident[k[13:]] = n
        elif k.startswith("drm-shared-"):
            n = _number(v)
            if n is not None:
                shared[k[11:]] = n
    for region, n in legacy.items():
        resident.setdefault(region, n)      # drm-memory-X is the old name of drm-resident-X
    for region, n in resident.items():
        c.memory[region] = n                # resident wins over total (allocated, maybe swapped)
    for region, n in c.memory.items():
        c.memory[region] = max(0, n - shared.get(region, 0))
    return c


class FdinfoReader:
    """Finds the DRM clients of processes.

    Listing every fd of every process is the cost here, so a process's fds are looked at every
    ``full_scan_every`` seconds, and on every read only for processes already known to hold
    DRM fds. A new GPU user is found within ``full_scan_every`` seconds.
    """

    def __init__(self, procfs="/proc", full_scan_every=FULL_SCAN_EVERY, skip_drivers=SKIP_DRIVERS):
        self.procfs = procfs
        self.full_scan_every = full_scan_every
        self.skip_drivers = set(skip_drivers)
        self.drm_fds = {}          # pid -> [fd names]
        self.last_full = None

    def _pids(self):
        try:
            return [int(n) for n in os.listdir(self.procfs) if n.isdigit()]
        except OSError:
            return []

    def _drm_fds(self, pid):
        try:
            dfd = os.open(os.path.join(self.procfs, str(pid), "fd"), os.O_RDONLY | os.O_DIRECTORY)
        except OSError:
            return []                 # gone, or not ours to see
        out = []
        readlink = os.readlink
        try:
            for fd in os.listdir(dfd):
                try:
                    if readlink(fd, dir_fd=dfd).startswith("/dev/dri/"):
                        out.append(fd)
                except OSError:
                    continue
        except OSError:
            pass
        finally:
            os.close(dfd)
        return out

    def read(self, now, pids=None):
        """DRM clients, one per (device, client id), for ``pids`` (default: all of procfs)."""
        if pids is None:
            pids = self._pids()
        full = self.last_full is None or now - self.last_full >= self.full_scan_every
        if full:
            self.last_full = now
        live = set(pids)
        self.drm_fds = {p: f for p, f in self.drm_fds.items() if p in live}
        clients = {}
        for pid in sorted(pids):
            fds = self._drm_fds(pid) if full else self.drm_fds.get(pid)
            if not fds:
                self.drm_fds.pop(pid, None)
                continue
            found = []
            for fd in fds:
                text = read_text(os.path.join(self.procfs, str(pid), "fdinfo", fd))
                if text is None:
                    continue
                c = parse(text, pid)
                if c is None or c.driver in self.skip_drivers:
                    continue
                found.append(fd)
                clients.setdefault(c.key, c)   # the same client seen again: counted once
            if found:
                self.drm_fds[pid] = found
            else:
                self.drm_fds.pop(pid, None)
        return list(clients.values())


@dataclass
class ProcessUsage:
    pid: int
    device: str                 # pdev or driver
    driver: str
    memory: int = None          # bytes
    engines: dict = None        # engine -> ratio 0-1; None until two reads are seen
    busy: dict = None           # engine -> s busy (drm-engine-* ns), never going backwards


class UsageTracker:
    """Turns clients' counters into utilisation between two reads, per (device, pid), and keeps
    each process's busy time as a counter that only grows (a closed client keeps its share)."""

    def __init__(self):
        self.prev = {}             # client key -> (now, engines, cycles, total_cycles)
        self.busy = {}             # (device, pid) -> {engine: s}

    def update(self, clients, now, apus=()):
        """``apus``: devices (pdev) that are AMD APUs, whose memory is counted with GTT."""
        out = {}
        seen = {}
        for c in clients:
            before = self.prev.get(c.key)
            engines = dict(c.engines)
            rates = None
            grown = engines                     # ns added since the last read (all of it: new client)
            if before is not None:
                t0, e0, cy0, tot0 = before
                for name, v in e0.items():
                    if engines.get(name, v) < v:
                        engines[name] = v       # went backwards: keep the larger value
                rates = _rates(now - t0, e0, engines, cy0, c.cycles, tot0, c.total_cycles, c.capacity)
                grown = {name: v - e0.get(name, 0) for name, v in engines.items()}
            seen[c.key] = (now, engines, dict(c.cycles), dict(c.total_cycles))
            u = out.get((c.device, c.pid))
            if u is None:
                u = out[(c.device, c.pid)] = ProcessUsage(c.pid, c.device, c.driver)
                u.busy = self.busy.setdefault((c.device, c.pid), {})
            for name, ns in grown.items():
                u.busy[name] = u.busy.get(name, 0.0) + ns / 1e9
            mem = c.gpu_memory(c.device in apus)
            if mem is not None:
                u.memory = (u.memory or 0) + mem
            if rates is not None:
                u.engines = u.engines or {}
                for name, r in rates.items():
                    u.engines[name] = min(1.0, u.engines.get(name, 0.0) + r)
        self.prev = seen
        self.busy = {k: v for k, v in self.busy.items() if k in out}
        for u in out.values():
            u.busy = dict(u.busy) if u.busy else None
        return list(out.values())


def _rates(dt, e0, e1, cy0, cy1, tot0, tot1, capacity):
    rates = {}
    if dt > 0:
        for name, v in e1.items():
            if name in e0:
                busy = max(0, v - e0[name])
                rates[name] = min(1.0, busy / (dt * 1e9) / capacity.get(name, 1))
    for name, v in cy1.items():
        if name in rates or name not in cy0 or name not in tot0 or name not in tot1:
            continue
        elapsed = tot1[name] - tot0[name]
        if elapsed <= 0:
            continue
        busy = max(0, v - cy0[name])
        rates[name] = min(1.0, busy / elapsed / capacity.get(name, 1))
    return rates
