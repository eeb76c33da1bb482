"""Turn raw benchmark runs into the markdown table of bench/results.md."""
import os
import re
import statistics

BEGIN = "<!-- bench:begin (written by `make bench`; edit outside these markers) -->"
END = "<!-- bench:end -->"
HH, NODE, PE = "hoofhearted", "node_exporter", "process-exporter"
MB = 1e6


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def _version(line):
    """'x, version 1.5.0 (branch: debian/sid, revision: 1.5.0-1+b6)' -> '1.5.0 (1.5.0-1+b6)'."""
    m = re.search(r"version (\S*) \(.*revision: ([^)]+)\)", line)
    if not m:
        return line
    return f"{m.group(1)} ({m.group(2)})" if m.group(1) else m.group(2)   # process-exporter has no version


def machine_line(m):
    return (f"{m['cores']} cores, {m['cpu_model']}, Linux {m['kernel']}, Python {m['python']}; "
            f"hoofhearted {m['hoofhearted']}, node_exporter {_version(m['node_exporter'])}, "
            f"process-exporter {_version(m['process_exporter'])}")


def fmt(v, scale=1.0, digits=2, suffix=""):
    if v is None:
        return "n/a"
    return f"{v * scale:.{digits}f}{suffix}"


def _exp(run, name, key):
    return run["exporters"][name].get(key)


def per_run_ratios(run):
    """Ratios hoofhearted/anchor inside one run (the exporters shared the machine at that moment)."""
    hh, node, pe = (run["exporters"][n] for n in (HH, NODE, PE))
    refresh = run.get("refresh") or {}
    src, col = refresh.get("source") or {}, refresh.get("collector") or {}
    pe_cpu = run["pe_scrape_cpu"]
    anchors_cpu = node["cpu_per_min"] + pe["cpu_per_min"]
    return {
        "p99_vs_node": hh["p99"] / node["p99"],
        "p50_vs_node": hh["p50"] / node["p50"],
        "cpu_vs_anchors": hh["cpu_per_min"] / anchors_cpu if anchors_cpu else None,
        "cpu_core_pct": hh["cpu_per_min"] / 60 * 100,
        "source_cpu": src.get("cpu"),
        "source_cold_cpu": src.get("cold_cpu"),
        "source_vs_pe": src["cpu"] / pe_cpu if src and pe_cpu else None,
        "collector_cpu": col.get("cpu"),
        "collector_cold_cpu": col.get("cold_cpu"),
        "collector_vs_pe": col["cpu"] / pe_cpu if col and pe_cpu else None,
        "pe_scrape_cpu": pe_cpu,
        "peak_rss": hh["peak_rss"],
        "burner": (run.get("burner") or {}).get("seconds"),
        "burner_cores": (run.get("burner") or {}).get("cores"),
    }


def disturbed(run):
    """Whether other work changed the number of processes by more than 10 % during the run."""
    seen = processes_seen(run)
    return max(seen) - min(seen) > 0.1 * min(seen) + 50


def processes_seen(run):
    """Process counts taken during a run, the refresh-cost pass's own count included."""
    seen = list(run.get("processes_seen") or [run["processes"]])
    src = (run.get("refresh") or {}).get("source") or {}
    if src.get("processes"):
        seen.append(src["processes"])
    return seen


def summarise(results):
    """{extra: {"exporters": {name: {key: median}}, "om": {...}, "ratios": {key: median}}}

    Runs disturbed by other work (see `disturbed`) are left out while undisturbed ones remain.
    """
    out = {}
    for extra, all_runs in results.items():
        runs = [r for r in all_runs if not disturbed(r)] or all_runs
        exporters = {}
        for name in (HH, NODE, PE):
            keys = runs[0]["exporters"][name].keys()
            exporters[name] = {k: median([_exp(r, name, k) for r in runs]) for k in keys}
        ratios = [per_run_ratios(r) for r in runs]
        out[int(extra)] = {
            "runs": len(runs),
            "left_out": [sorted(processes_seen(r)) for r in all_runs if r not in runs],
            "processes": median([r["processes"] for r in runs]),
            "exporters": exporters,
            "om": {k: median([r["hoofhearted_openmetrics"][k] for r in runs]) for k in ("p50", "p99")},
            "ratios": {k: median([x[k] for x in ratios]) for k in ratios[0]},
            "ratio_range": {k: (min(v), max(v)) for k in ratios[0]
                            if (v := [x[k] for x in ratios if x[k] is not None])},
            "durations": {k: median([r.get("durations", {}).get(k) for r in runs])
                          for k in runs[0].get("durations", {})},
        }
    return out


