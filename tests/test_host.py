"""Host and sensor collectors on fixture trees, values checked exactly."""
import os
import re
import shutil

import pytest
from prometheus_client import CollectorRegistry

from conftest import PROCFS_FIXTURE, PROCFS_SYSFS, SYSFS, FIXTURES
from exporter.collectors.host import CPUCollector, DiskCollector, FilesystemCollector, MemoryCollector, NetworkCollector
from exporter.collectors.sensors import RAPLCollector, SensorsCollector
from exporter.config import defaults


def registry(collector):
    reg = CollectorRegistry()
    reg.register(collector)
    return reg


def write_stat(root, total, cores):
    lines = ["cpu  " + " ".join(map(str, total))]
    lines += [f"cpu{i} " + " ".join(map(str, c + [0, 0])) for i, c in enumerate(cores)]
    lines += ["intr 1 2 3", "btime 1700000000"]
    (root / "stat").write_text("\n".join(lines) + "\n")


def test_cpu_usage_is_exact_between_two_refreshes(tmp_path):
    (tmp_path / "loadavg").write_text("1.50 0.75 0.25 2/300 1234\n")
    #            user nice system idle iowait irq softirq steal guest guest_nice
    write_stat(tmp_path, [100, 0, 100, 700, 100, 0, 0, 0, 0, 0],
               [[50, 0, 50, 350, 50, 0, 0, 0], [50, 0, 50, 350, 50, 0, 0, 0]])
    c = CPUCollector(str(tmp_path), str(tmp_path / "nosys"))
    reg = registry(c)
    c.refresh(0.0)
    # no previous reading: no usage sample, never a fake zero
    assert reg.get_sample_value("hoofhearted_cpu_usage_ratio") is None
    assert reg.get_sample_value("hoofhearted_cpu_cores") == 2
    assert reg.get_sample_value("hoofhearted_load_average", {"window": "1m"}) == 1.5
    assert reg.get_sample_value("hoofhearted_load_average", {"window": "15m"}) == 0.25
    # core 0 fully busy for 100 jiffies, core 1 busy 25 of 100 (iowait counts as idle)
    write_stat(tmp_path, [225, 0, 100, 745, 130, 0, 0, 0, 0, 0],
               [[150, 0, 50, 350, 50, 0, 0, 0], [75, 0, 50, 395, 80, 0, 0, 0]])
    c.refresh(1.0)
    assert reg.get_sample_value("hoofhearted_cpu_usage_ratio") == pytest.approx(125 / 200)
    assert reg.get_sample_value("hoofhearted_cpu_core_usage_ratio", {"core": "0"}) == pytest.approx(1.0)
    assert reg.get_sample_value("hoofhearted_cpu_core_usage_ratio", {"core": "1"}) == pytest.approx(0.25)
    assert c.hot({"cpu_busy_ratio": 0.6}) == ("cpu_busy",)
    assert c.hot({"cpu_busy_ratio": 0.9}) == ()


def test_cpu_frequency_from_cpufreq_and_cpuinfo(tmp_path):
    c = CPUCollector(PROCFS_FIXTURE, SYSFS)
    reg = registry(c)
    c.refresh(0.0)
    expected = int(open(os.path.join(SYSFS, "devices/system/cpu/cpu0/cpufreq/scaling_cur_freq")).read()) * 1000
    assert reg.get_sample_value("hoofhearted_cpu_frequency_hertz", {"core": "0"}) == expected
    # without cpufreq in sysfs the 'cpu MHz' lines of cpuinfo are used
    c2 = CPUCollector(PROCFS_FIXTURE, str(tmp_path))
    reg2 = registry(c2)
    c2.refresh(0.0)
    mhz = re.findall(r"cpu MHz\s*:\s*([\d.]+)", open(os.path.join(PROCFS_FIXTURE, "cpuinfo")).read())
    assert reg2.get_sample_value("hoofhearted_cpu_frequency_hertz", {"core": "0"}) == pytest.approx(float(mhz[0]) * 1e6)


