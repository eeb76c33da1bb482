"""Grafana Live push: the real exporter posts Influx line protocol to a local receiver standing in
for Grafana's /api/live/push/hoofhearted; the lines are parsed by an independent parser
(line-protocol-parser) and compared with what /metrics says."""
import subprocess
import sys
import time

import pytest

from conftest import ROOT, SYSFS, need_module, parse_exposition, sample
from dashboards import LiveReceiver
from exporter.live import line


@pytest.fixture
def parse_line():
    return need_module("line_protocol_parser", "parse_line")


@pytest.fixture
def receiver():
    r = LiveReceiver()
    yield r
    r.stop()


def points(parse_line, body):
    return [parse_line(text) for text in body.splitlines()]


def test_awkward_names_survive_the_line_protocol(parse_line):
    text = line("temperature", {"host": "box 1", "chip": "a,b=c", "label": "", "sensor": "back\\slash"},
                {"celsius": 55.5, "pid": 42, "name": 'say "hi"\\now', "bad": float("nan"), "flag": True}, 10**18)
    p = parse_line(text)
    assert p["measurement"] == "temperature"
    assert p["tags"] == {"host": "box 1", "chip": "a,b=c", "sensor": "back/slash"}  # empty tag left out
    assert p["fields"] == {"celsius": 55.5, "pid": 42, "name": 'say "hi"\\now', "flag": True}
    assert p["time"] == 10**18
    assert line("cpu", {"host": "h"}, {"x": float("inf")}, 1) is None  # no value, no line
    assert parse_line(line("culprit", {"host": "h"}, {"verdict": "a\nb"}, 1))["fields"] == {"verdict": "a b"}


def live_env(url, **extra):
    env = {"HOOFHEARTED_GRAFANA_LIVE_URL": url, "HOOFHEARTED_GRAFANA_LIVE_TOKEN": "s3cret-token"}
    env.update(extra)
    return env


def test_exporter_pushes_the_critical_tier_once_per_critical_interval(start_exporter, receiver, parse_line):
    exp = start_exporter(f"--path.sysfs={SYSFS}", env=live_env(receiver.url, HOOFHEARTED_TIERS_CRITICAL="0.5"))
    time.sleep(1.0)  # every collector has refreshed; pushes carry all of them from here on
    start, count0 = time.monotonic(), len(receiver.requests)
    time.sleep(3.0)
    window = [r for r in receiver.requests if r[0] >= start]
    assert 4 <= len(window) <= 8, f"{len(window)} pushes in 3 s at a 0.5 s critical interval"
    assert count0 >= 1
    for _, path, headers, body in receiver.requests:
        assert path == "/api/live/push/hoofhearted"
        assert headers["Authorization"] == "Bearer s3cret-token"
        assert headers["Content-Type"].startswith("text/plain")
        points(parse_line, body)  # every line parses

    scraped = parse_exposition(exp.scrape())
    last = points(parse_line, receiver.requests[-1][3])
    by = {}
    for p in last:
        by.setdefault(p["measurement"], []).append(p)
    assert {"temperature", "fan", "cpu", "culprit"} <= set(by)
    assert len({p["tags"]["host"] for p in last}) == 1
    assert all(abs(p["time"] / 1e9 - time.time()) < 5 for p in last)
    # Temperatures and fans: the fixture's values, the same as /metrics.
    temps = {(p["tags"]["chip"], p["tags"]["sensor"]): p["fields"] for p in by["temperature"]}
    assert temps[("platform_coretemp_0", "temp1")] == {"celsius": 55.0, "max_celsius": 84.0, "critical_celsius": 100.0}
    for (chip, sensor), fields in temps.items():
        label = next(p["tags"].get("label", "") for p in by["temperature"]
                     if (p["tags"]["chip"], p["tags"]["sensor"]) == (chip, sensor))
        assert fields["celsius"] == sample(scraped, "hoofhearted_temperature_celsius", chip=chip, sensor=sensor,
                                           label=label)
    fans = {(p["tags"]["chip"], p["tags"]["fan"]): p["fields"] for p in by["fan"]}
    assert fans[("platform_applesmc_768", "fan2")] == {"rpm": 1998.0, "max_rpm": 5700.0}
    assert 0 <= by["cpu"][0]["fields"]["busy_ratio"] <= 1
    assert by["cpu"][0]["fields"]["cores"] == sample(scraped, "hoofhearted_cpu_cores")
    culprit = by["culprit"][0]["fields"]
    if culprit["kind"] == "process":
        assert culprit["text"].startswith(f"{culprit['name']} (pid {culprit['pid']}, {culprit['user']}")
    else:
        assert culprit["text"].startswith(f"{culprit['name']} ×{culprit['processes']} (")
    assert culprit["verdict"].startswith("Fans at 35% (platform_applesmc_768 fan2, 1998 rpm)")
    # the stream says what /api/verdict says: some push carries the sentence the API gives now
    deadline = time.monotonic() + 5
    while True:
        api = exp.get("/api/verdict").json()
        pushed = [p["fields"] for r in receiver.requests[-3:] for p in points(parse_line, r[3])
                  if p["measurement"] == "culprit"]
        if any(f["verdict"] == api["sentence"] and f["name"] == api["culprits"][0]["name"] for f in pushed):
            break
        assert time.monotonic() < deadline, (api["sentence"], pushed)
        time.sleep(0.2)
    # Counted: every push the receiver got was a success.
    scraped = parse_exposition(exp.scrape())
    ok = sample(scraped, "hoofhearted_live_pushes_total", result="success")
    assert ok >= len(window)
    assert sample(scraped, "hoofhearted_live_pushes_total", result="http_error") == 0
    assert sample(scraped, "hoofhearted_live_pushes_total", result="network_error") == 0


