"""BMC fans, temperatures and power through real simulators: OpenIPMI's ipmi_sim over RMCP+,
sushy-tools' Redfish emulators; the exporter over HTTP with a BMC that never answers."""
import http.client
import os
import subprocess
import sys
import time

import pytest
import yaml

from bmcsim import (CH, PASSWORD, USER, Catcher, DeadBMC, IPMISim, SessionFront, SushyEmulator, SushyStatic,
                    NO_SCANNING, subsystem_tree)
from certs import CA
from conftest import ROOT, need_module, need_tool, parse_exposition, sample
from exporter.sources.bmc import BMCError, Fan, Power, Snapshot, Temperature


@pytest.fixture
def ipmi_sim(tmp_path):
    need_tool("ipmi-sensors")
    sim = IPMISim(tmp_path / "ipmi")
    yield sim
    sim.stop()


@pytest.fixture(scope="module")
def tls(tmp_path_factory):
    ca = CA(need_tool("openssl"), tmp_path_factory.mktemp("ca"))
    cert, key = ca.issue("bmc", "IP:127.0.0.1")
    return ca, cert, key


@pytest.fixture(scope="module")
def redfish(tmp_path_factory, tls):
    """sushy-emulator --fake over HTTPS with basic auth."""
    need_module("sushy_tools", "__name__")
    ca, cert, key = tls
    emu = SushyEmulator(tmp_path_factory.mktemp("sushy"), cert=cert, key=key)
    yield emu
    emu.stop()


# ipmi_sim answers the RMCP+ session open with a privilege FreeIPMI must be told to accept
SIM_WORKAROUNDS = ["opensesspriv"]


def ipmi_reader(sim, password=PASSWORD):
    from exporter.sources.bmc_ipmi import IPMIReader
    return IPMIReader(host="127.0.0.1", port=sim.port, username=USER, password=password,
                      workaround_flags=SIM_WORKAROUNDS)


# the simulated BMC as ipmi_sim serves it (SDR M factors: fans 75 rpm a step, power 4 W a step)
IPMI_SNAPSHOT = Snapshot(
    temperatures=[Temperature("CPU2 Temp", "", 83.0, 85.0, 95.0), Temperature("Inlet Temp", "", 24.0)],
    fans=[Fan("Fan3A", "", rpm=9600.0), Fan("Fan3B", "", rpm=3000.0), Fan("Fan6 Duty", "", ratio=0.62)],
    power=[Power("PS1 Input Power", 240.0)])


def test_ipmi_reads_fans_temperatures_power_and_thresholds(ipmi_sim):
    reader = ipmi_reader(ipmi_sim)
    try:
        # Fan7 Empty (an SDR with no sensor behind it) and Fan8 Off (scanning disabled) give nothing
        assert reader.read() == IPMI_SNAPSHOT
    finally:
        reader.close()


def test_ipmi_follows_values_the_simulator_changes(ipmi_sim):
    reader = ipmi_reader(ipmi_sim)
    try:
        assert reader.read().fans[0].rpm == 9600.0
        ipmi_sim.set_raw(1, 100)
        ipmi_sim.set_raw(3, 91)
        deadline = time.monotonic() + 5
        while (snap := reader.read()).fans[0].rpm != 7500.0 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert snap.fans[0] == Fan("Fan3A", "", rpm=7500.0)
        assert snap.temperatures[0] == Temperature("CPU2 Temp", "", 91.0, 85.0, 95.0)
        # a sensor the BMC stops scanning disappears instead of reading 0
        ipmi_sim.console(f"sensor_set_event_support 0x20 0 2 {NO_SCANNING}")
        deadline = time.monotonic() + 5
        while len((snap := reader.read()).fans) != 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert [f.fan for f in snap.fans] == ["Fan3A", "Fan6 Duty"]
    finally:
        reader.close()


def test_ipmi_wrong_password_is_an_auth_error_without_the_password(ipmi_sim):
    wrong = "Wr0ng-pass-77"
    reader = ipmi_reader(ipmi_sim, password=wrong)
    with pytest.raises(BMCError) as err:
        reader.read()
    assert err.value.reason == "auth"
    assert str(err.value) == "password invalid"
    assert wrong not in repr(err.value)
    # the password is in a private file, not on the command line anyone can read in /proc
    assert wrong not in " ".join(reader.argv())
    reader.close()


