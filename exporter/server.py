"""HTTP server: /metrics from the scheduler's cache, a landing page, health and readiness.

One event-loop thread serves every connection, so a slow or idle client holds no thread:
- a request head must arrive within web.read_timeout_seconds of its first byte (else 408) and
  fit in web.max_header_bytes (else 431); a new connection must start within the same time,
  a kept-alive one may idle for web.idle_timeout_seconds;
- a request whose credentials were checked before (or that needs none) is answered at once;
  one that needs a password check waits for it, and at most min(web.max_requests, 8) such
  checks wait at a time (2 for connections whose password already failed); more get 503 at
  once, so neither a flood of wrong passwords nor clients that never read their answers
  (their writes wait outside any budget, cut off after the read timeout) starve a scrape;
- at most web.max_connections connections are open; a new one pushes out the connection that
  has waited longest without completing a request;
- TLS handshakes run in the loop without blocking it, each bounded by the read timeout.
- /api/live streams the verdict to at most web.live_max_clients pages (more get 503); writes never
  wait, and a page that stops taking them is dropped (behind for the read timeout, or 64 KiB
  queued), so it never holds up a refresh, a scrape or another page.
Only GET and HEAD; nothing is served from disk. Every response is one write with Nagle off.
"""
import asyncio
import html
import json
import logging
import re
import socket
import struct
import threading

from . import __version__, render
from .web import ASSETS as LIVE_ASSETS, INDEX as LIVE_INDEX

log = logging.getLogger("hoofhearted.server")

LANDING = """<!doctype html>
<html><head><meta charset="utf-8"><title>hoofhearted</title></head>
<body><h1>hoofhearted {version}</h1>
<p>Why is my server's fan running? Temperatures, fans, and the processes behind them.</p>
<ul>
<li><a href="metrics">/metrics</a></li>
<li><a href="api/verdict">/api/verdict</a> (the answer, as JSON)</li>
<li><a href="api/targets">/api/targets</a> (Prometheus HTTP service discovery)</li>
<li><a href="-/healthy">/-/healthy</a></li>
<li><a href="-/ready">/-/ready</a></li>
</ul></body></html>
"""

_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
TARGET = re.compile(r"(?:[A-Za-z0-9](?:[A-Za-z0-9.-]{0,252})|\[[0-9A-Fa-f:.]{2,45}\]):[0-9]{1,5}")

REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found",
           405: "Method Not Allowed", 408: "Request Timeout", 429: "Too Many Requests",
           431: "Request Header Fields Too Large", 500: "Internal Server Error",
           503: "Service Unavailable", 505: "HTTP Version Not Supported"}
SERVER = f"Server: hoofhearted/{__version__}\r\n".encode()
PLAIN = "text/plain; charset=utf-8"
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_VERSION = re.compile(r"HTTP/(\d)\.(\d)")
_ABSOLUTE = re.compile(r"https?://[^/?#]*", re.IGNORECASE)
SCRAPE_TIMEOUT = "x-prometheus-scrape-timeout-seconds"
LIVE_SNDBUF = 32 * 1024
PIPELINE_TURN = 4           # pipelined requests answered before other connections get a turn


def _accepts(header, media_type):
    """Whether an Accept header lists ``media_type`` with a q above 0."""
    for part in (header or "").split(","):
        token, *params = part.split(";")
        if token.strip().lower() != media_type:
            continue
        q = 1.0
        for p in params:
            k, _, v = p.partition("=")
            if k.strip().lower() == "q":
                try:
                    q = float(v.strip())
                except ValueError:
                    q = 0.0
        if q > 0:
            return True
    return False


def wants_openmetrics(accept):
    return _accepts(accept, "application/openmetrics-text")


def wants_gzip(accept_encoding):
    for part in (accept_encoding or "").split(","):
        token, _, params = part.strip().partition(";")
        if token.strip().lower() == "gzip" and params.replace(" ", "") != "q=0":
            return True
    return False


class BadRequest(Exception):
    def __init__(self, code, message):
        super().__init__(message)
        self.code = code


