"""The README's metric table, derived from what the collectors really emit.

    .venv/bin/python tests/metric_table.py     # print the table for README.md

Families come from every registered collector run in-process on the fixture trees (the GPU
collectors on the fake NVML), each mapped to its collector's default tier; the scrape-time
families of the scheduler are tier "scrape"; the verdict's and the Live sink's, computed after the
refreshes at most once or twice per critical interval, are tier "critical".
"""
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)

UNITS = ("celsius", "bytes", "ratio", "watts", "joules", "rpm", "hertz", "seconds", "cores")
SCRAPE_TIER = "scrape"


def unit_of(name, kind):
    base = name[:-len("_total")] if kind == "counter" and name.endswith("_total") else name
    if base.endswith("_info"):
        return "info"
    if base.endswith("_bytes_per_second"):
        return "bytes/s"
    for u in UNITS:
        if base.endswith("_" + u):
            return u
    return ""


def exposed_name(fam):
    return fam.name + "_total" if fam.type == "counter" else fam.name


def rows_from_families(pairs):
    """pairs: [(family, tier)] -> {name: (type, unit, labels, tier, help)}."""
    out = {}
    for fam, tier in pairs:
        name = exposed_name(fam)
        labels = set()
        for s in fam.samples:
            labels.update(s.labels)
        prev = out.get(name)
        if prev:
            labels |= set(prev[2].split(", ")) - {""}
            tier = prev[3]      # a family several collectors feed (hwmon and BMC fans): the first one's tier
        out[name] = (fam.type, unit_of(name, fam.type), ", ".join(sorted(labels)), tier,
                     fam.documentation)
    return out


def collect_all(tmp):
    """Every registered collector on fixture data, refreshed twice so rates exist."""
    from fixture_box import box_collectors, box_stage_families, refresh_twice
    from exporter.config import defaults
    from exporter.scheduler import Scheduler

    collectors, cfg = box_collectors(tmp)
    refresh_twice(collectors, cfg["paths"]["procfs"])
    pairs = []
    for c in collectors:
        tier = cfg["collectors"][c.name]["tier"]
        for fam in c.families:
            if fam.samples:
                pairs.append((fam, tier))
    for fam in box_stage_families(collectors, cfg):   # the verdict and Live: at the critical interval
        if fam.samples:
            pairs.append((fam, "critical"))
    sched = Scheduler(collectors, defaults())
    for job in sched.jobs:
        job.runs, job.success, job.duration, job.last_success_wall = 1, True, 0.001, 1.0
    for fam in sched.meta_families(0.0):
        pairs.append((fam, SCRAPE_TIER))
    return rows_from_families(pairs)


def markdown(rows):
    lines = ["| metric | type | unit | labels | tier | meaning |", "|---|---|---|---|---|---|"]
    for name in sorted(rows):
        kind, unit, labels, tier, doc = rows[name]
        lines.append(f"| `{name}` | {kind} | {unit} | {labels} | {tier} | {doc} |")
    return "\n".join(lines) + "\n"


def readme_rows(text):
    out = {}
    for line in text.splitlines():
        if line.startswith("| `hoofhearted_"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            out[cells[0].strip("`")] = tuple(cells[1:6])
    return out


if __name__ == "__main__":
    import tempfile
    with tempfile.TemporaryDirectory() as tmp:
        sys.stdout.write(markdown(collect_all(tmp)))
