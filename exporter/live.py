"""Grafana Live: push the critical tier to Grafana as Influx line protocol, once per critical refresh.

Grafana turns each measurement pushed to /api/live/push/hoofhearted into the channel
stream/hoofhearted/<measurement> (temperature, fan, cpu, gpu, culprit); the home dashboard's Live
row subscribes to those over its WebSocket. The sink is fed by the verdict stage after each new
verdict: readings come from the metric families the collectors rendered last and the culprit is
the verdict's rank 1, so the stream says exactly what /metrics and /api/verdict say.

A failed push is counted (hoofhearted_live_pushes_total{result}) and logged when the state
changes.
"""
import logging
import math
import socket
import threading
import time
import urllib.parse

from . import render
from .collectors.base import counter
from .config import ConfigError

log = logging.getLogger("hoofhearted.live")

STREAM = "hoofhearted"
RESULTS = ("success", "http_error", "network_error")


# -- line protocol -------------------------------------------------------------------------

def _key(text):
    """Measurement, tag key, tag value or field key. Backslashes become '/': Grafana's parser
    does not unescape them, so a trailing one would swallow the next separator."""
    text = str(text).replace("\\", "/")
    for ch in "\n\r\t":
        text = text.replace(ch, " ")
    return text.replace(",", r"\,").replace("=", r"\=").replace(" ", r"\ ")


def _field(value):
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return f"{value}i"
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else None
    text = str(value).replace("\\", "\\\\").replace('"', '\\"')
    for ch in "\n\r\t":
        text = text.replace(ch, " ")
    return f'"{text}"'


def line(measurement, tags, fields, ts_ns):
    """One line, or None when no field has a value. Empty tag values are left out."""
    parts = [f"{_key(k)}={v}" for k, v in ((k, _field(v)) for k, v in fields.items()) if v is not None]
    if not parts:
        return None
    head = ",".join([_key(measurement)] + [f"{_key(k)}={_key(v)}" for k, v in tags.items() if v != ""])
    return f"{head} {','.join(parts)} {ts_ns}"


# -- what to push --------------------------------------------------------------------------

def _index(collectors):
    """{metric family name: [Sample]} from the last refresh of every collector."""
    out = {}
    for c in collectors:
        for fam in getattr(c, "families", None) or ():
            out.setdefault(fam.name, []).extend(fam.samples)
    return out


def _by(samples, *labels):
    return {tuple(s.labels.get(k, "") for k in labels): s.value for s in samples}