def redfish_reader(url, ca=None, password=PASSWORD, **kw):
    from exporter.sources.bmc_redfish import RedfishReader
    return RedfishReader(url, username=USER, password=password, ca_file=ca, timeout=5, **kw)


# sushy-emulator's fake chassis (its thermal.json template)
SUSHY_SNAPSHOT = Snapshot(
    temperatures=[Temperature("CPU Temp", "CPU", 41.0, 42.0, 45.0),
                  Temperature("Chassis Intake Temp", "Intake", 25.0, 30.0, 40.0)],
    fans=[Fan("BaseBoard System Fan", "Backplane", rpm=2100.0, max_rpm=5000.0),
          Fan("BaseBoard System Fan Backup", "Backplane", rpm=2050.0, max_rpm=5000.0)])


def test_redfish_thermal_over_https_with_basic_auth_and_ca_file(redfish, tls):
    reader = redfish_reader(redfish.url, ca=tls[0].cert)
    try:
        assert reader.read() == SUSHY_SNAPSHOT
        assert reader.read() == SUSHY_SNAPSHOT      # chassis found once, read again
    finally:
        reader.close()


def test_redfish_tls_is_verified_unless_turned_off(redfish):
    with pytest.raises(BMCError) as err:
        redfish_reader(redfish.url).read()          # the system store does not know the test CA
    assert err.value.reason == "tls"
    assert str(err.value).startswith("GET /redfish/v1/Chassis: TLS verification failed: ")
    assert redfish_reader(redfish.url, verify_tls=False).read() == SUSHY_SNAPSHOT


def test_redfish_wrong_password_is_an_auth_error_without_the_password(redfish, tls):
    wrong = "Wr0ng-pass-77"
    with pytest.raises(BMCError) as err:
        redfish_reader(redfish.url, ca=tls[0].cert, password=wrong).read()
    assert err.value.reason == "auth"
    assert str(err.value) == "GET /redfish/v1/Chassis: HTTP 401 (wrong username or password?)"


def test_redfish_subsystems_percent_fans_absent_and_disabled_members(tmp_path):
    need_module("sushy_tools", "__name__")
    bmc = SushyStatic(tmp_path, subsystem_tree())
    try:
        reader = redfish_reader(bmc.url, auth="basic")
        # Fan3 is Absent, PSU2 Disabled, the DIMM temperature has no reading: no values for them
        assert reader.read() == Snapshot(
            temperatures=[Temperature("CPU1Temp", "CPU1", 71.5)],
            fans=[Fan("System Fan 1", "SystemBoard", rpm=8800.0, ratio=0.62),
                  Fan("System Fan 2", "SystemBoard", ratio=0.30)],
            power=[Power("System Power", 398.0), Power("PSU1 Input", 412.0)])
        tree = subsystem_tree(fan1_percent=95, psu_watts=655)
        for path in (CH + "/ThermalSubsystem/Fans/Fan1", CH + "/PowerSubsystem/PowerSupplies/PSU1/Metrics"):
            bmc.write(path, tree[path])
        snap = reader.read()
        assert snap.fans[0].ratio == 0.95 and snap.power[1].watts == 655.0
    finally:
        bmc.stop()


# -- the exporter ------------------------------------------------------------------------

def p99(seconds):
    s = sorted(seconds)
    return s[int(len(s) * 0.99) - 1]


def scrape_pairs(a, b, n):
    """n scrapes of each exporter, taking turns, over kept-alive connections: seconds each."""
    conns = [http.client.HTTPConnection(*e.address.rsplit(":", 1), timeout=5) for e in (a, b)]
    out = ([], [])
    for _ in range(n):
        for conn, times in zip(conns, out):
            t = time.perf_counter()
            conn.request("GET", "/metrics")
            r = conn.getresponse()
            r.read()
            times.append(time.perf_counter() - t)
            assert r.status == 200
    for conn in conns:
        conn.close()
    return out


