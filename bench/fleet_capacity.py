#!/usr/bin/env python3
"""How many hosts can one Prometheus scrape every 2 s? Measure it with simulated hosts.

One static HTTP server plays N exporters: it serves a real /metrics body (captured from the
exporter, optionally multiplied to look like a big GPU box) and Prometheus scrapes it as N targets
that differ only in their instance label, every 2 s. After a warm-up the script reports the CPU
Prometheus used per second, its resident memory, and the samples it ingested per second.

    curl -s 127.0.0.1:10101/metrics > /tmp/metrics.prom
    .venv/bin/python bench/fleet_capacity.py --body /tmp/metrics.prom --hosts 50 200 --copies 4
"""
import argparse
import http.server
import itertools
import random
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

import requests
import yaml

CLK_TCK = os.sysconf("SC_CLK_TCK")


def multiply(body, copies):
    """Each series `copies` times, told apart by a `copy` label: a bigger host, same shape."""
    out = []
    for ln in body.splitlines():
        if not ln or ln.startswith("#"):
            out.append(ln)
            continue
        name, rest = re.match(r"([^{ ]+)(.*)", ln).groups()
        for k in range(copies):
            if rest.startswith("{"):
                out.append(f'{name}{{copy="{k}",{rest[1:]}')
            else:
                out.append(f'{name}{{copy="{k}"}}{rest}')
    return "\n".join(out) + "\n"


def variants(body, n, seed=1):
    """n copies of the body with every value jittered, served in turn: samples change between
    scrapes as real readings do (identical values would compress better than real ones)."""
    rnd = random.Random(seed)
    out = []
    for _ in range(n):
        lines = []
        for ln in body.splitlines():
            if ln and not ln.startswith("#"):
                head, value = ln.rsplit(" ", 1)
                ln = f"{head} {float(value) * rnd.uniform(0.9, 1.1):.6g}"
            lines.append(ln)
        out.append(("\n".join(lines) + "\n").encode())
    return out


def serve(bodies):
    turn = itertools.count()

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True

        def do_GET(self):
            data = bodies[next(turn) % len(bodies)]
            head = (f"HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\n"
                    f"Content-Length: {len(data)}\r\n\r\n").encode()
            self.wfile.write(head + data)

        def log_message(self, *a):
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    srv.daemon_threads = True
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def own_metric(port, name):
    """A metric of Prometheus itself, summed over its label sets, from its own /metrics."""
    text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    return sum(float(ln.rsplit(" ", 1)[1]) for ln in text.splitlines()
               if ln.startswith(name + " ") or ln.startswith(name + "{"))


def rss_bytes(pid):
    with open(f"/proc/{pid}/status") as f:
        return int(re.search(r"VmRSS:\s+(\d+)", f.read()).group(1)) * 1024


def run(prometheus, bodies, hosts, warmup, measure, port):
    srv = serve(bodies)
    addr = f"127.0.0.1:{srv.server_address[1]}"
    tmp = tempfile.mkdtemp(prefix="fleet-")
    cfg = {"global": {"scrape_interval": "2s", "scrape_timeout": "2s", "evaluation_interval": "10s"},
           "scrape_configs": [{"job_name": "hoofhearted", "static_configs": [
               {"targets": [addr], "labels": {"instance": f"host-{i:04d}:10101"}} for i in range(hosts)]}]}
    with open(os.path.join(tmp, "prometheus.yml"), "w") as f:
        yaml.safe_dump(cfg, f)
    proc = subprocess.Popen([prometheus, f"--config.file={tmp}/prometheus.yml", f"--storage.tsdb.path={tmp}/data",
                             f"--web.listen-address=127.0.0.1:{port}"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}/api/v1/query"
    try:
        time.sleep(warmup)
        appended = "prometheus_tsdb_head_samples_appended_total"
        c0, t0, s0 = cpu_seconds(proc.pid), time.monotonic(), own_metric(port, appended)
        time.sleep(measure)
        c1, t1, s1 = cpu_seconds(proc.pid), time.monotonic(), own_metric(port, appended)
        series = own_metric(port, "prometheus_tsdb_head_series")
        late = requests.get(url, params={"query": 'count(scrape_duration_seconds > 1)'}).json()["data"]["result"]
        return {"hosts": hosts, "series": int(series), "samples_per_s": (s1 - s0) / (t1 - t0),
                "cpu_cores": (c1 - c0) / (t1 - t0), "rss_mb": rss_bytes(proc.pid) / 2**20,
                "slow_scrapes": int(float(late[0]["value"][1])) if late else 0}
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait()
        srv.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--body", required=True, help="a /metrics body captured from hoofhearted")
    ap.add_argument("--hosts", type=int, nargs="+", default=[50, 150])
    ap.add_argument("--copies", type=int, default=1, help="multiply every series (a bigger host)")
    ap.add_argument("--variants", type=int, default=16, help="bodies with jittered values, served in turn")
    ap.add_argument("--warmup", type=float, default=30)
    ap.add_argument("--measure", type=float, default=60)
    ap.add_argument("--port", type=int, default=19191)
    ap.add_argument("--prometheus", default=shutil.which("prometheus"))
    args = ap.parse_args()
    with open(args.body) as f:
        body = multiply(f.read(), args.copies)
    per_host = sum(1 for ln in body.splitlines() if ln and not ln.startswith("#"))
    print(f"series per host: {per_host}, scrape interval 2 s, Prometheus {args.prometheus}")
    bodies = variants(body, args.variants)
    for n in args.hosts:
        r = run(args.prometheus, bodies, n, args.warmup, args.measure, args.port)
        print(f"hosts={r['hosts']:5d} series={r['series']:8d} samples/s={r['samples_per_s']:9.0f} "
              f"cpu={r['cpu_cores']:.3f} cores rss={r['rss_mb']:.0f} MiB slow_scrapes={r['slow_scrapes']}",
              flush=True)


if __name__ == "__main__":
    sys.exit(main())
