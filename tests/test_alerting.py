"""Prometheus config, recording and alert rules, their unit tests, and the Alertmanager config.

Runs promtool and amtool from Debian. The mutation tests prove that every alert's unit test fails
when the alert's threshold or `for:` is changed, so the promtool tests cannot pass by accident.
The structural tests check that every alert's unit tests cover firing, quiet, recovery, stale input
and an extra target label, and the rendered chat messages are compared word for word.
"""
import concurrent.futures
import copy
import json
import os
import re
import shutil
import subprocess
import time

import pytest
import requests
import yaml

from alertstack import ALERT_RULES, ALERTMANAGER_YML, PROMETHEUS_YML, RANGE, RECORDING_YML, ROOT, SECRETS_DIR, load, \
    rewrite_alertmanager, rewrite_prometheus, start_alertmanager

RULES_DIR = os.path.join(ROOT, "alerting", "rules")
TESTS_DIR = os.path.join(ROOT, "alerting", "tests")
README = os.path.join(ROOT, "alerting", "README.md")
TEMPLATE_GLOB = os.path.join(ROOT, "alerting", "templates", "*.tmpl")

# The alerts the product promises, by exact name.
ALERTS = {
    "GPUTemperatureHigh", "GPUTemperatureCritical", "GPUThermalThrottling", "GPULost", "GPUBusyUnknownProcess",
    "CPUTemperatureHigh", "CPUTemperatureCritical", "CPUUsageHigh", "MemoryUsageHigh", "LoadAverageHigh",
    "FanSpeedHigh", "FanStalledWhileHot", "FanLoudWhileCool", "ProcessHoggingCPU", "SuspectedCryptominer",
    "ExporterDown", "ManyExportersDown", "ExporterTargetsMissing", "ExporterCollectorFailing", "ExporterStale",
    "Watchdog", "MonitoringTargetDown", "AlertNotificationsFailing", "PrometheusNotificationsFailing",
    "PrometheusRuleFailures", "GPUXidFatal", "GPUMemoryNeedsReset", "GPUMemoryRemapFailed", "GPUPCIeLinkDegraded",
    "ProcessGroupPowerHigh",
    "BMCDown",
}
# Alerts that cannot carry a target label: absent() has no series to take it from; Watchdog is vector(1).
NO_TARGET_LABELS = {"ExporterTargetsMissing", "Watchdog"}
# Literals the mutation test moves by one step of what the input can express instead of 2 %: a count
# of hosts is a whole number, and a share of 0/1 samples in a 2-minute window (13 samples at 10 s)
# moves in steps of 1/13; nothing lies within 2 % of these.
MUTATION_STEP = {("ManyExportersDown", 2.0): 1, ("GPUThermalThrottling", 0.5): 1 / 13, ("GPULost", 0.5): 1 / 13}

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
    """{alert: {"severity", "threshold": [numbers], "for", "keep"}} from alerting/README.md's table."""
    rows = {}
    with open(README, encoding="utf-8") as f:
        section = f.read().split("## Thresholds", 1)[1].split("\n## ", 1)[0]
        for line in section.splitlines():
            m = re.match(r"\|\s*`(\w+)`\s*\|", line)
            if not m:
                continue
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            _, severity, _, threshold, for_, keep, _ = cells
            rows[m.group(1)] = {
                "severity": severity,
                "threshold": sorted({float(x) for x in re.findall(r"\d+(?:\.\d+)?", threshold)}),
                "for": for_.strip("`"),
                "keep": keep.strip("`"),
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


def test_prometheus_config_scrapes_hoofhearted_and_the_alerting_path():
    cfg = load(PROMETHEUS_YML)
    jobs = {j["job_name"]: j for j in cfg["scrape_configs"]}
    assert set(jobs) == {"hoofhearted", "prometheus", "alertmanager"}
    job = jobs["hoofhearted"]
    assert job["scrape_interval"] == "15s"
    assert job["file_sd_configs"][0]["files"] == ["targets/*.yml"]
    assert job["http_sd_configs"][0]["url"] == "http://exporter:10101/api/targets"
    assert cfg["rule_files"] == ["rules/*.yml", "../alerting/rules/*.yml"]
    assert cfg["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"] == \
        jobs["alertmanager"]["static_configs"][0]["targets"]
    with open(os.path.join(ROOT, "grafana", "provisioning", "datasources", "hoofhearted.yml")) as f:
        (prom,) = [d for d in yaml.safe_load(f)["datasources"] if d["type"] == "prometheus"]
    # Grafana's $__rate_interval is four times this: it must be the scrape interval
    assert prom["jsonData"]["timeInterval"] == job["scrape_interval"]


def test_targets_show_the_host_name_not_the_address(require_tool, tmp_path):
    """The relabelling in prometheus.yml, run by promtool on three targets."""
    promtool = require_tool("promtool")
    cfg = load(PROMETHEUS_YML)
    (job,) = [j for j in cfg["scrape_configs"] if j["job_name"] == "hoofhearted"]
    groups = [{"targets": ["exporter:10101"], "labels": {"host": "gpu-box", "site": "lab"}},
              {"targets": ["db-1.example.net:10101"]}, {"targets": ["10.0.0.7:9999"]}]
    targets = tmp_path / "t.yml"
    targets.write_text(yaml.safe_dump(groups))
    job["file_sd_configs"][0]["files"] = [str(targets)]
    del job["http_sd_configs"]                  # the exporter's own: tested with a real one below
    cfg["rule_files"] = []
    path = tmp_path / "p.yml"
    path.write_text(yaml.safe_dump(cfg))
    r = run(promtool, "check", "service-discovery", str(path), "hoofhearted")
    assert r.returncode == 0, r.stdout + r.stderr
    found = [{k: v for k, v in t["labels"].items() if not k.startswith("__")} for t in json.loads(r.stdout)]
    by_instance = lambda t: t["instance"]    # noqa: E731 (promtool lists them in no fixed order)
    assert sorted(found, key=by_instance) == sorted([{"instance": "gpu-box", "job": "hoofhearted", "site": "lab"},
                                                     {"instance": "db-1.example.net", "job": "hoofhearted"},
                                                     {"instance": "10.0.0.7:9999", "job": "hoofhearted"}],
                                                    key=by_instance)


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
    assert ALERTS == set(rules), f"missing: {sorted(ALERTS - set(rules))}, unexpected: {sorted(set(rules) - ALERTS)}"
    for name, (_, rule) in rules.items():
        if name == "Watchdog":
            assert rule["labels"]["severity"] == "none" and "for" not in rule
            continue
        assert rule["labels"]["severity"] in ("warning", "critical"), name
        assert seconds(rule["for"]) > 0, name
        for key in ("summary", "description", "runbook"):
            assert rule["annotations"].get(key, "").strip(), f"{name}: no {key}"
        # grouped messages keep the runbook only if it is the same for every alert of the name, and
        # a resolved message quotes the summary: neither may hold a value or a label
        assert "{{" not in rule["annotations"]["runbook"], name
        assert "$value" not in rule["annotations"]["summary"], name


def test_critical_alerts_keep_firing_through_a_gap_in_their_data():
    """A hung collector withdraws its samples; a critical alert about heat or hardware must not
    clear because of it."""
    keep = {name: rule.get("keep_firing_for") for name, (_, rule) in alert_rules().items()}
    for name in ("CPUTemperatureCritical", "GPUTemperatureCritical", "FanStalledWhileHot", "GPULost",
                 "SuspectedCryptominer", "GPUXidFatal", "GPUMemoryRemapFailed"):
        assert keep[name] and seconds(keep[name]) >= 300, name


def cases_of(name):
    """[(test group, alert_rule_test case)] of one alert, from its rule file's unit tests."""
    path, _ = alert_rules()[name]
    return [(test, case) for test in load(unit_test_file(path))["tests"] for case in test.get("alert_rule_test", [])
            if case["alertname"] == name]


@pytest.mark.parametrize("name", sorted(ALERTS))
def test_every_alert_has_unit_tests_for_firing_quiet_recovery_stale_and_target_labels(name):
    _, rule = alert_rules()[name]
    cases = cases_of(name)
    firing = [c for _, c in cases if c.get("exp_alerts")]
    assert firing, f"{name}: no firing case"
    for case in firing:
        for alert in case["exp_alerts"]:
            assert alert["exp_labels"]["severity"] == rule["labels"]["severity"]
            assert set(alert["exp_annotations"]) == {"summary", "description", "runbook"}
    if name == "Watchdog":
        return
    assert [c for _, c in cases if not c.get("exp_alerts")], f"{name}: no quiet case"
    # recovery: within one test group, an alert expected at one time and gone at a later one
    recovered = False
    for test in {id(t): t for t, _ in cases}.values():
        timeline = sorted(((seconds(c["eval_time"]), {json.dumps(a["exp_labels"], sort_keys=True)
                                                      for a in c.get("exp_alerts", [])})
                           for c in test["alert_rule_test"] if c["alertname"] == name), key=lambda x: x[0])
        recovered |= any(earlier - later for i, (_, earlier) in enumerate(timeline) for _, later in timeline[i + 1:])
    assert recovered, f"{name}: no case where a firing alert resolves"
    groups = {id(t): t for t, _ in cases}.values()
    assert any("stale" in s["values"] for t in groups for s in t["input_series"]), f"{name}: no stale input"
    if name not in NO_TARGET_LABELS:
        assert any("site" in a["exp_labels"] for c in firing for a in c["exp_alerts"]), \
            f"{name}: no firing case carries an extra target label (site)"


def test_readme_thresholds_match_the_rules():
    table, rules = readme_table(), alert_rules()
    assert set(table) == set(rules), "alerting/README.md's table and the rules list different alerts"
    for name, (_, rule) in rules.items():
        row = table[name]
        assert row["severity"] == rule["labels"]["severity"], name
        assert seconds(row["for"]) == seconds(rule.get("for", "0s")), name
        assert seconds(row["keep"]) == seconds(rule.get("keep_firing_for", "0s")), name
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
        if name == "Watchdog":
            continue
        expr, for_ = rule["expr"], rule["for"]
        step = 10  # the unit tests' evaluation_interval
        for delta in (step, -step):
            out.append((name, f"for {for_}{delta:+d}s", path, expr, f"{int(seconds(for_) + delta)}s"))
        for start, end, value in literals(expr):
            change = MUTATION_STEP.get((name, value), 0.5 if value == 0 else abs(value) * 0.02)
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
    # only the test groups that check this alert: the others cannot notice, and cost time
    test_path = os.path.join(tmp, "alerting", "tests", os.path.basename(unit_test_file(path)))
    tests = load(test_path)
    tests["tests"] = [t for t in tests["tests"] if any(c["alertname"] == alert for c in t.get("alert_rule_test", []))]
    with open(test_path, "w", encoding="utf-8") as f:
        yaml.safe_dump(tests, f, allow_unicode=True, sort_keys=False, width=10_000)
    return test_path


def test_changing_any_threshold_or_for_fails_the_unit_tests(require_tool, tmp_path):
    promtool = require_tool("promtool")
    cases = mutations()
    names = {c[0] for c in cases}
    assert names == set(alert_rules()) - {"Watchdog"}

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
    assert "5 inhibit rules" in r.stdout and "6 receivers" in r.stdout and "2 templates" in r.stdout


def test_alertmanager_reads_secrets_from_files_and_groups_by_site():
    text = open(ALERTMANAGER_YML, encoding="utf-8").read()
    cfg = load(ALERTMANAGER_YML)
    receivers = {r["name"]: r for r in cfg["receivers"]}
    for name in ("critical", "warning"):
        files = [c["api_url_file"] for c in receivers[name]["slack_configs"]]
        assert files == ["/etc/alertmanager/secrets/slack_webhook_url",
                         "/etc/alertmanager/secrets/discord_webhook_url"]
        assert all("api_url" not in c for c in receivers[name]["slack_configs"])
    assert [c["routing_key_file"] for c in receivers["pager"]["pagerduty_configs"]] == \
        ["/etc/alertmanager/secrets/pagerduty_routing_key"]
    assert "hooks.slack.com" not in text and "discord.com/api/webhooks" not in text and "127.0.0.1:3000" not in text
    # warnings: one message per alert and site; critical: per host
    assert cfg["route"]["group_by"] == ["alertname", "site"]
    critical = [r for r in cfg["route"]["routes"] if r.get("matchers") == ['severity="critical"']]
    assert [r["receiver"] for r in critical] == ["pager", "critical"]
    assert all(r["group_by"] == ["alertname", "instance"] for r in critical)
    assert critical[0]["continue"] is True


@pytest.mark.parametrize("labels,receivers", [
    (["severity=critical", "alertname=GPUTemperatureCritical", "instance=gpu-box"], "pager,critical"),
    (["severity=critical", "alertname=ManyExportersDown", "site=lab"], "pager,critical"),
    (["severity=warning", "alertname=GPUTemperatureHigh", "instance=gpu-box"], "warning"),
    (["severity=warning", "alertname=CPUUsageHigh", "site=lab"], "warning"),
    (["severity=none", "alertname=Watchdog"], "watchdog"),
    (["alertname=SomethingElse"], "warning"),
])
def test_routes_by_severity(require_tool, labels, receivers):
    amtool = require_tool("amtool")
    r = run(amtool, "config", "routes", "test", f"--config.file={ALERTMANAGER_YML}",
            f"--verify.receivers={receivers}", *labels)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.strip() == receivers


def test_routes_test_fails_on_the_wrong_receiver(require_tool):
    amtool = require_tool("amtool")
    r = run(amtool, "config", "routes", "test", f"--config.file={ALERTMANAGER_YML}",
            "--verify.receivers=warning", "severity=critical", "alertname=GPULost")
    assert r.returncode != 0


def render(amtool, tmp_path, data, name, globs=(TEMPLATE_GLOB,)):
    path = tmp_path / "data.json"
    path.write_text(json.dumps(data))
    r = run(amtool, "template", "render", *[f"--template.glob={g}" for g in globs], f"--template.data={path}",
            f'--template.text={{{{ template "{name}" . }}}}')
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout


RUNBOOK = "Run `hoofhearted why` on the host."


def alert(status, labels, summary, description, runbook=RUNBOOK):
    return {"status": status, "labels": labels,
            "annotations": {"summary": summary, "description": description, "runbook": runbook},
            "startsAt": "2024-05-01T10:00:00Z",
            "endsAt": "2024-05-01T10:05:00Z" if status == "resolved" else "0001-01-01T00:00:00Z",
            "generatorURL": "http://prometheus:9090/graph", "fingerprint": "c0ffee"}


def notification(alerts, group_by, external_url="http://127.0.0.1:9093"):
    """The data Alertmanager hands a template: group, common labels and annotations computed the way
    Alertmanager does (what every alert of the group shares)."""
    common = dict(alerts[0]["labels"])
    for a in alerts[1:]:
        common = {k: v for k, v in common.items() if a["labels"].get(k) == v}
    annotations = dict(alerts[0]["annotations"])
    for a in alerts[1:]:
        annotations = {k: v for k, v in annotations.items() if a["annotations"].get(k) == v}
    status = "firing" if any(a["status"] == "firing" for a in alerts) else "resolved"
    return {"receiver": "chat", "status": status, "alerts": alerts,
            "groupLabels": {k: common[k] for k in group_by if k in common}, "commonLabels": common,
            "commonAnnotations": annotations, "externalURL": external_url}


GPU = {"alertname": "GPUTemperatureCritical", "instance": "gpu-box", "job": "hoofhearted", "gpu": "0",
       "uuid": "GPU-aaaa", "severity": "critical"}


def test_templates_render_value_host_culprit_and_link(require_tool, tmp_path):
    amtool = require_tool("amtool")
    firing = notification([alert("firing", GPU, "GPU0 about to throttle on gpu-box",
                                 "GPU0 95 C (slows down at 97 C), fan 92% — python3 (pid 4242, alice) 97% of GPU0",
                                 "Pause or stop the named process now.")], ["alertname", "instance"])
    resolved = copy.deepcopy(firing)
    resolved["status"] = resolved["alerts"][0]["status"] = "resolved"
    assert render(amtool, tmp_path, firing, "hoofhearted.title") == "[CRITICAL] GPUTemperatureCritical on gpu-box"
    assert render(amtool, tmp_path, resolved, "hoofhearted.title") == "[RESOLVED] GPUTemperatureCritical on gpu-box"
    assert render(amtool, tmp_path, firing, "hoofhearted.dashboard_url") == \
        "http://127.0.0.1:3000/d/hoofhearted-home/hoofhearted?var-instance=gpu-box"
    assert render(amtool, tmp_path, firing, "hoofhearted.slack.text") == (
        "• GPU0 95 C (slows down at 97 C), fan 92% — python3 (pid 4242, alice) 97% of GPU0\n"
        "Runbook: Pause or stop the named process now.")
    # resolved: the summary, which quotes no value, and no runbook
    assert render(amtool, tmp_path, resolved, "hoofhearted.slack.text") == \
        "• resolved: GPU0 about to throttle on gpu-box\n"
    assert render(amtool, tmp_path, firing, "hoofhearted.color") == "#d63232"
    assert render(amtool, tmp_path, resolved, "hoofhearted.color") == "#2eb67d"
    assert render(amtool, tmp_path, firing, "hoofhearted.telegram.message") == (
        "<b>[CRITICAL] GPUTemperatureCritical on gpu-box</b>\n"
        "• GPU0 95 C (slows down at 97 C), fan 92% — python3 (pid 4242, alice) 97% of GPU0\n"
        '<a href="http://127.0.0.1:3000/d/hoofhearted-home/hoofhearted?var-instance=gpu-box">Dashboard</a>')


def test_grafana_link_comes_from_configuration(require_tool, tmp_path):
    """Alertmanager's external URL by default; a site template file replaces it."""
    amtool = require_tool("amtool")
    data = notification([alert("firing", GPU, "s", "d")], ["alertname", "instance"],
                        external_url="https://alerts.example.net:9093")
    assert render(amtool, tmp_path, data, "hoofhearted.dashboard_url") == \
        "https://alerts.example.net:3000/d/hoofhearted-home/hoofhearted?var-instance=gpu-box"
    site = tmp_path / "site"
    site.mkdir()
    (site / "grafana.tmpl").write_text('{{ define "hoofhearted.grafana_url" }}https://grafana.example.net{{ end }}')
    globs = (TEMPLATE_GLOB, str(site / "*.tmpl"))
    assert render(amtool, tmp_path, data, "hoofhearted.dashboard_url", globs) == \
        "https://grafana.example.net/d/hoofhearted-home/hoofhearted?var-instance=gpu-box"
    # the shipped config reads such a file from the secrets directory (written at start, see README)
    assert load(ALERTMANAGER_YML)["templates"] == ["templates/*.tmpl", SECRETS_DIR + "*.tmpl"]


def heat_wave():
    """Three hosts of site lab hot, a fourth recovered: one warning group (alertname, site)."""
    def cpu(status, host, temp, culprit):
        labels = {"alertname": "CPUTemperatureHigh", "instance": host, "job": "hoofhearted", "site": "lab",
                  "chip": "platform_coretemp_0", "severity": "warning"}
        return alert(status, labels, f"CPU platform_coretemp_0 hot on {host}",
                     f"platform_coretemp_0 at {temp} C (Package id 0), fans 80% — {culprit}")
    return notification([
        cpu("firing", "web-1", 91, "php-fpm ×12 (www-data) 0.84 cores"),
        cpu("firing", "web-2", 89, "php-fpm ×11 (www-data) 0.79 cores"),
        cpu("firing", "build-7", 93, "cc1plus ×8 (builder) 7.90 cores"),
        cpu("resolved", "web-3", 88, "php-fpm ×12 (www-data) 0.80 cores"),
    ], ["alertname", "site"])


def test_grouped_message_for_a_partial_resolve(require_tool, tmp_path):
    """The title counts what fires, names the site, says how many resolved; each line names its host;
    the resolved host is listed without its last value; the runbook, shared by the group, stays."""
    amtool = require_tool("amtool")
    data = heat_wave()
    assert render(amtool, tmp_path, data, "hoofhearted.slack.title") == \
        "[WARNING ×3] CPUTemperatureHigh at lab (1 resolved)"
    assert render(amtool, tmp_path, data, "hoofhearted.slack.text") == (
        "• web-1: platform_coretemp_0 at 91 C (Package id 0), fans 80% — php-fpm ×12 (www-data) 0.84 cores\n"
        "• web-2: platform_coretemp_0 at 89 C (Package id 0), fans 80% — php-fpm ×11 (www-data) 0.79 cores\n"
        "• build-7: platform_coretemp_0 at 93 C (Package id 0), fans 80% — cc1plus ×8 (builder) 7.90 cores\n"
        "• resolved: CPU platform_coretemp_0 hot on web-3\n"
        "Runbook: Run `hoofhearted why` on the host.")
    # no host in the link when the group spans hosts
    assert render(amtool, tmp_path, data, "hoofhearted.dashboard_url") == \
        "http://127.0.0.1:3000/d/hoofhearted-home/hoofhearted"
    for a in data["alerts"]:
        a["status"] = "resolved"
    data["status"] = "resolved"
    assert render(amtool, tmp_path, data, "hoofhearted.slack.title") == "[RESOLVED ×4] CPUTemperatureHigh at lab"


HOSTILE = "<!channel> @everyone *free* _x_ `y` [a](http://evil) a&b <http://evil|click>"


def test_chat_markup_in_names_is_escaped(require_tool, tmp_path):
    """A process name is whatever its owner chose; it must not ping a channel or forge markup."""
    amtool = require_tool("amtool")
    labels = {"alertname": "ProcessHoggingCPU", "instance": "box", "job": "hoofhearted", "group": HOSTILE,
              "severity": "warning"}
    data = notification([alert("firing", labels, f"{HOSTILE} burns CPU on box", f"{HOSTILE} uses 1.00 cores of 2")],
                        ["alertname", "site"])
    assert render(amtool, tmp_path, data, "hoofhearted.slack.text") == (
        "• &lt;!channel&gt; @everyone *free* _x_ `y` [a](http://evil) a&amp;b &lt;http://evil|click&gt; "
        "uses 1.00 cores of 2\nRunbook: Run `hoofhearted why` on the host.")
    assert render(amtool, tmp_path, data, "hoofhearted.discord.text") == (
        "• \\<!channel\\> @\u200beveryone \\*free\\* \\_x\\_ \\`y\\` \\[a\\](http://evil) a&b "
        "\\<http://evil\\|click\\> uses 1.00 cores of 2\nRunbook: Run \\`hoofhearted why\\` on the host.")
    assert render(amtool, tmp_path, data, "hoofhearted.telegram.message").splitlines()[1] == (
        "• &lt;!channel&gt; @everyone *free* _x_ `y` [a](http://evil) a&amp;b &lt;http://evil|click&gt; "
        "uses 1.00 cores of 2")
    # and the receivers use those templates, with Slack's markdown off
    cfg = load(ALERTMANAGER_YML)
    slack, discord = {r["name"]: r for r in cfg["receivers"]}["critical"]["slack_configs"]
    assert "hoofhearted.slack.text" in slack["text"] and "hoofhearted.slack.title" in slack["title"]
    assert slack["mrkdwn_in"] == ["pretext"]
    assert "hoofhearted.discord.text" in discord["text"] and "hoofhearted.discord.title" in discord["title"]


def post_alerts(am, alerts):
    body = [{"labels": labels, "annotations": {"summary": labels["alertname"]}} for labels in alerts]
    requests.post(am.url + "/api/v2/alerts", json=body, timeout=5).raise_for_status()


def inhibited(am):
    """{(alertname, instance or site, extra label values): inhibited?} from the running Alertmanager."""
    out = {}
    for a in requests.get(am.url + "/api/v2/alerts", timeout=5).json():
        lab = a["labels"]
        key = (lab["alertname"], lab.get("instance") or lab.get("site"), lab.get("gpu") or lab.get("name"))
        out[key] = bool(a["status"]["inhibitedBy"])
    return out


def test_inhibitions_in_a_real_alertmanager(require_tool, tmp_path):
    binary = require_tool("prometheus-alertmanager")
    config = rewrite_alertmanager(str(tmp_path), str(tmp_path / "secrets"))
    am = start_alertmanager(binary, str(tmp_path), config)
    try:
        h = {"instance": "h1", "job": "hoofhearted"}
        post_alerts(am, [
            {"alertname": "CPUTemperatureCritical", "severity": "critical", "chip": "platform_coretemp_0", **h},
            {"alertname": "CPUTemperatureHigh", "severity": "warning", "chip": "platform_coretemp_0", **h},
            {"alertname": "CPUTemperatureHigh", "severity": "warning", "chip": "platform_coretemp_0",
             "instance": "h2", "job": "hoofhearted"},
            {"alertname": "GPUTemperatureCritical", "severity": "critical", "gpu": "0", **h},
            {"alertname": "GPUTemperatureHigh", "severity": "warning", "gpu": "0", **h},
            {"alertname": "GPUTemperatureHigh", "severity": "warning", "gpu": "1", **h},
            {"alertname": "GPULost", "severity": "critical", "gpu": "1", **h},
            {"alertname": "FanStalledWhileHot", "severity": "critical", "gpu": "1", "fan": "0", **h},
            {"alertname": "FanStalledWhileHot", "severity": "critical", "chip": "nct6798", "fan": "fan2", **h},
            {"alertname": "SuspectedCryptominer", "severity": "critical", "name": "xmrig", "user": "www", **h},
            {"alertname": "GPUBusyUnknownProcess", "severity": "warning", "name": "xmrig", "user": "www", **h},
            {"alertname": "GPUBusyUnknownProcess", "severity": "warning", "name": "blender", "user": "www", **h},
            {"alertname": "ManyExportersDown", "severity": "critical", "job": "hoofhearted", "site": "lab"},
            {"alertname": "ExporterDown", "severity": "warning", "instance": "a1", "job": "hoofhearted", "site": "lab"},
            {"alertname": "ExporterDown", "severity": "warning", "instance": "b1", "job": "hoofhearted", "site": "far"},
        ])
        expected = {
            ("CPUTemperatureCritical", "h1", None): False,
            ("CPUTemperatureHigh", "h1", None): True,
            ("CPUTemperatureHigh", "h2", None): False,
            ("GPUTemperatureCritical", "h1", "0"): False,
            ("GPUTemperatureHigh", "h1", "0"): True,
            ("GPUTemperatureHigh", "h1", "1"): True,      # by the lost GPU1
            ("GPULost", "h1", "1"): False,
            ("FanStalledWhileHot", "h1", "1"): True,      # GPU1's fan: GPU1 is lost
            ("FanStalledWhileHot", "h1", None): False,    # a host fan
            ("SuspectedCryptominer", "h1", "xmrig"): False,
            ("GPUBusyUnknownProcess", "h1", "xmrig"): True,
            ("GPUBusyUnknownProcess", "h1", "blender"): False,
            ("ManyExportersDown", "lab", None): False,
            ("ExporterDown", "a1", None): True,
            ("ExporterDown", "b1", None): False,
        }
        deadline = time.monotonic() + 10
        while inhibited(am) != expected and time.monotonic() < deadline:
            time.sleep(0.2)
        assert inhibited(am) == expected, am.log
    finally:
        am.stop()


# --- the end-to-end test's rewrite ------------------------------------------------------------------

DURATIONS = {"for", "keep_firing_for", "evaluation_interval", "scrape_interval", "scrape_timeout", "group_wait",
             "group_interval", "repeat_interval", "refresh_interval"}


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
    if key == "expr":
        return RANGE.sub("[<window>]", node)
    if isinstance(node, str) and (node.startswith(tmp) or node.startswith(SECRETS_DIR)):
        return "<path>"
    return node


def test_e2e_rewrite_changes_only_addresses_paths_and_durations(tmp_path):
    tmp = str(tmp_path)
    prom = rewrite_prometheus(tmp, "127.0.0.1:1", "127.0.0.1:2", for_="5s", window="30s")
    assert blank(load(prom), tmp) == blank(load(PROMETHEUS_YML), tmp)
    assert blank(load(os.path.join(tmp, "recording.yml")), tmp) == blank(load(RECORDING_YML), tmp)
    assert "[5m]" in open(RECORDING_YML).read() and "[5m]" not in open(os.path.join(tmp, "recording.yml")).read()
    for path in ALERT_RULES:
        copy_ = os.path.join(tmp, "rules", os.path.basename(path))
        assert blank(load(copy_), tmp) == blank(load(path), tmp)
        for g in load(copy_)["groups"]:
            for r in g["rules"]:
                assert r.get("for", "5s") == "5s" and r.get("keep_firing_for", "5s") == "5s"
                assert all(w == "30s" for w in RANGE.findall(r["expr"]))
    am = rewrite_alertmanager(tmp, os.path.join(tmp, "secrets"), webhook_url="http://127.0.0.1:3/hook",
                              pagerduty_url="http://127.0.0.1:3/pd")
    rewritten = load(am)
    (pager,) = {r["name"]: r for r in rewritten["receivers"]}["pager"]["pagerduty_configs"]
    assert pager.pop("url") == "http://127.0.0.1:3/pd"  # the shipped file uses PagerDuty's default
    assert blank(rewritten, tmp) == blank(load(ALERTMANAGER_YML), tmp)
    assert load(am)["templates"] == [os.path.join(ROOT, "alerting", "templates", "*.tmpl"),
                                     os.path.join(tmp, "secrets", "*.tmpl")]
