"""Soak: run the exporter for a while under churn and scrapers, and fail if it grows.

    python -m bench.soak [--duration 600] [--scrapers 10] [--churn 100] [--out bench/soak-results.md]

For ``--duration`` seconds the real exporter (real /proc and /sys, a fake NVML whose second GPU
falls off the bus and comes back every ``--flap`` seconds) is scraped by ``--scrapers`` threads
while short-lived processes start at ``--churn`` per second, each under one of ``--names`` names.
Every ``--every`` seconds it records the exporter's RSS, open fds, threads and the series in
a scrape. After a warm-up third, the median of the middle third is compared with the median of
the last third: a rise beyond the tolerance of any of them fails the run (exit status 1).
"""
import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

import requests

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FAKE_NVML = "tests.fakenvml.lost"
# metric -> (relative, absolute) rise allowed between the middle and last thirds
TOLERANCE = {"rss_mib": (0.05, 2.0), "fds": (0.0, 4), "threads": (0.0, 1), "series": (0.05, 20)}


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.split("\n\n")[0])
    p.add_argument("--duration", type=float, default=600.0, help="seconds to run (default 600)")
    p.add_argument("--scrapers", type=int, default=10, help="concurrent scraping threads")
    p.add_argument("--scrape-interval", type=float, default=0.2, help="pause between one thread's scrapes")
    p.add_argument("--churn", type=float, default=100.0, help="short-lived processes started per second")
    p.add_argument("--names", type=int, default=300, help="distinct names of the short-lived processes")
    p.add_argument("--flap", type=float, default=5.0, help="seconds between GPU lost and back (0: no GPU)")
    p.add_argument("--every", type=float, default=None, help="seconds between samples (default: duration/60, 1-5)")
    p.add_argument("--out", default=None, help="markdown file for the results (default: print only)")
    p.add_argument("--json", default=None, help="write samples and verdict as JSON here")
    return p.parse_args(argv)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def have_fake_nvml():
    return os.path.exists(os.path.join(ROOT, "tests", "fakenvml", "lost.py"))


class Churn:
    """Starts short-lived processes at a steady rate; their names cycle through ``names`` links."""

    def __init__(self, rate, names, workdir):
        self.rate = rate
        self.links = []
        sleep = shutil.which("sleep")
        for i in range(names):
            link = os.path.join(workdir, f"soak-{i:04d}")
            os.symlink(sleep, link)
            self.links.append(link)
        self.started = 0
        self.stop = threading.Event()
        self.children = []
        self.thread = threading.Thread(target=self._run, name="churn", daemon=True)

    def _run(self):
        t0 = time.monotonic()
        while not self.stop.is_set():
            due = int((time.monotonic() - t0) * self.rate)
            while self.started < due and not self.stop.is_set():
                link = self.links[self.started % len(self.links)]
                life = "0.01" if self.started % 10 else "0.5"      # most flash by, some get seen
                self.children.append(subprocess.Popen([link, life]))
                self.started += 1
            self.children = [c for c in self.children if c.poll() is None]
            self.stop.wait(0.01)

    def start(self):
        self.thread.start()

    def close(self):
        self.stop.set()
        self.thread.join()
        for c in self.children:
            c.kill()
            c.wait()


class Scrapers:
    def __init__(self, url, n, pause):
        self.url, self.pause = url, pause
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.ok = self.failed = 0
        self.latencies = []
        self.last_body = b""
        self.threads = [threading.Thread(target=self._run, name=f"scraper-{i}", daemon=True) for i in range(n)]

    def _run(self):
        s = requests.Session()
        s.trust_env = False
        while not self.stop.is_set():
            t = time.perf_counter()
            try:
                r = s.get(self.url, timeout=5, headers={"Accept-Encoding": "gzip"})
                good = r.status_code == 200
                body = r.content
            except requests.RequestException:
                good, body = False, b""
            took = time.perf_counter() - t
            with self.lock:
                if good:
                    self.ok += 1
                    self.latencies.append(took)
                    self.last_body = body
                else:
                    self.failed += 1
            self.stop.wait(self.pause)

    def start(self):
        for t in self.threads:
            t.start()

    def close(self):
        self.stop.set()
        for t in self.threads:
            t.join(10)


def series_in(body):
    return sum(1 for line in body.split(b"\n") if line and not line.startswith(b"#"))


def sample(pid, scrapers):
    with open(f"/proc/{pid}/status") as f:
        status = dict(line.split(":", 1) for line in f if ":" in line)
    with scrapers.lock:
        body = scrapers.last_body
    return {"rss_mib": int(status["VmRSS"].split()[0]) / 1024, "threads": int(status["Threads"]),
            "fds": len(os.listdir(f"/proc/{pid}/fd")), "series": series_in(body)}