def lines(collectors, host, ts_ns, report=None):
    m = _index(collectors)
    out = []

    tmax = _by(m.get("hoofhearted_temperature_max_celsius", ()), "chip", "sensor", "label")
    tcrit = _by(m.get("hoofhearted_temperature_critical_celsius", ()), "chip", "sensor", "label")
    for s in m.get("hoofhearted_temperature_celsius", ()):
        k = (s.labels.get("chip", ""), s.labels.get("sensor", ""), s.labels.get("label", ""))
        fields = {"celsius": s.value, "max_celsius": tmax.get(k), "critical_celsius": tcrit.get(k)}
        out.append(line("temperature", {"host": host, "chip": k[0], "sensor": k[1], "label": k[2]},
                        {f: v for f, v in fields.items() if v is not None}, ts_ns))

    fmax = _by(m.get("hoofhearted_fan_max_rpm", ()), "chip", "fan")
    pwm = _by(m.get("hoofhearted_fan_pwm_ratio", ()), "chip", "fan")
    seen = set()
    for s in m.get("hoofhearted_fan_speed_rpm", ()):
        k = (s.labels.get("chip", ""), s.labels.get("fan", ""))
        seen.add(k)
        fields = {"rpm": s.value, "max_rpm": fmax.get(k), "pwm_ratio": pwm.get(k)}
        out.append(line("fan", {"host": host, "chip": k[0], "fan": k[1], "label": s.labels.get("label", "")},
                        {f: v for f, v in fields.items() if v is not None}, ts_ns))
    for k, ratio in sorted(pwm.items()):
        if k not in seen:  # a PWM output with no tachometer
            out.append(line("fan", {"host": host, "chip": k[0], "fan": k[1]}, {"pwm_ratio": ratio}, ts_ns))

    cpu = {}
    for s in m.get("hoofhearted_cpu_usage_ratio", ()):
        cpu["busy_ratio"] = s.value
    for s in m.get("hoofhearted_cpu_cores", ()):
        cpu["cores"] = s.value
    if cpu:
        out.append(line("cpu", {"host": host}, cpu, ts_ns))

    gpus = {}
    for metric, field in (("hoofhearted_gpu_utilization_ratio", "busy_ratio"),
                          ("hoofhearted_gpu_temperature_celsius", "temperature_celsius"),
                          ("hoofhearted_gpu_power_watts", "power_watts"),
                          ("hoofhearted_gpu_memory_used_bytes", "memory_used_bytes"),
                          ("hoofhearted_gpu_fan_speed_ratio", "fan_ratio")):
        for s in m.get(metric, ()):
            g = gpus.setdefault(s.labels.get("gpu", ""), {})
            g[field] = max(g.get(field, s.value), s.value)  # several fans: the fastest
    for gpu, fields in sorted(gpus.items()):
        out.append(line("gpu", {"host": host, "gpu": gpu}, fields, ts_ns))

    fields = _culprit(report)
    if fields:
        out.append(line("culprit", {"host": host}, fields, ts_ns))
    return [x for x in out if x]


def _culprit(report):
    """Rank 1 of the verdict and its sentence: the same answer as /api/verdict and `why`."""
    if not report:
        return {}
    fields = {"verdict": report["sentence"], "measuring": report["measuring"]}
    if report["culprits"]:
        c = report["culprits"][0]
        fields.update(kind=c["kind"], name=c["name"], user=c["user"], owner=c["owner"],
                      processes=c["processes"], text=c["text"])
        if c["pid"] is not None:
            fields["pid"] = c["pid"]
        if c["cores"] is not None:
            fields["cores"] = float(c["cores"])
        if c.get("watts") is not None:
            fields["watts"] = float(c["watts"])
        if c["gpu"]:
            gpu, share = max(c["gpu"].items(), key=lambda kv: kv[1])
            fields.update(gpu=gpu, gpu_share=float(share))
    return fields


# -- the sink ------------------------------------------------------------------------------

