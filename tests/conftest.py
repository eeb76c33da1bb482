"""Shared test fixtures: the real exporter over HTTP, and tools that CI must have."""
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time

import pytest
import requests

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(ROOT, "tests", "fixtures")
SYSFS = os.path.join(FIXTURES, "sysfs-node-exporter")
PROCFS_FIXTURE = os.path.join(FIXTURES, "procfs", "proc")
PROCFS_SYSFS = os.path.join(FIXTURES, "procfs", "sys")
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def need_tool(name):
    """Path of a command the test needs. Missing: skip locally, fail in CI."""
    path = shutil.which(name)
    if path:
        return path
    msg = f"{name} is not installed (make test installs it)"
    if IN_CI:
        pytest.fail(msg)
    pytest.skip(msg)


def need_module(name, attr):
    """An attribute of a Python module the test extra installs. Missing: skip locally, fail in CI."""
    import importlib
    try:
        return getattr(importlib.import_module(name), attr)
    except ImportError:
        msg = f"{name} is not installed (pip install -e '.[test]')"
        if IN_CI:
            pytest.fail(msg)
        pytest.skip(msg)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """In CI a skipped test is a failed one: whatever it needed must be installed there."""
    outcome = yield
    report = outcome.get_result()
    if IN_CI and report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"skipped in CI (CI=true), where nothing may be: {reason}"


def stop_group(proc, timeout=5):
    """SIGTERM a process started with start_new_session, SIGKILL its group if it lingers."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


SESSION_START = time.time()


def pytest_terminal_summary(terminalreporter):
    """Where this run's browser screenshots are (tests/browser.py saves them)."""
    from browser import ARTIFACTS
    try:
        names = sorted(n for n in os.listdir(ARTIFACTS)
                       if os.path.getmtime(os.path.join(ARTIFACTS, n)) >= SESSION_START)
    except OSError:
        return
    if names:
        terminalreporter.write_line(f"screenshots in {ARTIFACTS}: {', '.join(names)}")


@pytest.fixture
def require_tool():
    return need_tool


class RunningExporter:
    def __init__(self, args, env=None, cwd=ROOT):
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("HOOFHEARTED_")}
        full_env.update(env or {})
        full_env["PYTHONUNBUFFERED"] = "1"
        self.args = args
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "exporter", "--web.listen-address=127.0.0.1:0", *args],
            cwd=cwd, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            start_new_session=True)
        self.lines = []
        self._address = threading.Event()
        self.address = None
        threading.Thread(target=self._read, daemon=True).start()
        if not self._address.wait(20):
            self.stop()
            raise RuntimeError("exporter did not start:\n" + "".join(self.lines))
        self.url = f"http://{self.address}"
        self.session = requests.Session()

    def _read(self):
        for line in self.proc.stdout:
            self.lines.append(line)
            m = re.search(r"address=(\S+)", line)
            if m and not self._address.is_set():
                self.address = m.group(1)
                self._address.set()
        self._address.set()

    @property
    def log(self):
        return "".join(self.lines)

    def get(self, path="/metrics", **kw):
        return self.session.get(self.url + path, timeout=10, **kw)

    def scrape(self):
        r = self.get("/metrics")
        r.raise_for_status()
        return r.text

    def wait_ready(self, timeout=20):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if self.get("/-/ready").status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.05)
        raise AssertionError("exporter not ready:\n" + self.log)

    def stop(self):
        stop_group(self.proc)


@pytest.fixture
def start_exporter():
    started = []

    def start(*args, env=None, ready=True):
        exp = RunningExporter(list(args), env=env)
        started.append(exp)
        if ready:
            exp.wait_ready()
        return exp

    yield start
    for exp in started:
        exp.stop()


@pytest.fixture
def gpu_burn_tree(tmp_path):
    """A procfs tree with the datacenter capture's GPU processes (gpu_burn of alice, memhog of bob)."""
    from proctree import Tree, passwd
    rootfs = passwd(tmp_path / "root", {1000: "alice", 1001: "bob"})
    tree = Tree(tmp_path / "proc")
    tree.proc(11345, "gpu_burn", uid=1000)
    tree.proc(11327, "memhog", uid=1001)
    return tree, rootfs


def parse_exposition(text):
    """{(name, frozenset(labels.items())): value}; fails on a duplicate series."""
    from prometheus_client.parser import text_string_to_metric_families

    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            key = (s.name, frozenset(s.labels.items()))
            assert key not in out, f"duplicate series {s.name}{s.labels}"
            out[key] = s.value
    return out


def sample(parsed, name, **labels):
    return parsed.get((name, frozenset(labels.items())))
