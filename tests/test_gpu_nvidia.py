"""NVIDIA source and collectors on the fake NVML: real pynvml wrappers, real captures."""
import ctypes
import inspect
import logging
import os
import sys

import pynvml
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from conftest import FIXTURES, ROOT
from proctree import Tree, passwd

if ROOT not in sys.path:
    sys.path.insert(0, ROOT)   # tests.fakenvml, as the exporter imports it from its working directory

from exporter.collectors.gpu import GPUProcessCollector, NvidiaCollector, NvidiaPcieCollector  # noqa: E402
from exporter.sources import processes  # noqa: E402
from exporter.sources.nvidia import NvidiaSource  # noqa: E402
from tests.fakenvml import NO_INSTANCE, NOT_AVAILABLE, Err, Flaky, scenarios  # noqa: E402

H100_UUID = "GPU-00000000-0000-0000-0000-000000000000"
H200_UUID = "GPU-00000000-0000-0000-0000-000000000001"
MIB = 1024 * 1024
EXPECTED = os.path.join(FIXTURES, "nvidia", "expected-metrics")


class Clock:
    def __init__(self, t=1_800_000_000.0):
        self.t = t

    def __call__(self):
        return self.t


def registry(*collectors):
    reg = CollectorRegistry()
    for c in collectors:
        reg.register(c)
    return reg


def value(reg, metric, **labels):
    return reg.get_sample_value(metric, labels)


def names(reg, metric):
    return {tuple(sorted(s.labels.items())) for m in reg.collect() for s in m.samples if s.name == metric}


def other_exporter(capture, state="load"):
    """nvidia_gpu_exporter's exposition for the same capture: {name: value} (one GPU per capture)."""
    with open(os.path.join(EXPECTED, f"{capture}__{state}.metrics")) as f:
        return {s.name: s.value for fam in text_string_to_metric_families(f.read()) for s in fam.samples}


# -- the fake is pynvml ---------------------------------------------------------------------------

USED = ["nvmlInit", "nvmlShutdown", "nvmlSystemGetDriverVersion", "nvmlDeviceGetCount", "nvmlDeviceGetHandleByIndex",
        "nvmlDeviceGetUUID", "nvmlDeviceGetName", "nvmlDeviceGetPciInfo", "nvmlDeviceGetMemoryInfo",
        "nvmlDeviceGetUtilizationRates", "nvmlDeviceGetTemperature", "nvmlDeviceGetTemperatureThreshold",
        "nvmlDeviceGetNumFans", "nvmlDeviceGetFanSpeed_v2", "nvmlDeviceGetFanSpeed", "nvmlDeviceGetPowerUsage",
        "nvmlDeviceGetEnforcedPowerLimit", "nvmlDeviceGetTotalEnergyConsumption", "nvmlDeviceGetClockInfo",
        "nvmlDeviceGetCurrentClocksEventReasons", "nvmlDeviceGetCurrentClocksThrottleReasons",
        "nvmlDeviceGetPerformanceState", "nvmlDeviceGetEncoderUtilization", "nvmlDeviceGetDecoderUtilization",
        "nvmlDeviceGetPcieThroughput", "nvmlDeviceGetMigMode", "nvmlDeviceGetMaxMigDeviceCount",
        "nvmlDeviceGetMigDeviceHandleByIndex", "nvmlDeviceGetGpuInstanceId", "nvmlDeviceGetComputeInstanceId",
        "nvmlDeviceGetProcessUtilization", "nvmlDeviceGetProcessesUtilizationInfo", "nvmlSystemGetProcessName",
        "nvmlDeviceGetFieldValues", "nvmlDeviceGetPowerManagementDefaultLimit",
        "nvmlDeviceGetPowerManagementLimitConstraints", "nvmlDeviceGetCurrPcieLinkGeneration",
        "nvmlDeviceGetMaxPcieLinkGeneration", "nvmlDeviceGetCurrPcieLinkWidth", "nvmlDeviceGetMaxPcieLinkWidth",
        "nvmlEventSetCreate", "nvmlDeviceGetSupportedEventTypes", "nvmlDeviceRegisterEvents", "nvmlEventSetWait_v2",
        "nvmlEventSetFree"]
# wrappers newer than the lowest nvidia-ml-py allowed: the exporter does without them there
NEWER = {"nvmlDeviceGetProcessesUtilizationInfo"}


