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


def rule_queries():
    """(where, PromQL) of every recording and alert rule expression, and of every query an alert's
    annotations run (the backquoted printf formats, with %q filled in)."""
    out = []
    for path in rule_files():
        with open(path) as f:
            for group in (yaml.safe_load(f) or {}).get("groups", []):
                for rule in group.get("rules", []):
                    name = rule.get("record") or rule.get("alert")
                    out.append((f"{os.path.basename(path)}:{name}", rule["expr"]))
                    for key, text in rule.get("annotations", {}).items():
                        for q in re.findall(r"printf `([^`]*)`", text):
                            out.append((f"{os.path.basename(path)}:{name}:{key}", q.replace("%q", '"x"')))
    return out


def readme_metric_names():
    """Families in README.md's generated metric table (tests/metric_table.py)."""
    from metric_table import readme_rows
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        return set(readme_rows(f.read()))


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
    """The fake NVML scenario each host loads (the exporter's gpu.nvml_module allows tests.fakenvml.*)."""
    wanted = ("datacenter", "geforce", "box")   # box: Xid, retired pages, PCIe throughput
    for m in wanted:
        assert os.path.exists(os.path.join(HERE, "fakenvml", f"{m}.py")), f"fake NVML scenario {m} is missing"
    return [f"tests.fakenvml.{wanted[i % len(wanted)]}" for i in range(len(HOSTS))]


class Stack:
    """Three exporters (host-a..c) on a fixture sysfs, a suspected miner running, Prometheus on top.

    host-a also pushes to a Grafana Live stand-in, so the push counters exist.
    """

    def __init__(self, prometheus_binary):
        self.dir = tempfile.mkdtemp(prefix="hoofhearted-dash-")
        self.exporters, self.prom, self.miner, self.receiver, self.ticker = [], None, None, None, None
        try:
            self._start(prometheus_binary)
        except BaseException:
            self.stop()
            raise

    def _start(self, prometheus_binary):
        from fixture_box import EnergyTicker, make_sysfs
        sysfs = make_sysfs(os.path.join(self.dir, "sys"))
        self.ticker = EnergyTicker(sysfs)       # RAPL counters move: package power and watts per process
        # A process named like a known miner (a copy of sleep), so the miner panel has a row.
        miner = os.path.join(self.dir, "xmrig")
        shutil.copy(shutil.which("sleep"), miner)
        self.miner = subprocess.Popen([miner, "600"], start_new_session=True)
        self.receiver = LiveReceiver()
        self.gpu = fake_gpu_modules()
        for i, name in enumerate(HOSTS):
            env = {}
            env["HOOFHEARTED_GPU_NVML_MODULE"] = self.gpu[i]
            if name == "host-a":
                env["HOOFHEARTED_GRAFANA_LIVE_URL"] = self.receiver.url
                env["HOOFHEARTED_GRAFANA_LIVE_TOKEN"] = "test-token"
                # a server whose BMC device is missing: its local BMC reports down
                env["HOOFHEARTED_BMC_IPMI_LOCAL"] = "true"
                env["HOOFHEARTED_BMC_IPMI_DEVICE"] = os.path.join(self.dir, "ipmi0")
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
        if self.ticker:
            self.ticker.stop()
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


