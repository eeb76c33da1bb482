"""`hoofhearted why`: the verdict for a person at the box, in a few lines.

Asks a running exporter for its verdict (`/api/verdict` at --url, default the local one) or, when
none answers and no --url was given, collects here with the same collectors and the same verdict
code (two refreshes a second apart, for rates) and says so. --json prints the verdict object.
An explicit --url that does not answer, or answers with something that is not a hoofhearted
verdict, is one line on stderr and exit status 2.
"""
import argparse
import http.client
import json
import os
import sys
import time
import urllib.error
import urllib.request

from .textsafe import terminal
from .verdict import bytes_text, clean, gpu_name, owner_text, pct

DEFAULT_URL = "http://127.0.0.1:10101"
LISTEN_ENV = "HOOFHEARTED_WEB_LISTEN_ADDRESS"   # the exporter's own setting: where to find it


def default_url(environ=None):
    addr = (os.environ if environ is None else environ).get(LISTEN_ENV, "").strip()
    if not addr:
        return DEFAULT_URL
    host, _, port = addr.rpartition(":")
    if host in ("", "0.0.0.0"):
        host = "127.0.0.1"
    elif host == "[::]":
        host = "[::1]"
    return f"http://{host}:{port}"


class UsageError(Exception):
    pass


class NotHoofhearted(Exception):
    pass


class Parser(argparse.ArgumentParser):
    def error(self, message):
        raise UsageError(message)


def parser():
    p = Parser(prog="hoofhearted why", description="Why is the fan running? Names the culprit.")
    p.add_argument("--url", help=f"exporter to ask (default {DEFAULT_URL}, or ${LISTEN_ENV}; when it does "
                                 "not answer, measure here instead)")
    p.add_argument("--json", action="store_true", help="print the verdict as one JSON object")
    p.add_argument("--timeout", type=float, default=3.0, help="seconds to wait for the exporter (default 3)")
    p.add_argument("--path.procfs", dest="procfs", default="/proc", help="procfs for local collection")
    p.add_argument("--path.sysfs", dest="sysfs", default="/sys", help="sysfs for local collection")
    return p


def verdict_url(url):
    """The /api/verdict URL of an exporter given as host:port, a base URL or its /metrics URL."""
    base = url.strip()
    if "://" not in base:
        base = "http://" + base
    scheme, rest = base.split("://", 1)
    host, _, path = rest.partition("/")
    path = path.rstrip("/")
    for tail in ("metrics", "api/verdict"):
        if path == tail or path.endswith("/" + tail):
            path = path[:-len(tail)].rstrip("/")
    return f"{scheme}://{host}/{path + '/' if path else ''}api/verdict"


