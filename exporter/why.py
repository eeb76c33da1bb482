"""`hoofhearted why`: the answer for a person at the box, in a few lines.

Reads a running exporter's /metrics (--url, default the local one) or, when none answers and no
--url was given, collects once in-process (two refreshes a second apart, for rates). Prints the
hottest sensors, fans, CPU and GPU load, the top culprits and a one-line verdict; --json for
scripts. An unreachable --url given explicitly is one line on stderr and exit status 2.
"""
import argparse
import json
import sys
import time
import urllib.error
import urllib.request

from .textsafe import terminal

DEFAULT_URL = "http://127.0.0.1:10101"
BUSY_CORES = 0.5          # a process using this much CPU, or this share of a GPU, explains heat
BUSY_GPU = 0.2


class UsageError(Exception):
    pass


class Parser(argparse.ArgumentParser):
    def error(self, message):
        raise UsageError(message)


def parser():
    p = Parser(prog="hoofhearted why", description="Why is the fan running? Names the culprit.")
    p.add_argument("--url", help=f"exporter to ask (default {DEFAULT_URL}; when it does not answer, "
                                 "collect once here instead)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--timeout", type=float, default=3.0, help="seconds to wait for the exporter (default 3)")
    p.add_argument("--path.procfs", dest="procfs", default="/proc", help="procfs for local collection")
    p.add_argument("--path.sysfs", dest="sysfs", default="/sys", help="sysfs for local collection")
    return p


def metrics_url(url):
    base = url.rstrip("/")
    scheme_end = base.find("://")
    if scheme_end < 0:
        base = "http://" + base
        scheme_end = 4
    return base if "/" in base[scheme_end + 3:] else base + "/metrics"


def fetch(url, timeout):
    with urllib.request.urlopen(metrics_url(url), timeout=timeout) as r:
        return r.read().decode("utf-8", "replace")


def collect_locally(procfs="/proc", sysfs="/sys", pause=1.0):
    """Exposition text from the default collectors, refreshed twice for rates."""
    from . import collectors, config, render

    cfg = config.defaults()
    cfg["paths"]["procfs"], cfg["paths"]["sysfs"] = procfs, sysfs
    built = collectors.build(cfg)
    families = {}
    try:
        for i in range(2):
            if i:
                time.sleep(pause)
            for c in built:
                try:
                    families[c.name] = c.refresh(time.monotonic())
                except Exception:      # one broken source must not hide the others
                    families.pop(c.name, None)
    finally:
        for c in built:
            try:
                c.close()
            except Exception:
                pass
    return render.text([f for fams in families.values() for f in fams]).decode("utf-8")


# -- reading the exposition -------------------------------------------------------------------

def samples(text):
    """{metric name: [(labels, value)]}"""
    from prometheus_client.parser import text_string_to_metric_families

    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out.setdefault(s.name, []).append((s.labels, s.value))
    return out


def _gpu_name(gpu):
    return f"GPU{gpu}" if str(gpu).isdigit() else str(gpu)


def owner_text(owner):
    kind, sep, ident = owner.partition("/")
    return f"{kind} {ident}" if sep and kind in ("container", "pod", "lxc") else owner