class LiveSink:
    """Pushes each new verdict and the critical tier's readings, from a thread of its own, so a slow
    Grafana only delays the pushes. At most one push per critical interval; a push that finds a
    newer verdict waiting sends that one (the older is dropped, never queued up).

    ``push(collectors, report)`` does one push; ``families()`` are its counters.
    """

    def __init__(self, config, wall=time.time, host=None):
        live = config["grafana_live"]
        url = urllib.parse.urlsplit(live["url"])
        self.scheme, self.netloc = url.scheme, url.netloc
        self.path = url.path.rstrip("/") + f"/api/live/push/{STREAM}"
        self.url = f"{url.scheme}://{url.netloc}{self.path}"
        self.timeout = live["timeout_seconds"]
        self.interval = config["tiers"]["critical"]
        self.token = _token(live)
        if not self.token:
            log.warning("grafana_live has no token; Grafana will refuse the pushes url=%s", self.url)
        self.wall = wall
        self.host = host or socket.gethostname()
        self.counts = dict.fromkeys(RESULTS, 0)
        self.conn = None
        self.conn_fresh = False
        self.failing = None
        self._pending = None
        self._cond = threading.Condition()
        self._stop = False
        self._thread = None
        self.rendered = render.Rendered(self.families())

    # -- sink interface --------------------------------------------------------------------

    def publish(self, event):
        with self._cond:
            self._pending = event
            self._cond.notify()

    def start(self):
        self._thread = threading.Thread(target=self._loop, name="grafana-live", daemon=True)
        self._thread.start()

    def stop(self, timeout=1.0):
        with self._cond:
            self._stop = True
            self._cond.notify()
        if self._thread is not None:
            self._thread.join(timeout)
        self._close()

    def _loop(self):
        last = None
        while True:
            with self._cond:
                while self._pending is None and not self._stop:
                    self._cond.wait()
                if self._stop:
                    return
            if last is not None:
                wait = last + self.interval - time.monotonic()
                if wait > 0:
                    with self._cond:
                        if self._cond.wait_for(lambda: self._stop, wait):
                            return
            with self._cond:
                event, self._pending = self._pending, None
            last = time.monotonic()
            try:
                self.push(event.collectors, event.verdict)
            except Exception as e:      # never let the thread die
                log.warning("grafana live push failed url=%s err=%r", self.url, e)

    # -- counters in /metrics --------------------------------------------------------------

    def families(self):
        pushes = counter("hoofhearted_live_pushes", "Pushes of the critical tier to Grafana Live, by result.",
                         ["result"])
        for r in RESULTS:
            pushes.add_metric([r], self.counts[r])
        return [pushes]

    def _render(self):
        self.rendered.set(self.families())

    # what the scheduler joins into /metrics
    @property
    def version(self):
        return self.rendered.version

    def parts(self):
        return self.rendered.parts()

    def om_parts(self):
        return self.rendered.om_parts()

    # -- one push --------------------------------------------------------------------------

    def body(self, collectors, report=None):
        return "\n".join(lines(collectors, self.host, int(self.wall() * 1e9), report)).encode("utf-8")

    def push(self, collectors, report=None):
        """One POST; returns the result counted ("success", "http_error" or "network_error")."""
        import http.client   # here, not at the top: most exporters never push
        body = self.body(collectors, report)
        if not body:
            return None
        headers = {"Content-Type": "text/plain; charset=utf-8", "Content-Length": str(len(body))}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        try:
            try:
                status = self._post(body, headers)
            except (OSError, http.client.HTTPException):
                if self.conn_fresh:
                    raise
                self._close()  # Grafana closed the kept-alive connection: one retry on a new one
                status = self._post(body, headers)
            result, detail = ("success", None) if 200 <= status < 300 else ("http_error", f"HTTP {status}")
        except (OSError, http.client.HTTPException) as e:
            self._close()
            result, detail = "network_error", f"{type(e).__name__}: {e}"
        self.counts[result] += 1
        self._render()
        self._log(result, detail)
        return result

    def _post(self, body, headers):
        import http.client
        self.conn_fresh = self.conn is None
        if self.conn is None:
            cls = http.client.HTTPSConnection if self.scheme == "https" else http.client.HTTPConnection
            self.conn = cls(self.netloc, timeout=self.timeout)
        self.conn.request("POST", self.path, body=body, headers=headers)
        resp = self.conn.getresponse()
        resp.read()
        if resp.will_close:
            self._close()
        return resp.status

    def _close(self):
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    def _log(self, result, detail):
        """One line when pushes start failing or fail differently (another status), one on recovery."""
        state = None if result == "success" else (detail if result == "http_error" else result)
        if state and state != self.failing:
            log.warning("grafana live push failed url=%s err=%r", self.url, detail)
        elif not state and self.failing:
            log.info("grafana live push recovered url=%s", self.url)
        self.failing = state


def _token(live):
    if live.get("token"):
        return live["token"].strip()
    path = live.get("token_file")
    if not path:
        return None
    try:
        with open(path, encoding="utf-8") as f:
            return f.read().strip()
    except OSError as e:
        raise ConfigError(f"grafana_live.token_file: cannot read {path}: {e.strerror or e}") from None
