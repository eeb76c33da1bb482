"""--web.config.file: the exporter toolkit's format, TLS, basic auth and headers over real HTTPS."""
import os
import signal
import socket
import ssl
import subprocess
import sys
import time

import bcrypt
import pytest
import requests

from certs import CA
from conftest import ROOT
from exporter.config import ConfigError
from exporter.webconfig import ServerSecurity, load_web_config, parse_duration


def hashpw(password, cost=4):
    return bcrypt.hashpw(password.encode(), bcrypt.gensalt(cost)).decode()


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    openssl = subprocess.run(["which", "openssl"], capture_output=True, text=True).stdout.strip()
    if not openssl:
        from conftest import need_tool
        openssl = need_tool("openssl")
    d = tmp_path_factory.mktemp("pki")
    ca = CA(openssl, d / "ca")
    other = CA(openssl, d / "other", name="other-ca")
    return {
        "ca": ca, "other": other,
        "server": ca.issue("server", "IP:127.0.0.1,DNS:localhost"),
        "server2": other.issue("server2", "IP:127.0.0.1,DNS:localhost"),
        "client": ca.issue("client", "DNS:scraper.example", "clientAuth"),
        "client_other_san": ca.issue("client-b", "DNS:intruder.example", "clientAuth"),
        "client_wrong_ca": other.issue("client-c", "DNS:scraper.example", "clientAuth"),
    }


def write_web(directory, text, name="web.yml"):
    path = directory / name
    path.write_text(text)
    return path


def node_exporter_style(pki, directory, users):
    """A web config written as the node_exporter docs show it, certificate files next to it."""
    cert, key = pki["server"]
    for src, dst in ((cert, "server.crt"), (key, "server.key")):
        (directory / dst).write_bytes(open(src, "rb").read())
    lines = ["tls_server_config:", "  cert_file: server.crt", "  key_file: server.key",
             "http_server_config:", "  headers:", "    X-Frame-Options: deny",
             "    X-Content-Type-Options: nosniff", "    Strict-Transport-Security: max-age=31536000",
             "basic_auth_users:"]
    lines += [f"  {u}: {h}" for u, h in users.items()]
    return write_web(directory, "\n".join(lines) + "\n")


def https(exp):
    return "https://" + exp.address


def session(verify, auth=None):
    """A requests session that trusts ``verify`` only (REQUESTS_CA_BUNDLE would override it)."""
    s = requests.Session()
    s.trust_env = False
    s.verify, s.auth = verify, auth
    return s


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- the loader -------------------------------------------------------------------------------


def test_node_exporter_file_loads(pki, tmp_path):
    path = node_exporter_style(pki, tmp_path, {"prom": hashpw("pw"), "htpasswd": "$2y$" + hashpw("pw2")[4:]})
    web = load_web_config(str(path))
    assert web.tls is not None and web.tls.context.verify_mode == ssl.CERT_NONE
    assert web.tls.context.minimum_version == ssl.TLSVersion.TLSv1_2   # the toolkit's default
    assert set(web.users) == {"prom", "htpasswd"}
    assert web.headers == {"X-Frame-Options": "deny", "X-Content-Type-Options": "nosniff",
                           "Strict-Transport-Security": "max-age=31536000"}
    assert web.files == (str(path), str(tmp_path / "server.crt"), str(tmp_path / "server.key"))


def test_empty_file_means_plain_http_without_auth(tmp_path):
    web = load_web_config(str(write_web(tmp_path, "")))
    assert web.tls is None and web.users == {} and web.headers == {}


