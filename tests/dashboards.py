"""Reading the Grafana dashboards, and a real Prometheus scraping real exporters to run their queries.

Used by test_grafana.py; kept apart so the stack can be started by hand while working on a panel:
    .venv/bin/python tests/dashboards.py   # starts the stack, prints every query's series count
"""
import importlib.util
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import requests
import yaml

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from conftest import ROOT, RunningExporter, stop_group  # noqa: E402

GRAFANA = os.path.join(ROOT, "grafana")
PROVISIONED = os.path.join(GRAFANA, "dashboards")
IMPORT = os.path.join(GRAFANA, "import")
RECORDING_RULES = os.path.join(ROOT, "prometheus", "rules", "recording.yml")
ALERT_RULES = os.path.join(ROOT, "alerting", "rules")
GOLDEN = os.path.join(HERE, "golden")

# Series Prometheus makes itself: scrape health and alert state.
SYNTHETIC = {"up", "scrape_duration_seconds", "scrape_samples_scraped", "scrape_samples_post_metric_relabeling",
             "scrape_series_added", "ALERTS", "ALERTS_FOR_STATE"}
# What Grafana puts in place of its built-in variables while testing.
BUILTINS = {"$__rate_interval": "10s", "$__interval": "2s", "$__range": "1m"}
HOSTS = ("host-a", "host-b", "host-c")


