"""Security of a running exporter: a web config change never weakens it, errors never echo a
file's contents, configuration has bounds, and small protocol details (issue 15)."""
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import bcrypt
import pytest
import requests

from conftest import ROOT, SYSFS
from test_webconfig import https, node_exporter_style, pki, session   # noqa: F401  (pki is a fixture)

ARGS = (f"--path.sysfs={SYSFS}",)
SETTLE = 2.0        # more than the watcher's look interval plus the time files must stay unchanged


def hashpw(password):
    return bcrypt.hashpw(password.encode(), bcrypt.gensalt(4)).decode()


def plain_get(exp):
    """A plain-HTTP GET with no password; the status, or None when the server did not answer in HTTP."""
    try:
        r = requests.get("http://" + exp.address + "/metrics", timeout=3)
        return r.status_code
    except requests.RequestException:
        return None


def secured_exporter(pki, tmp_path, start_exporter):
    path = node_exporter_style(pki, tmp_path, {"prom": hashpw("pw")})
    exp = start_exporter(*ARGS, f"--web.config.file={path}", ready=False)
    s = session(pki["ca"].cert)
    assert s.get(https(exp) + "/metrics", auth=("prom", "pw"), timeout=5).status_code == 200
    return path, exp, s


def still_secured(exp, s, pki):
    assert plain_get(exp) is None
    assert s.get(https(exp) + "/metrics", timeout=5).status_code == 401
    assert s.get(https(exp) + "/metrics", auth=("prom", "pw"), timeout=5).status_code == 200


def without_section(text, section):
    out, skipping = [], False
    for line in text.splitlines(keepends=True):
        if not line.startswith(" "):
            skipping = line.startswith(section + ":")
        if not skipping:
            out.append(line)
    return "".join(out)


@pytest.mark.parametrize("edit, reason", [
    (lambda text: "", "the file is empty"),
    (lambda text: "# being rewritten\n", "the file is empty"),
    (lambda text: without_section(text, "tls_server_config"), "TLS would be turned off"),
    (lambda text: without_section(text, "basic_auth_users"), "basic auth would be turned off"),
])
def test_a_reload_never_weakens_security(pki, tmp_path, start_exporter, edit, reason):
    path, exp, s = secured_exporter(pki, tmp_path, start_exporter)
    with open(path, "r+") as f:            # rewritten in place, as an editor or config manager does
        text = f.read()
        f.seek(0)
        f.truncate()
        f.write(edit(text))
    time.sleep(SETTLE)
    still_secured(exp, s, pki)
    errors = [line for line in exp.lines if "web config not reloaded" in line]
    assert len(errors) == 1 and "level=error" in errors[0] and reason in errors[0], exp.log
    os.kill(exp.proc.pid, signal.SIGHUP)        # nor does a reload on demand
    deadline = time.monotonic() + 5
    while len([line for line in exp.lines if "web config not reloaded" in line]) < 2:
        assert time.monotonic() < deadline, exp.log
        time.sleep(0.05)
    still_secured(exp, s, pki)
    # A restart is how an operator really turns it off.
    exp.stop()
    if reason != "the file is empty":
        again = start_exporter(*ARGS, f"--web.config.file={path}", ready=False)
        assert "web config loaded" in again.log


def test_non_atomic_rewrites_never_let_anyone_in(pki, tmp_path, start_exporter):
    """The same good file written in place over and over (truncate, then a few chunks): the
    server never reads it half-written, so no request without a password gets an answer."""
    path, exp, s = secured_exporter(pki, tmp_path, start_exporter)
    good = path.read_text()
    stop, got = threading.Event(), {"plain": [], "no_auth": [], "auth": []}

    def rewrite():
        while not stop.is_set():
            with open(path, "r+") as f:
                f.truncate(0)
                f.flush()
                time.sleep(0.1)              # an editor that truncates, then writes
                for i in range(0, len(good), 200):
                    f.write(good[i:i + 200])
                    f.flush()
                    time.sleep(0.05)
            stop.wait(0.7)

    def probe():
        while not stop.is_set():
            got["plain"].append(plain_get(exp))
            fresh = session(pki["ca"].cert)
            got["no_auth"].append(fresh.get(https(exp) + "/metrics", timeout=5).status_code)
            got["auth"].append(fresh.get(https(exp) + "/metrics", auth=("prom", "pw"), timeout=5).status_code)

    threads = [threading.Thread(target=rewrite), threading.Thread(target=probe)]
    for t in threads:
        t.start()
    time.sleep(8)
    stop.set()
    for t in threads:
        t.join(10)
    assert set(got["plain"]) == {None} and set(got["no_auth"]) == {401}, got
    assert set(got["auth"]) == {200} and len(got["auth"]) > 10, got