def test_memory_from_meminfo():
    c = MemoryCollector(PROCFS_FIXTURE)
    reg = registry(c)
    c.refresh(0.0)
    kb = dict(re.findall(r"^(\w+):\s+(\d+) kB", open(os.path.join(PROCFS_FIXTURE, "meminfo")).read(), re.M))
    total = int(kb["MemTotal"]) * 1024
    assert reg.get_sample_value("hoofhearted_memory_total_bytes") == total == 15666184 * 1024
    # this meminfo predates MemAvailable (Linux 3.14): psutil estimates it as the kernel does, from
    # free memory above the zones' low watermarks (zoneinfo) plus reclaimable page cache and slab
    assert "MemAvailable" not in kb
    avail = 15140458496
    assert reg.get_sample_value("hoofhearted_memory_available_bytes") == avail
    assert reg.get_sample_value("hoofhearted_memory_used_bytes") == total - avail
    assert reg.get_sample_value("hoofhearted_swap_total_bytes") == int(kb["SwapTotal"]) * 1024 == 0


def test_memory_and_swap_with_mem_available(tmp_path):
    (tmp_path / "meminfo").write_text(
        "MemTotal:       16000000 kB\nMemFree:         1000000 kB\nMemAvailable:    9000000 kB\n"
        "Buffers:          200000 kB\nCached:          3000000 kB\nSwapCached:            0 kB\n"
        "Active:          5000000 kB\nInactive:        4000000 kB\nShmem:             10000 kB\n"
        "Slab:             300000 kB\nSReclaimable:     200000 kB\n"
        "SwapTotal:       2000000 kB\nSwapFree:        1500000 kB\n")
    c = MemoryCollector(str(tmp_path))
    reg = registry(c)
    c.refresh(0.0)
    assert reg.get_sample_value("hoofhearted_memory_total_bytes") == 16000000 * 1024
    assert reg.get_sample_value("hoofhearted_memory_available_bytes") == 9000000 * 1024
    assert reg.get_sample_value("hoofhearted_memory_used_bytes") == 7000000 * 1024
    assert reg.get_sample_value("hoofhearted_swap_total_bytes") == 2000000 * 1024
    assert reg.get_sample_value("hoofhearted_swap_used_bytes") == 500000 * 1024


def test_disks_skip_partitions_and_virtual_devices():
    c = DiskCollector(PROCFS_FIXTURE, defaults()["disk"]["exclude"])
    reg = registry(c)
    c.refresh(0.0)
    devices = {d.device for d in c.snapshot}
    assert "sda" in devices and "nvme0n1" in devices
    assert not any(re.match(r"^(ram|loop)\d+$|^sda\d+$|^nvme0n1p\d+$", d) for d in devices)
    line = next(l.split() for l in open(os.path.join(PROCFS_FIXTURE, "diskstats")) if l.split()[2] == "sda")
    assert reg.get_sample_value("hoofhearted_disk_read_bytes_total", {"device": "sda"}) == int(line[5]) * 512
    assert reg.get_sample_value("hoofhearted_disk_written_bytes_total", {"device": "sda"}) == int(line[9]) * 512


def test_network_counters_and_exclude():
    c = NetworkCollector(PROCFS_FIXTURE, defaults()["network"]["exclude"])
    reg = registry(c)
    c.refresh(0.0)
    assert reg.get_sample_value("hoofhearted_network_receive_bytes_total", {"interface": "lo"}) == 1664039048
    assert reg.get_sample_value("hoofhearted_network_transmit_bytes_total", {"interface": "lo"}) == 1664039048
    assert reg.get_sample_value("hoofhearted_network_receive_bytes_total", {"interface": "vethf345468"}) is None


