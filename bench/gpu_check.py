"""The exporter beside nvidia-smi on a machine with NVIDIA GPUs: every shared reading compared.

    make gpu-check                      # starts the exporter from this checkout, writes gpu-check.md
    python -m bench.gpu_check --url http://127.0.0.1:10101 --out report.md   # a running exporter

It runs `nvidia-smi --query-gpu` and `--query-compute-apps` right after scraping /metrics and
compares each reading both report, per GPU (joined on the UUID), within a tolerance for readings
that move between the two reads (temperature, power, clocks, utilisation). The report lists every
reading as agree, differ, missing (nvidia-smi has it, the exporter not), extra (the exporter has
it, nvidia-smi says N/A) or n/a (neither). Exit status: 0 when nothing differs or is missing, 1
otherwise, 2 when there is nothing to compare (no nvidia-smi, no GPU).

The clock-event time counters are compared too: NVML gives nanoseconds where nvidia-smi prints
microseconds, so a unit mistake shows here first.
"""
import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

from .exporters import parse_metrics, start_hoofhearted
from .procs import Reaper

MIB = 1024 * 1024

# (nvidia-smi field, exporter metric, extra labels, factor from the exporter's unit to nvidia-smi's,
#  absolute tolerance, relative tolerance)
CHECKS = [
    ("temperature.gpu", "hoofhearted_gpu_temperature_celsius", {}, 1, 2, 0),
    ("temperature.memory", "hoofhearted_gpu_sensor_temperature_celsius", {"sensor": "mem"}, 1, 2, 0),
    ("temperature.gpu.tlimit", "hoofhearted_gpu_temperature_margin_celsius", {}, 1, 2, 0),
    ("utilization.gpu", "hoofhearted_gpu_utilization_ratio", {}, 100, 20, 0),
    ("utilization.memory", "hoofhearted_gpu_memory_utilization_ratio", {}, 100, 20, 0),
    ("utilization.encoder", "hoofhearted_gpu_encoder_utilization_ratio", {}, 100, 20, 0),
    ("utilization.decoder", "hoofhearted_gpu_decoder_utilization_ratio", {}, 100, 20, 0),
    ("memory.total", "hoofhearted_gpu_memory_total_bytes", {}, 1 / MIB, 1, 0),
    ("memory.used", "hoofhearted_gpu_memory_used_bytes", {}, 1 / MIB, 256, 0.05),
    ("power.draw", "hoofhearted_gpu_power_watts", {}, 1, 10, 0.15),
    ("enforced.power.limit", "hoofhearted_gpu_power_limit_watts", {}, 1, 1, 0),
    ("power.default_limit", "hoofhearted_gpu_power_default_limit_watts", {}, 1, 1, 0),
    ("power.max_limit", "hoofhearted_gpu_power_max_limit_watts", {}, 1, 1, 0),
    ("fan.speed", "hoofhearted_gpu_fan_speed_ratio", {"fan": "0"}, 100, 5, 0),
    ("pstate", "hoofhearted_gpu_performance_state", {}, 1, 2, 0),
    ("clocks.current.graphics", "hoofhearted_gpu_clock_hertz", {"clock": "graphics"}, 1e-6, 50, 0.15),
    ("clocks.current.sm", "hoofhearted_gpu_clock_hertz", {"clock": "sm"}, 1e-6, 50, 0.15),
    ("clocks.current.memory", "hoofhearted_gpu_clock_hertz", {"clock": "memory"}, 1e-6, 50, 0.15),
    ("clocks.current.video", "hoofhearted_gpu_clock_hertz", {"clock": "video"}, 1e-6, 50, 0.15),
    ("pcie.link.gen.current", "hoofhearted_gpu_pcie_link_generation", {}, 1, 1, 0),   # drops at idle
    ("pcie.link.gen.max", "hoofhearted_gpu_pcie_link_max_generation", {}, 1, 0, 0),
    ("pcie.link.width.current", "hoofhearted_gpu_pcie_link_width", {}, 1, 0, 0),
    ("pcie.link.width.max", "hoofhearted_gpu_pcie_link_max_width", {}, 1, 0, 0),
    ("mig.mode.current", "hoofhearted_gpu_mig_enabled", {}, 1, 0, 0),
    ("ecc.errors.corrected.volatile.total", "hoofhearted_gpu_ecc_errors_total",
     {"error": "corrected", "counter": "volatile"}, 1, 0, 0),
    ("ecc.errors.uncorrected.volatile.total", "hoofhearted_gpu_ecc_errors_total",
     {"error": "uncorrected", "counter": "volatile"}, 1, 0, 0),
    ("ecc.errors.corrected.aggregate.total", "hoofhearted_gpu_ecc_errors_total",
     {"error": "corrected", "counter": "aggregate"}, 1, 0, 0),
    ("ecc.errors.uncorrected.aggregate.total", "hoofhearted_gpu_ecc_errors_total",
     {"error": "uncorrected", "counter": "aggregate"}, 1, 0, 0),
    ("retired_pages.single_bit_ecc.count", "hoofhearted_gpu_retired_pages", {"cause": "single_bit"}, 1, 0, 0),
    ("retired_pages.double_bit.count", "hoofhearted_gpu_retired_pages", {"cause": "double_bit"}, 1, 0, 0),
    ("retired_pages.pending", "hoofhearted_gpu_retired_pages_pending", {}, 1, 0, 0),
    ("remapped_rows.correctable", "hoofhearted_gpu_remapped_rows", {"cause": "correctable"}, 1, 0, 0),
    ("remapped_rows.uncorrectable", "hoofhearted_gpu_remapped_rows", {"cause": "uncorrectable"}, 1, 0, 0),
    ("remapped_rows.pending", "hoofhearted_gpu_remapped_rows_pending", {}, 1, 0, 0),
    ("remapped_rows.failure", "hoofhearted_gpu_remapped_rows_failed", {}, 1, 0, 0),
    # counters that grow between the two reads: 2 s of slack
    ("clocks_event_reasons_counters.sw_power_cap", "hoofhearted_gpu_clock_event_seconds_total",
     {"reason": "sw_power_cap"}, 1e6, 2e6, 0.01),
    ("clocks_event_reasons_counters.sw_thermal_slowdown", "hoofhearted_gpu_clock_event_seconds_total",
     {"reason": "sw_thermal_slowdown"}, 1e6, 2e6, 0.01),
    ("clocks_event_reasons_counters.sync_boost", "hoofhearted_gpu_clock_event_seconds_total",
     {"reason": "sync_boost"}, 1e6, 2e6, 0.01),
    ("clocks_event_reasons_counters.hw_thermal_slowdown", "hoofhearted_gpu_clock_event_seconds_total",
     {"reason": "hw_thermal_slowdown"}, 1e6, 2e6, 0.01),
    ("clocks_event_reasons_counters.hw_power_brake_slowdown", "hoofhearted_gpu_clock_event_seconds_total",
     {"reason": "hw_power_brake_slowdown"}, 1e6, 2e6, 0.01),
]
GPU_FIELDS = ["uuid", "index", "name"] + [c[0] for c in CHECKS]
APP_FIELDS = ["gpu_uuid", "pid", "process_name", "used_gpu_memory"]
APP_TOLERANCE_MIB = 64