def fetch(url, timeout):
    """The verdict of the exporter at url. NotHoofhearted when something else answers."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            body = r.read(4 * 1024 * 1024)
    except urllib.error.HTTPError as e:
        if e.code == 503:
            raise NotHoofhearted("the exporter has no verdict yet (just started?): try again in a few seconds") \
                from None
        raise NotHoofhearted(f"HTTP {e.code}: this is not a hoofhearted exporter") from None
    try:
        report = json.loads(body)
    except ValueError:
        raise NotHoofhearted("this is not a hoofhearted exporter (no verdict JSON)") from None
    if not isinstance(report, dict) or not isinstance(report.get("sentence"), str) or "culprits" not in report:
        raise NotHoofhearted("this is not a hoofhearted exporter (not a verdict)")
    return report


def collect_locally(procfs="/proc", sysfs="/sys", pause=1.0):
    """The verdict from the default collectors run here, refreshed twice for rates."""
    from . import attribution, collectors, config, verdict
    from .pipeline import attribute

    cfg = config.defaults()
    cfg["paths"]["procfs"], cfg["paths"]["sysfs"] = procfs, sysfs
    built = collectors.build(cfg)
    ok = {}
    try:
        for i in range(2):
            if i:
                time.sleep(pause)
            now = time.monotonic()
            for c in built:    # in declaration order: a follower reads its leader's /proc pass
                try:
                    c.refresh(now)
                    ok[c.name] = c
                except Exception:      # one broken source must not hide the others
                    ok.pop(c.name, None)
        fresh = [c for c in built if c.name in ok]
        power = attribute(attribution.Attributor(), fresh)
        return verdict.compute(fresh, reason=verdict.missing_sensors_reason(sysfs, procfs), power=power)
    finally:
        for c in built:
            try:
                c.close()
            except Exception:
                pass


# -- lines ----------------------------------------------------------------------------------

def lines(report):
    out = []
    if report["temperatures"]:
        parts = []
        for t in report["temperatures"][:3]:
            mx = f" (max {t['max_celsius']:.0f} °C)" if t.get("max_celsius") else ""
            parts.append(f"{clean(t['name'])} {t['celsius']:.0f} °C{mx}")
        out.append("Hottest: " + "; ".join(parts))
    else:
        out.append("Hottest: no temperature readings")
    if report["fans"]:
        parts = []
        for f in report["fans"][:4]:
            name = clean(f["name"]) + (f" ({clean(f['label'])})" if f.get("label") else "")
            val = [f"{f['rpm']:.0f} rpm"] if f.get("rpm") is not None else []
            if f.get("ratio") is not None:
                val.append(pct(f["ratio"]))
            parts.append(f"{name} {', '.join(val)}")
        out.append("Fans: " + "; ".join(parts))
    else:
        out.append("Fans: no fan readings")
    cpu = report["cpu"]
    load = []
    cores = f" of {cpu['cores']} cores" if cpu.get("cores") else ""
    if cpu.get("usage_ratio") is not None:
        load.append(f"CPU {pct(cpu['usage_ratio'])} busy{cores}")
    elif cpu.get("cores"):
        load.append(f"CPU busy share not measured yet{cores}")
    mem = report.get("memory")
    if mem and mem.get("usage_ratio") is not None:
        load.append(f"memory {pct(mem['usage_ratio'])} used of {bytes_text(mem['total_bytes'])}")
    for g in report["gpus"]:
        bits = [f"{pct(g['utilization_ratio'])} busy"] if g.get("utilization_ratio") is not None else []
        if g.get("temperature_celsius") is not None:
            bits.append(f"{g['temperature_celsius']:.0f} °C")
        load.append(f"{g.get('display') or gpu_name(g['gpu'])} {', '.join(bits)}".strip())
    if not report["gpus"]:
        load.append("no GPU seen")
    out.append("Load: " + "; ".join(load))
    if report["culprits"]:
        out.append("Top culprits:")
        for c in report["culprits"]:
            if c["kind"] == "process":
                what = f"{clean(c['name'])[:20]:<20} pid {c['pid']:<8}"
            elif c["kind"] == "group":
                what = f"{clean(c['name'])[:20]:<20} ×{c['processes']:<11}"
            else:
                what = f"{owner_text(clean(c['name']))[:33]:<33}"
            owner = owner_text(clean(c["owner"])) if c["owner"] and c["kind"] != "owner" else "-"
            cores = f"{c['cores']:.2f} cores" if c["cores"] is not None else "- cores"
            gpu = " ".join(f"{g} {pct(v)}" for g, v in sorted(c["gpu"].items()))
            watts = f"  {c['watts']:.1f} W" if c.get("watts") is not None else ""
            out.append(f"  {what} {clean(c['user']) or '-':<10} {owner:<24} {cores:>11}  "
                       f"{bytes_text(c['memory_bytes']):>10}{watts}{'  ' + gpu if gpu else ''}")
    power = report.get("power") or {}
    if power.get("domains"):
        out.append("Power (estimates): " + "; ".join(
            f"{d['domain']} {d['measured_watts']:.1f} W = {d['attributed_watts']:.1f} processes"
            f" + {d['idle_watts']:.1f} idle + {d['other_watts']:.1f} other" for d in power["domains"]))
    out.append(report["sentence"])
    out.extend(report.get("notes") or ())
    if report.get("source"):
        out.append(f"({report['source']})")
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
    url = verdict_url(args.url or default_url())
    try:
        report = fetch(url, args.timeout)
        report["source"] = f"verdict of the exporter at {url}"
    except NotHoofhearted as e:
        print(terminal(f"hoofhearted why: error: {url}: {e}"), file=sys.stderr)
        return 2
    except (OSError, urllib.error.URLError, ValueError, http.client.HTTPException) as e:
        if args.url:
            reason = getattr(e, "reason", None) or e
            reason = getattr(reason, "strerror", None) or reason
            print(terminal(f"hoofhearted why: error: cannot read {url}: {reason}"), file=sys.stderr)
            return 2
        report = collect_locally(args.procfs, args.sysfs)
        report["source"] = f"measured here: no exporter answered at {url}"
    try:
        if args.json:
            print(json.dumps(report, indent=2))
        else:
            print("\n".join(terminal(line) for line in lines(report)))
        sys.stdout.flush()
    except BrokenPipeError:     # `hoofhearted why | head`
        sys.stdout = None
    return 0
