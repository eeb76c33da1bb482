"""The one place that wires the exporter: sources and collectors -> scheduler -> verdict -> sinks.

    collectors (tiers, own threads) --refresh--> Scheduler (cached exposition for /metrics)
                                      \\--> VerdictStage (after the refreshes it reads)
                                              --> /api/verdict, hoofhearted_culprit_* families
                                              --> subscribers: Grafana Live, the page's /api/live

Subscribers are called in the verdict thread after each new verdict with a Published event;
they must not block (queue and return).
"""
import json
import logging
import threading
import time
from typing import NamedTuple

from . import attribution, collectors as registry, render, verdict
from .scheduler import Scheduler
from .sources import host as hostsrc

log = logging.getLogger("hoofhearted.verdict")

INPUTS = {"cpu", "memory", "sensors", "process", "gpu_process", "nvidia", "amdgpu", "bmc", "rapl"}


class Published(NamedTuple):
    verdict: dict          # the /api/verdict object
    collectors: list       # collectors whose last refresh is fresh, for sinks that want raw families


class VerdictStage(render.Rendered):
    """Recomputes the verdict when an input collector refreshed, at most twice per critical interval."""

    def __init__(self, scheduler, config, clock=time.monotonic, wall=time.time, host=None):
        self.scheduler = scheduler
        self.clock, self.wall, self.host = clock, wall, host
        self.interval = config["tiers"]["critical"]
        paths = config["paths"]
        self.reason = verdict.missing_sensors_reason(paths["sysfs"], paths["procfs"])
        self.subscribers = []
        self._latest = None
        self._body = None
        self._seen = None
        self._said_sensors = False
        self._cache = {}
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = None
        self._lock = threading.Lock()
        self.attributor = attribution.Attributor(clock=scheduler.clock)
        scheduler.on_refresh.append(self._on_refresh)
        super().__init__(verdict.families(self._empty()) + self.attributor.families())

    def _empty(self):
        return {"measuring": True, "sensors": {"temperature": 0, "fan": 0}, "culprits": []}

    def _on_refresh(self, sched, job):
        if job.name in INPUTS:
            self._wake.set()

    def update(self, force=False):
        """Compute and publish a new verdict if an input changed; returns it (or None)."""
        jobs = [j for j in self.scheduler.jobs if j.name in INPUTS]
        seen = tuple((j.name, j.version) for j in jobs)
        if seen == self._seen and not force:
            return None
        self._seen = seen
        now = self.scheduler.clock()
        fresh = [j.collector for j in self.scheduler.jobs if j.success and not j.stale(now)]
        pending = {j.name for j in jobs if j.last_success is None}
        failing = {j.name for j in jobs if j.last_success is not None and j.collector not in fresh}
        m = verdict.index(fresh)
        power = attribute(self.attributor, fresh, now, m)
        report = verdict.compute(fresh, host=self.host, wall=self.wall, reason=self.reason, pending=pending,
                                 failing=failing, cache=self._cache, power=power, m=m)
        self._say_sensors(report, jobs)
        body = json.dumps(report, separators=(",", ":")).encode("utf-8")
        with self._lock:
            self._latest, self._body = report, body
        self.set(verdict.families(report) + self.attributor.families())
        event = Published(report, fresh)
        for cb in list(self.subscribers):
            try:
                cb(event)
            except Exception as e:   # a sink must never stop the verdict
                log.warning("verdict subscriber failed err=%r", e)
        return report

    def _say_sensors(self, report, jobs):
        """Once, after the sensor collector ran: say why a box has no temperature or fan readings."""
        if self._said_sensors or not any(j.name == "sensors" and j.runs for j in jobs):
            return
        self._said_sensors = True
        if not report["sensors"]["temperature"] and not report["sensors"]["fan"]:
            log.warning("no temperature or fan readings reason=%r", self.reason)

    def latest(self):
        return self._latest

    def body(self):
        """The /api/verdict JSON bytes; None before the first verdict."""
        with self._lock:
            return self._body

    def subscribe(self, callback):
        self.subscribers.append(callback)

    def _loop(self):
        gap = self.interval / 2
        last = None
        while not self._stop.is_set():
            self._wake.wait(self.interval)
            self._wake.clear()
            if self._stop.is_set():
                return
            now = self.clock()
            if last is not None and now - last < gap:
                if self._stop.wait(gap - (now - last)):
                    return
            last = self.clock()
            try:
                self.update()
            except Exception as e:
                log.error("verdict failed err=%r", e)

    def start(self):
        self._thread = threading.Thread(target=self._loop, name="verdict", daemon=True)
        self._thread.start()

    def stop(self, timeout=1.0):
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)


def attribute(attributor, collectors, now=None, m=None):
    """Watts per process from the same fresh refreshes the verdict reads (``m``: their index)."""
    by_name = {c.name: c for c in collectors}
    proc, gpu = by_name.get("process"), by_name.get("gpu_process")
    entries = (getattr(gpu, "snapshot", None) or ()) if gpu is not None else ()
    return attributor.update(verdict.index(collectors) if m is None else m, proc, entries, now)


class Pipeline:
    """Builds and runs everything; the HTTP server reads it (body, ready, verdict_body)."""

    def __init__(self, config, built=None, clock=time.monotonic, wall=time.time, host=None):
        self.config = config
        # the name every surface gives the machine, and the one Prometheus's discovery labels it with
        self.host = host or hostsrc.hostname(config["paths"]["rootfs"])
        host = self.host
        self.collectors = registry.build(config) if built is None else built
        self.scheduler = Scheduler(self.collectors, config, clock=clock, wall=wall)
        self.verdict = VerdictStage(self.scheduler, config, clock=clock, wall=wall, host=host)
        self.scheduler.extra.append(self.verdict)
        self.sinks = []
        if config["grafana_live"]["url"]:
            from .live import LiveSink
            live = LiveSink(config, wall=wall, host=host)
            self.add_sink(live)

    def add_sink(self, sink):
        """A sink subscribes to the verdict and may show families of its own in /metrics."""
        self.sinks.append(sink)
        self.verdict.subscribe(sink.publish)
        if hasattr(sink, "parts"):
            self.scheduler.extra.append(sink)

    def subscribe(self, callback):
        self.verdict.subscribe(callback)

    @property
    def jobs(self):
        return self.scheduler.jobs

    def start(self):
        for sink in self.sinks:
            sink.start()
        self.scheduler.start()
        self.verdict.start()

    def stop(self, timeout=1.0):
        self.verdict.stop(timeout)
        self.scheduler.stop(timeout)
        for sink in self.sinks:
            try:
                sink.stop()
            except Exception as e:
                log.warning("sink stop failed err=%r", e)

    # -- what the HTTP server reads ------------------------------------------------------

    def body(self, openmetrics=False, gzipped=False):
        return self.scheduler.body(openmetrics=openmetrics, gzipped=gzipped)

    def ready(self):
        return self.scheduler.ready()

    def verdict_body(self):
        return self.verdict.body()

    def __getattr__(self, name):      # anything else a reader of the scheduler uses
        if name == "scheduler":
            raise AttributeError(name)
        return getattr(self.scheduler, name)
