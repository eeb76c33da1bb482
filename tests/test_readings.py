"""Readings that must not get through: endless or blocking files, implausible numbers, names
that are not UTF-8, duplicate RAPL zones, a procfs that is not one (issue 15, items 6, 7, 9)."""
import os
import signal
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest

from conftest import ROOT, parse_exposition, sample
from exporter import render
from exporter.collectors.sensors import RAPLCollector, SensorsCollector
from exporter.sources import host, sensors
from exporter.sources.processes import UserNames


def hwmon(root, files, name="testchip"):
    d = root / "class" / "hwmon" / "hwmon0"
    d.mkdir(parents=True, exist_ok=True)
    (d / "name").write_text(name + "\n")
    for fname, content in files.items():
        if content is None:
            continue
        if isinstance(content, bytes):
            (d / fname).write_bytes(content)
        else:
            (d / fname).write_text(content)
    return d


# -- item 6: bounded, non-blocking reads ------------------------------------------------------

def test_read_text_refuses_fifos_devices_and_endless_files(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    big = tmp_path / "big"
    big.write_bytes(b"1" * (host.SYSFS_LIMIT + 1))
    ok = tmp_path / "ok"
    ok.write_bytes(b"42000\n")
    t = time.monotonic()
    assert host.read_text(str(fifo)) is None          # would block forever in open()
    assert host.read_text(str(big)) is None
    assert isinstance(host.read_bytes(str(big)), host.TooLarge)
    assert host.read_text(str(ok)) == "42000\n"
    assert host.read_text(str(tmp_path / "missing")) is None
    assert time.monotonic() - t < 1


def test_read_text_of_dev_zero_returns_at_once():
    """In a child with 512 MB of address space: an unbounded read of /dev/zero dies there."""
    code = ("import resource, sys\nresource.setrlimit(resource.RLIMIT_AS, (512 << 20, 512 << 20))\n"
            "from exporter.sources import host\nprint(repr(host.read_text('/dev/zero')))\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert r.returncode == 0 and r.stdout == "None\n", r.stderr[-500:]


def test_exporter_with_endless_and_blocking_sensor_files(tmp_path, start_exporter):
    """A sensor that is a FIFO, a link to /dev/zero or a 20 MB file: the sensors collector still
    succeeds with the good readings, memory stays small, and SIGTERM ends the process at once."""
    d = hwmon(tmp_path, {"temp3_input": "42000\n"})
    os.mkfifo(d / "temp1_input")
    os.symlink("/dev/zero", d / "temp2_input")
    (d / "temp4_input").write_bytes(b"4" * (20 << 20))
    exp = start_exporter(f"--path.sysfs={tmp_path}", env={"HOOFHEARTED_REFRESH_TIMEOUT_SECONDS": "2"})
    time.sleep(2.5)
    m = parse_exposition(exp.scrape())
    assert sample(m, "hoofhearted_collector_success", collector="sensors") == 1
    temps = {dict(k[1])["sensor"]: v for k, v in m.items() if k[0] == "hoofhearted_temperature_celsius"}
    assert temps == {"temp3": 42.0}
    invalid = sample(m, "hoofhearted_invalid_readings_total", collector="sensors")
    assert invalid >= 1          # the 20 MB file, once per refresh (a FIFO or a device is no sensor file)
    with open(f"/proc/{exp.proc.pid}/status") as f:
        rss_kb = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
    assert rss_kb < 200 * 1024, rss_kb
    t = time.monotonic()
    os.killpg(exp.proc.pid, signal.SIGTERM)
    exp.proc.wait(10)
    assert time.monotonic() - t < 5


# -- item 7: plausible values only ------------------------------------------------------------

BAD = {
    "temp1_input": "nan\n", "temp2_input": "inf\n", "temp3_input": "300000\n", "temp4_input": "-70000\n",
    "temp5_input": "٤٢٠٠٠\n", "temp6_input": "1_000\n", "temp7_input": "9" * 30 + "\n",
    "fan1_input": "-5\n", "fan2_input": "NaN\n", "pwm1": "-1\n", "power1_input": "-Infinity\n",
}
GOOD = {"temp8_input": "45500\n", "temp8_max": "nan\n", "temp8_crit": "100000\n", "fan3_input": "1200\n",
        "pwm2": "255\n", "power2_input": "15000000\n"}


def test_implausible_readings_are_counted_not_exported(tmp_path):
    hwmon(tmp_path, {**BAD, **GOOD})
    c = SensorsCollector(str(tmp_path))
    c.refresh(0.0)
    families = c.refresh(1.0)
    body = render.text(families).decode()
    m = parse_exposition(body)
    series = {(k[0], dict(k[1]).get("sensor") or dict(k[1]).get("fan")): v for k, v in m.items()
              if k[0] != "hoofhearted_sensor_chip_info"}
    assert series == {
        ("hoofhearted_temperature_celsius", "temp8"): 45.5,
        ("hoofhearted_temperature_critical_celsius", "temp8"): 100.0,
        ("hoofhearted_fan_speed_rpm", "fan3"): 1200.0,
        ("hoofhearted_fan_pwm_ratio", "fan2"): 1.0,
        ("hoofhearted_power_watts", "power2"): 15.0,
        ("hoofhearted_invalid_readings_total", None): 2 * (len(BAD) + 1),   # + temp8_max, twice
    }
    assert sample(m, "hoofhearted_invalid_readings_total", collector="sensors") == 24


def test_thermal_zone_out_of_range(tmp_path):
    z = tmp_path / "class" / "thermal" / "thermal_zone0"
    z.mkdir(parents=True)
    (z / "type").write_text("x86_pkg_temp\n")
    (z / "temp").write_text("-273150\n")
    snap = sensors.read_sensors(str(tmp_path))
    assert snap.temperatures == [] and snap.invalid == 1


def test_implausible_readings_end_to_end(tmp_path, start_exporter):
    hwmon(tmp_path, {**BAD, **GOOD})
    exp = start_exporter(f"--path.sysfs={tmp_path}")
    m = parse_exposition(exp.scrape())
    assert sample(m, "hoofhearted_collector_success", collector="sensors") == 1
    temps = {dict(k[1])["sensor"]: v for k, v in m.items() if k[0] == "hoofhearted_temperature_celsius"}
    assert temps == {"temp8": 45.5}
    fans = {dict(k[1])["fan"]: v for k, v in m.items() if k[0] == "hoofhearted_fan_speed_rpm"}
    assert fans == {"fan3": 1200.0}
    invalid = sample(m, "hoofhearted_invalid_readings_total", collector="sensors")
    assert invalid > 0 and invalid % (len(BAD) + 1) == 0


# -- item 9: counting right -------------------------------------------------------------------

def test_user_names_that_are_not_utf8():
    raw = b"caf\xe9-\xff"
    name = raw.decode("utf-8", "surrogateescape")      # what pwd hands over for such a user
    users = UserNames("/", getpwuid=lambda uid: SimpleNamespace(pw_name=name))
    assert users(1234) == "caf\ufffd-\ufffd"
    users = UserNames("/", getpwuid=lambda uid: (_ for _ in ()).throw(KeyError(uid)))
    assert users(1234) == "1234"


def test_user_names_from_a_passwd_file_that_is_not_utf8(tmp_path):
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "passwd").write_bytes(b"root:x:0:0::/root:/bin/sh\ncaf\xe9:x:1001:1001::/:/bin/sh\n"
                                              b"arabic:x:\xd9\xa1:1::/:/bin/sh\n")
    users = UserNames(str(tmp_path))
    assert users(0) == "root" and users(1001) == "caf\ufffd"
    assert users(1) == "1"          # a uid in other digits is no uid


def rapl_zone(root, name, dirname, energy, rng=262143328850):
    d = root / "class" / "powercap" / dirname
    d.mkdir(parents=True, exist_ok=True)
    (d / "name").write_text(name + "\n")
    (d / "energy_uj").write_text(f"{energy}\n")
    (d / "max_energy_range_uj").write_text(f"{rng}\n")


def test_rapl_mmio_zone_is_its_own_series(tmp_path):
    """intel-rapl:0 and intel-rapl-mmio:0 are both 'package-0': two series, and no false wrap."""
    rapl_zone(tmp_path, "package-0", "intel-rapl:0", 5_000_000)
    rapl_zone(tmp_path, "package-0", "intel-rapl-mmio:0", 1_000_000)
    rapl_zone(tmp_path, "core", "intel-rapl:0:0", 2_000_000)
    c = RAPLCollector(str(tmp_path))
    c.refresh(10.0)
    rapl_zone(tmp_path, "package-0", "intel-rapl:0", 25_000_000)
    rapl_zone(tmp_path, "package-0", "intel-rapl-mmio:0", 3_000_000)
    m = parse_exposition(render.text(c.refresh(12.0)).decode())
    energy = {dict(k[1])["domain"]: v for k, v in m.items() if k[0] == "hoofhearted_cpu_energy_joules_total"}
    watts = {dict(k[1])["domain"]: v for k, v in m.items() if k[0] == "hoofhearted_cpu_power_watts"}
    assert energy == {"package-0": 25.0, "package-0 (intel-rapl-mmio)": 3.0, "package-0/core": 2.0}
    assert watts == {"package-0": 10.0, "package-0 (intel-rapl-mmio)": 1.0, "package-0/core": 0.0}


def test_rapl_counter_above_its_range_is_invalid(tmp_path):
    rapl_zone(tmp_path, "package-0", "intel-rapl:0", 5_000_000, rng=1_000_000)
    c = RAPLCollector(str(tmp_path))
    m = parse_exposition(render.text(c.refresh(1.0)).decode())
    assert not any(k[0] == "hoofhearted_cpu_energy_joules_total" for k in m)
    assert sample(m, "hoofhearted_invalid_readings_total", collector="rapl") == 1


def test_a_procfs_that_is_not_one_fails_the_collectors(tmp_path, start_exporter):
    empty = tmp_path / "proc"
    empty.mkdir()
    exp = start_exporter(f"--path.procfs={empty}", f"--path.sysfs={tmp_path}")
    m = parse_exposition(exp.scrape())
    for collector in ("cpu", "memory", "disk", "network", "process"):
        assert sample(m, "hoofhearted_collector_success", collector=collector) == 0, collector
    assert not any(k[0].startswith(("hoofhearted_disk_", "hoofhearted_network_", "hoofhearted_process_"))
                   for k in m)


@pytest.mark.parametrize("flag", ["--path.procfs=", "--path.sysfs= "])
def test_empty_path_flags_are_refused(flag):
    r = subprocess.run([sys.executable, "-m", "exporter", "--web.listen-address=127.0.0.1:0", flag],
                       cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and "expected a directory" in r.stderr, r.stderr


def test_tcp_table_is_read_once_per_network_namespace(tmp_path):
    """Two processes in one namespace: the second lookup uses the table read for the first. (The
    fixture gives them different files to tell the reads apart; a real namespace has one table.)"""
    from exporter.sources.processes import Scanner
    proc = tmp_path / "proc"
    header = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n"
    for pid, inode, port in ((12, 5551, 3333), (14, 5553, 4444), (16, 5555, 5555)):
        (proc / str(pid) / "net").mkdir(parents=True)
        (proc / str(pid) / "ns").mkdir()
        (proc / str(pid) / "net" / "tcp").write_text(
            header + f"   0: 0100007F:A1B2 0200000A:{port:04X} 01 00000000:00000000 00:00000000 00000000  1000"
                     f"        0 {inode} 1 0000000000000000 20 4 30 10 -1\n")
        os.symlink("net:[4026531840]" if pid != 16 else "net:[4026532999]", proc / str(pid) / "ns" / "net")
    (proc / "stat").write_text("btime 1\n")
    s = Scanner(str(proc), str(tmp_path))
    assert s.tcp_remote_ports(12, {5551}, when=1.0) == {3333}
    assert s.tcp_remote_ports(14, {5553}, when=1.0) == set()          # same namespace: pid 12's table
    assert s.tcp_remote_ports(14, {5551}, when=1.0) == {3333}
    assert s.tcp_remote_ports(16, {5555}, when=1.0) == {5555}         # its own namespace, its own table
    assert s.tcp_remote_ports(14, {5553}, when=2.0) == {4444}         # the next refresh reads again
    assert s.tcp_remote_ports(14, {5553}) == {4444}


def test_display_only_drm_card_costs_no_fd_scan(tmp_path):
    """A server's BMC display adapter (ast) is a DRM card but no GPU: no fd scan for its clients."""
    from exporter.collectors.gpu import GPUProcessCollector
    from exporter.sources import drm, processes
    for card, driver, slot in (("card0", "ast", "0000:03:00.0"),):
        dev = tmp_path / "sys" / "class" / "drm" / card / "device"
        dev.mkdir(parents=True)
        (dev / "uevent").write_text(f"DRIVER={driver}\nPCI_SLOT_NAME={slot}\n")
    (cards,) = [drm.list_cards(str(tmp_path / "sys"))]
    assert [(c.driver, c.renders) for c in cards] == [("ast", False)]
    from exporter.config import defaults
    cfg = defaults()
    cfg["paths"]["sysfs"] = str(tmp_path / "sys")
    cfg["gpu"]["nvml_module"] = "fakenvml.nodriver"
    assert GPUProcessCollector.create(cfg) is None     # not even a collector that finds nothing
    proc = "/proc"
    gp = GPUProcessCollector(None, procfs=proc, sysfs=str(tmp_path / "sys"), scanner=processes.Scanner(proc, "/"))
    gp.refresh(0.0)
    assert gp.fdinfo.last_full is None         # never looked at any process's fds
    dev = tmp_path / "sys" / "class" / "drm" / "card1" / "device"
    dev.mkdir(parents=True)
    (dev / "uevent").write_text("DRIVER=amdgpu\nPCI_SLOT_NAME=0000:09:00.0\n")
    gp.refresh(1.0)
    assert gp.fdinfo.last_full == 1.0          # a real GPU: its clients are looked for


def test_cpu_frequency_in_other_digits_is_no_frequency(tmp_path):
    f = tmp_path / "sys" / "devices" / "system" / "cpu" / "cpu0" / "cpufreq"
    f.mkdir(parents=True)
    (f / "scaling_cur_freq").write_text("٢٠٠٠٠٠٠\n")          # 2000000 in Arabic-Indic digits
    (tmp_path / "proc").mkdir()
    assert host.read_cpu_frequency(str(tmp_path / "proc"), str(tmp_path / "sys"), {"0": None}) == {}
    (f / "scaling_cur_freq").write_text("2000000\n")
    assert host.read_cpu_frequency(str(tmp_path / "proc"), str(tmp_path / "sys"), {"0": None}) == {"0": 2_000_000_000}