@pytest.mark.parametrize("text, message", [
    ("tls_server_conf: {}\n", "tls_server_conf: unknown key"),
    ("tls_server_config: {cert_file: s.pem, key_file: s.key, min_versio: TLS12}\n",
     "tls_server_config.min_versio: unknown key"),
    ("tls_server_config: {cert_file: s.pem, key_file: s.key, min_version: TLS14}\n",
     "tls_server_config.min_version: expected one of TLS10, TLS11, TLS12, TLS13, got 'TLS14'"),
    ("tls_server_config: {cert_file: s.pem, key_file: s.key, min_version: TLS13, max_version: TLS12}\n",
     "tls_server_config.min_version: is above max_version"),
    ("tls_server_config: {cert_file: s.pem, key_file: s.key, client_auth_type: Sometimes}\n",
     "tls_server_config.client_auth_type: expected one of NoClientCert"),
    ("tls_server_config: {cert_file: s.pem, key_file: s.key, client_ca_file: ca.pem}\n",
     "tls_server_config.client_ca_file: client CAs are set but client_auth_type is NoClientCert"),
    ("tls_server_config: {cert_file: s.pem}\n", "tls_server_config.key_file: missing one of key or key_file"),
    ("tls_server_config: {cert_file: nowhere.pem, key_file: s.key}\n",
     "tls_server_config.cert_file: cannot read"),
    ("tls_server_config: {cert_file: s.pem, key_file: other.key}\n",
     "tls_server_config: certificate and key do not load as a pair"),
    ("tls_server_config: {cert_file: s.pem, key_file: s.key, cipher_suites: [TLS_FAKE]}\n",
     "tls_server_config.cipher_suites: unknown cipher: TLS_FAKE"),
    ("tls_server_config: {cert_file: s.pem, key_file: s.key, curve_preferences: [CurveP999]}\n",
     "tls_server_config.curve_preferences: unknown curve: CurveP999"),
    ("tls_server_config: {cert_file: s.pem, key_file: s.key, client_allowed_sans: [a]}\n",
     "tls_server_config.client_allowed_sans: needs client_auth_type"),
    ("basic_auth_users: {prom: hunter2}\n", "basic_auth_users.prom: expected a bcrypt hash"),
    ("basic_auth_users: [prom]\n", "basic_auth_users: expected a mapping"),
    ("http_server_config: {headers: {Server: evil}}\n",
     "http_server_config.headers.Server: header 'Server' can not be configured"),
    ("http_server_config: {headers: {X-Frame-Options: allow}}\n",
     "http_server_config.headers.X-Frame-Options: expected one of deny, sameorigin, got 'allow'"),
    ("http_server_config: {http2: maybe}\n", "http_server_config.http2: expected true or false"),
    ("rate_limit: {interval: soon, burst: 2}\n", "rate_limit.interval: expected a duration"),
    ("tls_server_config: [1, 2]\n", "tls_server_config: expected a mapping"),
    ("- a\n- b\n", "top level: expected a mapping"),
    ("tls_server_config: {cert_file: [\n", "bad YAML"),
])
def test_bad_files_name_the_key(pki, tmp_path, text, message):
    cert, key = pki["server"]
    (tmp_path / "s.pem").write_bytes(open(cert, "rb").read())
    (tmp_path / "s.key").write_bytes(open(key, "rb").read())
    (tmp_path / "other.key").write_bytes(open(pki["client"][1], "rb").read())
    (tmp_path / "ca.pem").write_bytes(open(pki["ca"].cert, "rb").read())
    path = write_web(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load_web_config(str(path))
    assert str(err.value).startswith(f"web config file {path}: ")
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_missing_file_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match=r"web config file .*nope.yml: cannot read: No such file"):
        load_web_config(str(tmp_path / "nope.yml"))


def test_go_durations():
    assert parse_duration("1s") == 1.0
    assert parse_duration("1m30s") == 90.0
    assert parse_duration("250ms") == pytest.approx(0.25)
    assert parse_duration("0") == 0.0
    assert parse_duration(0) == 0.0
    assert parse_duration("1x") is None and parse_duration("s") is None and parse_duration("") is None


def test_inline_cert_and_key(pki, tmp_path):
    cert, key = pki["server"]
    indent = lambda p: "\n".join("    " + line for line in open(p).read().splitlines())  # noqa: E731
    path = write_web(tmp_path, f"tls_server_config:\n  cert: |\n{indent(cert)}\n  key: |\n{indent(key)}\n")
    web = load_web_config(str(path))
    assert web.tls is not None and web.files == (str(path),)


# -- the command line -------------------------------------------------------------------------


