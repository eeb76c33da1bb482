"""End to end: a CPU burner reaches Slack and Discord by name, then resolves.

The real exporter, Debian's Prometheus and Alertmanager run on loopback with the repository's own
prometheus.yml, rules, alertmanager.yml and templates; only addresses, paths and durations are
rewritten (tests/alertstack.py: `for` and `keep_firing_for` 5 s, rule windows 30 s). Slack, Discord
and PagerDuty URLs come from secret files that point at a local HTTP receiver, which records what
Alertmanager really posts; the Grafana link comes from a site template file beside the secrets.
"""
import json
import os
import socket
import pwd
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import quote

import pytest

from alertstack import query, rewrite_alertmanager, rewrite_prometheus, start_alertmanager, start_prometheus

pytestmark = pytest.mark.slow

BURNER_NAME = "hh-burner"
# Sets its comm (what `ps` and /proc/PID/comm show) and keeps every CPU busy: hashlib releases the
# GIL on large buffers, so each thread burns one core. Four threads a CPU, so that on a machine
# shared with other work the scheduler still gives it well over the alert's 0.9 cores.
BURNER = r"""
import ctypes, hashlib, os, threading
ctypes.CDLL(None).prctl(15, %r, 0, 0, 0)  # PR_SET_NAME
def burn():
    block = b"x" * (1 << 20)
    while True:
        hashlib.sha256(block).digest()
for _ in range(4 * len(os.sched_getaffinity(0)) - 1):
    threading.Thread(target=burn, daemon=True).start()
burn()
""" % BURNER_NAME.encode()

# The alert about the process itself: CPUUsageHigh would name it too, but on a shared machine the
# whole CPU may stay busy after the burner stops.
CPU_ALERTS = ("ProcessHoggingCPU",)
GRAFANA = "http://grafana.test:3000"
SLACK_PATH = "/services/T000/B000/slack-secret"
DISCORD_PATH = "/api/webhooks/4242/discord-secret/slack"  # Discord's Slack-compatible endpoint
# Keys Alertmanager's Slack notifier may send (notify/slack/types.go).
SLACK_KEYS = {"channel", "ts", "username", "icon_emoji", "icon_url", "link_names", "text", "attachments"}
ATTACHMENT_KEYS = {"title", "title_link", "pretext", "text", "fallback", "callback_id", "fields", "actions",
                   "image_url", "thumb_url", "footer", "color", "mrkdwn_in"}
COLORS = {"CRITICAL": "#d63232", "WARNING": "#e8a317", "RESOLVED": "#2eb67d"}


class Receiver:
    """Records every POST as (time, path, content type, parsed JSON)."""

    def __init__(self):
        self.posts, self.lock = [], threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with outer.lock:
                    outer.posts.append((time.monotonic(), self.path, self.headers.get("Content-Type"),
                                        json.loads(body)))
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = "http://127.0.0.1:%d" % self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def messages(self, path, since=0.0):
        with self.lock:
            return [(ctype, body) for t, p, ctype, body in self.posts if p == path and t >= since]

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


def wait_for(what, check, timeout, logs=()):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.25)
    raise AssertionError(f"timed out waiting for {what}\n" + "\n".join(logs))


def slack_message(ctype, body):
    """The one attachment of a Slack webhook body, after checking the body's shape."""
    assert ctype == "application/json"
    assert set(body) <= SLACK_KEYS and body["username"] == "hoofhearted"
    (att,) = body["attachments"]
    assert set(att) <= ATTACHMENT_KEYS
    assert {"title", "title_link", "text", "fallback", "color"} <= set(att)
    assert att["fallback"] == att["title"]
    return att


def burner_alert(path, receiver, instance, pid, user, since=0.0):
    """(alertname, attachment) of a firing CPU alert that names the burner, or None."""
    for ctype, body in receiver.messages(path, since):
        att = slack_message(ctype, body)
        for level in ("CRITICAL", "WARNING"):
            for name in CPU_ALERTS:
                if att["title"].startswith(f"[{level}] {name} on {instance}") and \
                        f"{BURNER_NAME} (pid {pid}, {user}" in att["text"]:
                    return name, att
    return None


def resolved(path, receiver, alertname, instance, since):
    for ctype, body in receiver.messages(path, since):
        att = slack_message(ctype, body)
        if att["title"] == f"[RESOLVED] {alertname} on {instance}":
            return att
    return None