_NA = re.compile(r"^\[?(N/A|Not Supported|Insufficient Permissions|Unknown Error|Not Available"
                 r"|Requested functionality has been deprecated|Not available in WDDM driver model)\]?$", re.I)
_WORDS = {"enabled": 1, "disabled": 0, "yes": 1, "no": 0, "active": 1, "not active": 0}


@dataclass
class Result:
    gpu: str
    reading: str
    theirs: float = None
    ours: float = None
    status: str = "n/a"            # agree, differ, missing, extra, n/a
    note: str = ""


def smi_number(raw):
    """'19818 MiB' -> 19818.0, 'P2' -> 2, 'Enabled' -> 1, '[N/A]' -> None."""
    if raw is None:
        return None
    text = raw.strip()
    if not text or _NA.match(text):
        return None
    if text.lower() in _WORDS:
        return float(_WORDS[text.lower()])
    m = re.match(r"^P(\d+)$", text)
    if m:
        return float(m.group(1))
    m = re.match(r"^(-?[0-9.]+)", text)
    return float(m.group(1)) if m else None


def parse_csv(text):
    """nvidia-smi --format=csv output -> [{field: raw text}], field names without their units."""
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines:
        return []
    header = [h.strip().split(" [")[0] for h in lines[0].split(",")]
    return [dict(zip(header, (v.strip() for v in line.split(", ")))) for line in lines[1:]]


def lookup(metrics, name, labels):
    for have, value in metrics.get(name, ()):
        if all(have.get(k) == v for k, v in labels.items()):
            return value
    return None


def _close(theirs, ours, absolute, relative):
    return abs(theirs - ours) <= max(absolute, relative * abs(theirs)) + 1e-9


def compare(gpus, apps, metrics):
    """[Result] for every GPU row of --query-gpu, and every process of --query-compute-apps."""
    results = []
    for row in gpus:
        uuid = row.get("uuid", "")
        gpu = f"{row.get('index', '?')} {uuid}"
        for field, metric, extra, factor, absolute, relative in CHECKS:
            if field not in row:
                continue                 # this nvidia-smi does not know the field
            theirs = smi_number(row[field])
            value = lookup(metrics, metric, dict(extra, uuid=uuid))
            ours = None if value is None else value * factor
            r = Result(gpu, field, theirs, ours)
            if theirs is None and ours is None:
                r.status = "n/a"
            elif theirs is None:
                r.status = "extra"
            elif ours is None:
                r.status = "missing"
            else:
                r.status = "agree" if _close(theirs, ours, absolute, relative) else "differ"
            results.append(r)
    shown = {(labels.get("uuid"), labels.get("pid"))
             for labels, _ in metrics.get("hoofhearted_gpu_process_memory_bytes", ())}
    counted = {labels.get("uuid") for labels, _ in metrics.get("hoofhearted_gpu_processes", ())}
    for app in apps:
        uuid, pid = app.get("gpu_uuid", ""), app.get("pid", "")
        theirs = smi_number(app.get("used_gpu_memory"))
        value = lookup(metrics, "hoofhearted_gpu_process_memory_bytes", {"uuid": uuid, "pid": pid})
        ours = None if value is None else value / MIB
        r = Result(uuid, f"process {pid} ({app.get('process_name', '')}) memory", theirs, ours)
        if theirs is None and ours is None:
            r.status = "n/a" if (uuid, pid) in shown or uuid in counted else "missing"
        elif ours is None:
            r.status, r.note = "missing", "not among the exporter's top processes?"
        elif theirs is None:
            r.status = "extra"
        else:
            r.status = "agree" if abs(theirs - ours) <= APP_TOLERANCE_MIB else "differ"
        results.append(r)
    return results


