"""Prometheus config, recording and alert rules, their unit tests, and the Alertmanager config.

Runs promtool and amtool from Debian. The mutation tests prove that every alert's unit test fails
when the alert's threshold or `for:` is changed, so the promtool tests cannot pass by accident.
"""
import concurrent.futures
import json
import os
import re
import shutil
import subprocess
import time

import pytest
import requests
import yaml

from alertstack import ALERT_RULES, ALERTMANAGER_YML, PROMETHEUS_YML, ROOT, SECRETS_DIR, load, rewrite_alertmanager, \
    rewrite_prometheus, start_alertmanager

RULES_DIR = os.path.join(ROOT, "alerting", "rules")
TESTS_DIR = os.path.join(ROOT, "alerting", "tests")
README = os.path.join(ROOT, "alerting", "README.md")
TEMPLATE_GLOB = os.path.join(ROOT, "alerting", "templates", "*.tmpl")

# The alerts the product promises, by exact name.
ALERTS = {
    "GPUTemperatureHigh", "GPUTemperatureCritical", "GPUThermalThrottling", "GPULost", "CPUTemperatureHigh",
    "CPUTemperatureCritical", "FanSpeedHigh", "FanStalledWhileHot", "FanLoudWhileCool", "CPUUsageHigh",
    "CPUUsageCritical", "MemoryUsageHigh", "LoadAverageHigh", "ProcessHoggingCPU", "GPUBusyUnknownProcess",
    "SuspectedCryptominer", "ExporterCollectorFailing", "ExporterDown", "ExporterStale", "BMCDown",
}


def run(*cmd, timeout=60):
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def alert_rules():
    """{alert name: (rule file path, rule dict)}."""
    out = {}
    for path in ALERT_RULES:
        for group in load(path)["groups"]:
            for rule in group["rules"]:
                if "alert" in rule:
                    assert rule["alert"] not in out, f"{rule['alert']} defined twice"
                    out[rule["alert"]] = (path, rule)
    return out


def unit_test_file(rule_path):
    return os.path.join(TESTS_DIR, os.path.basename(rule_path).replace(".yml", "_test.yml"))


def seconds(duration):
    total = 0
    for num, unit in re.findall(r"(\d+)(ms|s|m|h|d)", duration):
        total += int(num) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}[unit]
    return total


_NUMBER = re.compile(r"(?<![\w.\[])\d+(?:\.\d+)?(?![\w.])")


def literals(expr):
    """[(start, end, value)] of the numbers in a PromQL expression, outside strings and ranges."""
    masked = re.sub(r'"(?:[^"\\]|\\.)*"', lambda m: "_" * len(m.group()), expr)
    masked = re.sub(r"\[[^\]]*\]", lambda m: "_" * len(m.group()), masked)
    return [(m.start(), m.end(), float(m.group())) for m in _NUMBER.finditer(masked)]


def readme_table():
    """{alert: {"severity", "threshold": [numbers], "for"}} from alerting/README.md's table."""
    rows = {}
    with open(README, encoding="utf-8") as f:
        section = f.read().split("## Thresholds", 1)[1].split("\n## ", 1)[0]
        for line in section.splitlines():
            m = re.match(r"\|\s*`(\w+)`\s*\|", line)
            if not m:
                continue
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            _, severity, _, threshold, for_, _ = cells
            rows[m.group(1)] = {
                "severity": severity,
                "threshold": sorted({float(x) for x in re.findall(r"\d+(?:\.\d+)?", threshold)}),
                "for": for_.strip("`"),
            }
    return rows


# --- static checks ---------------------------------------------------------------------------------

def test_prometheus_config_is_valid(require_tool):
    promtool = require_tool("promtool")
    r = run(promtool, "check", "config", PROMETHEUS_YML)
    assert r.returncode == 0, r.stdout + r.stderr
    out = r.stdout + r.stderr
    assert f"SUCCESS: {len(ALERT_RULES) + 1} rule files found" in out
    for path in ALERT_RULES:
        assert f"alerting/rules/{os.path.basename(path)}" in out


