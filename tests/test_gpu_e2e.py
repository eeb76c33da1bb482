"""The real exporter over HTTP with fake NVML scenarios: values, a lost GPU, no driver, bad module."""
import os
import pwd
import shutil
import subprocess
import sys
import time

import pytest
import yaml

from conftest import PROCFS_SYSFS, ROOT, parse_exposition
from exporter.sources.processes import owner_from_cgroup

MIB = 1024 * 1024
H100 = {"gpu": "0", "uuid": "GPU-00000000-0000-0000-0000-000000000000"}
H200 = {"gpu": "1", "uuid": "GPU-00000000-0000-0000-0000-000000000001"}
NOWHERE = 4_300_000          # above the kernel's largest pid_max: never a live process


def sample(parsed, metric, **labels):
    return parsed.get((metric, frozenset(labels.items())))


def config(tmp_path, module, **extra):
    cfg = {"gpu": {"nvml_module": module}}
    cfg.update(extra)
    path = tmp_path / "hoofhearted.yml"
    path.write_text(yaml.safe_dump(cfg))
    return f"--config.file={path}"


def wait_for(exp, predicate, timeout=15.0):
    deadline = time.monotonic() + timeout
    while True:
        parsed = parse_exposition(exp.scrape())
        if predicate(parsed):
            return parsed
        if time.monotonic() > deadline:
            raise AssertionError("condition not met; log:\n" + exp.log)
        time.sleep(0.2)


@pytest.fixture
def workers(tmp_path):
    """Live processes named like the captured ones (copies of sleep), stopped at teardown."""
    started = []

    def start(name):
        exe = tmp_path / name
        if not exe.exists():
            shutil.copy(shutil.which("sleep"), exe)
        p = subprocess.Popen([str(exe), "300"])
        started.append(p)
        return p.pid

    yield start
    for p in started:
        p.kill()
        p.wait()


def test_datacenter_scenario_over_http(tmp_path, start_exporter, workers, require_tool):
    burn, hog1, hog2 = workers("gpu_burn"), workers("memhog"), workers("memhog")
    pids = {11345: burn, 11327: hog1, 11328: hog2, 10291: NOWHERE + 1, 10293: NOWHERE + 2, 10309: NOWHERE + 3}
    sysfs = tmp_path / "sys"
    shutil.copytree(PROCFS_SYSFS, sysfs, symlinks=True)        # an amdgpu card beside the NVIDIA ones
    exp = start_exporter(config(tmp_path, "tests.fakenvml.datacenter", paths={"sysfs": str(sysfs)}),
                         env={"FAKENVML_PIDS": ",".join(f"{a}={b}" for a, b in pids.items())})
    user = pwd.getpwuid(os.getuid()).pw_name
    with open("/proc/self/cgroup") as f:
        owner = owner_from_cgroup(f.read())
    burn_labels = dict(H100, pid=str(burn), name="gpu_burn", user=user, owner=owner)
    m = wait_for(exp, lambda m: sample(m, "hoofhearted_gpu_process_utilization_ratio", engine="sm",
                                       **burn_labels) is not None)
    assert sample(m, "hoofhearted_gpu_up", **H100) == 1 and sample(m, "hoofhearted_gpu_up", **H200) == 1
    assert sample(m, "hoofhearted_gpu_memory_used_bytes", **H100) == 19818 * MIB
    assert sample(m, "hoofhearted_gpu_memory_total_bytes", **H200) == 143771 * MIB
    assert sample(m, "hoofhearted_gpu_power_watts", **H100) == 631.95
    assert sample(m, "hoofhearted_gpu_clock_hertz", clock="sm", **H100) == 1.98e9
    assert sample(m, "hoofhearted_gpu_temperature_celsius", **H200) == 52
    # the driver's PCIe byte counters (from 2 TiB, growing at the captured 6346 KB/s): no throughput window
    assert sample(m, "hoofhearted_gpu_pcie_receive_bytes_total", **H100) >= 2 << 40
    assert not any(name == "hoofhearted_gpu_pcie_receive_bytes_per_second" for name, _ in m)
    assert not any(name == "hoofhearted_gpu_fan_speed_ratio" for name, _ in m)          # [N/A]: no sample
    # Hopper: T.Limit 26 C above 59 C, slowdown 2 C past it
    assert sample(m, "hoofhearted_gpu_temperature_slowdown_celsius", **H100) == 87
    # per process: the right pid, name, user and owner
    assert sample(m, "hoofhearted_gpu_process_memory_bytes", **burn_labels) == 15690 * MIB
    assert sample(m, "hoofhearted_gpu_process_utilization_ratio", engine="sm", **burn_labels) == 0.99
    hog = dict(H100, pid=str(hog1), name="memhog", user=user, owner=owner)
    assert sample(m, "hoofhearted_gpu_process_memory_bytes", **hog) == 2566 * MIB
    assert sample(m, "hoofhearted_gpu_process_utilization_ratio", engine="sm", **hog) == 0.0
    far = dict(H200, pid=str(NOWHERE + 3), name="gpu_burn", user="", owner="")   # not in our /proc
    assert sample(m, "hoofhearted_gpu_process_memory_bytes", **far) == 28234 * MIB
    # the AMD card of the same box, written once with the NVIDIA GPUs
    amd = {"gpu": "0", "uuid": "0123456789abcdef"}
    m = wait_for(exp, lambda m: sample(m, "hoofhearted_gpu_up", **amd) == 1)
    assert sample(m, "hoofhearted_gpu_memory_used_bytes", **amd) == 1490378752
    body = exp.scrape()
    types = [line for line in body.splitlines() if line.startswith("# TYPE ")]
    assert len(types) == len(set(types))
    promtool = require_tool("promtool")
    r = subprocess.run([promtool, "check", "metrics"], input=body, capture_output=True, text=True)
    assert r.returncode == 0 and not r.stdout and not r.stderr, r.stdout + r.stderr


