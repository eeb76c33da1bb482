"""The real exporter over HTTP, with a CPU-burning child process started here."""
import socket
import time

import pytest

from burner import Burner
from proctree import CLK_TCK
from conftest import parse_exposition


@pytest.fixture
def burners():
    made = []

    def make(**kw):
        b = Burner(**kw)
        made.append(b)
        return b

    yield make
    for b in made:
        b.close()


def process_series(parsed, pid, name="hoofhearted_process_cpu_usage_cores"):
    return {labels: v for (n, labels), v in parsed.items() if n == name and dict(labels).get("pid") == str(pid)}


def within_refreshes(exp, check, refreshes, what, since, timeout=60):
    """Scrape until ``check(parsed)`` is truthy, failing once the process collector has finished
    more than ``refreshes`` refreshes after wall time ``since``: a bound in the exporter's own
    refreshes holds on a loaded machine, one in seconds does not."""
    seen = set()
    parsed = None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        parsed = parse_exposition(exp.scrape())
        if check(parsed):
            return parsed
        done = parsed.get(("hoofhearted_collector_last_success_timestamp_seconds",
                           frozenset({("collector", "process")})))
        if done is not None and done > since:
            seen.add(done)
        assert len(seen) <= refreshes, f"{what} not within {refreshes} refreshes of the process collector"
        time.sleep(0.05)
    raise AssertionError(f"{what} not within {timeout} s")


def shown(pid):
    def check(parsed):
        return any(v > 0 for v in process_series(parsed, pid).values())
    return check


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat", "rb") as f:
        fields = f.read().rpartition(b")")[2].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def test_burner_in_top_n_then_gone_and_its_group_keeps_the_seconds(start_exporter, burners):
    exp = start_exporter()
    since = time.time()
    b = burners()
    started = time.monotonic()
    # one refresh may have begun before the burner, the next sees it, the one after has its rate
    parsed = within_refreshes(exp, shown(b.pid), 3, "burner in the top N", since)
    (labels, cores), = process_series(parsed, b.pid).items()
    labels = dict(labels)
    assert (labels["name"], labels["user"]) == (b.name, b.user)
    if b.owner is not None:
        assert labels["owner"] == b.owner
    assert "cmdline" not in labels
    assert process_series(parsed, b.pid, "hoofhearted_process_resident_memory_bytes")
    assert process_series(parsed, b.pid, "hoofhearted_process_threads")
    # what the burner really got, from its own stat: on a quiet machine one core
    truth = cpu_seconds(b.pid) / (time.monotonic() - started)
    if truth >= 0.9:
        assert 0.8 <= cores <= 1.1
    else:   # a busy shared machine: the reading must still match what the burner got
        assert abs(cores - truth) <= 0.25, (cores, truth)

    time.sleep(2.5)     # let the group collect a few seconds
    parsed = parse_exposition(exp.scrape())
    before = parsed[("hoofhearted_process_group_cpu_seconds_total", frozenset({("group", b.name)}))]
    final = cpu_seconds(b.pid)
    assert 0.2 <= before <= final + 0.02          # the burner's seconds, as of the last refresh
    since = time.time()
    b.stop()
    # gone with the first refresh that began after it ended (the one running may have begun before)
    parsed = within_refreshes(exp, lambda p: not process_series(p, b.pid)
                              and not process_series(p, b.pid, "hoofhearted_process_resident_memory_bytes"),
                              2, "burner series gone", since)
    after = parsed[("hoofhearted_process_group_cpu_seconds_total", frozenset({("group", b.name)}))]
    assert before <= after <= final + 0.05
    assert parsed[("hoofhearted_process_group_processes", frozenset({("group", b.name)}))] == 0
    assert parsed[("hoofhearted_processes_exited_total", frozenset())] >= 1
    assert parsed[("hoofhearted_processes_started_total", frozenset())] >= 1


@pytest.mark.parametrize("cmdline", [False, True])
def test_secrets_never_leave_the_exporter(start_exporter, burners, cmdline):
    env = {"HOOFHEARTED_PROCESS_CMDLINE": "true"} if cmdline else {}
    exp = start_exporter("--log.level=debug", env=env)
    since = time.time()
    b = burners()
    parsed = within_refreshes(exp, shown(b.pid), 3, "burner", since)
    (labels,) = process_series(parsed, b.pid)
    labels = dict(labels)
    if cmdline:
        # the label is there, redacted, and cut to 200 characters
        assert labels["cmdline"].startswith(b.argv[0])
        assert len(labels["cmdline"]) <= 200
        full = " ".join(b.argv)
        assert len(full) > 200 or "--password=***" in labels["cmdline"]
    else:
        assert "cmdline" not in labels
    time.sleep(0.5)
    text = exp.scrape() + exp.get("/metrics", headers={"Accept": "application/openmetrics-text"}).text
    for secret in b.secrets:
        assert secret not in text
        assert secret not in exp.log


def test_cmdline_label_shows_the_redacted_arguments(start_exporter, burners):
    exp = start_exporter(env={"HOOFHEARTED_PROCESS_CMDLINE": "true", "HOOFHEARTED_PROCESS_CMDLINE_MAX_LENGTH": "4000"})
    since = time.time()
    b = burners()
    parsed = within_refreshes(exp, shown(b.pid), 3, "burner", since)
    (labels,) = process_series(parsed, b.pid)
    line = dict(labels)["cmdline"]
    assert line.endswith("- --password=*** --token *** PGPASSWORD=*** https://***@example.com/feed")


def test_stratum_connection_of_a_busy_process_is_a_suspected_miner(start_exporter, burners):
    pool = socket.socket()
    pool.bind(("127.0.0.1", 0))
    pool.listen(4)
    port = pool.getsockname()[1]
    try:
        exp = start_exporter(env={"HOOFHEARTED_PROCESS_STRATUM_PORTS": str(port),
                                  "HOOFHEARTED_PROCESS_STRATUM_MIN_CPU_CORES": "0.05"})
        since = time.time()
        b = burners(connect_port=port)
        quiet = burners()       # burns too, but talks to no pool: not a suspect
        key = ("hoofhearted_process_suspected_miner",
               frozenset({("pid", str(b.pid)), ("name", b.name), ("user", b.user), ("reason", "stratum")}))
        parsed = within_refreshes(exp, lambda p: p.get(key) == 1, 3, "suspected miner", since)
        suspects = {dict(k)["pid"] for (n, k) in parsed if n == "hoofhearted_process_suspected_miner"}
        assert str(quiet.pid) not in suspects
    finally:
        pool.close()
