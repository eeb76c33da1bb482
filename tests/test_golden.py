"""Golden exposition: every collector run on fixture trees with a fixed clock, compared byte for byte.

Regenerate after an intended change with:  UPDATE_GOLDEN=1 .venv/bin/pytest tests/test_golden.py
and review the diff like code.
"""
import os
import re
import shutil
import subprocess

from conftest import FIXTURES, PROCFS_FIXTURE, SYSFS, parse_exposition
from exporter import render
from exporter.collectors.host import CPUCollector, DiskCollector, MemoryCollector, NetworkCollector
from exporter.collectors.sensors import RAPLCollector, SensorsCollector
from exporter.config import defaults

GOLDEN = os.path.join(os.path.dirname(__file__), "golden", "host.prom")


def bump_stat(path, jiffies):
    """Advance every cpu line by `jiffies` in each of user and idle: 50 % busy."""
    out = []
    for line in open(path):
        if line.startswith("cpu"):
            parts = line.split()
            parts[1] = str(int(parts[1]) + jiffies)
            parts[4] = str(int(parts[4]) + jiffies)
            line = " ".join(parts) + "\n"
        out.append(line)
    with open(path, "w") as f:
        f.writelines(out)


def host_families(tmp_path):
    procfs = tmp_path / "proc"
    shutil.copytree(PROCFS_FIXTURE, procfs, symlinks=True)
    cfg = defaults()
    collectors = [
        CPUCollector(str(procfs), SYSFS),
        MemoryCollector(str(procfs)),
        DiskCollector(str(procfs), cfg["disk"]["exclude"]),
        NetworkCollector(str(procfs), cfg["network"]["exclude"]),
        SensorsCollector(SYSFS),
        RAPLCollector(SYSFS),
    ]
    for c in collectors:
        c.refresh(100.0)
    bump_stat(procfs / "stat", 100)
    families = []
    for c in collectors:
        families += c.refresh(101.0)
    return families


def check_golden(path, body):
    if os.environ.get("UPDATE_GOLDEN"):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write(body)
    with open(path) as f:
        assert body == f.read(), f"{path} differs; rerun with UPDATE_GOLDEN=1 and review the diff"


def test_host_golden(tmp_path):
    body = render.text(host_families(tmp_path)).decode()
    parse_exposition(body)
    assert "hoofhearted_cpu_usage_ratio 0.5\n" in body
    check_golden(GOLDEN, body)


def test_golden_passes_promtool(tmp_path, require_tool):
    promtool = require_tool("promtool")
    body = open(GOLDEN).read()
    r = subprocess.run([promtool, "check", "metrics"], input=body, capture_output=True, text=True)
    assert r.returncode == 0 and not r.stdout and not r.stderr, r.stdout + r.stderr