def test_push_failures_are_counted_logged_once_and_metrics_keep_serving(start_exporter, parse_line):
    refusing = LiveReceiver(status=500)
    exp = start_exporter(f"--path.sysfs={SYSFS}", env=live_env(refusing.url))
    time.sleep(2.5)
    scraped = parse_exposition(exp.scrape())
    assert sample(scraped, "hoofhearted_live_pushes_total", result="http_error") >= 2
    assert sample(scraped, "hoofhearted_live_pushes_total", result="success") == 0
    refusing.stop()  # Grafana goes away
    time.sleep(2.5)
    scraped = parse_exposition(exp.scrape())
    assert sample(scraped, "hoofhearted_live_pushes_total", result="network_error") >= 2
    assert sample(scraped, "hoofhearted_temperature_celsius", chip="platform_coretemp_0", sensor="temp1",
                  label="Physical id 0") == 55.0
    assert exp.get("/-/healthy").status_code == 200
    failures = [ln for ln in exp.lines if "grafana live push failed" in ln]
    assert len(failures) == 2, failures  # one line per kind of failure, not one per second
    assert "HTTP 500" in failures[0] and "ConnectionRefusedError" in failures[1], failures
    assert all("s3cret-token" not in ln for ln in exp.lines)


def test_token_is_read_from_token_file(start_exporter, receiver, tmp_path):
    token = tmp_path / "live-token"
    token.write_text("from-a-file\n")
    conf = tmp_path / "hoofhearted.yml"
    conf.write_text(f"grafana_live:\n  url: {receiver.url}/\n  token_file: {token}\n")
    start_exporter(f"--config.file={conf}", f"--path.sysfs={SYSFS}")
    deadline = time.monotonic() + 5
    while not receiver.requests and time.monotonic() < deadline:
        time.sleep(0.1)
    _, path, headers, _ = receiver.requests[0]
    assert path == "/api/live/push/hoofhearted"  # the trailing slash of the URL is not doubled
    assert headers["Authorization"] == "Bearer from-a-file"


def test_unreadable_token_file_is_one_clear_line_and_exit_2(tmp_path):
    conf = tmp_path / "hoofhearted.yml"
    conf.write_text(f"grafana_live:\n  url: http://127.0.0.1:9\n  token_file: {tmp_path}/missing\n")
    r = subprocess.run([sys.executable, "-m", "exporter", f"--config.file={conf}", "--web.listen-address=127.0.0.1:0"],
                       cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert r.returncode == 2
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "grafana_live.token_file" in lines[0] and "missing" in lines[0], r.stderr
    assert "Traceback" not in r.stderr
