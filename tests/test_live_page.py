"""The live page at / and its stream at /api/live: the real exporter, and Debian's Chromium."""
import json
import os
import socket
import time

import pytest
import requests

import browser
from burner import Burner
from fixture_box import box_config
from exporter import web
from test_webconfig import free_port, hashpw, https, node_exporter_style, pki, session, write_web  # noqa: F401


# -- helpers --------------------------------------------------------------------------------

def write_config(tmp_path, text):
    path = tmp_path / "hoofhearted.yml"
    path.write_text(text)
    return str(path)


class Stream:
    """A raw /api/live reader: frames as (id, payload) once read."""

    def __init__(self, exp, auth_header=None, rcvbuf=None):
        host, port = exp.address.rsplit(":", 1)
        self.sock = socket.socket()
        if rcvbuf:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(10)
        self.sock.connect((host, int(port)))
        extra = f"Authorization: {auth_header}\r\n" if auth_header else ""
        self.sock.sendall(f"GET /api/live HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n{extra}\r\n".encode())
        self.buf = b""
        head = self._until(b"\r\n\r\n")
        self.status = int(head.split(b" ", 2)[1])
        self.head = head.decode("latin-1")

    def _until(self, sep):
        while sep not in self.buf:
            data = self.sock.recv(65536)
            if not data:
                raise EOFError("stream closed")
            self.buf += data
        out, self.buf = self.buf.split(sep, 1)
        return out

    def frame(self):
        """Next event (comments skipped): {'id', 'retry', 'event', 'data'}."""
        while True:
            block = self._until(b"\n\n").decode()
            fields = dict(line.split(": ", 1) for line in block.split("\n") if not line.startswith(":"))
            if fields:
                fields["data"] = json.loads(fields["data"])
                return fields

    def close(self):
        self.sock.close()


def marker(drv):
    """Set a value that a reload would wipe out."""
    drv.execute_script("window.__notReloaded = 42;")


def not_reloaded(drv):
    return drv.execute_script("return window.__notReloaded;") == 42


def culprit_names(drv):
    return drv.execute_script(
        "return Array.from(document.querySelectorAll('#culprits tbody tr')).map(function (r) { return r.innerText; });")


@pytest.fixture
def chrome():
    opened = []

    def open_(*args, **kw):
        drv = browser.chrome(*args, **kw)
        opened.append(drv)
        return drv

    yield open_
    for drv in opened:
        browser.quit(drv)


# -- warnings -------------------------------------------------------------------------------

def test_warnings_name_what_crossed_which_line():
    verdict = {
        "temperatures": [
            {"chip": "coretemp-isa-0000", "sensor": "temp1", "name": "Package id 0", "celsius": 91.0,
             "max_celsius": 100.0},
            {"chip": "nvme-pci-0100", "sensor": "temp1", "name": "Composite", "celsius": 75.0, "max_celsius": 84.0},
            {"chip": "acpitz-acpi-0", "sensor": "temp1", "name": "temp1", "celsius": 70.0, "max_celsius": None},
            {"chip": "k10temp-pci-00c3", "sensor": "temp2", "name": "Tctl", "celsius": 74.9, "max_celsius": 85.0},
        ],
        "gpus": [{"gpu": "0", "temperature_celsius": 84.0, "slowdown_celsius": 93.0},
                 {"gpu": "1", "temperature_celsius": 82.0, "slowdown_celsius": 93.0}],
        "cpu": {"usage_ratio": 0.95, "cores": 8},
        "memory": {"usage_ratio": 0.9},
    }
    got = web.warnings_now(verdict, [("4242", "xmrig", "alice", "name")])
    assert got == [
        ("temp:coretemp-isa-0000:temp1", "critical", "Package id 0 (coretemp-isa-0000) at 91 °C (max 100 °C)"),
        ("temp:nvme-pci-0100:temp1", "warning", "Composite (nvme-pci-0100) at 75 °C (max 84 °C)"),
        ("gpu-temp:0", "critical", "GPU0 at 84 °C (slows down at 93 °C)"),
        ("cpu", "warning", "CPU 95% busy"),
        ("miner:4242:xmrig", "critical", "Suspected miner: xmrig (pid 4242, user alice), matched by name"),
    ]
    # memory at exactly 90 % and a sensor 10.1 °C below its max are not warnings
    assert web.warnings_now({"temperatures": [], "cpu": {"usage_ratio": None}, "memory": None}) == []