def test_filesystems_only_device_backed(tmp_path):
    procfs = tmp_path / "proc"
    (procfs / "1").mkdir(parents=True)
    (procfs / "filesystems").write_text("nodev\tsysfs\nnodev\tproc\nnodev\ttmpfs\n\text4\n\txfs\n")
    (procfs / "1" / "mounts").write_text(
        "/dev/vda1 / ext4 rw 0 0\nproc /proc proc rw 0 0\ntmpfs /run tmpfs rw 0 0\n"
        "/dev/vdb /data\\040disk xfs rw 0 0\n")
    rootfs = tmp_path / "root"
    (rootfs / "data disk").mkdir(parents=True)
    c = FilesystemCollector(str(procfs), str(rootfs))
    asked = []

    def statvfs(path):      # fixed sizes: a real filesystem's free space moves between two calls
        asked.append(path)
        os.statvfs(path)    # still fails for a mount point missing under the root
        blocks, free = (1000, 400) if path.endswith("data disk") else (5000, 100)
        return os.statvfs_result((4096, 4096, blocks, free, free, 0, 0, 0, 0, 255))

    c.statvfs = statvfs
    reg = registry(c)
    c.refresh(0.0)
    assert asked == [os.path.join(str(rootfs), ""), os.path.join(str(rootfs), "data disk")]
    size = {"mountpoint": "/", "fstype": "ext4"}
    data = {"mountpoint": "/data disk", "fstype": "xfs"}
    assert reg.get_sample_value("hoofhearted_filesystem_size_bytes", size) == 5000 * 4096
    assert reg.get_sample_value("hoofhearted_filesystem_free_bytes", size) == 100 * 4096
    assert reg.get_sample_value("hoofhearted_filesystem_size_bytes", data) == 1000 * 4096
    assert reg.get_sample_value("hoofhearted_filesystem_free_bytes", data) == 400 * 4096
    assert {fs.fstype for fs in c.snapshot} == {"ext4", "xfs"}


def node_exporter_expected():
    """node_exporter's own expected output for the same sysfs tree."""
    out = {}
    path = os.path.join(FIXTURES, "expected", "node_exporter.hwmon-thermal-rapl.txt")
    for line in open(path):
        m = re.match(r"^(\w+)\{(.*)\} (\S+)$", line.strip())
        if m:
            labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(2)))
            out.setdefault(m.group(1), []).append((labels, float(m.group(3))))
    return out


def test_temperatures_and_fans_equal_node_exporter():
    c = SensorsCollector(SYSFS)
    reg = registry(c)
    c.refresh(0.0)
    expected = node_exporter_expected()
    temps = expected["node_hwmon_temp_celsius"]
    assert len(temps) == 15
    for labels, value in temps:
        got = [t for t in c.snapshot.temperatures if t.chip == labels["chip"] and t.sensor == labels["sensor"]]
        assert len(got) == 1, labels
        label = got[0].label
        assert reg.get_sample_value("hoofhearted_temperature_celsius",
                                    {"chip": labels["chip"], "sensor": labels["sensor"], "label": label}) == value
    for name, ours in (("node_hwmon_temp_max_celsius", "hoofhearted_temperature_max_celsius"),
                       ("node_hwmon_temp_crit_celsius", "hoofhearted_temperature_critical_celsius")):
        for labels, value in expected[name]:
            t = next(t for t in c.snapshot.temperatures if t.chip == labels["chip"] and t.sensor == labels["sensor"])
            assert reg.get_sample_value(ours, {"chip": t.chip, "sensor": t.sensor, "label": t.label}) == value
    fans = expected["node_hwmon_fan_rpm"]
    assert len(fans) == 3
    for labels, value in fans:
        f = next(f for f in c.snapshot.fans if f.chip == labels["chip"] and f.fan == labels["sensor"])
        assert reg.get_sample_value("hoofhearted_fan_speed_rpm", {"chip": f.chip, "fan": f.fan, "label": f.label}) \
            == value
    for labels, value in expected["node_hwmon_fan_max_rpm"]:
        assert reg.get_sample_value("hoofhearted_fan_max_rpm", {"chip": labels["chip"], "fan": labels["sensor"]}) \
            == value
    # labels come from the *_label files
    assert reg.get_sample_value("hoofhearted_fan_speed_rpm",
                                {"chip": "platform_applesmc_768", "fan": "fan2", "label": "Right side"}) == 1998
    # chip names: the same as node_exporter's, none repeated
    chips = {labels["chip"] for labels, _ in expected["node_hwmon_chip_names"]}
    assert chips <= set(c.snapshot.chips)
    for labels, _ in expected["node_hwmon_chip_names"]:
        assert reg.get_sample_value("hoofhearted_sensor_chip_info",
                                    {"chip": labels["chip"], "chip_name": labels["chip_name"]}) == 1