def test_fake_runs_the_installed_pynvml_code():
    nv = scenarios.datacenter()
    assert inspect.getsourcefile(nv) == inspect.getsourcefile(pynvml)
    for fn in USED:
        if fn in NEWER and not hasattr(pynvml, fn):
            continue
        real, fake = getattr(pynvml, fn), getattr(nv, fn)
        assert inspect.signature(fake) == inspect.signature(real), fn
        assert fake.__code__.co_code == real.__code__.co_code, fn
    nv.nvmlInit()
    h = nv.nvmlDeviceGetHandleByIndex(0)
    mem = nv.nvmlDeviceGetMemoryInfo(h, version=nv.nvmlMemory_v2)
    assert [f[0] for f in type(mem)._fields_] == [f[0] for f in pynvml.c_nvmlMemory_v2_t._fields_]
    assert isinstance(mem, ctypes.Structure)
    if hasattr(nv, "nvmlDeviceGetProcessesUtilizationInfo"):
        sample = nv.nvmlDeviceGetProcessesUtilizationInfo(h, 0)[0]
        assert [f[0] for f in type(sample)._fields_] == \
            [f[0] for f in pynvml.c_nvmlProcessUtilizationInfo_v1_t._fields_]
    with pytest.raises(nv.NVMLError) as err:
        nv.nvmlDeviceGetNumFans(h)   # H100: fan.speed [N/A]
    assert type(err.value).__name__ == "NVMLError_NotSupported"
    assert err.value.value == pynvml.NVML_ERROR_NOT_SUPPORTED
    with pytest.raises(nv.NVMLError) as err:
        nv.nvmlDeviceGetPowerSource(h)   # not a symbol the fake library exports
    assert type(err.value).__name__ == "NVMLError_FunctionNotFound"


def test_no_driver_is_library_not_found():
    nv = scenarios.nodriver()
    with pytest.raises(nv.NVMLError) as err:
        nv.nvmlInit()
    assert type(err.value).__name__ == "NVMLError_LibraryNotFound"


# -- device values against the captures and the other exporter ------------------------------------

COMPARED = {
    "hoofhearted_gpu_memory_total_bytes": "nvidia_smi_memory_total_bytes",
    "hoofhearted_gpu_memory_used_bytes": "nvidia_smi_memory_used_bytes",
    "hoofhearted_gpu_power_watts": "nvidia_smi_power_draw_watts",
    "hoofhearted_gpu_power_limit_watts": "nvidia_smi_enforced_power_limit_watts",
    "hoofhearted_gpu_utilization_ratio": "nvidia_smi_utilization_gpu_ratio",
    "hoofhearted_gpu_memory_utilization_ratio": "nvidia_smi_utilization_memory_ratio",
    "hoofhearted_gpu_encoder_utilization_ratio": "nvidia_smi_utilization_encoder_ratio",
    "hoofhearted_gpu_decoder_utilization_ratio": "nvidia_smi_utilization_decoder_ratio",
    "hoofhearted_gpu_temperature_celsius": "nvidia_smi_temperature_gpu",
    "hoofhearted_gpu_performance_state": "nvidia_smi_pstate",
}


