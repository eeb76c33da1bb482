"""CPU cost of one refresh of the process source and collector, in this Python process.

Run as `python -m bench.refresh_cost`; prints one JSON line. `source` times one pass of
exporter.sources.processes (list /proc, read each process's stat; identity only for new
processes); `collector` times what the scheduler does per refresh of the process collector
(its pass, the families, rendering them). CPU is time.process_time, so only this process counts.
The first refresh is reported apart: it reads every process's identity (user, owner) once.
"""
import argparse
import json
import statistics
import sys
import time


def _stats(cpu, wall):
    return {"cold_cpu": cpu[0], "cpu": statistics.median(cpu[1:]), "cpu_min": min(cpu[1:]),
            "cpu_max": max(cpu[1:]), "wall": statistics.median(wall[1:]), "refreshes": len(cpu) - 1}


def _timed(fn):
    c0, w0 = time.process_time(), time.perf_counter()
    out = fn()
    return out, time.process_time() - c0, time.perf_counter() - w0


def measure(procfs, repeat, interval):
    from exporter import config as cfgmod, render
    from exporter.collectors import REGISTRY, factory

    scanner = collector = None
    try:
        from exporter.sources.processes import Scanner
        scanner = Scanner(procfs)
    except ImportError:
        pass
    if "process" in REGISTRY:
        cfg = cfgmod.build(environ={})
        cfg["paths"]["procfs"] = procfs
        collector = factory("process").create(cfg)
    out = {"available": bool(scanner or collector)}
    src, col, series, procs = ([], []), ([], []), 0, 0
    for i in range(repeat + 1):
        if i:
            time.sleep(interval)
        # the first thing done after a sleep runs on cold caches: take turns going first
        for which in ((0, 1) if i % 2 else (1, 0)):
            if which == 0 and scanner:
                table, c, w = _timed(lambda: scanner.scan(time.monotonic()))
                src[0].append(c)
                src[1].append(w)
                procs = len(table.procs)
            elif which == 1 and collector:
                body, c, w = _timed(lambda: render.text(collector.refresh(time.monotonic())))
                col[0].append(c)
                col[1].append(w)
                series = sum(1 for line in body.splitlines() if line and not line.startswith(b"#"))
    if scanner:
        out["source"] = dict(_stats(*src), processes=procs)
    if collector:
        out["collector"] = dict(_stats(*col), series=series)
        collector.close()
    return out


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m bench.refresh_cost")
    p.add_argument("--procfs", default="/proc")
    p.add_argument("--repeat", type=int, default=10, help="timed refreshes after the first")
    p.add_argument("--interval", type=float, default=2.0, help="seconds between refreshes (the tier)")
    args = p.parse_args(argv)
    print(json.dumps(measure(args.procfs, args.repeat, args.interval)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