def test_prometheus_config_scrapes_hoofhearted_every_2s():
    cfg = load(PROMETHEUS_YML)
    (job,) = [j for j in cfg["scrape_configs"] if j["job_name"] == "hoofhearted"]
    assert job["scrape_interval"] == "2s"
    assert job["file_sd_configs"][0]["files"] == ["targets/*.yml"]
    assert cfg["rule_files"] == ["rules/*.yml", "../alerting/rules/*.yml"]
    assert cfg["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"]


def test_rules_are_valid(require_tool):
    promtool = require_tool("promtool")
    recording = os.path.join(ROOT, "prometheus", "rules", "recording.yml")
    r = run(promtool, "check", "rules", recording, *ALERT_RULES)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.count("SUCCESS") == len(ALERT_RULES) + 1


def test_recording_rules_follow_naming_and_are_listed_in_the_header():
    path = os.path.join(ROOT, "prometheus", "rules", "recording.yml")
    with open(path, encoding="utf-8") as f:
        header = "".join(line for line in f if line.startswith("#"))
    names = [r["record"] for g in load(path)["groups"] for r in g["rules"]]
    assert len(names) == len(set(names))
    for name in names:
        assert re.fullmatch(r"[a-z_]+:hoofhearted_[a-z0-9_]+:[a-z0-9_]+", name), name
        assert name in header, f"{name} missing from the header list"


def test_every_alert_exists_with_severity_and_annotations():
    rules = alert_rules()
    assert ALERTS <= set(rules), f"missing: {sorted(ALERTS - set(rules))}"
    for name, (_, rule) in rules.items():
        assert rule["labels"]["severity"] in ("warning", "critical"), name
        assert seconds(rule["for"]) > 0, name
        for key in ("summary", "description", "runbook"):
            assert rule["annotations"].get(key, "").strip(), f"{name}: no {key}"


@pytest.mark.parametrize("name", sorted(ALERTS))
def test_every_alert_has_unit_tests_below_and_above(name):
    path, rule = alert_rules()[name]
    cases = [case for test in load(unit_test_file(path))["tests"] for case in test.get("alert_rule_test", [])
             if case["alertname"] == name]
    quiet = [c for c in cases if not c.get("exp_alerts")]
    firing = [c for c in cases if c.get("exp_alerts")]
    assert quiet and firing, f"{name}: needs a not-firing and a firing case"
    # one evaluation before the `for` boundary and at it
    assert {seconds(c["eval_time"]) for c in quiet} & {seconds(rule["for"]) - 10, seconds(rule["for"]) + 0}
    for case in firing:
        for alert in case["exp_alerts"]:
            assert alert["exp_labels"]["severity"] == rule["labels"]["severity"]
            assert set(alert["exp_annotations"]) == {"summary", "description", "runbook"}


def test_readme_thresholds_match_the_rules():
    table, rules = readme_table(), alert_rules()
    assert set(table) == set(rules), "alerting/README.md's table and the rules list different alerts"
    for name, (_, rule) in rules.items():
        row = table[name]
        assert row["severity"] == rule["labels"]["severity"], name
        assert seconds(row["for"]) == seconds(rule["for"]), name
        in_expr = sorted({v for _, _, v in literals(rule["expr"])})
        assert row["threshold"] == in_expr, f"{name}: README says {row['threshold']}, rule has {in_expr}"


def test_rule_unit_tests_pass(require_tool):
    promtool = require_tool("promtool")
    files = sorted(os.listdir(TESTS_DIR))
    assert files == sorted(os.path.basename(unit_test_file(p)) for p in ALERT_RULES)
    r = run(promtool, "test", "rules", *[os.path.join(TESTS_DIR, f) for f in files])
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.count("SUCCESS") == len(files)


# --- mutation: a changed threshold or `for` must fail the unit tests -----------------------------------

def mutations():
    """(alert, what, rule file, new expr, new for) for every threshold literal and every `for`."""
    out = []
    for name, (path, rule) in sorted(alert_rules().items()):
        expr, for_ = rule["expr"], rule["for"]
        step = 10  # the unit tests' evaluation_interval
        for delta in (step, -step):
            out.append((name, f"for {for_}{delta:+d}s", path, expr, f"{int(seconds(for_) + delta)}s"))
        for start, end, value in literals(expr):
            change = 0.5 if value == 0 else abs(value) * 0.02
            for sign in (1, -1):
                new = f"{value + sign * change:g}"
                out.append((name, f"{expr[start:end]} -> {new} at {start}", path,
                            expr[:start] + new + expr[end:], for_))
    return out


