"""A fake NVIDIA driver library for the real pynvml module.

The fake sits where libnvidia-ml.so.1 sits: pynvml's own wrappers (from nvidia-ml-py) run
unchanged, build the real ctypes structs, call into this library with ctypes arguments and
turn its return codes into the real NVMLError subclasses. Each FakeNVML gets a fresh copy of
the pynvml module, so scenarios do not share the library handle or pynvml's function cache.

A scenario is a list of FakeGPU built from a real nvidia-smi capture (tests/fakenvml/capture.py
and scenarios.py). Only the C symbols the captured driver exported are offered: a symbol missing
from the capture's list is NVMLError_FunctionNotFound, exactly as on that machine.

Process lists are written as the driver writes them: packed C entries of the size that
driver generation uses (16, 24 or 32 bytes), into whatever buffer the caller passed, so a
caller that assumes another entry size reads garbage, as it would on a real machine.
"""
import collections
import ctypes
import importlib.util
import itertools
import os
import struct
import sys
import threading
import time
import types

import pynvml as _real

_copies = itertools.count()


def fresh_pynvml():
    """A new, independent instance of the installed pynvml module."""
    name = f"_fakenvml_pynvml_{next(_copies)}"
    spec = importlib.util.spec_from_file_location(name, _real.__file__)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod  # pynvml looks itself up in sys.modules to create its error classes
    spec.loader.exec_module(mod)
    return mod


NOT_AVAILABLE = 0xFFFFFFFFFFFFFFFF     # NVML_VALUE_NOT_AVAILABLE for unsigned long long
NO_INSTANCE = 0xFFFFFFFF               # gpuInstanceId/computeInstanceId outside MIG

# C return codes (nvml.h)
SUCCESS, UNINITIALIZED, INVALID_ARGUMENT, NOT_SUPPORTED, NO_PERMISSION = 0, 1, 2, 3, 4
NOT_FOUND, INSUFFICIENT_SIZE, TIMEOUT, GPU_IS_LOST, ARGUMENT_VERSION_MISMATCH, UNKNOWN = 6, 7, 10, 15, 25, 999

# nvml.h's process entries: pid, usedGpuMemory (v1); + gpuInstanceId, computeInstanceId (v2);
# + usedGpuCcProtectedMemory (the early R535 _v3)
PROCESS_ENTRY = {16: struct.Struct("=I4xQ"), 24: struct.Struct("=I4xQII"), 32: struct.Struct("=I4xQIIQ")}
XID_EVENT = 0x8
# field id -> nvmlValueType_t of its value
FIELD_TYPES = {193: 5, 194: 5, 195: 5, 196: 5, 82: 1, 94: 1}     # TLIMIT offsets are signed
VALUE_ATTR = {1: "uiVal", 3: "ullVal", 5: "siVal"}


class Err:
    """A field the driver refuses: the return code it gives instead of a value."""

    def __init__(self, code):
        self.code = code

    def __repr__(self):
        return f"Err({self.code})"


class Flaky:
    """A value the driver fails to give ``times`` times with ``code`` (a one-off error), then gives."""

    def __init__(self, code, times, value):
        self.code, self.times, self.value = code, times, value
        self.calls = 0

    def get(self):
        self.calls += 1
        return Err(self.code) if self.calls <= self.times else self.value


def _val(x):
    return x.value if hasattr(x, "value") else int(x)


def _out(ref):
    """The ctypes object behind byref(obj)."""
    return ref._obj


class FakeMig:
    def __init__(self, index, uuid, name, gpu_instance, compute_instance, memory):
        self.index, self.uuid, self.name = index, uuid, name
        self.gpu_instance, self.compute_instance = gpu_instance, compute_instance
        self.memory = memory   # (total, reserved, used, free) bytes