class FleetSim:
    """Many simulated hosts for one real Prometheus: one HTTP server answers /metrics?host=N with a
    fixture box's exposition, varied per host (temperatures, load, 30 processes with CPU counters,
    a verdict), and Prometheus scrapes it once per host with instance="host-NNN"."""

    PROCESSES = 30

    def __init__(self, prometheus_binary, hosts=200, interval="5s"):
        self.dir = tempfile.mkdtemp(prefix="hoofhearted-fleet-")
        self.hosts = [f"host-{i:03d}" for i in range(hosts)]
        self.start = time.time()
        self.base = self._base_lines()
        self.server = self.prom = None
        try:
            self._serve()
            self._prometheus(prometheus_binary, interval)
        except BaseException:
            self.stop()
            raise

    SYNTHESIZED = ("hoofhearted_culprit_", "hoofhearted_sensors", "hoofhearted_cpu_seconds_total", "hoofhearted_collector_",
                   "hoofhearted_escalation_active", "hoofhearted_live_pushes_total",
                   "hoofhearted_process_cpu_seconds_total", "hoofhearted_process_group_cpu_seconds_total",
                   "hoofhearted_cpu_usage_ratio", "hoofhearted_build_info")

    @classmethod
    def _base_lines(cls):
        lines = []
        with open(os.path.join(GOLDEN, "fixture-box.prom")) as f:
            for line in f:
                if line.strip() and not line.startswith("#") and not line.startswith(cls.SYNTHESIZED):
                    lines.append(line.rstrip("\n"))
        return lines

    def body(self, i):
        t = time.time() - self.start + 1000
        out = []
        for line in self.base:
            name_labels, value = line.rsplit(" ", 1)
            if name_labels.startswith("hoofhearted_temperature_celsius{"):
                value = f"{float(value) + i % 40:g}"
            out.append(f"{name_labels} {value}")
        busy = (i % 100) / 100
        out.append(f'hoofhearted_build_info{{version="0.0.0",python_version="3.11"}} 1')
        out.append(f"hoofhearted_cpu_usage_ratio {busy}")
        for cpu in range(8):
            out.append(f'hoofhearted_cpu_seconds_total{{cpu="{cpu}",mode="idle"}} {t * (1 - busy):.3f}')
            out.append(f'hoofhearted_cpu_seconds_total{{cpu="{cpu}",mode="user"}} {t * busy:.3f}')
        for j in range(self.PROCESSES):
            cores = ((i + j) % self.PROCESSES) / 10
            out.append(f'hoofhearted_process_cpu_seconds_total{{pid="{1000 + j}",name="worker{j}",user="u{j % 3}",'
                       f'owner=""}} {t * cores:.3f}')
        for j in range(20):
            out.append(f'hoofhearted_process_group_cpu_seconds_total{{group="group{j}"}} {t * (j % 7) / 5:.3f}')
        for rank, (kind, name, pid) in enumerate((("group", "php-fpm", ""), ("process", "worker1", "1001"),
                                                  ("owner", "docker-abc.scope", "")), start=1):
            out.append(f'hoofhearted_culprit_info{{rank="{rank}",kind="{kind}",name="{name}",user="www-data",'
                       f'owner="",pid="{pid}"}} 1')
            out.append(f'hoofhearted_culprit_cpu_usage_cores{{rank="{rank}"}} {(i % 9) / (rank + 1):.3f}')
            out.append(f'hoofhearted_culprit_processes{{rank="{rank}"}} {12 if kind != "process" else 1}')
            out.append(f'hoofhearted_culprit_memory_bytes{{rank="{rank}"}} {1e8 * rank:.0f}')
        out.append('hoofhearted_culprit_gpu_utilization_ratio{rank="1",gpu="0"} 0.5')
        for k, (collector, tier, interval) in enumerate((("cpu", "critical", 1), ("sensors", "critical", 1),
                                                         ("process", "important", 2), ("gpu", "critical", 1),
                                                         ("disk", "standard", 5), ("network", "standard", 5))):
            failing = collector == "gpu" and i % 20 == 0
            out.append(f'hoofhearted_collector_success{{collector="{collector}"}} {0 if failing else 1}')
            out.append(f'hoofhearted_collector_duration_seconds{{collector="{collector}"}} {(i % 13 + k) / 1000:g}')
            out.append(f'hoofhearted_collector_refresh_interval_seconds{{collector="{collector}",tier="{tier}"}} '
                       f'{1 if i % 50 == 0 else interval}')
            out.append(f'hoofhearted_collector_last_success_timestamp_seconds{{collector="{collector}"}} '
                       f'{time.time() - (600 if failing else interval):.3f}')
        out.append(f"hoofhearted_escalation_active {1 if i % 50 == 0 else 0}")
        if i % 100 == 0:
            out.append(f'hoofhearted_live_pushes_total{{result="success"}} {t:.0f}')
        out.append('hoofhearted_sensors{kind="temperature"} 15')
        out.append('hoofhearted_sensors{kind="fan"} 0' if i % 10 == 0 else 'hoofhearted_sensors{kind="fan"} 6')
        return ("\n".join(out) + "\n").encode()

    def _serve(self):
        sim = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                i = int(self.path.rsplit("host=", 1)[1])
                data = sim.body(i)
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                try:
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):  # Prometheus stopping mid-scrape
                    pass

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def _prometheus(self, binary, interval):
        address = f"127.0.0.1:{self.server.server_address[1]}"
        self.prom = Prometheus.__new__(Prometheus)
        self.prom.port = free_port()
        self.prom.url = f"http://127.0.0.1:{self.prom.port}"
        config = {
            "global": {"scrape_interval": interval, "evaluation_interval": interval, "scrape_timeout": interval},
            "rule_files": [RECORDING_RULES],
            "scrape_configs": [{"job_name": "hoofhearted", "static_configs": [
                {"targets": [address], "labels": {"instance": name, "__param_host": str(i)}}
                for i, name in enumerate(self.hosts)]}],
        }
        path = os.path.join(self.dir, "prometheus.yml")
        with open(path, "w") as f:
            yaml.safe_dump(config, f)
        self.prom.log = open(os.path.join(self.dir, "prometheus.log"), "w+")
        self.prom.proc = subprocess.Popen(
            [binary, f"--config.file={path}", f"--storage.tsdb.path={os.path.join(self.dir, 'data')}",
             f"--web.listen-address=127.0.0.1:{self.prom.port}"],
            stdout=self.prom.log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if self.prom.proc.poll() is not None:
                raise RuntimeError("prometheus exited:\n" + self.prom.output())
            try:
                # three scrapes of every host, so rates and recording rules exist
                got = self.prom.instant('count(count_over_time(up{job="hoofhearted"}[1m]) >= 3)')
                if got and int(float(got[0]["value"][1])) == len(self.hosts):
                    return
            except (requests.RequestException, AssertionError, ValueError):
                pass
            time.sleep(1)
        raise RuntimeError("the simulated fleet was not scraped:\n" + self.prom.output()[-3000:])

    def stop(self):
        if self.prom is not None and getattr(self.prom, "proc", None):
            self.prom.stop()
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
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
