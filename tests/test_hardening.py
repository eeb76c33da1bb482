"""The HTTP server under abuse: slowloris, floods, oversized and malformed requests, slow readers."""
import re
import socket
import threading
import time

import bcrypt
import requests

from conftest import SYSFS

ARGS = (f"--path.sysfs={SYSFS}",)


def threads_of(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("Threads:"):
                return int(line.split()[1])


def connect(exp):
    host, port = exp.address.rsplit(":", 1)
    return socket.create_connection((host, int(port)), timeout=5)


def exchange(exp, data, timeout=5):
    """Send raw bytes, read until the server closes; returns everything it said."""
    with connect(exp) as s:
        s.settimeout(timeout)
        s.sendall(data)
        out = b""
        while True:
            try:
                chunk = s.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            out += chunk
        return out


def status(raw):
    return int(raw.split(b" ", 2)[1]) if raw.startswith(b"HTTP/1.1 ") else None


def closed_by_server(sock, wait):
    """True when the server closes ``sock`` (EOF or reset) within ``wait`` seconds."""
    sock.settimeout(wait)
    try:
        while sock.recv(65536):
            pass
        return True
    except ConnectionResetError:
        return True
    except socket.timeout:
        return False


def test_slowloris_does_not_stop_a_normal_scrape(start_exporter):
    """200 clients trickling a header byte at a time hold no thread and get cut off at the read timeout."""
    exp = start_exporter(*ARGS, env={"HOOFHEARTED_WEB_READ_TIMEOUT_SECONDS": "3"})
    threads_before = threads_of(exp.proc.pid)
    slow = []
    for _ in range(200):
        s = connect(exp)
        s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
        slow.append(s)
    stop = threading.Event()

    def drip():
        while not stop.is_set():
            for s in slow:
                try:
                    s.send(b"X")
                except OSError:
                    pass
            stop.wait(0.5)

    dripper = threading.Thread(target=drip, daemon=True)
    dripper.start()
    try:
        worst = 0.0
        for _ in range(10):
            t = time.perf_counter()
            r = requests.get(exp.url + "/metrics", timeout=5)
            worst = max(worst, time.perf_counter() - t)
            assert r.status_code == 200 and "hoofhearted_temperature_celsius" in r.text
            time.sleep(0.1)
        # held up by the slow clients, a scrape would wait out their 3 s read timeout; 200 of them
        # dripping keep the event loop busy, so on a loaded 2-core machine one scrape can take ~1 s
        assert worst < 2.0, worst
        assert threads_of(exp.proc.pid) == threads_before
    finally:
        stop.set()
        dripper.join()
    # The head must be complete 3 s after its first byte: every slow client is answered 408 and closed.
    deadline = time.monotonic() + 6
    answers = []
    for s in slow:
        s.settimeout(max(0.1, deadline - time.monotonic()))
        try:
            answers.append(s.recv(4096))
        except (socket.timeout, ConnectionResetError):
            answers.append(b"")
        s.close()
    assert sum(a.startswith(b"HTTP/1.1 408 ") for a in answers) == 200, answers[:3]
    assert exp.get("/metrics").status_code == 200


def test_idle_connections_are_capped(start_exporter):
    exp = start_exporter(*ARGS, env={"HOOFHEARTED_WEB_MAX_CONNECTIONS": "20"})
    idle = [connect(exp) for _ in range(50)]
    time.sleep(0.3)
    t = time.perf_counter()
    assert requests.get(exp.url + "/metrics", timeout=5).status_code == 200
    assert time.perf_counter() - t < 1.0
    closed = sum(closed_by_server(s, 0.05) for s in idle)
    for s in idle:
        s.close()
    assert closed >= 30, closed       # the longest-waiting went first, the new scraper got in


def test_kept_alive_connection_closes_after_idle_timeout(start_exporter):
    exp = start_exporter(*ARGS, env={"HOOFHEARTED_WEB_IDLE_TIMEOUT_SECONDS": "1",
                                     "HOOFHEARTED_WEB_READ_TIMEOUT_SECONDS": "1"})
    s = connect(exp)
    s.sendall(b"GET /-/healthy HTTP/1.1\r\nHost: x\r\n\r\n")
    assert s.recv(4096).startswith(b"HTTP/1.1 200 OK")
    assert not closed_by_server(s, 0.5)       # kept alive for a while
    assert closed_by_server(s, 2.0)
    s.close()


def test_oversized_head_gets_431(start_exporter):
    exp = start_exporter(*ARGS, env={"HOOFHEARTED_WEB_MAX_HEADER_BYTES": "1024"})
    big = exchange(exp, b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Junk: " + b"a" * 2000 + b"\r\n\r\n")
    assert status(big) == 431
    endless = exchange(exp, b"GET /metrics HTTP/1.1\r\nX-Junk: " + b"a" * 5000)    # never ends its head
    assert status(endless) == 431
    ok = exchange(exp, b"GET /-/healthy HTTP/1.1\r\nX-Junk: " + b"a" * 800 + b"\r\nConnection: close\r\n\r\n")
    assert status(ok) == 200


def test_methods_paths_and_malformed_requests(start_exporter):
    exp = start_exporter(*ARGS)
    for method in ("POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "CONNECT", "PROPFIND"):
        raw = exchange(exp, f"{method} /metrics HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        assert status(raw) == 405, method
        assert b"\r\nAllow: GET, HEAD\r\n" in raw
    for path in ("/etc/passwd", "/../../etc/passwd", "/metrics/../../../etc/passwd", "//etc/passwd",
                 "/%2e%2e/%2e%2e/etc/passwd", "/metrics/", "/static/", "/.git/config", "/exporter/server.py"):
        raw = exchange(exp, f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        assert status(raw) == 404, path
        assert b"root:" not in raw and b"import" not in raw
    assert status(exchange(exp, b"GET http://example/metrics HTTP/1.1\r\nConnection: close\r\n\r\n")) == 200
    for bad in (b"hello\r\n\r\n", b"GET /metrics\r\n\r\n", b"GET /metrics HTTP/9.9\r\n\r\n",
                b"GET  /metrics HTTP/1.1\r\n\r\n", b"GET /metrics HTTP/1.1\r\nno colon here\r\n\r\n",
                b"GET /metrics HTTP/1.1\r\n folded: x\r\n\r\n", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n",
                b"GET /metrics HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
                b"GET /metrics HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
                b"GET /metrics HTTP/1.1\r\nX: a\x00b\r\n\r\n", b"GET /metrics HTTP/1.1\r\nX: a\rb\r\n\r\n",
                b"GET /metrics HTTP/1.1\r\nX: a\x1bb\r\n\r\n"):
        raw = exchange(exp, bad)
        assert status(raw) in (400, 505), (bad, raw[:80])
        assert b"Traceback" not in raw
    assert status(exchange(exp, b"GET /metrics HTTP/2.0\r\n\r\n")) == 505
    assert exp.get("/metrics").status_code == 200


def test_http10_pipelining_and_bodies(start_exporter):
    exp = start_exporter(*ARGS)
    raw = exchange(exp, b"GET /-/healthy HTTP/1.0\r\n\r\n")
    assert raw.startswith(b"HTTP/1.1 200 OK") and b"Connection: close" in raw
    raw = exchange(exp, b"GET /-/healthy HTTP/1.1\r\n\r\nGET /nope HTTP/1.1\r\n\r\n"
                        b"HEAD /-/ready HTTP/1.1\r\nConnection: close\r\n\r\n")
    assert re.findall(rb"HTTP/1\.1 \d+ [^\r]+", raw) == [
        b"HTTP/1.1 200 OK", b"HTTP/1.1 404 Not Found", b"HTTP/1.1 200 OK"]
    # A request body is never read: the answer comes, then the connection closes (no smuggling).
    raw = exchange(exp, b"GET /-/healthy HTTP/1.1\r\nContent-Length: 30\r\n\r\nGET /nope HTTP/1.1\r\n\r\n")
    assert raw.count(b"HTTP/1.1 ") == 1 and b"Connection: close" in raw


def slow_auth_exporter(start_exporter, tmp_path, cost, env=None):
    web = tmp_path / "web.yml"
    web.write_text("basic_auth_users:\n  prom: " + bcrypt.hashpw(b"pw", bcrypt.gensalt(cost)).decode() + "\n")
    return start_exporter(*ARGS, f"--web.config.file={web}", env=env, ready=False)


def auth_request(n):
    import base64
    token = base64.b64encode(f"prom:wrong{n}".encode()).decode()
    return f"GET /metrics HTTP/1.1\r\nAuthorization: Basic {token}\r\nConnection: close\r\n\r\n".encode()


def test_requests_in_flight_are_capped(start_exporter, tmp_path):
    """New passwords wait for a bcrypt check; past web.max_requests in flight, 503 at once."""
    env = {"HOOFHEARTED_WEB_MAX_REQUESTS": "2", "HOOFHEARTED_WEB_READ_TIMEOUT_SECONDS": "30"}
    exp = slow_auth_exporter(start_exporter, tmp_path, 15, env=env)
    waiting = [connect(exp), connect(exp)]
    for i, s in enumerate(waiting):
        s.sendall(auth_request(i))
    time.sleep(0.2)
    t = time.perf_counter()
    third = exchange(exp, auth_request(3))
    assert status(third) == 503 and time.perf_counter() - t < 0.3
    for s in waiting:
        s.settimeout(60)        # the checks run one after the other, each seconds long on a loaded machine
        assert s.recv(4096).startswith(b"HTTP/1.1 401 ")
        s.close()
    assert status(exchange(exp, auth_request(4))) == 401      # room again


def test_scrape_timeout_header_bounds_the_wait(start_exporter, tmp_path):
    """A scraper that gives up after 0.3 s gets 503 at 0.3 s, not a late answer after a slow check."""
    exp = slow_auth_exporter(start_exporter, tmp_path, 15)
    req = auth_request(1).replace(b"\r\n\r\n", b"\r\nX-Prometheus-Scrape-Timeout-Seconds: 0.3\r\n\r\n")
    t = time.perf_counter()
    raw = exchange(exp, req)
    took = time.perf_counter() - t
    assert status(raw) == 503 and 0.25 < took < 0.8, (raw[:60], took)


def test_slow_reader_is_cut_off(start_exporter):
    """A client that never reads its answers is reset after the read timeout: no slot, no buffers kept."""
    exp = start_exporter(*ARGS, env={"HOOFHEARTED_WEB_READ_TIMEOUT_SECONDS": "1"})
    s = connect(exp)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n" * 300)
    time.sleep(3)
    s.settimeout(2)
    got, t = b"", time.monotonic()
    try:
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            got += chunk
    except ConnectionResetError:
        pass
    s.close()
    assert time.monotonic() - t < 1.5
    assert got.count(b"HTTP/1.1 200") < 300
    assert exp.get("/metrics").status_code == 200
