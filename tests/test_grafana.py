"""Grafana dashboards and provisioning.

Static: the committed JSON is what grafana/build.py writes, ids and uids are unique, every data
source reference is the provisioned one, every metric a panel, variable, annotation, recording rule
or alert reads is in the README's metric table or the recording rules, tiles are instant queries,
panels for hardware a box may lack say why they are empty. Live: every PromQL expression of every
panel, variable and annotation runs on a real Prometheus that scraped three real exporters, and
panel and variable queries return series; the fleet table gets one row per host; and at 200
simulated hosts every panel returns at most the series it is meant to.
"""
import os
import re
import time

import pytest
import yaml

from conftest import ROOT, need_module, need_tool
from dashboards import (BUILTINS, HOSTS, IMPORT, PROVISIONED, SYNTHETIC, FleetSim, Stack, datasource_refs,
                        live_targets, load, load_build, metric_names, queries, readme_metric_names, recorded_names,
                        rule_queries, substitute, walk)

BUILD = load_build()
DASHBOARDS = load(PROVISIONED)
IMPORTED = load(IMPORT)
EXPECTED = {"home": "hoofhearted-home", "gpu": "hoofhearted-gpu", "processes": "hoofhearted-processes",
            "fleet": "hoofhearted-fleet", "exporter": "hoofhearted-exporter"}
BUILTIN_VARS = {"__rate_interval", "__interval", "__range"}
ALL_QUERIES = [q for dash in DASHBOARDS.values() for q in queries(dash)]


def line_protocol_parser():
    """An Influx line protocol parser that is not ours: the line-protocol-parser package."""
    return need_module("line_protocol_parser", "parse_line")


def compose():
    with open(os.path.join(ROOT, "docker-compose.yml")) as f:
        return yaml.safe_load(f)


# -- static --------------------------------------------------------------------------------

def test_committed_dashboards_are_the_generator_output():
    built = BUILD.outputs()
    for path, text in built.items():
        with open(path, encoding="utf-8") as f:
            assert f.read() == text, f"{path} is out of date: run python3 grafana/build.py"
    on_disk = {os.path.join(d, n) for d in (PROVISIONED, IMPORT) for n in os.listdir(d)}
    assert on_disk == {str(p) for p in built}, "grafana/dashboards or grafana/import has files build.py does not write"


def test_the_five_dashboards_exist_with_stable_uids():
    assert {name: d["uid"] for name, d in DASHBOARDS.items()} == EXPECTED
    assert {name: d["uid"] for name, d in IMPORTED.items()} == EXPECTED
    assert DASHBOARDS["home"]["title"] == "Why is my fan running?"


@pytest.mark.parametrize("variant", ["provisioned", "import"])
def test_panels_have_unique_ids_and_fit_the_grid(variant):
    for name, dash in (DASHBOARDS if variant == "provisioned" else IMPORTED).items():
        panels = list(walk(dash["panels"]))
        ids = [p["id"] for p in panels]
        assert len(ids) == len(set(ids)), f"{name}: duplicate panel ids"
        assert all(isinstance(i, int) and i > 0 for i in ids)
        for p in panels:
            g = p["gridPos"]
            assert 0 <= g["x"] and g["w"] > 0 and g["x"] + g["w"] <= 24 and g["h"] > 0, (name, p["title"])
            assert p["title"], f"{name}: untitled panel {p['id']}"
            refs = [t["refId"] for t in p.get("targets", [])]
            assert len(refs) == len(set(refs)), (name, p["title"])
        cells = {}
        for p in panels:  # no two panels on the same grid cell
            g = p["gridPos"]
            for x in range(g["x"], g["x"] + g["w"]):
                for y in range(g["y"], g["y"] + g["h"]):
                    assert (x, y) not in cells, f"{name}: {p['title']!r} overlaps {cells[(x, y)]!r}"
                    cells[(x, y)] = p["title"]


