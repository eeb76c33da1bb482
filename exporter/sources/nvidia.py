"""NVIDIA GPUs through NVML (the ``pynvml`` module of nvidia-ml-py), read into plain dataclasses.

One NvidiaSource keeps NVML open once for the whole exporter: the nvidia, nvidia_pcie and
gpu_process collectors share it. The module is an argument so tests can pass a fake built on
the real pynvml.

Driver reality handled here:
- a call answering NotSupported, NoPermission, FunctionNotFound, Unknown (or a struct version
  the driver does not know) gives no value; it is remembered per (GPU, call), not retried
  until NVML is re-initialised, and logged once;
- GPU_IS_LOST marks that GPU down; the others keep being read; NVML is re-initialised with
  exponential backoff until the GPU answers again;
- no library or driver: no devices, one log line, retried quietly.
"""
import ctypes
import logging
import struct
import threading
from dataclasses import dataclass, field

log = logging.getLogger("hoofhearted.nvidia")

# nvml.h return codes
SUCCESS, NOT_FOUND = 0, 6
CAPABILITY = {2, 3, 4, 13, 25, 999}   # invalid argument, not supported, no permission,
#                                       function not found, argument version mismatch, unknown
LOST = {15, 16}                       # GPU is lost, reset required
ABSENT = {9, 12}                      # driver not loaded, library not found

CLOCKS = (("graphics", 0), ("sm", 1), ("memory", 2), ("video", 3))
CLOCK_EVENTS = (
    ("gpu_idle", 0x1), ("applications_clocks_setting", 0x2), ("sw_power_cap", 0x4),
    ("hw_slowdown", 0x8), ("sync_boost", 0x10), ("sw_thermal_slowdown", 0x20),
    ("hw_thermal_slowdown", 0x40), ("hw_power_brake_slowdown", 0x80), ("display_clock_setting", 0x100),
)
ENGINES = (("sm", "smUtil"), ("memory", "memUtil"), ("encoder", "encUtil"), ("decoder", "decUtil"))
NOT_AVAILABLE = (1 << 64) - 1          # usedGpuMemory the driver cannot tell (WDDM)
PSTATE_UNKNOWN = 32
KIB = 1024


@dataclass
class MigDevice:
    uuid: str
    profile: str
    gpu_instance: int
    compute_instance: int
    memory_used: int = None
    memory_total: int = None


@dataclass
class NvidiaGPU:
    index: int
    uuid: str
    name: str = ""
    pci_bus_id: str = ""
    up: bool = True
    utilization: float = None           # ratios 0-1
    memory_utilization: float = None
    memory_used: int = None             # bytes
    memory_total: int = None
    temperature: float = None           # °C
    slowdown: float = None
    shutdown: float = None
    fans: dict = field(default_factory=dict)          # "0" -> ratio
    power: float = None                 # W
    power_limit: float = None
    energy: float = None                # J since the driver loaded
    clocks: dict = field(default_factory=dict)        # "graphics" -> Hz
    clock_events: dict = field(default_factory=dict)  # "sw_power_cap" -> 0/1
    performance_state: int = None
    encoder: float = None
    decoder: float = None
    mig_enabled: bool = None
    migs: list = field(default_factory=list)


@dataclass
class NvidiaSnapshot:
    available: bool = False             # False: no driver/library, or NVML cannot start
    driver_version: str = ""
    gpus: list = field(default_factory=list)


@dataclass
class NvidiaProcess:
    pid: int
    memory: int = None                  # bytes; None when the driver cannot tell
    utilization: dict = None            # engine -> ratio; None when the GPU gives no samples
    gpu_instance: int = None
    compute_instance: int = None


@dataclass
class NvidiaGPUProcesses:
    index: int
    uuid: str
    processes: list = field(default_factory=list)


@dataclass
class PcieReading:
    index: int
    uuid: str
    receive: float = None               # bytes/s
    transmit: float = None


SAMPLE_FIELDS = ("timeStamp", "pid") + tuple(attr for _, attr in ENGINES)
_LAYOUTS = {}


