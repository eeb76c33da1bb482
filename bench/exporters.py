"""Start hoofhearted and the two reference exporters on loopback, each on a free port."""
import os
import re
import socket
import subprocess
import sys
import time

import requests

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NODE_EXPORTER = "prometheus-node-exporter"
PROCESS_EXPORTER = "prometheus-process-exporter"

# Every process grouped by comm; '.*' also matches kernel threads, whose cmdline is empty.
PROCESS_EXPORTER_CONFIG = """process_names:
  - name: "{{.Comm}}"
    cmdline:
      - '.*'
"""


class Exporter:
    def __init__(self, name, proc, url, log_path):
        self.name, self.proc, self.url, self.log_path = name, proc, url, log_path
        self.metrics = url + "/metrics"

    @property
    def pid(self):
        return self.proc.pid


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _log_tail(path, n=2000):
    try:
        with open(path, errors="replace") as f:
            return f.read()[-n:]
    except OSError:
        return ""


def _wait_http(url, proc, log_path, timeout=30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{url} exited with {proc.returncode}:\n{_log_tail(log_path)}")
        try:
            if requests.get(url, timeout=5).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"{url} not ready after {timeout:.0f} s:\n{_log_tail(log_path)}")


def start_hoofhearted(reaper, workdir, args=(), own_env=False):
    """This checkout's exporter on a free loopback port, once ready. The bench runs it on defaults
    (HOOFHEARTED_* left out of its environment) unless ``own_env``."""
    log_path = os.path.join(workdir, "hoofhearted.log")
    env = {k: v for k, v in os.environ.items() if own_env or not k.startswith("HOOFHEARTED_")}
    env["PYTHONUNBUFFERED"] = "1"
    with open(log_path, "w") as log:
        proc = reaper.spawn([sys.executable, "-m", "exporter", "--web.listen-address=127.0.0.1:0", *args],
                            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 30
    address = None
    while address is None:
        m = re.search(r"address=(\S+)", _log_tail(log_path, 100000))
        if m:
            address = m.group(1)
        elif proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("hoofhearted did not start:\n" + _log_tail(log_path))
        else:
            time.sleep(0.05)
    url = f"http://{address}"
    _wait_http(url + "/-/ready", proc, log_path)
    return Exporter("hoofhearted", proc, url, log_path)


def parse_metrics(text):
    """Prometheus exposition -> {sample name: [(labels, value)]}, through prometheus_client's parser."""
    from prometheus_client.parser import text_string_to_metric_families
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out.setdefault(s.name, []).append((s.labels, s.value))
    return out


def _start_go(reaper, name, argv_for_port, log_path):
    for _ in range(3):  # a free port can be taken between the probe and the bind
        port = free_port()
        with open(log_path, "w") as log:
            proc = reaper.spawn(argv_for_port(port), stdout=log, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"
        try:
            _wait_http(url + "/metrics", proc, log_path)
            return Exporter(name, proc, url, log_path)
        except RuntimeError:
            reaper.kill(proc)
    raise RuntimeError(f"{name} did not start:\n{_log_tail(log_path)}")


def start_node_exporter(reaper, workdir):
    return _start_go(reaper, "node_exporter",
                     lambda port: [NODE_EXPORTER, f"--web.listen-address=127.0.0.1:{port}"],
                     os.path.join(workdir, "node_exporter.log"))


def start_process_exporter(reaper, workdir):
    config = os.path.join(workdir, "process-exporter.yml")
    with open(config, "w") as f:
        f.write(PROCESS_EXPORTER_CONFIG)
    # Go's flag package: single-dash flags
    return _start_go(reaper, "process-exporter",
                     lambda port: [PROCESS_EXPORTER, f"-web.listen-address=127.0.0.1:{port}",
                                   f"-config.path={config}"],
                     os.path.join(workdir, "process-exporter.log"))


def version(argv):
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10)
        return (out.stdout + out.stderr).splitlines()[0].strip()
    except (OSError, IndexError, subprocess.TimeoutExpired):
        return "unknown"
