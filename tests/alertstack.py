"""Debian's Prometheus and Alertmanager on loopback, run with the repository's own configuration.

The rewrite helpers change only addresses, file paths and durations (rule `for:` and
`keep_firing_for:`, the range windows of rule expressions, evaluation, scrape and notification
timing), so a test proves the shipped expressions, labels, annotations, routes, inhibitions,
receivers and templates, just faster. An end-to-end test:

    cfg = rewrite_prometheus(tmp, "127.0.0.1:PORT", am.address, for_="5s", window="30s")
    prom = start_prometheus(prometheus_binary, tmp, cfg)

`for_` replaces every alert's `for` (and `keep_firing_for`, so alerts resolve as fast), `window`
every range selector ([5m] -> [30s]) in the recording and alert rules: a process that starts
burning then shows its full rate after `window`, not after five minutes.
"""
import copy
import glob
import os
import re
import socket
import subprocess
import time

import requests
import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROMETHEUS_YML = os.path.join(ROOT, "prometheus", "prometheus.yml")
RECORDING_YML = os.path.join(ROOT, "prometheus", "rules", "recording.yml")
ALERT_RULES = sorted(glob.glob(os.path.join(ROOT, "alerting", "rules", "*.yml")))
ALERTMANAGER_YML = os.path.join(ROOT, "alerting", "alertmanager.yml")
TEMPLATES = os.path.join(ROOT, "alerting", "templates", "*.tmpl")
SECRETS_DIR = "/etc/alertmanager/secrets/"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def load(path):
    with open(path, encoding="utf-8") as f:
        return yaml.safe_load(f)


def dump(data, path):
    with open(path, "w", encoding="utf-8") as f:
        yaml.safe_dump(data, f, allow_unicode=True, sort_keys=False, width=10_000)
    return path


RANGE = re.compile(r"\[(\d+[smhd])\]")


def rewrite_rules(src, dst, for_=None, window=None):
    """Copy a rule file: every alert's `for:` and `keep_firing_for:` set to ``for_``, every range
    selector's window in every expression set to ``window`` (None: unchanged)."""
    data = load(src)
    for group in data["groups"]:
        for rule in group["rules"]:
            if for_ is not None and "alert" in rule:
                for key in ("for", "keep_firing_for"):
                    if key in rule:
                        rule[key] = for_
            if window is not None:
                rule["expr"] = RANGE.sub(f"[{window}]", rule["expr"])
    return dump(data, dst)


def rewrite_prometheus(tmp, exporter, alertmanager, for_="5s", interval="1s", window="30s"):
    """prometheus.yml pointed at one exporter and one Alertmanager, with fast timing (see the module
    docstring). The prometheus job's target is set by start_prometheus, which picks the port."""
    cfg = load(PROMETHEUS_YML)
    cfg["global"]["evaluation_interval"] = interval
    cfg["global"]["scrape_interval"] = interval
    cfg["alerting"]["alertmanagers"][0]["static_configs"] = [{"targets": [alertmanager]}]
    rules_dir = os.path.join(tmp, "rules")
    os.makedirs(rules_dir, exist_ok=True)
    for path in ALERT_RULES:
        rewrite_rules(path, os.path.join(rules_dir, os.path.basename(path)), for_, window)
    recording = rewrite_rules(RECORDING_YML, os.path.join(tmp, "recording.yml"), None, window)
    cfg["rule_files"] = [recording, os.path.join(rules_dir, "*.yml")]
    targets = dump([], os.path.join(tmp, "targets.yml"))
    jobs = {j["job_name"]: j for j in cfg["scrape_configs"]}
    job = jobs["hoofhearted"]
    job["scrape_interval"] = job["scrape_timeout"] = interval
    job["file_sd_configs"][0]["files"] = [targets]
    job["http_sd_configs"][0]["url"] = f"http://{exporter}/api/targets"     # it names its host itself
    job["http_sd_configs"][0]["refresh_interval"] = "1s"
    jobs["alertmanager"]["static_configs"] = [{"targets": [alertmanager]}]
    return dump(cfg, os.path.join(tmp, "prometheus.yml"))


