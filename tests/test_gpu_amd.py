"""AMD GPUs from sysfs: procfs's amdgpu card, an amdgpu hwmon, pyamdgpuinfo for what sysfs lacks."""
import os
import shutil
import sys

import pytest
from prometheus_client import CollectorRegistry

from conftest import PROCFS_SYSFS, ROOT

if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from exporter.collectors.gpu import AMDGPUCollector, NvidiaCollector  # noqa: E402
from exporter.sources.amdgpu import AMDGPUSource  # noqa: E402
from exporter.sources.nvidia import NvidiaSource  # noqa: E402
from tests.fakenvml import scenarios  # noqa: E402

CARD0 = {"gpu": "0", "uuid": "0123456789abcdef"}
H100_UUID = "GPU-00000000-0000-0000-0000-000000000000"


def value(reg, metric, **labels):
    return reg.get_sample_value(metric, labels)


def test_fixture_card_values_equal_procfs_reading():
    gpus = AMDGPUSource(PROCFS_SYSFS, amdgpuinfo=False).read()
    assert len(gpus) == 1                       # card1 is i915 (and card1-DP-1/-5 are connectors)
    g = gpus[0]
    assert (g.card, g.uuid, g.pci_bus_id) == (0, "0123456789abcdef", "0000:09:00.0")
    assert g.utilization == 0.04                # gpu_busy_percent 4
    # procfs parses the same files into these (its class_drm_amdgpu_test.go)
    assert g.memory_used == 1490378752 and g.memory_total == 8573157376
    assert g.clocks == {"graphics": 852e6, "memory": 167e6}   # the '*' level of pp_dpm_sclk / pp_dpm_mclk
    assert g.name == "AMD GPU 1002:687f"        # product_name is an empty line
    assert g.temperature is None and g.fans == {} and g.power is None   # this tree has no hwmon


def test_real_pyamdgpuinfo_without_a_gpu_is_harmless():
    src = AMDGPUSource(PROCFS_SYSFS)            # imports pyamdgpuinfo: no /dev/dri here
    assert src.amdgpuinfo is not None
    g = src.read()[0]
    assert g.utilization == 0.04 and g.temperature is None


@pytest.fixture
def card(tmp_path):
    """procfs's tree with an amdgpu hwmon added under card0/device, as the driver lays it out."""
    sysfs = tmp_path / "sys"
    shutil.copytree(PROCFS_SYSFS, sysfs, symlinks=True)
    device = sysfs / "class" / "drm" / "card0" / "device"
    hw = device / "hwmon" / "hwmon3"
    hw.mkdir(parents=True)
    for name, text in {"name": "amdgpu", "temp1_input": "45000", "temp1_label": "edge", "temp1_crit": "100000",
                       "temp1_emergency": "105000", "temp2_input": "52000", "temp2_label": "junction",
                       "temp2_crit": "110000", "temp3_input": "60000", "temp3_label": "mem",
                       "fan1_input": "1200", "fan1_max": "3300", "pwm1": "128", "pwm1_enable": "2",
                       "pwm1_max": "255", "power1_average": "35000000", "power1_cap": "150000000",
                       "freq1_input": "1340000000", "freq1_label": "sclk"}.items():
        (hw / name).write_text(text + "\n")
    return str(sysfs), device


def test_hwmon_temperatures_fan_power_and_clock(card):
    sysfs, device = card
    c = AMDGPUCollector(AMDGPUSource(sysfs, amdgpuinfo=False))
    reg = CollectorRegistry()
    reg.register(c)
    c.refresh(1.0)
    assert value(reg, "hoofhearted_gpu_info", name="AMD GPU 1002:687f", vendor="amd", driver_version="",
                 pci_bus_id="0000:09:00.0", **CARD0) == 1
    assert value(reg, "hoofhearted_gpu_up", **CARD0) == 1
    assert value(reg, "hoofhearted_gpu_devices", vendor="amd") == 1
    assert value(reg, "hoofhearted_gpu_utilization_ratio", **CARD0) == 0.04
    assert value(reg, "hoofhearted_gpu_memory_used_bytes", **CARD0) == 1490378752
    assert value(reg, "hoofhearted_gpu_memory_total_bytes", **CARD0) == 8573157376
    assert value(reg, "hoofhearted_gpu_temperature_celsius", **CARD0) == 45.0
    assert value(reg, "hoofhearted_gpu_temperature_slowdown_celsius", **CARD0) == 100.0
    assert value(reg, "hoofhearted_gpu_temperature_shutdown_celsius", **CARD0) == 105.0
    for sensor, celsius in (("edge", 45.0), ("junction", 52.0), ("mem", 60.0)):
        assert value(reg, "hoofhearted_gpu_sensor_temperature_celsius", sensor=sensor, **CARD0) == celsius
    assert value(reg, "hoofhearted_gpu_fan_speed_ratio", fan="0", **CARD0) == 128 / 255
    assert value(reg, "hoofhearted_gpu_fan_speed_rpm", fan="0", **CARD0) == 1200
    assert value(reg, "hoofhearted_gpu_power_watts", **CARD0) == 35.0
    assert value(reg, "hoofhearted_gpu_power_limit_watts", **CARD0) == 150.0
    assert value(reg, "hoofhearted_gpu_clock_hertz", clock="graphics", **CARD0) == 1.34e9   # hwmon sclk
    assert value(reg, "hoofhearted_gpu_clock_hertz", clock="memory", **CARD0) == 167e6     # pp_dpm_mclk
    assert value(reg, "hoofhearted_gpu_energy_joules_total", **CARD0) is None
    assert c.hot({"gpu_temperature_celsius": 46.0}) == ()
    assert c.hot({"gpu_temperature_celsius": 45.0}) == ("gpu_temperature",)


