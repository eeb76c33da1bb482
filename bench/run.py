"""`make bench`: hoofhearted, node_exporter and process-exporter side by side at 0, 1,000 and 5,000
extra idle processes; writes the table into bench/results.md.

    python -m bench [--procs 0,1000,5000] [--runs 3] [--quick] [--profile]
"""
import argparse
import datetime
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

from . import exporters as ex, report
from .procs import IdleProcesses, Reaper, count_processes, cpu_seconds, status_bytes
from .scrape import (PROMETHEUS_ACCEPT, PeriodicScraper, body_stats, latency, percentile, session,
                     single_scrape_cpu)

HERE = os.path.dirname(os.path.abspath(__file__))
BURNER = "hh-burner"
BURNER_LINE = re.compile(rb'^hoofhearted_process_cpu_usage_cores\{[^}]*name="' + BURNER.encode()
                         + rb'"[^}]*\} (\S+)', re.M)
DURATION_LINE = re.compile(rb'^hoofhearted_collector_duration_seconds\{collector="([^"]+)"\} (\S+)', re.M)


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--procs", default="0,1000,5000", help="extra idle process counts, comma-separated")
    p.add_argument("--runs", type=int, default=3, help="runs per process count; the median is reported")
    p.add_argument("--scrapes", type=int, default=500, help="sequential scrapes for latency")
    p.add_argument("--anchor-seconds", type=float, default=60.0,
                   help="stop an anchor's latency scrapes after this long (process-exporter at 5,000)")
    p.add_argument("--cpu-seconds", type=float, default=60.0, help="CPU window, scraping every 2 s")
    p.add_argument("--interval", type=float, default=2.0, help="scrape interval in the CPU window")
    p.add_argument("--quick", action="store_true", help="1 run, 20 s CPU window, fewer anchor scrapes")
    p.add_argument("--out", default=os.path.join(HERE, "results.md"), help="results file ('-': none)")
    p.add_argument("--json", default=os.path.join(HERE, "out", "results.json"), help="raw results")
    p.add_argument("--render", action="store_true", help="only rewrite the results file from the --json file")
    p.add_argument("--profile", action="store_true", help="profile hoofhearted with py-spy instead")
    p.add_argument("--profile-procs", type=int, default=1000, help="extra idle processes while profiling")
    p.add_argument("--profile-seconds", type=float, default=60.0)
    args = p.parse_args(argv)
    args.procs = [int(x) for x in args.procs.split(",") if x.strip()]
    if args.quick:
        args.runs, args.cpu_seconds, args.anchor_seconds = 1, min(args.cpu_seconds, 20.0), 15.0
    return args


def machine():
    model = "unknown"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    from exporter import __version__
    from exporter.collectors import REGISTRY
    return {
        "cores": os.cpu_count(), "cpu_model": model, "kernel": platform.release(),
        "python": platform.python_version(), "hoofhearted": __version__,
        "collectors": list(REGISTRY),
        "node_exporter": ex.version([ex.NODE_EXPORTER, "--version"]),
        "process_exporter": ex.version([ex.PROCESS_EXPORTER, "--version"]),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "loadavg_start": os.getloadavg(),
    }


