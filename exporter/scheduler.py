"""Tiered background refresh and the cache a scrape reads.

Each collector gets a Job and its own thread: a hanging device blocks only its own job,
never a scrape or another tier. A refresh renders its exposition bytes once; a scrape joins
the cached bytes of every job, family by family (two collectors may feed one family), plus
a few lines about the jobs themselves.
"""
import ctypes
import gzip
import logging
import platform
import threading
import time

from . import __version__, render
from .collectors.base import gauge

log = logging.getLogger("hoofhearted.scheduler")

RENDERERS = {"text": render.text_parts, "openmetrics": render.openmetrics_parts}
# a refresh renders the formats scrapes asked for within this many seconds
FORMAT_MEMORY = 300.0
ESCALATION_LOG_INTERVAL = 60.0


def limit_malloc_arenas(n=1):
    """glibc gives each allocating thread its own malloc arena (up to 8 per core), and each arena
    keeps its high-water mark: with a dozen refresh threads the transient /proc table lands in
    several of them (about 1 MB of RSS at 5,000 processes). Under the GIL one arena is enough."""
    try:
        ctypes.CDLL(None).mallopt(-8, n)    # M_ARENA_MAX
    except (OSError, AttributeError):
        pass                                # not glibc


class Job:
    """One collector's refresh state. Methods take the clock readings they need."""

    def __init__(self, collector, tier, tiers, timeout, stale_after_intervals, clock, wall):
        self.collector = collector
        self.name = collector.name
        self.tier = tier
        self.tiers = tiers
        self.timeout = timeout
        self.stale_after_intervals = stale_after_intervals
        self.clock = clock
        self.wall = wall
        self.escalated = False
        self.families = []
        self._rendered = {}          # format -> (families, their parts), the last good refresh's
        self.asked = {}              # format -> when a scrape last asked for it (monotonic)
        self.version = 0
        self.runs = 0
        self.success = None          # None: never ran
        self.duration = None
        self.last_start = None
        self.last_success = None     # monotonic
        self.last_success_wall = None
        self.running_since = None
        self.error = None

    def interval(self):
        if self.escalated and self.collector.escalates:
            return min(self.tiers["critical"], self.tiers[self.tier])
        return self.tiers[self.tier]

    def run(self):
        start = self.clock()
        self.last_start = start
        self.running_since = start
        try:
            families = self.collector.refresh(start)
            # here rather than in the next scrape: the formats scraped lately (Prometheus asks for
            # OpenMetrics), text until a scrape says
            formats = [f for f, t in self.asked.items() if start - t <= FORMAT_MEMORY] or ["text"]
            rendered = {f: (families, RENDERERS[f](families)) for f in formats}
        except Exception as e:  # a collector must never take the exporter down
            self.running_since = None
            self.duration = self.clock() - start
            self.runs += 1
            self._fail(f"{type(e).__name__}: {e}")
            return False
        self.running_since = None
        self.duration = self.clock() - start
        self.runs += 1
        if self.success is False:
            log.info("collector recovered collector=%s", self.name)
        self.families = families
        self._rendered.update(rendered)
        self.success, self.error = True, None
        self.last_success = start
        self.last_success_wall = self.wall()
        self.version += 1
        return True

    def _fail(self, error):
        if self.success is not False or error != self.error:
            log.error("collector failed collector=%s err=%r", self.name, error)
        self.success, self.error = False, error
        self.version += 1

    def timed_out(self, now):
        return self.running_since is not None and now - self.running_since > self.timeout

    def stale(self, now):
        """Last good data is too old to serve (failing or hanging for several intervals)."""
        if self.last_success is None:
            return True
        limit = self.stale_after_intervals * self.interval() + self.timeout
        return now - self.last_success > limit

    def ok(self, now):
        return bool(self.success) and not self.timed_out(now)

    def parts(self, fmt, now):
        """render parts of the last good refresh in a format ("text" or "openmetrics"); rendered
        here only when no refresh since the format was last asked for has."""
        self.asked[fmt] = now
        families = self.families
        cached = self._rendered.get(fmt)
        if cached is None or cached[0] is not families:
            cached = self._rendered[fmt] = (families, RENDERERS[fmt](families))
        return cached[1]