def _swap_paths(node, secrets):
    if isinstance(node, dict):
        return {k: _swap_paths(v, secrets) for k, v in node.items()}
    if isinstance(node, list):
        return [_swap_paths(v, secrets) for v in node]
    if isinstance(node, str) and node.startswith(SECRETS_DIR):
        return os.path.join(secrets, node[len(SECRETS_DIR):])
    return node


def rewrite_alertmanager(tmp, secrets, webhook_url=None, timing="1s", repeat="5s", pagerduty_url=None):
    """alertmanager.yml reading its secret files from ``secrets``, with fast grouping; the webhook and
    PagerDuty receivers pointed at ``webhook_url`` and ``pagerduty_url`` when given."""
    cfg = _swap_paths(copy.deepcopy(load(ALERTMANAGER_YML)), secrets)
    cfg["templates"] = [TEMPLATES, os.path.join(secrets, "*.tmpl")]
    routes = [cfg["route"], *cfg["route"].get("routes", [])]
    for route in routes:
        for key in ("group_wait", "group_interval"):
            if key in route:
                route[key] = timing
        if "repeat_interval" in route:
            route["repeat_interval"] = repeat
    for receiver in cfg["receivers"]:
        for hook in receiver.get("webhook_configs", []) if webhook_url else []:
            hook["url"] = webhook_url
        for pager in receiver.get("pagerduty_configs", []) if pagerduty_url else []:
            pager["url"] = pagerduty_url
    return dump(cfg, os.path.join(tmp, "alertmanager.yml"))


class Daemon:
    """A server process with its log in a file; stopped by pid."""

    def __init__(self, args, log_path, ready_url, timeout=30):
        self.log_path = log_path
        self.log_file = open(log_path, "w")
        self.proc = subprocess.Popen(args, stdout=self.log_file, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{args[0]} exited with {self.proc.returncode}:\n{self.log}")
            try:
                if requests.get(ready_url, timeout=1).status_code == 200:
                    return
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"{args[0]} not ready:\n{self.log}")
            time.sleep(0.1)

    @property
    def log(self):
        self.log_file.flush()
        with open(self.log_path, encoding="utf-8", errors="replace") as f:
            return f.read()

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log_file.close()


def start_alertmanager(binary, tmp, config):
    port = free_port()
    data = os.path.join(tmp, "am-data")
    os.makedirs(data, exist_ok=True)
    am = Daemon([binary, f"--config.file={config}", f"--storage.path={data}",
                 f"--web.listen-address=127.0.0.1:{port}", "--cluster.listen-address=",
                 "--log.level=info"],
                os.path.join(tmp, "alertmanager.log"), f"http://127.0.0.1:{port}/-/ready")
    am.address = f"127.0.0.1:{port}"
    am.url = f"http://{am.address}"
    return am


def start_prometheus(binary, tmp, config):
    port = free_port()
    cfg = load(config)
    for job in cfg.get("scrape_configs", []):
        if job["job_name"] == "prometheus":  # scrapes itself, on the port picked here
            job["static_configs"] = [{"targets": [f"127.0.0.1:{port}"]}]
    dump(cfg, config)
    data = os.path.join(tmp, "prom-data")
    os.makedirs(data, exist_ok=True)
    prom = Daemon([binary, f"--config.file={config}", f"--storage.tsdb.path={data}",
                   f"--web.listen-address=127.0.0.1:{port}", "--rules.alert.resend-delay=2s",
                   "--log.level=info"],
                  os.path.join(tmp, "prometheus.log"), f"http://127.0.0.1:{port}/-/ready")
    prom.url = f"http://127.0.0.1:{port}"
    return prom


def query(prom, expr):
    r = requests.get(prom.url + "/api/v1/query", params={"query": expr}, timeout=5)
    r.raise_for_status()
    return r.json()["data"]["result"]
