"""Property-based fuzzing: config loaders, the fdinfo parser, the command-line redactor and the
HTTP request path. `make test` runs a small budget; `make fuzz` (HYPOTHESIS_PROFILE=fuzz) a
long one. Properties: no crash other than the loader's own one-line error, no hang, no secret
in the output, never a 500 or a traceback from the server, and the server still serving."""
import base64
import os
import re
import socket
import subprocess
import tempfile
import time

import bcrypt
import pytest
import yaml
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from conftest import SYSFS
from exporter import config as cfgmod
from exporter.webconfig import KEYS, ServerSecurity, load_web_config

settings.register_profile("quick", max_examples=40, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("fuzz", max_examples=4000, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "quick"))

# -- YAML documents ---------------------------------------------------------------------------

scalars = st.one_of(st.none(), st.booleans(), st.integers(-10 ** 12, 10 ** 12),
                    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=30),
                    st.sampled_from(["TLS12", "TLS13", "1s", "0", "NoClientCert", "RequireAndVerifyClientCert",
                                     "127.0.0.1:0", "[::1]:9", ":80", "info", "critical", "deny",
                                     "$2b$04$" + "a" * 53, "/nonexistent", "-1", "1e999"]))


def documents(key_names):
    keys = st.one_of(st.sampled_from(sorted(key_names)), st.text(max_size=12))
    return st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                         st.dictionaries(keys, inner, max_size=5)),
                        max_leaves=20)


CONFIG_KEYS = {k for path in cfgmod.FIELDS for k in path}
WEB_KEYS = set(KEYS) | {k for v in KEYS.values() if v for k in v} | {"X-Frame-Options", "Server", "prom"}

yaml_text = st.one_of(
    st.text(max_size=300),
    st.lists(st.sampled_from(["a:", " b: 1", "- x", "? [a, b]", ": 1", "!!python/object:os.system x",
                              "&a [*a]", "{", "}", "2001-13-45", "'", '"\\x"', "\t", "---", "...", "%YAML 9",
                              "web:", "  listen_address: x", "tls_server_config:", "  cert_file: /dev/null"]),
             max_size=12).map("\n".join),
)


def in_file(data, binary=False):
    fd, path = tempfile.mkstemp(suffix=".yml")
    with os.fdopen(fd, "wb" if binary else "w") as f:
        f.write(data)
    return path


def check_loader(load, path):
    try:
        load(path)
    except cfgmod.ConfigError as e:
        msg = str(e)
        assert msg and "\n" not in msg and "Traceback" not in msg
    finally:
        os.unlink(path)


@given(documents(CONFIG_KEYS))
def test_config_loader_structured(doc):
    check_loader(lambda p: cfgmod.build(file=p, environ={}), in_file(yaml.safe_dump(doc)))


@given(st.one_of(yaml_text, st.binary(max_size=200)))
def test_config_loader_raw(text):
    check_loader(cfgmod.load_file, in_file(text, binary=isinstance(text, bytes)))


@given(documents(WEB_KEYS))
def test_web_config_loader_structured(doc):
    check_loader(load_web_config, in_file(yaml.safe_dump(doc)))


@given(st.one_of(yaml_text, st.binary(max_size=200)))
def test_web_config_loader_raw(text):
    check_loader(load_web_config, in_file(text, binary=isinstance(text, bytes)))


@given(st.dictionaries(st.text(max_size=20), st.text(max_size=40), max_size=6))
def test_environment_overrides(env):
    env = {"HOOFHEARTED_" + k.upper(): v for k, v in env.items() if "\0" not in k + v}
    try:
        cfgmod.build(environ=env)
    except cfgmod.ConfigError as e:
        assert "\n" not in str(e)


# -- fdinfo -----------------------------------------------------------------------------------

