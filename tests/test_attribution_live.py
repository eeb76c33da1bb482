"""Watts per process with a real exporter, a real burner and a sysfs tree whose package counter
advances at exactly 40 W (this machine has no readable RAPL).

The method predicts a process's package watts as measured × its cores / logical CPUs; the burner's
cores are measured here, independently, from /proc/PID/stat around each scrape.
"""
import os
import re

import pytest

from conftest import SYSFS, parse_exposition, sample
from raplsim import RaplTree
from test_verdict_live import LEAD, run_why, verdict_where
from workers import Workers, cpu_seconds, wait_for

import time


@pytest.fixture
def workers():
    w = Workers()
    yield w
    w.stop()


def series(m, name, **labels):
    """[(labels, value)] of a family whose labels include the given ones."""
    return [(dict(k), v) for (n, k), v in m.items() if n == name and labels.items() <= dict(k).items()]


def adds_up(m, domain):
    measured = sample(m, "hoofhearted_cpu_power_watts", domain=domain)
    groups = sum(v for _, v in series(m, "hoofhearted_process_group_power_watts", domain=domain))
    idle = sample(m, "hoofhearted_power_unattributed_watts", domain=domain, part="idle")
    other = sample(m, "hoofhearted_power_unattributed_watts", domain=domain, part="other")
    return measured, groups, idle, other


def test_a_burner_gets_its_share_of_40_watts(start_exporter, workers, tmp_path):
    tree = RaplTree(tmp_path / "sys", watts=40.0, core_watts=25.0)
    cfg = tmp_path / "config.yml"
    cfg.write_text("collectors:\n  rapl: {tier: important}\n")
    try:
        exp = start_exporter(f"--config.file={cfg}", f"--path.sysfs={tree.root}")
        burner = workers.duty("hhburn", 1.0)[0]
        ncores = os.cpu_count()
        last = {"t": time.monotonic(), "cpu": cpu_seconds(burner.pid)}
        seen = {}

        def close_to_method():
            m = parse_exposition(exp.scrape())
            now, cpu = time.monotonic(), cpu_seconds(burner.pid)
            rate = (cpu - last["cpu"]) / (now - last["t"])
            last.update(t=now, cpu=cpu)
            got = series(m, "hoofhearted_process_power_watts", pid=str(burner.pid), domain="package-0")
            cores = series(m, "hoofhearted_process_cpu_usage_cores", pid=str(burner.pid))
            if not got or not cores or rate < 0.05:
                return None
            # the method on the exporter's own reading of the burner, and on ours
            method = 40.0 * cores[0][1] / ncores
            predicted = 40.0 * rate / ncores
            seen.update(watts=got[0][1], method=method, predicted=predicted, labels=got[0][0], m=m)
            return abs(got[0][1] - method) <= 0.02 * method and abs(got[0][1] - predicted) <= 0.10 * predicted

        assert wait_for(close_to_method, 60, interval=2.0), seen
        m = seen["m"]
        assert seen["labels"]["name"] == "hhburn"
        assert sample(m, "hoofhearted_rapl_readable") == 1
        for domain, watts in (("package-0", 40.0), ("package-0/core", 25.0)):
            measured, groups, idle, other = adds_up(m, domain)
            # the collector times its reads by the scheduler's clock: a loaded machine adds jitter
            assert measured == pytest.approx(watts, rel=0.05)
            assert groups + idle + other == pytest.approx(measured, rel=0.02), (domain, groups, idle, other)
        # the burner's group and its energy counter grow
        group = series(m, "hoofhearted_process_group_power_watts", group="hhburn", domain="package-0")
        assert group and group[0][1] >= seen["watts"] * 0.99

        def burner_draws_most(v):
            if not v["power"] or not v["culprits"]:
                return False
            best = max(v["culprits"], key=lambda c: (c.get("watts_by_domain") or {}).get("package-0", 0))
            return best["pid"] == burner.pid and best["watts"]

        v = verdict_where(exp, burner_draws_most, timeout=60)
        top = next(c for c in v["culprits"] if c["pid"] == burner.pid)
        measured = next(d["measured_watts"] for d in v["power"]["domains"] if d["domain"] == "package-0")
        for d in v["power"]["domains"]:
            assert d["attributed_watts"] + d["idle_watts"] + d["other_watts"] == pytest.approx(d["measured_watts"])
        pkg = top["watts_by_domain"]["package-0"]
        hottest = v["temperatures"][0]
        # the fixture's hottest sensor is the coretemp package: the chain runs through it
        assert (hottest["chip"], hottest["label"]) == ("platform_coretemp_0", "Physical id 0")
        assert v["sentence"] == (f"{LEAD} because the CPU package is at {hottest['celsius']:.0f} °C drawing "
                                 f"{measured:.0f} W; "
                                 f"{pkg:.0f} W of it is hhburn (pid {burner.pid}, {top['user']}).")
        assert sample(parse_exposition(exp.scrape()), "hoofhearted_culprit_power_watts", rank=str(top["rank"])) > 0
        out = run_why("--url", exp.url)
        assert out.returncode == 0, out.stderr
        said = re.escape(f"{LEAD} because the CPU package is at {hottest['celsius']:.0f} °C drawing ") + \
            r"\d+ W; \d+ W of it is " + re.escape(f"hhburn (pid {burner.pid}, {top['user']}).")
        assert re.search("^" + said + "$", out.stdout, re.M), out.stdout

        def joules():
            m = parse_exposition(exp.scrape())
            got = series(m, "hoofhearted_process_group_energy_joules_total", group="hhburn", domain="package-0")
            return got[0][1] if got and got[0][1] > 0 else None
        first = wait_for(joules, 10)
        assert first and wait_for(lambda: (joules() or 0) > first, 10)
    finally:
        tree.stop()


def test_without_readable_rapl_the_culprit_is_named_by_cpu_share(start_exporter, workers, tmp_path):
    root = tmp_path / "sys"
    (root / "class").mkdir(parents=True)
    for sub in ("class/hwmon", "class/thermal", "devices"):
        os.symlink(os.path.join(SYSFS, sub), root / sub)
    exp = start_exporter(f"--path.sysfs={root}", "--collector.rapl")
    big = workers.duty("hhbig", 0.9)[0]
    v = verdict_where(exp, lambda v: bool(v["culprits"]) and v["culprits"][0]["pid"] == big.pid
                      and v["culprits"][0]["cores"] >= 0.5)
    top = v["culprits"][0]
    assert v["power"] is None and top["watts"] is None
    assert v["sentence"] == f"{LEAD} because hhbig (pid {big.pid}, {top['user']}) uses {top['cores']:.2f} cores."
    m = wait_for(lambda: (lambda m: m if sample(m, "hoofhearted_rapl_readable") is not None else None)(
        parse_exposition(exp.scrape())), 15)
    assert sample(m, "hoofhearted_rapl_readable") == 0
    assert not series(m, "hoofhearted_process_power_watts")
    said = [line for line in exp.lines if "no CPU power readings" in line]
    assert len(said) == 1 and "no RAPL powercap zones" in said[0], exp.lines