@pytest.mark.parametrize("gpu,uuid,capture", [("0", H100_UUID, scenarios.H100), ("1", H200_UUID, scenarios.H200)])
def test_datacenter_values_in_base_units_equal_the_other_exporters(gpu, uuid, capture):
    src = NvidiaSource(scenarios.datacenter(clock=Clock()))
    nvc = NvidiaCollector(src)
    reg = registry(nvc)
    nvc.refresh(10.0)
    theirs = other_exporter(capture)
    labels = {"gpu": gpu, "uuid": uuid}
    for ours, their in COMPARED.items():
        assert value(reg, ours, **labels) == theirs[their], ours
    for clock in ("graphics", "sm", "memory", "video"):
        assert value(reg, "hoofhearted_gpu_clock_hertz", clock=clock, **labels) == \
            theirs[f"nvidia_smi_clocks_current_{clock}_clock_hz"]
    for reason in ("gpu_idle", "applications_clocks_setting", "sw_power_cap", "hw_slowdown", "hw_thermal_slowdown",
                   "hw_power_brake_slowdown", "sw_thermal_slowdown", "sync_boost"):
        assert value(reg, "hoofhearted_gpu_clock_event", reason=reason, **labels) == \
            theirs[f"nvidia_smi_clocks_event_reasons_{reason}"]
    assert value(reg, "hoofhearted_gpu_mig_enabled", **labels) == theirs["nvidia_smi_mig_mode_current"] == 0
    assert value(reg, "hoofhearted_gpu_up", **labels) == 1
    # [N/A] in the capture: no sample, not a zero
    assert names(reg, "hoofhearted_gpu_fan_speed_ratio") == set()
    assert "nvidia_smi_fan_speed_ratio" not in theirs
    # Hopper: no absolute thresholds, only T.Limit offsets; T.Limit = temperature + margin
    # (-q: H100 59 C, T.Limit 26, slowdown -2, shutdown -8; H200 52 C, T.Limit 35, same offsets)
    limit = {"0": 59 + 26, "1": 52 + 35}[gpu]
    assert value(reg, "hoofhearted_gpu_temperature_margin_celsius", **labels) == {"0": 26, "1": 35}[gpu]
    assert value(reg, "hoofhearted_gpu_temperature_slowdown_celsius", **labels) == limit + 2
    assert value(reg, "hoofhearted_gpu_temperature_shutdown_celsius", **labels) == limit + 8


def test_datacenter_exact_values_and_identity():
    clock = Clock()
    nv = scenarios.datacenter(clock=clock)
    src = NvidiaSource(nv)
    nvc, pcie = NvidiaCollector(src), NvidiaPcieCollector(src)
    reg = registry(nvc, pcie)
    nvc.refresh(10.0)
    clock.t += 10
    nvc.refresh(11.0)
    pcie.refresh(11.0)
    h100 = {"gpu": "0", "uuid": H100_UUID}
    assert value(reg, "hoofhearted_gpu_info", name="NVIDIA H100 80GB HBM3", vendor="nvidia",
                 driver_version="590.48.01", pci_bus_id="00000000:00:09.0", **h100) == 1
    assert value(reg, "hoofhearted_gpu_devices", vendor="nvidia") == 2
    assert value(reg, "hoofhearted_gpu_memory_used_bytes", **h100) == 19818 * MIB
    assert value(reg, "hoofhearted_gpu_memory_total_bytes", **h100) == 81559 * MIB
    assert value(reg, "hoofhearted_gpu_power_limit_watts", **h100) == 700
    # mJ counter: 3.6e9 mJ at start, then 631950 mW for 10 s
    assert value(reg, "hoofhearted_gpu_energy_joules_total", **h100) == 3_600_000 + 6319.5
    # -q: Tx 3092 KB/s, Rx 6346 KB/s; the driver's byte counters (from 1 TiB / 2 TiB) for 10 s
    assert value(reg, "hoofhearted_gpu_pcie_transmit_bytes_total", **h100) == (1 << 40) + 3092 * 1024 * 10
    assert value(reg, "hoofhearted_gpu_pcie_receive_bytes_total", **h100) == (2 << 40) + 6346 * 1024 * 10
    # with counters, no 20 ms throughput window is taken
    assert names(reg, "hoofhearted_gpu_pcie_transmit_bytes_per_second") == set()
    assert nv._fake.calls.get("nvmlDeviceGetPcieThroughput", 0) == 0
    assert value(reg, "hoofhearted_gpu_clock_hertz", clock="memory", gpu="1", uuid=H200_UUID) == 3.201e9


def test_geforce_fan_thresholds_and_values():
    src = NvidiaSource(scenarios.geforce(clock=Clock()))
    nvc = NvidiaCollector(src)
    reg = registry(nvc)
    nvc.refresh(1.0)
    g = {"gpu": "0", "uuid": H100_UUID}
    theirs = other_exporter(scenarios.RTX2080)
    assert value(reg, "hoofhearted_gpu_fan_speed_ratio", fan="0", **g) == theirs["nvidia_smi_fan_speed_ratio"] == 0.38
    assert value(reg, "hoofhearted_gpu_temperature_slowdown_celsius", **g) == 97
    assert value(reg, "hoofhearted_gpu_temperature_shutdown_celsius", **g) == 100
    assert value(reg, "hoofhearted_gpu_performance_state", **g) == theirs["nvidia_smi_pstate"] == 2
    assert value(reg, "hoofhearted_gpu_encoder_utilization_ratio", **g) == 1.0
    assert value(reg, "hoofhearted_gpu_memory_used_bytes", **g) == theirs["nvidia_smi_memory_used_bytes"]