fdinfo = pytest.importorskip("exporter.sources.fdinfo")
UNITS = ["", " KiB", " MiB", " GiB", " ns", " B", " XiB"]
FDINFO_KEYS = ["drm-driver", "drm-pdev", "drm-client-id", "drm-engine-gfx", "drm-engine-capacity-rcs",
               "drm-cycles-rcs", "drm-total-cycles-rcs", "drm-total-vram", "drm-memory-vram", "drm-total-gtt",
               "drm-resident-vram", "pos", "flags"]
fdinfo_lines = st.lists(st.tuples(st.one_of(st.sampled_from(FDINFO_KEYS), st.text(max_size=15)),
                                  st.sampled_from([":", ":\t", " ", ""]),
                                  st.one_of(st.integers(-10 ** 20, 10 ** 20).map(str),
                                            st.tuples(st.integers(0, 10 ** 15), st.sampled_from(UNITS))
                                            .map(lambda t: f"{t[0]}{t[1]}"),
                                            st.text(max_size=20))),
                        max_size=15).map(lambda rows: "\n".join(k + s + v for k, s, v in rows))


@given(fdinfo_lines)
def test_fdinfo_parser(text):
    c = fdinfo.parse(text, pid=1)
    drivers = [v.strip() for k, sep, v in (line.partition(":") for line in text.splitlines())
               if sep and k == "drm-driver"]
    if c is None:
        assert not drivers or not drivers[-1]     # the last drm-driver line counts
        return
    assert c.driver == drivers[-1]
    for d in (c.engines, c.cycles, c.total_cycles, c.memory, c.capacity):
        assert all(isinstance(v, int) for v in d.values())
    mem = c.gpu_memory()
    assert mem is None or isinstance(mem, int)


# -- command-line redaction -------------------------------------------------------------------

redact = pytest.importorskip("exporter.redact")
secrets = st.text(alphabet="abcdefghijkmnopqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789!%+-._~",
                  min_size=6, max_size=40).filter(lambda s: not s.startswith("-"))
SECRET_KEYS = ["password", "passwd", "api-key", "apikey", "auth-token", "client_secret", "PGPASSWORD",
               "MYSQL_ROOT_PASSWORD", "AWS_SECRET_ACCESS_KEY", "token", "secret", "db.credentials.password",
               "keyStorePassword", "access_token", "private-key", "requirepass"]
TEMPLATES = [
    "--{k}={s}", "{K}={s}", "-D{k}={s}", "--{k}\0{s}", "https://user:{s}@example.com/x", "{k}: {s}",
    "Authorization: Bearer {s}", "host=db {k}={s} port=1", "x?{k}={s}&y=1", '{{"{k}": "{s}"}}',
    "postgres://app:{s}@db:5432/shop",
]
benign = st.lists(st.one_of(st.sampled_from(["-v", "--port=80", "serve", "/usr/bin/app", "--user", "alice",
                                             "-D", "/var/lib/x", "--config", "/etc/app.yml", "mysql", "-u"]),
                            st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=12)),
                  max_size=5)


@given(st.sampled_from(["app", "python3", "java", "mysql", "env", "curl"]), benign,
       st.lists(st.tuples(st.sampled_from(TEMPLATES), st.sampled_from(SECRET_KEYS), secrets), min_size=1, max_size=3),
       benign, st.integers(1, 400))
def test_redactor_never_leaks_a_secret(program, before, planted, after, max_length):
    def build(values):
        args = [program, *before]
        for (template, key, _), value in zip(planted, values):
            args += template.format(k=key, K=key.upper().replace("-", "_").replace(".", "_"), s=value).split("\0")
        return args + after

    elsewhere = " ".join(build(["\x01"] * len(planted)))
    for _, _, secret in planted:
        assume(secret not in elsewhere)          # the secret is only where it was planted
    args = build([s for _, _, s in planted])
    line = redact.redact_cmdline(args, max_length)
    full = " ".join(redact.redact_args(args))
    assert len(line) <= max_length
    for _, _, secret in planted:
        assert secret not in full, (args, full)
        assert secret not in line


def test_redactor_dotted_header_key():      # found by the property above
    assert "222222" not in redact.redact_cmdline(["app", "db.credentials.password: 222222"])


