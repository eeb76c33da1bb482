"""Tier scheduler: timeouts, staleness, escalation and the cached exposition, on a fake clock."""
import threading
import time


from conftest import parse_exposition, sample
from exporter.collectors.base import Collector, gauge
from exporter.config import defaults
from exporter.scheduler import Scheduler


class Clock:
    def __init__(self, t=1000.0):
        self.t = t

    def __call__(self):
        return self.t


class Fake(Collector):
    def __init__(self, name, tier="standard", escalates=False, value=1.0):
        super().__init__()
        self.name, self.tier, self.escalates = name, tier, escalates
        self.value = value
        self.fail = None
        self.hot_reasons = ()
        self.calls = []

    def update(self, now):
        self.calls.append(now)
        if self.fail:
            raise self.fail
        g = gauge(f"test_{self.name}_value", "A test value.")
        g.add_metric([], self.value)
        return [g]

    def hot(self, thresholds):
        return self.hot_reasons


def make(*collectors, **overrides):
    cfg = defaults()
    for c in collectors:
        cfg["collectors"][c.name] = {"enabled": True, "tier": c.tier}
    for k, v in overrides.items():
        section, key = k.split("__")
        cfg[section][key] = v
    clock = Clock()
    wall = Clock(1_700_000_000.0)
    return Scheduler(list(collectors), cfg, clock=clock, wall=wall), clock, wall


def scrape(sched):
    return parse_exposition(sched.body().decode())


def test_scrape_joins_cached_bytes_and_reports_each_collector():
    a, b = Fake("a", "critical", value=3), Fake("b", "background", value=4)
    sched, clock, wall = make(a, b)
    assert not sched.ready()
    for job in sched.jobs:
        sched.run_job(job)
    assert sched.ready()
    m = scrape(sched)
    assert sample(m, "test_a_value") == 3 and sample(m, "test_b_value") == 4
    assert sample(m, "hoofhearted_collector_success", collector="a") == 1
    assert sample(m, "hoofhearted_collector_last_success_timestamp_seconds", collector="b") == 1_700_000_000.0
    assert sample(m, "hoofhearted_collector_refresh_interval_seconds", collector="a", tier="critical") == 1
    assert sample(m, "hoofhearted_collector_refresh_interval_seconds", collector="b", tier="background") == 10
    assert sample(m, "hoofhearted_escalation_active") == 0
    # a scrape never calls a collector, and repeated scrapes reuse the same bytes
    calls = len(a.calls)
    first = sched.body()
    assert sched.body() is first
    assert len(a.calls) == calls


def test_gzip_body_is_the_same_exposition():
    import gzip
    sched, _, _ = make(Fake("a"))
    sched.run_job(sched.jobs[0])
    assert gzip.decompress(sched.body(gzipped=True)) == sched.body()


def test_failure_keeps_last_good_data_until_stale_then_drops_it():
    a = Fake("a", "standard", value=7)
    sched, clock, wall = make(a, refresh__stale_after_intervals=3, refresh__timeout_seconds=2.0)
    job = sched.jobs[0]
    sched.run_job(job)
    a.fail = OSError("sensor went away")
    clock.t += 5
    assert sched.run_job(job) is False
    m = scrape(sched)
    assert sample(m, "test_a_value") == 7          # last good snapshot still served
    assert sample(m, "hoofhearted_collector_success", collector="a") == 0
    assert sample(m, "hoofhearted_collector_last_success_timestamp_seconds", collector="a") == 1_700_000_000.0
    # stale after 3 intervals (5 s) plus the timeout: 17 s after the last success
    clock.t = 1000.0 + 17.0
    assert sample(scrape(sched), "test_a_value") == 7
    clock.t = 1000.0 + 17.1
    m = scrape(sched)
    assert sample(m, "test_a_value") is None
    assert sample(m, "hoofhearted_collector_success", collector="a") == 0
    # recovery brings the samples back
    a.fail = None
    sched.run_job(job)
    assert sample(scrape(sched), "test_a_value") == 7
    assert sample(scrape(sched), "hoofhearted_collector_success", collector="a") == 1


def test_collector_running_past_its_timeout_reports_failure():
    a = Fake("a")
    sched, clock, _ = make(a, refresh__timeout_seconds=2.0)
    job = sched.jobs[0]
    sched.run_job(job)
    job.running_since = clock.t        # a refresh starts and hangs
    clock.t += 1.9
    assert sample(scrape(sched), "hoofhearted_collector_success", collector="a") == 1
    clock.t += 0.2
    assert sample(scrape(sched), "hoofhearted_collector_success", collector="a") == 0


def test_escalation_moves_explaining_collectors_to_critical_interval():
    sensors = Fake("sensors", "important", escalates=True)
    procs = Fake("process", "important", escalates=True)
    disk = Fake("disk", "standard")
    sched, clock, _ = make(sensors, procs, disk)
    for job in sched.jobs:
        sched.run_job(job)
    intervals = {j.name: j.interval() for j in sched.jobs}
    assert intervals == {"sensors": 2.0, "process": 2.0, "disk": 5.0}
    sensors.hot_reasons = ("cpu_temperature",)
    sched.run_job(sched.jobs[0])
    assert sched.hot_reasons == {"cpu_temperature"}
    assert {j.name: j.interval() for j in sched.jobs} == {"sensors": 1.0, "process": 1.0, "disk": 5.0}
    m = scrape(sched)
    assert sample(m, "hoofhearted_escalation_active") == 1
    assert sample(m, "hoofhearted_collector_refresh_interval_seconds", collector="process", tier="important") == 1
    sensors.hot_reasons = ()
    sched.run_job(sched.jobs[0])
    assert {j.name: j.interval() for j in sched.jobs} == {"sensors": 2.0, "process": 2.0, "disk": 5.0}
    assert sample(scrape(sched), "hoofhearted_escalation_active") == 0


