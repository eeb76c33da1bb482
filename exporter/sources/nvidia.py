"""NVIDIA GPUs through NVML (the ``pynvml`` module of nvidia-ml-py), read into plain dataclasses.

One NvidiaSource keeps NVML open once for the whole exporter: the nvidia, nvidia_pcie and
gpu_process collectors share it. The module is an argument so tests can pass a fake built on
the real pynvml.

Driver reality handled here:
- a call answering NotSupported, NoPermission, FunctionNotFound (or a struct version the
  driver does not know) gives no value; it is remembered per (GPU, call), not retried until
  NVML is re-initialised, and logged once;
- any other error (Unknown, InvalidArgument, Timeout, ...) is a one-off: that reading is
  skipped and retried with exponential backoff;
- process lists are read with the entry size the loaded driver writes (nvitop's rule), not
  the one the installed nvidia-ml-py assumes: the two disagree on some R535 drivers;
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
SUCCESS, NOT_FOUND, INSUFFICIENT_SIZE, TIMEOUT = 0, 6, 7, 10
CAPABILITY = {3, 4, 13, 25}           # not supported, no permission, function not found,
#                                       argument version mismatch: asked again only after a restart
LOST = {15, 16}                       # GPU is lost, reset required
ABSENT = {9, 12}                      # driver not loaded, library not found

CLOCKS = (("graphics", 0), ("sm", 1), ("memory", 2), ("video", 3))
CLOCK_EVENTS = (
    ("gpu_idle", 0x1), ("applications_clocks_setting", 0x2), ("sw_power_cap", 0x4),
    ("hw_slowdown", 0x8), ("sync_boost", 0x10), ("sw_thermal_slowdown", 0x20),
    ("hw_thermal_slowdown", 0x40), ("hw_power_brake_slowdown", 0x80), ("display_clock_setting", 0x100),
)
# nvmlDeviceGetFieldValues ids (nvml.h); ids whose number changed between headers are not used
FI_ECC_SBE_VOL, FI_ECC_DBE_VOL, FI_ECC_SBE_AGG, FI_ECC_DBE_AGG = 3, 4, 5, 6
FI_RETIRED_SBE, FI_RETIRED_DBE, FI_RETIRED_PENDING = 29, 30, 31
FI_PERF_POLICY_POWER, FI_PERF_POLICY_THERMAL, FI_PERF_POLICY_SYNC_BOOST = 74, 75, 76
FI_MEMORY_TEMP, FI_PCIE_REPLAY = 82, 94
FI_REMAPPED_COR, FI_REMAPPED_UNC, FI_REMAPPED_PENDING, FI_REMAPPED_FAILURE = 142, 143, 144, 145
FI_SHUTDOWN_TLIMIT, FI_SLOWDOWN_TLIMIT = 193, 194
FI_NVLINK_CRC_DATA, FI_NVLINK_REPLAY, FI_NVLINK_RECOVERY = 45, 52, 59      # totals over all links
FI_NVLINK_DATA_TX, FI_NVLINK_DATA_RX = 138, 139     # KiB of payload; per link, or all with ALL_LINKS
FI_PCIE_TX_BYTES, FI_PCIE_RX_BYTES = 197, 198
ALL_LINKS = 0xFFFFFFFF                 # scopeId: the sum over every link
SCOPED = {FI_NVLINK_DATA_TX: ALL_LINKS, FI_NVLINK_DATA_RX: ALL_LINKS}
FIELDS = (FI_MEMORY_TEMP, FI_SHUTDOWN_TLIMIT, FI_SLOWDOWN_TLIMIT, FI_PCIE_TX_BYTES, FI_PCIE_RX_BYTES,
          FI_PCIE_REPLAY, FI_ECC_SBE_VOL, FI_ECC_DBE_VOL, FI_ECC_SBE_AGG, FI_ECC_DBE_AGG,
          FI_RETIRED_SBE, FI_RETIRED_DBE, FI_RETIRED_PENDING, FI_REMAPPED_COR, FI_REMAPPED_UNC,
          FI_REMAPPED_PENDING, FI_REMAPPED_FAILURE, FI_PERF_POLICY_POWER, FI_PERF_POLICY_THERMAL,
          FI_PERF_POLICY_SYNC_BOOST)
NVLINK_FIELDS = (FI_NVLINK_CRC_DATA, FI_NVLINK_REPLAY, FI_NVLINK_RECOVERY, FI_NVLINK_DATA_TX, FI_NVLINK_DATA_RX)
NVLINK_ERRORS = (("crc_data", FI_NVLINK_CRC_DATA), ("replay", FI_NVLINK_REPLAY), ("recovery", FI_NVLINK_RECOVERY))
MAX_NVLINKS = 36
# clock-event time counters (ns, as the driver counts them; nvidia-smi shows µs): the first field
# the driver answers. The thermal and power-brake slowdown fields were numbered 251-253 in the
# headers of R575 to 580.65 and 269-271 from 580.82 on, where 251-253 became power-smoothing
# settings: so they are asked for only on a driver whose numbering is known (event_fields).
# Before R575 the thermal one is the thermal-policy violation time (field 75).
EVENT_TIME = (("sw_power_cap", ("power",)), ("sync_boost", ("sync_boost",)),
              ("sw_thermal_slowdown", ("sw_thermal", "thermal_policy")),
              ("hw_thermal_slowdown", ("hw_thermal",)), ("hw_power_brake_slowdown", ("hw_power_brake",)))
EVENT_FIELDS_R575 = {"sw_thermal": 251, "hw_thermal": 252, "hw_power_brake": 253}
EVENT_FIELDS_R580 = {"sw_thermal": 269, "hw_thermal": 270, "hw_power_brake": 271}
EVENT_FIELDS_ALWAYS = {"power": FI_PERF_POLICY_POWER, "sync_boost": FI_PERF_POLICY_SYNC_BOOST,
                       "thermal_policy": FI_PERF_POLICY_THERMAL}


def event_fields(driver_version):
    """{counter: field id} for the clock-event time counters on this driver (see EVENT_TIME)."""
    out = dict(EVENT_FIELDS_ALWAYS)
    try:
        major, minor = (int(x) for x in driver_version.split(".")[:2])
    except ValueError:
        return out
    if (major, minor) >= (580, 82):
        out.update(EVENT_FIELDS_R580)
    elif major >= 575:
        out.update(EVENT_FIELDS_R575)
    return out


EVENT_SHARE = 0.5                      # a reason that held the clocks this much of a refresh counts as on
XID_EVENT = 0x8                        # nvmlEventTypeXidCriticalError
ENGINES = (("sm", "smUtil"), ("memory", "memUtil"), ("encoder", "encUtil"), ("decoder", "decUtil"))
NOT_AVAILABLE = (1 << 64) - 1          # usedGpuMemory the driver cannot tell (WDDM)
PSTATE_UNKNOWN = 32
KIB = 1024
DEFAULT_SAMPLE_PERIOD = 1 / 6          # s between the driver's process samples, until measured


class _ProcV1(ctypes.Structure):
    _fields_ = [("pid", ctypes.c_uint), ("usedGpuMemory", ctypes.c_ulonglong)]


class _ProcV2(ctypes.Structure):
    _fields_ = _ProcV1._fields_ + [("gpuInstanceId", ctypes.c_uint), ("computeInstanceId", ctypes.c_uint)]


class _ProcV3(ctypes.Structure):
    _fields_ = _ProcV2._fields_ + [("usedGpuCcProtectedMemory", ctypes.c_ulonglong)]


class _TemperatureV1(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint), ("sensorType", ctypes.c_int), ("temperature", ctypes.c_int)]


class _MarginV1(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint), ("marginTemperature", ctypes.c_int)]


class _FanSpeedV1(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint), ("fan", ctypes.c_uint), ("speed", ctypes.c_uint)]


def _version(cls, n=1):
    """nvml.h's NVML_STRUCT_VERSION: the struct's size with the version in the top byte."""
    return ctypes.sizeof(cls) | (n << 24)


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
    # health
    memory_temperature: float = None    # °C (HBM)
    margin: float = None                # °C left before the T.Limit
    fan_rpm: dict = field(default_factory=dict)       # "0" -> rpm
    power_default_limit: float = None   # W
    power_max_limit: float = None
    pcie_transmit_bytes: int = None     # counters since the driver loaded
    pcie_receive_bytes: int = None
    pcie_replays: int = None
    link_generation: int = None
    link_max_generation: int = None
    link_width: int = None
    link_max_width: int = None
    ecc: dict = field(default_factory=dict)           # ("corrected", "volatile") -> errors
    retired_pages: dict = field(default_factory=dict)  # "single_bit"/"double_bit" -> pages
    retired_pending: int = None
    remapped_rows: dict = field(default_factory=dict)  # "correctable"/"uncorrectable" -> rows
    remap_pending: int = None
    remap_failed: int = None
    clock_event_seconds: dict = field(default_factory=dict)   # reason -> s
    nvlink_transmit_bytes: int = None   # payload over all links since the driver loaded
    nvlink_receive_bytes: int = None
    xid_errors: dict = field(default_factory=dict)    # xid -> count since the exporter started
    last_xid: int = None
    nvlink_errors: dict = field(default_factory=dict)  # "crc_data"/"replay"/"recovery" -> count


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
    engine_seconds: dict = None         # engine -> busy s since first seen (counters)
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
    nvlinks: int = None                 # NVLink links the GPU has
    nvlinks_active: int = None


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
        self.power_default = self.power_max = None
        self.link_max_generation = self.link_max_width = None
        self.sample_period = None            # s between the driver's process samples
        self.sample_last = {}                # pid -> µs timestamp of its last sample used
        self.busy = {}                       # pid -> [sm, memory, encoder, decoder] busy, in % x s
        self.fields_ok = set(FIELDS + NVLINK_FIELDS)    # field ids the driver has not refused
        self.event_fields = {}               # see event_fields(): set at NVML start
        self.event_time = {}                 # reason -> (monotonic s, counter s) at the last refresh
        self.xids = {}                       # xid -> count
        self.last_xid = None
        self.pcie_counters = False           # byte counters read: no 20 ms throughput window needed
        self.nvlinks = []                    # NVLink link numbers the driver answers for

    @property
    def key(self):
        return self.uuid or f"index{self.index}"


def _error_code(e):
    return getattr(e, "value", None)


_VALUE_TYPES = {0: "dVal", 1: "uiVal", 2: "ulVal", 3: "ullVal", 4: "sllVal", 5: "siVal", 6: "usVal"}


def _field_value(v):
    """The number in an nvmlFieldValue_t, by its valueType."""
    attr = _VALUE_TYPES.get(v.valueType, "ullVal")
    return getattr(v.value, attr)


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
        self.retry = {}                      # (device key, call) -> (next try, failures)
        self.now = 0.0
        self.logged = set()
        self.proc_api = None                 # (symbol suffix, entry struct) of the loaded driver
        self.cfns = {}                       # C function name -> callable or None
        self.events = None                   # NVML event set for Xid errors
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
            self._free_events()
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
        self.retry.clear()
        self.cfns.clear()
        self.proc_api = self._process_api()
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
            dev.event_fields = event_fields(self.driver_version)
            dev.fields_ok.update(dev.event_fields.values())
            try:
                self._identify(dev)
                self._statics(dev)
            except _Lost:
                dev.handle, dev.lost = None, True
                if old is not None and not dev.uuid:
                    dev.uuid, dev.name, dev.pci_bus_id = old.uuid, old.name, old.pci_bus_id
            known = next((d for d in previous.values() if d.uuid == dev.uuid), None)
            if known is not None:       # counters and sample bookkeeping outlive a restart
                dev.last_seen, dev.sample_last, dev.sample_period = (known.last_seen, known.sample_last,
                                                                     known.sample_period)
                dev.busy, dev.xids, dev.last_xid = known.busy, known.xids, known.last_xid
            devices.append(dev)
        # a GPU that vanished from the bus entirely stays listed as down
        uuids = {d.uuid for d in devices}
        devices += [d for d in previous.values() if d.uuid and d.uuid not in uuids and d.lost]
        self.devices = devices
        self.available = True
        self._watch_xids()
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
                self._free_events()
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
        fn = getattr(self.nvml, name, None)
        return self._call(dev, key or name, fn, (dev.handle if handle is None else handle,) + args, kw)

    def _skip(self, k):
        """Whether (device key, call) is not to be asked now: refused, or failed and backing off."""
        if k in self.unsupported:
            return True
        r = self.retry.get(k)
        return r is not None and self.now < r[0]

    def _call(self, dev, key, fn, args, kw=None):
        k = (dev.key, key)
        if self._skip(k):
            return None
        if fn is None:                       # older nvidia-ml-py without this wrapper
            self._unsupported(dev, k, "not in this nvidia-ml-py")
            return None
        try:
            value = fn(*args, **(kw or {}))
        except self.nvml.NVMLError as e:
            self._failed(dev, k, e)
            return None
        except self._mismatch as e:
            self._unsupported(dev, k, str(e))
            return None
        self.retry.pop(k, None)
        return value

    def _failed(self, dev, k, e):
        """Sort an NVML error: lost GPU (raises _Lost), refused for good, or a one-off to retry."""
        code = _error_code(e)
        if code in LOST:
            raise _Lost() from None
        if code in CAPABILITY:
            self._unsupported(dev, k, str(e))
            return
        failures = self.retry.get(k, (0, 0))[1] + 1
        self.retry[k] = (self.now + min(self.max_backoff, 2.0 ** (failures - 1)), failures)
        self._log_once((k, code), logging.WARNING, "NVML call failed, retried with backoff gpu=%d call=%s err=%r",
                       dev.index, k[1], str(e))

    def _symbol(self, name):
        """The driver's C function, or None when the loaded library lacks it."""
        try:
            return self.nvml._nvmlGetFunctionPointer(name)
        except self.nvml.NVMLError:
            return None

    def _c(self, name):
        """A callable for a C function with no pynvml wrapper (or a wrong one): True on success,
        else raises NVMLError. None when the driver lacks the function."""
        if name not in self.cfns:
            fn = self._symbol(name)

            def call(*args, fn=fn):
                ret = fn(*args)
                if ret != SUCCESS:
                    raise self.nvml.NVMLError(ret)
                return True
            self.cfns[name] = call if fn is not None else None
        return self.cfns[name]

    def _unsupported(self, dev, k, why):
        self.unsupported.add(k)
        self._log_once(("unsupported",) + k, logging.INFO,
                       "GPU field not available, not asked again gpu=%d call=%s reason=%r", dev.index, k[1], why)

    def _first(self, dev, calls, handle=None, prefix=""):
        """The first call of [(name, args, kwargs)] the driver answers."""
        for name, args, kw in calls:
            key = prefix + name + ("_v2" if kw.get("version") else "")
            if self._skip((dev.key, key)):
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
        mw = self._get(dev, "nvmlDeviceGetPowerManagementDefaultLimit")
        dev.power_default = None if mw is None else mw / 1000
        limits = self._get(dev, "nvmlDeviceGetPowerManagementLimitConstraints")
        dev.power_max = None if not limits else limits[1] / 1000
        dev.link_max_generation = self._get(dev, "nvmlDeviceGetMaxPcieLinkGeneration")
        dev.link_max_width = self._get(dev, "nvmlDeviceGetMaxPcieLinkWidth")
        probe = self._get(dev, "nvmlDeviceGetFieldValues", [FI_PCIE_TX_BYTES, FI_PCIE_RX_BYTES], key="pcie_probe")
        # known before the first PCIe refresh, so no GPU with counters takes a 20 ms throughput window
        dev.pcie_counters = bool(probe) and all(v.nvmlReturn == SUCCESS for v in probe)
        dev.nvlinks = []
        for link in range(MAX_NVLINKS):     # links are numbered from 0; the first that errs ends them
            try:
                self.nvml.nvmlDeviceGetNvLinkState(dev.handle, link)
            except self.nvml.NVMLError as e:
                if _error_code(e) in LOST:
                    raise _Lost() from None
                break
            dev.nvlinks.append(link)

    # -- reads -------------------------------------------------------------------------------

    def _each(self, now, read):
        """Run read(dev) for every GPU under the read lock; a lost GPU yields (dev, None)."""
        out = []
        self.rw.acquire_read()
        self.now = now
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
        self.rw.acquire_read()
        try:
            self._drain_xids()
        finally:
            self.rw.release_read()
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
        g.temperature = self._temperature(dev)
        g.slowdown, g.shutdown = dev.slowdown, dev.shutdown
        self._fans(dev, g)
        self._health(dev, g)
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
            self._events_between(dev, g)
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

    def _events_between(self, dev, g):
        """A reason whose time counter grew by at least EVENT_SHARE of the time since the last
        refresh is on, also when the clocks were free again at the moment of the read."""
        now, prev = self.now, dev.event_time
        dev.event_time = {r: (now, sec) for r, sec in g.clock_event_seconds.items()}
        for reason, sec in g.clock_event_seconds.items():
            t0, s0 = prev.get(reason, (None, None))
            if t0 is not None and now > t0 and sec >= s0 and (sec - s0) / (now - t0) >= EVENT_SHARE:
                g.clock_events[reason] = 1

    def _temperature(self, dev):
        """nvmlDeviceGetTemperatureV where the driver has it (the old call is deprecated in NVML 13)."""
        fn = self._c("nvmlDeviceGetTemperatureV")
        if fn is not None:
            t = _TemperatureV1(version=_version(_TemperatureV1), sensorType=0)   # NVML_TEMPERATURE_GPU
            if self._call(dev, "temperature_v", fn, (dev.handle, ctypes.byref(t))):
                return t.temperature
        return self._get(dev, "nvmlDeviceGetTemperature", self.nvml.NVML_TEMPERATURE_GPU)

    def _fans(self, dev, g):
        """Fan speed in % of the maximum: may exceed 100 (nvml.h), kept as read. rpm where the
        driver tells it."""
        for i in range(dev.fan_count or 0):
            speed = self._get(dev, "nvmlDeviceGetFanSpeed_v2", i, key=f"fan{i}")
            if speed is not None:
                g.fans[str(i)] = speed / 100
        if "0" not in g.fans:                # no fan count, or _v2 refused: the single-fan call
            speed = self._get(dev, "nvmlDeviceGetFanSpeed")
            if speed is not None:
                g.fans["0"] = speed / 100
        rpm = self._c("nvmlDeviceGetFanSpeedRPM")
        if rpm is None:
            return
        for f in sorted(g.fans, key=int):
            info = _FanSpeedV1(version=_version(_FanSpeedV1), fan=int(f))
            if self._call(dev, f"fan_rpm{f}", rpm, (dev.handle, ctypes.byref(info))):
                g.fan_rpm[f] = info.speed

    def _fields(self, dev):
        """{field id: value} of the FIELDS (and NVLink's, with links) the driver answers, in one call."""
        asked = FIELDS + (NVLINK_FIELDS if dev.nvlinks else ()) + tuple(sorted(set(dev.event_fields.values())))
        ids = [f for f in dict.fromkeys(asked) if f in dev.fields_ok]
        if not ids:
            return {}
        values = self._get(dev, "nvmlDeviceGetFieldValues", [(f, SCOPED[f]) if f in SCOPED else f for f in ids],
                           key="fields")
        out = {}
        for v in values or ():
            if v.nvmlReturn != SUCCESS:
                if v.nvmlReturn in CAPABILITY:
                    dev.fields_ok.discard(v.fieldId)
                continue
            out[v.fieldId] = _field_value(v)
        return out

    def _health(self, dev, g):
        f = self._fields(dev)
        g.memory_temperature = f.get(FI_MEMORY_TEMP)
        margin = None
        fn = self._c("nvmlDeviceGetMarginTemperature")
        m = _MarginV1(version=_version(_MarginV1))
        if fn is not None and self._call(dev, "margin", fn, (dev.handle, ctypes.byref(m))):
            margin = m.marginTemperature
        g.margin = margin
        if margin is not None and g.temperature is not None:
            # Ada and later: limits are T.Limit offsets (nvml.h); T.Limit = current + margin
            limit = g.temperature + margin
            if FI_SLOWDOWN_TLIMIT in f:
                g.slowdown = limit - f[FI_SLOWDOWN_TLIMIT]
            if FI_SHUTDOWN_TLIMIT in f:
                g.shutdown = limit - f[FI_SHUTDOWN_TLIMIT]
        g.pcie_transmit_bytes = f.get(FI_PCIE_TX_BYTES)
        g.pcie_receive_bytes = f.get(FI_PCIE_RX_BYTES)
        dev.pcie_counters = g.pcie_transmit_bytes is not None and g.pcie_receive_bytes is not None
        g.pcie_replays = f.get(FI_PCIE_REPLAY)
        for key, fid in ((("corrected", "volatile"), FI_ECC_SBE_VOL), (("uncorrected", "volatile"), FI_ECC_DBE_VOL),
                         (("corrected", "aggregate"), FI_ECC_SBE_AGG), (("uncorrected", "aggregate"), FI_ECC_DBE_AGG)):
            if fid in f:
                g.ecc[key] = f[fid]
        for key, fid in (("single_bit", FI_RETIRED_SBE), ("double_bit", FI_RETIRED_DBE)):
            if fid in f:
                g.retired_pages[key] = f[fid]
        g.retired_pending = f.get(FI_RETIRED_PENDING)
        for key, fid in (("correctable", FI_REMAPPED_COR), ("uncorrectable", FI_REMAPPED_UNC)):
            if fid in f:
                g.remapped_rows[key] = f[fid]
        g.remap_pending = f.get(FI_REMAPPED_PENDING)
        g.remap_failed = f.get(FI_REMAPPED_FAILURE)
        for reason, names in EVENT_TIME:
            fid = next((dev.event_fields[n] for n in names if dev.event_fields.get(n) in f), None)
            if fid is not None:
                g.clock_event_seconds[reason] = f[fid] / 1e9
        if dev.nvlinks:
            g.nvlink_errors = {name: f[fid] for name, fid in NVLINK_ERRORS if fid in f}
            if FI_NVLINK_DATA_TX in f and FI_NVLINK_DATA_RX in f:
                g.nvlink_transmit_bytes = f[FI_NVLINK_DATA_TX] * KIB
                g.nvlink_receive_bytes = f[FI_NVLINK_DATA_RX] * KIB
        g.power_default_limit, g.power_max_limit = dev.power_default, dev.power_max
        g.link_generation = self._get(dev, "nvmlDeviceGetCurrPcieLinkGeneration")
        g.link_width = self._get(dev, "nvmlDeviceGetCurrPcieLinkWidth")
        g.link_max_generation, g.link_max_width = dev.link_max_generation, dev.link_max_width
        g.xid_errors, g.last_xid = dict(dev.xids), dev.last_xid

    # -- Xid errors ----------------------------------------------------------------------------

    def _watch_xids(self):
        """Register every GPU that can report Xid errors in one event set (at NVML start)."""
        nvml = self.nvml
        try:
            events = nvml.nvmlEventSetCreate()
        except nvml.NVMLError as e:
            self._log_once(("xid", _error_code(e)), logging.INFO, "no Xid events from this driver err=%r", str(e))
            return
        watched = 0
        for dev in self.devices:
            if dev.lost:
                continue
            try:
                if not nvml.nvmlDeviceGetSupportedEventTypes(dev.handle) & XID_EVENT:
                    continue
                nvml.nvmlDeviceRegisterEvents(dev.handle, XID_EVENT, events)
                watched += 1
            except nvml.NVMLError as e:
                self._log_once(("xid", dev.key, _error_code(e)), logging.INFO,
                               "no Xid events for this GPU gpu=%d err=%r", dev.index, str(e))
        if watched:
            self.events = events
        else:
            try:
                nvml.nvmlEventSetFree(events)
            except nvml.NVMLError:
                pass

    def _free_events(self):
        if self.events is not None:
            try:
                self.nvml.nvmlEventSetFree(self.events)
            except self.nvml.NVMLError:
                pass
            self.events = None

    def _drain_xids(self):
        """Count the Xid events the driver queued since the last look (never waits)."""
        if self.events is None:
            return
        with self.lost_lock:
            for _ in range(1000):            # bounded: a GPU in an Xid storm cannot stall a refresh
                try:
                    data = self.nvml.nvmlEventSetWait_v2(self.events, 0)
                except self.nvml.NVMLError:
                    return                   # TIMEOUT: nothing more queued
                addr = ctypes.cast(data.device, ctypes.c_void_p).value
                dev = next((d for d in self.devices if d.handle is not None and
                            ctypes.cast(d.handle, ctypes.c_void_p).value == addr), None)
                if dev is None or not data.eventType & XID_EVENT:
                    continue
                xid = int(data.eventData)
                dev.xids[xid] = dev.xids.get(xid, 0) + 1
                dev.last_xid = xid

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
        """PCIe throughput of the GPUs without byte counters. Each reading costs the driver a 20 ms
        sampling window."""
        if not self.ensure(now):
            return []
        nvml = self.nvml

        def read(dev):
            r = PcieReading(dev.index, dev.uuid)
            if not dev.pcie_counters:
                tx = self._get(dev, "nvmlDeviceGetPcieThroughput", nvml.NVML_PCIE_UTIL_TX_BYTES, key="pcie_tx")
                rx = self._get(dev, "nvmlDeviceGetPcieThroughput", nvml.NVML_PCIE_UTIL_RX_BYTES, key="pcie_rx")
                r.receive, r.transmit = (None if rx is None else rx * KIB), (None if tx is None else tx * KIB)
            if dev.nvlinks:
                states = [self._get(dev, "nvmlDeviceGetNvLinkState", link, key=f"nvlink{link}")
                          for link in dev.nvlinks]
                r.nvlinks = len(dev.nvlinks)
                r.nvlinks_active = sum(1 for s in states if s)
            return r

        return [r for _, r in self._each(now, read) if r is not None]

    def read_processes(self, now):
        """Processes on each GPU that is up: memory (compute, graphics and MPS lists merged by
        pid) and per-engine utilisation from the driver's process samples."""
        if not self.ensure(now):
            return []
        return [r for _, r in self._each(now, self._read_processes) if r is not None]

    def _process_api(self):
        """(symbol suffix, entry struct) for the process lists of the loaded driver (nvitop's rule).

        The _v3 entry point of R535 drivers that have nvmlDeviceGetConfComputeMemSizeInfo but not
        yet nvmlDeviceGetRunningProcessDetailList writes 32-byte entries (with the confidential
        computing memory); every other driver writes 24-byte ones, whatever nvidia-ml-py assumes.
        """
        have = self._symbol
        if have("nvmlDeviceGetComputeRunningProcesses_v3"):
            if have("nvmlDeviceGetConfComputeMemSizeInfo") and not have("nvmlDeviceGetRunningProcessDetailList"):
                return "_v3", _ProcV3
            return "_v3", _ProcV2
        if have("nvmlDeviceGetComputeRunningProcesses_v2"):
            return "_v2", _ProcV2
        return "", _ProcV1

    def _list(self, dev, kind):
        """[(pid, used memory or NOT_AVAILABLE, gpu instance, compute instance)]."""
        suffix, entry = self.proc_api or ("_v3", _ProcV2)
        fn = self._symbol(f"nvmlDevice{kind}RunningProcesses{suffix}")
        if fn is None:
            return []
        return self._call(dev, f"{kind}RunningProcesses", self._processes, (fn, dev.handle, entry)) or []

    def _processes(self, fn, handle, entry):
        count = ctypes.c_uint(0)
        ret = fn(handle, ctypes.byref(count), None)
        if ret == SUCCESS:
            return []
        if ret != INSUFFICIENT_SIZE:
            raise self.nvml.NVMLError(ret)
        count.value = count.value * 2 + 5    # room for processes started meanwhile
        array = (entry * count.value)()
        ret = fn(handle, ctypes.byref(count), array)
        if ret != SUCCESS:
            raise self.nvml.NVMLError(ret)
        has_instance = entry is not _ProcV1
        return [(p.pid, p.usedGpuMemory, p.gpuInstanceId if has_instance else 0xFFFFFFFF,
                 p.computeInstanceId if has_instance else 0xFFFFFFFF) for p in array[:count.value]]

    def _read_processes(self, dev):
        merged = {}
        for kind in ("GetCompute", "GetGraphics", "GetMPSCompute"):
            for pid, mem, gi, ci in self._list(dev, kind):
                if mem == NOT_AVAILABLE:
                    mem = None
                cur = merged.get(pid)
                if cur is None:
                    merged[pid] = NvidiaProcess(pid, mem, gpu_instance=None if gi == 0xFFFFFFFF else gi,
                                                compute_instance=None if ci == 0xFFFFFFFF else ci)
                elif mem is not None:
                    # a process in two lists reports its whole usage in each: count it once
                    cur.memory = mem if cur.memory is None else max(cur.memory, mem)
        samples = self._samples(dev) if merged else None
        if samples is not None:
            for proc in merged.values():
                proc.utilization = samples.get(proc.pid) or {engine: 0.0 for engine, _ in ENGINES}
                b = dev.busy.setdefault(proc.pid, [0.0, 0.0, 0.0, 0.0])
                proc.engine_seconds = {"sm": b[0] / 100, "memory": b[1] / 100, "encoder": b[2] / 100,
                                       "decoder": b[3] / 100}
        # bookkeeping of processes that left the GPU goes with them
        dev.busy = {pid: v for pid, v in dev.busy.items() if pid in merged}
        dev.sample_last = {pid: v for pid, v in dev.sample_last.items() if pid in merged}
        return NvidiaGPUProcesses(dev.index, dev.uuid, list(merged.values()))

    def _samples(self, dev):
        """{pid: {engine: ratio}} of samples newer than the last seen; {} when there are none
        (NOT_FOUND); None when the GPU gives no per-process utilisation."""
        raw = None
        for name in ("nvmlDeviceGetProcessesUtilizationInfo", "nvmlDeviceGetProcessUtilization"):
            k = (dev.key, name)
            if self._skip(k):
                continue
            fn = getattr(self.nvml, name, None)
            if fn is None:
                self._unsupported(dev, k, "not in this nvidia-ml-py")
                continue
            try:
                raw = fn(dev.handle, dev.last_seen)
                self.retry.pop(k, None)
                break
            except self.nvml.NVMLError as e:
                if _error_code(e) in (NOT_FOUND, SUCCESS):
                    return {}
                self._failed(dev, k, e)
                if k in self.unsupported:
                    continue
                return None
        if raw is None:
            return None
        seen = dev.last_seen
        rows = sorted(r for r in _rows(raw, SAMPLE_FIELDS) if r[0] > seen and max(r[2:]) <= 100)
        # (older or garbage samples left out: the driver sometimes returns both)
        self._learn_period(dev, rows)
        period = dev.sample_period or DEFAULT_SAMPLE_PERIOD
        newest, last, busy = {}, dev.sample_last, dev.busy
        for ts, pid, sm, mem, enc, dec in rows:
            newest[pid] = (sm, mem, enc, dec)
            # each sample stands for the time since that process's previous one, at most one period
            prev = last.get(pid)
            dt = period if prev is None else min(period, (ts - prev) * 1e-6)
            last[pid] = ts
            b = busy.get(pid)
            if b is None:
                b = busy[pid] = [0.0, 0.0, 0.0, 0.0]     # % x s per engine
            b[0] += sm * dt
            b[1] += mem * dt
            b[2] += enc * dt
            b[3] += dec * dt
        if rows:
            dev.last_seen = rows[-1][0]
        return {pid: {"sm": v[0] / 100, "memory": v[1] / 100, "encoder": v[2] / 100, "decoder": v[3] / 100}
                for pid, v in newest.items()}

    @staticmethod
    def _learn_period(dev, rows):
        """The driver's sampling period: the smallest step between distinct sample times."""
        stamps = sorted({r[0] for r in rows})
        steps = [b - a for a, b in zip(stamps, stamps[1:]) if b > a]
        if steps:
            step = min(steps) / 1e6
            dev.sample_period = step if dev.sample_period is None else min(dev.sample_period, step)

    def process_name(self, pid):
        """NVML's name for a pid (basename), for processes /proc cannot show; None if unknown."""
        try:
            name = self.nvml.nvmlSystemGetProcessName(pid)
        except self.nvml.NVMLError:
            return None                      # NOT_FOUND: the process is gone
        name = name.decode(errors="replace") if isinstance(name, bytes) else str(name)
        return name.replace("\\", "/").rsplit("/", 1)[-1] or None