def test_a_warning_keeps_its_start_until_it_clears():
    clock = web.WarningClock()
    cpu = [("cpu", "warning", "CPU 95% busy")]
    assert clock.update(cpu, 100.0) == [{"key": "cpu", "level": "warning", "text": "CPU 95% busy", "since": 100.0}]
    both = [("cpu", "warning", "CPU 97% busy"), ("memory", "warning", "Memory 92% used")]
    assert [(w["key"], w["text"], w["since"]) for w in clock.update(both, 101.0)] == [
        ("cpu", "CPU 97% busy", 100.0), ("memory", "Memory 92% used", 101.0)]
    assert clock.update([], 102.0) == []
    assert clock.update(cpu, 103.0)[0]["since"] == 103.0


def test_frame_is_one_event_with_id_and_retry():
    assert web.frame(7, {"a": "x\ny"}) == b'id: 7\nretry: 1000\nevent: verdict\ndata: {"a":"x\\ny"}\n\n'


# -- the stream, without a browser ------------------------------------------------------------

def test_stream_pushes_each_critical_refresh_with_rising_ids(start_exporter):
    exp = start_exporter()
    s = Stream(exp)
    try:
        assert s.status == 200
        assert "Content-Type: text/event-stream" in s.head and "Cache-Control: no-store" in s.head
        frames = [s.frame() for _ in range(3)]
    finally:
        s.close()
    ids = [int(f["id"]) for f in frames]
    assert ids == [ids[0], ids[0] + 1, ids[0] + 2]
    assert all(f["retry"] == "1000" and f["event"] == "verdict" for f in frames)
    times = [f["data"]["verdict"]["time"] for f in frames]
    assert times[0] < times[1] < times[2]
    first = frames[-1]["data"]
    assert first["interval_seconds"] == 1.0
    assert first["verdict"]["version"] == 1 and first["verdict"]["host"] == socket.gethostname()
    assert first["verdict"]["cpu"]["cores"] == os.cpu_count()
    assert isinstance(first["warnings"], list)


def test_page_and_assets_are_served_from_the_package(start_exporter):
    exp = start_exporter()
    page = exp.get("/")
    assert page.status_code == 200 and page.headers["Content-Type"] == "text/html; charset=utf-8"
    assert '<script src="page.js" defer></script>' in page.text and "{version}" not in page.text
    for path in ("metrics", "api/verdict", "api/live", "-/healthy", "-/ready"):
        assert f'href="{path}"' in page.text
    js = exp.get("/page.js")
    assert js.headers["Content-Type"] == "text/javascript; charset=utf-8" and js.content == web.ASSETS["/page.js"][0]
    assert exp.get("/page.css").content == web.ASSETS["/page.css"][0]
    head = exp.session.head(exp.url + "/api/live", timeout=5)
    assert head.status_code == 200 and head.headers["Content-Type"] == "text/event-stream"


def test_live_page_off_gives_the_plain_landing_page(tmp_path, start_exporter):
    exp = start_exporter("--config.file", write_config(tmp_path, "web:\n  live_page: false\n"))
    page = exp.get("/")
    assert page.status_code == 200 and 'href="metrics"' in page.text and "page.js" not in page.text
    assert exp.get("/api/live").status_code == 404
    assert exp.get("/page.js").status_code == 404


def test_eleventh_stream_is_refused_and_a_freed_place_is_taken(start_exporter):
    exp = start_exporter()
    streams = [Stream(exp) for _ in range(10)]
    try:
        assert [s.status for s in streams] == [200] * 10
        for s in streams:
            s.frame()
        r = exp.get("/api/live")
        assert (r.status_code, r.text, r.headers["Retry-After"]) == (503, "too many viewers\n", "10")
        assert exp.session.head(exp.url + "/api/live", timeout=5).status_code == 503
        assert exp.get("/metrics").status_code == 200
        streams.pop().close()
        browser.wait_for(lambda: exp.session.head(exp.url + "/api/live", timeout=5).status_code == 200, 5,
                         "a closed stream frees its place")
    finally:
        for s in streams:
            s.close()


def test_a_page_that_stops_reading_is_dropped_and_blocks_nothing(tmp_path, start_exporter):
    cfg = write_config(tmp_path, "web:\n  live_max_clients: 1\n  read_timeout_seconds: 1\ntiers:\n  critical: 0.2\n")
    exp = start_exporter("--config.file", cfg)
    stuck = Stream(exp, rcvbuf=4096)      # reads the head, then nothing
    try:
        assert stuck.status == 200
        assert exp.get("/api/live").status_code == 503

        def cpu_refreshed():
            text = exp.scrape()        # scrapes keep being answered meanwhile
            line = next(x for x in text.splitlines()
                        if x.startswith('hoofhearted_collector_last_success_timestamp_seconds{collector="cpu"}'))
            return float(line.rsplit(" ", 1)[1])

        before = cpu_refreshed()
        browser.wait_for(lambda: exp.session.head(exp.url + "/api/live", timeout=5).status_code == 200, 30,
                         "the stuck page is dropped")
        assert cpu_refreshed() > before        # refreshes went on
    finally:
        stuck.close()