def test_security_changes_are_logged_at_warning(pki, tmp_path, start_exporter):
    path, exp, s = secured_exporter(pki, tmp_path, start_exporter)
    tmp = tmp_path / "web.yml.new"
    tmp.write_text(path.read_text() + f"  ops: {hashpw('ops')}\n")
    os.replace(tmp, path)
    deadline = time.monotonic() + 5
    while s.get(https(exp) + "/metrics", auth=("ops", "ops"), timeout=5).status_code != 200:
        assert time.monotonic() < deadline, exp.log
        time.sleep(0.2)
    changes = [line for line in exp.lines if "web config security changed" in line]
    assert len(changes) == 1 and "level=warning" in changes[0], exp.log
    assert "basic_auth_users added: ops" in changes[0]


# -- error messages never show a file's text -------------------------------------------------

SHADOW = ("root:$y$j9T$Qm9vYmFy$Zm9vYmFyYmF6cXV4Zm9vYmFyYmF6cXV4Zm9v:20228:0:99999:7:::\n"
          "daemon:*:20228:0:99999:7:::\n"
          "svc: $6$rounds=5000$saltsalt$c2VjcmV0aGFzaHZhbHVl\n")


@pytest.mark.parametrize("flag", ["--web.config.file", "--config.file"])
@pytest.mark.parametrize("text", [
    SHADOW,
    "basic_auth_users: {admin: $6$rounds=5000$saltsalt$c2VjcmV0aGFzaHZhbHVl}\n",
    "tls_server_config: {cert_file: [s3cr3t-Passw0rd!]}\n",
    "web: {listen_address: 's3cr3t Passw0rd! hunter2 value'}\n",
    "http_server_config: {headers: {X-Frame-Options: 's3cr3t Passw0rd!'}}\n",
    "\"s3cr3t Passw0rd!\": 1\n",
    "'s3cr3t: !Passw0rd",
])
def test_errors_name_the_key_not_the_file_text(tmp_path, flag, text):
    path = tmp_path / "secret.yml"
    path.write_text(text)
    r = subprocess.run([sys.executable, "-m", "exporter", "--web.listen-address=127.0.0.1:0", f"{flag}={path}"],
                       cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and r.stdout == ""
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("hoofhearted: error: "), r.stderr
    if flag == "--web.config.file":
        assert str(path) in lines[0]
    for secret in ("Zm9vYmFy", "c2VjcmV0", "s3cr3t", "Passw0rd", "hunter2", "20228", "daemon"):
        assert secret not in lines[0], lines[0]


# -- configuration bounds ---------------------------------------------------------------------

@pytest.mark.parametrize("text, message", [
    ("tiers: {critical: 0.000000001}\n", "tiers.critical: expected a positive number of seconds, got 1e-09 "
                                         "(allowed: 0.05 to 60)"),
    ("tiers: {standard: 1000000000000.0}\n", "tiers.standard: expected a positive number of seconds, "
                                             "got 1000000000000.0"),
    ("tiers: {background: 300}\n", "tiers.background: expected a positive number of seconds, got 300.0 "
                                   "(allowed: 0.05 to 60)"),
    ("tiers: {critical: .nan}\n", "tiers.critical: expected a positive number of seconds, got nan"),
    ("tiers: {critical: .inf}\n", "tiers.critical: expected a positive number of seconds, got inf"),
    ("process: {top_n: 1000000000}\n", "process.top_n: expected a non-negative integer, got 1000000000 "
                                       "(allowed: 0 to 1000)"),
    ("web: {max_header_bytes: 1}\n", "web.max_header_bytes: expected a positive integer, got 1 "
                                     "(allowed: 1024 to 1048576)"),
    ("web: {max_header_bytes: 1000000000000}\n", "web.max_header_bytes: expected a positive integer"),
    ("refresh: {timeout_seconds: 1.0e+300}\n", "refresh.timeout_seconds: expected a positive number of seconds"),
    ("gpu: {nvml_module: os}\n", "gpu.nvml_module: expected one of pynvml, py3nvml.py3nvml, "
                                 "tests.fakenvml.<scenario>, tests.hangnvml, got 'os'"),
    ("gpu: {nvml_module: subprocess}\n", "gpu.nvml_module: expected one of"),
    ("process:\n  top_n: 3\n  top_n: 4\n", "duplicate key top_n at line 3"),
    ("web: {}\nweb: {}\n", "duplicate key web at line 2"),
])
def test_configuration_bounds(tmp_path, text, message):
    path = tmp_path / "c.yml"
    path.write_text(text)
    r = subprocess.run([sys.executable, "-m", "exporter", "--web.listen-address=127.0.0.1:0", f"--config.file={path}"],
                       cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert message in r.stderr, r.stderr


def test_duplicate_keys_in_the_web_config(tmp_path):
    path = tmp_path / "web.yml"
    path.write_text(f"basic_auth_users:\n  prom: {hashpw('a')}\n  prom: {hashpw('b')}\n")
    r = subprocess.run([sys.executable, "-m", "exporter", f"--web.config.file={path}"],
                       cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert r.returncode == 2
    assert r.stderr.strip() == f"hoofhearted: error: web config file {path}: duplicate key prom at line 3"


def test_environment_bounds():
    from exporter import config as cfgmod
    with pytest.raises(cfgmod.ConfigError, match=r"HOOFHEARTED_TIERS_CRITICAL: .* \(allowed: 0.05 to 60\)"):
        cfgmod.build(environ={"HOOFHEARTED_TIERS_CRITICAL": "1e-9"})
    assert cfgmod.build(environ={"HOOFHEARTED_TIERS_CRITICAL": "0.05"})["tiers"]["critical"] == 0.05


# -- protocol details -------------------------------------------------------------------------

def raw(exp, data):
    host, port = exp.address.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=5) as s:
        s.sendall(data)
        out = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                return out
            out += chunk


@pytest.mark.parametrize("version, code", [(b"HTTP/1.2", 505), (b"HTTP/1.9", 505), (b"HTTP/2.0", 505),
                                           (b"HTTP/1.1", 200), (b"HTTP/1.0", 200)])
def test_http_versions(start_exporter, version, code):
    exp = start_exporter(*ARGS)
    out = raw(exp, b"GET /-/healthy " + version + b"\r\nConnection: close\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 %d " % code), out[:80]


@pytest.mark.parametrize("accept, openmetrics", [
    ("application/openmetrics-text;version=1.0.0;q=0,text/plain;q=0.5", False),
    ("application/openmetrics-text; q=0.0", False),
    ("application/openmetrics-text;version=1.0.0;q=0.5,text/plain;q=0.4", True),
    ("application/openmetrics-text", True),
    ("text/plain", False),
])
def test_accept_q_zero_means_no(start_exporter, accept, openmetrics):
    exp = start_exporter(*ARGS)
    r = exp.get("/metrics", headers={"Accept": accept})
    assert r.status_code == 200
    assert r.headers["Content-Type"].startswith("application/openmetrics-text" if openmetrics else "text/plain")


def test_reloads_run_on_their_own_thread_not_on_requests(tmp_path, start_exporter):
    """The old server re-read the files inside the event loop when a connection came in; now a
    watcher thread does, with no request needed, and requests never wait for YAML or certificates."""
    web = tmp_path / "web.yml"
    web.write_text("http_server_config: {headers: {X-Frame-Options: deny}}\n")
    exp = start_exporter(*ARGS, f"--web.config.file={web}", ready=False)
    time.sleep(0.5)
    new = tmp_path / "web.yml.new"
    new.write_text("http_server_config: {headers: {X-Frame-Options: sameorigin}}\n")
    os.replace(new, web)
    deadline = time.monotonic() + 5
    while sum("web config loaded" in line for line in exp.lines) < 2:      # no request sent at all
        assert time.monotonic() < deadline, exp.log
        time.sleep(0.05)
    assert exp.get("/-/healthy").headers["X-Frame-Options"] == "sameorigin"


def test_widening_cipher_suites_is_a_weakening(pki, tmp_path):
    """Dropping the cipher list, or adding a cipher the running config refuses, lets in clients
    the running config keeps out; narrowing it does not."""
    from exporter.webconfig import load_web_config, weakenings
    base = node_exporter_style(pki, tmp_path, {"prom": hashpw("pw")}).read_text()

    def with_ciphers(name, ciphers):
        text = base.replace("  key_file: server.key\n", "  key_file: server.key\n" + (
            "  cipher_suites: [" + ", ".join(ciphers) + "]\n" if ciphers else ""))
        p = tmp_path / name
        p.write_text(text)
        return load_web_config(str(p))

    strong = ["TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256", "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384"]
    old = with_ciphers("old.yml", strong)
    why = "cipher_suites would allow ciphers the running config refuses"
    assert weakenings(old, with_ciphers("wider.yml", strong + ["TLS_RSA_WITH_AES_128_CBC_SHA"])) == [why]
    assert weakenings(old, with_ciphers("defaults.yml", [])) == [why]
    assert weakenings(old, with_ciphers("narrower.yml", strong[:1])) == []
    assert weakenings(with_ciphers("none.yml", []), with_ciphers("some.yml", strong)) == []