class Request:
    __slots__ = ("method", "path", "headers", "keep_alive", "deadline")

    def __init__(self, method, path, headers, keep_alive):
        self.method, self.path = method, path
        self.headers, self.keep_alive = headers, keep_alive
        self.deadline = None


def parse_head(head):
    """Request line and headers (bytes, without the blank line) -> Request; BadRequest if malformed."""
    lines = head.decode("latin-1").split("\n")
    parts = lines[0].rstrip("\r").split(" ")
    if len(parts) != 3:
        raise BadRequest(400, "malformed request line")
    method, target, version = parts
    m = _VERSION.fullmatch(version)
    if not m or not _TOKEN.fullmatch(method) or not target:
        raise BadRequest(400, "malformed request line")
    if m.group(1) != "1" or m.group(2) not in ("0", "1"):
        raise BadRequest(505, "only HTTP/1.0 and HTTP/1.1")
    minor = int(m.group(2))
    headers = {}
    for line in lines[1:]:
        if line.endswith("\r"):
            line = line[:-1]
        if not line:
            continue
        if line[0] in " \t":
            raise BadRequest(400, "folded header line")
        name, sep, value = line.partition(":")
        if not sep or not _TOKEN.fullmatch(name):
            raise BadRequest(400, "malformed header line")
        if _CONTROL.search(value):       # RFC 9110: NUL, CR, LF and other controls make a request invalid
            raise BadRequest(400, "control character in a header value")
        name, value = name.lower(), value.strip(" \t")
        if name in headers:
            if headers[name] != value and name in ("content-length", "authorization", "transfer-encoding"):
                raise BadRequest(400, f"conflicting {name} headers")
            if headers[name] != value:
                value = headers[name] + ", " + value
        headers[name] = value
    tokens = {t.strip().lower() for t in headers.get("connection", "").split(",")}
    keep_alive = "keep-alive" in tokens if minor == 0 else "close" not in tokens
    length = headers.get("content-length")
    if length is not None:
        if not (length.isascii() and length.isdigit()):
            raise BadRequest(400, "bad content-length")
        if int(length) > 0:
            keep_alive = False     # a body we do not read: answer, then close
    if "transfer-encoding" in headers:
        keep_alive = False
    if target.startswith("/"):
        path = target
    elif target == "*":
        path = target
    else:
        m = _ABSOLUTE.match(target)
        if not m:
            raise BadRequest(400, "bad request target")
        path = target[m.end():] or "/"
    path = path.split("?", 1)[0].split("#", 1)[0]
    return Request(method, path, headers, keep_alive)


def _head_end(buf):
    """(head length, separator length) of the first blank line, or (-1, 0)."""
    a = buf.find(b"\n\r\n")
    b = buf.find(b"\n\n")
    if a < 0 and b < 0:
        return -1, 0
    if b < 0 or 0 <= a < b:
        return a + 1, 2
    return b + 1, 1


def scrape_budget(headers, read_timeout):
    """Seconds one request may take: the scraper's own timeout when it sends one, capped."""
    raw = headers.get(SCRAPE_TIMEOUT)
    if raw:
        try:
            value = float(raw)
        except ValueError:
            value = 0.0
        if 0 < value < read_timeout:
            return value
    return read_timeout


