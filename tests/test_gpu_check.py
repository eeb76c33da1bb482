"""`make gpu-check`'s comparison (bench/gpu_check.py) on the nvidia-smi captures: the exporter on the
fake NVML built from a capture against that capture's own nvidia-smi output, and what it reports
when the two disagree."""
import sys
import tempfile

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from conftest import ROOT

if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from bench import gpu_check  # noqa: E402
from exporter.collectors.gpu import GPUProcessCollector, NvidiaCollector  # noqa: E402
from exporter.sources import processes  # noqa: E402
from exporter.sources.nvidia import NvidiaSource  # noqa: E402
from tests.fakenvml import scenarios  # noqa: E402
from tests.fakenvml.capture import Capture  # noqa: E402


def exposition(capture):
    cap = Capture(capture)
    nv = scenarios.assemble([(capture, None)], symbols_from=capture if cap.symbols() else None,
                            clock=lambda: 1_800_000_000.0, pids={})
    src = NvidiaSource(nv)
    procfs = tempfile.mkdtemp()
    nvc = NvidiaCollector(src)
    gp = GPUProcessCollector(src, procfs=procfs, sysfs=procfs, scanner=processes.Scanner(procfs))
    reg = CollectorRegistry()
    reg.register(nvc)
    reg.register(gp)
    nvc.refresh(1.0)
    gp.refresh(1.0)
    return generate_latest(reg).decode()


def smi(capture):
    cap = Capture(capture)
    return (gpu_check.parse_csv(cap.section("load :: query-gpu")),
            gpu_check.parse_csv(cap.section("load :: query-compute-apps")))


def statuses(results):
    out = {}
    for r in results:
        out[r.status] = out.get(r.status, 0) + 1
    return out


@pytest.mark.parametrize("capture,expected", [
    (scenarios.H100, {"agree": 39, "n/a": 4}),
    (scenarios.H100_MIG, {"agree": 31, "n/a": 12}),
    (scenarios.RTX2080, {"agree": 28, "n/a": 14}),
    (scenarios.RTX4080, {"agree": 29, "n/a": 14}),
    (scenarios.RTX2080_WINDOWS, {"agree": 26, "n/a": 35}),
])
def test_every_shared_reading_agrees_with_nvidia_smi(capture, expected):
    gpus, apps = smi(capture)
    results = gpu_check.compare(gpus, apps, gpu_check.parse_metrics(exposition(capture)))
    assert statuses(results) == expected
    assert not gpu_check.failed(results)


def test_h100_readings_compared_in_nvidia_smi_units():
    gpus, apps = smi(scenarios.H100)
    results = {r.reading: r for r in gpu_check.compare(gpus, apps, gpu_check.parse_metrics(exposition(scenarios.H100)))}
    assert (results["memory.used"].theirs, results["memory.used"].ours) == (19818, 19818)
    assert (results["clocks.current.memory"].theirs, results["clocks.current.memory"].ours) == (2619, 2619)
    assert (results["temperature.gpu.tlimit"].theirs, results["temperature.gpu.tlimit"].ours) == (26, 26)
    assert (results["process 11345 (./gpu_burn) memory"].theirs,
            results["process 11345 (./gpu_burn) memory"].ours) == (15690, 15690)
    assert results["fan.speed"].status == "n/a"                # [N/A] and no series


def test_a_wrong_unit_a_wrong_value_and_a_missing_reading_are_reported():
    gpus, apps = smi(scenarios.RTX2080)
    text = exposition(scenarios.RTX2080)
    lines = []
    for line in text.splitlines():
        if line.startswith('hoofhearted_gpu_clock_event_seconds_total{') and 'reason="sw_power_cap"' in line:
            name, value = line.rsplit(" ", 1)
            line = f"{name} {float(value) / 1000}"            # microseconds taken for nanoseconds
        elif line.startswith("hoofhearted_gpu_temperature_celsius{"):
            name, value = line.rsplit(" ", 1)
            line = f"{name} {float(value) + 10}"
        elif line.startswith("hoofhearted_gpu_power_limit_watts{"):
            continue
        lines.append(line)
    results = gpu_check.compare(gpus, apps, gpu_check.parse_metrics("\n".join(lines)))
    bad = {r.reading: r.status for r in results if r.status not in ("agree", "n/a")}
    assert bad == {"clocks_event_reasons_counters.sw_power_cap": "differ", "temperature.gpu": "differ",
                   "enforced.power.limit": "missing"}
    assert gpu_check.failed(results)
    body = gpu_check.report(results, "test")
    assert "Summary: 25 agree, 2 differ, 1 missing, 14 n/a" in body
    assert "| 0 GPU-00000000-0000-0000-0000-000000000000 | temperature.gpu | 38 | 48 | differ |" in body