def _fmt(v):
    if v is None:
        return "-"
    return f"{v:.6g}"


def report(results, header=""):
    counts = {}
    for r in results:
        counts[r.status] = counts.get(r.status, 0) + 1
    lines = ["# gpu-check", ""]
    if header:
        lines += [header, ""]
    lines.append("Summary: " + ", ".join(f"{counts[k]} {k}" for k in ("agree", "differ", "missing", "extra", "n/a")
                                         if k in counts))
    lines += ["", "| GPU | reading | nvidia-smi | exporter | result |", "|---|---|---|---|---|"]
    for r in sorted(results, key=lambda r: (r.status == "agree", r.gpu, r.reading)):
        note = f" ({r.note})" if r.note else ""
        lines.append(f"| {r.gpu} | {r.reading} | {_fmt(r.theirs)} | {_fmt(r.ours)} | {r.status}{note} |")
    return "\n".join(lines) + "\n"


def failed(results):
    return any(r.status in ("differ", "missing") for r in results)


# -- on a real machine -------------------------------------------------------------------------------

def known_fields(smi):
    """The --query-gpu fields this nvidia-smi knows (older ones reject unknown fields outright)."""
    out = subprocess.run([smi, "--help-query-gpu"], capture_output=True, text=True, timeout=30).stdout
    known = set(re.findall(r'^"([\w.]+)"', out, re.M))
    return [f for f in GPU_FIELDS if f in known] if known else GPU_FIELDS


def run_smi(smi, fields, what="gpu"):
    cmd = [smi, f"--query-{what}={','.join(fields)}", "--format=csv"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {(r.stdout + r.stderr).strip()[:300]}")
    return parse_csv(r.stdout)


def scrape(url, user=None, password=None):
    import requests
    auth = (user, password) if user else None
    r = requests.get(url.rstrip("/") + "/metrics", timeout=30, auth=auth)
    r.raise_for_status()
    return r.text


def main(argv=None):
    ap = argparse.ArgumentParser(prog="gpu-check", description=__doc__.split("\n\n")[0])
    ap.add_argument("--url", help="a running exporter (default: start this checkout's on a loopback port)")
    ap.add_argument("--nvidia-smi", default=shutil.which("nvidia-smi") or "nvidia-smi", dest="smi")
    ap.add_argument("--out", default="gpu-check.md", help="where to write the report (default gpu-check.md)")
    ap.add_argument("--settle", type=float, default=6.0,
                    help="seconds to let a started exporter refresh every tier before scraping")
    args = ap.parse_args(argv)
    if not shutil.which(args.smi) and not os.path.exists(args.smi):
        print(f"gpu-check: {args.smi} not found: nothing to compare on this machine", file=sys.stderr)
        return 2
    reaper, tmp = Reaper(), tempfile.mkdtemp(prefix="gpu-check-")
    try:
        fields = known_fields(args.smi)
        if args.url:
            url = args.url
        else:
            url = start_hoofhearted(reaper, tmp, own_env=True).url   # configured as the user's
            time.sleep(args.settle)
        scrape(url)                     # the first read primes rates and process samples
        time.sleep(2.0)
        text = scrape(url)
        gpus = run_smi(args.smi, fields)
        apps = run_smi(args.smi, APP_FIELDS, "compute-apps")
    except (RuntimeError, OSError, subprocess.SubprocessError) as e:
        print(f"gpu-check: {e}", file=sys.stderr)
        return 2
    finally:
        reaper.kill_all()
        shutil.rmtree(tmp, ignore_errors=True)
    if not gpus:
        print("gpu-check: nvidia-smi lists no GPU: nothing to compare", file=sys.stderr)
        return 2
    others = [t for t in ("amd-smi", "intel_gpu_top") if shutil.which(t)]
    driver = subprocess.run([args.smi, "--query-gpu=driver_version", "--format=csv,noheader"],
                            capture_output=True, text=True, timeout=30).stdout.split("\n")[0].strip()
    header = f"Exporter {url}, nvidia-smi driver {driver or '?'}, {len(gpus)} GPU(s)."
    if others:
        header += f" Also found {', '.join(others)}: not compared yet."
    results = compare(gpus, apps, parse_metrics(text))
    body = report(results, header)
    with open(args.out, "w") as f:
        f.write(body)
    sys.stdout.write(body)
    return 1 if failed(results) else 0


if __name__ == "__main__":
    sys.exit(main())