def mutated_tree(tmp, path, alert, expr, for_):
    """A copy of the rules and their tests with one alert changed."""
    for sub in ("alerting/rules", "alerting/tests", "prometheus/rules"):
        shutil.copytree(os.path.join(ROOT, sub), os.path.join(tmp, sub))
    data = load(path)
    for group in data["groups"]:
        for rule in group["rules"]:
            if rule.get("alert") == alert:
                rule["expr"], rule["for"] = expr, for_
    target = os.path.join(tmp, "alerting", "rules", os.path.basename(path))
    with open(target, "w", encoding="utf-8") as f:
        yaml.safe_dump(data, f, allow_unicode=True, sort_keys=False, width=10_000)
    return os.path.join(tmp, "alerting", "tests", os.path.basename(unit_test_file(path)))


def test_changing_any_threshold_or_for_fails_the_unit_tests(require_tool, tmp_path):
    promtool = require_tool("promtool")
    cases = mutations()
    names = {c[0] for c in cases}
    assert names == set(alert_rules())

    def check(i):
        name, what, path, expr, for_ = cases[i]
        test_file = mutated_tree(str(tmp_path / str(i)), path, name, expr, for_)
        r = subprocess.run([promtool, "test", "rules", test_file], capture_output=True, text=True, timeout=60)
        return name, what, r.returncode, r.stdout + r.stderr

    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(check, range(len(cases))))
    survived = [f"{name}: {what}" for name, what, rc, _ in results if rc == 0]
    assert not survived, "unit tests still pass after:\n" + "\n".join(survived)
    # every failure is an alert mismatch, not a broken rule file
    broken = [f"{name}: {what}: {out[:300]}" for name, what, rc, out in results
              if "alertname:" not in out]
    assert not broken, "\n".join(broken)


def test_the_unmutated_copy_passes(require_tool, tmp_path):
    """The mutation harness itself: an unchanged copy must pass, or every mutant 'fails' for free."""
    promtool = require_tool("promtool")
    name, (path, rule) = sorted(alert_rules().items())[0]
    test_file = mutated_tree(str(tmp_path), path, name, rule["expr"], rule["for"])
    r = run(promtool, "test", "rules", test_file)
    assert r.returncode == 0, r.stdout + r.stderr


# --- Alertmanager -----------------------------------------------------------------------------------

def test_alertmanager_config_is_valid(require_tool):
    amtool = require_tool("amtool")
    r = run(amtool, "check-config", ALERTMANAGER_YML)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SUCCESS" in r.stdout
    assert "5 inhibit rules" in r.stdout and "4 receivers" in r.stdout and "1 templates" in r.stdout


def test_alertmanager_reads_chat_secrets_from_files():
    text = open(ALERTMANAGER_YML, encoding="utf-8").read()
    cfg = load(ALERTMANAGER_YML)
    chat = {r["name"]: r for r in cfg["receivers"]}
    for name in ("critical", "warning"):
        files = [c["api_url_file"] for c in chat[name]["slack_configs"]]
        assert files == ["/etc/alertmanager/secrets/slack_webhook_url",
                         "/etc/alertmanager/secrets/discord_webhook_url"]
        assert all("api_url" not in c for c in chat[name]["slack_configs"])
    assert "hooks.slack.com" not in text and "discord.com/api/webhooks" not in text
    assert cfg["route"]["group_by"] == ["alertname", "instance"]


@pytest.mark.parametrize("labels,receiver", [
    (["severity=critical", "alertname=GPUTemperatureCritical", "instance=gpu-box:10101"], "critical"),
    (["severity=critical", "alertname=ExporterDown"], "critical"),
    (["severity=warning", "alertname=GPUTemperatureHigh", "instance=gpu-box:10101"], "warning"),
    (["severity=warning", "alertname=CPUUsageHigh"], "warning"),
    (["alertname=SomethingElse"], "warning"),
])
def test_routes_by_severity(require_tool, labels, receiver):
    amtool = require_tool("amtool")
    r = run(amtool, "config", "routes", "test", f"--config.file={ALERTMANAGER_YML}",
            f"--verify.receivers={receiver}", *labels)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.strip() == receiver