def refresh_cost(quick):
    argv = [sys.executable, "-m", "bench.refresh_cost"]
    if quick:
        argv += ["--repeat", "5", "--interval", "1"]
    out = subprocess.run(argv, cwd=ex.ROOT, capture_output=True, text=True, timeout=300)
    if out.returncode != 0:
        return {"available": False, "why": (out.stderr.strip().splitlines() or ["failed"])[-1]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def burner_appearance(hh, reaper, workdir, timeout=15.0):
    """Seconds from starting a CPU burner to its cpu_usage_cores series in hoofhearted's /metrics."""
    from exporter.collectors import REGISTRY
    if "process" not in REGISTRY:
        return {"seconds": None, "why": "no process collector"}
    link = os.path.join(workdir, BURNER)
    if not os.path.exists(link):
        os.symlink(os.path.realpath(shutil.which("sh")), link)  # comm is the name it was started by
    s = session()
    t0 = time.perf_counter()
    p = reaper.spawn([link, "-c", "while :; do :; done"])
    try:
        while time.perf_counter() - t0 < timeout:
            m = BURNER_LINE.search(s.get(hh.metrics, timeout=10).content)
            if m:
                return {"seconds": time.perf_counter() - t0, "cores": float(m.group(1))}
            time.sleep(0.02)
        return {"seconds": None, "why": f"not seen within {timeout:.0f} s"}
    finally:
        reaper.kill(p)
        s.close()


def cpu_window(exps, seconds, interval):
    """Each exporter's CPU seconds per minute while all are scraped every `interval` seconds.

    These scrapes send Prometheus' own Accept header (hoofhearted then answers OpenMetrics; the
    anchors answer text either way), and each one finds the cache of the last scrape outdated.
    """
    scrapers = [PeriodicScraper(e.metrics, interval, offset=i * interval / len(exps)) for i, e in enumerate(exps)]
    c0 = {e.name: cpu_seconds(e.pid) for e in exps}
    t0 = time.monotonic()
    for s in scrapers:
        s.start()
    try:
        time.sleep(seconds)
    finally:
        for s in scrapers:
            s.stop()
    elapsed = time.monotonic() - t0
    return {e.name: {"cpu_per_min": (cpu_seconds(e.pid) - c0[e.name]) / elapsed * 60,
                     "window_scrapes": s.scrapes, "window_errors": s.errors,
                     "window_p50": percentile(s.times, 50) if s.times else None,
                     "window_max": max(s.times) if s.times else None}
            for e, s in zip(exps, scrapers)}


def measure_run(n_extra, args, reaper, workdir, log):
    hh = ex.start_hoofhearted(reaper, workdir, getattr(args, "hh_args", ()))
    exps = [hh]
    try:
        exps.append(ex.start_node_exporter(reaper, workdir))
        exps.append(ex.start_process_exporter(reaper, workdir))
        pe = exps[2]
        time.sleep(3)  # every tier of hoofhearted has refreshed at least once more
        r = {"extra": n_extra, "processes": count_processes(), "exporters": {e.name: {} for e in exps}}
        seen = r["processes_seen"] = [r["processes"]]   # other work on the machine can change it
        for e in exps:
            budget = args.anchor_seconds if e is not hh else 600
            r["exporters"][e.name].update(latency(e.metrics, e.pid, args.scrapes, budget))
            log(f"  {e.name}: p50 {r['exporters'][e.name]['p50'] * 1e3:.2f} ms "
                f"p99 {r['exporters'][e.name]['p99'] * 1e3:.2f} ms ({r['exporters'][e.name]['scrapes']} scrapes)")
        r["hoofhearted_openmetrics"] = latency(hh.metrics, hh.pid, args.scrapes, 600, accept=PROMETHEUS_ACCEPT)
        seen.append(count_processes())
        for e in exps:
            r["exporters"][e.name].update(body_stats(e.metrics))
        single = single_scrape_cpu(pe.metrics, pe.pid, 10, 15 if args.quick else 30)
        r["pe_scrape_cpu"] = statistics.median(single)
        r["pe_scrape_cpu_samples"] = single
        r["refresh"] = refresh_cost(args.quick)
        log(f"  process refresh: {r['refresh']}; process-exporter scrape CPU {r['pe_scrape_cpu'] * 1e3:.1f} ms")
        for name, v in cpu_window(exps, args.cpu_seconds, args.interval).items():
            r["exporters"][name].update(v)
        seen.append(count_processes())
        log("  CPU s/min: " + ", ".join(f"{e.name} {r['exporters'][e.name]['cpu_per_min']:.3f}" for e in exps))
        body = session().get(hh.metrics, timeout=10).content
        r["durations"] = {m.group(1).decode(): float(m.group(2)) for m in DURATION_LINE.finditer(body)}
        r["burner"] = burner_appearance(hh, reaper, workdir)
        log(f"  burner: {r['burner']}")
        for e in exps:  # after the burner: the process collector has seen the most processes by now
            r["exporters"][e.name]["peak_rss"] = status_bytes(e.pid, "VmHWM")
            r["exporters"][e.name]["rss"] = status_bytes(e.pid, "VmRSS")
        return r
    finally:
        for e in exps:
            reaper.kill(e.proc)


def run_bench(args, reaper, workdir):
    info = machine()
    log = lambda msg: print(msg, flush=True)  # noqa: E731
    log(report.machine_line(info))
    info["args"] = {k: v for k, v in vars(args).items() if k in ("procs", "runs", "scrapes", "anchor_seconds",
                                                                    "cpu_seconds", "interval", "quick")}
    data = {"machine": info, "results": {}, "gpu_refresh": None, "bmc_refresh": None}
    sim = bmc_simulator(args, workdir, log)
    try:
        _runs(args, reaper, workdir, log, data, info)
    finally:
        if sim:
            sim.stop()
    data["gpu_refresh"] = gpu_refresh()
    data["bmc_refresh"] = bmc_refresh()
    data["live_clients"] = live_clients(args.quick)
    log(data["live_clients"])
    save(args, data)
    text = report.render(data)
    print(text)
    if args.out != "-":
        report.write(args.out, text)
        log(f"wrote {args.out}")
    return 0


def bmc_simulator(args, workdir, log):
    """hoofhearted reads a simulated BMC (ipmi_sim over RMCP+) during the runs, when one can start."""
    if not shutil.which("ipmi_sim") or not (shutil.which("ipmi-sensors") or os.path.exists("/usr/sbin/ipmi-sensors")):
        log("no ipmi_sim or ipmi-sensors: the BMC collector has nothing to read (make deps)")
        return None
    sys.path.insert(0, os.path.join(ex.ROOT, "tests"))
    from bmcsim import PASSWORD, USER, DeadBMC, IPMISim
    sim, dead = IPMISim(os.path.join(workdir, "ipmi_sim")), DeadBMC()
    pw = os.path.join(workdir, "bmc.pw")
    with open(pw, "w") as f:
        f.write(PASSWORD)
    conf = os.path.join(workdir, "bmc.yml")
    target = {"host": "127.0.0.1", "username": USER, "password_file": pw, "workaround_flags": ["opensesspriv"]}
    with open(conf, "w") as f:
        json.dump({"bmc": {"ipmi": {"targets": [dict(target, name="sim", port=sim.port),
                                                dict(target, name="gone", port=dead.port)]}}}, f)
    args.hh_args = (f"--config.file={conf}",)
    log(f"BMC collector reads ipmi_sim on 127.0.0.1:{sim.port} and a BMC that never answers on port {dead.port}")

    class Both:
        def stop(self):
            sim.stop()
            dead.stop()
    return Both()


def _runs(args, reaper, workdir, log, data, info):
    for n in args.procs:
        with IdleProcesses(reaper, n):
            log(f"+{n} idle processes ({count_processes()} in all)")
            runs = data["results"][str(n)] = []
            for i in range(args.runs):
                log(f" run {i + 1}/{args.runs}")
                runs.append(measure_run(n, args, reaper, workdir, log))
                info["loadavg_end"] = os.getloadavg()
                save(args, data)        # what is measured survives an interruption


def save(args, data):
    if args.json:
        os.makedirs(os.path.dirname(args.json), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(data, f, indent=1)


def gpu_refresh():
    """Output of bench/gpu_refresh.py (NVIDIA refresh on fake GPUs) when that script exists."""
    path = os.path.join(HERE, "gpu_refresh.py")
    if not os.path.exists(path):
        return None
    try:
        out = subprocess.run([sys.executable, "-m", "bench.gpu_refresh"], cwd=ex.ROOT, capture_output=True,
                             text=True, timeout=300)
        return (out.stdout + (out.stderr if out.returncode else "")).strip()
    except subprocess.TimeoutExpired:
        return "bench/gpu_refresh.py timed out"


def bmc_refresh():
    """Output of bench/bmc_refresh.py: the BMC collector's refresh cost on ipmi_sim."""
    try:
        out = subprocess.run([sys.executable, "-m", "bench.bmc_refresh"], cwd=ex.ROOT, capture_output=True,
                             text=True, timeout=120)
        return (out.stdout + (out.stderr if out.returncode else "")).strip()
    except subprocess.TimeoutExpired:
        return "bench/bmc_refresh.py timed out"


def live_clients(quick):
    """Output of bench/live_clients.py: CPU that ten live pages add to the exporter."""
    argv = [sys.executable, "-m", "bench.live_clients"] + (["--quick"] if quick else [])
    try:
        out = subprocess.run(argv, cwd=ex.ROOT, capture_output=True, text=True, timeout=300)
        return (out.stdout + (out.stderr if out.returncode else "")).strip()
    except subprocess.TimeoutExpired:
        return "bench/live_clients.py timed out"


def _on_term(signum, frame):
    raise KeyboardInterrupt


def render_only(args):
    with open(args.json) as f:
        text = report.render(json.load(f))
    print(text)
    if args.out != "-":
        report.write(args.out, text)
    return 0


def main(argv=None):
    args = parse_args(argv)
    if args.render:
        return render_only(args)
    for tool in (ex.NODE_EXPORTER, ex.PROCESS_EXPORTER):
        if not shutil.which(tool):
            print(f"bench: {tool} is not installed (make deps installs it)", file=sys.stderr)
            return 2
    signal.signal(signal.SIGTERM, _on_term)
    reaper = Reaper()
    workdir = tempfile.mkdtemp(prefix="hoofhearted-bench-")
    try:
        if args.profile:
            from .profile import profile
            return profile(args, reaper, workdir)
        return run_bench(args, reaper, workdir)
    except KeyboardInterrupt:
        print("bench: interrupted", file=sys.stderr)
        return 130
    except RuntimeError as e:  # an exporter did not start; its log is in the message
        print(f"bench: {e}", file=sys.stderr)
        return 1
    finally:
        reaper.kill_all()
        shutil.rmtree(workdir, ignore_errors=True)