# -- the HTTP request path --------------------------------------------------------------------

PASSWORD = "fuzz-pw"
ALLOWED = {200, 400, 401, 404, 405, 408, 429, 431, 503, 505}


@pytest.fixture(scope="module")
def live_server(tmp_path_factory):
    from exporter import collectors
    from exporter.scheduler import Scheduler

    d = tmp_path_factory.mktemp("fuzzweb")
    web = d / "web.yml"
    web.write_text(f"basic_auth_users:\n  prom: {bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(4)).decode()}\n"
                   "http_server_config: {headers: {X-Content-Type-Options: nosniff}}\n")
    flags = {("paths", "sysfs"): SYSFS, ("web", "config_file"): str(web),
             ("web", "read_timeout_seconds"): 0.5, ("web", "max_header_bytes"): 2048}
    for name in ("process", "nvidia", "nvidia_pcie", "amdgpu", "gpu_process", "filesystem"):
        if name in cfgmod.COLLECTOR_TIERS:
            flags[("collectors", name, "enabled")] = False
    cfg = cfgmod.build(environ={}, flags=flags)
    sched = Scheduler(collectors.build(cfg), cfg)
    sched.start()
    server = ServerSecurity(str(web)).make_server(("127.0.0.1", 0), sched, cfg)
    server.serve_in_thread()
    yield server.server_address
    server.shutdown()
    server.server_close()
    sched.stop()


def talk(address, data, timeout=3.0):
    """Send, half-close, read to the end. A hang fails the example."""
    with socket.create_connection(address, timeout=timeout) as s:
        try:
            s.sendall(data)
            s.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            pass
        out = b""
        deadline = time.monotonic() + timeout
        while True:
            try:
                chunk = s.recv(65536)
            except ConnectionResetError:
                break
            except socket.timeout:
                raise AssertionError(f"server hung on {data[:200]!r}")
            if not chunk:
                break
            out += chunk
            assert time.monotonic() < deadline, f"server hung on {data[:200]!r}"
        return out


def check_answer(address, data):
    out = talk(address, data)
    statuses = re.findall(rb"HTTP/1\.1 (\d{3}) ", out)
    if out:
        assert out.startswith(b"HTTP/1.1 "), out[:100]
    for code in statuses:
        assert int(code) in ALLOWED, (data[:200], out[:300])
    assert b"Traceback" not in out and b'File "' not in out
    health = talk(address, b"GET /-/healthy HTTP/1.1\r\nAuthorization: Basic "
                  + base64.b64encode(b"prom:" + PASSWORD.encode()) + b"\r\nConnection: close\r\n\r\n")
    assert health.startswith(b"HTTP/1.1 200 OK"), health[:100]


def _auth():
    good = base64.b64encode(f"prom:{PASSWORD}".encode()).decode()
    return st.one_of(st.just("Basic " + good), st.text(max_size=40),
                     st.binary(max_size=30).map(lambda b: "Basic " + base64.b64encode(b).decode()),
                     st.sampled_from(["Basic", "Basic ", "Bearer x", "Basic ====", "basic " + good]))


token_text = st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=255), max_size=30)
requests_ = st.builds(
    lambda method, target, version, headers, eol, body: (
        f"{method} {target} {version}{eol}" + "".join(f"{k}: {v}{eol}" for k, v in headers) + eol + body
    ).encode("utf-8", "surrogatepass"),
    st.one_of(st.sampled_from(["GET", "HEAD", "POST", "PUT", "OPTIONS", "get", "G ET", ""]), token_text),
    st.one_of(st.sampled_from(["/metrics", "/", "/-/healthy", "/-/ready", "*", "http://h/metrics", "/metrics?x=1",
                               "/../../etc/passwd", "//", "/%00"]), token_text),
    st.one_of(st.sampled_from(["HTTP/1.1", "HTTP/1.0", "HTTP/2.0", "HTTP/1.1 ", "http/1.1"]), token_text),
    st.lists(st.one_of(
        st.tuples(st.just("Authorization"), _auth()),
        st.tuples(st.sampled_from(["Accept", "Accept-Encoding", "Connection", "Content-Length", "Host",
                                   "Transfer-Encoding", "X-Prometheus-Scrape-Timeout-Seconds", "Expect"]),
                  st.one_of(st.sampled_from(["gzip", "application/openmetrics-text", "close", "keep-alive",
                                             "0", "5", "-1", "chunked", "1e9", "nan", "100-continue"]), token_text)),
        st.tuples(token_text, token_text)), max_size=6),
    st.sampled_from(["\r\n", "\n"]),
    st.one_of(st.just(""), token_text, st.just("GET /metrics HTTP/1.1\r\n\r\n")),
)