def test_routes_test_fails_on_the_wrong_receiver(require_tool):
    amtool = require_tool("amtool")
    r = run(amtool, "config", "routes", "test", f"--config.file={ALERTMANAGER_YML}",
            "--verify.receivers=warning", "severity=critical", "alertname=GPULost")
    assert r.returncode != 0


def render(amtool, tmp_path, data, name):
    path = tmp_path / "data.json"
    path.write_text(json.dumps(data))
    r = run(amtool, "template", "render", f"--template.glob={TEMPLATE_GLOB}", f"--template.data={path}",
            f'--template.text={{{{ template "{name}" . }}}}')
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout


def notification(status, severity="critical", resolved=False):
    labels = {"alertname": "GPUTemperatureCritical", "instance": "gpu-box:10101", "gpu": "0", "severity": severity}
    annotations = {"summary": "GPU0 critical 86 C on gpu-box:10101",
                   "description": "GPU0 86 C, fan 92% — python3 (pid 4242, alice) 97% of GPU0",
                   "runbook": "Pause or stop the named process now."}
    alert = {"status": status, "labels": labels, "annotations": annotations, "startsAt": "2024-05-01T10:00:00Z",
             "endsAt": "2024-05-01T10:05:00Z" if status == "resolved" else "0001-01-01T00:00:00Z",
             "generatorURL": "http://prometheus:9090/graph", "fingerprint": "c0ffee"}
    return {"receiver": severity, "status": status, "alerts": [alert],
            "groupLabels": {"alertname": labels["alertname"], "instance": labels["instance"]},
            "commonLabels": labels, "commonAnnotations": annotations, "externalURL": "http://alertmanager:9093"}


def test_templates_render_value_host_culprit_and_link(require_tool, tmp_path):
    amtool = require_tool("amtool")
    firing, resolved = notification("firing"), notification("resolved")
    assert render(amtool, tmp_path, firing, "hoofhearted.title") == \
        "[CRITICAL] GPUTemperatureCritical on gpu-box:10101"
    assert render(amtool, tmp_path, notification("firing", "warning"), "hoofhearted.title") == \
        "[WARNING] GPUTemperatureCritical on gpu-box:10101"
    assert render(amtool, tmp_path, resolved, "hoofhearted.title") == \
        "[RESOLVED] GPUTemperatureCritical on gpu-box:10101"
    assert render(amtool, tmp_path, firing, "hoofhearted.dashboard_url") == \
        "http://127.0.0.1:3000/d/hoofhearted-home/hoofhearted?var-instance=gpu-box%3A10101"
    assert render(amtool, tmp_path, firing, "hoofhearted.slack.text") == (
        "• GPU0 86 C, fan 92% — python3 (pid 4242, alice) 97% of GPU0\n"
        "Runbook: Pause or stop the named process now.")
    assert render(amtool, tmp_path, resolved, "hoofhearted.slack.text") == \
        "• resolved: GPU0 critical 86 C on gpu-box:10101\n"
    assert render(amtool, tmp_path, firing, "hoofhearted.slack.color") == "#d63232"
    assert render(amtool, tmp_path, resolved, "hoofhearted.slack.color") == "#2eb67d"
    assert render(amtool, tmp_path, firing, "hoofhearted.telegram.message") == (
        "<b>[CRITICAL] GPUTemperatureCritical on gpu-box:10101</b>\n"
        "• GPU0 86 C, fan 92% — python3 (pid 4242, alice) 97% of GPU0\n"
        '<a href="http://127.0.0.1:3000/d/hoofhearted-home/hoofhearted?var-instance=gpu-box%3A10101">'
        "Dashboard</a>")


def test_telegram_message_escapes_html(require_tool, tmp_path):
    amtool = require_tool("amtool")
    data = notification("firing")
    data["alerts"][0]["annotations"]["description"] = "a<b> & c"
    assert "• a&lt;b&gt; &amp; c\n" in render(amtool, tmp_path, data, "hoofhearted.telegram.message")


def post_alerts(am, alerts):
    body = [{"labels": labels, "annotations": {"summary": labels["alertname"]}} for labels in alerts]
    requests.post(am.url + "/api/v2/alerts", json=body, timeout=5).raise_for_status()


