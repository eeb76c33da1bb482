"""GPU health on the fake NVML: Xid events, ECC, remapped rows, PCIe link, fans and limits, engine
busy time as counters; AMD sysfs extras. Values come from the captures (tests/fixtures/nvidia)."""
import os
import sys

import pytest
from test_gpu_nvidia import Clock, registry, value

from conftest import ROOT

if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from exporter.collectors.gpu import AMDGPUCollector, GPUProcessCollector, NvidiaCollector  # noqa: E402
from exporter.sources import amdgpu, processes  # noqa: E402
from exporter.sources.nvidia import NvidiaSource  # noqa: E402
from tests.fakenvml import NOT_SUPPORTED, scenarios  # noqa: E402

H100 = {"gpu": "0", "uuid": "GPU-00000000-0000-0000-0000-000000000000"}
H200 = {"gpu": "1", "uuid": "GPU-00000000-0000-0000-0000-000000000001"}
GEFORCE = {"gpu": "0", "uuid": "GPU-00000000-0000-0000-0000-000000000000"}


collect = registry     # from test_gpu_nvidia: the collectors in a fresh CollectorRegistry


def series(reg, metric):
    return {tuple(sorted(s.labels.items())): s.value for m in reg.collect() for s in m.samples if s.name == metric}


def test_h100_health_from_the_capture():
    nvc = NvidiaCollector(NvidiaSource(scenarios.datacenter(clock=Clock())))
    reg = collect(nvc)
    nvc.refresh(1.0)
    # -q: Memory Current Temp 55 C, GPU T.Limit Temp 26 C, Replays Since Reset 9
    assert value(reg, "hoofhearted_gpu_sensor_temperature_celsius", sensor="mem", **H100) == 55
    assert value(reg, "hoofhearted_gpu_temperature_margin_celsius", **H100) == 26
    assert value(reg, "hoofhearted_gpu_pcie_replays_total", **H100) == 9
    assert value(reg, "hoofhearted_gpu_power_default_limit_watts", **H100) == 700
    assert value(reg, "hoofhearted_gpu_power_max_limit_watts", **H100) == 700
    for metric, v in (("link_generation", 5), ("link_max_generation", 5), ("link_width", 16), ("link_max_width", 16)):
        assert value(reg, f"hoofhearted_gpu_pcie_{metric}", **H100) == v, metric
    ecc = {(dict(k)["error"], dict(k)["counter"]): v for k, v in series(reg, "hoofhearted_gpu_ecc_errors_total").items()
           if dict(k)["gpu"] == "0"}
    assert ecc == {(e, c): 0 for e in ("corrected", "uncorrected") for c in ("volatile", "aggregate")}
    # Hopper remaps rows instead of retiring pages: retired pages are [N/A], so no sample
    assert value(reg, "hoofhearted_gpu_remapped_rows", cause="uncorrectable", **H100) == 0
    assert value(reg, "hoofhearted_gpu_remapped_rows_pending", **H100) == 0
    assert value(reg, "hoofhearted_gpu_remapped_rows_failed", **H100) == 0
    assert series(reg, "hoofhearted_gpu_retired_pages") == {}
    assert value(reg, "hoofhearted_gpu_clock_event_seconds_total", reason="sw_power_cap", **H100) == 0
    assert series(reg, "hoofhearted_gpu_xid_errors_total") == {}


def test_geforce_clock_event_time_and_absolute_thresholds():
    nvc = NvidiaCollector(NvidiaSource(scenarios.geforce(clock=Clock())))
    reg = collect(nvc)
    nvc.refresh(1.0)
    # query-gpu: clocks_event_reasons_counters.sw_power_cap 15820333506 us
    assert value(reg, "hoofhearted_gpu_clock_event_seconds_total", reason="sw_power_cap", **GEFORCE) == \
        pytest.approx(15820.333506, abs=1e-9)
    # Turing: absolute thresholds, no T.Limit
    assert value(reg, "hoofhearted_gpu_temperature_slowdown_celsius", **GEFORCE) == 97
    assert value(reg, "hoofhearted_gpu_temperature_margin_celsius", **GEFORCE) is None
    assert value(reg, "hoofhearted_gpu_power_max_limit_watts", **GEFORCE) == 350
    assert value(reg, "hoofhearted_gpu_power_default_limit_watts", **GEFORCE) == 250


