"""The fast OpenMetrics writer gives the same bytes as prometheus_client's own."""
import math

from prometheus_client import exposition
from prometheus_client.core import GaugeMetricFamily, InfoMetricFamily, Metric
from prometheus_client.samples import Exemplar

from exporter import render
from exporter.collectors.base import Collector, counter, gauge
from exporter.config import defaults
from exporter.scheduler import Scheduler


def families():
    temp = gauge("hoofhearted_temperature_celsius", 'Temperature with a "quote", a \\ and\na newline.',
                 ["sensor", "chip"])
    temp.add_metric(["Package id 0", "coretemp-isa-0000"], 61.5)
    temp.add_metric(['odd "label"\\value\nline', "z"], -0.0)
    read = counter("hoofhearted_disk_read_bytes", "Bytes read.", ["device"])
    read.add_metric(["sda"], 123456789012)
    read.add_metric(["nvme0n1"], 1e21)
    cores = gauge("hoofhearted_cpu_cores", "Logical CPUs.")
    cores.add_metric([], 2)
    odd = gauge("hoofhearted_odd_values", "Special floats.", ["kind"])
    for kind, v in (("inf", math.inf), ("-inf", -math.inf), ("nan", math.nan), ("tiny", 1.5e-9), ("int", 7)):
        odd.add_metric([kind], v)
    empty = gauge("hoofhearted_nothing", "No samples: not written.")
    info = InfoMetricFamily("hoofhearted_build", "Build.", value={"version": "1.2.3", "python_version": "3.11.7"})
    unit = GaugeMetricFamily("hoofhearted_fan_speed", "Fan speed.", labels=["fan"], unit="rpm")
    unit.add_metric(["1"], 1200)
    return [temp, read, cores, odd, empty, info, unit]


class Registry:
    def __init__(self, fams):
        self.fams = [f for f in fams if f.samples]

    def collect(self):
        return iter(self.fams)


def merge(family_lists):
    """Families of the same name from several lists as one family each, in first-seen order."""
    merged = {}
    for fams in family_lists:
        for f in fams:
            if f.samples:
                m = merged.setdefault(f.name, Metric(f.name, f.documentation, f.type, f.unit))
                m.samples.extend(f.samples)
    return list(merged.values())


def test_openmetrics_parts_match_prometheus_client_bytes():
    fams = families()
    assert render.join_parts([render.openmetrics_parts(fams)]) == render.openmetrics(fams)


def test_families_from_two_collectors_are_merged_under_one_header():
    a, b = gauge("hoofhearted_gpu_up", "GPU answers.", ["gpu"]), gauge("hoofhearted_gpu_up", "GPU answers.", ["gpu"])
    a.add_metric(["0"], 1)
    b.add_metric(["1"], 0)
    other = gauge("hoofhearted_cpu_cores", "Logical CPUs.")
    other.add_metric([], 4)
    joined = render.join_parts([render.openmetrics_parts([a, other]), render.openmetrics_parts([b])])
    assert joined == render.openmetrics(merge([[a, other], [b]]))
    assert joined.count(b"# TYPE hoofhearted_gpu_up gauge") == 1
    assert b'hoofhearted_gpu_up{gpu="0"} 1.0\nhoofhearted_gpu_up{gpu="1"} 0.0\n' in joined


def test_text_parts_carry_the_same_samples_as_prometheus_client():
    fams = families()
    from prometheus_client.parser import text_string_to_metric_families as parse

    def samples(text):
        return {(s.name, frozenset(s.labels.items())): s.value for f in parse(text) for s in f.samples
                if s.value == s.value}      # NaN != NaN
    ours = render.text(fams).decode()
    theirs = exposition.generate_latest(Registry(fams)).decode()
    assert samples(ours) == samples(theirs)
    assert ours.count("# HELP") == theirs.count("# HELP")


def test_exemplars_go_through_prometheus_client():
    c = counter("hoofhearted_things", "Things.", ["kind"])
    c.add_metric(["a"], 3, exemplar=Exemplar({"trace_id": "abc"}, 1.0, 1700000000.5))
    c.add_metric(["b"], 4, timestamp=1700000000)
    g = gauge("hoofhearted_plain", "Plain.")
    g.add_metric([], 1)
    fams = [c, g]
    assert render.join_parts([render.openmetrics_parts(fams)]) == render.openmetrics(fams)
    assert b'# {trace_id="abc"} 1.0 1700000000.5' in render.join_parts([render.openmetrics_parts(fams)])


class Counting(Collector):
    name, tier = "counting", "critical"

    def update(self, now):
        c = counter("hoofhearted_test_ticks", "Refreshes so far.", ["kind"])
        c.add_metric(["a \"b\""], now)
        return [c]


def test_scheduler_renders_the_formats_scrapes_ask_for_in_the_refresh():
    clock = [100.0]
    sched = Scheduler([Counting()], defaults(), clock=lambda: clock[0], wall=lambda: 1.7e9 + clock[0])
    job = sched.jobs[0]
    sched.run_job(job)
    assert set(job._rendered) == {"text"}       # nothing asked yet
    first = sched.body(openmetrics=True)
    assert set(job._rendered) == {"text", "openmetrics"}
    meta = sched.meta_families(clock[0])
    assert first == render.openmetrics(merge([job.families, meta])) + b"# EOF\n"
    assert b'hoofhearted_test_ticks_total{kind="a \\"b\\""} 100.0\n' in first

    clock[0] = 101.0
    sched.run_job(job)                     # the refresh renders OpenMetrics itself now, and only that
    assert job._rendered["openmetrics"][0] is job.families
    assert job._rendered["text"][0] is not job.families
    second = sched.body(openmetrics=True)
    assert b'hoofhearted_test_ticks_total{kind="a \\"b\\""} 101.0\n' in second
    meta = sched.meta_families(clock[0])
    assert second == render.openmetrics(merge([job.families, meta])) + b"# EOF\n"
    text = sched.body()                    # text on demand, then by the refreshes too
    assert b'hoofhearted_test_ticks_total{kind="a \\"b\\""} 101.0\n' in text
    assert job._rendered["text"][0] is job.families

    clock[0] = 102.0
    sched.run_job(job)
    assert job._rendered["text"][0] is job.families and job._rendered["openmetrics"][0] is job.families
    sched.body(openmetrics=True)
    clock[0] = 101.0 + 300.5               # text last asked for 300.5 s ago
    sched.run_job(job)
    assert job._rendered["openmetrics"][0] is job.families
    assert job._rendered["text"][0] is not job.families