def test_datasource_references_are_the_provisioned_uid():
    with open(os.path.join(ROOT, "grafana", "provisioning", "datasources", "hoofhearted.yml")) as f:
        provisioned = {d["type"]: d["uid"] for d in yaml.safe_load(f)["datasources"]}
    assert provisioned["prometheus"] == BUILD.PROM_UID
    assert provisioned["alertmanager"]
    counted = 0
    for name, dash in DASHBOARDS.items():
        for where, ds in datasource_refs(dash):
            counted += 1
            if ds.get("type") == "prometheus":
                assert ds["uid"] == BUILD.PROM_UID, (name, where, ds)
            else:  # Grafana Live streams come through the built-in Grafana data source
                assert ds == {"type": "datasource", "uid": "grafana"}, (name, where, ds)
    assert counted > 100


def test_import_variant_asks_for_a_prometheus_data_source():
    for name, dash in IMPORTED.items():
        assert [i["name"] for i in dash["__inputs"]] == ["DS_PROMETHEUS"]
        assert dash["id"] is None
        for where, ds in datasource_refs(dash):
            if ds.get("type") == "prometheus":
                assert ds["uid"] == "${DS_PROMETHEUS}", (name, where)
            else:
                assert ds == {"type": "datasource", "uid": "grafana"}, (name, where)
        # Same queries as the provisioned dashboard.
        assert queries(dash) == queries(DASHBOARDS[name])


def test_live_targets_use_the_grafana_data_source_only():
    for name, dash in DASHBOARDS.items():
        for p in walk(dash["panels"]):
            for t in p.get("targets", []):
                if t["datasource"]["type"] != "prometheus":
                    assert t["queryType"] == "measurements" and t["channel"].startswith("stream/hoofhearted/"), (
                        name, p["title"])


def test_refresh_matches_the_scrape_and_1s_stays_selectable():
    """Prometheus scrapes every 15 s: host dashboards refresh every 30 s, fleet-wide ones every minute;
    the Live row is pushed and needs no refresh."""
    for name, dash in DASHBOARDS.items():
        assert dash["refresh"] == ("1m" if name in ("fleet", "exporter") else "30s"), name
        assert "1s" in dash["timepicker"]["refresh_intervals"], name
    env = compose()["services"]["grafana"]["environment"]
    assert env["GF_DASHBOARDS_MIN_REFRESH_INTERVAL"] == "1s"


def test_every_variable_used_is_defined():
    for name, dash in DASHBOARDS.items():
        defined = {v["name"] for v in dash["templating"]["list"]}
        assert "instance" in defined, name
        for qid, kind, expr in queries(dash):
            used = set(re.findall(r"\$(\w+)", expr)) - BUILTIN_VARS
            assert used <= defined, f"{qid} uses undefined {used - defined}"
    assert "gpu" in {v["name"] for v in DASHBOARDS["home"]["templating"]["list"]}
    assert "gpu" in {v["name"] for v in DASHBOARDS["gpu"]["templating"]["list"]}


def test_home_answers_the_question_from_its_top_rows():
    home = DASHBOARDS["home"]
    top = [p for p in home["panels"] if p["gridPos"]["y"] == 0]
    assert [p["type"] for p in top] == ["stat"] * len(top)
    exprs = " ".join(t["expr"] for p in top for t in p["targets"])
    for metric in ("hoofhearted_temperature_celsius", "hoofhearted_temperature_max_celsius",
                   "chip_fan:hoofhearted_fan_speed:ratio", "hoofhearted_gpu_fan_speed_ratio",
                   "hoofhearted_cpu_usage_ratio", "hoofhearted_gpu_utilization_ratio",
                   "hoofhearted_gpu_temperature_celsius", "ALERTS"):
        assert metric in exprs, metric
    second = [p for p in home["panels"] if p["gridPos"]["y"] == 4]
    verdict = next(p for p in second if p["type"] == "table")
    cols = verdict["transformations"][-1]["options"]["renameByName"]
    assert {"Rank", "Kind", "Name", "User", "Owner", "PID", "Processes", "Cores", "Memory"} <= set(cols.values())
    assert {m for t in verdict["targets"] for m in metric_names(t["expr"])} == {
        "hoofhearted_culprit_info", "hoofhearted_culprit_cpu_usage_cores", "hoofhearted_culprit_processes",
        "hoofhearted_culprit_memory_bytes"}
    culprit = next(p for p in second if p["type"] == "stat")
    assert "{{name}}" in culprit["targets"][0]["legendFormat"] and "{{user}}" in culprit["targets"][0]["legendFormat"]
    assert 'rank="1"' in culprit["targets"][0]["expr"] and "hoofhearted_culprit_info" in culprit["targets"][0]["expr"]
    # Heat, fans and the culprits' shares: full width, one under the other, on a shared crosshair.
    series = {p["title"]: p for p in home["panels"] if p["type"] == "timeseries" and p["gridPos"]["w"] >= 20}
    assert {"Temperatures", "Fans", "CPU by process (stacked)", "GPU$gpu by process (stacked)"} <= set(series)
    for title in ("CPU by process (stacked)", "GPU$gpu by process (stacked)"):
        assert series[title]["fieldConfig"]["defaults"]["custom"]["stacking"]["mode"] == "normal"
    # per-process CPU from the counters; GPU shares stacked per GPU, never across GPUs
    assert "rate(hoofhearted_process_cpu_seconds_total" in series["CPU by process (stacked)"]["targets"][0]["expr"]
    assert series["GPU$gpu by process (stacked)"]["repeat"] == "gpu"
    assert home["graphTooltip"] == 1
    names = {a["name"] for a in home["annotations"]["list"]}
    assert {"Alerts", "New top processes"} <= names