def test_xid_errors_are_counted_per_code_and_the_last_one_named():
    nv = scenarios.datacenter(clock=Clock())
    nvc = NvidiaCollector(NvidiaSource(nv))
    reg = collect(nvc)
    nvc.refresh(0.0)
    nv._fake.gpus[0].xids.extend([13, 13, 79])
    nv._fake.gpus[1].xids.append(48)
    nvc.refresh(1.0)
    assert value(reg, "hoofhearted_gpu_xid_errors_total", xid="13", **H100) == 2
    assert value(reg, "hoofhearted_gpu_xid_errors_total", xid="79", **H100) == 1
    assert value(reg, "hoofhearted_gpu_xid_errors_total", xid="48", **H200) == 1
    assert series(reg, "hoofhearted_gpu_last_xid_info") == {
        tuple(sorted(dict(H100, xid="79").items())): 1, tuple(sorted(dict(H200, xid="48").items())): 1}
    nv._fake.gpus[0].xids.append(13)
    nvc.refresh(2.0)
    assert value(reg, "hoofhearted_gpu_xid_errors_total", xid="13", **H100) == 3
    assert value(reg, "hoofhearted_gpu_last_xid_info", xid="13", **H100) == 1
    assert value(reg, "hoofhearted_gpu_last_xid_info", xid="79", **H100) is None


def test_xid_counts_survive_a_lost_gpu_and_an_nvml_restart():
    nv = scenarios.datacenter(clock=Clock())
    nvc = NvidiaCollector(NvidiaSource(nv, max_backoff=1.0))
    reg = collect(nvc)
    nvc.refresh(0.0)
    nv._fake.gpus[1].xids.append(79)
    nvc.refresh(1.0)
    nv._fake.set_lost(1)
    nvc.refresh(2.0)
    nv._fake.set_lost(1, False)
    for t in range(3, 6):
        nvc.refresh(float(t))
    assert value(reg, "hoofhearted_gpu_up", **H200) == 1
    assert nv._fake.init_calls > 1
    assert value(reg, "hoofhearted_gpu_xid_errors_total", xid="79", **H200) == 1
    nv._fake.gpus[1].xids.append(79)
    nvc.refresh(6.0)                    # the new event set watches the GPU again
    assert value(reg, "hoofhearted_gpu_xid_errors_total", xid="79", **H200) == 2


def test_fan_speed_falls_back_to_the_single_fan_call_and_may_pass_100_percent():
    nv = scenarios.geforce(clock=Clock())
    g = nv._fake.gpus[0]
    g.fan_v2 = NOT_SUPPORTED
    nvc = NvidiaCollector(NvidiaSource(nv))
    reg = collect(nvc)
    nvc.refresh(0.0)
    assert value(reg, "hoofhearted_gpu_fan_speed_ratio", fan="0", **GEFORCE) == 0.38   # capture: 38 %
    nv2 = scenarios.geforce(clock=Clock(), fans=[112], fan_rpm=[3150])
    nvc2 = NvidiaCollector(NvidiaSource(nv2))
    reg2 = collect(nvc2)
    nvc2.refresh(0.0)
    assert value(reg2, "hoofhearted_gpu_fan_speed_ratio", fan="0", **GEFORCE) == 1.12   # nvml.h: may exceed 100
    assert value(reg2, "hoofhearted_gpu_fan_speed_rpm", fan="0", **GEFORCE) == 3150


def test_temperature_without_the_deprecated_call():
    nv = scenarios.drop_symbols(scenarios.datacenter(clock=Clock()), {"nvmlDeviceGetTemperature"})
    nvc = NvidiaCollector(NvidiaSource(nv))
    reg = collect(nvc)
    nvc.refresh(0.0)
    assert value(reg, "hoofhearted_gpu_temperature_celsius", **H100) == 59
    assert nv._fake.calls["nvmlDeviceGetTemperatureV"] == 2


def test_temperature_v_refused_falls_back_to_the_old_call():
    nv = scenarios.datacenter(clock=Clock(), temperature_v=NOT_SUPPORTED)
    nvc = NvidiaCollector(NvidiaSource(nv))
    reg = collect(nvc)
    for t in range(3):
        nvc.refresh(float(t))
    assert value(reg, "hoofhearted_gpu_temperature_celsius", **H100) == 59
    assert nv._fake.calls["nvmlDeviceGetTemperatureV"] == 2      # refused once per GPU, then not asked


