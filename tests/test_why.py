"""`hoofhearted why`: against a running exporter with a burner, and its wording on known expositions."""
import json
import os
import re
import subprocess
import sys
import time

import pytest

from burner import Burner
from conftest import ROOT, SYSFS
from exporter import verdict, why


def run_why(*args, timeout=30):
    return subprocess.run([sys.executable, "-m", "exporter", "why", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture
def burner():
    b = Burner()
    yield b
    b.close()


def wait_for_pid(exp, pid, timeout=15.0):
    """Until the verdict names the burner as rank 1 (and so has rates)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = exp.get("/api/verdict")
        if r.status_code == 200 and r.json()["culprits"] and r.json()["culprits"][0]["pid"] == pid:
            return
        time.sleep(0.1)
    raise AssertionError(f"pid {pid} not the verdict's rank 1: {exp.get('/api/verdict').text[:2000]}")


def test_why_names_the_burner(start_exporter, burner):
    # sensors from the fixture tree: its hottest fan runs at 1998 of 5700 rpm (35%)
    exp = start_exporter(f"--path.sysfs={SYSFS}")
    wait_for_pid(exp, burner.pid)
    out = run_why("--url", exp.url)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    # of the two sensors at 55 °C the one closer to its max (84 °C) comes first
    assert lines[0].startswith("Hottest: platform_coretemp_0 Physical id 0 55 °C (max 84 °C); "), lines[0]
    assert lines[1].startswith("Fans: platform_applesmc_768 fan2 (Right side) 1998 rpm, 35%")
    assert re.match(r"Load: CPU \d+% busy of \d+ cores; memory \d+% used of [\d.]+ GiB; no GPU seen$", lines[2])
    owner = f", {verdict.owner_text(burner.owner)}" if burner.owner else ""
    table = "\n".join(lines)
    assert re.search(rf"^  {burner.name}\s+pid {burner.pid}\s+{burner.user}\s", table, re.M)
    assert lines[-1] == f"(verdict of the exporter at {exp.url}/api/verdict)"
    expected = rf"^Fans at 35% \(platform_applesmc_768 fan2, 1998 rpm\) because {burner.name} " \
               rf"\(pid {burner.pid}, {burner.user}{re.escape(owner)}\) uses (\d\.\d\d) cores\.$"
    assert re.search(expected, table, re.M), table
    assert all(s not in out.stdout for s in burner.secrets)


def test_why_json(start_exporter, burner):
    exp = start_exporter(f"--path.sysfs={SYSFS}")
    wait_for_pid(exp, burner.pid)
    out = run_why("--url", exp.url + "/metrics", "--json")
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["source"] == f"verdict of the exporter at {exp.url}/api/verdict"
    top = {p["pid"]: p for p in report["culprits"]}
    assert burner.pid in top
    p = top[burner.pid]
    assert (p["name"], p["user"]) == (burner.name, burner.user)
    assert p["cores"] > 0.05 and p["memory_bytes"] > 1_000_000
    assert report["fans"][0] == {"name": "platform_applesmc_768 fan2", "chip": "platform_applesmc_768",
                                 "fan": "fan2", "label": "Right side", "rpm": 1998.0,
                                 "ratio": pytest.approx(1998 / 5700)}
    assert report["temperatures"][0] == {
        "name": "platform_coretemp_0 Physical id 0", "chip": "platform_coretemp_0", "sensor": "temp1",
        "label": "Physical id 0", "celsius": 55.0, "max_celsius": 84.0, "critical_celsius": 100.0, "kind": "cpu"}
    assert report["gpus"] == []
    assert report["sentence"].startswith("Fans at 35% (platform_applesmc_768 fan2, 1998 rpm)")


def test_why_unreachable_url_is_one_line_and_exit_2():
    out = run_why("--url", "http://127.0.0.1:1", "--timeout", "2")
    assert out.returncode == 2
    assert out.stdout == ""
    assert out.stderr.strip() == "hoofhearted why: error: cannot read http://127.0.0.1:1/api/verdict: Connection refused"


def test_why_bad_flag_exit_2():
    out = run_why("--frobnicate")
    assert out.returncode == 2
    assert out.stderr.count("\n") == 1 and "unrecognized arguments: --frobnicate" in out.stderr