def test_metric_name_parser():
    assert metric_names('sum by (instance) (rate(a_total{x="y{z}"}[5m])) / on(i) group_left b offset 1m') == {
        "a_total", "b"}
    assert metric_names('topk by (instance) (1, c) or vector(0) unless d == bool 1') == {"c", "d"}
    assert metric_names("label_values(e{instance=~\"$instance\"}, gpu)") == {"e"}
    assert metric_names("time() - f") == {"f"}


# What Prometheus and Alertmanager export about themselves, read by the monitoring alerts.
SELF_METRICS = {"prometheus_notifications_errors_total", "prometheus_rule_evaluation_failures_total",
                "alertmanager_notifications_failed_total"}


def test_every_metric_a_dashboard_or_rule_reads_is_in_the_metric_table_or_recorded():
    """A renamed family breaks the build, not a panel or an alert: every metric a panel, variable,
    annotation, recording rule, alert or alert message reads is in README.md's metric table
    (generated from what the collectors emit, tests/metric_table.py) or is a recording rule."""
    table = readme_metric_names()
    assert len(table) > 50
    known = table | recorded_names() | SYNTHETIC | SELF_METRICS
    missing = {}
    for where, expr in [(qid, expr) for qid, _, expr in ALL_QUERIES] + rule_queries():
        for name in sorted(metric_names(expr) - known):
            missing.setdefault(name, where)
    assert not missing, f"not in README.md's metric table or the recording rules: {missing}"


def test_a_renamed_family_is_caught():
    """The check above, fed a query with a family that no longer exists."""
    known = readme_metric_names() | recorded_names()
    assert metric_names("rate(hoofhearted_process_cpu_seconds_totl[5m])") - known == \
        {"hoofhearted_process_cpu_seconds_totl"}
    assert len(rule_queries()) > 60


def test_tiles_and_tables_are_instant_and_top_k_graphs_rank_over_the_range():
    """A "hottest" or "top" tile lists what is true now, not every series that was on top at some point
    of the range; a top-k graph keeps the same k series from left to right."""
    for name, dash in DASHBOARDS.items():
        for p in walk(dash["panels"]):
            for t in p.get("targets", []):
                if "expr" not in t:
                    continue
                where = (name, p["title"], t["refId"])
                if p["type"] in ("stat", "table"):
                    assert t.get("instant") is True and t.get("range") is False, where
                elif re.search(r"\b(topk|bottomk)\b", t["expr"]):
                    assert "@ end()" in t["expr"], f"{where}: top-k per step in a graph"


def test_prometheus_own_series_are_filtered_by_job():
    for qid, kind, expr in ALL_QUERIES:
        for m in re.finditer(r"\b(up|scrape_\w+|ALERTS)\{([^}]*)\}", expr):
            assert 'job="hoofhearted"' in m.group(2), f"{qid}: {m.group(0)}"
        assert not re.search(r"\b(up|scrape_\w+|ALERTS)\b(?!\{)", expr), f"{qid}: unfiltered in {expr}"