def test_power_input_when_no_average_and_fan_ratio_from_rpm(card):
    sysfs, device = card
    hw = device / "hwmon" / "hwmon3"
    os.remove(hw / "power1_average")
    os.remove(hw / "pwm1")
    (hw / "power1_input").write_text("41500000\n")
    g = AMDGPUSource(sysfs, amdgpuinfo=False).read()[0]
    assert g.power == 41.5
    assert g.fans == {"0": 1200 / 3300}


def test_suspended_card_is_not_woken(card):
    sysfs, device = card
    (device / "power").mkdir()
    (device / "power" / "runtime_status").write_text("suspended\n")
    g = AMDGPUSource(sysfs, amdgpuinfo=False).read()[0]
    assert g.suspended and g.utilization == 0.0      # idle, and gpu_busy_percent (4) left unread
    assert g.memory_used is None and g.temperature is None


class FakeAmdGpuInfo:
    """pyamdgpuinfo's module surface (detect_gpus, get_gpu, GPUInfo queries) for one card."""

    class GPUInfo:
        pci_slot = "0000:09:00.0"
        name = "AMD Radeon RX Vega 64"
        memory_info = {"vram_size": 8573157376}

        def __init__(self):
            self.calls = {}

        def _count(self, what):
            self.calls[what] = self.calls.get(what, 0) + 1

        def query_load(self):
            self._count("load")
            return 0.37

        def query_temperature(self):
            self._count("temperature")
            raise RuntimeError("amdgpu_query_sensor_info failed")

        def query_power(self):
            return 88

        def query_sclk(self):
            return 1_000_000_000

        def query_mclk(self):
            return 945_000_000

        def query_vram_usage(self):
            return 1490378752

    def __init__(self):
        self.gpu = self.GPUInfo()

    def detect_gpus(self):
        return 1

    def get_gpu(self, i):
        return self.gpu


def test_pyamdgpuinfo_fills_what_sysfs_lacks(card):
    sysfs, device = card
    os.remove(device / "gpu_busy_percent")
    shutil.rmtree(device / "hwmon")
    lib = FakeAmdGpuInfo()
    src = AMDGPUSource(sysfs, amdgpuinfo=lib)
    for _ in range(3):
        g = src.read()[0]
    assert g.utilization == 0.37 and g.power == 88.0
    assert g.memory_used == 1490378752              # sysfs still wins where it has the file
    assert g.clocks == {"graphics": 852e6, "memory": 167e6}
    assert g.temperature is None                     # the library failed: no sample
    assert lib.gpu.calls == {"load": 3, "temperature": 1}   # a failing query is not asked again
    assert g.name == "AMD Radeon RX Vega 64"


def test_mixed_box_writes_each_family_once(card):
    """NVIDIA and AMD share metric names: the scrape joins both collectors' samples under one
    header per family, and each collector keeps its own success and escalation."""
    from conftest import parse_exposition
    from exporter.config import defaults
    from exporter.scheduler import Scheduler

    sysfs, _ = card
    nvc = NvidiaCollector(NvidiaSource(scenarios.datacenter()))
    amd = AMDGPUCollector(AMDGPUSource(sysfs, amdgpuinfo=False))
    sched = Scheduler([nvc, amd], defaults())
    for job in sched.jobs:
        sched.run_job(job)
    body = sched.body().decode()
    assert body.count("# TYPE hoofhearted_gpu_info gauge") == 1
    m = parse_exposition(body)          # fails on a duplicate series
    vendors = sorted(dict(k[1])["vendor"] for k in m if k[0] == "hoofhearted_gpu_info")
    assert vendors == ["amd", "nvidia", "nvidia"]
    assert m[("hoofhearted_gpu_devices", frozenset({("vendor", "amd")}))] == 1
    assert m[("hoofhearted_gpu_temperature_celsius", frozenset(CARD0.items()))] == 45.0
    assert m[("hoofhearted_gpu_temperature_celsius", frozenset({("gpu", "0"), ("uuid", H100_UUID)}))] == 59
    assert amd.hot({"gpu_temperature_celsius": 45.0}) == ("gpu_temperature",)
    assert nvc.hot({"gpu_temperature_celsius": 45.0}) == ("gpu_temperature",)
    from prometheus_client.openmetrics.parser import text_string_to_metric_families
    om = {f.name: f for f in text_string_to_metric_families(sched.body(openmetrics=True).decode())}
    assert len(om["hoofhearted_gpu_info"].samples) == 3
