"""One single-threaded runaway on this 2-core machine fires the process alert, named as the verdict names it.

The repository's prometheus.yml and rules in Debian's Prometheus (for: and windows shortened by
tests/alertstack.py), scraping the real exporter; the alert's rendered description is read back
from Prometheus' own /api/v1/alerts.
"""
import os
import socket
import pwd
import time

import pytest
import requests

from alertstack import free_port, query, rewrite_prometheus, start_prometheus
from conftest import need_tool
from workers import Workers, wait_for

pytestmark = pytest.mark.slow


def firing(prom, alertname, group):
    alerts = requests.get(prom.url + "/api/v1/alerts", timeout=5).json()["data"]["alerts"]
    return [a for a in alerts if a["labels"].get("alertname") == alertname and a["state"] == "firing"
            and a["labels"].get("group") == group]


def test_one_core_runaway_on_two_cores_fires_and_is_named(start_exporter, tmp_path):
    prometheus = need_tool("prometheus")
    workers = Workers()
    prom = None
    try:
        exporter = start_exporter()
        address = exporter.url.split("//", 1)[1]
        instance = socket.gethostname()          # the exporter's discovery names the host
        prom = start_prometheus(prometheus, str(tmp_path),
                                rewrite_prometheus(str(tmp_path), address, f"127.0.0.1:{free_port()}"))
        # one thread: at most one core of two; ahead of other work so that it gets that core
        runaway = workers.duty("hhrunaway", 1.0, nice=-10)[0]
        user = pwd.getpwuid(os.getuid()).pw_name
        found = wait_for(lambda: firing(prom, "ProcessHoggingCPU", "hhrunaway"), 120, interval=1.0)
        rate = query(prom, 'group:hoofhearted_process_group_cpu_seconds:rate5m{group="hhrunaway"}')
        assert found, (rate[0]["value"] if rate else "no rate", exporter.log[-1500:])
        (alert,) = found
        assert alert["labels"]["severity"] == "warning"
        assert alert["labels"]["instance"] == instance
        description = alert["annotations"]["description"]
        assert description.startswith(f"hhrunaway (pid {runaway.pid}, {user}) uses "), description
        assert " cores of 2" in description
        assert os.cpu_count() == 2 or " cores of " in description
    finally:
        workers.stop()
        if prom is not None:
            prom.stop()
