"""The live page at / and its Server-Sent Events stream at /api/live.

The page (index.html, page.css, page.js) is package data served from memory. ``Live`` takes each
verdict from the refresh thread, adds the local warnings with the time each one started, and hands
one SSE frame to the event loop, which writes it to every connected page. A write never waits:
a page that does not take its data is dropped (see server.Connection).
"""
import json
import logging
import threading
import time
from importlib import resources

from .. import __version__

log = logging.getLogger("hoofhearted.web")

RETRY_MS = 1000           # EventSource's reconnection delay, sent with every frame
HEARTBEAT_SECONDS = 15.0  # a comment line, so a vanished peer is noticed while refreshes stall
HOT_CELSIUS = 85.0
NEAR_MAX_CELSIUS = 10.0
BUSY_RATIO = 0.9


def _asset(name):
    return resources.files(__name__).joinpath(name).read_bytes()


INDEX = _asset("index.html").replace(b"{version}", __version__.encode())
ASSETS = {
    "/page.css": (_asset("page.css"), "text/css; charset=utf-8"),
    "/page.js": (_asset("page.js"), "text/javascript; charset=utf-8"),
}


# -- local warnings -----------------------------------------------------------------------------

def _sensor_name(t):
    name = t.get("name") or t.get("label") or t.get("sensor") or "sensor"
    chip = t.get("chip")
    return f"{name} ({chip})" if chip and chip not in name else name


def warnings_now(verdict, miners=()):
    """(key, level, text) of each warning the verdict shows now. ``miners``: (pid, name, user, reason)."""
    out = []
    for t in verdict.get("temperatures") or []:
        c, mx = t.get("celsius"), t.get("max_celsius")
        if c is None:
            continue
        near = mx is not None and c >= mx - NEAR_MAX_CELSIUS
        if near or c > HOT_CELSIUS:
            limit = f" (max {mx:.0f} °C)" if mx is not None else ""
            level = "critical" if (mx is not None and c >= mx) or c > HOT_CELSIUS else "warning"
            out.append((f"temp:{t.get('chip')}:{t.get('sensor')}", level,
                        f"{_sensor_name(t)} at {c:.0f} °C{limit}"))
    for g in verdict.get("gpus") or []:
        c, slow = g.get("temperature_celsius"), g.get("slowdown_celsius")
        if c is None:
            continue
        if c > HOT_CELSIUS or (slow is not None and c >= slow - NEAR_MAX_CELSIUS):
            limit = f" (slows down at {slow:.0f} °C)" if slow is not None else ""
            name = g.get("display") or f"GPU{g.get('gpu')}"
            out.append((f"gpu-temp:{g.get('uuid') or g.get('gpu')}", "critical", f"{name} at {c:.0f} °C{limit}"))
    cpu = (verdict.get("cpu") or {}).get("usage_ratio")
    if cpu is not None and cpu > BUSY_RATIO:
        out.append(("cpu", "warning", f"CPU {cpu * 100:.0f}% busy"))
    mem = (verdict.get("memory") or {}).get("usage_ratio")
    if mem is not None and mem > BUSY_RATIO:
        out.append(("memory", "warning", f"Memory {mem * 100:.0f}% used"))
    for pid, name, user, reason in miners:
        how = {"stratum": "connected to a mining pool port"}.get(reason, f"matched by {reason}")
        out.append((f"miner:{pid}:{name}", "critical",
                    f"Suspected miner: {name} (pid {pid}, user {user or 'unknown'}), {how}"))
    return out


class WarningClock:
    """Remembers when each warning started; a warning that clears and comes back starts anew."""

    def __init__(self):
        self.since = {}

    def update(self, current, now):
        self.since = {key: self.since.get(key, now) for key, _, _ in current}
        return [{"key": key, "level": level, "text": text, "since": self.since[key]}
                for key, level, text in current]


def suspected_miners(families):
    """(pid, name, user, reason) from the hoofhearted_process_suspected_miner family, by name."""
    out = []
    for fam in families:
        if fam.name != "hoofhearted_process_suspected_miner":
            continue
        for s in fam.samples:
            if s.value:
                out.append((s.labels.get("pid", ""), s.labels.get("name", ""), s.labels.get("user", ""),
                            s.labels.get("reason", "")))
    return out


# -- the stream ---------------------------------------------------------------------------------

def frame(event_id, payload):
    """One SSE event. JSON has no raw line breaks, so one data line carries it."""
    data = json.dumps(payload, separators=(",", ":"), allow_nan=False)
    return f"id: {event_id}\nretry: {RETRY_MS}\nevent: verdict\ndata: {data}\n\n".encode()


class Live:
    """Connected pages and the latest frame. ``publish`` runs in a refresh thread; the rest in the loop."""

    def __init__(self, max_clients=10, interval=1.0, clock=time.time):
        self.max_clients = max_clients
        self.interval = interval
        self.clock = clock
        self.clients = set()
        self.loop = None
        self.latest = None          # bytes of the last frame
        self.event_id = 0
        self.sent = 0
        self.dropped = 0
        self.refused = 0
        self._warnings = WarningClock()
        self._lock = threading.Lock()
        self._heartbeat = None

    def full(self):
        return len(self.clients) >= self.max_clients

    def publish(self, verdict, families=()):
        """Called after each critical-tier refresh: never blocks on a client."""
        with self._lock:
            warnings = self._warnings.update(warnings_now(verdict, suspected_miners(families)),
                                             verdict.get("time") or self.clock())
            try:
                data = frame(self.event_id + 1, {"verdict": verdict, "warnings": warnings,
                                                 "interval_seconds": self.interval})
            except (TypeError, ValueError) as e:    # NaN or an odd type: keep the last good frame
                log.warning("verdict not sent to live pages err=%r", e)
                return
            self.event_id += 1
            self.latest = data
        loop = self.loop
        if loop is not None and self.clients:
            try:
                loop.call_soon_threadsafe(self._broadcast, data)
            except RuntimeError:     # loop closed while shutting down
                pass

    def start(self, loop):
        self.loop = loop
        self._heartbeat = loop.call_later(HEARTBEAT_SECONDS, self._beat)

    def stop(self):
        if self._heartbeat is not None:
            self._heartbeat.cancel()

    def add(self, conn):
        self.clients.add(conn)
        if self.latest is not None:
            conn.send(self.latest)

    def discard(self, conn):
        self.clients.discard(conn)

    def _broadcast(self, data):
        if data is not self.latest:      # a newer frame is already queued behind this one
            return
        for conn in list(self.clients):
            conn.send(data)
        self.sent += 1

    def _beat(self):
        for conn in list(self.clients):
            conn.send(b": keep-alive\n\n")
        self._heartbeat = self.loop.call_later(HEARTBEAT_SECONDS, self._beat)
