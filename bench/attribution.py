"""Power attribution accuracy: known loads, attributed watts against the measured domain power.

    python -m bench.attribution [--seconds 10] [--out bench/results.md]

This machine has no readable RAPL, so the exporter reads a sysfs tree whose package counter
advances at a constant 40 W (tests/raplsim.py) while real processes burn CPU. What it checks:
that the attributed, idle and other parts add up to the measured power, and that each load gets
what the method predicts from its CPU time measured here in /proc. With a constant power the
memory-bound and compute-bound loops get the same watts per core: the method cannot tell them
apart, which is its known limit (docs/processes.md). On a machine with readable RAPL, pass
--sysfs /sys to measure real power.
"""
import argparse
import os
import statistics
import sys
import tempfile
import time

import requests

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

from tests.raplsim import RaplTree  # noqa: E402
from tests.workers import DUTY, Workers  # noqa: E402

from .exporters import parse_metrics, start_hoofhearted  # noqa: E402
from .procs import Reaper, cpu_seconds  # noqa: E402

WATTS = 40.0
MEMORY = """
buf = bytearray(64 << 20)
while True:
    bytes(buf)              # 64 MiB copies: memory traffic, little arithmetic
"""
COMPUTE = """
x = 0
while True:
    for i in range(100000):
        x = (x * 31 + i) % 1000003
"""
SCENARIOS = (
    ("one burner", [("hhburn1", DUTY, 1.0)]),
    ("two burners", [("hhburn1", DUTY, 1.0), ("hhburn2", DUTY, 1.0)]),
    ("memory-bound loop", [("hhmemory", MEMORY)]),
    ("compute-bound loop", [("hhcompute", COMPUTE)]),
)
MARK = "## Power attribution"


def one(samples, name, **labels):
    return sum(v for lab, v in samples.get(name, ()) if labels.items() <= lab.items())


def start_exporter(reaper, sysfs, workdir):
    cfg = os.path.join(workdir, "config.yml")
    with open(cfg, "w") as f:
        f.write("collectors:\n  rapl: {tier: important}\n")
    return start_hoofhearted(reaper, workdir, [f"--config.file={cfg}", f"--path.sysfs={sysfs}"]).url


def scenario(url, loads, seconds, ncores):
    w = Workers()
    try:
        procs = [w.start(name, code, *args) for name, code, *args in loads]
        time.sleep(6)                           # two rated passes of process and RAPL
        rows = []
        names = {name for name, *_ in loads}

        def energy():
            s = parse_metrics(requests.get(url + "/metrics", timeout=10).text)
            return sum(v for lab, v in s.get("hoofhearted_process_group_energy_joules_total", ())
                       if lab.get("group") in names and lab.get("domain") == "package-0")
        e0, c0 = energy(), sum(cpu_seconds(p.pid) for p in procs)
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            before = {p.pid: cpu_seconds(p.pid) for p in procs}
            t0 = time.monotonic()
            time.sleep(2.0)
            text = requests.get(url + "/metrics", timeout=10).text
            rate = sum(cpu_seconds(p.pid) - before[p.pid] for p in procs) / (time.monotonic() - t0)
            s = parse_metrics(text)
            measured = one(s, "hoofhearted_cpu_power_watts", domain="package-0")
            got = sum(one(s, "hoofhearted_process_power_watts", pid=str(p.pid), domain="package-0") for p in procs)
            cores = sum(one(s, "hoofhearted_process_cpu_usage_cores", pid=str(p.pid)) for p in procs)
            groups = one(s, "hoofhearted_process_group_power_watts", domain="package-0")
            idle = one(s, "hoofhearted_power_unattributed_watts", domain="package-0", part="idle")
            other = one(s, "hoofhearted_power_unattributed_watts", domain="package-0", part="other")
            rows.append({"measured": measured, "attributed": got, "predicted": measured * rate / ncores,
                         "method": measured * cores / ncores, "rate": rate, "idle": idle, "other": other,
                         "sum": groups + idle + other})
        e1, c1 = energy(), sum(cpu_seconds(p.pid) for p in procs)
        # over the whole window the two clocks' offsets cancel: joules against 40 W × CPU seconds / CPUs
        expected = WATTS * (c1 - c0) / ncores
        for r in rows:
            r["energy"] = abs((e1 - e0) - expected) / expected if expected > 0 else 0.0
        return rows
    finally:
        w.stop()


def summarise(name, rows):
    med = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
    err = [abs(r["attributed"] - r["predicted"]) / r["predicted"] for r in rows if r["predicted"] > 0]
    method = [abs(r["attributed"] - r["method"]) / r["method"] for r in rows if r["method"] > 0]
    adds = [abs(r["sum"] - r["measured"]) / r["measured"] for r in rows if r["measured"] > 0]
    energy = rows[0]["energy"]
    return (f"| {name} | {med['measured']:.1f} | {med['rate']:.2f} | {med['attributed']:.1f} | "
            f"{med['predicted']:.1f} | {statistics.median(err) * 100:.1f} % | {statistics.median(method) * 100:.1f} % | "
            f"{energy * 100:.1f} % | {med['idle']:.1f} | {med['other']:.1f} | {max(adds) * 100:.2f} % |")