class FakeGPU:
    """One device's answers, in NVML's own units (%, MHz, mW, bytes, KB/s, µs).

    Any value may be an Err: that call returns the error code instead. ``processes`` is a list
    of dicts {pid, types ('C', 'G', 'M'), used (bytes or NOT_AVAILABLE), gi, ci}; ``samples`` is
    a list of rounds, each {pid: (sm, mem, enc, dec)}, replayed one round per sample period.
    """

    def __init__(self, **kw):
        self.index = 0
        self.name = "NVIDIA GPU"
        self.uuid = "GPU-00000000-0000-0000-0000-000000000000"
        self.bus_id = "00000000:01:00.0"
        self.pci = (0, 1, 0, 0x10DE, 0x10DE)     # domain, bus, device, device id, subsystem id
        self.utilization = (0, 0)
        self.memory = (0, 0, 0, 0)             # total, reserved, used, free (bytes)
        self.temperature = 0
        self.thresholds = {}                   # NVML_TEMPERATURE_THRESHOLD_* -> °C or Err
        self.fans = Err(NOT_SUPPORTED)         # list of % or Err
        self.power_mw = 0
        self.power_limit_mw = 0
        self.boot_energy_mj = 0                # energy counter when the fake started
        self.clocks = {}                       # NVML_CLOCK_* -> MHz or Err
        self.event_reasons = 0
        self.pstate = 0
        self.encoder = 0
        self.decoder = 0
        self.pcie = {}                         # NVML_PCIE_UTIL_* -> KB/s or Err
        self.mig_mode = Err(NOT_SUPPORTED)     # (current, pending) or Err
        self.migs = []
        self.processes = []
        self.samples = []
        self.process_utilization = SUCCESS     # or an error code for both utilisation calls
        self.extra_samples = []                # (ts µs, pid, sm, mem, enc, dec): injected driver output
        self.fan_v2 = SUCCESS                  # or the code nvmlDeviceGetFanSpeed_v2 answers
        self.fan_rpm = Err(NOT_SUPPORTED)      # list of rpm or Err
        self.temperature_v = SUCCESS           # or the code nvmlDeviceGetTemperatureV answers
        self.margin = Err(NOT_SUPPORTED)       # °C to the T.Limit
        self.fields = {}                       # NVML_FI_* -> value or Err; absent: NOT_SUPPORTED
        self.pcie_bytes = None                 # (tx, rx) bytes at start; grow with the pcie throughput
        self.nvlink_kib = None                 # per link [tx, rx] KiB of payload (fields 138/139)
        self.event_time = {}                   # "sw_thermal"/"hw_thermal"/"hw_power_brake" -> ns
        self.power_default_mw = Err(NOT_SUPPORTED)
        self.power_max_mw = Err(NOT_SUPPORTED)
        self.link = Err(NOT_SUPPORTED)         # (current gen, max gen, current width, max width)
        self.events = XID_EVENT                # event types the GPU supports
        self.xids = collections.deque()        # Xid codes queued for the event set
        self.nvlinks = []                      # per link: True when up
        self.lost = False
        for k, v in kw.items():
            if not hasattr(self, k):
                raise TypeError(f"FakeGPU has no field {k}")
            setattr(self, k, v)