def load_build():
    spec = importlib.util.spec_from_file_location("grafana_build", os.path.join(GRAFANA, "build.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def load(folder):
    out = {}
    for name in sorted(os.listdir(folder)):
        if name.endswith(".json"):
            with open(os.path.join(folder, name), encoding="utf-8") as f:
                out[name[:-5]] = json.load(f)
    return out


def walk(panels):
    for p in panels:
        yield p
        yield from walk(p.get("panels", []))


def datasource_refs(node, where=""):
    """Every {"type", "uid"} data source reference anywhere in a dashboard, with where it is."""
    if isinstance(node, dict):
        ds = node.get("datasource")
        if isinstance(ds, dict):
            yield where, ds
        elif ds is not None:
            yield where, {"uid": ds}
        for k, v in node.items():
            if k != "datasource":
                yield from datasource_refs(v, f"{where}.{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from datasource_refs(v, f"{where}[{i}]")


def queries(dash):
    """(id, kind, expr) of every PromQL expression: panel targets, variables, annotations.

    kind: "range" (time series panels), "table" (instant), "variable", "annotation".
    """
    out = []
    for p in walk(dash.get("panels", [])):
        for t in p.get("targets", []):
            if "expr" in t:
                kind = "table" if t.get("instant") else "range"
                out.append((f"{dash['uid']}:{p['title']}:{t['refId']}", kind, t["expr"]))
    for v in dash.get("templating", {}).get("list", []):
        if v.get("type") == "query":
            q = v["query"]["query"] if isinstance(v["query"], dict) else v["query"]
            out.append((f"{dash['uid']}:${v['name']}", "variable", q))
    for a in dash.get("annotations", {}).get("list", []):
        if "expr" in a:
            out.append((f"{dash['uid']}:annotation:{a['name']}", "annotation", a["expr"]))
    return out


def live_targets(dash):
    for p in walk(dash.get("panels", [])):
        for t in p.get("targets", []):
            if t.get("queryType") == "measurements":
                yield p["title"], t


def substitute(expr, instances):
    for name, value in BUILTINS.items():
        expr = expr.replace(name, value)
    # As Grafana formats a multi-value variable: regex alternatives, metacharacters escaped in the string.
    alts = "|".join(re.sub(r"([\\.+*?^$()\[\]{}|])", r"\\\\\1", i) for i in instances)
    expr = expr.replace("$instance", alts).replace("$gpu", ".*")
    assert "$" not in expr, f"unknown variable left in {expr!r}"
    return expr


_FUNC_OR_AGG = re.compile(r"\s*\(")
_LABEL_LISTS = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "offset", "bool", "and", "or",
            "unless", "atan2", "inf", "nan"}


def metric_names(expr):
    """Metric names an expression reads (label_values(m, l) counts m)."""
    m = re.fullmatch(r"\s*label_values\((.*),\s*\w+\s*\)\s*", expr)
    if m:
        expr = m.group(1)
    s = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    s = re.sub(r"\{[^}]*\}", " ", s)
    s = re.sub(r"\[[^\]]*\]", " ", s)
    s = _LABEL_LISTS.sub(" ", s)
    names = set()
    for tok in re.finditer(r"(?<![\w:.])[A-Za-z_:][\w:]*", s):
        word = tok.group(0)
        if word.lower() in KEYWORDS or _FUNC_OR_AGG.match(s, tok.end()):
            continue
        names.add(word)
    return names


def golden_names():
    names = set()
    for fname in sorted(os.listdir(GOLDEN)):
        if fname.endswith(".prom"):
            with open(os.path.join(GOLDEN, fname)) as f:
                for line in f:
                    if line.strip() and not line.startswith("#"):
                        names.add(re.match(r"[A-Za-z_:][\w:]*", line).group(0))
    return names


def scrape_time_names():
    """Families the exporter adds at scrape time (not in the golden file): the scheduler's own
    collector metrics and the Grafana Live push counters."""
    from exporter.config import defaults
    from exporter.live import LiveSink
    from exporter.scheduler import Scheduler
    cfg = defaults()
    cfg["grafana_live"].update(url="http://127.0.0.1:9", token="unused")
    families = Scheduler([], cfg).meta_families(0.0) + LiveSink(cfg, host="h").families()
    return {f.name + "_total" if f.type == "counter" else f.name for f in families}


def rule_files():
    files = [RECORDING_RULES] if os.path.exists(RECORDING_RULES) else []
    if os.path.isdir(ALERT_RULES):
        files += sorted(os.path.join(ALERT_RULES, f) for f in os.listdir(ALERT_RULES) if f.endswith((".yml", ".yaml")))
    return files


def recorded_names():
    names = set()
    for path in rule_files():
        with open(path) as f:
            for group in (yaml.safe_load(f) or {}).get("groups", []):
                names.update(r["record"] for r in group.get("rules", []) if "record" in r)
    return names


# -- the stack -----------------------------------------------------------------------------

def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LiveReceiver:
    """Grafana's /api/live/push/<stream> stand-in: keeps what was pushed, answers 200 (or `status`)."""

    def __init__(self, status=200):
        self.status = status
        self.requests = []
        self.connections = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self):
                super().setup()
                receiver.connections.append(self.connection)

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                receiver.requests.append((time.monotonic(), self.path, dict(self.headers), body.decode("utf-8")))
                self.send_response(receiver.status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self):
        """Gone like a stopped Grafana: no listener, kept-alive connections cut."""
        self.server.shutdown()
        self.server.server_close()
        for conn in self.connections:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class Prometheus:
    """Debian's prometheus on a free loopback port, temporary data, 1 s scrapes, the repo's rules."""

    def __init__(self, binary, workdir, targets):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s", "scrape_timeout": "1s"},
            "rule_files": rule_files(),
            "scrape_configs": [{"job_name": "hoofhearted", "static_configs": [
                {"targets": [addr], "labels": {"instance": name}} for name, addr in targets.items()]}],
        }
        path = os.path.join(workdir, "prometheus.yml")
        with open(path, "w") as f:
            yaml.safe_dump(config, f)
        self.log = open(os.path.join(workdir, "prometheus.log"), "w+")
        self.proc = subprocess.Popen(
            [binary, f"--config.file={path}", f"--storage.tsdb.path={os.path.join(workdir, 'data')}",
             f"--web.listen-address=127.0.0.1:{self.port}"],
            stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("prometheus exited:\n" + self.output())
            try:
                if requests.get(self.url + "/-/ready", timeout=1).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError("prometheus not ready:\n" + self.output())

    def output(self):
        self.log.flush()
        self.log.seek(0)
        return self.log.read()

    def api(self, path, **params):
        r = requests.post(self.url + "/api/v1/" + path, data=params, timeout=10)
        body = r.json()
        if body.get("status") != "success":
            raise AssertionError(f"{path} {params}: {body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def instant(self, expr):
        return self.api("query", query=expr)["result"]

    def range(self, expr, seconds=30):
        now = time.time()
        return self.api("query_range", query=expr, start=now - seconds, end=now, step=1)["result"]

    def run(self, kind, expr):
        """The series a dashboard query gets, the way Grafana asks for it."""
        if kind == "variable":
            m = re.fullmatch(r"\s*label_values\((.*),\s*(\w+)\s*\)\s*", expr)
            assert m, f"unsupported variable query {expr!r}"
            return [s for s in self.instant(m.group(1)) if m.group(2) in s["metric"]]
        if kind == "table":
            return self.instant(expr)
        return self.range(expr)

    def stop(self):
        stop_group(self.proc)
        self.log.close()


def fake_gpu_modules():
    """The fake NVML scenarios the exporter can load, one per host, or None when it cannot."""
    from exporter.config import FIELDS
    if ("gpu", "nvml_module") not in FIELDS:
        return None
    wanted = ("datacenter", "geforce", "box")   # box: Xid, retired pages, PCIe throughput
    have = [m for m in wanted if os.path.exists(os.path.join(HERE, "fakenvml", f"{m}.py"))]
    if not have:
        return None
    return [f"tests.fakenvml.{have[i % len(have)]}" for i in range(len(HOSTS))]


class Stack:
    """Three exporters (host-a..c) on a fixture sysfs, a suspected miner running, Prometheus on top.

    host-a also pushes to a Grafana Live stand-in, so the push counters exist.
    """

    def __init__(self, prometheus_binary):
        self.dir = tempfile.mkdtemp(prefix="hoofhearted-dash-")
        self.exporters, self.prom, self.miner, self.receiver = [], None, None, None
        try:
            self._start(prometheus_binary)
        except BaseException:
            self.stop()
            raise

    def _start(self, prometheus_binary):
        from fixture_box import make_sysfs
        sysfs = make_sysfs(os.path.join(self.dir, "sys"))
        # A process named like a known miner (a copy of sleep), so the miner panel has a row.
        miner = os.path.join(self.dir, "xmrig")
        shutil.copy(shutil.which("sleep"), miner)
        self.miner = subprocess.Popen([miner, "600"], start_new_session=True)
        self.receiver = LiveReceiver()
        self.gpu = fake_gpu_modules()
        for i, name in enumerate(HOSTS):
            env = {}
            if self.gpu:
                env["HOOFHEARTED_GPU_NVML_MODULE"] = self.gpu[i]
            if name == "host-a":
                env["HOOFHEARTED_GRAFANA_LIVE_URL"] = self.receiver.url
                env["HOOFHEARTED_GRAFANA_LIVE_TOKEN"] = "test-token"
            exp = RunningExporter([f"--path.sysfs={sysfs}"], env=env)
            self.exporters.append(exp)
            exp.wait_ready()
        self.prom = Prometheus(prometheus_binary, self.dir, {
            name: exp.address for name, exp in zip(HOSTS, self.exporters)})
        # Rates over $__rate_interval need a few scrapes; wait until every target has been up a while.
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            up = self.prom.instant('count_over_time(up{job="hoofhearted"}[1m]) >= 6')
            if len(up) == len(HOSTS):
                return
            time.sleep(0.5)
        raise RuntimeError("targets not scraped:\n" + self.prom.output())

    def stop(self):
        if self.prom:
            self.prom.stop()
        for exp in self.exporters:
            exp.stop()
        if self.miner and self.miner.poll() is None:
            self.miner.kill()
            self.miner.wait()
        if self.receiver:
            self.receiver.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


if __name__ == "__main__":
    stack = Stack(shutil.which("prometheus"))
    try:
        for name, dash in load(PROVISIONED).items():
            for qid, kind, expr in queries(dash):
                try:
                    n = len(stack.prom.run(kind, substitute(expr, HOSTS)))
                except AssertionError as e:
                    n = f"ERROR {e}"
                print(f"{n!s:>6}  {qid}")
    finally:
        stack.stop()