def test_hot_when_a_gpu_reaches_the_threshold():
    nvc = NvidiaCollector(NvidiaSource(scenarios.datacenter(clock=Clock())))
    nvc.refresh(1.0)
    assert nvc.hot({"gpu_temperature_celsius": 60.0}) == ()         # 59 and 52 C
    assert nvc.hot({"gpu_temperature_celsius": 59.0}) == ("gpu_temperature",)


# -- driver reality ---------------------------------------------------------------------------------

def test_unsupported_fields_are_asked_once_and_logged_once(caplog):
    nv = scenarios.datacenter(clock=Clock())
    nv._fake.gpus[0].temperature = Err(4)          # NoPermission
    nv._fake.gpus[0].power_mw = Err(999)           # Unknown
    nvc = NvidiaCollector(NvidiaSource(nv))
    reg = registry(nvc)
    with caplog.at_level(logging.INFO, logger="hoofhearted.nvidia"):
        for t in range(5):
            nvc.refresh(float(t))
    calls = nv._fake.calls
    assert calls["nvmlDeviceGetNumFans"] == 2                 # once per GPU, at start
    assert calls["nvmlDeviceGetFanSpeed"] == 2                # the single-fan call, once per GPU
    assert calls["nvmlDeviceGetTemperatureV"] == 1 + 5       # GPU 0 once, GPU 1 every refresh
    assert calls["nvmlDeviceGetTemperature"] == 1            # GPU 0's fallback, once
    # Unknown is a one-off, not a capability: GPU 0 retried at 0, 1 and 3 s (backoff 1, 2, 4 s)
    assert calls["nvmlDeviceGetPowerUsage"] == 3 + 5
    assert value(reg, "hoofhearted_gpu_temperature_celsius", gpu="0", uuid=H100_UUID) is None
    assert value(reg, "hoofhearted_gpu_power_watts", gpu="0", uuid=H100_UUID) is None
    assert value(reg, "hoofhearted_gpu_energy_joules_total", gpu="0", uuid=H100_UUID) is None
    assert value(reg, "hoofhearted_gpu_temperature_celsius", gpu="1", uuid=H200_UUID) == 52
    lines = [r.getMessage() for r in caplog.records]
    for call in ("nvmlDeviceGetTemperature", "nvmlDeviceGetPowerUsage", "nvmlDeviceGetNumFans"):
        assert sum(f"gpu=0 call={call} " in m for m in lines) == 1, call


@pytest.mark.parametrize("code", [999, 2])      # Unknown, InvalidArgument
def test_a_one_off_error_is_retried_with_backoff_not_remembered(code):
    nv = scenarios.datacenter(clock=Clock())
    nv._fake.gpus[0].power_limit_mw = Flaky(code, 2, 700000)
    nvc = NvidiaCollector(NvidiaSource(nv, max_backoff=60.0))
    reg = registry(nvc)
    h100 = {"gpu": "0", "uuid": H100_UUID}
    nvc.refresh(0.0)                     # fails; next try at 1 s
    assert value(reg, "hoofhearted_gpu_power_limit_watts", **h100) is None
    nvc.refresh(0.5)                     # backing off: not asked
    assert nv._fake.gpus[0].power_limit_mw.calls == 1
    nvc.refresh(1.0)                     # fails again; next try at 3 s
    nvc.refresh(2.0)
    assert value(reg, "hoofhearted_gpu_power_limit_watts", **h100) is None
    assert nv._fake.gpus[0].power_limit_mw.calls == 2
    nvc.refresh(3.0)
    assert value(reg, "hoofhearted_gpu_power_limit_watts", **h100) == 700
    nvc.refresh(3.1)                     # a success resets the backoff: asked every refresh
    assert nv._fake.gpus[0].power_limit_mw.calls == 4


DATACENTER_PROCS = {0: {11327: 2566 * MIB, 11328: 1542 * MIB, 11345: 15690 * MIB},
                    1: {10291: 2566 * MIB, 10293: 1542 * MIB, 10309: 28234 * MIB}}


