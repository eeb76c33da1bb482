"""Correctness reference: Debian's prometheus-process-exporter beside hoofhearted, one burner, same window."""
import os
import signal
import socket
import subprocess
import time

import pytest
import requests

from burner import Burner
from conftest import parse_exposition

PE_CONFIG = """process_names:
  - name: "{{.Comm}}"
    cmdline:
      - '.*'
"""


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def process_exporter(require_tool, tmp_path):
    exe = require_tool("prometheus-process-exporter")
    cfg = tmp_path / "pe.yml"
    cfg.write_text(PE_CONFIG)
    port = free_port()
    proc = subprocess.Popen([exe, f"-web.listen-address=127.0.0.1:{port}", f"-config.path={cfg}",
                             "-threads=false", "-gather-smaps=false"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}/metrics"
    deadline = time.monotonic() + 60        # its first scrape reads every process: slow on a loaded machine
    while time.monotonic() < deadline:
        try:
            if requests.get(url, timeout=30).status_code == 200:
                break
        except requests.RequestException:
            time.sleep(0.1)
    else:
        proc.kill()
        pytest.fail("process-exporter did not answer")
    yield url
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(5)


def pe_seconds(url, group):
    parsed = parse_exposition(requests.get(url, timeout=10).text)
    values = [v for (n, labels), v in parsed.items()
              if n == "namedprocess_namegroup_cpu_seconds_total" and dict(labels)["groupname"] == group]
    return sum(values) if values else None


def hh_reading(exp, group):
    """(refresh timestamp, group CPU seconds) from hoofhearted's last refresh of the process collector."""
    parsed = parse_exposition(exp.scrape())
    stamp = parsed.get(("hoofhearted_collector_last_success_timestamp_seconds",
                        frozenset({("collector", "process")})))
    return stamp, parsed.get(("hoofhearted_process_group_cpu_seconds_total", frozenset({("group", group)})))


def frozen_readings(exp, pe_url, burner, timeout=60.0):
    """Both exporters' readings of the burner's group while the burner is stopped.

    Stopped, its CPU counters stand still, so both read the same ticks whenever they look: the
    window is the same for both by construction, not by racing two scrapes."""
    os.kill(burner.pid, signal.SIGSTOP)
    try:
        # the second refresh that ends after the stop began after it: its pass saw the frozen counters
        stamp, _ = hh_reading(exp, burner.name)
        seen, deadline = 0, time.monotonic() + timeout
        while seen < 2:
            assert time.monotonic() < deadline, "hoofhearted did not refresh"
            time.sleep(0.02)
            new, value = hh_reading(exp, burner.name)
            if new != stamp:
                seen, stamp = seen + 1, new
        return value, pe_seconds(pe_url, burner.name)
    finally:
        os.kill(burner.pid, signal.SIGCONT)


def burner_seconds(pid):
    with open(f"/proc/{pid}/stat", "rb") as f:
        fields = f.read().rpartition(b")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_group_cpu_seconds_agree_with_process_exporter(start_exporter, process_exporter):
    exp = start_exporter()
    b = Burner()
    try:
        time.sleep(1.0)
        h0, p0 = frozen_readings(exp, process_exporter, b)
        assert h0 is not None and p0 is not None, "an exporter does not see the burner's group"
        # until the burner has burnt a second more, however long a loaded machine takes
        start, deadline = burner_seconds(b.pid), time.monotonic() + 120
        while burner_seconds(b.pid) - start < 1.0 and time.monotonic() < deadline:
            time.sleep(0.2)
        h1, p1 = frozen_readings(exp, process_exporter, b)
    finally:
        b.close()
    dh, dp = h1 - h0, p1 - p0
    assert dp > 0.5, f"the burner got too little CPU to compare ({dp:.2f} s)"
    assert abs(dh - dp) <= 0.05 * dp, f"hoofhearted {dh:.3f} s vs process-exporter {dp:.3f} s"