def test_field_refused_by_the_driver_is_not_asked_again():
    nv = scenarios.datacenter(clock=Clock())
    nvc = NvidiaCollector(NvidiaSource(nv))
    reg = collect(nvc)
    nvc.refresh(0.0)
    nvc.refresh(1.0)
    assert value(reg, "hoofhearted_gpu_retired_pages_pending", **H100) is None
    nv._fake.gpus[0].fields[31] = 1      # the driver would answer now, but it refused before
    nvc.refresh(2.0)
    assert value(reg, "hoofhearted_gpu_retired_pages_pending", **H100) is None


# -- engine busy time as counters -------------------------------------------------------------------

def test_nvidia_engine_seconds_integrate_the_samples(gpu_burn_tree):
    tree, rootfs = gpu_burn_tree
    clock = Clock()
    nv = scenarios.datacenter(clock=clock)
    gp = GPUProcessCollector(NvidiaSource(nv), procfs=tree.root, sysfs="/nonexistent",
                             scanner=processes.Scanner(tree.root, rootfs))
    reg = collect(gp)
    gp.refresh(0.0)
    burn = dict(H100, pid="11345", name="gpu_burn", user="alice", owner="")
    # five buffered samples 0.2 s apart, each sm 99 %, memory 10 %
    assert value(reg, "hoofhearted_gpu_process_engine_seconds_total", engine="sm", **burn) == \
        pytest.approx(5 * 0.99 * 0.2, abs=1e-12)
    assert value(reg, "hoofhearted_gpu_process_engine_seconds_total", engine="memory", **burn) == \
        pytest.approx(5 * 0.10 * 0.2, abs=1e-12)
    group = dict(H100, group="gpu_burn")
    assert value(reg, "hoofhearted_gpu_process_group_engine_seconds_total", engine="sm", **group) == 0
    clock.t += 1.0
    gp.refresh(1.0)
    assert value(reg, "hoofhearted_gpu_process_engine_seconds_total", engine="sm", **burn) == \
        pytest.approx(10 * 0.99 * 0.2, abs=1e-12)
    # the group counts from the refresh its process was first seen
    assert value(reg, "hoofhearted_gpu_process_group_engine_seconds_total", engine="sm", **group) == \
        pytest.approx(5 * 0.99 * 0.2, abs=1e-12)
    # memhog holds memory but has no samples: zero busy time, not absent
    memhog = dict(H100, pid="11327", name="memhog", user="bob", owner="")
    assert value(reg, "hoofhearted_gpu_process_engine_seconds_total", engine="sm", **memhog) == 0


def test_engine_seconds_never_go_backwards_across_an_nvml_restart(gpu_burn_tree):
    tree, rootfs = gpu_burn_tree
    clock = Clock()
    nv = scenarios.datacenter(clock=clock)
    gp = GPUProcessCollector(NvidiaSource(nv, max_backoff=1.0), procfs=tree.root, sysfs="/nonexistent",
                             scanner=processes.Scanner(tree.root, rootfs))
    reg = collect(gp)
    burn = dict(H100, pid="11345", name="gpu_burn", user="alice", owner="")
    seen = []
    for t in range(8):
        if t == 3:
            nv._fake.set_lost(1)
        if t == 4:
            nv._fake.set_lost(1, False)
        clock.t += 0.5
        gp.refresh(float(t))
        seen.append(value(reg, "hoofhearted_gpu_process_engine_seconds_total", engine="sm", **burn))
    assert nv._fake.init_calls > 1
    assert all(b >= a for a, b in zip(seen, seen[1:])), seen
    # the driver keeps 5 rounds: the first read (0.5 s) sees rounds 3-7, the last (4 s) ends at round 25
    assert seen[-1] == pytest.approx((25 - 3 + 1) * 0.99 * 0.2, abs=1e-9)


# -- AMD ---------------------------------------------------------------------------------------------