def test_escalation_logs_at_info_at_most_once_a_minute(caplog):
    sensors = Fake("sensors", "important", escalates=True)
    sched, clock, _ = make(sensors)
    caplog.set_level("DEBUG", logger="hoofhearted.scheduler")

    def flip(hot):
        sensors.hot_reasons = ("cpu_temperature",) if hot else ()
        sched.run_job(sched.jobs[0])

    flip(True)
    for i in range(10):                       # a reading hovering at its threshold
        clock.t += 2.0
        flip(i % 2 == 1)
    assert sched.hot_reasons == {"cpu_temperature"}
    lines = [(r.levelname, r.getMessage()) for r in caplog.records]
    assert lines == [("INFO", "escalating refresh to critical interval reasons=cpu_temperature")]
    clock.t += 60.0 - 20.0                    # a minute after the first line
    flip(False)
    lines = [(r.levelname, r.getMessage()) for r in caplog.records]
    assert lines[1:] == [("INFO", "cooled down, back to normal refresh intervals unlogged_changes=10")]
    clock.t += 1.0
    flip(True)                                # within the minute again: not logged
    assert len(caplog.records) == 2
    assert sched.jobs[0].interval() == 1.0    # escalation itself is never held back


def test_escalation_can_be_disabled():
    sensors = Fake("sensors", "important", escalates=True)
    sensors.hot_reasons = ("cpu_temperature",)
    sched, _, _ = make(sensors, escalation__enabled=False)
    sched.run_job(sched.jobs[0])
    assert sched.jobs[0].interval() == 2.0


def test_openmetrics_body_ends_once_with_eof():
    sched, _, _ = make(Fake("a"), Fake("b"))
    for job in sched.jobs:
        sched.run_job(job)
    body = sched.body(openmetrics=True).decode()
    assert body.count("# EOF") == 1 and body.endswith("# EOF\n")
    from prometheus_client.openmetrics.parser import text_string_to_metric_families
    names = {f.name for f in text_string_to_metric_families(body)}
    assert {"test_a_value", "hoofhearted_collector_success", "hoofhearted_build_info"} <= names


class Hang(Fake):
    def __init__(self, name):
        super().__init__(name, "critical")
        self.release = threading.Event()

    def update(self, now):
        if self.calls:
            self.calls.append(now)
            self.release.wait(30)
        return super().update(now)


def test_hanging_collector_does_not_delay_others_on_real_threads():
    hang, quick = Hang("hang"), Fake("quick", "critical")
    cfg = defaults()
    cfg["tiers"]["critical"] = 0.05
    cfg["refresh"]["timeout_seconds"] = 0.3
    sched = Scheduler([hang, quick], cfg)
    sched.start()
    try:
        # polled, not slept: on a loaded machine the threads may start late
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            m = scrape(sched)
            if len(quick.calls) >= 10 and sample(m, "hoofhearted_collector_success", collector="hang") == 0:
                break
            time.sleep(0.05)
        assert len(hang.calls) == 2                 # stuck in its second refresh
        assert len(quick.calls) >= 10               # the other job went on refreshing meanwhile
        assert sample(m, "hoofhearted_collector_success", collector="hang") == 0
        assert sample(m, "hoofhearted_collector_success", collector="quick") == 1
    finally:
        hang.release.set()
        sched.stop()


def test_a_follower_runs_right_after_its_leader_in_its_thread():
    """GPU processes follow processes: one refresh of the leader runs both, on one /proc pass."""
    lead, follower, other = Fake("lead", "important"), Fake("follow", "important"), Fake("late", "standard")
    follower.follows = "lead"
    other.follows = "lead"           # another tier: it keeps a thread of its own
    sched, clock, wall = make(lead, follower, other)
    jobs = {j.name: j for j in sched.jobs}
    assert jobs["follow"].leader is jobs["lead"] and jobs["lead"].followers == [jobs["follow"]]
    assert jobs["late"].leader is None
    sched.run_job(jobs["lead"])
    assert lead.calls == [1000.0] and follower.calls == [1000.0] and other.calls == []
    m = scrape(sched)
    assert sample(m, "test_follow_value") == 1.0
    assert sample(m, "hoofhearted_collector_success", collector="follow") == 1
    sched.start()
    try:
        names = {t.name for t in sched._threads}
        assert names == {"refresh-lead", "refresh-late"}
    finally:
        sched.stop()


def test_no_gpu_means_no_gpu_process_collector(tmp_path):
    from exporter.collectors.gpu import GPUProcessCollector
    cfg = defaults()
    cfg["paths"]["sysfs"] = str(tmp_path)          # no DRM cards
    cfg["gpu"]["nvml_module"] = "fakenvml.nodriver"
    assert GPUProcessCollector.create(cfg) is None