class Scheduler:
    def __init__(self, collectors, config, clock=time.monotonic, wall=time.time, on_refresh=None):
        self.config = config
        self.clock = clock
        self.wall = wall
        tiers = dict(config["tiers"])
        self.jobs = [
            Job(c, config["collectors"].get(c.name, {}).get("tier", getattr(c, "tier", "standard")), tiers,
                config["refresh"]["timeout_seconds"], config["refresh"]["stale_after_intervals"],
                clock, wall)
            for c in collectors
        ]
        # A follower (GPU processes after processes) runs in its leader's thread right after it,
        # so both read one /proc pass instead of two whenever their threads drift apart.
        by_name = {j.name: j for j in self.jobs}
        for job in self.jobs:
            job.followers = []
            lead = by_name.get(getattr(job.collector, "follows", None))
            job.leader = lead if lead is not None and lead.tier == job.tier else None
        for job in self.jobs:
            if job.leader is not None:
                job.leader.followers.append(job)
        self.hot_reasons = frozenset()
        self._esc_logged_at = None
        self._esc_unlogged = 0
        self.on_refresh = on_refresh or []
        self.extra = []     # stages and sinks with metric families of their own (.parts(), .om_parts(), .version)
        self._cond = threading.Condition()
        self._stop = False
        self._threads = []
        self._cache_key = None
        self._cache = None
        self._cache_lock = threading.Lock()

    # -- refresh ---------------------------------------------------------------------------

    def run_job(self, job):
        """Refresh one job, then re-evaluate escalation. Used by the threads and by tests."""
        ok = job.run()
        for follower in job.followers:
            follower.run()
        if ok or any(f.success for f in job.followers):
            self.update_escalation()
        for j in [job] + job.followers:
            for hook in self.on_refresh:
                try:
                    hook(self, j)
                except Exception as e:
                    log.warning("refresh hook failed err=%r", e)
        return ok

    def update_escalation(self):
        esc = self.config["escalation"]
        reasons = set()
        if esc["enabled"]:
            for job in self.jobs:
                if job.success:
                    try:
                        reasons.update(job.collector.hot(esc))
                    except Exception as e:
                        log.warning("hot check failed collector=%s err=%r", job.name, e)
        reasons = frozenset(reasons)
        if reasons == self.hot_reasons:
            return
        self._log_escalation(reasons)
        with self._cond:
            self.hot_reasons = reasons
            for job in self.jobs:
                job.escalated = bool(reasons)
            self._cond.notify_all()

    def _log_escalation(self, reasons):
        """Escalation on and off at info, at most one line a minute: a reading hovering at its
        threshold flips it every refresh. The next line counts the changes left out."""
        now = self.clock()
        if self._esc_logged_at is not None and now - self._esc_logged_at < ESCALATION_LOG_INTERVAL:
            self._esc_unlogged += 1
            return
        more = f" unlogged_changes={self._esc_unlogged}" if self._esc_unlogged else ""
        if reasons:
            log.info("escalating refresh to critical interval reasons=%s%s", ",".join(sorted(reasons)), more)
        else:
            log.info("cooled down, back to normal refresh intervals%s", more)
        self._esc_logged_at, self._esc_unlogged = now, 0

    def _loop(self, job):
        while True:
            self.run_job(job)
            with self._cond:
                while not self._stop:
                    wait = job.last_start + job.interval() - self.clock()
                    if wait <= 0:
                        break
                    self._cond.wait(wait)
                if self._stop:
                    return

    def start(self):
        limit_malloc_arenas()
        for job in self.jobs:
            if job.leader is not None:
                continue
            t = threading.Thread(target=self._loop, args=(job,), name=f"refresh-{job.name}", daemon=True)
            t.start()
            self._threads.append(t)

    def stop(self, timeout=1.0):
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        deadline = time.monotonic() + timeout
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))
        for job in self.jobs:
            try:
                job.collector.close()
            except Exception as e:
                log.warning("close failed collector=%s err=%r", job.name, e)

    # -- scrape ----------------------------------------------------------------------------

    def ready(self):
        return all(job.runs > 0 for job in self.jobs)

    def meta_families(self, now):
        success = gauge("hoofhearted_collector_success",
                        "Whether the collector's last refresh succeeded (0 also while it hangs past its timeout).",
                        ["collector"])
        duration = gauge("hoofhearted_collector_duration_seconds",
                         "How long the collector's last refresh took.", ["collector"])
        last = gauge("hoofhearted_collector_last_success_timestamp_seconds",
                     "Unix time of the collector's last successful refresh.", ["collector"])
        interval = gauge("hoofhearted_collector_refresh_interval_seconds",
                         "Current refresh interval (shorter than the tier's while escalated).",
                         ["collector", "tier"])
        for job in self.jobs:
            if job.runs == 0 and not job.timed_out(now):
                continue
            success.add_metric([job.name], 1 if job.ok(now) else 0)
            if job.duration is not None:
                duration.add_metric([job.name], job.duration)
            if job.last_success_wall is not None:
                last.add_metric([job.name], job.last_success_wall)
        for job in self.jobs:
            interval.add_metric([job.name, job.tier], job.interval())
        escalated = gauge("hoofhearted_escalation_active",
                          "1 while a hot reading keeps the explaining collectors at the critical interval.")
        escalated.add_metric([], 1 if self.hot_reasons else 0)
        build = gauge("hoofhearted_build_info", "Version of hoofhearted and of the Python running it.",
                      ["version", "python_version"])
        build.add_metric([__version__, platform.python_version()], 1)
        return [success, duration, last, interval, escalated, build]

    def exposition(self, openmetrics=False):
        """The scrape body: cached bytes of every fresh job plus the job metadata."""
        now = self.clock()
        state = tuple((j.version, j.timed_out(now), j.stale(now)) for j in self.jobs)
        key = (openmetrics, state, self.hot_reasons, tuple(x.version for x in self.extra))
        with self._cache_lock:
            if key == self._cache_key:
                return self._cache
        meta = self.meta_families(now)
        fresh = [job for job, (_, _, stale) in zip(self.jobs, state) if not stale]
        fmt = "openmetrics" if openmetrics else "text"
        for job in self.jobs:      # stale ones too: they render it once they recover
            job.asked[fmt] = now
        extra = [x.om_parts() if openmetrics else x.parts() for x in self.extra]
        body = render.join_parts([job.parts(fmt, now) for job in fresh] + extra + [RENDERERS[fmt](meta)])
        if openmetrics:
            body += b"# EOF\n"
        cached = {"identity": body}
        with self._cache_lock:
            self._cache_key, self._cache = key, cached
        return cached

    def body(self, openmetrics=False, gzipped=False):
        cached = self.exposition(openmetrics)
        if gzipped:
            z = cached.get("gzip")
            if z is None:
                z = cached["gzip"] = gzip.compress(cached["identity"], compresslevel=1)
            return z
        return cached["identity"]