@pytest.mark.parametrize("generation", sorted(scenarios.GENERATIONS))
def test_process_lists_are_read_at_the_drivers_entry_size(generation):
    """The fake writes packed C entries of the driver's size (16, 24 or 32 bytes): any stride
    mismatch shifts every entry after the first."""
    nv = scenarios.generation(generation, clock=Clock())
    src = NvidiaSource(nv)
    got = {g.index: {p.pid: p.memory for p in g.processes} for g in src.read_processes(1.0)}
    assert got == DATACENTER_PROCS
    instance = {p.gpu_instance for g in src.read_processes(2.0) for p in g.processes}
    assert instance == {None}


def test_the_fake_driver_writes_its_own_entry_size():
    """nvidia-ml-py's wrapper assumes one entry size: on the early R535 driver it reads garbage."""
    nv = scenarios.generation("r535_early", clock=Clock())
    nv.nvmlInit()
    h = nv.nvmlDeviceGetHandleByIndex(0)
    procs = nv.nvmlDeviceGetComputeRunningProcesses_v3(h)
    assert ctypes.sizeof(nv.c_nvmlProcessInfo_t) == 24     # every allowed nvidia-ml-py
    assert procs[0].pid == 11327
    assert [p.pid for p in procs] != sorted(DATACENTER_PROCS[0])
    nv.nvmlShutdown()


def test_older_driver_falls_back_to_older_calls():
    nv = scenarios.old_driver(clock=Clock())
    src = NvidiaSource(nv)
    nvc = NvidiaCollector(src)
    reg = registry(nvc)
    nvc.refresh(1.0)
    procs = {p.pid: p for p in src.read_processes(1.0)[0].processes}
    h100 = {"gpu": "0", "uuid": H100_UUID}
    # v1 memory info: used = total - free, reserve included
    assert value(reg, "hoofhearted_gpu_memory_used_bytes", **h100) == (81559 - 61263) * MIB
    assert value(reg, "hoofhearted_gpu_clock_event", reason="gpu_idle", **h100) == 0
    assert procs[11345].memory == 15690 * MIB and procs[11345].utilization["sm"] == 0.99
    calls = nv._fake.calls
    assert calls["nvmlDeviceGetComputeRunningProcesses_v2"] == 2 * 2    # two GPUs: size, then fill
    assert calls["nvmlDeviceGetCurrentClocksThrottleReasons"] == 2
    assert calls["nvmlDeviceGetProcessUtilization"] == 2 * 2
    assert "nvmlDeviceGetProcessesUtilizationInfo" not in calls


def test_no_driver_reports_no_devices_and_logs_once(caplog):
    src = NvidiaSource(scenarios.nodriver())
    nvc = NvidiaCollector(src)
    reg = registry(nvc)
    with caplog.at_level(logging.INFO, logger="hoofhearted.nvidia"):
        for t in range(0, 1000, 100):
            nvc.refresh(float(t))
    assert value(reg, "hoofhearted_gpu_devices", vendor="nvidia") == 0
    assert names(reg, "hoofhearted_gpu_up") == set()
    assert [r.getMessage() for r in caplog.records if "no NVIDIA driver" in r.getMessage()] == [
        "no NVIDIA driver, NVIDIA collectors report no devices err='NVML Shared Library Not Found'"]
    assert src.read_processes(5.0) == [] and src.read_pcie(5.0) == []