def test_cpu_burner_reaches_slack_and_discord_by_name(require_tool, start_exporter, tmp_path):
    prometheus_bin = require_tool("prometheus")
    alertmanager_bin = require_tool("prometheus-alertmanager")
    started = time.monotonic()
    tmp = str(tmp_path)
    receiver = Receiver()
    secrets = tmp_path / "secrets"
    secrets.mkdir(mode=0o700)
    (secrets / "slack_webhook_url").write_text(receiver.url + SLACK_PATH)
    (secrets / "discord_webhook_url").write_text(receiver.url + DISCORD_PATH)
    (secrets / "pagerduty_routing_key").write_text("0123456789abcdef0123456789abcdef")
    (secrets / "grafana.tmpl").write_text('{{ define "hoofhearted.grafana_url" }}%s{{ end }}' % GRAFANA)
    daemons, burner = [], None
    try:
        exporter = start_exporter()
        address = exporter.url.split("//", 1)[1]
        instance = socket.gethostname()          # the exporter's discovery names the host
        am = start_alertmanager(alertmanager_bin, tmp, rewrite_alertmanager(
            tmp, str(secrets), pagerduty_url=receiver.url + "/pagerduty"))
        daemons.append(am)
        prom = start_prometheus(prometheus_bin, tmp, rewrite_prometheus(tmp, address, am.address))
        daemons.append(prom)
        logs = lambda: (prom.log[-3000:], am.log[-3000:], exporter.log[-3000:])  # noqa: E731

        wait_for("Prometheus to scrape the exporter's processes", lambda: query(
            prom, f'group:hoofhearted_process_group_cpu_seconds:rate5m{{instance="{instance}"}}'), 30, logs())
        # Prefer a quiet start; on a busy machine a CPU alert may already fire about another
        # process, and its repeats (every 5 s here) then name the burner once it leads.
        quiet = time.monotonic() + 15
        while query(prom, 'ALERTS{alertname=~"%s"}' % "|".join(CPU_ALERTS)) and time.monotonic() < quiet:
            time.sleep(0.5)

        burner = subprocess.Popen([sys.executable, "-c", BURNER])
        user = pwd.getpwuid(os.getuid()).pw_name
        burning_since = time.monotonic()

        def named_on_both():
            slack = burner_alert(SLACK_PATH, receiver, instance, burner.pid, user, burning_since)
            discord = burner_alert(DISCORD_PATH, receiver, instance, burner.pid, user, burning_since)
            return (slack, discord) if slack and discord else None

        (alertname, slack), (_, discord) = wait_for(
            f"Slack and Discord messages naming {BURNER_NAME}", named_on_both, 150, logs())
        with open(f"/proc/{burner.pid}/comm") as f:
            assert f.read().strip() == BURNER_NAME
        level = "WARNING"
        for att in (slack, discord):
            assert att["title"] == f"[{level}] {alertname} on {instance}"
            assert att["color"] == COLORS[level]
            assert att["title_link"] == \
                f"{GRAFANA}/d/hoofhearted-home/hoofhearted?var-instance={quote(instance, safe='')}"
            assert "Runbook: " in att["text"]
            assert "error expanding" not in att["text"].lower()
        assert f"{BURNER_NAME} (pid {burner.pid}, {user})" in slack["text"]
        # Discord's copy has markdown characters escaped (hh-burner has none) and nothing else changed
        assert discord["text"].replace("\\`", "`") == slack["text"]

        burner.terminate()
        burner.wait(10)
        stopped = time.monotonic()
        ok = wait_for(
            f"resolved {alertname} on Slack and Discord",
            lambda: all(resolved(p, receiver, alertname, instance, stopped) for p in (SLACK_PATH, DISCORD_PATH)),
            45, logs())
        assert ok
        for path in (SLACK_PATH, DISCORD_PATH):
            att = resolved(path, receiver, alertname, instance, stopped)
            assert att["color"] == COLORS["RESOLVED"]
            assert att["text"].startswith("• resolved: ")
            assert "Runbook" not in att["text"]
        assert "Notify for alerts failed" not in am.log
        assert time.monotonic() - started < 240
    finally:
        if burner is not None and burner.poll() is None:
            burner.kill()
            burner.wait()
        for d in reversed(daemons):
            d.stop()
        receiver.stop()