def test_thermal_zone_equals_node_exporter():
    c = SensorsCollector(SYSFS)
    reg = registry(c)
    c.refresh(0.0)
    (labels, value), = node_exporter_expected()["node_thermal_zone_temp"]
    assert reg.get_sample_value("hoofhearted_temperature_celsius",
                                {"chip": "thermal_zone" + labels["zone"], "sensor": "temp", "label": labels["type"]}) \
        == value == 12.376


def test_thermal_zone_negative_and_missing_files():
    c = SensorsCollector(PROCFS_SYSFS)
    reg = registry(c)
    c.refresh(0.0)
    assert reg.get_sample_value("hoofhearted_temperature_celsius",
                                {"chip": "thermal_zone0", "sensor": "temp", "label": "bcm2835_thermal"}) == 49.925
    assert reg.get_sample_value("hoofhearted_temperature_celsius",
                                {"chip": "thermal_zone1", "sensor": "temp", "label": "acpitz"}) == -44.0


def test_pwm_and_power_from_hwmon(tmp_path):
    d = tmp_path / "devices" / "platform" / "it87.2608" / "hwmon" / "hwmon0"
    d.mkdir(parents=True)
    (d / "name").write_text("it8688\n")
    (d / "pwm1").write_text("255\n")
    (d / "pwm2").write_text("51\n")
    (d / "fan1_input").write_text("2400\n")
    (d / "power1_average").write_text("45500000\n")
    (d / "temp1_input").write_text("not a number\n")
    (tmp_path / "class" / "hwmon").mkdir(parents=True)
    os.symlink("../../devices/platform/it87.2608/hwmon/hwmon0", tmp_path / "class" / "hwmon" / "hwmon0")
    os.symlink("../../../it87.2608", d / "device")
    c = SensorsCollector(str(tmp_path))
    reg = registry(c)
    c.refresh(0.0)
    chip = "platform_it87_2608"
    assert reg.get_sample_value("hoofhearted_fan_pwm_ratio", {"chip": chip, "fan": "fan1"}) == 1.0
    assert reg.get_sample_value("hoofhearted_fan_pwm_ratio", {"chip": chip, "fan": "fan2"}) == pytest.approx(0.2)
    assert reg.get_sample_value("hoofhearted_power_watts", {"chip": chip, "sensor": "power1"}) == 45.5
    # an unreadable value is no sample, not zero
    assert not [t for t in c.snapshot.temperatures if t.chip == chip]


def test_cpu_temperature_escalates(tmp_path):
    shutil.copytree(SYSFS, tmp_path / "sys", symlinks=True)
    c = SensorsCollector(str(tmp_path / "sys"))
    c.refresh(0.0)
    assert c.hot({"cpu_temperature_celsius": 80}) == ()
    assert c.hot({"cpu_temperature_celsius": 55}) == ("cpu_temperature",)
    # a hot non-CPU chip (Wi-Fi) does not count as a hot CPU
    assert c.hot({"cpu_temperature_celsius": 56}) == ()


