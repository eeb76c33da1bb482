"""The package as a user installs it: `python -m build`, a wheel in a clean venv at the path the
systemd unit runs (/opt/hoofhearted), and with pipx; each started and scraped. The unit, unchanged,
passes `systemd-analyze verify` against that install.
"""
import os
import re
import shutil
import signal
import subprocess
import sys
import threading

import pytest
import requests

from conftest import ROOT, need_tool, parse_exposition, sample, stop_group
from exporter import __version__

pytestmark = pytest.mark.slow

UNIT = os.path.join(ROOT, "deploy", "systemd", "hoofhearted.service")
INSTALL_DIR = "/opt/hoofhearted"          # README and the unit's comment say so


def clean_env(**extra):
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("HOOFHEARTED_", "PYTHON", "VIRTUAL_ENV", "PIP_REQUIRE"))}
    env.update(extra)
    return env


def run(argv, timeout=600, **kw):
    r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, **kw)
    assert r.returncode == 0, f"{argv}:\n{r.stdout}{r.stderr}"
    return r


@pytest.fixture(scope="module")
def dist(tmp_path_factory):
    """sdist and wheel from `python -m build`, built from a copy so the checkout stays clean."""
    src = tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(os.path.join(ROOT, name), src / name)
    shutil.copytree(os.path.join(ROOT, "exporter"), src / "exporter",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    out = tmp_path_factory.mktemp("dist")
    r = run([sys.executable, "-m", "build", "--outdir", str(out), str(src)], cwd=src, env=clean_env())
    # the packaging itself raises no warnings (licence format, undeclared packages)
    assert not re.search(r"(?i)deprecat|SetuptoolsWarning|BuildBackendWarning|absent from", r.stdout + r.stderr), \
        r.stdout + r.stderr
    (wheel,) = out.glob("hoofhearted-*-py3-none-any.whl")
    assert wheel.name == f"hoofhearted-{__version__}-py3-none-any.whl"
    assert len(list(out.glob("hoofhearted-*.tar.gz"))) == 1
    return wheel


@pytest.fixture(scope="module")
def root(dist, tmp_path_factory):
    """A file-system root with the wheel installed in a fresh venv at /opt/hoofhearted."""
    root = tmp_path_factory.mktemp("root")
    venv = root / INSTALL_DIR.lstrip("/")
    base = getattr(sys, "_base_executable", sys.executable)
    run([base, "-m", "venv", str(venv)], env=clean_env())
    run([str(venv / "bin" / "pip"), "install", "-q", str(dist)], env=clean_env())
    return root


class Started:
    """An installed `hoofhearted` run from outside the checkout, so nothing is imported from it."""

    def __init__(self, exe, cwd):
        self.proc = subprocess.Popen([str(exe), "--web.listen-address=127.0.0.1:0"], cwd=cwd, env=clean_env(),
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     start_new_session=True)
        self.lines, self.address = [], None
        found = threading.Event()

        def read():
            for line in self.proc.stdout:
                self.lines.append(line)
                m = re.search(r"address=(\S+)", line)
                if m and not found.is_set():
                    self.address = m.group(1)
                    found.set()
            found.set()

        threading.Thread(target=read, daemon=True).start()
        found.wait(60)
        assert self.address, "".join(self.lines)

    def scrape_when_ready(self):
        url = f"http://{self.address}"
        for _ in range(600):
            if requests.get(url + "/-/ready", timeout=10).status_code == 200:
                break
            threading.Event().wait(0.05)
        r = requests.get(url + "/metrics", timeout=10)
        assert r.status_code == 200
        return parse_exposition(r.text)

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(10)
        finally:
            stop_group(self.proc)


def check_serves(exe, cwd):
    exp = Started(exe, cwd)
    try:
        parsed = exp.scrape_when_ready()
        assert sample(parsed, "hoofhearted_build_info", version=__version__,
                      python_version=sample_python(exe)) == 1
        assert sample(parsed, "hoofhearted_cpu_cores") == os.cpu_count()
        # the process collector reads package data (the miner list) from the installed package
        assert sample(parsed, "hoofhearted_collector_success", collector="process") == 1
        assert sample(parsed, "hoofhearted_collector_success", collector="memory") == 1
        # the live page's files are package data too
        for path, kind in (("/", "text/html"), ("/page.css", "text/css"), ("/page.js", "text/javascript")):
            with open(os.path.join(ROOT, "exporter", "web", "index.html" if path == "/" else path[1:]), "rb") as f:
                first = f.read(40)
            r = requests.get(f"http://{exp.address}{path}", timeout=10)
            assert r.status_code == 200 and r.headers["Content-Type"].startswith(kind), path
            assert r.content[:40] == first, path
    finally:
        code = exp.stop()
    assert code == 0, "".join(exp.lines)
    assert "level=error" not in "".join(exp.lines)


def sample_python(exe):
    """The Python version an installed script runs under (its shebang's interpreter)."""
    with open(exe) as f:
        interpreter = f.readline()[2:].strip()
    return run([interpreter, "-c", "import platform; print(platform.python_version())"]).stdout.strip()


def test_wheel_in_a_clean_venv_starts_and_serves(root, tmp_path):
    venv = root / INSTALL_DIR.lstrip("/")
    python = venv / "bin" / "python"
    where = run([str(python), "-c", "import exporter; print(exporter.__file__)"], cwd=tmp_path, env=clean_env())
    assert where.stdout.startswith(str(venv / "lib")), where.stdout
    run([str(venv / "bin" / "pip"), "check"], env=clean_env())
    # runtime dependencies only: no test tools came along
    for module in ("pytest", "hypothesis", "selenium"):
        r = subprocess.run([str(python), "-c", f"import {module}"], capture_output=True, cwd=tmp_path,
                           env=clean_env())
        assert r.returncode != 0, module
    check_serves(venv / "bin" / "hoofhearted", tmp_path)


def test_pipx_installs_the_wheel(dist, tmp_path):
    pipx = need_tool("pipx")
    env = clean_env(PIPX_HOME=str(tmp_path / "pipx"), PIPX_BIN_DIR=str(tmp_path / "bin"))
    run([pipx, "install", str(dist)], env=env, cwd=tmp_path)
    exe = tmp_path / "bin" / "hoofhearted"
    assert run([str(exe), "--version"], env=env).stdout.strip() == f"hoofhearted {__version__}"
    check_serves(exe, tmp_path)


def unit_root(root):
    """The install root plus what `verify` looks up under --root: the unit, targets, /bin/kill."""
    system = root / "etc" / "systemd" / "system"
    system.mkdir(parents=True, exist_ok=True)
    shutil.copy(UNIT, system / "hoofhearted.service")
    units = root / "usr" / "lib" / "systemd" / "system"
    units.mkdir(parents=True, exist_ok=True)
    for name in os.listdir("/lib/systemd/system"):
        if name.endswith((".target", ".slice")):
            shutil.copy(os.path.join("/lib/systemd/system", name), units / name)
    (root / "bin").mkdir(exist_ok=True)
    shutil.copy(shutil.which("kill") or "/bin/kill", root / "bin" / "kill")
    return system / "hoofhearted.service"


def test_systemd_analyze_verify_on_the_installed_path(root):
    tool = need_tool("systemd-analyze")
    unit = unit_root(root)
    exec_start = re.search(r"^ExecStart=(\S+)", unit.read_text(), re.M).group(1)
    assert exec_start == f"{INSTALL_DIR}/bin/hoofhearted"
    assert os.access(root / exec_start.lstrip("/"), os.X_OK)
    r = subprocess.run([tool, "verify", f"--root={root}", str(unit)], capture_output=True, text=True)
    assert r.returncode == 0 and not (r.stdout + r.stderr).strip(), r.stdout + r.stderr
    # verify only warns about unknown keys and missing programs: make sure it would have told us
    bad = root / "etc" / "systemd" / "system" / "bad.service"
    bad.write_text(unit.read_text().replace("ProtectSystem=strict", "ProtectSystm=strict")
                   .replace(exec_start, "/opt/elsewhere/bin/hoofhearted"))
    r = subprocess.run([tool, "verify", f"--root={root}", str(bad)], capture_output=True, text=True)
    assert "ProtectSystm" in r.stdout + r.stderr
    assert "/opt/elsewhere/bin/hoofhearted is not executable" in r.stdout + r.stderr


def test_readme_documents_the_unit_install_path():
    with open(os.path.join(ROOT, "README.md")) as f:
        readme = f.read()
    assert f"python3 -m venv {INSTALL_DIR}" in readme
    assert f"{INSTALL_DIR}/bin/pip install" in readme
    with open(UNIT) as f:
        assert f"python3 -m venv {INSTALL_DIR}" in f.read()