def verdict(samples):
    """Per metric: medians of the middle and last thirds, the least-squares slope after warm-up, pass/fail."""
    n = len(samples)
    third = n // 3
    out = {}
    for key, (rel, abs_) in TOLERANCE.items():
        mid = statistics.median(s[key] for s in samples[third:2 * third])
        last = statistics.median(s[key] for s in samples[2 * third:])
        xs = [s["t"] for s in samples[third:]]
        ys = [s[key] for s in samples[third:]]
        mx, my = statistics.fmean(xs), statistics.fmean(ys)
        var = sum((x - mx) ** 2 for x in xs)
        slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / var if var else 0.0
        limit = mid * (1 + rel) + abs_
        out[key] = {"first": samples[0][key], "middle": mid, "last": last, "limit": limit,
                    "slope_per_min": slope * 60, "ok": last <= limit}
    return out


def markdown(args, result, stats):
    names = {"rss_mib": "RSS (MiB)", "fds": "open fds", "threads": "threads", "series": "series per scrape"}
    lines = [f"Soak of {args.duration:.0f} s: {stats['processes']} short-lived processes "
             f"({args.churn:g}/s under {args.names} names), {args.scrapers} scrapers "
             f"({stats['scrapes']} scrapes, {stats['failed']} failed, p50 {stats['p50_ms']:.2f} ms, "
             f"p99 {stats['p99_ms']:.2f} ms), {stats['gpu']}; {stats['samples']} samples every {stats['every']:g} s. "
             f"Verdict: **{'flat' if stats['ok'] else 'GROWING'}**.",
             "",
             "| measure | at start | median, middle third | median, last third | allowed | slope after warm-up |",
             "|---|---|---|---|---|---|"]
    for key, r in result.items():
        fmt = "{:.1f}" if key == "rss_mib" else "{:.0f}"
        lines.append(f"| {names[key]} | {fmt.format(r['first'])} | {fmt.format(r['middle'])} | "
                     f"{fmt.format(r['last'])} | ≤ {fmt.format(r['limit'])} | {r['slope_per_min']:+.3f}/min |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    every = args.every or min(5.0, max(1.0, args.duration / 60))
    work = tempfile.mkdtemp(prefix="hoofhearted-soak-")
    port = free_port()
    control = os.path.join(work, "lost-gpus")
    env = {k: v for k, v in os.environ.items() if not k.startswith("HOOFHEARTED_")}
    cmd = [sys.executable, "-m", "exporter", f"--web.listen-address=127.0.0.1:{port}"]
    gpu = "no GPU"
    if args.flap > 0 and have_fake_nvml():
        conf = os.path.join(work, "soak.yml")
        with open(conf, "w") as f:
            f.write(f"gpu: {{nvml_module: {FAKE_NVML}}}\n")
        cmd.append(f"--config.file={conf}")
        env["FAKENVML_CONTROL"] = control
        gpu = f"2 fake GPUs, the second lost and back every {args.flap:g} s"
    log = open(os.path.join(work, "exporter.log"), "w")
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    churn = scrapers = None
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if requests.get(url + "/-/ready", timeout=2).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("exporter did not start; see " + log.name)
            time.sleep(0.1)
        churn = Churn(args.churn, args.names, work)
        scrapers = Scrapers(url + "/metrics", args.scrapers, args.scrape_interval)
        churn.start()
        scrapers.start()
        samples, lost = [], False
        t0 = time.monotonic()
        next_flap = t0 + args.flap
        next_sample = t0 + min(every, 1.0)
        while time.monotonic() - t0 < args.duration:
            now = time.monotonic()
            if args.flap > 0 and now >= next_flap:
                lost = not lost
                with open(control, "w") as f:
                    f.write("1\n" if lost else "")
                next_flap += args.flap
            if now >= next_sample:
                s = sample(proc.pid, scrapers)
                s["t"] = round(now - t0, 2)
                samples.append(s)
                next_sample += every
            if proc.poll() is not None:
                raise SystemExit(f"exporter exited with {proc.returncode}; see {log.name}")
            time.sleep(0.05)
    finally:
        if scrapers:
            scrapers.close()
        if churn:
            churn.close()
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        log.close()
    result = verdict(samples)
    lat = sorted(scrapers.latencies) or [0.0]
    stats = {"processes": churn.started, "scrapes": scrapers.ok, "failed": scrapers.failed,
             "p50_ms": lat[len(lat) // 2] * 1e3, "p99_ms": lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1e3,
             "gpu": gpu, "samples": len(samples), "every": every, "exit_status": proc.returncode,
             "ok": all(r["ok"] for r in result.values()) and scrapers.failed == 0 and proc.returncode == 0}
    text = markdown(args, result, stats)
    print(text)
    if proc.returncode != 0:
        print(f"exporter exit status {proc.returncode}; log: {log.name}")
    if args.out:
        with open(args.out, "w") as f:
            f.write("# Soak results\n\n`python -m bench.soak " + " ".join(sys.argv[1:] if argv is None else argv)
                    + f"` on {os.cpu_count()} cores.\n\n" + text)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"stats": stats, "result": result, "samples": samples}, f, indent=1)
    if stats["ok"]:
        shutil.rmtree(work, ignore_errors=True)
    else:
        print("kept for inspection: " + work)
    return 0 if stats["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