def hardware_panels():
    """(dashboard, panel) whose every query reads only temperatures, fans or GPUs."""
    kinds = re.compile(r"^(hoofhearted_(temperature|fan|gpu)_|chip_fan:|instance:hoofhearted_(gpu_|fan_))")
    for name, dash in DASHBOARDS.items():
        for p in walk(dash["panels"]):
            exprs = [t["expr"] for t in p.get("targets", []) if "expr" in t]
            names = {n for e in exprs for n in metric_names(e)}
            if names and all(kinds.match(n) for n in names) and not any("vector(0)" in e for e in exprs):
                yield name, p


def test_panels_for_hardware_a_box_may_lack_say_why_they_are_empty():
    found = list(hardware_panels())
    assert len(found) > 15
    for name, p in found:
        text = p["fieldConfig"]["defaults"].get("noValue")
        assert text, f"{name}: {p['title']!r} shows nothing on a box without the hardware"
    home = {p["title"]: p for p in walk(DASHBOARDS["home"]["panels"])}
    for title in ("Temperatures", "Hottest sensor"):
        assert "virtual machine" in home[title]["fieldConfig"]["defaults"]["noValue"]
    assert "BMC" in home["Fans"]["fieldConfig"]["defaults"]["noValue"]
    sensors = home["Sensor readings"]
    assert sensors["targets"][0]["expr"].startswith("hoofhearted_sensors{")
    assert sensors["fieldConfig"]["defaults"]["mappings"][0]["options"]["0"]["text"] == "none"


def test_fleet_links_each_host_to_its_home_dashboard_and_gpu_panels_repeat():
    table = next(p for p in DASHBOARDS["fleet"]["panels"] if p["type"] == "table")
    (host,) = [o for o in table["fieldConfig"]["overrides"] if o["matcher"]["options"] == "Host"]
    (link,) = host["properties"][0]["value"]
    assert link["url"] == "/d/hoofhearted-home/hoofhearted?var-instance=${__value.raw}&${__url_time_range}"
    rows = [p for p in DASHBOARDS["gpu"]["panels"] if p["type"] == "row"]
    assert rows[0]["repeat"] == "gpu" and rows[0]["title"] == "GPU $gpu"
    with open(os.path.join(ROOT, "grafana", "provisioning", "datasources", "hoofhearted.yml")) as f:
        (prom,) = [d for d in yaml.safe_load(f)["datasources"] if d["type"] == "prometheus"]
    assert prom["jsonData"]["timeInterval"] == "15s"


def test_provisioning_matches_the_compose_mounts():
    grafana = compose()["services"]["grafana"]
    mounts = {v["source"]: v["target"] for v in grafana["volumes"] if isinstance(v, dict)}
    with open(os.path.join(ROOT, "grafana", "provisioning", "dashboards", "hoofhearted.yml")) as f:
        provider = yaml.safe_load(f)["providers"][0]
    assert provider["type"] == "file"
    assert mounts["./grafana/dashboards"] == provider["options"]["path"]
    assert mounts["./grafana/provisioning"] == "/etc/grafana/provisioning"
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home == provider["options"]["path"] + "/home.json"


# -- against a real Prometheus -------------------------------------------------------------

@pytest.fixture(scope="module")
def stack():
    prom = need_tool("prometheus")
    s = Stack(prom)
    yield s
    s.stop()


def _series(stack, kind, expr):
    """The query's series; an empty answer is asked again for a few seconds (the stack is warm,
    but a per-process series can be between refreshes). A PromQL error fails at once."""
    deadline = time.monotonic() + 3
    while True:
        result = stack.prom.run(kind, expr)
        if result or time.monotonic() >= deadline:
            return result
        time.sleep(0.5)


@pytest.mark.slow
@pytest.mark.parametrize("qid,kind,expr", ALL_QUERIES, ids=[q[0] for q in ALL_QUERIES])
def test_query_runs_and_returns_series(stack, qid, kind, expr):
    expr = substitute(expr, HOSTS)
    if kind == "annotation":  # events: valid is enough, empty is normal
        stack.prom.range(expr)
        return
    result = _series(stack, kind, expr)
    if not result and qid in EMPTY_WHEN_HEALTHY:
        return  # "all up", "no failure": the panel's no-data text says so
    assert result, f"{qid}: no series for {expr}"