def amd_card(root, n=0, slot="0000:03:00.0", files=None, hwmon=None):
    dev = os.path.join(root, "devices", "pci0000:00", slot)
    os.makedirs(os.path.join(dev, "hwmon", "hwmon9"), exist_ok=True)
    os.makedirs(os.path.join(root, "class", "drm"), exist_ok=True)
    card = os.path.join(root, "class", "drm", f"card{n}")
    os.makedirs(card, exist_ok=True)
    if not os.path.lexists(os.path.join(card, "device")):
        os.symlink(dev, os.path.join(card, "device"))
    base = {"uevent": f"DRIVER=amdgpu\nPCI_SLOT_NAME={slot}\n", "vendor": "0x1002", "device": "0x744c"}
    for name, text in {**base, **(files or {})}.items():
        path = os.path.join(dev, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write(text)
    for name, text in (hwmon or {}).items():
        with open(os.path.join(dev, "hwmon", "hwmon9", name), "w") as f:
            f.write(text)
    return dev


def test_amd_pwm_enable_0_is_full_speed_and_mem_busy_and_limits(tmp_path):
    sysfs = str(tmp_path)
    amd_card(sysfs, files={"gpu_busy_percent": "40\n", "mem_busy_percent": "17\n", "mem_info_vram_vendor": "samsung\n",
                           "mem_info_vram_total": "17163091968\n", "mem_info_gtt_total": "12884901888\n"},
             hwmon={"pwm1": "80\n", "pwm1_enable": "0\n", "temp1_input": "50000\n", "temp1_label": "edge\n",
                    "temp1_crit": "100000\n", "temp2_input": "61000\n", "temp2_label": "junction\n",
                    "temp2_crit": "110000\n", "temp3_input": "70000\n", "temp3_label": "mem\n",
                    "temp3_crit": "105000\n", "power1_average": "150000000\n"})
    col = AMDGPUCollector(amdgpu.AMDGPUSource(sysfs, amdgpuinfo=False))
    reg = collect(col)
    col.refresh(0.0)
    g = {"gpu": "0", "uuid": "0000:03:00.0"}
    assert value(reg, "hoofhearted_gpu_fan_speed_ratio", fan="0", **g) == 1.0     # hwmon ABI: 0 = full speed
    assert value(reg, "hoofhearted_gpu_memory_utilization_ratio", **g) == 0.17
    assert value(reg, "hoofhearted_gpu_sensor_temperature_critical_celsius", sensor="junction", **g) == 110
    assert value(reg, "hoofhearted_gpu_sensor_temperature_critical_celsius", sensor="mem", **g) == 105
    assert value(reg, "hoofhearted_gpu_power_watts", **g) == 150                   # a discrete card
    assert value(reg, "hoofhearted_gpu_soc_power_watts", **g) is None


def test_amd_apu_power_is_the_packages_not_the_gpus(tmp_path):
    sysfs = str(tmp_path)
    amd_card(sysfs, slot="0000:c4:00.0",
             files={"gpu_busy_percent": "3\n", "mem_info_vram_total": "536870912\n",
                    "mem_info_gtt_total": "16106127360\n"},
             hwmon={"power1_input": "23000000\n", "temp1_input": "45000\n", "temp1_label": "edge\n"})
    col = AMDGPUCollector(amdgpu.AMDGPUSource(sysfs, amdgpuinfo=False))
    reg = collect(col)
    col.refresh(0.0)
    g = {"gpu": "0", "uuid": "0000:c4:00.0"}
    assert value(reg, "hoofhearted_gpu_soc_power_watts", **g) == 23
    assert value(reg, "hoofhearted_gpu_power_watts", **g) is None


class FakeAmdgpuinfo:
    """pyamdgpuinfo's module surface; detect_gpus opens every card (and wakes a sleeping one)."""

    def __init__(self):
        self.detected = 0

    def detect_gpus(self):
        self.detected += 1
        return 0

    def get_gpu(self, i):
        raise AssertionError("no GPUs")


def test_pyamdgpuinfo_is_not_used_while_a_card_sleeps(tmp_path):
    sysfs = str(tmp_path)
    amd_card(sysfs, 0, "0000:03:00.0", files={"power/runtime_status": "active\n"})           # nothing in sysfs
    amd_card(sysfs, 1, "0000:04:00.0", files={"power/runtime_status": "suspended\n"})
    lib = FakeAmdgpuinfo()
    src = amdgpu.AMDGPUSource(sysfs, amdgpuinfo=lib)
    cards = src.read()
    assert lib.detected == 0
    assert [c.suspended for c in cards] == [False, True]
    with open(os.path.join(sysfs, "devices", "pci0000:00", "0000:04:00.0", "power", "runtime_status"), "w") as f:
        f.write("active\n")
    src.read()
    assert lib.detected == 1                     # every card awake: the library may look now


# -- Intel ---------------------------------------------------------------------------------------------

def intel_card(root, n, slot, driver, files=None, hwmon=None, card_files=None):
    dev = os.path.join(root, "devices", "pci0000:00", slot)
    os.makedirs(os.path.join(dev, "hwmon", "hwmon7"), exist_ok=True)
    card = os.path.join(root, "class", "drm", f"card{n}")
    os.makedirs(card, exist_ok=True)
    if not os.path.lexists(os.path.join(card, "device")):
        os.symlink(dev, os.path.join(card, "device"))
    base = {"uevent": f"DRIVER={driver}\nPCI_ID=8086:56A0\nPCI_SLOT_NAME={slot}\n"}
    for where, entries in ((dev, {**base, **(files or {})}), (os.path.join(dev, "hwmon", "hwmon7"), hwmon or {}),
                           (card, card_files or {})):
        for name, text in entries.items():
            path = os.path.join(where, name)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "w") as f:
                f.write(text)