def analyse(text, source=""):
    s = samples(text)
    get = lambda name: s.get(name, [])   # noqa: E731

    temps = {}
    for labels, v in get("hoofhearted_temperature_celsius"):
        temps[(labels.get("chip"), labels.get("sensor"))] = {
            "chip": labels.get("chip", ""), "sensor": labels.get("sensor", ""), "label": labels.get("label", ""),
            "celsius": v, "max_celsius": None}
    for labels, v in get("hoofhearted_temperature_max_celsius"):
        t = temps.get((labels.get("chip"), labels.get("sensor")))
        if t:
            t["max_celsius"] = v
    for labels, v in get("hoofhearted_gpu_temperature_celsius"):
        name = _gpu_name(labels.get("gpu", ""))
        temps[("gpu", name)] = {"chip": name, "sensor": "gpu", "label": name, "celsius": v, "max_celsius": None}
    hottest = sorted(temps.values(), key=lambda t: -t["celsius"])[:3]

    fans = {}
    for labels, v in get("hoofhearted_fan_speed_rpm"):
        fans[(labels.get("chip"), labels.get("fan"))] = {
            "fan": f"{labels.get('chip', '')} {labels.get('fan', '')}".strip(), "label": labels.get("label", ""),
            "rpm": v, "ratio": None}
    for labels, v in get("hoofhearted_fan_max_rpm"):
        f = fans.get((labels.get("chip"), labels.get("fan")))
        if f and v > 0:
            f["ratio"] = min(1.0, f["rpm"] / v)
    for labels, v in get("hoofhearted_fan_pwm_ratio"):
        key = (labels.get("chip"), labels.get("fan"))
        f = fans.setdefault(key, {"fan": f"{key[0]} {key[1]}", "label": "", "rpm": None, "ratio": None})
        f["ratio"] = v
    for labels, v in get("hoofhearted_gpu_fan_speed_ratio"):
        name = _gpu_name(labels.get("gpu", ""))
        fans[("gpu", name, labels.get("fan"))] = {"fan": f"{name} fan {labels.get('fan', '')}".strip(),
                                                   "label": "", "rpm": None, "ratio": v}
    fan_list = sorted(fans.values(), key=lambda f: (-(f["ratio"] or 0), -(f["rpm"] or 0)))

    cpu_usage = next((v for _, v in get("hoofhearted_cpu_usage_ratio")), None)
    cpu_cores = next((v for _, v in get("hoofhearted_cpu_cores")), None)
    gpus = {}
    for labels, v in get("hoofhearted_gpu_utilization_ratio"):
        gpus.setdefault(_gpu_name(labels.get("gpu", "")), {})["utilization_ratio"] = v
    for labels, v in get("hoofhearted_gpu_temperature_celsius"):
        gpus.setdefault(_gpu_name(labels.get("gpu", "")), {})["temperature_celsius"] = v
    gpu_list = [{"gpu": k, **v} for k, v in sorted(gpus.items())]

    procs = {}

    def proc(labels):
        pid = labels.get("pid", "")
        return procs.setdefault(pid, {"pid": int(pid) if pid.isdigit() else pid, "name": labels.get("name", ""),
                                      "user": labels.get("user", ""), "owner": labels.get("owner", ""),
                                      "cores": None, "memory_bytes": None, "gpu": {}, "gpu_memory_bytes": None})

    for labels, v in get("hoofhearted_process_cpu_usage_cores"):
        proc(labels)["cores"] = v
    for labels, v in get("hoofhearted_process_resident_memory_bytes"):
        proc(labels)["memory_bytes"] = v
    for labels, v in get("hoofhearted_gpu_process_utilization_ratio"):
        p = proc(labels)
        g = _gpu_name(labels.get("gpu", ""))
        p["gpu"][g] = max(p["gpu"].get(g, 0.0), v)
    for labels, v in get("hoofhearted_gpu_process_memory_bytes"):
        p = proc(labels)
        p["gpu_memory_bytes"] = (p["gpu_memory_bytes"] or 0) + v
    ncores = max(1.0, cpu_cores or 1.0)

    def score(p):
        return (p["cores"] or 0) / ncores + max(p["gpu"].values(), default=0.0)

    culprits = sorted(procs.values(), key=lambda p: (-score(p), -(p["memory_bytes"] or 0)))[:5]
    report = {"source": source, "temperatures": hottest, "fans": fan_list,
              "cpu": {"usage_ratio": cpu_usage, "cores": cpu_cores}, "gpus": gpu_list,
              "culprits": culprits, "process_data": bool(procs)}
    report["verdict"] = verdict(report)
    return report


# -- words ------------------------------------------------------------------------------------

def _pct(r):
    return f"{r * 100:.0f}%"


def _bytes(n):
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024


def who(p):
    parts = [f"pid {p['pid']}", p["user"]]
    if p["owner"]:
        parts.append(owner_text(p["owner"]))
    return f"{p['name']} ({', '.join(x for x in parts if x)})"


def uses(p):
    parts = []
    if p["cores"] is not None and (p["cores"] >= 0.05 or not p["gpu"]):
        parts.append(f"uses {p['cores']:.1f} cores")
    for g, share in sorted(p["gpu"].items(), key=lambda kv: -kv[1]):
        parts.append(f"{_pct(share)} of {g}")
    if not parts and p["memory_bytes"] is not None:
        parts.append(f"holds {_bytes(p['memory_bytes'])}")
    if len(parts) > 1:
        parts[-1] = "and " + parts[-1]
    text = ", ".join(parts) if len(parts) > 2 else " ".join(parts)
    return text if text.startswith("uses") else "uses " + text


def _load(report):
    bits = []
    cpu = report["cpu"]
    if cpu["usage_ratio"] is not None:
        bits.append(f"CPU {_pct(cpu['usage_ratio'])} busy")
    for g in report["gpus"]:
        if g.get("utilization_ratio") is not None:
            bits.append(f"{g['gpu']} {_pct(g['utilization_ratio'])} busy")
    return ", ".join(bits)