# Panels that list only what is wrong, empty on a healthy stack, and say so in their no-data text.
EMPTY_WHEN_HEALTHY = {f"{d['uid']}:{p['title']}:{t['refId']}" for d in DASHBOARDS.values() for p in walk(d["panels"])
                      for t in p.get("targets", []) if p.get("fieldConfig", {}).get("defaults", {}).get("noValue")
                      and re.search(r"== [01]\b|== 0\)", t.get("expr", ""))}


def test_panels_empty_when_healthy_are_the_problem_lists():
    assert {q.split(":", 1)[1] for q in EMPTY_WHEN_HEALTHY} == {
        "Hosts down:A", "Refresh escalated:A", "Failing collectors:A", "BMCs not answering:A", "Suspected miners:A"}


# The fleet table and the "... per host" graphs: one row (series) per host.
FLEET_PER_HOST = [(qid, kind, expr) for qid, kind, expr in queries(DASHBOARDS["fleet"])
                  if qid.split(":")[1] == "Hosts, hottest first" or "per host" in qid.split(":")[1]]


@pytest.mark.slow
@pytest.mark.parametrize("qid,kind,expr", FLEET_PER_HOST, ids=[q[0] for q in FLEET_PER_HOST])
def test_fleet_queries_return_one_row_per_host(stack, qid, kind, expr):
    expr = substitute(expr, HOSTS)
    result = _series(stack, kind, expr)
    hosts = [s["metric"].get("instance") for s in result]
    assert sorted(hosts) == sorted(HOSTS), f"{qid}: rows {hosts}"


@pytest.mark.slow
def test_live_row_reads_what_the_exporter_pushes(stack):
    """Every Live panel's channel and fields are in what host-a's exporter really pushed."""
    parse_line = line_protocol_parser()
    assert stack.receiver.requests, "host-a never pushed to Grafana Live"
    pushed = {}
    for _, path, headers, body in stack.receiver.requests:
        assert path == "/api/live/push/hoofhearted"
        assert headers["Authorization"] == "Bearer test-token"
        for text in body.splitlines():
            point = parse_line(text)
            pushed.setdefault(point["measurement"], set()).update(point["fields"])
    panels = list(live_targets(DASHBOARDS["home"]))
    channels = set()
    for title, t in panels:
        measurement = t["channel"].removeprefix("stream/hoofhearted/")
        channels.add(measurement)
        assert measurement in pushed, f"{title}: nothing pushed as {measurement!r} (pushed: {sorted(pushed)})"
        wanted = set(t.get("filter", {}).get("fields", [])) - {"time", "labels"}
        assert wanted <= pushed[measurement], f"{title}: fields {wanted - pushed[measurement]} never pushed"
    assert channels == {"temperature", "fan", "cpu", "gpu", "culprit"}


@pytest.mark.slow
def test_fleet_table_sorts_by_heat_and_filters_one_host(stack):
    table = next(p for p in DASHBOARDS["fleet"]["panels"] if p["type"] == "table")
    assert table["options"]["sortBy"] == [{"desc": True, "displayName": "Hottest sensor"}]
    hottest = table["targets"][0]["expr"]
    one = stack.prom.instant(substitute(hottest, ["host-b"]))
    assert [s["metric"]["instance"] for s in one] == ["host-b"]
    # Same fixture sensors everywhere: the hottest is the 57 C Wi-Fi chip on every host.
    assert {float(s["value"][1]) for s in stack.prom.instant(substitute(hottest, HOSTS))} == {57.0}


# -- 200 hosts ----------------------------------------------------------------------------------