def test_lost_gpu_goes_down_alone_and_comes_back(caplog):
    nv = scenarios.datacenter(clock=Clock())
    lib = nv._fake
    src = NvidiaSource(nv, max_backoff=8.0)
    nvc, pcie = NvidiaCollector(src), NvidiaPcieCollector(src)
    reg = registry(nvc, pcie)
    nvc.refresh(0.0)
    assert lib.init_calls == 1
    lib.set_lost(1)
    with caplog.at_level(logging.INFO, logger="hoofhearted.nvidia"):
        nvc.refresh(1.0)
        h200 = {"gpu": "1", "uuid": H200_UUID}
        assert value(reg, "hoofhearted_gpu_up", **h200) == 0
        assert value(reg, "hoofhearted_gpu_info", name="NVIDIA H200", vendor="nvidia", driver_version="590.48.01",
                     pci_bus_id="00000000:83:00.0", **h200) == 1
        assert value(reg, "hoofhearted_gpu_temperature_celsius", **h200) is None
        assert value(reg, "hoofhearted_gpu_up", gpu="0", uuid=H100_UUID) == 1
        assert value(reg, "hoofhearted_gpu_temperature_celsius", gpu="0", uuid=H100_UUID) == 59
        pcie.refresh(1.5)
        assert value(reg, "hoofhearted_gpu_pcie_receive_bytes_per_second", **h200) is None
        assert value(reg, "hoofhearted_gpu_pcie_receive_bytes_total", gpu="0", uuid=H100_UUID) == 2 << 40
        # re-initialisation with backoff 1, 2, 4, 8, 8 s while the GPU stays lost
        inits = []
        for t in range(2, 40):
            nvc.refresh(float(t))
            inits.append(lib.init_calls)
        assert [t for t, (a, b) in enumerate(zip([1] + inits, inits), start=2) if b > a] == [2, 4, 8, 16, 24, 32]
        assert value(reg, "hoofhearted_gpu_up", **h200) == 0
        lib.set_lost(1, False)
        nvc.refresh(39.5)
        assert value(reg, "hoofhearted_gpu_up", **h200) == 0     # back, but the next attempt is at 40
        nvc.refresh(40.0)
    assert value(reg, "hoofhearted_gpu_up", **h200) == 1
    assert value(reg, "hoofhearted_gpu_temperature_celsius", **h200) == 52
    lines = [r.getMessage() for r in caplog.records]
    assert sum("GPU lost" in m for m in lines) == 1
    assert sum("GPU is back gpu=1" in m for m in lines) == 1
    nvc.refresh(41.0)
    assert lib.init_calls == 8 and lib.initialized == 1     # no attempt once all are up; NVML open once


def test_mig_parent_instances_and_memory():
    src = NvidiaSource(scenarios.mig(clock=Clock()))
    nvc = NvidiaCollector(src)
    reg = registry(nvc)
    nvc.refresh(1.0)
    g = {"gpu": "0", "uuid": H100_UUID}
    assert value(reg, "hoofhearted_gpu_info", name="NVIDIA H100 80GB HBM3", vendor="nvidia",
                 driver_version="590.48.01", pci_bus_id="00000000:00:09.0", **g) == 1
    assert value(reg, "hoofhearted_gpu_mig_enabled", **g) == 1
    assert value(reg, "hoofhearted_gpu_utilization_ratio", **g) is None      # [N/A] under MIG
    assert value(reg, "hoofhearted_gpu_memory_used_bytes", **g) == 11125 * MIB
    infos = sorted((dict(l)["gpu_instance"], dict(l)["compute_instance"], dict(l)["profile"], dict(l)["mig_uuid"])
                   for l in names(reg, "hoofhearted_gpu_mig_info"))
    assert infos == [("10", "0", "1g.10gb", "MIG-00000003-0000-0000-0000-000000000003"),
                     ("2", "0", "3g.40gb", "MIG-00000000-0000-0000-0000-000000000000"),
                     ("3", "0", "2g.20gb", "MIG-00000001-0000-0000-0000-000000000001"),
                     ("9", "0", "1g.10gb", "MIG-00000002-0000-0000-0000-000000000002")]
    assert value(reg, "hoofhearted_gpu_mig_memory_used_bytes", gpu_instance="2", **g) == 11091 * MIB
    assert value(reg, "hoofhearted_gpu_mig_memory_total_bytes", gpu_instance="2", **g) == 40448 * MIB
    procs = {p.pid: p for p in src.read_processes(1.0)[0].processes}
    assert (procs[21198].memory, procs[21198].gpu_instance, procs[21198].compute_instance) == (7484 * MIB, 2, 0)
    assert procs[21198].utilization is None                  # no per-process samples on MIG


# -- processes ---------------------------------------------------------------------------------------

