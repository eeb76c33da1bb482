"""Golden exposition: every collector run on the fixture box with a fixed clock, byte for byte.

Regenerate after an intended change with:  UPDATE_GOLDEN=1 .venv/bin/pytest tests/test_golden.py
and review the diff like code.
"""
import os
import subprocess

from conftest import parse_exposition
from exporter import render
from fixture_box import box_collectors, box_stage_families, refresh_twice

GOLDEN = os.path.join(os.path.dirname(__file__), "golden", "fixture-box.prom")


def check_golden(path, body):
    if os.environ.get("UPDATE_GOLDEN"):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write(body)
    with open(path) as f:
        assert body == f.read(), f"{path} differs; rerun with UPDATE_GOLDEN=1 and review the diff"


def test_fixture_box_golden(tmp_path):
    built, cfg = box_collectors(str(tmp_path))
    families = refresh_twice(built, cfg["paths"]["procfs"])
    body = render.text(families + box_stage_families(built, cfg)).decode()
    parse_exposition(body)
    # a few anchors that must hold whatever else changes
    assert "hoofhearted_cpu_usage_ratio 0.5\n" in body
    assert 'hoofhearted_temperature_celsius{chip="platform_coretemp_1",sensor="temp3",label="Core 1"} 52.0' in body
    assert 'hoofhearted_filesystem_size_bytes{mountpoint="/data",fstype="xfs"} 102400000000' in body
    # the verdict on the box (all processes idle between the two refreshes: ranked by memory)
    assert 'hoofhearted_culprit_info{rank="1",kind=' in body
    check_golden(GOLDEN, body)


def test_golden_passes_promtool(require_tool):
    promtool = require_tool("promtool")
    body = open(GOLDEN).read()
    r = subprocess.run([promtool, "check", "metrics"], input=body, capture_output=True, text=True)
    assert r.returncode == 0 and not r.stdout and not r.stderr, r.stdout + r.stderr