class Connection(asyncio.Protocol):
    """One client connection. States: idle, head (part of a request has arrived), tls
    (handshake running), busy (password check running), closed."""

    def __init__(self, server):
        self.srv = server
        self.loop = server.loop
        self.transport = None
        self.buf = bytearray()
        self.state = "idle"
        self.since = self.loop.time()
        self.timer = None
        self.req = None
        self.job = None
        self.counted = False
        self.write_paused = False
        self.reading = True
        self.kept = False
        self.failed_auth = False     # a password from this connection was wrong before
        self.turn = None             # booked call to go on with pipelined requests
        self.behind = None       # a live page: when it fell behind

    # -- lifecycle ---------------------------------------------------------------------------

    def connection_made(self, transport):
        self.transport = transport
        srv = self.srv
        if not srv.admit(self):
            transport.abort()
            self.state = "closed"
            return
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._arm(srv.read_timeout, self._idle_timeout)
        security = srv.security
        if security is not None:
            tls = security.current.tls
            if tls is not None:
                self.state = "tls"
                transport.pause_reading()
                self.loop.create_task(self._start_tls(tls))

    async def _start_tls(self, tls):
        raw = self.transport
        try:
            tr = await self.loop.start_tls(raw, self, tls.context, server_side=True,
                                           ssl_handshake_timeout=self.srv.read_timeout)
        except Exception as e:   # a failed handshake is the client's problem, not ours
            log.debug("TLS handshake failed err=%r", e)
            raw.abort()
            self._gone()
            return
        if self.state == "closed" or tr is None:
            if tr is not None:
                tr.abort()
            return
        self.transport = tr
        if not tls.peer_allowed(tr.get_extra_info("peercert")):
            log.debug("client certificate has none of client_allowed_sans")
            self._abort()
            return
        self.state = "idle"
        self._process()

    def connection_lost(self, exc):
        self._gone()

    def eof_received(self):
        # A client that half-closes after its request still gets the answer being prepared
        # (TLS transports cannot stay half-open).
        if self.state == "busy" and self.transport.get_extra_info("sslcontext") is None:
            if self.req is not None:
                self.req.keep_alive = False
            return True
        return None

    def _gone(self):
        self.state = "closed"
        if self.turn is not None:
            self.turn.cancel()
            self.turn = None
        self._disarm()
        self._uncount()
        if self.job is not None:
            self.job["cancelled"] = True
            self.job = None
        self.buf = bytearray()
        self.srv.forget(self)
        if self.srv.live is not None:
            self.srv.live.discard(self)

    def _abort(self):
        if self.transport is not None:
            self.transport.abort()
        self._gone()

    def evict(self):
        log.debug("closing the longest-waiting connection: too many open")
        self._abort()

    # -- timers ------------------------------------------------------------------------------

    def _arm(self, delay, callback):
        if self.timer is not None:
            self.timer.cancel()
        self.timer = self.loop.call_later(max(0.0, delay), callback)

    def _disarm(self):
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _idle_timeout(self):
        self.timer = None
        if self.state in ("idle", "tls"):
            self._abort()

    def _head_timeout(self):
        self.timer = None
        if self.state == "head":
            self._respond(408, b"request head not received in time\n", close=True)

    def _busy_timeout(self):
        self.timer = None
        if self.state == "busy":
            if self.job is not None:
                self.job["cancelled"] = True
                self.job = None
            self._uncount()
            self._respond(503, b"password check did not finish within the scrape timeout\n", close=True)

    def _write_timeout(self):
        self.timer = None
        log.debug("client did not read its response in time")
        sock = self.transport.get_extra_info("socket") if self.transport is not None else None
        if sock is not None:
            # Reset rather than close: the kernel drops what the client would not take.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self._abort()

    # -- flow control ------------------------------------------------------------------------

    def pause_writing(self):
        if self.state == "live":     # a page not taking its updates is dropped, never waited for
            self.srv.live.dropped += 1
            self._abort()
            return
        # Held outside any budget: max_connections bounds these, the write timeout ends them.
        self.write_paused = True
        self._arm(self.srv.read_timeout, self._write_timeout)

    def resume_writing(self):
        self.write_paused = False
        if self.state == "closed":
            return
        if self.state == "closing":
            self._disarm()
            return
        self._arm(self.srv.idle_timeout if self.kept else self.srv.read_timeout, self._idle_timeout)
        self._process()

    def _count(self):
        if not self.counted:
            self.counted = "failing" if self.failed_auth else "checks"
            self.srv.in_flight[self.counted] += 1

    def _uncount(self):
        if self.counted:
            self.srv.in_flight[self.counted] -= 1
            self.counted = False

    def _pause_reading(self):
        if self.reading and self.transport is not None:
            self.reading = False
            self.transport.pause_reading()

    def _resume_reading(self):
        if not self.reading and self.transport is not None and self.state not in ("closed", "closing"):
            self.reading = True
            self.transport.resume_reading()

    # -- requests ----------------------------------------------------------------------------

    def data_received(self, data):
        if self.state in ("closed", "closing", "live"):
            return
        self.buf += data
        if self.state in ("idle", "head") and not self.write_paused:
            self._process()
        elif self.state != "tls" and len(self.buf) > self.srv.max_header_bytes:
            self._pause_reading()   # pipelined requests wait while one is busy or unread

    def _process(self):
        srv = self.srv
        if self.turn is not None:
            return                  # a turn is already booked
        served = 0
        while self.state in ("idle", "head") and not self.write_paused:
            if served >= PIPELINE_TURN:
                # Take turns: a client that pipelines thousands of requests gets a few answered,
                # then every other connection gets its go before the rest.
                self._pause_reading()
                self.turn = self.loop.call_soon(self._next_turn)
                return
            if self.state == "idle":
                if self.buf[:1] in (b"\r", b"\n"):
                    self.buf = bytearray(self.buf.lstrip(b"\r\n"))
                if not self.buf:
                    self._resume_reading()
                    return
                self.state = "head"
                self.since = self.loop.time()
                self._arm(srv.read_timeout, self._head_timeout)
            end, sep = _head_end(self.buf)
            if end < 0 or end > srv.max_header_bytes:
                if len(self.buf) > srv.max_header_bytes:
                    self._respond(431, b"request head too large\n", close=True)
                return
            head = bytes(self.buf[:end])
            del self.buf[:end + sep]
            served += 1
            try:
                self._request(head)
            except Exception as e:   # never a traceback to the client, and keep serving
                log.error("request failed err=%r", e)
                if self.state not in ("closed", "closing"):
                    self._respond(500, b"internal error\n", close=True)
        if self.state == "idle" and not self.write_paused:
            self._resume_reading()

    def _next_turn(self):
        self.turn = None
        if self.state not in ("closed", "closing"):
            self._process()

    def _request(self, head):
        srv = self.srv
        try:
            req = parse_head(head)
        except BadRequest as e:
            self._respond(e.code, str(e).encode() + b"\n", close=True)
            return
        srv.requests += 1
        self.req = req
        web = srv.security.current if srv.security is not None else None
        if web is not None and web.limiter is not None and not web.limiter.allow():
            self._respond(429, b"rate limit exceeded\n")
            return
        req.deadline = self.loop.time() + scrape_budget(req.headers, srv.read_timeout)
        if web is not None and web.users:
            header = req.headers.get("authorization")
            ok = web.auth.cached(header)
            if ok is None:
                budget = "failing" if self.failed_auth else "checks"
                if srv.in_flight[budget] >= srv.limits[budget]:
                    self._respond(503, b"too many password checks in flight\n", close=True)
                    return
                self.state = "busy"
                self._count()
                self._pause_reading()
                self._arm(req.deadline - self.loop.time(), self._busy_timeout)
                self.job = srv.security.checker.submit(self.loop, web.auth, header, self._auth_done)
                return
            if not ok:
                self._unauthorized()
                return
        self._serve(req)

    def _auth_done(self, ok):
        if self.state != "busy":
            return
        self.job = None
        self._uncount()
        self.state = "head"
        if ok:
            self._serve(self.req)
        else:
            self._unauthorized()
        self._process()

    def _unauthorized(self):
        self.failed_auth = True
        self._respond(401, b"unauthorized\n", extra=b'WWW-Authenticate: Basic realm="hoofhearted"\r\n')

    def _serve(self, req):
        if req.method not in ("GET", "HEAD"):
            self._respond(405, b"method not allowed\n", extra=b"Allow: GET, HEAD\r\n", close=True)
            return
        handler = ROUTES.get(req.path)
        if handler is None and req.path in LIVE_ASSETS and self.srv.live is not None:
            handler = Connection._asset
        if handler is None:
            self._respond(404, b"not found\n", head=req.method == "HEAD")
            return
        handler(self, req, req.method == "HEAD")

    # -- routes: (conn, request, head only) -> one _respond ------------------------------------

    def _metrics(self, req, head):
        om = wants_openmetrics(req.headers.get("accept"))
        gz = wants_gzip(req.headers.get("accept-encoding"))
        body = self.srv.scheduler.body(openmetrics=om, gzipped=gz)
        extra = b"Content-Encoding: gzip\r\nVary: Accept, Accept-Encoding\r\n" if gz \
            else b"Vary: Accept, Accept-Encoding\r\n"
        self._respond(200, body, render.OPENMETRICS_TYPE if om else render.TEXT_TYPE, extra, head)

    def _landing(self, req, head):
        if self.srv.live is not None:
            self._respond(200, LIVE_INDEX, "text/html; charset=utf-8", head=head)
            return
        page = LANDING.format(version=html.escape(__version__)).encode()
        self._respond(200, page, "text/html; charset=utf-8", head=head)

    def _asset(self, req, head):
        body, kind = LIVE_ASSETS[req.path]
        self._respond(200, body, kind, b"Cache-Control: no-cache\r\n", head=head)

    def _live_stream(self, req, head):
        if self.srv.live is None:
            self._respond(404, b"not found\n", head=head)
        else:
            self._live(head)

    def _healthy(self, req, head):
        self._respond(200, b"OK\n", head=head)

    def _verdict(self, req, head):
        sched = self.srv.scheduler
        body = sched.verdict_body() if hasattr(sched, "verdict_body") else None
        if body is None:
            self._respond(503, b"no verdict yet: collectors have not refreshed\n", head=head)
        else:
            self._respond(200, body, "application/json", b"Cache-Control: no-store\r\n", head)

    def _targets(self, req, head):
        """Prometheus HTTP service discovery: this exporter, at the address it was asked by, with
        the machine's name as ``host`` (prometheus.yml makes it the instance)."""
        address = req.headers.get("host", "")
        if not TARGET.fullmatch(address):
            self._respond(400, b"a Host header of host:port is needed\n", head=head)
            return
        name = getattr(self.srv.scheduler, "host", None)
        group = {"targets": [address], "labels": {"host": name} if name else {}}
        self._respond(200, json.dumps([group]).encode(), "application/json", b"Cache-Control: no-store\r\n", head)

    def _ready(self, req, head):
        if self.srv.scheduler.ready():
            self._respond(200, b"OK\n", head=head)
        else:
            self._respond(503, b"not ready: collectors have not refreshed yet\n", head=head)

    def _live(self, head):
        """Server-Sent Events: headers now, then every verdict frame until the page goes away."""
        live = self.srv.live
        if live.full():
            live.refused += 1
            self._respond(503, b"too many viewers\n", extra=b"Retry-After: 10\r\n", close=not head)
            return
        if head:
            self._respond(200, b"", "text/event-stream", b"Cache-Control: no-store\r\n", head=True)
            return
        security = self.srv.security
        self.req = None
        self.transport.write(b"".join((
            b"HTTP/1.1 200 OK\r\n", SERVER, b"Content-Type: text/event-stream\r\nCache-Control: no-store\r\n",
            security.current.header_bytes if security is not None else b"", b"Connection: close\r\n\r\n")))
        sock = self.transport.get_extra_info("socket")
        if sock is not None:     # little kernel buffering: a page that stops reading shows soon
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, LIVE_SNDBUF)
        self.state = "live"
        self.buf = bytearray()
        self._disarm()
        live.add(self)

    def send(self, data):
        """Queue a frame; a page still behind after the read timeout is dropped."""
        if self.state != "live":
            return
        self.transport.write(data)
        if self.state != "live" or not self.transport.get_write_buffer_size():
            self.behind = None
        elif self.behind is None:
            self.behind = self.loop.time()
        elif self.loop.time() - self.behind > self.srv.read_timeout:
            log.debug("dropping a live page that does not read")
            self.srv.live.dropped += 1
            self._abort()

    def _respond(self, code, body, content_type=PLAIN, extra=b"", head=False, close=False):
        """Headers and body in one write; then wait for the next request or close."""
        if self.state in ("closed", "closing") or self.transport is None:
            return
        req, self.req = self.req, None
        close = close or req is None or not req.keep_alive
        security = self.srv.security
        web_headers = security.current.header_bytes if security is not None else b""
        data = b"".join((
            b"HTTP/1.1 %d %s\r\n" % (code, REASONS.get(code, "Unknown").encode()), SERVER,
            b"Content-Type: %s\r\nContent-Length: %d\r\n" % (content_type.encode(), len(body)),
            extra, web_headers, b"Connection: close\r\n\r\n" if close else b"\r\n",
            b"" if head else body))
        self.transport.write(data)
        if close:
            self.state = "closing"
            self.buf = bytearray()
            self.transport.close()
            if self.write_paused:
                self._arm(self.srv.read_timeout, self._write_timeout)
            else:
                self._disarm()
            return
        self.kept = True
        self.state = "idle"
        self.since = self.loop.time()
        if not self.write_paused:
            self._arm(self.srv.idle_timeout, self._idle_timeout)