# -- basic auth and TLS -----------------------------------------------------------------------

def test_basic_auth_guards_the_page_and_the_stream(tmp_path, start_exporter, chrome):
    web_yml = write_web(tmp_path, f"basic_auth_users:\n  viewer: {hashpw('s3cret-view')}\n")
    exp = start_exporter("--web.config.file", web_yml, ready=False)
    browser.wait_for(lambda: requests.get(exp.url + "/-/ready", auth=("viewer", "s3cret-view"), timeout=5).ok, 20,
                     "exporter ready")
    for path in ("/", "/page.js", "/api/live"):
        r = requests.get(exp.url + path, timeout=5)
        assert (r.status_code, r.headers["WWW-Authenticate"]) == (401, 'Basic realm="hoofhearted"'), path
        assert requests.get(exp.url + path, auth=("viewer", "wrong"), timeout=5).status_code == 401
    ok = requests.get(exp.url + "/", auth=("viewer", "s3cret-view"), timeout=5)
    assert ok.status_code == 200 and "page.js" in ok.text
    import base64
    token = "Basic " + base64.b64encode(b"viewer:s3cret-view").decode()
    s = Stream(exp, auth_header=token)
    try:
        assert s.status == 200 and s.frame()["event"] == "verdict"
    finally:
        s.close()

    refused = chrome(1280, 900)
    refused.get(exp.url + "/")
    # the browser was asked for credentials (headless, nobody answers) and shows no page
    got = [(status, h.get("www-authenticate")) for url, status, h in browser.responses(refused)
           if url == exp.url + "/"]
    assert got and set(got) == {(401, 'Basic realm="hoofhearted"')}
    assert refused.find_elements("id", "status") == []
    allowed = chrome(1280, 900)
    browser.set_auth_header(allowed, "viewer", "s3cret-view")
    allowed.get(exp.url + "/")
    browser.wait_for(lambda: browser.state(allowed) == "live", 10, "the page goes live with credentials")
    assert browser.text(allowed, "host") == socket.gethostname()


def test_page_and_stream_over_tls_with_basic_auth(pki, tmp_path, start_exporter, chrome):
    path = node_exporter_style(pki, tmp_path, {"viewer": hashpw("s3cret-view")})
    exp = start_exporter(f"--web.config.file={path}", ready=False)
    s = session(pki["ca"].cert, auth=("viewer", "s3cret-view"))
    page = s.get(https(exp) + "/", timeout=5)
    assert page.status_code == 200 and "page.js" in page.text
    assert page.headers["X-Frame-Options"] == "deny"
    with s.get(https(exp) + "/api/live", stream=True, timeout=10) as r:
        assert r.status_code == 200 and r.headers["Strict-Transport-Security"] == "max-age=31536000"
        lines = r.iter_lines()
        assert next(lines).startswith(b"id: ")
    drv = chrome(1280, 900, insecure=True)
    browser.set_auth_header(drv, "viewer", "s3cret-view")
    drv.get(https(exp) + "/")
    browser.wait_for(lambda: browser.state(drv) == "live", 10, "the page goes live over TLS")
    assert drv.execute_script("return location.protocol;") == "https:"


# -- in the browser ---------------------------------------------------------------------------

def test_page_renders_and_updates_without_reload(start_exporter, chrome):
    exp = start_exporter()
    drv = chrome(1280, 900)
    drv.get(exp.url + "/")
    browser.wait_for(lambda: browser.state(drv) == "live", 10, "the page goes live")
    marker(drv)
    first = drv.execute_script("return hoofhearted.lastUpdate();")
    shown = browser.text(drv, "status-text")
    later = browser.wait_for(lambda: (drv.execute_script("return hoofhearted.lastUpdate();") or 0) > first and
                             drv.execute_script("return hoofhearted.lastUpdate();"), 2, "a newer update")
    assert later > first and not_reloaded(drv)
    browser.wait_for(lambda: browser.text(drv, "status-text") != shown, 2, "the time shown moves on")
    verdict = exp.get("/api/verdict").json()
    assert browser.text(drv, "host") == verdict["host"] == socket.gethostname()
    assert f"of {os.cpu_count()} cores" in browser.text(drv, "load")
    assert drv.find_element("id", "main").get_attribute("data-current") == "true"
    assert browser.console_errors(drv) == []