def test_process_samples_last_seen_not_found_and_garbage():
    clock = Clock()
    nv = scenarios.datacenter(clock=clock)
    lib = nv._fake
    src = NvidiaSource(nv)
    first = {p.pid: p for p in src.read_processes(0.0)[0].processes}
    assert first[11345].utilization == {"sm": 0.99, "memory": 0.10, "encoder": 0.0, "decoder": 0.0}
    assert first[11327].utilization == {"sm": 0.0, "memory": 0.0, "encoder": 0.0, "decoder": 0.0}  # no sample
    # nothing new since the last seen timestamp: NOT_FOUND, every process on the list is 0
    again = {p.pid: p for p in src.read_processes(1.0)[0].processes}
    assert again[11345].utilization["sm"] == 0.0
    dev = src.devices[0]
    last = dev.last_seen
    # garbage the driver returns: over 100 %, or older than what was already used
    lib.gpus[0].extra_samples = [(last + 1, 11327, 4294967295, 0, 0, 0), (last + 2, 11328, 50, 150, 0, 0)]
    garbage = {p.pid: p for p in src.read_processes(2.0)[0].processes}
    assert garbage[11327].utilization["sm"] == 0.0 and garbage[11328].utilization["memory"] == 0.0
    lib.gpus[0].extra_samples = [(last - 10, 11327, 77, 0, 0, 0)]
    clock.t += 0.5
    fresh = {p.pid: p for p in src.read_processes(3.0)[0].processes}
    assert fresh[11327].utilization["sm"] == 0.0               # older than last seen: dropped
    assert fresh[11345].utilization["sm"] == 0.99              # new rounds since
    assert dev.last_seen > last


def test_compute_and_graphics_lists_merge_by_pid():
    src = NvidiaSource(scenarios.desktop(clock=Clock()))
    procs = {p.pid: p for p in src.read_processes(0.0)[0].processes}
    # -q lists 7 processes; kwin_wayland is C+G and appears in both lists
    assert sorted(procs) == [2165, 2496, 2620, 2954, 3527, 5021, 5022]
    assert procs[2165].memory == 25 * MIB
    assert procs[2496].memory == 200 * MIB      # graphics only
    assert procs[5022].utilization["encoder"] == 0.55     # newest of the pmon rounds for 5022
    assert (procs[5022].gpu_instance, procs[5022].compute_instance) == (None, None)
    assert NO_INSTANCE == 0xFFFFFFFF


def test_memory_not_available_is_no_sample():
    src = NvidiaSource(scenarios.wddm(clock=Clock()))
    procs = src.read_processes(0.0)[0].processes
    assert len(procs) == 21 and all(p.memory is None for p in procs)
    assert NOT_AVAILABLE == (1 << 64) - 1


@pytest.fixture
def live_tree(tmp_path):
    """A procfs with the captured H100 processes under their pids, owned by a container."""
    rootfs = passwd(tmp_path / "root", {1000: "alice", 1001: "bob"})
    tree = Tree(tmp_path / "proc")
    docker = "0::/system.slice/docker-" + "3f2a" * 16 + ".scope\n"
    tree.proc(11345, "gpu_burn", uid=1000, cgroup=docker)
    tree.proc(11327, "memhog", uid=1001, cgroup="0::/system.slice/memhog.service\n")
    return tree, rootfs


def test_process_collector_names_the_right_pid_user_and_owner(live_tree):
    tree, rootfs = live_tree
    src = NvidiaSource(scenarios.datacenter(clock=Clock()))
    gp = GPUProcessCollector(src, procfs=tree.root, sysfs="/nonexistent", top_n=10,
                             scanner=processes.Scanner(tree.root, rootfs))
    reg = registry(gp)
    gp.refresh(0.0)
    burn = {"gpu": "0", "uuid": H100_UUID, "pid": "11345", "name": "gpu_burn", "user": "alice",
            "owner": "container/3f2a3f2a3f2a"}
    assert value(reg, "hoofhearted_gpu_process_memory_bytes", **burn) == 15690 * MIB
    assert value(reg, "hoofhearted_gpu_process_utilization_ratio", engine="sm", **burn) == 0.99
    memhog = {"gpu": "0", "uuid": H100_UUID, "pid": "11327", "name": "memhog", "user": "bob",
              "owner": "memhog.service"}
    assert value(reg, "hoofhearted_gpu_process_memory_bytes", **memhog) == 2566 * MIB
    assert value(reg, "hoofhearted_gpu_process_utilization_ratio", engine="sm", **memhog) == 0.0
    # not in this /proc: NVML's name, no user or owner
    assert value(reg, "hoofhearted_gpu_process_memory_bytes", gpu="0", uuid=H100_UUID, pid="11328",
                 name="memhog", user="", owner="") == 1542 * MIB
    assert value(reg, "hoofhearted_gpu_processes", gpu="1", uuid=H200_UUID) == 3
    assert value(reg, "hoofhearted_gpu_process_group_memory_bytes", gpu="0", uuid=H100_UUID,
                 group="memhog") == (2566 + 1542) * MIB
    assert gp.scanner.gpu_pids == {11345, 11327, 11328, 10291, 10293, 10309}