@given(requests_)
def test_http_structured_requests(live_server, data):
    check_answer(live_server, data)


@given(st.binary(max_size=3000))
def test_http_raw_bytes(live_server, data):
    check_answer(live_server, data)


def test_server_survived_the_fuzzing(live_server):
    out = talk(live_server, b"GET /metrics HTTP/1.1\r\nAuthorization: Basic "
               + base64.b64encode(b"prom:" + PASSWORD.encode()) + b"\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 200 OK") and b"hoofhearted_collector_success" in out
    assert b"X-Content-Type-Options: nosniff" in out


@given(st.binary(max_size=600))
def test_parse_head_only_raises_bad_request(head):
    from exporter.server import BadRequest, parse_head
    try:
        req = parse_head(head)
    except BadRequest as e:
        assert e.code in (400, 505)
        return
    assert req.method and isinstance(req.headers, dict) and isinstance(req.keep_alive, bool)


# -- label values through the renderer ---------------------------------------------------------

any_text = st.text(alphabet=st.characters(blacklist_categories=()), max_size=40)   # surrogates included


def _expected(v):
    return "".join("\ufffd" if "\ud800" <= c <= "\udfff" else c for c in v)


def _openmetrics_body(families):
    from exporter import render
    return render.join_parts([render.openmetrics_parts(families)]) + b"# EOF\n"


@given(st.lists(st.tuples(any_text, any_text), min_size=1, max_size=6, unique_by=lambda t: tuple(map(_expected, t))))
def test_any_label_value_renders_to_a_valid_exposition(values):
    """Any unicode (control characters, line breaks, quotes, backslashes, lone surrogates) in a
    label value comes out as an exposition that promtool and prometheus_client both accept,
    with the value intact (a lone surrogate as U+FFFD)."""
    from prometheus_client.openmetrics.parser import text_string_to_metric_families as om_parse
    from prometheus_client.parser import text_string_to_metric_families as text_parse

    from conftest import need_tool
    from exporter import render
    from exporter.families import Family

    fam = Family("hoofhearted_fuzz_info", "Label values from the fuzzer.", "gauge", ["name", "user"])
    for name, user in values:
        fam.add_metric([name, user], 1)
    want = [{"name": _expected(n), "user": _expected(u)} for n, u in values]

    text = render.text([fam])
    got = [s.labels for f in text_parse(text.decode("utf-8")) for s in f.samples]
    assert got == want
    om = _openmetrics_body([fam])
    got = [s.labels for f in om_parse(om.decode("utf-8")) for s in f.samples]
    assert got == want
    promtool = need_tool("promtool")
    for body in (text, om):
        r = subprocess.run([promtool, "check", "metrics"], input=body, capture_output=True, timeout=30)
        assert r.returncode == 0, (body, r.stdout, r.stderr)


def test_label_count_must_match():
    from exporter.families import Family
    fam = Family("hoofhearted_x", "x", "gauge", ["a", "b"])
    with pytest.raises(ValueError, match="hoofhearted_x: 1 label values for 2 labels"):
        fam.add_metric(["only one"], 1)
    with pytest.raises(ValueError):
        fam.add_metric(["a", "b", "c"], 1)