def criteria(summary):
    """(passed: True/False/None, text) for each 'Done when' line of the benchmark issue."""
    def at(n, key):
        return summary.get(n, {}).get("ratios", {}).get(key)

    out = []
    p99 = {n: at(n, "p99_vs_node") for n in (0, 1000, 5000)}
    ok = None if None in p99.values() else all(v <= 0.3 for v in p99.values())
    out.append((ok, "scrape p99 <= 0.3 x node_exporter's at 0 / 1,000 / 5,000 extra processes: "
                + " / ".join(fmt(v, digits=3) for v in p99.values())))
    r = at(1000, "source_vs_pe")
    out.append((None if r is None else r <= 0.1,
                "one process-source refresh at 1,000 <= 0.1 x one process-exporter scrape's CPU: "
                f"{fmt(r, digits=3)}"
                f" ({fmt(at(1000, 'source_cpu'), 1e3, 1)} ms vs {fmt(at(1000, 'pe_scrape_cpu'), 1e3, 1)} ms; "
                f"whole collector refresh with rendering: {fmt(at(1000, 'collector_vs_pe'), digits=3)}, "
                f"{fmt(at(1000, 'collector_cpu'), 1e3, 1)} ms)"))
    c, pct = at(1000, "cpu_vs_anchors"), at(1000, "cpu_core_pct")
    out.append((None if c is None else (c <= 0.2 and pct < 2.0),
                f"own CPU at 1,000 <= 0.2 x (node_exporter + process-exporter) and < 2 % of a core: "
                f"{fmt(c, digits=3)}, {fmt(pct, digits=2)} %"))
    rss = at(5000, "peak_rss")
    out.append((None if rss is None else rss < 40 * MB, f"peak RSS at 5,000 < 40 MB: {fmt(rss, 1 / MB, 1)} MB"))
    burn = {n: s["ratios"]["burner"] for n, s in summary.items()}
    ok = None if not burn or None in burn.values() else all(v <= 2.5 for v in burn.values())
    out.append((ok, "a CPU burner appears in /metrics within 2.5 s: "
                + ", ".join(f"{fmt(v, digits=2)} s at +{n}" for n, v in burn.items())))
    return out