def test_intel_gpus_as_devices_from_sysfs_and_fdinfo(tmp_path):
    from exporter.collectors.gpu import IntelGPUCollector
    from exporter.sources import intelgpu
    from exporter.sources.fdinfo import FdinfoReader
    from test_gpu_fdinfo import FdTree, I915, XE, bump, sample

    sysfs = str(tmp_path / "sys")
    # an Arc dGPU on xe (hwmon, freq under tile0/gt0) and an iGPU on i915 (frequency beside the card)
    intel_card(sysfs, 0, "0000:03:00.0", "xe", files={"tile0/gt0/freq0/act_freq": "2050\n",
                                                     "tile0/gt0/freq0/max_freq": "2400\n"},
               hwmon={"energy1_input": "5000000000\n", "power1_max": "190000000\n", "temp2_input": "48000\n",
                      "temp2_label": "pkg\n", "fan1_input": "1200\n"})
    intel_card(sysfs, 1, "0000:00:02.0", "i915", card_files={"gt_act_freq_mhz": "300\n", "gt_max_freq_mhz": "1150\n"})
    t = FdTree(tmp_path / "proc")
    t.proc(100, "game", {3: sample(XE)})
    t.proc(200, "video", {5: sample(I915)})
    t.proc(201, "video2", {5: sample(I915).replace("drm-client-id:  22", "drm-client-id:  23")})
    col = IntelGPUCollector(intelgpu.IntelGPUSource(sysfs), fdinfo_reader=FdinfoReader(t.root))
    reg = collect(col)
    col.refresh(10.0)
    arc, igpu = {"gpu": "0", "uuid": "0000:03:00.0"}, {"gpu": "1", "uuid": "0000:00:02.0"}
    assert value(reg, "hoofhearted_gpu_info", name="Intel GPU 8086:56a0", vendor="intel", driver_version="",
                 pci_bus_id="0000:03:00.0", **arc) == 1
    assert value(reg, "hoofhearted_gpu_devices", vendor="intel") == 2
    assert value(reg, "hoofhearted_gpu_clock_hertz", clock="graphics", **arc) == 2050e6
    assert value(reg, "hoofhearted_gpu_clock_max_hertz", clock="graphics", **arc) == 2400e6
    assert value(reg, "hoofhearted_gpu_clock_hertz", clock="graphics", **igpu) == 300e6
    assert value(reg, "hoofhearted_gpu_energy_joules_total", **arc) == 5000
    assert value(reg, "hoofhearted_gpu_power_limit_watts", **arc) == 190
    assert value(reg, "hoofhearted_gpu_sensor_temperature_celsius", sensor="pkg", **arc) == 48
    assert value(reg, "hoofhearted_gpu_fan_speed_rpm", fan="0", **arc) == 1200
    assert value(reg, "hoofhearted_gpu_power_watts", **arc) is None          # one energy reading: no power yet
    assert value(reg, "hoofhearted_gpu_utilization_ratio", **igpu) is None    # one fdinfo read: no rates yet
    # 2 s later: 300 J used; the two i915 clients' render engines 0.5 and 0.75 s busy
    with open(os.path.join(sysfs, "devices", "pci0000:00", "0000:03:00.0", "hwmon", "hwmon7", "energy1_input"),
              "w") as f:
        f.write("5300000000\n")
    t.proc(100, "game", {3: bump(sample(XE), cycles_rcs=500, total_cycles_rcs=1000, total_cycles_bcs=1000,
                                 total_cycles_vcs=1000, total_cycles_vecs=1000, total_cycles_ccs=1000)})
    t.proc(200, "video", {5: bump(sample(I915), engine_render=500_000_000)})
    t.proc(201, "video2", {5: bump(sample(I915).replace("drm-client-id:  22", "drm-client-id:  23"),
                                   engine_render=1_500_000_000)})
    col.refresh(12.0)
    assert value(reg, "hoofhearted_gpu_power_watts", **arc) == 150
    # summed over clients, capped at 1: 0.25 + 0.75
    assert value(reg, "hoofhearted_gpu_engine_utilization_ratio", engine="render", **igpu) == 1.0
    assert value(reg, "hoofhearted_gpu_utilization_ratio", **igpu) == 1.0
    assert value(reg, "hoofhearted_gpu_engine_utilization_ratio", engine="rcs", **arc) == 0.5
    assert value(reg, "hoofhearted_gpu_utilization_ratio", **arc) == 0.5