ROUTES = {
    "/metrics": Connection._metrics,
    "/": Connection._landing,
    "/api/verdict": Connection._verdict,
    "/api/live": Connection._live_stream,
    "/api/targets": Connection._targets,
    "/-/healthy": Connection._healthy,
    "/-/ready": Connection._ready,
}


class Server:
    """Listening socket and event loop. ``serve_in_thread``, ``shutdown``, ``server_close``."""

    def __init__(self, address, scheduler, read_timeout=5.0, max_requests=40, max_header_bytes=8192,
                 max_connections=512, idle_timeout=120.0, security=None, backlog=128, live=None):
        host, port = address
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
            sock.listen(backlog)
        except OSError:
            sock.close()
            raise
        sock.setblocking(False)
        self.socket = sock
        self.server_address = sock.getsockname()[:2]
        self.scheduler = scheduler
        self.security = security
        self.live = live
        self.read_timeout = read_timeout
        self.idle_timeout = max(idle_timeout, read_timeout)
        self.max_requests = max_requests
        self.max_header_bytes = max_header_bytes
        self.max_connections = max_connections
        self.connections = {}
        # password checks waiting, by budget: first tries, and connections that failed before
        self.in_flight = {"checks": 0, "failing": 0}
        self.limits = {"checks": max(1, min(max_requests, 8)), "failing": max(1, min(max_requests, 2))}
        self.requests = 0
        self.loop = None
        self._thread = None
        self._started = threading.Event()
        self._aserver = None

    # -- connections -------------------------------------------------------------------------

    def admit(self, conn):
        """Register a new connection; at the limit, push out the one waiting longest."""
        if len(self.connections) >= self.max_connections:
            waiting = [c for c in self.connections if c.state in ("idle", "head", "tls")]
            if not waiting:
                return False
            min(waiting, key=lambda c: c.since).evict()
        self.connections[conn] = None
        return True

    def forget(self, conn):
        self.connections.pop(conn, None)

    # -- running -----------------------------------------------------------------------------

    def _exception(self, loop, context):
        err = context.get("exception")
        log.debug("event loop: %s err=%r", context.get("message"), err)

    def serve_forever(self):
        loop = self.loop = asyncio.new_event_loop()
        loop.set_exception_handler(self._exception)
        try:
            self._aserver = loop.run_until_complete(
                loop.create_server(lambda: Connection(self), sock=self.socket))
            if self.live is not None:
                self.live.start(loop)
            self._started.set()
            loop.run_forever()
        finally:
            self._started.set()
            if self.live is not None:
                self.live.stop()
            if self._aserver is not None:
                self._aserver.close()
            for conn in list(self.connections):
                conn._abort()
            loop.run_until_complete(asyncio.sleep(0))
            loop.close()

    def serve_in_thread(self):
        if self.security is not None:
            self.security.watch()
        self._thread = threading.Thread(target=self.serve_forever, name="http", daemon=True)
        self._thread.start()
        self._started.wait(5)
        return self._thread

    def shutdown(self, timeout=2.0):
        if self.security is not None:
            self.security.close()
        loop = self.loop
        if loop is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(loop.stop)
            except RuntimeError:
                pass
        if self._thread is not None:
            self._thread.join(timeout)

    def server_close(self):
        self.socket.close()