def test_rapl_joules_equal_node_exporter_and_watts_from_deltas(tmp_path):
    expected = node_exporter_expected()
    c = RAPLCollector(SYSFS)
    reg = registry(c)
    c.refresh(0.0)
    (_, package), = expected["node_rapl_package_joules_total"]
    (_, core), = expected["node_rapl_core_joules_total"]
    assert reg.get_sample_value("hoofhearted_cpu_energy_joules_total", {"domain": "package-0"}) == package
    assert reg.get_sample_value("hoofhearted_cpu_energy_joules_total", {"domain": "package-0/core"}) == core
    assert reg.get_sample_value("hoofhearted_cpu_power_watts", {"domain": "package-0"}) is None


def test_rapl_counter_wrap_keeps_total_growing(tmp_path):
    zone = tmp_path / "class" / "powercap" / "intel-rapl:0"
    zone.mkdir(parents=True)
    (zone / "name").write_text("package-0\n")
    (zone / "max_energy_range_uj").write_text("1000000000\n")
    (zone / "energy_uj").write_text("999000000\n")
    c = RAPLCollector(str(tmp_path))
    reg = registry(c)
    c.refresh(10.0)
    (zone / "energy_uj").write_text("19000000\n")   # wrapped: 20 J used in 2 s
    c.refresh(12.0)
    assert reg.get_sample_value("hoofhearted_cpu_energy_joules_total", {"domain": "package-0"}) == 1019.0
    assert reg.get_sample_value("hoofhearted_cpu_power_watts", {"domain": "package-0"}) == pytest.approx(10.0)


def test_cpu_numbers_follow_the_online_list_when_cpus_are_offline(tmp_path):
    #            user nice system idle iowait irq softirq steal guest guest_nice
    write_stat(tmp_path, [30, 0, 0, 30, 0, 0, 0, 0, 0, 0],
               [[10, 0, 0, 10, 0, 0, 0, 0], [10, 0, 0, 10, 0, 0, 0, 0], [10, 0, 0, 10, 0, 0, 0, 0]])
    cpu = tmp_path / "sys" / "devices" / "system" / "cpu"
    cpu.mkdir(parents=True)
    (cpu / "online").write_text("0-1,3\n")      # cpu2 offline: /proc/stat lists cpu0, cpu1, cpu3
    c = CPUCollector(str(tmp_path), str(tmp_path / "sys"))
    c.refresh(0.0)
    assert list(c.snapshot.cores) == ["0", "1", "3"]
    write_stat(tmp_path, [60, 0, 0, 50, 0, 0, 0, 0, 0, 0],
               [[10, 0, 0, 20, 0, 0, 0, 0], [20, 0, 0, 20, 0, 0, 0, 0], [30, 0, 0, 10, 0, 0, 0, 0]])
    reg = registry(c)
    c.refresh(1.0)
    assert reg.get_sample_value("hoofhearted_cpu_core_usage_ratio", {"core": "0"}) == 0.0
    assert reg.get_sample_value("hoofhearted_cpu_core_usage_ratio", {"core": "1"}) == 0.5
    assert reg.get_sample_value("hoofhearted_cpu_core_usage_ratio", {"core": "3"}) == 1.0
    assert reg.get_sample_value("hoofhearted_cpu_core_usage_ratio", {"core": "2"}) is None
    assert reg.get_sample_value("hoofhearted_cpu_usage_ratio") == 30 / 50
    assert reg.get_sample_value("hoofhearted_cpu_cores") == 3


def test_hostname_of_the_mounted_root(tmp_path):
    import socket
    from exporter.sources.host import hostname
    assert hostname("/") == socket.gethostname()
    assert hostname(str(tmp_path)) is None               # a root without /etc/hostname names nobody
    (tmp_path / "etc").mkdir()
    for text, want in (("db-1.example.net\n", "db-1.example.net"), ("  web-2  \n", "web-2"),
                       ("bad name\n", None), ("-x\n", None), ("a" * 64 + "\n", None), ("", None)):
        (tmp_path / "etc" / "hostname").write_text(text)
        assert hostname(str(tmp_path)) == want, text