def test_exporter_with_simulated_bmcs_and_one_that_never_answers(tmp_path, ipmi_sim, redfish, tls, start_exporter):
    dead = DeadBMC()
    pw = tmp_path / "ipmi.pw"
    pw.write_text(PASSWORD + "\n")
    conf = tmp_path / "bmc.yml"
    background = 2.0
    conf.write_text(yaml.safe_dump({
        "tiers": {"background": background},
        "bmc": {"timeout_seconds": 1.0, "ipmi": {"local": False, "targets": [
            {"name": "lab", "host": "127.0.0.1", "port": ipmi_sim.port, "username": USER,
             "password_file": str(pw), "workaround_flags": SIM_WORKAROUNDS},
            {"name": "gone", "host": "127.0.0.1", "port": dead.port, "username": USER, "password_file": str(pw)},
            {"name": "badpw", "host": "127.0.0.1", "port": ipmi_sim.port, "username": USER,
             "password_env": "BADPW", "workaround_flags": SIM_WORKAROUNDS},
        ]}, "redfish": {"targets": [
            {"name": "rf", "url": redfish.url, "username": USER, "password_env": "RF_PASSWORD",
             "ca_file": tls[0].cert},
            {"name": "rfbad", "url": redfish.url, "username": USER, "password_env": "BADPW",
             "ca_file": tls[0].cert},
        ]}},
    }))
    exp = start_exporter(f"--config.file={conf}", env={"RF_PASSWORD": PASSWORD, "BADPW": "Wr0ng-pass-77"})
    try:
        m = parse_exposition(exp.scrape())
        assert sample(m, "hoofhearted_bmc_up", bmc="lab") == 1
        assert sample(m, "hoofhearted_bmc_up", bmc="rf") == 1
        assert sample(m, "hoofhearted_bmc_up", bmc="gone") == 0
        assert sample(m, "hoofhearted_bmc_up", bmc="badpw") == 0
        assert sample(m, "hoofhearted_bmc_up", bmc="rfbad") == 0
        assert sample(m, "hoofhearted_bmc_info", bmc="lab", protocol="ipmi", chip="bmc-lab") == 1
        assert sample(m, "hoofhearted_bmc_info", bmc="rf", protocol="redfish", chip="bmc-rf") == 1
        assert sample(m, "hoofhearted_collector_success", collector="bmc") == 1
        # every reading of both simulators, in the families hwmon uses
        for chip, snap in (("bmc-lab", IPMI_SNAPSHOT), ("bmc-rf", SUSHY_SNAPSHOT)):
            for t in snap.temperatures:
                assert sample(m, "hoofhearted_temperature_celsius", chip=chip, sensor=t.sensor,
                              label=t.label) == t.celsius
                if t.max_celsius is not None:
                    assert sample(m, "hoofhearted_temperature_max_celsius", chip=chip, sensor=t.sensor,
                                  label=t.label) == t.max_celsius
                    assert sample(m, "hoofhearted_temperature_critical_celsius", chip=chip, sensor=t.sensor,
                                  label=t.label) == t.critical_celsius
            for f in snap.fans:
                rpm = sample(m, "hoofhearted_fan_speed_rpm", chip=chip, fan=f.fan, label=f.label)
                ratio = sample(m, "hoofhearted_fan_speed_ratio", chip=chip, fan=f.fan, label=f.label)
                assert (rpm, ratio) == (f.rpm, f.ratio), f
                assert sample(m, "hoofhearted_fan_max_rpm", chip=chip, fan=f.fan) == f.max_rpm
            for p in snap.power:
                assert sample(m, "hoofhearted_power_watts", chip=chip, sensor=p.sensor) == p.watts
        bmc_series = {k for k in m if dict(k[1]).get("chip", "").startswith("bmc")
                      and not k[0].startswith("hoofhearted_bmc_")}
        # lab: 2 temperatures + 1 max + 1 critical, 3 fans, 1 power; rf: 2 + 2 + 2, 2 fans + 2 max
        assert len(bmc_series) == 8 + 10, sorted(bmc_series)   # nothing else, no zeros
        assert not any(dict(k[1]).get("chip") in ("bmc-gone", "bmc-badpw", "bmc-rfbad") for k in m
                       if not k[0].startswith("hoofhearted_bmc_"))

        # the dead BMC costs the scrape nothing. No scrape waits for it: while its read hangs for
        # the whole second of its timeout, every scrape is far shorter. And scrape p99 is under 3 ms
        # whenever the machine is quiet enough for an exporter without BMCs, scraped in turn, to
        # manage that too (other work on a shared 2-core machine slows every process alike).
        plain = start_exporter("--no-collector.bmc")
        ours, theirs = scrape_pairs(exp, plain, 400)
        plain.stop()
        assert max(ours) < 0.5, f"slowest scrape {max(ours) * 1000:.1f} ms"
        if p99(theirs) < 0.003:
            assert p99(ours) < 0.003, f"p99 {p99(ours) * 1000:.2f} ms, without BMCs {p99(theirs) * 1000:.2f} ms"

        # a fan the simulator changes shows within two background intervals
        ipmi_sim.set_raw(1, 110)
        t0 = time.monotonic()
        while True:
            m = parse_exposition(exp.scrape())
            if sample(m, "hoofhearted_fan_speed_rpm", chip="bmc-lab", fan="Fan3A", label="") == 8250:
                break
            assert time.monotonic() - t0 < 2 * background, "new fan speed not seen in two background intervals"
            time.sleep(0.05)
        assert sample(m, "hoofhearted_bmc_up", bmc="gone") == 0
        assert sample(m, "hoofhearted_bmc_up", bmc="rf") == 1
    finally:
        exp.stop()
        dead.stop()
    log = exp.log
    assert 'bmc=gone protocol=ipmi err="timeout: ' in log
    assert 'bmc=badpw protocol=ipmi err="auth: password invalid"' in log
    assert ('bmc=rfbad protocol=redfish err="auth: GET /redfish/v1/Chassis: HTTP 401 (wrong username or '
            'password?)"') in log
    assert log.count("bmc=gone") == 1, log      # said once, not every refresh
    for secret in (PASSWORD, "Wr0ng-pass-77"):
        assert secret not in log
        assert secret not in m.__repr__()


