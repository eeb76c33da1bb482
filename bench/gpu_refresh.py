"""CPU cost of refreshing the NVIDIA source: 8 GPUs with 50 processes each, on the fake NVML.

Run as `python -m bench.gpu_refresh` from the repository root (the fake lives in tests/fakenvml).
One refresh is what the nvidia and gpu_process collectors ask of the source every tier: device
readings of every GPU, and every GPU's process lists and utilisation samples. CPU is
time.process_time in this process; the fake driver library runs in Python here, so its own CPU
is measured apart and taken out (a real libnvidia-ml does that work in C, not in the exporter).
The collectors' side (metric families and rendering) is timed too, on a procfs with no processes
so that only the GPU work counts.
"""
import argparse
import json
import statistics
import sys
import tempfile
import time

LIMIT_MS = 20.0


def measure(gpus, processes, repeat):
    from exporter import render
    from exporter.collectors.gpu import GPUProcessCollector, NvidiaCollector
    from exporter.sources.nvidia import NvidiaSource
    from exporter.sources.processes import Scanner
    from tests.fakenvml import scenarios

    clock = [1_800_000_000.0]
    nv = scenarios.scale(gpus, processes, clock=lambda: clock[0])
    lib = nv._fake
    src = NvidiaSource(nv)
    procfs = tempfile.mkdtemp()
    nvc = NvidiaCollector(src)
    gp = GPUProcessCollector(src, procfs=procfs, sysfs=procfs, top_n=10, scanner=Scanner(procfs))
    total, fake, collectors = [], [], []
    for i in range(repeat + 1):
        clock[0] += 1.0                       # a refresh a second: new utilisation samples each time
        lib.timing, lib.cpu_seconds = True, 0.0
        t0 = time.process_time()
        snap = src.read_devices(float(i))
        procs = src.read_processes(float(i))
        cpu = time.process_time() - t0
        lib.timing = False
        assert len(snap.gpus) == gpus and all(len(p.processes) == processes for p in procs)
        assert all(p.utilization is not None for g in procs for p in g.processes)
        clock[0] += 1.0
        t0 = time.process_time()
        render.text(nvc.refresh(i + 0.5) + gp.refresh(i + 0.5))
        whole = time.process_time() - t0
        if i:                                  # the first refresh also starts NVML
            total.append(cpu)
            fake.append(lib.cpu_seconds)
            collectors.append(whole)
    ms = lambda xs: round(statistics.median(xs) * 1000, 2)  # noqa: E731
    own = [t - f for t, f in zip(total, fake)]
    return {"gpus": gpus, "processes_per_gpu": processes, "refreshes": repeat,
            "source_cpu_ms": ms(total), "fake_driver_cpu_ms": ms(fake), "exporter_cpu_ms": ms(own),
            "exporter_cpu_ms_p95": round(sorted(own)[int(len(own) * 0.95) - 1] * 1000, 2),
            "exporter_cpu_ms_max": round(max(own) * 1000, 2),
            "collectors_and_render_cpu_ms": ms(collectors), "limit_ms": LIMIT_MS}


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m bench.gpu_refresh", description=__doc__.splitlines()[0])
    p.add_argument("--gpus", type=int, default=8)
    p.add_argument("--processes", type=int, default=50)
    p.add_argument("--repeat", type=int, default=50)
    p.add_argument("--json", action="store_true", help="print one JSON line")
    args = p.parse_args(argv)
    r = measure(args.gpus, args.processes, args.repeat)
    if args.json:
        print(json.dumps(r))
    else:
        print(f"NVIDIA source refresh, {r['gpus']} GPUs x {r['processes_per_gpu']} processes, "
              f"median of {r['refreshes']}:")
        print(f"  exporter's own CPU  {r['exporter_cpu_ms']:6.2f} ms  (p95 {r['exporter_cpu_ms_p95']} ms, "
              f"max {r['exporter_cpu_ms_max']} ms; limit {LIMIT_MS:.0f} ms)")
        print(f"  fake driver's CPU   {r['fake_driver_cpu_ms']:6.2f} ms  (C code in a real libnvidia-ml)")
        print(f"  both                {r['source_cpu_ms']:6.2f} ms")
        print(f"  nvidia + gpu_process collectors with families and rendering, fake driver included: "
              f"{r['collectors_and_render_cpu_ms']:.2f} ms")
    return 0 if r["exporter_cpu_ms"] < LIMIT_MS else 1


if __name__ == "__main__":
    sys.exit(main())
