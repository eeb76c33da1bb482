"""Scrapes cannot be starved: the real Prometheus keeps `up` at 1 while clients pipeline requests
they never read and others flood wrong passwords."""
import base64
import socket
import threading
import time

import bcrypt
import yaml

from alertstack import query, start_prometheus
from conftest import SYSFS, need_tool

ARGS = (f"--path.sysfs={SYSFS}",)


def connect(address):
    host, port = address.rsplit(":", 1)
    return socket.create_connection((host, int(port)), timeout=5)


def basic(user, password):
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def pipeliner(address, stop, opened):
    """Sends thousands of requests on one connection and never reads an answer."""
    try:
        s = connect(address)
    except OSError:
        return
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    opened.append(s)
    req = b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n" * 2000
    s.settimeout(0.5)
    try:
        s.sendall(req)
    except OSError:
        pass
    stop.wait()


def guesser(address, stop, n, counts):
    """Keeps one connection busy with a new wrong password per request."""
    i = 0
    while not stop.is_set():
        try:
            with connect(address) as s:
                s.settimeout(10)
                while not stop.is_set():
                    i += 1
                    s.sendall(f"GET /metrics HTTP/1.1\r\nHost: x\r\nAuthorization: {basic('prom', f'guess{n}-{i}')}"
                              f"\r\n\r\n".encode())
                    head = s.recv(65536)
                    if not head:
                        break
                    code = head.split(b" ", 2)[1].decode()
                    counts[code] = counts.get(code, 0) + 1
                    if b"Connection: close" in head:
                        break
                if code == "503":
                    stop.wait(0.1)     # a client that is told to come back later, as a scraper would
        except OSError:
            time.sleep(0.05)


def test_prometheus_scrapes_through_pipelining_and_password_floods(start_exporter, tmp_path):
    prometheus = need_tool("prometheus")
    web = tmp_path / "web.yml"
    web.write_text("basic_auth_users:\n  prom: " + bcrypt.hashpw(b"pw", bcrypt.gensalt(10)).decode() + "\n")
    exp = start_exporter(*ARGS, f"--web.config.file={web}", env={"HOOFHEARTED_WEB_READ_TIMEOUT_SECONDS": "20"},
                         ready=False)
    # 2 s: room for a busy shared test machine; the old server failed every scrape, not slow ones
    cfg = {"global": {"scrape_interval": "2s", "scrape_timeout": "2s"},
           "scrape_configs": [{"job_name": "hoofhearted", "static_configs": [{"targets": [exp.address]}],
                               "basic_auth": {"username": "prom", "password": "pw"}}]}
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(cfg))
    prom = start_prometheus(prometheus, str(tmp_path), str(tmp_path / "prometheus.yml"))
    try:
        deadline = time.monotonic() + 30
        while [r["value"][1] for r in query(prom, 'up{job="hoofhearted"}')] != ["1"]:
            assert time.monotonic() < deadline, prom.log + exp.log
            time.sleep(0.2)
        stop, opened, counts = threading.Event(), [], {}
        threads = [threading.Thread(target=pipeliner, args=(exp.address, stop, opened), daemon=True)
                   for _ in range(60)]
        threads += [threading.Thread(target=guesser, args=(exp.address, stop, n, counts), daemon=True)
                    for n in range(50)]
        for t in threads:
            t.start()
        time.sleep(2)
        started = time.time()
        time.sleep(14)
        end = time.time()
        window = f"{int(end - started)}s"
        ups = query(prom, f'min_over_time(up{{job="hoofhearted"}}[{window}])')
        scrapes = query(prom, f'count_over_time(up{{job="hoofhearted"}}[{window}])')
        failures = counts.get("503", 0)
        stop.set()
        for s in opened:
            s.close()
        for t in threads:
            t.join(15)
        assert [r["value"][1] for r in ups] == ["1"], (counts, exp.log[-3000:])
        assert int(scrapes[0]["value"][1]) >= 6, scrapes
        # the attack really ran: passwords were checked and refused, and the check queue was full
        assert counts.get("401", 0) >= 20 and failures > 0, counts
        assert exp.proc.poll() is None
    finally:
        prom.stop()
