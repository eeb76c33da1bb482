"""`hoofhearted why`: against a running exporter with a burner, and its wording on known expositions."""
import json
import os
import re
import subprocess
import sys
import time

import pytest

from burner import Burner
from conftest import ROOT, SYSFS, parse_exposition
from exporter import why


def run_why(*args, timeout=30):
    return subprocess.run([sys.executable, "-m", "exporter", "why", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture
def burner():
    b = Burner()
    yield b
    b.close()


def wait_for_pid(exp, pid, timeout=5.0):
    """Until the burner is among the top processes and the CPU collector has a rate."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        parsed = parse_exposition(exp.scrape())
        if ("hoofhearted_cpu_usage_ratio", frozenset()) in parsed and any(
                name == "hoofhearted_process_cpu_usage_cores" and dict(labels)["pid"] == str(pid) and v > 0.2
                for (name, labels), v in parsed.items()):
            return
        time.sleep(0.1)
    raise AssertionError(f"pid {pid} not in the top processes")


def test_why_names_the_burner(start_exporter, burner):
    # sensors from the fixture tree: its hottest fan runs at 1998 of 5700 rpm (35%)
    exp = start_exporter(f"--path.sysfs={SYSFS}")
    wait_for_pid(exp, burner.pid)
    out = run_why("--url", exp.url)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert lines[0].startswith("Hottest: platform_coretemp_0 Physical id 0 55 °C (max 84 °C)") or \
        "55 °C (max 84 °C)" in lines[0]
    assert lines[1].startswith("Fans: platform_applesmc_768 fan2 (Right side) 1998 rpm, 35%")
    assert re.match(r"Load: CPU \d+% busy of \d+ cores; no GPU seen$", lines[2])
    owner = f", {why.owner_text(burner.owner)}" if burner.owner else ""
    table = "\n".join(lines)
    assert re.search(rf"^  {burner.name}\s+pid {burner.pid}\s+{burner.user}\s", table, re.M)
    verdict = lines[-1]
    expected = rf"^Fans at 35% because {burner.name} \(pid {burner.pid}, {burner.user}{re.escape(owner)}\) " \
               rf"uses (\d\.\d) cores\.$"
    m = re.match(expected, verdict)
    if m is None:    # a busy shared machine can starve the burner below half a core
        assert verdict.startswith("Fans at 35%"), verdict
    else:
        assert float(m.group(1)) > 0.2
    assert all(s not in out.stdout for s in burner.secrets)


def test_why_json(start_exporter, burner):
    exp = start_exporter(f"--path.sysfs={SYSFS}")
    wait_for_pid(exp, burner.pid)
    out = run_why("--url", exp.url + "/metrics", "--json")
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["source"] == exp.url + "/metrics"
    top = {p["pid"]: p for p in report["culprits"]}
    assert burner.pid in top
    p = top[burner.pid]
    assert (p["name"], p["user"]) == (burner.name, burner.user)
    assert p["cores"] > 0.05 and p["memory_bytes"] > 1_000_000
    assert report["fans"][0] == {"fan": "platform_applesmc_768 fan2", "label": "Right side", "rpm": 1998.0,
                                 "ratio": pytest.approx(1998 / 5700)}
    assert report["temperatures"][0]["celsius"] >= 55
    assert report["gpus"] == []
    assert report["verdict"].startswith("Fans at 35%")


def test_why_unreachable_url_is_one_line_and_exit_2():
    out = run_why("--url", "http://127.0.0.1:1", "--timeout", "2")
    assert out.returncode == 2
    assert out.stdout == ""
    assert out.stderr.strip() == "hoofhearted why: error: cannot read http://127.0.0.1:1/metrics: Connection refused"


def test_why_bad_flag_exit_2():
    out = run_why("--frobnicate")
    assert out.returncode == 2
    assert out.stderr.count("\n") == 1 and "unrecognized arguments: --frobnicate" in out.stderr


def test_why_collects_by_itself_without_an_exporter(burner):
    with_default = subprocess.run([sys.executable, "-c", "import socket; s = socket.socket(); "
                                   "print(s.connect_ex(('127.0.0.1', 10101)))"], capture_output=True, text=True)
    if with_default.stdout.strip() == "0":
        pytest.skip("an exporter runs on the default address; the fallback cannot be exercised")
    time.sleep(0.5)
    out = run_why("--json", f"--path.sysfs={SYSFS}")
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["source"] == "local collection"
    assert burner.pid in {p["pid"] for p in report["culprits"]}
    assert report["fans"][0]["rpm"] == 1998.0
    assert report["cpu"]["cores"] == os.cpu_count()


# -- wording, on expositions written here (there is no GPU on the test machines) --------------

GPU_BOX = """
hoofhearted_temperature_celsius{chip="platform_coretemp_0",sensor="temp1",label="Package id 0"} 71
hoofhearted_temperature_max_celsius{chip="platform_coretemp_0",sensor="temp1",label="Package id 0"} 100
hoofhearted_fan_speed_rpm{chip="nct6775",fan="fan2",label="CPU fan"} 1840
hoofhearted_fan_pwm_ratio{chip="nct6775",fan="fan2"} 0.78
hoofhearted_cpu_usage_ratio 0.52
hoofhearted_cpu_cores 8
hoofhearted_gpu_utilization_ratio{gpu="0",uuid="GPU-1"} 0.97
hoofhearted_gpu_temperature_celsius{gpu="0",uuid="GPU-1"} 83
hoofhearted_gpu_fan_speed_ratio{gpu="0",uuid="GPU-1",fan="0"} 0.65
hoofhearted_process_cpu_usage_cores{pid="4242",name="python3",user="alice",owner="container/3f2a1b2c3d4e"} 3.9
hoofhearted_process_resident_memory_bytes{pid="4242",name="python3",user="alice",owner="container/3f2a1b2c3d4e"} 2.5e9
hoofhearted_process_cpu_usage_cores{pid="77",name="sshd",user="root",owner="ssh.service"} 0.01
hoofhearted_process_resident_memory_bytes{pid="77",name="sshd",user="root",owner="ssh.service"} 8e6
hoofhearted_gpu_process_utilization_ratio{gpu="0",uuid="GPU-1",pid="4242",name="python3",user="alice",owner="container/3f2a1b2c3d4e",engine="sm"} 0.95
hoofhearted_gpu_process_utilization_ratio{gpu="0",uuid="GPU-1",pid="4242",name="python3",user="alice",owner="container/3f2a1b2c3d4e",engine="dec"} 0.1
hoofhearted_gpu_process_memory_bytes{gpu="0",uuid="GPU-1",pid="4242",name="python3",user="alice",owner="container/3f2a1b2c3d4e"} 8e9
"""


def test_verdict_with_fans_cpu_and_gpu():
    r = why.analyse(GPU_BOX)
    assert r["verdict"] == ("Fans at 78% because python3 (pid 4242, alice, container 3f2a1b2c3d4e) "
                            "uses 3.9 cores and 95% of GPU0.")
    assert [t["celsius"] for t in r["temperatures"]] == [83, 71]
    assert r["culprits"][0]["gpu"] == {"GPU0": 0.95} and r["culprits"][0]["gpu_memory_bytes"] == 8e9
    text = "\n".join(why.lines(r))
    assert "Load: CPU 52% busy of 8 cores; GPU0 97% busy, 83 °C" in text
    assert "Fans: nct6775 fan2 (CPU fan) 1840 rpm, 78%; GPU0 fan 0 65%" in text


def test_verdict_gpu_only_culprit():
    text = GPU_BOX.replace('owner="container/3f2a1b2c3d4e"} 3.9', 'owner="container/3f2a1b2c3d4e"} 0.02')
    assert why.analyse(text)["verdict"] == ("Fans at 78% because python3 (pid 4242, alice, "
                                            "container 3f2a1b2c3d4e) uses 95% of GPU0.")


def test_verdict_without_fans_or_gpus():
    text = "\n".join(line for line in GPU_BOX.splitlines() if "fan" not in line and "gpu" not in line)
    r = why.analyse(text)
    assert r["verdict"] == ("No fan readings; the load comes from python3 (pid 4242, alice, "
                            "container 3f2a1b2c3d4e), which uses 3.9 cores (CPU 52% busy).")
    assert "Fans: no fan readings" in why.lines(r)
    assert "Load: CPU 52% busy of 8 cores; no GPU seen" in why.lines(r)


def test_verdict_when_idle_and_when_no_process_data():
    idle = GPU_BOX.replace("} 3.9", "} 0.04").replace("} 0.95", "} 0.01").replace("} 0.97", "} 0.02")
    idle = idle.replace('engine="dec"} 0.1', 'engine="dec"} 0.005')
    idle = idle.replace("0.52", "0.03")
    assert why.analyse(idle)["verdict"] == (
        "Fans at 78% and the machine is mostly idle (CPU 3% busy, GPU0 2% busy); busiest is python3 "
        "(pid 4242, alice, container 3f2a1b2c3d4e), which uses 1% of GPU0.")
    bare = "\n".join(line for line in GPU_BOX.splitlines() if "process" not in line)
    assert why.analyse(bare)["verdict"] == ("Fans at 78% (CPU 52% busy, GPU0 97% busy); no per-process data "
                                            "(is the process collector enabled?).")