def verdict(report):
    fans = report["fans"]
    fan_ratio = max((f["ratio"] for f in fans if f["ratio"] is not None), default=None)
    fan_rpm = max((f["rpm"] for f in fans if f["rpm"] is not None), default=None)
    if fan_ratio is not None:
        lead = f"Fans at {_pct(fan_ratio)}"
    elif fan_rpm is not None:
        lead = f"Fans at {fan_rpm:.0f} rpm"
    else:
        lead = None
    load = _load(report)
    if not report["process_data"]:
        head = lead or "No fan readings"
        return f"{head}{f' ({load})' if load else ''}; no per-process data (is the process collector enabled?)."
    top = report["culprits"][0]
    busy = (top["cores"] or 0) >= BUSY_CORES or max(top["gpu"].values(), default=0.0) >= BUSY_GPU
    if busy:
        if lead:
            return f"{lead} because {who(top)} {uses(top)}."
        return f"No fan readings; the load comes from {who(top)}, which {uses(top)}{f' ({load})' if load else ''}."
    idle = f"the machine is mostly idle{f' ({load})' if load else ''}"
    tail = f"busiest is {who(top)}, which {uses(top)}."
    if lead:
        return f"{lead} and {idle}; {tail}"
    return f"No fan readings and {idle}; {tail}"


def lines(report):
    out = []
    if report["temperatures"]:
        parts = []
        for t in report["temperatures"]:
            name = f"{t['chip']} {t['label'] or t['sensor']}".strip() if t["sensor"] != "gpu" else t["chip"]
            mx = f" (max {t['max_celsius']:.0f} °C)" if t["max_celsius"] else ""
            parts.append(f"{name} {t['celsius']:.0f} °C{mx}")
        out.append("Hottest: " + "; ".join(parts))
    else:
        out.append("Hottest: no temperature readings")
    if report["fans"]:
        parts = []
        for f in report["fans"][:4]:
            name = f["fan"] + (f" ({f['label']})" if f["label"] else "")
            val = [f"{f['rpm']:.0f} rpm"] if f["rpm"] is not None else []
            if f["ratio"] is not None:
                val.append(_pct(f["ratio"]))
            parts.append(f"{name} {', '.join(val)}")
        out.append("Fans: " + "; ".join(parts))
    else:
        out.append("Fans: no fan readings")
    cpu = report["cpu"]
    load = []
    cores = f" of {cpu['cores']:.0f} cores" if cpu["cores"] else ""
    if cpu["usage_ratio"] is not None:
        load.append(f"CPU {_pct(cpu['usage_ratio'])} busy{cores}")
    elif cpu["cores"]:
        load.append(f"CPU busy share not measured yet{cores}")
    for g in report["gpus"]:
        bits = [f"{_pct(g['utilization_ratio'])} busy"] if g.get("utilization_ratio") is not None else []
        if g.get("temperature_celsius") is not None:
            bits.append(f"{g['temperature_celsius']:.0f} °C")
        load.append(f"{g['gpu']} {', '.join(bits)}".strip())
    if not report["gpus"]:
        load.append("no GPU seen")
    out.append("Load: " + "; ".join(load))
    if report["culprits"]:
        out.append("Top processes:")
        for p in report["culprits"]:
            cores = f"{p['cores']:.2f} cores" if p["cores"] is not None else "- cores"
            gpu = " ".join(f"{g} {_pct(v)}" for g, v in p["gpu"].items())
            owner = owner_text(p["owner"]) if p["owner"] else "-"
            out.append(f"  {p['name']:<16} pid {p['pid']:<8} {p['user']:<10} {owner:<24} {cores:>11}  "
                       f"{_bytes(p['memory_bytes']):>10}{'  ' + gpu if gpu else ''}")
    out.append(report["verdict"])
    return out


def main(argv=None):
    try:
        args = parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    except UsageError as e:
        print(f"hoofhearted why: error: {e}", file=sys.stderr)
        return 2
    if args.timeout <= 0:
        print("hoofhearted why: error: --timeout: expected a positive number of seconds", file=sys.stderr)
        return 2
    url = args.url or DEFAULT_URL
    try:
        text, source = fetch(url, args.timeout), metrics_url(url)
    except (OSError, urllib.error.URLError, ValueError) as e:
        if args.url:
            reason = getattr(e, "reason", None) or e
            reason = getattr(reason, "strerror", None) or reason
            print(terminal(f"hoofhearted why: error: cannot read {metrics_url(args.url)}: {reason}"),
                  file=sys.stderr)
            return 2
        text, source = collect_locally(args.procfs, args.sysfs), "local collection"
    try:
        report = analyse(text, source)
    except ValueError as e:
        print(terminal(f"hoofhearted why: error: {source} did not answer with metrics: {e}"), file=sys.stderr)
        return 2
    try:
        if args.json:
            print(json.dumps(report, indent=2))
        else:
            print("\n".join(terminal(line) for line in lines(report)))
        sys.stdout.flush()
    except BrokenPipeError:     # `hoofhearted why | head`
        sys.stdout = None
    return 0