def _rows(structs, names):
    """The named fields of a list of ctypes structs, as tuples.

    pynvml returns process samples as one ctypes array cut into struct views; reading them
    field by field goes through a slow Python __getattribute__, so when they are contiguous the
    array is unpacked in one go.
    """
    if not structs:
        return []
    cls = type(structs[0])
    size = ctypes.sizeof(cls)
    base = ctypes.addressof(structs[0])
    layout = _LAYOUTS.get((cls, names))
    if layout is None:
        layout = _LAYOUTS[(cls, names)] = _layout(cls, names)
    if layout is None or ctypes.addressof(structs[-1]) != base + (len(structs) - 1) * size:
        return [tuple(getattr(s, n) for n in names) for s in structs]
    fmt, order = layout
    data = ctypes.string_at(base, size * len(structs))
    return [tuple(row[i] for i in order) for row in fmt.iter_unpack(data)]


def _layout(cls, names):
    """A struct.Struct reading ``names`` (unsigned integer fields) out of ``cls``, or None."""
    types = dict(cls._fields_)
    fields = []
    for n in names:
        t = types.get(n)
        code = {1: "B", 2: "H", 4: "I", 8: "Q"}.get(ctypes.sizeof(t)) if t is not None else None
        if code is None or t not in (ctypes.c_uint8, ctypes.c_uint16, ctypes.c_uint32, ctypes.c_uint64,
                                     ctypes.c_ubyte, ctypes.c_ushort, ctypes.c_uint, ctypes.c_ulong,
                                     ctypes.c_ulonglong):
            return None
        fields.append((getattr(cls, n).offset, ctypes.sizeof(t), code, n))
    fmt, pos = "=", 0
    for offset, size, code, _ in sorted(fields):
        fmt += "x" * (offset - pos) + code
        pos = offset + size
    fmt += "x" * (ctypes.sizeof(cls) - pos)
    by_offset = [n for _, _, _, n in sorted(fields)]
    return struct.Struct(fmt), [by_offset.index(n) for n in names]


class _Lost(Exception):
    pass


class _RWLock:
    """Many readers (refreshes), one writer (re-initialisation); a waiting writer goes first."""

    def __init__(self):
        self._cond = threading.Condition()
        self._readers = 0
        self._writer = False
        self._waiting = 0

    def acquire_read(self):
        with self._cond:
            while self._writer or self._waiting:
                self._cond.wait()
            self._readers += 1

    def release_read(self):
        with self._cond:
            self._readers -= 1
            if not self._readers:
                self._cond.notify_all()

    def acquire_write(self):
        with self._cond:
            self._waiting += 1
            while self._writer or self._readers:
                self._cond.wait()
            self._waiting -= 1
            self._writer = True

    def release_write(self):
        with self._cond:
            self._writer = False
            self._cond.notify_all()


class _Device:
    """One GPU, as found when NVML was (re)started."""

    def __init__(self, index, handle=None, uuid="", name="", pci_bus_id=""):
        self.index, self.handle = index, handle
        self.uuid, self.name, self.pci_bus_id = uuid, name, pci_bus_id
        self.lost = handle is None
        self.slowdown = self.shutdown = None
        self.fan_count = None                # None: use the single-fan call
        self.last_seen = 0                   # µs timestamp of the newest process sample used

    @property
    def key(self):
        return self.uuid or f"index{self.index}"


def _error_code(e):
    return getattr(e, "value", None)