def render(data):
    m = data["machine"]
    summary = summarise({int(k): v for k, v in data["results"].items() if v})
    a = m["args"]
    lines = [f"Measured {m['date']} on {machine_line(m)}.",
             f"Load average before / after: {' '.join(f'{x:.2f}' for x in m['loadavg_start'])} / "
             f"{' '.join(f'{x:.2f}' for x in m['loadavg_end'])}. Median of {a['runs']} run(s) per row "
             f"(less where a disturbed run is left out, see below); "
             f"latency over {a['scrapes']} sequential scrapes (process-exporter stops after "
             f"{a['anchor_seconds']:.0f} s: see 'scrapes'); CPU over {a['cpu_seconds']:.0f} s with every "
             f"exporter scraped every {a['interval']:.0f} s.", "",
             "| extra procs | exporter | scrape p50 ms | p99 ms | scrapes | bytes (gzip) | series "
             "| CPU ms/scrape | CPU s/min, scraped every 2 s | % of a core | every-2 s scrape p50 / max ms "
             "| peak RSS MB |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for n, s in sorted(summary.items()):
        for name in (HH, NODE, PE):
            e = s["exporters"][name]
            lines.append(
                f"| +{n} ({s['processes']:.0f}) | {name} | {fmt(e['p50'], 1e3)} | {fmt(e['p99'], 1e3)} "
                f"| {e['scrapes']:.0f} | {e['bytes'] / 1e3:.1f} k ({e['wire_bytes'] / 1e3:.1f} k) "
                f"| {e['series']:.0f} "
                f"| {fmt(e['cpu_per_scrape'], 1e3, 2)} | {fmt(e['cpu_per_min'], 1, 3)} "
                f"| {fmt(e['cpu_per_min'], 100 / 60, 2)} "
                f"| {fmt(e.get('window_p50'), 1e3)} / {fmt(e.get('window_max'), 1e3)} "
                f"| {fmt(e['peak_rss'], 1 / MB, 1)} |")
        lines.append(f"| +{n} | hoofhearted, Prometheus' Accept (OpenMetrics) | {fmt(s['om']['p50'], 1e3)} "
                     f"| {fmt(s['om']['p99'], 1e3)} | | | | | | | | |")
    lines += ["", "Ratios hoofhearted / anchor, each taken inside one run, median over runs:", "",
              "| extra procs | p50 / node | p99 / node | CPU / (node + process-exporter) | own CPU % of a core "
              "| process source pass CPU ms (first) | process collector refresh CPU ms (first) "
              "| process-exporter scrape CPU ms | source / scrape | collector / scrape "
              "| burner appears s (cores) |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for n, s in sorted(summary.items()):
        r = s["ratios"]
        lines.append(
            f"| +{n} | {fmt(r['p50_vs_node'], digits=3)} | {fmt(r['p99_vs_node'], digits=3)} "
            f"| {fmt(r['cpu_vs_anchors'], digits=3)} | {fmt(r['cpu_core_pct'], digits=2)} "
            f"| {fmt(r['source_cpu'], 1e3, 2)} ({fmt(r['source_cold_cpu'], 1e3, 1)}) "
            f"| {fmt(r['collector_cpu'], 1e3, 2)} ({fmt(r['collector_cold_cpu'], 1e3, 1)}) "
            f"| {fmt(r['pe_scrape_cpu'], 1e3, 1)} | {fmt(r['source_vs_pe'], digits=3)} "
            f"| {fmt(r['collector_vs_pe'], digits=3)} "
            f"| {fmt(r['burner'], digits=2)} ({fmt(r['burner_cores'], digits=2)}) |")
    for n, s in sorted(summary.items()):
        for seen in s["left_out"]:
            lines.append(f"- A run at +{n} is left out: other work changed the process count during it "
                         f"({seen[0]} to {seen[-1]}).")
    lines += ["", "hoofhearted's own refresh durations (wall, from its /metrics, median):", ""]
    for n, s in sorted(summary.items()):
        d = ", ".join(f"{k} {v * 1e3:.2f} ms" for k, v in s["durations"].items() if v is not None)
        lines.append(f"- +{n}: {d}")
    lines += ["", "Done when (issue targets):", ""]
    for ok, text in criteria(summary):
        mark = {True: "PASS", False: "FAIL", None: "not measured"}[ok]
        lines.append(f"- **{mark}** {text}")
    if data.get("live_clients"):
        lines += ["", "Ten live pages following `/api/live` (`python -m bench.live_clients`):", "", "```",
                  data["live_clients"], "```"]
    if data.get("gpu_refresh"):
        lines += ["", "NVIDIA refresh on fake GPUs (`python -m bench.gpu_refresh`):", "", "```",
                  data["gpu_refresh"], "```"]
    if data.get("bmc_refresh"):
        lines += ["", "BMC collector refresh on ipmi_sim (`python -m bench.bmc_refresh`; hoofhearted read the "
                  "simulated BMC during the runs above):", "", "```", data["bmc_refresh"], "```"]
    return "\n".join(lines) + "\n"


def write(path, text):
    """Replace the generated block of the results file, keeping the notes written around it."""
    block = f"{BEGIN}\n{text}{END}\n"
    old = ""
    if os.path.exists(path):
        with open(path) as f:
            old = f.read()
    if BEGIN in old and END in old:
        head, rest = old.split(BEGIN, 1)
        new = head + block + rest.split(END, 1)[1].lstrip("\n")
    else:
        new = "# Benchmark results\n\n" + block + ("\n" + old if old else "")
    with open(path, "w") as f:
        f.write(new)