def cost_line():
    """Attribution cost per verdict at 5,000 processes (the pure function, in process)."""
    from exporter import attribution
    from exporter.families import Family
    from exporter.sources.processes import Identity, Proc

    procs = {i: Proc(i, f"p{i % 50}", "S", 1, 0.0, 1 << 20, 1, 100, Identity(0, "u", "", "", "p", True), b"")
             for i in range(1, 5001)}

    class P:
        snapshot = type("T", (), {"procs": procs})()
        rates = {i: 0.001 for i in procs}
        top = []
        rated = True

    m = {}
    for name, labels, value in (("hoofhearted_cpu_cores", {}, 2), ("hoofhearted_cpu_usage_ratio", {}, 0.5),
                                ("hoofhearted_cpu_power_watts", {"domain": "package-0"}, 40.0),
                                ("hoofhearted_cpu_power_watts", {"domain": "package-0/core"}, 25.0)):
        f = Family(name, "x", "gauge", list(labels))
        f.add_metric(list(labels.values()), value)
        m.setdefault(name, []).extend(f.samples)
    a = attribution.Attributor()
    a.update(m, P, (), now=0.0)
    t = time.perf_counter()
    for i in range(20):
        a.update(m, P, (), now=float(i))
    ms = (time.perf_counter() - t) / 20 * 1000
    t = time.perf_counter()
    for i in range(20):
        attribution.prepare(P)
    once = (time.perf_counter() - t) / 20 * 1000
    load = os.getloadavg()[0]
    return (f"Cost at 5,000 processes, all running, two RAPL domains: {once:.1f} ms once per process refresh "
            f"(the per-process pass), then {ms:.1f} ms per verdict. Load average {load:.1f} on "
            f"{os.cpu_count()} cores while this ran.")


def render(rows, sysfs_note, cost):
    lines = [MARK, "",
             f"`python -m bench.attribution` ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}), {sysfs_note}. "
             "Per scenario, medians over scrapes 2 s apart: the package's measured watts, the loads' CPU "
             "cores measured in /proc, the watts the exporter gave them, what the method predicts from "
             "those cores (measured × cores / logical CPUs), the median error against it and against the "
             "method on the exporter's own CPU reading (a scrape can fall between a process refresh and "
             "the verdict that follows it), the error of the loads' energy counter over the whole "
             "window against 40 W × their CPU seconds / logical CPUs (the two clocks' offsets cancel), "
             "the idle and other parts, and "
             "the largest gap between the measured power and processes + idle + other in one scrape (inside "
             "the exporter they add up exactly; a scrape can fall between a RAPL refresh and the verdict "
             "that follows it, and the RAPL watts are timed by the tier's clock, so on a loaded machine a "
             "reading can be a few percent off 40 W).", "",
             "| load | measured W | cores | attributed W | predicted W | error | error (own reading) | "
             "energy error | idle W | other W | adds up within |",
             "|---|---|---|---|---|---|---|---|---|---|---|"] + rows + ["", cost, ""]
    return "\n".join(lines)


def write(path, section):
    try:
        with open(path) as f:
            text = f.read()
    except FileNotFoundError:
        text = ""
    if MARK in text:
        head, _, rest = text.partition(MARK)
        nxt = rest.find("\n## ")
        text = head + section + (rest[nxt + 1:] if nxt >= 0 else "")
    else:
        text = text.rstrip("\n") + "\n\n" + section
    with open(path, "w") as f:
        f.write(text)


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m bench.attribution", description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=20.0, help="measuring time per scenario")
    p.add_argument("--sysfs", default=None, help="a real sysfs with readable RAPL (default: a 40 W tree)")
    p.add_argument("--out", default=os.path.join(HERE, "results.md"), help="results file ('-': print only)")
    args = p.parse_args(argv)
    ncores = os.cpu_count()
    with tempfile.TemporaryDirectory() as tmp:
        tree = None if args.sysfs else RaplTree(os.path.join(tmp, "sys"), watts=WATTS)
        sysfs = args.sysfs or tree.root
        note = f"real RAPL under {sysfs}" if args.sysfs else f"a sysfs tree at a constant {WATTS:.0f} W"
        reaper = Reaper()
        try:
            url = start_exporter(reaper, sysfs, tmp)
            rows = []
            for name, loads in SCENARIOS:
                line = summarise(name, scenario(url, loads, args.seconds, ncores))
                print(line, flush=True)
                rows.append(line)
        finally:
            reaper.kill_all()
            if tree:
                tree.stop()
    section = render(rows, note, cost_line())
    if args.out == "-":
        print(section)
    else:
        write(args.out, section)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