def test_burner_appears_among_culprits_and_leaves(start_exporter, chrome):
    exp = start_exporter()
    drv = chrome(1280, 900)
    drv.get(exp.url + "/")
    browser.wait_for(lambda: browser.state(drv) == "live", 10, "the page goes live")
    marker(drv)
    b = Burner()
    try:
        start = time.monotonic()
        rows = browser.wait_for(lambda: [r for r in culprit_names(drv) if b.name in r], 3,
                                f"burner {b.name} among the culprits")
        print(f"burner shown after {time.monotonic() - start:.2f} s: {rows[0]!r}")
        assert b.user in rows[0]
        if b.owner and b.owner.startswith("container/"):
            assert "container " + b.owner.split("/", 1)[1] in rows[0]
    finally:
        b.close()
    browser.wait_for(lambda: not any(b.name in r for r in culprit_names(drv)), 10, "burner gone from the culprits")
    assert not_reloaded(drv) and browser.console_errors(drv) == []


def test_offline_within_5s_and_live_again_after_restart(start_exporter, chrome):
    port = free_port()
    exp = start_exporter(f"--web.listen-address=127.0.0.1:{port}")
    drv = chrome(1280, 900)
    drv.get(exp.url + "/")
    browser.wait_for(lambda: browser.state(drv) == "live", 10, "the page goes live")
    marker(drv)
    shown = drv.execute_script("return hoofhearted.lastUpdate();")
    exp.stop()
    stopped = time.monotonic()
    browser.wait_for(lambda: browser.state(drv) == "offline", 5, "the page says offline")
    print(f"offline after {time.monotonic() - stopped:.2f} s")
    status = browser.text(drv, "status-text")
    assert status.startswith("Offline · last update ") and "ago" in status
    assert browser.text(drv, "announce") == "Offline: the numbers are not current."
    assert drv.find_element("id", "main").get_attribute("data-current") == "false"
    assert drv.execute_script("return hoofhearted.lastUpdate();") >= shown
    again = start_exporter(f"--web.listen-address=127.0.0.1:{port}")
    assert again.address == f"127.0.0.1:{port}"
    browser.wait_for(lambda: browser.state(drv) == "live", 10, "the page is live again")
    assert not_reloaded(drv) and browser.text(drv, "announce") == "Live."
    assert drv.find_element("id", "main").get_attribute("data-current") == "true"


def test_eleventh_page_says_too_many_viewers(start_exporter, chrome):
    exp = start_exporter()
    streams = [Stream(exp) for _ in range(10)]
    try:
        drv = chrome(1280, 900)
        drv.get(exp.url + "/")
        browser.wait_for(lambda: browser.state(drv) == "full", 10, "the eleventh page is told")
        assert browser.text(drv, "status-text").startswith("Too many viewers")
        streams.pop().close()
        browser.wait_for(lambda: browser.state(drv) == "live", 15, "the page takes the freed place")
    finally:
        for s in streams:
            s.close()


@pytest.mark.parametrize("width", [360, 1280])
def test_screenshots_dark_and_light(width, tmp_path, start_exporter, chrome):
    # the fixture box's sensors, fans and fake GPUs; this machine's processes, a burner among them
    cfg = box_config(str(tmp_path))
    conf = {"paths": {"sysfs": cfg["paths"]["sysfs"]}, "gpu": {"nvml_module": cfg["gpu"]["nvml_module"]}}
    exp = start_exporter("--config.file", write_config(tmp_path, json.dumps(conf)))
    b = Burner()
    expected = {"dark": "rgb(17, 19, 21)", "light": "rgb(247, 247, 245)"}
    try:
        for scheme in ("dark", "light"):
            drv = chrome(width, 900, scheme=scheme, reduced_motion=(scheme == "light"))
            drv.get(exp.url + "/")
            browser.wait_for(lambda: browser.state(drv) == "live", 10, "the page goes live")
            browser.wait_for(lambda: any(b.name in r for r in culprit_names(drv)), 10, "the burner shown")
            assert "°C" in browser.text(drv, "temperatures") and "rpm" in browser.text(drv, "fans")
            assert "GPU0" in browser.text(drv, "load")
            bg = drv.execute_script("return getComputedStyle(document.body).backgroundColor;")
            assert bg == expected[scheme]
            # no sideways scrolling on a phone
            assert drv.execute_script("return document.documentElement.scrollWidth;") <= width
            anim = drv.execute_script("return getComputedStyle(document.querySelector('.dot')).animationName;")
            assert anim == ("none" if scheme == "light" else "pulse")
            path = browser.screenshot(drv, f"live-page-{width}-{scheme}.png")
            print(f"screenshot: {path}")
            assert os.path.getsize(path) > 10_000
            assert browser.console_errors(drv) == []
    finally:
        b.close()