def test_no_intel_gpu_reads_no_fds(tmp_path):
    from exporter.collectors.gpu import IntelGPUCollector
    from exporter.sources import intelgpu

    class NoReads:
        def read(self, now, pids=None):
            raise AssertionError("fds read without an Intel GPU")

    col = IntelGPUCollector(intelgpu.IntelGPUSource(str(tmp_path)), fdinfo_reader=NoReads())
    reg = collect(col)
    col.refresh(0.0)
    assert value(reg, "hoofhearted_gpu_devices", vendor="intel") == 0


def test_nvlink_links_up_and_errors():
    from exporter.collectors.gpu import NvidiaPcieCollector
    nv = scenarios.datacenter(clock=Clock())
    src = NvidiaSource(nv)
    nvc, pcie = NvidiaCollector(src), NvidiaPcieCollector(src)
    reg = collect(nvc, pcie)
    nvc.refresh(0.0)
    pcie.refresh(0.0)
    # nvidia-smi nvlink -s: 18 links at 26.562 GB/s on each GPU
    assert value(reg, "hoofhearted_gpu_nvlink_links", **H100) == 18
    assert value(reg, "hoofhearted_gpu_nvlink_links_active", **H100) == 18
    assert value(reg, "hoofhearted_gpu_nvlink_errors_total", error="crc_data", **H100) == 0
    nv._fake.gpus[0].nvlinks[5] = False
    nv._fake.gpus[0].fields[45] = 3
    nvc.refresh(10.0)
    pcie.refresh(10.0)
    assert value(reg, "hoofhearted_gpu_nvlink_links_active", **H100) == 17
    assert value(reg, "hoofhearted_gpu_nvlink_links_active", **H200) == 18
    assert value(reg, "hoofhearted_gpu_nvlink_errors_total", error="crc_data", **H100) == 3
    # a GPU without NVLink: no series
    g = NvidiaPcieCollector(NvidiaSource(scenarios.geforce(clock=Clock())))
    greg = collect(g)
    g.refresh(0.0)
    assert series(greg, "hoofhearted_gpu_nvlink_links") == {}


REASONS = ("sw_power_cap", "sync_boost", "sw_thermal_slowdown", "hw_thermal_slowdown", "hw_power_brake_slowdown")


@pytest.mark.parametrize("capture", [scenarios.RTX2080, scenarios.RTX4080, scenarios.H100, scenarios.H200])
def test_every_clock_event_time_counter_matches_nvidia_smi(capture):
    from test_gpu_nvidia import other_exporter
    nvc = NvidiaCollector(NvidiaSource(scenarios.assemble([(capture, None)], clock=Clock())))
    reg = collect(nvc)
    nvc.refresh(1.0)
    theirs = other_exporter(capture)
    for reason in REASONS:
        assert value(reg, "hoofhearted_gpu_clock_event_seconds_total", reason=reason, **GEFORCE) == \
            pytest.approx(theirs[f"nvidia_smi_clocks_event_reasons_counters_{reason}_seconds"], abs=1e-6), reason