FLEET_HOSTS = 200
# The most series each query may return with every one of 200 hosts selected (fleet-wide boards),
# or with one host selected (host boards), by (dashboard, panel title, refId); "*" for every refId.
ONE_PER_HOST = FLEET_HOSTS
INTENDED = {
    ("fleet", "Hosts, hottest first", "*"): ONE_PER_HOST,
    ("fleet", "Hosts reporting", "*"): 1, ("fleet", "Hosts down", "*"): 1, ("fleet", "Alerts firing", "*"): 1,
    ("fleet", "GPUs", "*"): 1, ("fleet", "Busiest culprit in the fleet", "*"): 1,
    ("fleet", "Hottest reading per host (sensors and GPUs)", "*"): 10,
    ("fleet", "Fastest fan per host (share of max)", "*"): 10, ("fleet", "CPU busy per host", "*"): 10,
    ("fleet", "Busiest GPU per host", "*"): 10,
    ("exporter", "Hosts down", "*"): ONE_PER_HOST, ("exporter", "Refresh escalated", "*"): ONE_PER_HOST,
    ("exporter", "Versions", "*"): 5, ("exporter", "Failing collectors", "*"): ONE_PER_HOST,
    ("exporter", "BMCs not answering", "*"): ONE_PER_HOST,
    ("exporter", "Refresh duration (slowest 10)", "*"): 10, ("exporter", "Refresh interval (shortest 10: escalated)", "*"): 10,
    ("exporter", "Data age (oldest 10)", "*"): 10, ("exporter", "Scrape latency (slowest 10)", "*"): 10,
    ("exporter", "Series per scrape (largest 10)", "*"): 10, ("exporter", "Grafana Live pushes", "*"): 3,
    ("home", "Hottest sensor", "*"): 1, ("home", "Closest to its max", "*"): 1, ("home", "CPU busy", "*"): 1,
    ("home", "Active alerts", "*"): 1, ("home", "Top culprit", "*"): 1, ("home", "Verdict: top culprits", "*"): 3,
    ("home", "Sensor readings", "*"): 2, ("home", "CPU by process (stacked)", "A"): 10,
    ("home", "CPU by process (stacked)", "B"): 1,
    ("processes", "Top by CPU", "A"): 10, ("processes", "Top by memory", "A"): 10,
    ("processes", "CPU by process (stacked)", "*"): 10, ("processes", "Memory by process", "*"): 10,
}
HOST_BOARD_LIMIT = 60     # any other query of a host board: one host's series of a kind, a readable legend


@pytest.fixture(scope="module")
def fleet():
    sim = FleetSim(need_tool("prometheus"), hosts=FLEET_HOSTS)
    yield sim
    sim.stop()


def fleet_queries():
    out = []
    for name, dash in DASHBOARDS.items():
        for p in walk(dash["panels"]):
            for t in p.get("targets", []):
                if "expr" in t:
                    out.append((name, p["title"], t["refId"], "table" if t.get("instant") else "range", t["expr"]))
    return out


@pytest.mark.slow
def test_every_panel_returns_at_most_its_intended_series_at_200_hosts(fleet):
    """Fleet-wide boards with all 200 hosts selected, host boards with one: tiles stay single, graphs
    stay at their top 10, tables at one row per host."""
    over, empty, counted = [], [], {}
    for name, title, ref, kind, expr in fleet_queries():
        fleet_wide = name in ("fleet", "exporter")
        q = expr
        for var, value in {**BUILTINS, "$__rate_interval": "20s"}.items():
            q = q.replace(var, value)
        q = q.replace("$instance", ".*" if fleet_wide else "host-007").replace("$gpu", ".*")
        result = fleet.prom.run(kind, q)
        limit = INTENDED.get((name, title, ref), INTENDED.get((name, title, "*")))
        if limit is None:
            assert not fleet_wide, f"{name}: {title!r} {ref} has no intended series count"
            limit = HOST_BOARD_LIMIT
        counted[(name, title, ref)] = len(result)
        if len(result) > limit:
            over.append(f"{name}: {title!r} {ref}: {len(result)} series, intended at most {limit}")
    assert not over, "\n".join(over)
    # the simulation is large enough to tell: the fleet table really has a row per host, and the
    # graphs had more candidates than they show
    assert counted[("fleet", "Hosts, hottest first", "A")] == FLEET_HOSTS
    assert counted[("fleet", "CPU busy per host", "A")] == 10
    assert counted[("home", "CPU by process (stacked)", "A")] == 10
    # only the failing collectors: the simulation fails one on every 20th host
    assert counted[("exporter", "Failing collectors", "A")] == FLEET_HOSTS // 20
    assert len(fleet.prom.instant('count by (instance) (hoofhearted_process_cpu_seconds_total{instance="host-007"})')) == 1
