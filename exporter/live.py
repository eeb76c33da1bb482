"""Grafana Live: push the critical tier to Grafana as Influx line protocol, once per critical refresh.

Grafana turns each measurement pushed to /api/live/push/hoofhearted into the channel
stream/hoofhearted/<measurement> (temperature, fan, cpu, gpu, culprit); the home dashboard's Live
row subscribes to those over its WebSocket. The values come from the metric families the other
collectors rendered last, so the stream says exactly what /metrics says.

A failed push is counted (hoofhearted_live_pushes_total{result}) and logged when the state
changes; it never touches /metrics.
"""
import logging
import math
import socket
import time
import urllib.parse

from .collectors.base import Collector, counter
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


def _who(name, pid, user, owner):
    extra = ", ".join(x for x in (user, owner) if x)
    return f"{name} (pid {pid}{', ' + extra if extra else ''})"


def lines(collectors, host, ts_ns):
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

    verdict = _culprit(m)
    if verdict:
        out.append(line("culprit", {"host": host}, verdict, ts_ns))
    return [x for x in out if x]


def _culprit(m):
    fields, words = {}, []
    procs = m.get("hoofhearted_process_cpu_usage_cores", ())
    if procs:
        top = max(procs, key=lambda s: s.value)
        lab = top.labels
        fields.update(name=lab.get("name", ""), pid=int(lab.get("pid", "0") or 0), user=lab.get("user", ""),
                      owner=lab.get("owner", ""), cores=top.value)
        words.append(f"{_who(lab.get('name', '?'), lab.get('pid', '?'), lab.get('user', ''), lab.get('owner', ''))}"
                     f" uses {top.value:.2f} cores")
    shares = {}
    for s in m.get("hoofhearted_gpu_process_utilization_ratio", ()):
        if s.labels.get("engine", "sm") == "sm":
            k = tuple(s.labels.get(x, "") for x in ("gpu", "pid", "name", "user", "owner"))
            shares[k] = shares.get(k, 0.0) + s.value
    if shares:
        (gpu, pid, name, user, owner), share = max(shares.items(), key=lambda kv: kv[1])
        fields.update(gpu=gpu, gpu_name=name, gpu_pid=int(pid or 0), gpu_user=user, gpu_share=share)
        words.append(f"{_who(name, pid, user, owner)} uses {share:.0%} of GPU{gpu}")
    if words:
        fields["verdict"] = "; ".join(words)
    return fields


# -- the pusher ----------------------------------------------------------------------------

class LivePusher(Collector):
    """Pushes on its own critical-tier job, so a slow Grafana only delays the pushes.

    The scheduler hands itself over through ``bind``; ``update`` then pushes
    what the other, non-stale collectors last rendered. ``push(collectors, now)`` does one push;
    ``counter_families()`` are its counters.
    """

    name = "grafana_live"
    tier = "critical"

    def __init__(self, config, wall=time.time, host=None):
        super().__init__()
        live = config["grafana_live"]
        url = urllib.parse.urlsplit(live["url"])
        self.scheme, self.netloc = url.scheme, url.netloc
        self.path = url.path.rstrip("/") + f"/api/live/push/{STREAM}"
        self.url = f"{url.scheme}://{url.netloc}{self.path}"
        self.timeout = live["timeout_seconds"]
        self.token = _token(live)
        if not self.token:
            log.warning("grafana_live has no token; Grafana will refuse the pushes url=%s", self.url)
        self.wall = wall
        self.host = host or socket.gethostname()
        self.counts = dict.fromkeys(RESULTS, 0)
        self.scheduler = None
        self.conn = None
        self.conn_fresh = False
        self.failing = None

    @classmethod
    def create(cls, config):
        return cls(config) if config["grafana_live"]["url"] else None

    def bind(self, scheduler):
        self.scheduler = scheduler

    def update(self, now):
        sched = self.scheduler
        if sched is not None:
            self.push([j.collector for j in sched.jobs
                       if j.collector is not self and j.success and not j.stale(now)], now)
        return self.counter_families()

    def counter_families(self):
        """The push counters. (``self.families`` is the Collector's last refresh: the same.)"""
        pushes = counter("hoofhearted_live_pushes", "Pushes of the critical tier to Grafana Live, by result.",
                         ["result"])
        for r in RESULTS:
            pushes.add_metric([r], self.counts[r])
        return [pushes]

    def body(self, collectors):
        return "\n".join(lines(collectors, self.host, int(self.wall() * 1e9))).encode("utf-8")

    def push(self, collectors, now=None):
        """One POST; returns the result counted ("success", "http_error" or "network_error")."""
        import http.client   # here, not at the top: most exporters never push
        body = self.body(collectors)
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

    def close(self):
        self._close()


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
