"""Grafana dashboards and provisioning.

Static: the committed JSON is what grafana/build.py writes, ids and uids are unique, every data
source reference is the provisioned one, every metric a query reads exists in the golden
exposition or the recording rules. Live: every PromQL expression of every panel, variable and
annotation runs on a real Prometheus that scraped three real exporters, and panel and variable
queries return series; the fleet table gets one row per host.
"""
import os
import re
import time

import pytest
import yaml

from conftest import ROOT, need_module, need_tool
from dashboards import (HOSTS, IMPORT, PROVISIONED, SYNTHETIC, Stack, datasource_refs, golden_names, live_targets,
                        load, load_build, metric_names, queries, recorded_names, scrape_time_names, substitute,
                        walk)

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


def test_refresh_5s_by_default_and_1s_selectable():
    for name, dash in DASHBOARDS.items():
        assert dash["refresh"] == "5s", name
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
    assert {"Process", "User", "Owner", "PID", "Cores", "GPU share", "Memory"} <= set(cols.values())
    culprit = next(p for p in second if p["type"] == "stat")
    assert "{{name}}" in culprit["targets"][0]["legendFormat"] and "{{user}}" in culprit["targets"][0]["legendFormat"]
    # Heat, fans and the culprits' shares: full width, one under the other, on a shared crosshair.
    series = {p["title"]: p for p in home["panels"] if p["type"] == "timeseries" and p["gridPos"]["w"] == 24}
    assert {"Temperatures", "Fans", "CPU by process (stacked)", "GPU by process (stacked)"} <= set(series)
    for title in ("CPU by process (stacked)", "GPU by process (stacked)"):
        assert series[title]["fieldConfig"]["defaults"]["custom"]["stacking"]["mode"] == "normal"
    assert home["graphTooltip"] == 1
    names = {a["name"] for a in home["annotations"]["list"]}
    assert {"Alerts", "New top processes"} <= names


def test_metric_name_parser():
    assert metric_names('sum by (instance) (rate(a_total{x="y{z}"}[5m])) / on(i) group_left b offset 1m') == {
        "a_total", "b"}
    assert metric_names('topk by (instance) (1, c) or vector(0) unless d == bool 1') == {"c", "d"}
    assert metric_names("label_values(e{instance=~\"$instance\"}, gpu)") == {"e"}
    assert metric_names("time() - f") == {"f"}


def test_every_metric_a_query_reads_is_in_the_golden_exposition_or_recorded():
    known = golden_names() | scrape_time_names() | recorded_names() | SYNTHETIC
    assert len(known) > len(SYNTHETIC) + 20
    missing = {}
    for qid, kind, expr in ALL_QUERIES:
        for name in sorted(metric_names(expr) - known):
            missing.setdefault(name, qid)
    assert not missing, f"not in tests/golden/*.prom, the scrape-time families or the recording rules: {missing}"


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
    gpu_only = "hoofhearted_gpu_" in expr and not stack.gpu
    deadline = time.monotonic() + (0 if gpu_only else 3)
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
    if not result and "hoofhearted_gpu_" in expr and not stack.gpu:
        pytest.skip("valid PromQL; returning GPU series needs the fake NVML, which the exporter cannot load yet")
    assert result, f"{qid}: no series for {expr}"


# The fleet table and the "... per host" graphs: one row (series) per host.
FLEET_PER_HOST = [(qid, kind, expr) for qid, kind, expr in queries(DASHBOARDS["fleet"])
                  if qid.split(":")[1] == "Hosts, hottest first" or "per host" in qid.split(":")[1]]


@pytest.mark.slow
@pytest.mark.parametrize("qid,kind,expr", FLEET_PER_HOST, ids=[q[0] for q in FLEET_PER_HOST])
def test_fleet_queries_return_one_row_per_host(stack, qid, kind, expr):
    expr = substitute(expr, HOSTS)
    result = _series(stack, kind, expr)
    if not result and "hoofhearted_gpu_" in expr and not stack.gpu:
        pytest.skip("valid PromQL; per-host GPU rows need the fake NVML, which the exporter cannot load yet")
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
