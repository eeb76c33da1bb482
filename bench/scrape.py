"""Scraping the way Prometheus does: one keep-alive session, gzip accepted."""
import math
import threading
import time

import requests

from .procs import cpu_seconds

# What Prometheus 2.42 sends; it makes hoofhearted answer in OpenMetrics.
PROMETHEUS_ACCEPT = ("application/openmetrics-text;version=1.0.0,"
                     "application/openmetrics-text;version=0.0.1;q=0.75,"
                     "text/plain;version=0.0.4;q=0.5,*/*;q=0.1")


def session(accept=None):
    s = requests.Session()
    s.headers["Accept-Encoding"] = "gzip"
    if accept:
        s.headers["Accept"] = accept
    return s


def percentile(values, q):
    """Nearest-rank percentile (q in 0-100) of a non-empty list."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def latency(url, pid, count, max_seconds, warmup=5, accept=None):
    """Sequential scrapes: p50/p99 in seconds, and the exporter's CPU per scrape over all of them.

    Time is taken around the whole request including the client's gzip decode, as Prometheus
    pays it. Slow exporters stop early after max_seconds; `scrapes` says how many were made.
    """
    s = session(accept)
    try:
        for _ in range(warmup):
            s.get(url, timeout=30).content
        times = []
        cpu0 = cpu_seconds(pid)
        deadline = time.perf_counter() + max_seconds
        while len(times) < count:
            t0 = time.perf_counter()
            r = s.get(url, timeout=30)
            r.content
            t1 = time.perf_counter()
            r.raise_for_status()
            times.append(t1 - t0)
            if t1 > deadline and len(times) >= 20:
                break
        cpu = cpu_seconds(pid) - cpu0
    finally:
        s.close()
    return {"p50": percentile(times, 50), "p99": percentile(times, 99), "scrapes": len(times),
            "cpu_per_scrape": cpu / len(times)}


def body_stats(url):
    """Uncompressed and on-the-wire (gzip) size, and the series count (non-comment lines)."""
    s = session()
    try:
        r = s.get(url, timeout=60, stream=True)
        wire = r.raw.read(decode_content=False)
        r.close()
        text = s.get(url, timeout=60, headers={"Accept-Encoding": "identity"}).text
    finally:
        s.close()
    series = sum(1 for line in text.splitlines() if line and not line.startswith("#"))
    return {"bytes": len(text.encode()), "wire_bytes": len(wire), "series": series}


def single_scrape_cpu(url, pid, count, max_seconds, settle=0.25):
    """CPU seconds of single scrapes, each read around one request plus a short settle for GC."""
    s = session()
    out = []
    try:
        s.get(url, timeout=60).content
        deadline = time.monotonic() + max_seconds
        while len(out) < count and (time.monotonic() < deadline or len(out) < 3):
            time.sleep(settle)
            c0 = cpu_seconds(pid)
            s.get(url, timeout=60).content
            time.sleep(settle)
            out.append(cpu_seconds(pid) - c0)
    finally:
        s.close()
    return out


class PeriodicScraper(threading.Thread):
    """Scrapes one URL every `interval` seconds on a fixed schedule until stopped.

    `offset` delays the first scrape, so several scrapers do not all fire at the same instant
    (Prometheus spreads its targets over the interval too)."""

    def __init__(self, url, interval=2.0, accept=PROMETHEUS_ACCEPT, offset=0.0):
        super().__init__(daemon=True)
        self.url, self.interval, self.accept, self.offset = url, interval, accept, offset
        self.stop_event = threading.Event()
        self.times = []
        self.errors = 0

    @property
    def scrapes(self):
        return len(self.times)

    def run(self):
        s = session(self.accept)
        start = time.monotonic() + self.offset
        k = 0
        try:
            if self.stop_event.wait(self.offset):
                return
            while not self.stop_event.is_set():
                try:
                    t0 = time.perf_counter()
                    s.get(self.url, timeout=30).content
                    self.times.append(time.perf_counter() - t0)
                except requests.RequestException:
                    self.errors += 1
                k += 1
                wait = start + k * self.interval - time.monotonic()
                if wait > 0 and self.stop_event.wait(wait):
                    break
        finally:
            s.close()

    def stop(self):
        self.stop_event.set()
        self.join(60)