class FakeLibrary:
    """The C side of NVML: functions named like libnvidia-ml.so.1's symbols.

    Each symbol is a plain function attribute (pynvml sets ``restype`` on some of them). A
    symbol not in ``symbols`` is absent, so pynvml raises NVMLError_FunctionNotFound for it.
    """

    def __init__(self, nvml, gpus, driver_version, symbols=None, clock=time.time, names=None,
                 control=None):
        self.nvml = nvml
        self.gpus = gpus
        self.driver_version = driver_version
        self.clock = clock
        self.names = dict(names or {})          # pid -> process name (nvmlSystemGetProcessName)
        self.control = control                  # path of a file listing lost GPU indexes
        self._control_checked = 0.0
        self._control_mtime = None
        self.lock = threading.Lock()
        self.initialized = 0
        self.init_calls = 0
        self.calls = {}                         # symbol -> count, for tests that check caching
        self.timing = False                     # when True, CPU spent inside the fake adds up here:
        self.cpu_seconds = 0.0                  # a real driver's share is not the exporter's
        self.start = clock()
        self.sample_period = 0.2
        self._handles = {}                      # struct address -> (gpu, mig or None)
        self._structs = []
        self._event_sets = []
        for g in gpus:
            self._add_handle(g, None)
            for m in g.migs:
                self._add_handle(g, m)
        impl = {n: getattr(self, n) for n in dir(self) if n.startswith("nvml")}
        self.exported = set(impl) if symbols is None else set(impl) & set(symbols)
        # what pynvml sees as the loaded library: only the exported symbols, as plain functions
        self.symbols = types.SimpleNamespace(**{n: self._counted(n, impl[n]) for n in self.exported})

    def _counted(self, name, fn):
        def call(*args):
            self.calls[name] = self.calls.get(name, 0) + 1
            if not self.timing:
                return fn(*args)
            t0 = time.process_time()
            try:
                return fn(*args)
            finally:
                self.cpu_seconds += time.process_time() - t0
        call.__name__ = name
        return call

    def _add_handle(self, gpu, mig):
        s = self.nvml.struct_c_nvmlDevice_t()
        self._structs.append(s)
        self._handles[ctypes.addressof(s)] = (gpu, mig)
        if mig is None:
            gpu._struct = s
        else:
            mig._struct = s

    # -- state -------------------------------------------------------------------------------

    def set_lost(self, index, lost=True):
        with self.lock:
            self.gpus[index].lost = lost

    def _poll_control(self):
        if not self.control:
            return
        now = time.monotonic()
        if now - self._control_checked < 0.05:
            return
        self._control_checked = now
        try:
            st = os.stat(self.control)
            if st.st_mtime_ns == self._control_mtime:
                return
            with open(self.control) as f:
                words = f.read().split()
            self._control_mtime = st.st_mtime_ns
        except OSError:
            words = []
        lost = {int(w) for w in words if w.isdigit()}
        with self.lock:
            for g in self.gpus:
                g.lost = g.index in lost

    def _device(self, handle):
        """(gpu, mig, error code)."""
        if not self.initialized:
            return None, None, UNINITIALIZED
        try:
            addr = ctypes.addressof(handle.contents)
        except (ValueError, AttributeError, TypeError):
            return None, None, INVALID_ARGUMENT
        found = self._handles.get(addr)
        if found is None:
            return None, None, INVALID_ARGUMENT
        self._poll_control()
        gpu, mig = found
        if gpu.lost:
            return gpu, mig, GPU_IS_LOST
        return gpu, mig, SUCCESS

    def _value(self, handle, get, mig_ok=False):
        """Resolve a handle and read one value; (value, code)."""
        gpu, mig, rc = self._device(handle)
        if rc:
            return None, rc
        if mig is not None and not mig_ok:
            return None, NOT_SUPPORTED
        value = get(gpu) if mig is None else get(mig)
        if isinstance(value, Flaky):
            value = value.get()
        if isinstance(value, Err):
            return None, value.code
        if value is None:
            return None, NOT_SUPPORTED
        return value, SUCCESS

    def _scalar(self, handle, ref, get, mig_ok=False):
        value, rc = self._value(handle, get, mig_ok)
        if rc == SUCCESS:
            _out(ref).value = value
        return rc

    # -- system ------------------------------------------------------------------------------

    def nvmlInit_v2(self):
        return self.nvmlInitWithFlags(0)

    def nvmlInitWithFlags(self, flags):
        with self.lock:
            self.initialized += 1
            self.init_calls += 1
        return SUCCESS

    def nvmlShutdown(self):
        with self.lock:
            if not self.initialized:
                return UNINITIALIZED
            self.initialized -= 1
        return SUCCESS

    def nvmlErrorString(self, code):
        return f"NVML error {_val(code)}".encode()

    def nvmlSystemGetDriverVersion(self, buf, size):
        if not self.initialized:
            return UNINITIALIZED
        buf.value = self.driver_version.encode()
        return SUCCESS

    def nvmlSystemGetProcessName(self, pid, buf, size):
        if not self.initialized:
            return UNINITIALIZED
        name = self.names.get(_val(pid))
        if name is None:
            return NOT_FOUND
        buf.value = name.encode()[:_val(size) - 1]
        return SUCCESS

    def nvmlDeviceGetCount_v2(self, ref):
        if not self.initialized:
            return UNINITIALIZED
        _out(ref).value = len(self.gpus)
        return SUCCESS

    def nvmlDeviceGetHandleByIndex_v2(self, index, ref):
        if not self.initialized:
            return UNINITIALIZED
        i = _val(index)
        if not 0 <= i < len(self.gpus):
            return INVALID_ARGUMENT
        self._poll_control()
        if self.gpus[i].lost:
            return GPU_IS_LOST
        _out(ref).contents = self.gpus[i]._struct
        return SUCCESS

    # -- identity ----------------------------------------------------------------------------

    def _string(self, handle, buf, get):
        value, rc = self._value(handle, get, mig_ok=True)
        if rc == SUCCESS:
            buf.value = value.encode()
        return rc

    def nvmlDeviceGetName(self, handle, buf, size):
        return self._string(handle, buf, lambda d: d.name)

    def nvmlDeviceGetUUID(self, handle, buf, size):
        return self._string(handle, buf, lambda d: d.uuid)

    def nvmlDeviceGetIndex(self, handle, ref):
        return self._scalar(handle, ref, lambda g: g.index)

    def nvmlDeviceGetPciInfo_v3(self, handle, ref):
        gpu, mig, rc = self._device(handle)
        if rc:
            return rc
        info = _out(ref)
        info.busId = info.busIdLegacy = gpu.bus_id.encode()
        info.domain, info.bus, info.device, info.pciDeviceId, info.pciSubSystemId = gpu.pci
        return SUCCESS

    # -- readings ----------------------------------------------------------------------------

    def nvmlDeviceGetMemoryInfo(self, handle, ref):
        value, rc = self._value(handle, lambda d: d.memory, mig_ok=True)
        if rc == SUCCESS:
            total, reserved, used, free = value
            m = _out(ref)
            m.total, m.free, m.used = total, free, total - free   # v1: used includes reserved
        return rc

    def nvmlDeviceGetMemoryInfo_v2(self, handle, ref):
        m = _out(ref)
        if m.version != self.nvml.nvmlMemory_v2:
            return ARGUMENT_VERSION_MISMATCH
        value, rc = self._value(handle, lambda d: d.memory, mig_ok=True)
        if rc == SUCCESS:
            m.total, m.reserved, m.used, m.free = value
        return rc

    def nvmlDeviceGetUtilizationRates(self, handle, ref):
        value, rc = self._value(handle, lambda g: g.utilization)
        if rc == SUCCESS:
            u = _out(ref)
            u.gpu, u.memory = value
        return rc

    def nvmlDeviceGetTemperature(self, handle, sensor, ref):
        if _val(sensor) != self.nvml.NVML_TEMPERATURE_GPU:
            return INVALID_ARGUMENT
        return self._scalar(handle, ref, lambda g: g.temperature)

    def nvmlDeviceGetTemperatureV(self, handle, ref):
        t = _out(ref)
        if t.version != 12 | (1 << 24):
            return ARGUMENT_VERSION_MISMATCH
        if t.sensorType != self.nvml.NVML_TEMPERATURE_GPU:
            return INVALID_ARGUMENT
        value, rc = self._value(handle, lambda g: Err(g.temperature_v) if g.temperature_v else g.temperature)
        if rc == SUCCESS:
            t.temperature = value
        return rc

    def nvmlDeviceGetMarginTemperature(self, handle, ref):
        m = _out(ref)
        if m.version != 8 | (1 << 24):
            return ARGUMENT_VERSION_MISMATCH
        value, rc = self._value(handle, lambda g: g.margin)
        if rc == SUCCESS:
            m.marginTemperature = value
        return rc

    def nvmlDeviceGetFieldValues(self, handle, count, ref):
        gpu, mig, rc = self._device(handle)
        if rc:
            return rc
        values = _out(ref) if hasattr(ref, "_obj") else ref
        for i in range(_val(count)):
            v = values[i]
            value = gpu.fields.get(v.fieldId, Err(NOT_SUPPORTED))
            numbering, smoothing = self._event_numbering()
            if v.fieldId in numbering:
                value = gpu.event_time.get(numbering[v.fieldId], Err(NOT_SUPPORTED))
            elif v.fieldId in smoothing:
                value = smoothing[v.fieldId]
            if gpu.pcie_bytes is not None and v.fieldId in (197, 198):
                value = self._pcie_bytes(gpu, v.fieldId - 197)
            if gpu.nvlink_kib is not None and v.fieldId in (138, 139):
                value = self._nvlink(gpu, v.fieldId - 138, v.scopeId)
            if isinstance(value, Flaky):
                value = value.get()
            if isinstance(value, Err):
                v.nvmlReturn = value.code
                continue
            v.nvmlReturn = SUCCESS
            v.valueType = FIELD_TYPES.get(v.fieldId, 3)
            v.timestamp = int(self.clock() * 1e6)
            setattr(v.value, VALUE_ATTR[v.valueType], value)
        return SUCCESS

    def _event_numbering(self):
        """Field ids of the slowdown time counters as this driver numbers them, and what the other
        numbering's ids mean here: R575 to 580.65 count at 251-253; from 580.82 they are at 269-271
        and 251-253 are power-smoothing settings (enabled 1, privilege level 0, ramp-down 1)."""
        try:
            version = tuple(int(x) for x in self.driver_version.split(".")[:2])
        except ValueError:
            return {}, {}
        if version >= (580, 82):
            return {269: "sw_thermal", 270: "hw_thermal", 271: "hw_power_brake"}, {251: 1, 252: 0, 253: 1}
        if version >= (575, 0):
            return {251: "sw_thermal", 252: "hw_thermal", 253: "hw_power_brake"}, {}
        return {}, {}

    @staticmethod
    def _nvlink(gpu, which, scope):
        """nvml.h: the link in scopeId, or UINT_MAX for the sum over all links."""
        if scope == 0xFFFFFFFF:
            return sum(link[which] for link in gpu.nvlink_kib)
        if scope < len(gpu.nvlink_kib):
            return gpu.nvlink_kib[scope][which]
        return Err(INVALID_ARGUMENT)

    def _pcie_bytes(self, gpu, which):
        """Not in the captures: the counter integrates the captured throughput (KB/s) over time."""
        rate = gpu.pcie.get(which)
        if isinstance(rate, Err) or rate is None:
            return Err(NOT_SUPPORTED)
        return int(gpu.pcie_bytes[which] + rate * 1024 * (self.clock() - self.start))

    def nvmlDeviceGetTemperatureThreshold(self, handle, which, ref):
        return self._scalar(handle, ref, lambda g: g.thresholds.get(_val(which), Err(NOT_SUPPORTED)))

    def nvmlDeviceGetNumFans(self, handle, ref):
        return self._scalar(handle, ref, lambda g: g.fans if isinstance(g.fans, Err) else len(g.fans))

    def nvmlDeviceGetFanSpeed(self, handle, ref):
        return self._scalar(handle, ref, lambda g: g.fans if isinstance(g.fans, Err) else g.fans[0])

    def nvmlDeviceGetFanSpeed_v2(self, handle, fan, ref):
        def get(g):
            if isinstance(g.fans, Err):
                return g.fans
            if g.fan_v2:
                return Err(g.fan_v2)
            i = _val(fan)
            return g.fans[i] if 0 <= i < len(g.fans) else Err(INVALID_ARGUMENT)
        return self._scalar(handle, ref, get)

    def nvmlDeviceGetFanSpeedRPM(self, handle, ref):
        info = _out(ref)
        if info.version != 12 | (1 << 24):
            return ARGUMENT_VERSION_MISMATCH

        def get(g):
            if isinstance(g.fan_rpm, Err):
                return g.fan_rpm
            return g.fan_rpm[info.fan] if info.fan < len(g.fan_rpm) else Err(INVALID_ARGUMENT)
        value, rc = self._value(handle, get)
        if rc == SUCCESS:
            info.speed = value
        return rc

    def nvmlDeviceGetPowerManagementDefaultLimit(self, handle, ref):
        return self._scalar(handle, ref, lambda g: g.power_default_mw)

    def nvmlDeviceGetPowerManagementLimitConstraints(self, handle, low, high):
        value, rc = self._value(handle, lambda g: g.power_max_mw)
        if rc == SUCCESS:
            _out(low).value, _out(high).value = value // 4, value
        return rc

    def _link(self, handle, ref, i):
        return self._scalar(handle, ref, lambda g: g.link if isinstance(g.link, Err) else g.link[i])

    def nvmlDeviceGetCurrPcieLinkGeneration(self, handle, ref):
        return self._link(handle, ref, 0)

    def nvmlDeviceGetMaxPcieLinkGeneration(self, handle, ref):
        return self._link(handle, ref, 1)

    def nvmlDeviceGetCurrPcieLinkWidth(self, handle, ref):
        return self._link(handle, ref, 2)

    def nvmlDeviceGetMaxPcieLinkWidth(self, handle, ref):
        return self._link(handle, ref, 3)

    def nvmlDeviceGetNvLinkState(self, handle, link, ref):
        def get(g):
            i = _val(link)
            if not g.nvlinks:
                return Err(NOT_SUPPORTED)
            return int(g.nvlinks[i]) if 0 <= i < len(g.nvlinks) else Err(INVALID_ARGUMENT)
        return self._scalar(handle, ref, get)

    # -- events ------------------------------------------------------------------------------

    def nvmlEventSetCreate(self, ref):
        if not self.initialized:
            return UNINITIALIZED
        es = self.nvml.struct_c_nvmlEventSet_t()
        self._event_sets.append((es, []))
        _out(ref).contents = es
        return SUCCESS

    def _event_set(self, ptr):
        try:
            addr = ctypes.addressof(ptr.contents)
        except (ValueError, AttributeError, TypeError):
            return None
        return next((gpus for es, gpus in self._event_sets if ctypes.addressof(es) == addr), None)

    def nvmlDeviceGetSupportedEventTypes(self, handle, ref):
        return self._scalar(handle, ref, lambda g: g.events)

    def nvmlDeviceRegisterEvents(self, handle, types, event_set):
        gpu, mig, rc = self._device(handle)
        if rc:
            return rc
        watched = self._event_set(event_set)
        if watched is None:
            return INVALID_ARGUMENT
        if _val(types) & ~gpu.events:
            return NOT_SUPPORTED
        watched.append(gpu)
        return SUCCESS

    def nvmlEventSetWait_v2(self, event_set, ref, timeout):
        watched = self._event_set(event_set)
        if watched is None:
            return INVALID_ARGUMENT
        for gpu in watched:
            if gpu.xids:
                data = _out(ref)
                data.device = ctypes.pointer(gpu._struct)
                data.eventType = XID_EVENT
                data.eventData = gpu.xids.popleft()
                data.gpuInstanceId = data.computeInstanceId = NO_INSTANCE
                return SUCCESS
        return TIMEOUT

    def nvmlEventSetFree(self, event_set):
        for i, (es, _) in enumerate(self._event_sets):
            try:
                if ctypes.addressof(es) == ctypes.addressof(event_set.contents):
                    del self._event_sets[i]
                    return SUCCESS
            except (ValueError, AttributeError, TypeError):
                break
        return INVALID_ARGUMENT

    def nvmlDeviceGetPowerUsage(self, handle, ref):
        return self._scalar(handle, ref, lambda g: g.power_mw)

    def nvmlDeviceGetEnforcedPowerLimit(self, handle, ref):
        return self._scalar(handle, ref, lambda g: g.power_limit_mw)

    def nvmlDeviceGetTotalEnergyConsumption(self, handle, ref):
        def get(g):
            if isinstance(g.power_mw, Err):
                return g.power_mw
            # Not in the captures: the counter integrates the captured power draw over time.
            return int(g.boot_energy_mj + g.power_mw * (self.clock() - self.start))
        return self._scalar(handle, ref, get)

    def nvmlDeviceGetClockInfo(self, handle, which, ref):
        return self._scalar(handle, ref, lambda g: g.clocks.get(_val(which), Err(INVALID_ARGUMENT)))

    def nvmlDeviceGetCurrentClocksEventReasons(self, handle, ref):
        return self._scalar(handle, ref, lambda g: g.event_reasons)

    def nvmlDeviceGetCurrentClocksThrottleReasons(self, handle, ref):
        return self._scalar(handle, ref, lambda g: g.event_reasons)

    def nvmlDeviceGetPerformanceState(self, handle, ref):
        return self._scalar(handle, ref, lambda g: g.pstate)

    def _codec(self, handle, util_ref, period_ref, get):
        value, rc = self._value(handle, get)
        if rc == SUCCESS:
            _out(util_ref).value = value
            _out(period_ref).value = 167000
        return rc

    def nvmlDeviceGetEncoderUtilization(self, handle, util, period):
        return self._codec(handle, util, period, lambda g: g.encoder)

    def nvmlDeviceGetDecoderUtilization(self, handle, util, period):
        return self._codec(handle, util, period, lambda g: g.decoder)

    def nvmlDeviceGetPcieThroughput(self, handle, counter, ref):
        return self._scalar(handle, ref, lambda g: g.pcie.get(_val(counter), Err(NOT_SUPPORTED)))

    # -- MIG ---------------------------------------------------------------------------------

    def nvmlDeviceGetMigMode(self, handle, cur, pending):
        value, rc = self._value(handle, lambda g: g.mig_mode)
        if rc == SUCCESS:
            _out(cur).value, _out(pending).value = value
        return rc

    def nvmlDeviceGetMaxMigDeviceCount(self, handle, ref):
        def get(g):
            if isinstance(g.mig_mode, Err):
                return g.mig_mode
            return 7 if g.mig_mode[0] else 0
        return self._scalar(handle, ref, get)

    def nvmlDeviceGetMigDeviceHandleByIndex(self, handle, index, ref):
        gpu, mig, rc = self._device(handle)
        if rc:
            return rc
        if mig is not None or isinstance(gpu.mig_mode, Err) or not gpu.mig_mode[0]:
            return INVALID_ARGUMENT
        for m in gpu.migs:
            if m.index == _val(index):
                _out(ref).contents = m._struct
                return SUCCESS
        return NOT_FOUND

    def nvmlDeviceIsMigDeviceHandle(self, handle, ref):
        gpu, mig, rc = self._device(handle)
        if rc:
            return rc
        _out(ref).value = int(mig is not None)
        return SUCCESS

    def _instance_id(self, handle, ref, attr):
        gpu, mig, rc = self._device(handle)
        if rc:
            return rc
        if mig is None:
            return INVALID_ARGUMENT
        _out(ref).value = getattr(mig, attr)
        return SUCCESS

    def nvmlDeviceGetGpuInstanceId(self, handle, ref):
        return self._instance_id(handle, ref, "gpu_instance")

    def nvmlDeviceGetComputeInstanceId(self, handle, ref):
        return self._instance_id(handle, ref, "compute_instance")

    # -- processes ---------------------------------------------------------------------------

    def _process_list(self, handle, count_ref, array, kind, size):
        gpu, mig, rc = self._device(handle)
        if rc:
            return rc
        if mig is not None:
            procs = [p for p in gpu.processes if kind in p["types"] and p["gi"] == mig.gpu_instance
                     and p["ci"] == mig.compute_instance]
        else:
            procs = [p for p in gpu.processes if kind in p["types"]]
        count = _out(count_ref)
        if array is None or count.value < len(procs):
            count.value = len(procs)
            return INSUFFICIENT_SIZE if procs else SUCCESS
        entry = PROCESS_ENTRY[size]
        n = {16: 2, 24: 4, 32: 5}[size]
        data = b"".join(entry.pack(*(p["pid"], p["used"], p["gi"], p["ci"], 0)[:n]) for p in procs)
        # the driver writes its own entry size into the caller's buffer (never past its end here)
        ctypes.memmove(ctypes.addressof(array), data, min(len(data), ctypes.sizeof(array)))
        count.value = len(procs)
        return SUCCESS

    def _v3_entry(self):
        """Entry size of the _v3 lists: 32 bytes on the early R535 drivers, else 24."""
        early = ("nvmlDeviceGetConfComputeMemSizeInfo" in self.exported
                 and "nvmlDeviceGetRunningProcessDetailList" not in self.exported)
        return 32 if early else 24

    def nvmlDeviceGetConfComputeMemSizeInfo(self, handle, ref):
        return self._value(handle, lambda g: Err(NOT_SUPPORTED))[1]

    def nvmlDeviceGetRunningProcessDetailList(self, handle, ref):
        return self._value(handle, lambda g: Err(NOT_SUPPORTED))[1]

    def nvmlDeviceGetComputeRunningProcesses_v3(self, handle, count, array):
        return self._process_list(handle, count, array, "C", self._v3_entry())

    def nvmlDeviceGetComputeRunningProcesses_v2(self, handle, count, array):
        return self._process_list(handle, count, array, "C", 24)

    def nvmlDeviceGetComputeRunningProcesses(self, handle, count, array):
        return self._process_list(handle, count, array, "C", 16)

    def nvmlDeviceGetGraphicsRunningProcesses_v3(self, handle, count, array):
        return self._process_list(handle, count, array, "G", self._v3_entry())

    def nvmlDeviceGetGraphicsRunningProcesses_v2(self, handle, count, array):
        return self._process_list(handle, count, array, "G", 24)

    def nvmlDeviceGetGraphicsRunningProcesses(self, handle, count, array):
        return self._process_list(handle, count, array, "G", 16)

    def nvmlDeviceGetMPSComputeRunningProcesses_v3(self, handle, count, array):
        return self._process_list(handle, count, array, "M", self._v3_entry())

    def nvmlDeviceGetMPSComputeRunningProcesses_v2(self, handle, count, array):
        return self._process_list(handle, count, array, "M", 24)

    def nvmlDeviceGetMPSComputeRunningProcesses(self, handle, count, array):
        return self._process_list(handle, count, array, "M", 16)

    def buffered_samples(self, gpu, since_us):
        """[(timestamp µs, pid, sm, mem, enc, dec)] newer than since_us, from the replayed rounds.

        The driver takes a round every ``sample_period`` seconds, cycling through the captured
        rounds, and keeps the last len(rounds) of them; at start they are the captured rounds.
        """
        if not gpu.samples:
            return []
        now = self.clock()
        rounds, period = len(gpu.samples), self.sample_period
        newest = int((now - self.start) / period) + rounds     # the buffer is full at start
        out = []
        for r in range(max(0, newest - rounds + 1), newest + 1):
            ts = int((self.start + (r - rounds) * period) * 1e6)
            if ts <= since_us or ts > now * 1e6:
                continue
            for pid, (sm, mem, enc, dec) in gpu.samples[(r - 1) % rounds].items():
                out.append((ts, pid, sm, mem, enc, dec))
        out.extend(gpu.extra_samples)      # what a buggy driver returns whatever was asked
        return out

    def _samples(self, handle, since):
        gpu, mig, rc = self._device(handle)
        if rc:
            return None, rc
        mig_on = not isinstance(gpu.mig_mode, Err) and gpu.mig_mode[0]
        if mig is not None or mig_on or gpu.process_utilization:
            return None, gpu.process_utilization or NOT_SUPPORTED     # not on MIG GPUs (nvml.h)
        found = self.buffered_samples(gpu, since)
        return found, (SUCCESS if found else NOT_FOUND)

    def nvmlDeviceGetProcessUtilization(self, handle, array, count_ref, since):
        found, rc = self._samples(handle, _val(since))
        if rc:
            return rc
        count = _out(count_ref)
        if array is None or count.value < len(found):
            count.value = len(found)
            return INSUFFICIENT_SIZE
        for i, (ts, pid, sm, mem, enc, dec) in enumerate(found):
            s = array[i]
            s.pid, s.timeStamp, s.smUtil, s.memUtil, s.encUtil, s.decUtil = pid, ts, sm, mem, enc, dec
        count.value = len(found)
        return SUCCESS

    def nvmlDeviceGetProcessesUtilizationInfo(self, handle, ref):
        info = _out(ref)
        if info.version != self.nvml.ProcessesUtilizationInfo_v1:
            return ARGUMENT_VERSION_MISMATCH
        found, rc = self._samples(handle, info.lastSeenTimeStamp)
        if rc:
            return rc
        if not info.procUtilArray or info.processSamplesCount < len(found):
            info.processSamplesCount = len(found)
            return INSUFFICIENT_SIZE
        for i, (ts, pid, sm, mem, enc, dec) in enumerate(found):
            s = info.procUtilArray[i]
            s.timeStamp, s.pid, s.smUtil, s.memUtil, s.encUtil, s.decUtil = ts, pid, sm, mem, enc, dec
            s.jpgUtil = s.ofaUtil = 0
        info.processSamplesCount = len(found)
        return SUCCESS


def build(gpus, driver_version="", symbols=None, clock=time.time, names=None, control=None):
    """A pynvml module whose library is a FakeLibrary serving ``gpus``. ``module._fake`` is the library."""
    nvml = fresh_pynvml()
    lib = FakeLibrary(nvml, gpus, driver_version, symbols, clock, names, control)
    nvml.nvmlLib = lib.symbols
    nvml._fake = lib
    return nvml


def without_library():
    """A pynvml module on a machine with no NVIDIA driver: loading libnvidia-ml.so.1 fails."""
    nvml = fresh_pynvml()

    def no_library(*args, **kwargs):
        raise OSError("libnvidia-ml.so.1: cannot open shared object file: No such file or directory")

    nvml.CDLL = no_library
    nvml._fake = None
    return nvml