def test_top_n_per_gpu_bounds_the_series(live_tree):
    tree, rootfs = live_tree
    src = NvidiaSource(scenarios.datacenter(clock=Clock()))
    gp = GPUProcessCollector(src, procfs=tree.root, sysfs="/nonexistent", top_n=1, max_groups=1,
                             scanner=processes.Scanner(tree.root, rootfs))
    reg = registry(gp)
    gp.refresh(0.0)
    # top 1 by utilisation and top 1 by memory: gpu_burn both times, on each GPU
    assert {dict(l)["pid"] for l in names(reg, "hoofhearted_gpu_process_memory_bytes")} == {"11345", "10309"}
    groups = {(dict(l)["gpu"], dict(l)["group"]) for l in names(reg, "hoofhearted_gpu_process_group_memory_bytes")}
    assert groups == {("0", "other"), ("1", "other")}
    assert value(reg, "hoofhearted_gpu_process_group_memory_bytes", gpu="1", uuid=H200_UUID, group="other") == \
        (2566 + 1542 + 28234) * MIB


def test_geforce_without_process_utilisation_gives_memory_only(live_tree, caplog):
    tree, rootfs = live_tree
    nv = scenarios.geforce(clock=Clock())
    src = NvidiaSource(nv)
    gp = GPUProcessCollector(src, procfs=tree.root, sysfs="/nonexistent",
                             scanner=processes.Scanner(tree.root, rootfs))
    reg = registry(gp)
    with caplog.at_level(logging.INFO, logger="hoofhearted.nvidia"):
        for t in range(4):
            gp.refresh(float(t))
    assert names(reg, "hoofhearted_gpu_process_utilization_ratio") == set()
    assert names(reg, "hoofhearted_gpu_process_group_utilization_ratio") == set()
    mem = {dict(l)["pid"]: dict(l)["name"] for l in names(reg, "hoofhearted_gpu_process_memory_bytes")}
    assert mem == {"1720": "gnome-shell", "4556": "Xwayland", "28511": "ffmpeg", "28512": "ffmpeg"}
    # asked once each (the first has no wrapper in the lowest nvidia-ml-py allowed)
    assert nv._fake.calls.get("nvmlDeviceGetProcessesUtilizationInfo", 0) == \
        int(hasattr(nv, "nvmlDeviceGetProcessesUtilizationInfo"))
    assert nv._fake.calls["nvmlDeviceGetProcessUtilization"] == 1
    assert sum("call=nvmlDeviceGetProcessUtilization " in r.getMessage() for r in caplog.records) == 1


def test_bulk_reading_of_samples_equals_field_reading():
    from exporter.sources.nvidia import SAMPLE_FIELDS, _rows
    classes = [getattr(pynvml, n) for n in ("c_nvmlProcessUtilizationSample_t", "c_nvmlProcessUtilizationInfo_v1_t")
               if hasattr(pynvml, n)]
    for cls in classes:
        array = (cls * 3)()
        for i, s in enumerate(array):
            s.pid, s.timeStamp, s.smUtil, s.memUtil, s.encUtil, s.decUtil = 100 + i, (1 << 40) + i, i, 2 * i, 3, 101
        contiguous = array[0:3]                      # what pynvml returns
        by_field = [tuple(getattr(s, n) for n in SAMPLE_FIELDS) for s in contiguous]
        assert _rows(contiguous, SAMPLE_FIELDS) == by_field
        assert by_field[2] == ((1 << 40) + 2, 102, 2, 4, 3, 101)
        apart = [cls(), cls()]                       # separate structs: read field by field
        apart[1].pid = 7
        assert _rows(apart, SAMPLE_FIELDS) == [(0, 0, 0, 0, 0, 0), (0, 7, 0, 0, 0, 0)]
