"""README stays true: its metric table matches a live /metrics, its config reference the defaults."""
import os
import re
import time

import yaml

from conftest import ROOT, parse_exposition
from exporter.config import defaults_yaml
from fixture_box import EnergyTicker, box_config, bump_stat
from metric_table import SCRAPE_TIER, collect_all, markdown, readme_rows

README = os.path.join(ROOT, "README.md")


def readme():
    with open(README) as f:
        return f.read()


def test_metric_table_matches_what_collectors_emit(tmp_path):
    ours = collect_all(str(tmp_path))
    documented = readme_rows(readme())
    missing = sorted(set(ours) - set(documented))
    extra = sorted(set(documented) - set(ours))
    assert not missing and not extra, (
        f"README metric table is out of date: missing {missing}, not emitted {extra}.\n"
        "Regenerate with: .venv/bin/python tests/metric_table.py")
    for name, (kind, unit, labels, tier, doc) in ours.items():
        assert documented[name] == (kind, unit, labels, tier, doc), name
    assert markdown(ours) in readme()


def test_live_metrics_are_all_in_the_table_and_vice_versa(tmp_path, start_exporter):
    cfg = box_config(str(tmp_path))
    conf = tmp_path / "box.yml"
    fast = {"critical": 0.25, "important": 0.25, "standard": 0.25, "background": 0.5}
    conf.write_text(yaml.safe_dump({"tiers": fast, **{k: cfg[k] for k in ("paths", "gpu", "grafana_live", "bmc")}}))
    exp = start_exporter(f"--config.file={conf}")
    ticker = EnergyTicker(cfg["paths"]["sysfs"])      # RAPL counters move, so power exists
    documented = readme_rows(readme())
    try:
        for i in range(60):  # the box's CPU counters move, so rates exist; a loaded machine needs longer
            bump_stat(os.path.join(cfg["paths"]["procfs"], "stat"), 25)
            time.sleep(0.25)
            if i < 5:
                continue
            live = {}
            for (name, labels) in parse_exposition(exp.scrape()):
                live.setdefault(name, set()).update(k for k, _ in labels)
            families = {re.sub(r"_(bucket|count|sum)$", "", n) for n in live}
            if set(documented) <= families:
                break
    finally:
        ticker.stop()
    assert families - set(documented) == set(), "families on /metrics missing from the README table"
    assert set(documented) - families == set(), "README table rows that a live /metrics does not carry"
    for name, labels in live.items():
        table_labels = {l for l in documented[name][2].split(", ") if l}
        assert labels == table_labels, name


def test_config_reference_is_the_real_defaults():
    text = readme()
    block = re.search(r"<!-- CONFIG -->\n```yaml\n(.*?)```", text, re.S)
    assert block, "README has no configuration reference block"
    assert block.group(1) == defaults_yaml()


def test_scrape_tier_is_only_for_scheduler_families(tmp_path):
    rows = collect_all(str(tmp_path))
    assert {n for n, r in rows.items() if r[3] == SCRAPE_TIER} == {
        "hoofhearted_build_info", "hoofhearted_collector_duration_seconds",
        "hoofhearted_collector_last_success_timestamp_seconds", "hoofhearted_collector_refresh_interval_seconds",
        "hoofhearted_collector_success", "hoofhearted_escalation_active"}