class NvidiaSource:
    def __init__(self, nvml=None, max_backoff=60.0, absent_retry=300.0):
        if nvml is None:
            import pynvml as nvml
        self.nvml = nvml
        self.max_backoff = max_backoff
        self.absent_retry = absent_retry
        self.rw = _RWLock()
        self.state_lock = threading.Lock()
        self.lost_lock = threading.Lock()
        self.initialized = False
        self.available = False
        self.devices = []
        self.driver_version = ""
        self.unsupported = set()             # (device key, call)
        self.logged = set()
        self.next_init = 0.0
        self.backoff = 1.0
        self.users = 0
        self._mismatch = getattr(nvml, "NVMLLibraryMismatchError", ())

    # -- starting NVML ---------------------------------------------------------------------

    def ensure(self, now):
        """Start NVML, or re-start it when a GPU was lost and the backoff has passed."""
        with self.state_lock:
            due = now >= self.next_init
            if self.available and not any(d.lost for d in self.devices):
                return True
            if not due:
                return self.available
            self.rw.acquire_write()
            try:
                self._start(now)
            finally:
                self.rw.release_write()
            return self.available

    def _start(self, now):
        nvml = self.nvml
        previous = {d.index: d for d in self.devices}
        had_lost = [d for d in self.devices if d.lost]
        if self.initialized:
            try:
                nvml.nvmlShutdown()
            except nvml.NVMLError:
                pass
            self.initialized = False
        try:
            nvml.nvmlInit()
            self.initialized = True
            self.driver_version = self._plain(nvml.nvmlSystemGetDriverVersion)() or ""
            count = nvml.nvmlDeviceGetCount()
        except nvml.NVMLError as e:
            self._start_failed(now, e)
            for d in self.devices:
                d.lost = True
            return
        self.unsupported.clear()
        devices = []
        for i in range(count):
            old = previous.get(i)
            try:
                handle = nvml.nvmlDeviceGetHandleByIndex(i)
            except nvml.NVMLError as e:
                if _error_code(e) in LOST:
                    devices.append(_Device(i, None, old.uuid if old else "", old.name if old else "",
                                           old.pci_bus_id if old else ""))
                else:   # e.g. not visible to this container: not ours to report
                    self._log_once(("handle", i, _error_code(e)), logging.WARNING,
                                   "cannot open GPU, skipped gpu=%d err=%r", i, str(e))
                continue
            dev = _Device(i, handle)
            try:
                self._identify(dev)
                self._statics(dev)
            except _Lost:
                dev.handle, dev.lost = None, True
                if old is not None and not dev.uuid:
                    dev.uuid, dev.name, dev.pci_bus_id = old.uuid, old.name, old.pci_bus_id
            known = next((d for d in previous.values() if d.uuid == dev.uuid), None)
            if known is not None:
                dev.last_seen = known.last_seen
            devices.append(dev)
        # a GPU that vanished from the bus entirely stays listed as down
        uuids = {d.uuid for d in devices}
        devices += [d for d in previous.values() if d.uuid and d.uuid not in uuids and d.lost]
        self.devices = devices
        self.available = True
        lost = [d for d in devices if d.lost]
        for d in had_lost:
            if not any(x.uuid == d.uuid and x.lost for x in devices):
                log.info("GPU is back gpu=%d uuid=%s", d.index, d.uuid)
        if lost:
            self._schedule(now)
        else:
            self.backoff = 1.0
            self.next_init = now
        self._log_once("started", logging.INFO, "NVML started driver=%s gpus=%d", self.driver_version, len(devices))

    def _start_failed(self, now, e):
        code = _error_code(e)
        if code in ABSENT:
            self._log_once(("absent", code), logging.INFO,
                           "no NVIDIA driver, NVIDIA collectors report no devices err=%r", str(e))
            self.next_init = now + self.absent_retry
        else:
            self._log_once(("init", code), logging.WARNING, "NVML failed to start err=%r", str(e))
            self._schedule(now)
        self.available = bool(self.devices)     # keep listing known GPUs as down

    def _schedule(self, now):
        self.next_init = now + self.backoff
        self.backoff = min(self.backoff * 2, self.max_backoff)

    def close(self):
        with self.state_lock:
            if self.initialized:
                try:
                    self.nvml.nvmlShutdown()
                except self.nvml.NVMLError:
                    pass
                self.initialized = False

    def _log_once(self, key, level, msg, *args):
        if key in self.logged:
            return
        self.logged.add(key)
        log.log(level, msg, *args)

    def _plain(self, fn):
        """fn(...) -> value, or None on any NVML error (for identity reads at start)."""
        def call(*args):
            try:
                return fn(*args)
            except self.nvml.NVMLError as e:
                if _error_code(e) in LOST:
                    raise _Lost() from None
                return None
        return call

    # -- one call ----------------------------------------------------------------------------

    def _get(self, dev, name, *args, handle=None, key=None, **kw):
        """The value of nvml.<name>(handle, *args), or None; raises _Lost."""
        k = (dev.key, key or name)
        if k in self.unsupported:
            return None
        fn = getattr(self.nvml, name, None)
        if fn is None:                       # older nvidia-ml-py without this wrapper
            self._unsupported(dev, k, "not in this nvidia-ml-py")
            return None
        try:
            return fn(dev.handle if handle is None else handle, *args, **kw)
        except self.nvml.NVMLError as e:
            code = _error_code(e)
            if code in LOST:
                raise _Lost() from None
            if code in CAPABILITY:
                self._unsupported(dev, k, str(e))
            else:
                self._log_once((k, code), logging.WARNING, "NVML call failed gpu=%d call=%s err=%r",
                               dev.index, k[1], str(e))
            return None
        except self._mismatch as e:
            self._unsupported(dev, k, str(e))
            return None

    def _unsupported(self, dev, k, why):
        self.unsupported.add(k)
        self._log_once(("unsupported",) + k, logging.INFO,
                       "GPU field not available, not asked again gpu=%d call=%s reason=%r", dev.index, k[1], why)

    def _first(self, dev, calls, handle=None, prefix=""):
        """The first call of [(name, args, kwargs)] the driver answers."""
        for name, args, kw in calls:
            key = prefix + name + ("_v2" if kw.get("version") else "")
            if (dev.key, key) in self.unsupported:
                continue
            value = self._get(dev, name, *args, handle=handle, key=key, **kw)
            if value is not None:
                return value
        return None

    def _memory(self, dev, handle=None, prefix=""):
        """Memory info, v2 first: its 'used' leaves out the driver's reserve, as nvidia-smi does."""
        version = getattr(self.nvml, "nvmlMemory_v2", None)
        calls = [("nvmlDeviceGetMemoryInfo", (), {"version": version})] if version else []
        return self._first(dev, calls + [("nvmlDeviceGetMemoryInfo", (), {})], handle, prefix)

    def _mark_lost(self, dev, now):
        # called under the read lock: must not wait for state_lock (ensure() holds it while
        # it waits for readers to finish)
        with self.lost_lock:
            if dev.lost:
                return
            dev.lost = True
            if not any(d.lost for d in self.devices if d is not dev):
                self._schedule(now)
        log.warning("GPU lost (fell off the bus?), re-initialising NVML with backoff gpu=%d uuid=%s",
                    dev.index, dev.uuid)

    def _identify(self, dev):
        nvml = self.nvml
        dev.uuid = self._plain(nvml.nvmlDeviceGetUUID)(dev.handle) or ""
        dev.name = self._plain(nvml.nvmlDeviceGetName)(dev.handle) or ""
        pci = self._plain(nvml.nvmlDeviceGetPciInfo)(dev.handle)
        if pci is not None:
            bus = pci.busId
            dev.pci_bus_id = bus.decode() if isinstance(bus, bytes) else str(bus)

    def _statics(self, dev):
        """What does not change until NVML restarts: temperature thresholds, fan count."""
        nvml = self.nvml
        dev.shutdown = self._get(dev, "nvmlDeviceGetTemperatureThreshold",
                                 nvml.NVML_TEMPERATURE_THRESHOLD_SHUTDOWN, key="threshold_shutdown")
        dev.slowdown = self._get(dev, "nvmlDeviceGetTemperatureThreshold",
                                 nvml.NVML_TEMPERATURE_THRESHOLD_SLOWDOWN, key="threshold_slowdown")
        dev.fan_count = self._get(dev, "nvmlDeviceGetNumFans")

    # -- reads -------------------------------------------------------------------------------

    def _each(self, now, read):
        """Run read(dev) for every GPU under the read lock; a lost GPU yields (dev, None)."""
        out = []
        self.rw.acquire_read()
        try:
            for dev in list(self.devices):
                if dev.lost:
                    out.append((dev, None))
                    continue
                try:
                    out.append((dev, read(dev)))
                except _Lost:
                    self._mark_lost(dev, now)
                    out.append((dev, None))
        finally:
            self.rw.release_read()
        return out

    def read_devices(self, now):
        if not self.ensure(now):
            return NvidiaSnapshot()
        gpus = []
        for dev, gpu in self._each(now, self._read_gpu):
            gpus.append(gpu if gpu is not None else
                        NvidiaGPU(dev.index, dev.uuid, dev.name, dev.pci_bus_id, up=False))
        return NvidiaSnapshot(True, self.driver_version, gpus)

    def _read_gpu(self, dev):
        nvml = self.nvml
        g = NvidiaGPU(dev.index, dev.uuid, dev.name, dev.pci_bus_id)
        u = self._get(dev, "nvmlDeviceGetUtilizationRates")
        if u is not None:
            g.utilization, g.memory_utilization = u.gpu / 100, u.memory / 100
        m = self._memory(dev)
        if m is not None:
            g.memory_used, g.memory_total = m.used, m.total
        g.temperature = self._get(dev, "nvmlDeviceGetTemperature", nvml.NVML_TEMPERATURE_GPU)
        g.slowdown, g.shutdown = dev.slowdown, dev.shutdown
        if dev.fan_count is not None:
            for i in range(dev.fan_count):
                speed = self._get(dev, "nvmlDeviceGetFanSpeed_v2", i, key=f"fan{i}")
                if speed is not None:
                    g.fans[str(i)] = speed / 100
        else:
            speed = self._get(dev, "nvmlDeviceGetFanSpeed")
            if speed is not None:
                g.fans["0"] = speed / 100
        mw = self._get(dev, "nvmlDeviceGetPowerUsage")
        g.power = None if mw is None else mw / 1000
        mw = self._get(dev, "nvmlDeviceGetEnforcedPowerLimit")
        g.power_limit = None if mw is None else mw / 1000
        mj = self._get(dev, "nvmlDeviceGetTotalEnergyConsumption")
        g.energy = None if mj is None else mj / 1000
        for label, clock in CLOCKS:
            mhz = self._get(dev, "nvmlDeviceGetClockInfo", clock, key=f"clock_{label}")
            if mhz is not None:
                g.clocks[label] = mhz * 1e6
        reasons = self._first(dev, [("nvmlDeviceGetCurrentClocksEventReasons", (), {}),
                                    ("nvmlDeviceGetCurrentClocksThrottleReasons", (), {})])
        if reasons is not None:
            g.clock_events = {name: int(bool(reasons & bit)) for name, bit in CLOCK_EVENTS}
        p = self._get(dev, "nvmlDeviceGetPerformanceState")
        g.performance_state = p if p is not None and p != PSTATE_UNKNOWN else None
        enc = self._get(dev, "nvmlDeviceGetEncoderUtilization")
        g.encoder = None if enc is None else enc[0] / 100
        dec = self._get(dev, "nvmlDeviceGetDecoderUtilization")
        g.decoder = None if dec is None else dec[0] / 100
        mode = self._get(dev, "nvmlDeviceGetMigMode")
        if mode is not None:
            g.mig_enabled = bool(mode[0])
            if g.mig_enabled:
                g.migs = self._read_migs(dev)
        return g

    def _read_migs(self, dev):
        count = self._get(dev, "nvmlDeviceGetMaxMigDeviceCount") or 0
        out = []
        for i in range(count):
            try:
                h = self.nvml.nvmlDeviceGetMigDeviceHandleByIndex(dev.handle, i)
            except self.nvml.NVMLError as e:
                if _error_code(e) in LOST:
                    raise _Lost() from None
                continue                     # NOT_FOUND: an empty slot
            name = self._get(dev, "nvmlDeviceGetName", handle=h, key="mig_name") or ""
            mig = MigDevice(
                uuid=self._get(dev, "nvmlDeviceGetUUID", handle=h, key="mig_uuid") or "",
                profile=name.rsplit(" MIG ", 1)[1] if " MIG " in name else "",
                gpu_instance=self._get(dev, "nvmlDeviceGetGpuInstanceId", handle=h, key="mig_gi"),
                compute_instance=self._get(dev, "nvmlDeviceGetComputeInstanceId", handle=h, key="mig_ci"))
            mem = self._memory(dev, h, "mig_")
            if mem is not None:
                mig.memory_used, mig.memory_total = mem.used, mem.total
            out.append(mig)
        return out

    def read_pcie(self, now):
        """PCIe throughput per GPU. Each reading costs the driver a 20 ms sampling window."""
        if not self.ensure(now):
            return []
        nvml = self.nvml

        def read(dev):
            tx = self._get(dev, "nvmlDeviceGetPcieThroughput", nvml.NVML_PCIE_UTIL_TX_BYTES, key="pcie_tx")
            rx = self._get(dev, "nvmlDeviceGetPcieThroughput", nvml.NVML_PCIE_UTIL_RX_BYTES, key="pcie_rx")
            return PcieReading(dev.index, dev.uuid, None if rx is None else rx * KIB,
                               None if tx is None else tx * KIB)

        return [r for _, r in self._each(now, read) if r is not None]

    def read_processes(self, now):
        """Processes on each GPU that is up: memory (compute, graphics and MPS lists merged by
        pid) and per-engine utilisation from the driver's process samples."""
        if not self.ensure(now):
            return []
        return [r for _, r in self._each(now, self._read_processes) if r is not None]

    def _list(self, dev, kind):
        return self._first(dev, [(f"nvmlDevice{kind}RunningProcesses_v3", (), {}),
                                 (f"nvmlDevice{kind}RunningProcesses_v2", (), {})]) or []

    def _read_processes(self, dev):
        merged = {}
        for kind in ("GetCompute", "GetGraphics", "GetMPSCompute"):
            for p in self._list(dev, kind):
                mem = p.usedGpuMemory
                if mem == NOT_AVAILABLE:
                    mem = None
                cur = merged.get(p.pid)
                if cur is None:
                    gi = p.gpuInstanceId if p.gpuInstanceId != 0xFFFFFFFF else None
                    ci = p.computeInstanceId if p.computeInstanceId != 0xFFFFFFFF else None
                    merged[p.pid] = NvidiaProcess(p.pid, mem, None, gi, ci)
                elif mem is not None:
                    # a process in two lists reports its whole usage in each: count it once
                    cur.memory = mem if cur.memory is None else max(cur.memory, mem)
        samples = self._samples(dev) if merged else None
        if samples is not None:
            for proc in merged.values():
                proc.utilization = samples.get(proc.pid) or {engine: 0.0 for engine, _ in ENGINES}
        return NvidiaGPUProcesses(dev.index, dev.uuid, list(merged.values()))

    def _samples(self, dev):
        """{pid: {engine: ratio}} of samples newer than the last seen; {} when there are none
        (NOT_FOUND); None when the GPU gives no per-process utilisation."""
        raw = None
        for name in ("nvmlDeviceGetProcessesUtilizationInfo", "nvmlDeviceGetProcessUtilization"):
            k = (dev.key, name)
            if k in self.unsupported:
                continue
            fn = getattr(self.nvml, name, None)
            if fn is None:
                self._unsupported(dev, k, "not in this nvidia-ml-py")
                continue
            try:
                raw = fn(dev.handle, dev.last_seen)
                break
            except self.nvml.NVMLError as e:
                code = _error_code(e)
                if code in (NOT_FOUND, SUCCESS):
                    return {}
                if code in LOST:
                    raise _Lost() from None
                if code in CAPABILITY:
                    self._unsupported(dev, k, str(e))
                    continue
                self._log_once((k, code), logging.WARNING, "NVML call failed gpu=%d call=%s err=%r",
                               dev.index, name, str(e))
                return None
        if raw is None:
            return None
        newest, out = {}, {}
        last = seen = dev.last_seen
        for ts, pid, *values in _rows(raw, SAMPLE_FIELDS):
            if ts <= seen or max(values) > 100:
                continue                     # already used, or garbage the driver sometimes returns
            if ts >= newest.get(pid, (0,))[0]:
                newest[pid] = (ts, values)
            if ts > last:
                last = ts
        dev.last_seen = last
        for pid, (_, values) in newest.items():
            out[pid] = {engine: v / 100 for (engine, _), v in zip(ENGINES, values)}
        return out

    def process_name(self, pid):
        """NVML's name for a pid (basename), for processes /proc cannot show; None if unknown."""
        try:
            name = self.nvml.nvmlSystemGetProcessName(pid)
        except self.nvml.NVMLError:
            return None                      # NOT_FOUND: the process is gone
        name = name.decode(errors="replace") if isinstance(name, bytes) else str(name)
        return name.replace("\\", "/").rsplit("/", 1)[-1] or None