def test_a_process_the_exporter_does_not_show_is_missing_and_an_extra_reading_is_not_a_failure():
    gpus, apps = smi(scenarios.H100)
    text = "\n".join(l for l in exposition(scenarios.H100).splitlines()
                     if not (l.startswith("hoofhearted_gpu_process_memory_bytes{") and 'pid="11327"' in l))
    text += '\nhoofhearted_gpu_fan_speed_ratio{gpu="0",uuid="GPU-00000000-0000-0000-0000-000000000000",fan="0"} 0.3\n'
    results = gpu_check.compare(gpus, apps, gpu_check.parse_metrics(text))
    bad = {r.reading: (r.status, r.note) for r in results if r.status not in ("agree", "n/a")}
    assert bad == {"process 11327 (/root/tools/memhog) memory": ("missing", "not among the exporter's top processes?"),
                   "fan.speed": ("extra", "")}


def test_smi_values_and_csv():
    assert [gpu_check.smi_number(v) for v in ("19818 MiB", "631.95 W", "P8", "Enabled", "No", "[N/A]",
                                              "[Not Supported]", "N/A", "15820333506 us", "-8")] == \
        [19818, 631.95, 8, 1, 0, None, None, None, 15820333506, -8]
    rows = gpu_check.parse_csv("uuid, memory.used [MiB], fan.speed [%]\nGPU-1, 10 MiB, [N/A]\n")
    assert rows == [{"uuid": "GPU-1", "memory.used": "10 MiB", "fan.speed": "[N/A]"}]


def test_no_nvidia_smi_is_one_line_and_exit_2(capsys):
    assert gpu_check.main(["--nvidia-smi", "/nonexistent/nvidia-smi"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["gpu-check: /nonexistent/nvidia-smi not found: nothing to compare on this machine"]


FAKE_SMI = r'''#!{python}
"""nvidia-smi as on the captured H100: --help-query-gpu and --query-gpu/--query-compute-apps in CSV."""
import sys
sys.path.insert(0, {root!r})
from tests.fakenvml.capture import Capture
from bench.gpu_check import parse_csv
cap = Capture({capture!r})
arg = sys.argv[1]
if arg == "--help-query-gpu":
    print(cap.section("capabilities :: help-query-gpu"))
elif arg.startswith("--query-gpu=") or arg.startswith("--query-compute-apps="):
    what, fields = arg[8:].split("=", 1)
    section = "load :: query-gpu" if what == "gpu" else "load :: query-compute-apps"
    rows = parse_csv(cap.section(section))
    fields = fields.split(",")
    if "noheader" not in sys.argv[-1]:
        print(", ".join(fields))
    for row in rows:
        print(", ".join(row.get(f, "[N/A]") for f in fields))
'''


def test_gpu_check_end_to_end_with_the_exporter_on_the_fake_nvml(tmp_path, monkeypatch, capsys):
    smi_path = tmp_path / "nvidia-smi"
    smi_path.write_text(FAKE_SMI.format(python=sys.executable, root=ROOT, capture=scenarios.H100))
    smi_path.chmod(0o755)
    monkeypatch.setenv("HOOFHEARTED_GPU_NVML_MODULE", "tests.fakenvml.h100")
    out = tmp_path / "report.md"
    rc = gpu_check.main(["--nvidia-smi", str(smi_path), "--out", str(out), "--settle", "1"])
    body = out.read_text()
    assert rc == 0, body
    assert "nvidia-smi driver 590.48.01, 1 GPU(s)." in body
    assert "Summary: 39 agree, 4 n/a" in body