def run_cli(*args, env=None):
    base = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "exporter", *args], cwd=ROOT, env=base,
                          capture_output=True, text=True, timeout=30)


def test_local_auto_without_device_says_why_once(tmp_path, start_exporter):
    missing = tmp_path / "ipmi0"
    conf = tmp_path / "c.yml"
    conf.write_text(yaml.safe_dump({"bmc": {"ipmi": {"device": str(missing)}}}))
    exp = start_exporter(f"--config.file={conf}")
    time.sleep(0.5)
    lines = [l for l in exp.log.splitlines() if "hoofhearted.bmc" in l]
    assert lines == [f'{lines[0].split(" level=")[0]} level=info logger=hoofhearted.bmc msg="no local BMC: '
                     f'{missing} does not exist (no BMC, or the ipmi_si and ipmi_devintf kernel modules are not '
                     f'loaded, or the device is not passed into the container)"'], exp.log
    body = exp.scrape()
    assert "hoofhearted_bmc_up" not in body               # nothing to read, nothing to report down
    assert 'hoofhearted_collector_success{collector="bmc"} 1' in body


def test_local_true_without_device_reports_the_local_bmc_down(tmp_path, start_exporter):
    missing = tmp_path / "ipmi0"
    conf = tmp_path / "c.yml"
    conf.write_text(yaml.safe_dump({"tiers": {"background": 0.5},
                                    "bmc": {"ipmi": {"local": True, "device": str(missing)}}}))
    exp = start_exporter(f"--config.file={conf}")
    m = parse_exposition(exp.scrape())
    assert sample(m, "hoofhearted_bmc_up", bmc="local") == 0
    assert sample(m, "hoofhearted_bmc_info", bmc="local", protocol="ipmi", chip="bmc") == 1
    assert "level=warning logger=hoofhearted.bmc msg=\"no local BMC:" in exp.log


@pytest.mark.parametrize("bmc, message", [
    ({"ipmi": {"targets": [{"name": "a", "host": "h", "password": "Pl4in-secret"}]}},
     "bmc.ipmi.targets[0].password: unknown key (passwords come only from password_file or password_env)"),
    ({"ipmi": {"targets": [{"host": "h"}]}}, "bmc.ipmi.targets[0].name: required"),
    ({"ipmi": {"local": "maybe"}}, "bmc.ipmi.local: expected auto, true or false, got 'maybe'"),
    ({"redfish": {"targets": [{"name": "r", "url": "https://root:Pl4in-secret@10.0.0.5"}]}},
     "bmc.redfish.targets[0].url: expected an http(s) URL without credentials, e.g. https://10.0.0.5, got "
     "'https://***@10.0.0.5'"),
    ({"ipmi": {"targets": [{"name": "a", "host": "h"}, {"name": "a", "host": "i"}]}},
     "bmc.ipmi.targets: target name 'a' used twice"),
])
def test_bad_bmc_config_is_one_line_and_exit_2(tmp_path, bmc, message):
    conf = tmp_path / "c.yml"
    conf.write_text(yaml.safe_dump({"bmc": bmc}))
    r = run_cli("check-config", str(conf))
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].endswith(message), r.stderr
    assert "Pl4in-secret" not in r.stderr