def run_cli(*args, timeout=20):
    return subprocess.run([sys.executable, "-m", "exporter", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)


def test_bad_file_at_startup_is_one_line_and_exit_2(tmp_path):
    path = write_web(tmp_path, "tls_server_config:\n  cert_file: a.pem\n  key_file: a.key\n  min_version: TLS9\n")
    r = run_cli("--web.listen-address=127.0.0.1:0", f"--web.config.file={path}")
    assert r.returncode == 2
    err = [line for line in r.stderr.splitlines() if "error" in line]
    assert err == [f"hoofhearted: error: web config file {path}: tls_server_config.min_version: "
                   "expected one of TLS10, TLS11, TLS12, TLS13, got 'TLS9'"], r.stderr
    assert "Traceback" not in r.stderr


def test_check_config_validates_the_web_config(tmp_path):
    web = write_web(tmp_path, "basic_auth_users: {prom: plain}\n")
    conf = tmp_path / "conf.yml"
    conf.write_text(f"web: {{config_file: '{web}'}}\n")
    r = run_cli("check-config", str(conf))
    assert r.returncode == 2 and "basic_auth_users.prom: expected a bcrypt hash" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


# -- live over HTTPS --------------------------------------------------------------------------


def test_tls_and_basic_auth_with_a_node_exporter_file(pki, tmp_path, start_exporter):
    path = node_exporter_style(pki, tmp_path, {"prom": hashpw("s3cret")})
    exp = start_exporter(f"--web.config.file={path}", ready=False)
    ca = pki["ca"].cert
    s = session(ca)
    none = s.get(https(exp) + "/metrics", timeout=5)
    assert none.status_code == 401
    assert none.headers["WWW-Authenticate"].startswith("Basic realm=")
    assert none.headers["X-Frame-Options"] == "deny"
    wrong = s.get(https(exp) + "/metrics", auth=("prom", "nope"), timeout=5)
    assert wrong.status_code == 401 and wrong.headers["WWW-Authenticate"].startswith("Basic")
    unknown = s.get(https(exp) + "/metrics", auth=("root", "s3cret"), timeout=5)
    assert unknown.status_code == 401
    ok = s.get(https(exp) + "/metrics", auth=("prom", "s3cret"), timeout=5)
    assert ok.status_code == 200 and "hoofhearted_build_info{" in ok.text
    assert ok.headers["X-Content-Type-Options"] == "nosniff"
    assert ok.headers["Strict-Transport-Security"] == "max-age=31536000"
    assert "wrong" not in ok.text
    # Every endpoint is behind the password, as with the toolkit.
    assert s.get(https(exp) + "/", timeout=5).status_code == 401
    assert s.get(https(exp) + "/-/healthy", auth=("prom", "s3cret"), timeout=5).status_code == 200
    # Plain HTTP on the TLS port gets nothing.
    with pytest.raises(requests.ConnectionError):
        session(None).get(exp.url + "/metrics", timeout=5)
    # A client that does not trust the CA refuses the server.
    with pytest.raises(requests.exceptions.SSLError):
        session(None).get(https(exp) + "/metrics", verify=pki["other"].cert, timeout=5)
    assert "tls=on" in exp.log and "basic_auth_users=1" in exp.log


def test_same_file_works_with_node_exporter(pki, tmp_path, require_tool, start_exporter):
    node_exporter = require_tool("prometheus-node-exporter")
    path = node_exporter_style(pki, tmp_path, {"prom": hashpw("s3cret", 10)})
    port = free_port()
    proc = subprocess.Popen([node_exporter, f"--web.listen-address=127.0.0.1:{port}", f"--web.config.file={path}",
                             "--collector.disable-defaults", "--collector.loadavg"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        ours = start_exporter(f"--web.config.file={path}", ready=False)
        for base in (f"https://127.0.0.1:{port}", https(ours)):
            deadline = time.monotonic() + 10
            while True:
                try:
                    none = session(None).get(base + "/metrics", verify=pki["ca"].cert, timeout=5)
                    break
                except requests.ConnectionError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.1)
            assert none.status_code == 401, base
            assert none.headers["X-Frame-Options"] == "deny", base
            assert session(None).get(base + "/metrics", verify=pki["ca"].cert, auth=("prom", "x"),
                                timeout=5).status_code == 401, base
            ok = session(None).get(base + "/metrics", verify=pki["ca"].cert, auth=("prom", "s3cret"), timeout=5)
            assert ok.status_code == 200, base
            assert ("node_load1 " in ok.text) if base.endswith(str(port)) else ("hoofhearted_build_info" in ok.text)
    finally:
        proc.terminate()
        proc.wait(5)


def test_password_checks_are_cached(pki, tmp_path, start_exporter):
    """A cost-12 hash costs ~0.2 s to check; only the first scrape with a password pays it."""
    path = node_exporter_style(pki, tmp_path, {"prom": hashpw("s3cret", 12)})
    exp = start_exporter(f"--web.config.file={path}", ready=False)
    s = session(pki["ca"].cert, ("prom", "s3cret"))
    t = time.perf_counter()
    assert s.get(https(exp) + "/-/healthy", timeout=10).status_code == 200
    first = time.perf_counter() - t
    times = []
    for _ in range(20):
        t = time.perf_counter()
        assert s.get(https(exp) + "/metrics", timeout=5).status_code == 200
        times.append(time.perf_counter() - t)
    times.sort()
    assert first > 0.05, first
    assert times[len(times) // 2] < first / 4 and times[len(times) // 2] < 0.03, (first, times)
    # A wrong password is cached as wrong, not as right.
    assert s.get(https(exp) + "/metrics", auth=("prom", "s3cret!"), timeout=5).status_code == 401
    assert s.get(https(exp) + "/metrics", auth=("prom", "s3cret!"), timeout=5).status_code == 401


def client_tls_get(exp, pki, cert=None, server_hostname="localhost", **ctx_args):
    """One raw HTTPS request; returns the status line or raises the handshake error."""
    ctx = ssl.create_default_context(cafile=pki["ca"].cert)
    for k, v in ctx_args.items():
        setattr(ctx, k, v)
    if cert:
        ctx.load_cert_chain(*cert)
    host, port = exp.address.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=5) as raw:
        with ctx.wrap_socket(raw, server_hostname=server_hostname) as s:
            s.sendall(b"GET /-/healthy HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            data = b""
            while True:
                chunk = s.recv(4096)
                if not chunk:
                    break
                data += chunk
            return data.split(b"\r\n", 1)[0].decode()


def refused(exp, pki, cert=None, **ctx_args):
    """The server ends the connection without answering (an alert, or a close after TLS 1.3's handshake)."""
    try:
        return client_tls_get(exp, pki, cert, **ctx_args) == ""
    except (ssl.SSLError, OSError):
        return True


def test_client_certificates_required_and_verified(pki, tmp_path, start_exporter):
    cert, key = pki["server"]
    path = write_web(tmp_path, f"tls_server_config:\n  cert_file: {cert}\n  key_file: {key}\n"
                               f"  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: {pki['ca'].cert}\n"
                               "  client_allowed_sans: [scraper.example]\n")
    exp = start_exporter(f"--web.config.file={path}", ready=False)
    assert client_tls_get(exp, pki, pki["client"]) == "HTTP/1.1 200 OK"
    ok = session(None).get(https(exp) + "/metrics", verify=pki["ca"].cert, cert=pki["client"], timeout=5)
    assert ok.status_code == 200
    for bad in (None, pki["client_wrong_ca"], pki["client_other_san"]):
        assert refused(exp, pki, bad), bad
    with pytest.raises(requests.ConnectionError):     # with TLS 1.3 the refusal comes after the handshake
        session(None).get(https(exp) + "/metrics", verify=pki["ca"].cert, timeout=5)


def test_verify_client_cert_if_given(pki, tmp_path, start_exporter):
    cert, key = pki["server"]
    path = write_web(tmp_path, f"tls_server_config:\n  cert_file: {cert}\n  key_file: {key}\n"
                               f"  client_auth_type: VerifyClientCertIfGiven\n  client_ca_file: {pki['ca'].cert}\n")
    exp = start_exporter(f"--web.config.file={path}", ready=False)
    assert client_tls_get(exp, pki) == "HTTP/1.1 200 OK"
    assert client_tls_get(exp, pki, pki["client"]) == "HTTP/1.1 200 OK"
    assert refused(exp, pki, pki["client_wrong_ca"])


def test_min_version(pki, tmp_path, start_exporter):
    cert, key = pki["server"]
    path = write_web(tmp_path, f"tls_server_config:\n  cert_file: {cert}\n  key_file: {key}\n  min_version: TLS13\n")
    exp = start_exporter(f"--web.config.file={path}", ready=False)
    assert client_tls_get(exp, pki) == "HTTP/1.1 200 OK"
    with pytest.raises(ssl.SSLError):
        client_tls_get(exp, pki, maximum_version=ssl.TLSVersion.TLSv1_2)


def serving_ca(exp, pki):
    """Which CA signed the certificate a new connection gets."""
    for name in ("ca", "other"):
        try:
            r = session(None).get(https(exp) + "/-/healthy", verify=pki[name].cert, timeout=5)
            if r.status_code == 200:
                return name
        except requests.exceptions.SSLError:
            continue
    return None


def test_certificate_rotation_without_restart(pki, tmp_path, start_exporter):
    cert, key = pki["server"]
    (tmp_path / "tls.crt").write_bytes(open(cert, "rb").read())
    (tmp_path / "tls.key").write_bytes(open(key, "rb").read())
    path = write_web(tmp_path, "tls_server_config: {cert_file: tls.crt, key_file: tls.key}\n")
    exp = start_exporter(f"--web.config.file={path}", ready=False)
    assert serving_ca(exp, pki) == "ca"
    keep = session(pki["ca"].cert)
    assert keep.get(https(exp) + "/metrics", timeout=5).status_code == 200
    # Rotate as cert-manager or certbot do: new files renamed into place.
    cert2, key2 = pki["server2"]
    for src, dst in ((cert2, "tls.crt"), (key2, "tls.key")):
        (tmp_path / (dst + ".new")).write_bytes(open(src, "rb").read())
        os.replace(tmp_path / (dst + ".new"), tmp_path / dst)
    deadline = time.monotonic() + 5
    while serving_ca(exp, pki) != "other":
        assert time.monotonic() < deadline, "new certificate not picked up:\n" + exp.log
        time.sleep(0.2)
    assert exp.proc.poll() is None
    assert keep.get(https(exp) + "/metrics", timeout=5).status_code == 200   # open connections carry on


def test_bad_edit_keeps_the_last_good_config(pki, tmp_path, start_exporter):
    path = node_exporter_style(pki, tmp_path, {"prom": hashpw("old")})
    good = path.read_text()
    exp = start_exporter(f"--web.config.file={path}", ready=False)
    s = session(pki["ca"].cert)
    assert s.get(https(exp) + "/metrics", auth=("prom", "old"), timeout=5).status_code == 200
    path.write_text(good.replace("basic_auth_users:", "basic_auth_userz:"))
    for _ in range(12):      # ~3 s of scrapes on new connections: every one still served
        assert session(None).get(https(exp) + "/metrics", verify=pki["ca"].cert, auth=("prom", "old"),
                            timeout=5).status_code == 200
        time.sleep(0.25)
    errors = [line for line in exp.lines if "web config not reloaded" in line]
    assert len(errors) == 1, exp.log
    assert "basic_auth_userz: unknown key" in errors[0] and "level=error" in errors[0]
    # Fixed: the new password is in force, the old one is not.
    path.write_text(good.replace(good.split("prom: ")[1].strip(), hashpw("new")))
    deadline = time.monotonic() + 5
    while s.get(https(exp) + "/metrics", auth=("prom", "new"), timeout=5).status_code != 200:
        assert time.monotonic() < deadline, exp.log
        time.sleep(0.2)
    assert s.get(https(exp) + "/metrics", auth=("prom", "old"), timeout=5).status_code == 401


def test_sighup_reloads_even_when_the_file_looks_unchanged(pki, tmp_path, start_exporter):
    old, new = hashpw("old"), hashpw("new")
    assert len(old) == len(new)
    path = node_exporter_style(pki, tmp_path, {"prom": old})
    exp = start_exporter(f"--web.config.file={path}", ready=False)
    s = session(pki["ca"].cert)
    assert s.get(https(exp) + "/metrics", auth=("prom", "old"), timeout=5).status_code == 200
    st = os.stat(path)
    with open(path, "r+") as f:       # same inode, same size, same mtime: only SIGHUP can tell
        text = f.read()
        f.seek(0)
        f.write(text.replace(old, new))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    time.sleep(1.5)
    assert s.get(https(exp) + "/metrics", auth=("prom", "old"), timeout=5).status_code == 200
    os.kill(exp.proc.pid, signal.SIGHUP)
    deadline = time.monotonic() + 5
    while s.get(https(exp) + "/metrics", auth=("prom", "new"), timeout=5).status_code != 200:
        assert time.monotonic() < deadline, exp.log
        time.sleep(0.1)
    assert s.get(https(exp) + "/metrics", auth=("prom", "old"), timeout=5).status_code == 401
    assert exp.proc.poll() is None


def test_reload_keeps_cached_passwords_when_users_do_not_change(pki, tmp_path):
    path = node_exporter_style(pki, tmp_path, {"prom": hashpw("pw")})
    sec = ServerSecurity(str(path))
    header = "Basic cHJvbTpwdw=="      # prom:pw
    assert sec.current.auth.cached(header) is None
    assert sec.current.auth.check(header) is True
    assert sec.reload() is True
    assert sec.current.auth.cached(header) is True
    path.write_text(path.read_text().replace("X-Frame-Options: deny", "X-Frame-Options: sameorigin"))
    assert sec.reload() is True and sec.current.headers["X-Frame-Options"] == "sameorigin"
    assert sec.current.auth.cached(header) is True
    text = path.read_text()
    path.write_text(text.replace(text.split("prom: ")[1].strip(), hashpw("other")))
    assert sec.reload() is True and sec.current.auth.cached(header) is None
    path.write_text("nonsense: 1\n")
    assert sec.reload(log_errors=False) is False
    assert "prom" in sec.current.users
