"""The soak (bench/soak.py) in short: 60 s in CI, 20 s locally, the same code path as the 10-minute run."""
import json
import subprocess
import sys

from conftest import IN_CI, ROOT


def test_soak_stays_flat(tmp_path):
    duration = 60 if IN_CI else 20
    out = tmp_path / "soak.json"
    r = subprocess.run([sys.executable, "-m", "bench.soak", f"--duration={duration}", f"--json={out}"],
                       cwd=ROOT, capture_output=True, text=True, timeout=duration + 90)
    assert r.returncode == 0, r.stdout + r.stderr
    data = json.loads(out.read_text())
    stats, result = data["stats"], data["result"]
    assert stats["exit_status"] == 0 and stats["failed"] == 0
    assert stats["processes"] >= 50 * duration           # thousands of short-lived processes
    assert stats["scrapes"] >= 10 * duration              # ten scrapers kept at it
    assert stats["samples"] >= 15
    assert stats["gpu"].startswith("2 fake GPUs")          # and one of them flapping
    for key in ("rss_mib", "fds", "threads", "series"):
        assert result[key]["ok"], (key, result[key])
    series = [s["series"] for s in data["samples"]]
    assert min(series) > 100                              # it really was scraping a full exporter