def test_unreadable_password_file_stops_the_exporter_naming_the_key(tmp_path):
    conf = tmp_path / "c.yml"
    missing = tmp_path / "nope.pw"
    conf.write_text(yaml.safe_dump({"bmc": {"ipmi": {"local": False, "targets": [
        {"name": "a", "host": "127.0.0.1", "password_file": str(missing)}]}}}))
    r = run_cli(f"--config.file={conf}", "--web.listen-address=127.0.0.1:0")
    assert r.returncode == 2
    assert r.stderr.strip() == (f"hoofhearted: error: bmc.ipmi.targets[0].password_file: cannot read {missing}: "
                                "No such file or directory")
    r = run_cli(f"--config.file={conf}", "--web.listen-address=127.0.0.1:0",
                env={"HOOFHEARTED_BMC_IPMI_TARGETS": "[{name: b, host: 127.0.0.1, password_env: NOT_SET_PW}]"})
    assert r.returncode == 2
    assert r.stderr.strip() == ("hoofhearted: error: bmc.ipmi.targets[0].password_env: "
                                "environment variable NOT_SET_PW is not set")


def test_verdict_and_why_name_the_bmc_fan(tmp_path, ipmi_sim, start_exporter):
    """The verdict reads fans and temperatures by family name: a BMC fan leads like any other."""
    need_module("sushy_tools", "__name__")
    newer = SushyStatic(tmp_path / "rf", subsystem_tree(fan1_percent=75))
    pw = tmp_path / "ipmi.pw"
    pw.write_text(PASSWORD)
    sysfs = tmp_path / "sys"            # no hwmon: every fan and temperature is the BMCs'
    sysfs.mkdir()
    conf = tmp_path / "bmc.yml"
    conf.write_text(yaml.safe_dump({
        "tiers": {"background": 1.0},
        "paths": {"sysfs": str(sysfs)},
        "bmc": {"ipmi": {"local": False, "targets": [
            {"name": "lab", "host": "127.0.0.1", "port": ipmi_sim.port, "username": USER,
             "password_file": str(pw), "workaround_flags": SIM_WORKAROUNDS}]},
                "redfish": {"targets": [{"name": "new", "url": newer.url}]}},
    }))
    try:
        exp = start_exporter(f"--config.file={conf}")
        deadline = time.monotonic() + 20
        while (v := exp.get("/api/verdict").json())["measuring"] and time.monotonic() < deadline:
            time.sleep(0.2)
        assert v["fans"][:2] == [
            {"name": "bmc-new System Fan 1", "chip": "bmc-new", "fan": "System Fan 1", "label": "SystemBoard",
             "rpm": 8800.0, "ratio": 0.75},
            {"name": "bmc-lab Fan6 Duty", "chip": "bmc-lab", "fan": "Fan6 Duty", "label": "", "rpm": None,
             "ratio": 0.62}]
        assert {f["name"] for f in v["fans"]} == {"bmc-new System Fan 1", "bmc-lab Fan6 Duty", "bmc-new System Fan 2",
                                                  "bmc-lab Fan3A", "bmc-lab Fan3B"}
        hottest = v["temperatures"][0]
        assert (hottest["name"], hottest["celsius"], hottest["max_celsius"], hottest["critical_celsius"]) == \
            ("bmc-lab CPU2 Temp", 83.0, 85.0, 95.0)
        assert v["sentence"].startswith("Fans at 75% (bmc-new System Fan 1, 8800 rpm)"), v["sentence"]
        why = subprocess.run([sys.executable, "-m", "exporter", "why", f"--url={exp.url}"], cwd=ROOT,
                             capture_output=True, text=True, timeout=30)
        assert why.returncode == 0, why.stderr
        assert "Fans at 75% (bmc-new System Fan 1, 8800 rpm)" in why.stdout, why.stdout
    finally:
        newer.stop()


