"""HTTP server: /metrics from the scheduler's cache, a landing page, health and readiness.

Every response is written in one sendall (headers and body together) with Nagle off: a
keep-alive client would otherwise wait 40 ms for the delayed ACK on every scrape.
"""
import html
import logging
import socket
import socketserver
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

from . import __version__, render

log = logging.getLogger("hoofhearted.server")

LANDING = """<!doctype html>
<html><head><meta charset="utf-8"><title>hoofhearted</title></head>
<body><h1>hoofhearted {version}</h1>
<p>Why is my server's fan running? Temperatures, fans, and the processes behind them.</p>
<ul>
<li><a href="metrics">/metrics</a></li>
<li><a href="-/healthy">/-/healthy</a></li>
<li><a href="-/ready">/-/ready</a></li>
</ul></body></html>
"""


def wants_openmetrics(accept):
    return "application/openmetrics-text" in (accept or "")


def wants_gzip(accept_encoding):
    for part in (accept_encoding or "").split(","):
        token, _, params = part.strip().partition(";")
        if token.strip().lower() == "gzip" and params.replace(" ", "") != "q=0":
            return True
    return False


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "hoofhearted/" + __version__
    sys_version = ""
    disable_nagle_algorithm = True

    def setup(self):
        self.timeout = self.server.read_timeout
        super().setup()

    def log_message(self, fmt, *args):  # access logs are noise at 1 s scrapes
        pass

    def send_body(self, code, body, content_type="text/plain; charset=utf-8", headers=(), head=False):
        lines = [f"HTTP/1.1 {code} {self.responses.get(code, ('',))[0]}",
                 f"Server: {self.server_version}",
                 f"Content-Type: {content_type}",
                 f"Content-Length: {len(body)}"]
        lines.extend(f"{k}: {v}" for k, v in headers)
        lines.extend(f"{k}: {v}" for k, v in self.server.extra_headers())
        if self.close_connection:
            lines.append("Connection: close")
        data = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        if not head:
            data += body
        self.wfile.write(data)
        self.wfile.flush()

    def do_GET(self, head=False):
        try:
            self.route(head)
        except (BrokenPipeError, ConnectionResetError, socket.timeout):
            self.close_connection = True
        except Exception as e:  # no stack traces to clients, and the server keeps serving
            log.error("request failed path=%s err=%r", self.path, e)
            self.close_connection = True
            try:
                self.send_body(500, b"internal error\n")
            except OSError:
                pass

    def do_HEAD(self):
        self.do_GET(head=True)

    def _method_not_allowed(self):
        self.close_connection = True
        self.send_body(405, b"method not allowed\n", headers=[("Allow", "GET, HEAD")])

    do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_TRACE = do_CONNECT = _method_not_allowed

    def route(self, head):
        path = self.path.split("?", 1)[0]
        srv = self.server
        if path == "/metrics":
            om = wants_openmetrics(self.headers.get("Accept"))
            gz = wants_gzip(self.headers.get("Accept-Encoding"))
            body = srv.scheduler.body(openmetrics=om, gzipped=gz)
            headers = [("Content-Encoding", "gzip")] if gz else []
            headers.append(("Vary", "Accept, Accept-Encoding"))
            ctype = render.OPENMETRICS_TYPE if om else render.TEXT_TYPE
            self.send_body(200, body, ctype, headers, head)
        elif path == "/":
            page = LANDING.format(version=html.escape(__version__)).encode()
            self.send_body(200, page, "text/html; charset=utf-8", head=head)
        elif path == "/-/healthy":
            self.send_body(200, b"OK\n", head=head)
        elif path == "/-/ready":
            if srv.scheduler.ready():
                self.send_body(200, b"OK\n", head=head)
            else:
                self.send_body(503, b"not ready: collectors have not refreshed yet\n", head=head)
        else:
            self.send_body(404, b"not found\n", head=head)


class Server(socketserver.ThreadingMixIn, HTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, address, scheduler, read_timeout=5.0, handler=Handler):
        host = address[0]
        self.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.scheduler = scheduler
        self.read_timeout = read_timeout
        super().__init__(address, handler)

    def extra_headers(self):
        return ()

    def serve_in_thread(self):
        t = threading.Thread(target=self.serve_forever, name="http", daemon=True)
        t.start()
        return t