def inhibited(am):
    """{(alertname, instance, extra label values): inhibited?} from the running Alertmanager."""
    out = {}
    for a in requests.get(am.url + "/api/v2/alerts", timeout=5).json():
        lab = a["labels"]
        key = (lab["alertname"], lab.get("instance"), lab.get("gpu") or lab.get("pid"))
        out[key] = bool(a["status"]["inhibitedBy"])
    return out


def test_critical_mutes_its_warning_in_a_real_alertmanager(require_tool, tmp_path):
    binary = require_tool("prometheus-alertmanager")
    config = rewrite_alertmanager(str(tmp_path), str(tmp_path / "secrets"))
    am = start_alertmanager(binary, str(tmp_path), config)
    try:
        h = {"instance": "h1:10101", "job": "hoofhearted"}
        post_alerts(am, [
            {"alertname": "CPUUsageCritical", "severity": "critical", **h},
            {"alertname": "CPUUsageHigh", "severity": "warning", **h},
            {"alertname": "CPUUsageHigh", "severity": "warning", "instance": "h2:10101", "job": "hoofhearted"},
            {"alertname": "GPUTemperatureCritical", "severity": "critical", "gpu": "0", **h},
            {"alertname": "GPUTemperatureHigh", "severity": "warning", "gpu": "0", **h},
            {"alertname": "GPUTemperatureHigh", "severity": "warning", "gpu": "1", **h},
            {"alertname": "SuspectedCryptominer", "severity": "critical", "pid": "31337", **h},
            {"alertname": "ProcessHoggingCPU", "severity": "warning", "pid": "31337", **h},
            {"alertname": "ProcessHoggingCPU", "severity": "warning", "pid": "4242", **h},
        ])
        expected = {
            ("CPUUsageCritical", "h1:10101", None): False,
            ("CPUUsageHigh", "h1:10101", None): True,
            ("CPUUsageHigh", "h2:10101", None): False,
            ("GPUTemperatureCritical", "h1:10101", "0"): False,
            ("GPUTemperatureHigh", "h1:10101", "0"): True,
            ("GPUTemperatureHigh", "h1:10101", "1"): False,
            ("SuspectedCryptominer", "h1:10101", "31337"): False,
            ("ProcessHoggingCPU", "h1:10101", "31337"): True,
            ("ProcessHoggingCPU", "h1:10101", "4242"): False,
        }
        deadline = time.monotonic() + 10
        while inhibited(am) != expected and time.monotonic() < deadline:
            time.sleep(0.2)
        assert inhibited(am) == expected, am.log
    finally:
        am.stop()


# --- the end-to-end test's rewrite ------------------------------------------------------------------

DURATIONS = {"for", "evaluation_interval", "scrape_interval", "scrape_timeout", "group_wait", "group_interval",
             "repeat_interval"}


def blank(node, tmp, key=None):
    """The config with durations, addresses and paths blanked, for comparing a rewrite to its source."""
    if isinstance(node, dict):
        return {k: blank(v, tmp, k) for k, v in node.items()}
    if isinstance(node, list):
        if key in ("targets", "files", "rule_files", "templates"):
            return "<list>"
        return [blank(v, tmp) for v in node]
    if key in DURATIONS or key == "url":
        return "<value>"
    if isinstance(node, str) and (node.startswith(tmp) or node.startswith(SECRETS_DIR)):
        return "<path>"
    return node


def test_e2e_rewrite_changes_only_addresses_paths_and_durations(tmp_path):
    tmp = str(tmp_path)
    prom = rewrite_prometheus(tmp, "127.0.0.1:1", "127.0.0.1:2")
    assert blank(load(prom), tmp) == blank(load(PROMETHEUS_YML), tmp)
    for path in ALERT_RULES:
        copy = os.path.join(tmp, "rules", os.path.basename(path))
        assert blank(load(copy), tmp) == blank(load(path), tmp)
        assert {r["alert"]: r["for"] for g in load(copy)["groups"] for r in g["rules"]} == \
            {r["alert"]: "5s" for g in load(path)["groups"] for r in g["rules"]}
    am = rewrite_alertmanager(tmp, os.path.join(tmp, "secrets"), webhook_url="http://127.0.0.1:3/hook")
    assert blank(load(am), tmp) == blank(load(ALERTMANAGER_YML), tmp)
    assert load(am)["templates"] == [os.path.join(ROOT, "alerting", "templates", "*.tmpl")]