def test_redfish_session_login_relogin_and_logout(tmp_path):
    need_module("sushy_tools", "__name__")
    bmc = SushyStatic(tmp_path, subsystem_tree())
    front = SessionFront(bmc.url)
    try:
        reader = redfish_reader(front.url, auth="session")
        first = reader.read()
        assert [f.fan for f in first.fans] == ["System Fan 1", "System Fan 2"] and front.logins == 1
        front.tokens.clear()                     # the BMC forgets the session (reboot, idle timeout)
        assert reader.read() == first and front.logins == 2
        reader.close()
        assert front.deletes == 1 and front.tokens == {}
        with pytest.raises(BMCError) as err:
            redfish_reader(front.url, auth="session", password="Wr0ng-pass-77").read()
        assert (err.value.reason, str(err.value)) == (
            "auth", "POST /redfish/v1/SessionService/Sessions: HTTP 401 (wrong username or password?)")
    finally:
        front.stop()
        bmc.stop()


def test_local_bmc_read_through_a_device_that_is_no_bmc(tmp_path, start_exporter):
    """In-band goes through ipmi-sensors' OpenIPMI driver; a device node that is not a BMC is a
    clear failure of the local BMC only."""
    need_tool("ipmi-sensors")
    conf = tmp_path / "c.yml"
    conf.write_text(yaml.safe_dump({"tiers": {"background": 0.5},
                                    "bmc": {"ipmi": {"local": True, "device": "/dev/null"}}}))
    exp = start_exporter(f"--config.file={conf}")
    m = parse_exposition(exp.scrape())
    assert sample(m, "hoofhearted_bmc_up", bmc="local") == 0
    assert sample(m, "hoofhearted_collector_success", collector="bmc") == 1
    line = next(l for l in exp.log.splitlines() if "bmc=local" in l)
    assert "level=warning" in line and 'err="protocol: ' in line, line


def test_readme_bmc_example_is_a_valid_config(tmp_path):
    import re
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        section = f.read().split("## Servers: fans on the BMC", 1)[1].split("\n## ", 1)[0]
    conf = tmp_path / "bmc.yml"
    conf.write_text(re.search(r"```yaml\n(.*?)```", section, re.S).group(1))
    r = run_cli("check-config", str(conf))
    assert (r.returncode, r.stdout.strip()) == (0, f"{conf}: OK"), r.stderr
    from exporter import config
    cfg = config.build(file=str(conf), environ={})
    assert [t["name"] for t in cfg["bmc"]["ipmi"]["targets"]] == ["r740-12"]
    assert cfg["bmc"]["redfish"]["targets"][0]["verify_tls"] is True


# -- what a BMC must not be able to do -----------------------------------------------------

@pytest.mark.parametrize("link", ["{catcher}/steal", "//127.0.0.1:{port}/steal", "https://127.0.0.1:{bmc}/x",
                                  "http://user@127.0.0.1:{bmc}" + CH])
def test_redfish_links_to_another_host_are_not_followed(tmp_path, link):
    """The credentials go with every request: a link off the configured service is refused."""
    need_module("sushy_tools", "__name__")
    catcher = Catcher()
    tree = subsystem_tree()
    bmc = SushyStatic(tmp_path, tree)
    try:
        target = link.format(catcher=catcher.url, port=catcher.server.server_address[1], bmc=bmc.port)
        bmc.write("/redfish/v1/Chassis", {"Members": [{"@odata.id": target}]})
        reader = redfish_reader(bmc.url, auth="basic")
        with pytest.raises(BMCError) as e:
            reader.read()
        assert e.value.reason == "protocol"
        assert str(e.value).startswith("GET: a link to another host or scheme is not followed: ")
        assert PASSWORD not in str(e.value) and catcher.seen == []
        # the same service by its full URL is followed
        bmc.write("/redfish/v1/Chassis", {"Members": [{"@odata.id": bmc.url + CH}]})
        assert reader.read().fans[0].ratio == 0.62
    finally:
        bmc.stop()
        catcher.stop()