@pytest.mark.parametrize("driver", ["575.51.03", "580.65.06", "580.82.07", "610.57.04"])
def test_slowdown_time_fields_follow_the_drivers_numbering(driver):
    """251-253 on R575 to 580.65; 269-271 later, where 251-253 are power-smoothing settings."""
    nv = scenarios.geforce(clock=Clock())
    nv._fake.driver_version = driver
    nv._fake.gpus[0].event_time = {"sw_thermal": 7_000_000_000, "hw_thermal": 3_000_000_000,
                                   "hw_power_brake": 2_500_000_000}
    nvc = NvidiaCollector(NvidiaSource(nv))
    reg = collect(nvc)
    nvc.refresh(1.0)
    got = {r: value(reg, "hoofhearted_gpu_clock_event_seconds_total", reason=r, **GEFORCE) for r in REASONS}
    assert got == {"sw_power_cap": pytest.approx(15820.333506, abs=1e-9), "sync_boost": 0,
                   "sw_thermal_slowdown": 7.0, "hw_thermal_slowdown": 3.0, "hw_power_brake_slowdown": 2.5}


def test_before_r575_thermal_time_is_the_thermal_policy_counter():
    nv = scenarios.geforce(clock=Clock())
    nv._fake.driver_version = "570.172.08"
    g = nv._fake.gpus[0]
    g.event_time = {"sw_thermal": 1, "hw_thermal": 1, "hw_power_brake": 1}   # not reachable on this driver
    g.fields[75] = 12_500_000_000               # 12.5 s of thermal violation, in ns
    nvc = NvidiaCollector(NvidiaSource(nv))
    reg = collect(nvc)
    nvc.refresh(1.0)
    assert value(reg, "hoofhearted_gpu_clock_event_seconds_total", reason="sw_thermal_slowdown", **GEFORCE) == 12.5
    assert value(reg, "hoofhearted_gpu_clock_event_seconds_total", reason="hw_thermal_slowdown", **GEFORCE) is None
    assert value(reg, "hoofhearted_gpu_clock_event_seconds_total", reason="sw_power_cap", **GEFORCE) == \
        pytest.approx(15820.333506, abs=1e-9)


def test_a_reason_that_held_the_clocks_between_refreshes_is_on():
    """The bitmask is read at one instant; the time counter says what happened in between."""
    nv = scenarios.geforce(clock=Clock())
    g = nv._fake.gpus[0]
    g.event_reasons = 0
    nvc = NvidiaCollector(NvidiaSource(nv))
    reg = collect(nvc)
    nvc.refresh(1.0)
    assert value(reg, "hoofhearted_gpu_clock_event", reason="sw_power_cap", **GEFORCE) == 0
    g.fields[74] += 1_500_000_000               # 1.5 s capped in a 2 s refresh, free at the read
    g.event_time["hw_thermal"] += 200_000_000   # 0.2 s of hardware thermal slowdown: under half
    nvc.refresh(3.0)
    assert value(reg, "hoofhearted_gpu_clock_event", reason="sw_power_cap", **GEFORCE) == 1
    assert value(reg, "hoofhearted_gpu_clock_event", reason="hw_thermal_slowdown", **GEFORCE) == 0
    nvc.refresh(5.0)                            # nothing since: off again
    assert value(reg, "hoofhearted_gpu_clock_event", reason="sw_power_cap", **GEFORCE) == 0


def test_nvlink_payload_counters_sum_every_link():
    nv = scenarios.datacenter(clock=Clock())
    h100 = nv._fake.gpus[0]
    h100.nvlink_kib = [[1000 + i, 2000 + i] for i in range(18)]
    nvc = NvidiaCollector(NvidiaSource(nv))
    reg = collect(nvc)
    nvc.refresh(1.0)
    assert value(reg, "hoofhearted_gpu_nvlink_transmit_bytes_total", **H100) == (18 * 1000 + 153) * 1024
    assert value(reg, "hoofhearted_gpu_nvlink_receive_bytes_total", **H100) == (18 * 2000 + 153) * 1024
    # the H200's driver does not answer the field: no sample, not a zero
    assert value(reg, "hoofhearted_gpu_nvlink_transmit_bytes_total", **H200) is None
    g = NvidiaCollector(NvidiaSource(scenarios.geforce(clock=Clock())))
    greg = collect(g)
    g.refresh(1.0)
    assert series(greg, "hoofhearted_gpu_nvlink_transmit_bytes_total") == {}