def test_lost_gpu_goes_down_host_keeps_serving_and_it_comes_back(tmp_path, start_exporter):
    control = tmp_path / "lost"
    control.write_text("")
    exp = start_exporter(config(tmp_path, "tests.fakenvml.lost"), env={"FAKENVML_CONTROL": str(control)})
    wait_for(exp, lambda m: sample(m, "hoofhearted_gpu_up", **H200) == 1)
    control.write_text("1\n")
    m = wait_for(exp, lambda m: sample(m, "hoofhearted_gpu_up", **H200) == 0)
    assert sample(m, "hoofhearted_gpu_temperature_celsius", **H200) is None
    assert sample(m, "hoofhearted_gpu_up", **H100) == 1
    assert sample(m, "hoofhearted_gpu_temperature_celsius", **H100) == 59
    cpu = sample(m, "hoofhearted_collector_last_success_timestamp_seconds", collector="cpu")
    m = wait_for(exp, lambda m: sample(m, "hoofhearted_collector_last_success_timestamp_seconds",
                                       collector="cpu") > cpu)
    assert sample(m, "hoofhearted_gpu_up", **H200) == 0
    assert sample(m, "hoofhearted_collector_success", collector="nvidia") == 1
    assert sample(m, "hoofhearted_cpu_cores") > 0
    control.write_text("")
    m = wait_for(exp, lambda m: sample(m, "hoofhearted_gpu_up", **H200) == 1, timeout=20)
    assert sample(m, "hoofhearted_gpu_temperature_celsius", **H200) == 52
    assert exp.log.count("msg=\"GPU lost") == 1 and exp.log.count("msg=\"GPU is back\" gpu=1 ") == 1, exp.log


def test_no_driver_serves_host_metrics_with_one_log_line(tmp_path, start_exporter):
    exp = start_exporter(config(tmp_path, "tests.fakenvml.nodriver"))
    for _ in range(8):
        m = parse_exposition(exp.scrape())
        time.sleep(0.3)
    assert sample(m, "hoofhearted_gpu_devices", vendor="nvidia") == 0
    assert sample(m, "hoofhearted_collector_success", collector="nvidia") == 1
    # no GPU: no per-process GPU collector looking through every process's file descriptors
    assert sample(m, "hoofhearted_collector_success", collector="gpu_process") is None
    assert sample(m, "hoofhearted_cpu_cores") > 0
    assert exp.log.count("no NVIDIA driver") == 1
    assert "level=error" not in exp.log and "level=warning logger=hoofhearted.nvidia" not in exp.log


def test_unimportable_nvml_module_is_one_line_and_exit_2(tmp_path):
    r = subprocess.run([sys.executable, "-m", "exporter", "--web.listen-address=127.0.0.1:0",
                        config(tmp_path, "tests.fakenvml.no_such")], cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        "hoofhearted: error: gpu.nvml_module: cannot import 'tests.fakenvml.no_such': "
        "No module named 'tests.fakenvml.no_such'"]