def test_implausible_bmc_readings_are_dropped_and_counted(tmp_path):
    """NaN, infinities and numbers no sensor reads never reach /metrics, the verdict or JSON."""
    need_module("sushy_tools", "__name__")
    from exporter.collectors.bmc import BMCCollector, Target
    from exporter import render
    thermal = CH + "/Thermal"
    tree = {
        "/redfish/v1": {"Id": "RootService", "Chassis": {"@odata.id": "/redfish/v1/Chassis"}},
        "/redfish/v1/Chassis": {"Members": [{"@odata.id": CH}]},
        CH: {"Id": "1U", "Thermal": {"@odata.id": thermal}},
        thermal: {
            "Temperatures": [
                {"Name": "CPU1", "ReadingCelsius": 61.0, "UpperThresholdCritical": float("inf")},
                {"Name": "CPU2", "ReadingCelsius": float("nan")},
                {"Name": "Inlet", "ReadingCelsius": 1e6},
                {"Name": "Huge", "ReadingCelsius": 10 ** 400}],
            "Fans": [
                {"Name": "Fan1", "Reading": 5400, "MaxReadingRange": -1},
                {"Name": "FanNeg", "Reading": -500},
                {"Name": "FanPct", "Reading": 250, "ReadingUnits": "Percent"},
                {"Name": "FanOk", "Reading": 40, "ReadingUnits": "Percent"}]},
    }
    bmc = SushyStatic(tmp_path, tree)         # json writes NaN, Infinity and the 401-digit integer as is
    try:
        collector = BMCCollector([Target("rf", "redfish", "bmc-rf", redfish_reader(bmc.url, auth="basic"), 5.0)])
        m = parse_exposition(render.text(collector.update(0.0)).decode())
        assert sample(m, "hoofhearted_bmc_up", bmc="rf") == 1
        temps = {dict(k)["sensor"]: v for (n, k), v in m.items() if n == "hoofhearted_temperature_celsius"}
        assert temps == {"CPU1": 61.0}
        assert not [k for (n, k) in m if n == "hoofhearted_temperature_critical_celsius"]
        assert {dict(k)["fan"]: v for (n, k), v in m.items() if n == "hoofhearted_fan_speed_rpm"} == {"Fan1": 5400}
        assert {dict(k)["fan"]: v for (n, k), v in m.items() if n == "hoofhearted_fan_speed_ratio"} == {"FanOk": 0.4}
        assert not [k for (n, k) in m if n == "hoofhearted_fan_max_rpm"]
        # CPU1's critical mark, CPU2, Inlet, Huge, Fan1's maximum, FanNeg, FanPct
        assert sample(m, "hoofhearted_invalid_readings_total", collector="bmc") == 7
    finally:
        bmc.stop()


@pytest.mark.parametrize("kind", ["device", "fifo", "large", "binary"])
def test_a_password_file_must_be_a_small_regular_text_file(tmp_path, kind):
    from exporter import config as cfgmod
    from exporter.collectors.bmc import _password
    path = tmp_path / "pw"
    if kind == "device":
        path = "/dev/zero"
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "large":
        path.write_text("x" * 5000)
    else:
        path.write_bytes(b"\xff\xfe" + b"s3cret")
    why = {"device": "not a regular file", "fifo": "not a regular file", "large": "larger than 4096 bytes",
           "binary": "not UTF-8 text"}[kind]
    with pytest.raises(cfgmod.ConfigError) as e:
        _password({"password_file": str(path)}, "bmc.ipmi.targets[0]")
    assert str(e.value) == f"bmc.ipmi.targets[0].password_file: cannot read {path}: {why}"
    ok = tmp_path / "ok"
    ok.write_text("s3cret\n")
    assert _password({"password_file": str(ok)}, "k") == "s3cret"


def test_redfish_chassis_added_later_is_found(tmp_path, monkeypatch):
    need_module("sushy_tools", "__name__")
    from exporter.sources import bmc_redfish
    monkeypatch.setattr(bmc_redfish, "RELIST", 3)
    tree = subsystem_tree()
    bmc = SushyStatic(tmp_path, tree)
    try:
        reader = redfish_reader(bmc.url, auth="basic")
        assert [f.fan for f in reader.read().fans] == ["System Fan 1", "System Fan 2"]
        shelf = "/redfish/v1/Chassis/Shelf"
        bmc.write(shelf, {"Id": "Shelf", "Thermal": {"@odata.id": shelf + "/Thermal"}})
        bmc.write(shelf + "/Thermal", {"Fans": [{"Name": "Shelf Fan", "Reading": 3000}]})
        bmc.write("/redfish/v1/Chassis", {"Members": [{"@odata.id": CH}, {"@odata.id": shelf}]})
        assert len(reader.read().fans) == 2                     # the second read: the list it had
        assert [f.fan for f in reader.read().fans] == ["1U/System Fan 1", "1U/System Fan 2", "Shelf/Shelf Fan"]
    finally:
        bmc.stop()
