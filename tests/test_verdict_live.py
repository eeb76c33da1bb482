"""The verdict with real processes and the real exporter: every surface gives the same answer.

Surfaces: /api/verdict, hoofhearted_culprit_* in /metrics, `hoofhearted why` (text and --json),
and the Grafana Live stream (a local receiver parsed by an independent line-protocol parser).
"""
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time

import pytest
import requests

from alertstack import dump, free_port, query, start_prometheus
from conftest import ROOT, SYSFS, need_module, need_tool, parse_exposition, sample
from dashboards import LiveReceiver
from workers import Workers, cpu_seconds, wait_for

LEAD = "Fans at 35% (platform_applesmc_768 fan2, 1998 rpm)"    # the fixture tree's busiest fan


@pytest.fixture
def workers():
    w = Workers()
    yield w
    w.stop()


def run_why(*args, env=None, timeout=30):
    full = {k: v for k, v in os.environ.items() if not k.startswith("HOOFHEARTED_")}
    full.update(env or {})
    return subprocess.run([sys.executable, "-m", "exporter", "why", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout, env=full)


def verdict_where(exp, predicate, timeout=20):
    """The first /api/verdict answer that satisfies predicate (the workers need a few refreshes)."""
    last = {}

    def check():
        nonlocal last
        r = exp.get("/api/verdict")
        if r.status_code != 200:
            return None
        last = r.json()
        return last if not last["measuring"] and predicate(last) else None

    found = wait_for(check, timeout)
    assert found, json.dumps(last, indent=1)[:3000]
    return found


def rank1(name, kind):
    return lambda v: bool(v["culprits"]) and (v["culprits"][0]["name"], v["culprits"][0]["kind"]) == (name, kind)


def test_twelve_same_named_workers_are_the_culprit_everywhere(start_exporter, workers):
    parse_line = need_module("line_protocol_parser", "parse_line")
    receiver = LiveReceiver()
    try:
        exp = start_exporter(f"--path.sysfs={SYSFS}", env={"HOOFHEARTED_GRAFANA_LIVE_URL": receiver.url,
                                                            "HOOFHEARTED_GRAFANA_LIVE_TOKEN": "t"})
        workers.duty("hhmany", 0.07, count=12, nice=-10)
        solo = workers.duty("hhsolo", 0.3, nice=-10)[0]
        v = verdict_where(exp, lambda v: rank1("hhmany", "group")(v) and v["culprits"][0]["cores"] >= 0.5
                          and any(c["pid"] == solo.pid for c in v["culprits"]))
        top = v["culprits"][0]
        user = top["user"]
        assert (top["kind"], top["processes"], top["pid"]) == ("group", 12, None)
        assert v["sentence"] == f"{LEAD} because hhmany ×12 ({user}) uses {top['cores']:.2f} cores."
        solo_c = next(c for c in v["culprits"] if c["pid"] == solo.pid)
        assert (solo_c["kind"], solo_c["name"]) == ("process", "hhsolo") and solo_c["rank"] > 1

        # /metrics: rank 1 is the group, with its size
        m = parse_exposition(exp.scrape())
        info = {dict(k)["rank"]: dict(k) for (n, k), val in m.items() if n == "hoofhearted_culprit_info"}
        assert info["1"] == {"rank": "1", "kind": "group", "name": "hhmany", "user": user, "owner": top["owner"],
                             "pid": ""}
        assert sample(m, "hoofhearted_culprit_processes", rank="1") == 12
        assert sample(m, "hoofhearted_culprit_cpu_usage_cores", rank="1") >= 0.5

        # why, text and JSON, read the same verdict
        out = run_why("--url", exp.url)
        assert out.returncode == 0, out.stderr
        said = re.escape(f"{LEAD} because hhmany ×12 ({user}) uses ") + r"(\d\.\d\d) cores\."
        assert re.search("^" + said + "$", out.stdout, re.M), out.stdout
        assert re.search(rf"^  hhmany\s+×12\s+{user}\s", out.stdout, re.M), out.stdout
        out = run_why("--url", exp.url + "/metrics", "--json")
        j = json.loads(out.stdout)
        assert (j["culprits"][0]["kind"], j["culprits"][0]["name"], j["culprits"][0]["processes"]) == \
            ("group", "hhmany", 12)
        assert j["sentence"] == f"{LEAD} because hhmany ×12 ({user}) uses {j['culprits'][0]['cores']:.2f} cores."

        # the Live stream's culprit is the same group
        def pushed():
            for r in reversed(receiver.requests[-3:]):
                for line in r[3].splitlines():
                    p = parse_line(line)
                    if p["measurement"] == "culprit" and p["fields"].get("kind") == "group":
                        return p["fields"]
            return None
        fields = wait_for(pushed, 5)
        assert fields and (fields["name"], fields["processes"], fields["user"]) == ("hhmany", 12, user)
        assert re.fullmatch(said, fields["verdict"]), fields["verdict"]
    finally:
        receiver.stop()


def test_one_runaway_is_named_with_its_pid(start_exporter, workers):
    exp = start_exporter(f"--path.sysfs={SYSFS}")
    big = workers.duty("hhbig", 0.9, nice=-10)[0]
    for i in range(3):
        workers.duty(f"hhsmall{i}", 0.03, nice=-10)
    v = verdict_where(exp, lambda v: rank1("hhbig", "process")(v) and v["culprits"][0]["cores"] >= 0.5)
    top = v["culprits"][0]
    assert (top["pid"], top["processes"]) == (big.pid, 1)
    assert v["sentence"] == f"{LEAD} because hhbig (pid {big.pid}, {top['user']}) uses {top['cores']:.2f} cores."
    m = parse_exposition(exp.scrape())
    assert any(n == "hoofhearted_culprit_info" and dict(k)["pid"] == str(big.pid) and dict(k)["rank"] == "1"
               for (n, k) in m)
    out = run_why("--url", exp.url)
    assert re.search(rf"^  hhbig\s+pid {big.pid}\s", out.stdout, re.M), out.stdout
    assert re.search("^" + re.escape(f"{LEAD} because hhbig (pid {big.pid}, {top['user']}) uses ")
                     + r"\d\.\d\d cores\.$", out.stdout, re.M), out.stdout


def test_process_cpu_seconds_counter_matches_proc_stat(start_exporter, workers):
    exp = start_exporter()
    w = workers.duty("hhstat", 0.6)[0]

    def exported():
        m = parse_exposition(exp.scrape())
        return next((v for (n, k), v in m.items() if n == "hoofhearted_process_cpu_seconds_total"
                     and dict(k)["pid"] == str(w.pid)), None)

    assert wait_for(lambda: (exported() or 0) > 0.5, 20)
    os.kill(w.pid, signal.SIGSTOP)        # freeze the counter, then let two refreshes pass
    try:
        time.sleep(4.5)
        truth = cpu_seconds(w.pid)
        assert exported() == pytest.approx(truth, rel=0.02)
    finally:
        os.kill(w.pid, signal.SIGCONT)


def test_measuring_right_after_start(start_exporter):
    exp = start_exporter(ready=False)
    r = wait_for(lambda: exp.get("/api/verdict") if exp.get("/-/healthy").status_code == 200 else None, 10)
    # the first verdict (or none yet: 503) never claims a culprit before two readings exist
    if r.status_code == 200 and r.json()["measuring"]:
        assert r.json()["sentence"].startswith("Still measuring")
        assert r.json()["culprits"] == []
    else:
        assert r.status_code in (200, 503)
    v = wait_for(lambda: (lambda j: j if not j["measuring"] else None)(exp.get("/api/verdict").json()), 10)
    assert v and v["culprits"]


def test_why_measures_here_when_no_exporter_answers(workers):
    port = free_port()                   # nothing listens here: why must measure by itself
    w = workers.duty("hhlocal", 0.9, nice=-10)[0]
    time.sleep(1.0)
    out = run_why("--json", f"--path.sysfs={SYSFS}", env={"HOOFHEARTED_WEB_LISTEN_ADDRESS": f"127.0.0.1:{port}"})
    assert out.returncode == 0, out.stderr
    j = json.loads(out.stdout)
    assert j["source"] == f"measured here: no exporter answered at http://127.0.0.1:{port}/api/verdict"
    assert w.pid in {c["pid"] for c in j["culprits"]}
    assert j["fans"][0]["rpm"] == 1998.0 and j["cpu"]["cores"] == os.cpu_count()
    out = run_why(f"--path.sysfs={SYSFS}", env={"HOOFHEARTED_WEB_LISTEN_ADDRESS": f"127.0.0.1:{port}"})
    assert out.stdout.rstrip().endswith(f"(measured here: no exporter answered at http://127.0.0.1:{port}/api/verdict)")


def test_why_refuses_what_is_not_hoofhearted(start_exporter):
    need_tool("prometheus")
    tmp = tempfile.mkdtemp(prefix="hoofhearted-notus-")
    cfg = dump({"global": {"scrape_interval": "15s"}, "scrape_configs": []}, os.path.join(tmp, "p.yml"))
    prom = start_prometheus(need_tool("prometheus"), tmp, cfg)
    try:
        out = run_why("--url", prom.url)
        assert out.returncode == 2 and out.stdout == ""
        assert out.stderr == f"hoofhearted why: error: {prom.url}/api/verdict: HTTP 404: this is not a hoofhearted " \
                             "exporter\n"
    finally:
        prom.stop()


@pytest.mark.slow
def test_a_15s_scrape_sees_a_periodic_load_through_the_counter(start_exporter, workers, tmp_path):
    """3 CPU seconds out of every 15: a gauge sampled every 15 s sees 0 or a burst; rate() over 1 m
    sees 0.2 at every moment of the cycle.

    The series is left to grow older than the windows first: on a series born inside the window
    Prometheus extrapolates less toward the window's start, and the rate reads low by up to a
    scrape interval's worth for reasons that are not the exporter's."""
    binary = need_tool("prometheus")
    exp = start_exporter()
    worker = workers.periodic("hhperiod", 3.0, 15.0, nice=-10)
    cfg = dump({"global": {"scrape_interval": "15s", "evaluation_interval": "15s"},
                "scrape_configs": [{"job_name": "hoofhearted", "static_configs": [{"targets": [exp.address]}]}]},
               str(tmp_path / "prometheus.yml"))
    prom = start_prometheus(binary, str(tmp_path), cfg)
    try:
        series = 'hoofhearted_process_cpu_seconds_total{name="hhperiod"}'
        time.sleep(150)
        got = wait_for(lambda: (lambda r: r if r and float(r[0]["value"][1]) >= 10 else None)(
            query(prom, f"count_over_time({series}[3m])")), 60, interval=1.0)
        assert got, query(prom, f"{series}[3m]")
        raw = query(prom, f"{series}[2m]")[0]["values"]
        end = time.time()
        r = requests.get(prom.url + "/api/v1/query_range", timeout=5,
                         params={"query": f"rate({series}[1m])", "start": end - 45, "end": end, "step": 3})
        rates = [float(v) for _, v in r.json()["data"]["result"][0]["values"]]
        truth = cpu_seconds(worker.pid)
        assert len(raw) >= 7 and len(rates) == 16
        # the samples themselves: a whole number of periods between the first and the last
        (t0, v0), (t1, v1) = (float(raw[0][0]), float(raw[0][1])), (float(raw[-1][0]), float(raw[-1][1]))
        assert (v1 - v0) / (t1 - t0) == pytest.approx(0.2, rel=0.05)
        assert v1 <= truth + 0.05                  # never ahead of what the process really used
        assert all(x == pytest.approx(0.2, rel=0.10) for x in rates), rates
    finally:
        prom.stop()
