"""The top processes' CPU-seconds counters, re-read each critical interval between /proc passes."""
from exporter import config as cfgmod, render
from exporter.collectors import build
from exporter.collectors.process import ProcessCollector
from exporter.collectors.process_cpu import ProcessCPUCollector
from exporter.sources.processes import Scanner, cpu_seconds
from conftest import parse_exposition
from proctree import CLK_TCK, Tree, passwd


def counters(c, now):
    m = parse_exposition(render.text(c.update(now)).decode())
    return {(dict(k)["pid"], dict(k)["name"]): v for (n, k), v in m.items()
            if n == "hoofhearted_process_cpu_seconds_total"}


def setup(tmp_path):
    tree = Tree(tmp_path / "proc")
    tree.proc(10, "burn", cpu_seconds=5.0)
    tree.proc(11, "spin", cpu_seconds=2.0)
    tree.proc(12, "idle", cpu_seconds=0.0)
    procs = ProcessCollector(scanner=Scanner(tree.root, passwd(tmp_path, {1000: "alice"})), top_n=2)
    return tree, procs, ProcessCPUCollector(tree.root, procs)


def test_counters_move_between_process_passes(tmp_path):
    tree, procs, fast = setup(tmp_path)
    assert counters(fast, 0.0) == {}            # before the process collector chose anyone
    procs.update(0.0)
    tree.proc(10, "burn", cpu_seconds=6.0)
    tree.proc(11, "spin", cpu_seconds=2.5)
    procs.update(2.0)
    assert counters(fast, 2.0) == {("10", "burn"): 6.0, ("11", "spin"): 2.5}
    tree.proc(10, "burn", cpu_seconds=7.25)     # a second later, no new pass
    assert counters(fast, 3.0) == {("10", "burn"): 7.25, ("11", "spin"): 2.5}


def test_gone_or_reused_pids_have_no_sample(tmp_path):
    tree, procs, fast = setup(tmp_path)
    procs.update(0.0)
    tree.proc(10, "burn", cpu_seconds=6.0)
    tree.proc(11, "spin", cpu_seconds=2.5)
    procs.update(2.0)
    tree.exit(11)
    tree.respawn(10, 10, "burn", cpu_seconds=0.5, start_seconds=900.0)   # same pid, another process
    assert counters(fast, 3.0) == {}
    new = (10, round(900.0 * CLK_TCK))
    assert cpu_seconds(tree.root, [new, (11, round(10.0 * CLK_TCK))]) == {new: 0.5}


def test_source_reads_each_stat_alone(tmp_path):
    tree = Tree(tmp_path / "proc")
    tree.proc(20, "a b) (c", cpu_seconds=3.0, start_seconds=12.0)
    key = (20, round(12.0 * CLK_TCK))
    assert cpu_seconds(tree.root, [key, (21, 5)]) == {key: 3.0}
    assert cpu_seconds(tree.root, [(20, key[1] + 1)]) == {}
    assert cpu_seconds(str(tmp_path / "nowhere"), [key]) == {}


def test_wired_to_the_process_collector_and_absent_without_it(tmp_path):
    tree = Tree(tmp_path / "proc")
    tree.proc(10, "burn", cpu_seconds=5.0)
    cfg = cfgmod.defaults()
    cfg["paths"].update(procfs=tree.root, sysfs=str(tmp_path / "nosys"), rootfs=str(tmp_path))
    for name, c in cfg["collectors"].items():
        c["enabled"] = name in ("process", "process_cpu")
    built = {c.name: c for c in build(cfg)}
    assert set(built) == {"process", "process_cpu"}
    assert built["process_cpu"].source is built["process"]
    assert cfg["collectors"]["process_cpu"]["tier"] == "critical"
    cfg["collectors"]["process"]["enabled"] = False
    assert [c.name for c in build(cfg)] == []
