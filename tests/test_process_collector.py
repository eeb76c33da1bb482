"""The process collector on procfs trees built here, driven by an injected clock."""
import os
import random
import shutil
import tempfile

import pytest

from exporter import config as cfgmod, render
from exporter.collectors import DEFAULT_TIERS, build
from exporter.collectors.process import ProcessCollector, load_miner_patterns
from exporter.sources.processes import Scanner
from conftest import parse_exposition, sample
from proctree import Tree, passwd

MiB = 1024 * 1024
C64 = "3f2a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8"


def collector(tree, tmp_path, **kw):
    rootfs = passwd(tmp_path, {0: "root", 1000: "alice", 1001: "bob"})
    kw.setdefault("group_min_memory_bytes", 64 * MiB)
    return ProcessCollector(scanner=Scanner(tree.root, rootfs), **kw)


def refresh(c, tree, now):
    """One refresh at ``now``; the tree's uptime moves with the clock (boot at now=-1000)."""
    tree.set_uptime(1000.0 + now)
    return parse_exposition(render.text(c.update(now)).decode())


def series(parsed, name):
    return {labels: v for (n, labels), v in parsed.items() if n == name}


def per_process(parsed, name="hoofhearted_process_cpu_usage_cores"):
    return {dict(labels)["pid"]: v for labels, v in series(parsed, name).items()}


def val(parsed, metric, labels):
    return parsed.get((metric, frozenset(labels.items())))


def group(parsed, name, g):
    return sample(parsed, f"hoofhearted_process_group_{name}", group=g)


def test_cores_exact_against_the_clock(tmp_path):
    tree = Tree(tmp_path / "proc")
    tree.proc(10, "burn", uid=1000, cpu_seconds=10.0, rss_bytes=8 * MiB, threads=4, start_seconds=990.0,
              cgroup=f"0::/system.slice/docker-{C64}.scope\n")
    tree.proc(11, "idle", uid=1001, cpu_seconds=1.0, rss_bytes=4 * MiB, start_seconds=500.0)
    c = collector(tree, tmp_path)
    m = refresh(c, tree, 0.0)
    # first sight: the lifetime average (10 s of CPU over 10 s of life; 1 s over 500 s)
    labels = dict(pid="10", name="burn", user="alice", owner="container/3f2a1b2c3d4e")
    assert val(m, "hoofhearted_process_cpu_usage_cores", labels) == pytest.approx(1.0)
    assert val(m, "hoofhearted_process_cpu_usage_cores",
               dict(pid="11", name="idle", user="bob", owner="")) == pytest.approx(1.0 / 500)
    tree.proc(10, "burn", uid=1000, cpu_seconds=17.0, rss_bytes=9 * MiB, threads=5, start_seconds=990.0)
    tree.proc(11, "idle", uid=1001, cpu_seconds=1.5, rss_bytes=4 * MiB, start_seconds=500.0)
    m = refresh(c, tree, 2.0)
    assert val(m, "hoofhearted_process_cpu_usage_cores", labels) == 3.5
    assert val(m, "hoofhearted_process_resident_memory_bytes", labels) == 9 * MiB
    assert val(m, "hoofhearted_process_threads", labels) == 5
    assert per_process(m)["11"] == 0.25
    m = refresh(c, tree, 6.0)          # nothing ran for 4 s
    # idle: not top by CPU, but top by memory, so their (real) zero cores are there
    assert per_process(m) == {"10": 0.0, "11": 0.0}
    assert group(m, "cpu_usage_cores", "burn") == 0.0
    assert group(m, "cpu_seconds_total", "burn") == 17.0


def test_a_process_too_young_for_a_rate_has_none(tmp_path):
    tree = Tree(tmp_path / "proc")
    tree.proc(10, "new", cpu_seconds=0.1, rss_bytes=MiB, start_seconds=999.9)   # 0.1 s old
    c = collector(tree, tmp_path)
    m = refresh(c, tree, 0.0)
    assert per_process(m) == {}
    assert per_process(m, "hoofhearted_process_resident_memory_bytes") == {"10": MiB}


def test_top_n_by_cpu_and_by_memory_union(tmp_path):
    tree = Tree(tmp_path / "proc")
    spec = {  # pid: (cpu after 2 s, rss MiB)
        1: (0.2, 900), 2: (0.4, 800), 3: (1.6, 10), 4: (2.0, 20), 5: (1.0, 30), 6: (0.0, 1), 7: (0.1, 700),
    }
    for pid in spec:
        tree.proc(pid, f"p{pid}", start_seconds=10.0)
    c = collector(tree, tmp_path, top_n=2)
    refresh(c, tree, 0.0)
    for pid, (cpu, rss) in spec.items():
        tree.proc(pid, f"p{pid}", cpu_seconds=cpu, rss_bytes=rss * MiB, start_seconds=10.0)
    m = refresh(c, tree, 2.0)
    # top 2 by CPU: 4, 3; top 2 by memory: 1, 2
    assert per_process(m) == {"4": 1.0, "3": 0.8, "1": 0.1, "2": 0.2}
    assert set(per_process(m, "hoofhearted_process_threads")) == {"1", "2", "3", "4"}
    # every process is in a group; names are unique here, so each one is its own
    assert sum(v for k, v in series(m, "hoofhearted_process_group_processes").items()) == 7


def test_exit_removes_series_and_the_group_keeps_its_seconds(tmp_path):
    tree = Tree(tmp_path / "proc")
    tree.proc(1, "shell", cpu_seconds=1.0, start_seconds=10.0)
    tree.proc(10, "burn", cpu_seconds=0.0, start_seconds=999.0)
    tree.proc(11, "burn", cpu_seconds=0.0, start_seconds=999.0)
    c = collector(tree, tmp_path)
    refresh(c, tree, 0.0)
    tree.proc(10, "burn", cpu_seconds=2.0, start_seconds=999.0)
    tree.proc(11, "burn", cpu_seconds=1.0, start_seconds=999.0)
    m = refresh(c, tree, 2.0)
    assert group(m, "cpu_seconds_total", "burn") == 3.0
    assert group(m, "cpu_usage_cores", "burn") == 1.5
    assert group(m, "processes", "burn") == 2
    # the shell was in the top at first sight (lifetime average): it keeps its series for a while
    assert per_process(m) == {"1": 0.0, "10": 1.0, "11": 0.5}
    tree.exit(10)
    tree.proc(11, "burn", cpu_seconds=1.5, start_seconds=999.0)
    m = refresh(c, tree, 4.0)
    assert set(per_process(m)) == {"1", "11"}
    assert "10" not in per_process(m, "hoofhearted_process_resident_memory_bytes")
    assert group(m, "cpu_seconds_total", "burn") == 3.5       # pid 10's 2 s stay in the group
    assert group(m, "processes", "burn") == 1
    assert sample(m, "hoofhearted_processes_exited_total") == 1
    tree.exit(11)
    m = refresh(c, tree, 6.0)
    assert per_process(m) == {"1": 0.0}
    assert group(m, "cpu_seconds_total", "burn") == 3.5
    assert group(m, "processes", "burn") == 0
    assert sample(m, "hoofhearted_processes_exited_total") == 2
    assert sample(m, "hoofhearted_processes_started_total") == 0


def test_started_and_exited_and_states(tmp_path):
    tree = Tree(tmp_path / "proc")
    tree.proc(1, "init", state="S")
    tree.proc(2, "kthreadd", state="S", uid=0)
    tree.proc(3, "run", state="R")
    tree.proc(4, "zombie", state="Z")
    tree.proc(5, "kworker", state="I", uid=0)
    c = collector(tree, tmp_path)
    m = refresh(c, tree, 0.0)
    assert {dict(k)["state"]: v for k, v in series(m, "hoofhearted_processes").items()} == {
        "running": 1, "sleeping": 2, "disk_sleep": 0, "stopped": 0, "zombie": 1, "idle": 1}
    assert sample(m, "hoofhearted_processes_started_total") == 0     # already running when we started
    tree.exit(4)
    tree.proc(6, "new1")
    tree.proc(7, "new2", state="D")
    m = refresh(c, tree, 2.0)
    assert sample(m, "hoofhearted_processes_started_total") == 2
    assert sample(m, "hoofhearted_processes_exited_total") == 1
    assert sample(m, "hoofhearted_processes", state="disk_sleep") == 1
    assert sample(m, "hoofhearted_processes", state="zombie") == 0


def test_group_counter_never_goes_back_when_a_process_changes_group(tmp_path):
    tree = Tree(tmp_path / "proc")
    tree.proc(10, "bash", cpu_seconds=0.0, start_seconds=999.0)
    c = collector(tree, tmp_path, group_hold_seconds=60)
    refresh(c, tree, 0.0)
    tree.proc(10, "bash", cpu_seconds=1.0, start_seconds=999.0)
    m = refresh(c, tree, 2.0)
    assert group(m, "cpu_seconds_total", "bash") == 1.0
    tree.proc(10, "python3", cpu_seconds=3.0, start_seconds=999.0)     # exec
    m = refresh(c, tree, 4.0)
    assert group(m, "cpu_seconds_total", "bash") == 1.0
    assert group(m, "cpu_seconds_total", "python3") == 2.0


@pytest.mark.parametrize("by,expected", [
    ("user", {"alice": 3.0, "bob": 1.0}),
    ("owner", {"container/3f2a1b2c3d4e": 3.0, "none": 1.0}),
])
def test_group_by_user_and_owner(tmp_path, by, expected):
    tree = Tree(tmp_path / "proc")
    docker = f"0::/system.slice/docker-{C64}.scope\n"
    tree.proc(10, "a", uid=1000, start_seconds=999.0, cgroup=docker)
    tree.proc(11, "b", uid=1000, start_seconds=999.0, cgroup=docker)
    tree.proc(12, "c", uid=1001, start_seconds=999.0)
    c = collector(tree, tmp_path, group_by=by)
    refresh(c, tree, 0.0)
    tree.proc(10, "a", uid=1000, cpu_seconds=1.0, start_seconds=999.0, cgroup=docker)
    tree.proc(11, "b", uid=1000, cpu_seconds=2.0, start_seconds=999.0, cgroup=docker)
    tree.proc(12, "c", uid=1001, cpu_seconds=1.0, start_seconds=999.0)
    m = refresh(c, tree, 2.0)
    got = {dict(k)["group"]: v for k, v in series(m, "hoofhearted_process_group_cpu_seconds_total").items()}
    assert got == {**expected, "other": 0.0}


def test_folding_cap_and_stability(tmp_path):
    """max_groups=3: two groups of their own plus "other"; the rule in the collector's docstring."""
    tree = Tree(tmp_path / "proc")
    names = ["a", "b", "c", "d"]
    cpu = dict.fromkeys(names, 0.0)

    last = {}      # each group series' latest value, also of series that ended

    def step(now, rates):
        for n, r in rates.items():
            cpu[n] += r * 2
        for i, n in enumerate(names):
            tree.proc(100 + i, n, cpu_seconds=cpu[n], start_seconds=10.0)
        m = refresh(c, tree, now)
        for labels, v in series(m, "hoofhearted_process_group_cpu_seconds_total").items():
            last[dict(labels)["group"]] = v
        return m

    def own(m):
        return {dict(k)["group"] for k in series(m, "hoofhearted_process_group_cpu_seconds_total")} - {"other"}

    c = collector(tree, tmp_path, max_groups=3, group_min_cpu_cores=0.1, group_hold_seconds=10.0)
    step(0.0, {})
    m = step(2.0, {"a": 1.0, "b": 0.5, "c": 0.2, "d": 0.0})
    assert own(m) == {"a", "b"}                      # hottest first; c waits in "other"
    assert group(m, "processes", "other") == 2
    assert group(m, "cpu_usage_cores", "other") == pytest.approx(0.2)
    other_seen = [group(m, "cpu_seconds_total", "other")]
    # b cools down below the threshold: it keeps its slot for the hold time (10 s), c stays in other
    for now in (4.0, 6.0, 8.0, 10.0):
        m = step(now, {"a": 1.0, "b": 0.05, "c": 0.2})
        assert own(m) == {"a", "b"}
        other_seen.append(group(m, "cpu_seconds_total", "other"))
    # 10 s after b was last hot it gives its slot to c
    m = step(12.0, {"a": 1.0, "b": 0.05, "c": 0.2})
    assert own(m) == {"a", "c"}
    other_seen.append(group(m, "cpu_seconds_total", "other"))
    # c's own counter starts with this refresh's seconds: what it burned while folded is in "other"
    # already, and counting it again would break "every second in exactly one series"
    assert group(m, "cpu_seconds_total", "c") == pytest.approx(0.4)
    m = step(14.0, {"a": 1.0, "b": 0.05, "c": 0.2})
    other_seen.append(group(m, "cpu_seconds_total", "other"))
    assert other_seen == sorted(other_seen)           # "other" never goes backwards
    assert other_seen[-1] - other_seen[-2] == pytest.approx(0.1)    # b's 0.05 cores for 2 s
    # d flares up far hotter than the weakest (c): it has to wait until c has held its slot for 10 s
    m = step(16.0, {"a": 1.0, "c": 0.2, "d": 0.9})
    assert own(m) == {"a", "c"}
    assert group(m, "cpu_usage_cores", "other") == pytest.approx(0.9)
    m = step(20.0, {"a": 1.0, "c": 0.2, "d": 0.9})
    assert own(m) == {"a", "c"}
    m = step(22.0, {"a": 1.0, "c": 0.2, "d": 0.9})
    assert own(m) == {"a", "d"}
    assert group(m, "cpu_seconds_total", "d") == pytest.approx(1.8)
    # every CPU second landed in exactly one group series (b's ended when it lost its slot)
    assert sum(last.values()) == pytest.approx(sum(cpu.values()))


def test_cap_holds_and_no_flapping(tmp_path):
    tree = Tree(tmp_path / "proc")
    c = collector(tree, tmp_path, max_groups=3, group_min_cpu_cores=0.1, group_hold_seconds=10.0)
    cpu = {}

    def step(now, rates):
        for n, r in rates.items():
            cpu[n] = cpu.get(n, 0.0) + r * 2
        for i, n in enumerate(sorted(cpu)):
            tree.proc(100 + i, n, cpu_seconds=cpu[n], start_seconds=10.0)
        m = refresh(c, tree, now)
        return m, {dict(k)["group"] for k in series(m, "hoofhearted_process_group_cpu_seconds_total")} - {"other"}

    step(0.0, {"a": 0, "b": 0, "c": 0})
    m, own = step(2.0, {"a": 1.0, "b": 0.3, "c": 0.2})
    assert own == {"a", "b"}
    # c is hotter than b now, but not twice as hot: no swap, however long
    for now in range(4, 40, 2):
        m, own = step(float(now), {"a": 1.0, "b": 0.3, "c": 0.5})
        assert own == {"a", "b"}
    # c at more than twice b, and b has held its slot for over 10 s: one swap, then stable
    m, own = step(40.0, {"a": 1.0, "b": 0.3, "c": 0.7})
    assert own == {"a", "c"}
    for now in range(42, 60, 2):
        m, own = step(float(now), {"a": 1.0, "b": 0.3, "c": 0.7})
        assert own == {"a", "c"}          # b (3x its threshold) is not twice c (7x): no flapping back
    assert len(series(m, "hoofhearted_process_group_cpu_seconds_total")) == 3


def test_a_real_group_called_other_folds_into_other(tmp_path):
    tree = Tree(tmp_path / "proc")
    tree.proc(10, "other", start_seconds=999.0)
    c = collector(tree, tmp_path)
    refresh(c, tree, 0.0)
    tree.proc(10, "other", cpu_seconds=2.0, start_seconds=999.0)
    m = refresh(c, tree, 2.0)            # parse_exposition fails on a duplicate series
    assert group(m, "cpu_seconds_total", "other") == 2.0
    assert group(m, "processes", "other") == 1


@pytest.fixture
def fast_tmp(tmp_path):
    """A directory in memory when there is one: writing 20,000 small files on a disk is slow."""
    if not os.access("/dev/shm", os.W_OK):
        yield tmp_path
        return
    d = tempfile.mkdtemp(prefix="hoofhearted-test-", dir="/dev/shm")
    yield d
    shutil.rmtree(d, ignore_errors=True)


def test_churn_of_5000_processes_stays_within_the_caps(tmp_path, fast_tmp):
    tree = Tree(os.path.join(fast_tmp, "proc"))
    for pid in range(1, 51):
        tree.proc(pid, f"daemon{pid % 7}", cpu_seconds=1.0, rss_bytes=pid * MiB, start_seconds=10.0)
    c = collector(tree, tmp_path, top_n=10, max_groups=50, group_hold_seconds=30.0)
    rng = random.Random(4)
    live, pid, now, others = [], 1000, 0.0, []
    refresh(c, tree, now)
    for _ in range(10):
        old, live = live, []
        for i in range(500):          # 500 new short-lived processes per refresh, unique names, some hot
            pid += 1
            kw = dict(cpu_seconds=rng.choice([0.0, 0.01, 0.5]), rss_bytes=rng.randint(1, 90) * MiB,
                      start_seconds=999.0 + now)
            if old:
                tree.respawn(old[i], pid, f"job-{pid}", **kw)
            else:
                tree.proc(pid, f"job-{pid}", **kw)
            live.append(pid)
        now += 2.0
        m = refresh(c, tree, now)
        others.append(group(m, "cpu_seconds_total", "other"))
        for name in ("cpu_usage_cores", "resident_memory_bytes", "threads", "cpu_seconds_total"):
            assert len(series(m, f"hoofhearted_process_{name}")) <= 30     # 2 x top_n, plus top_n held
        for name in ("cpu_seconds_total", "cpu_usage_cores", "resident_memory_bytes", "processes"):
            assert len(series(m, f"hoofhearted_process_group_{name}")) <= 50
        assert len(c.groups) <= 50 + 500      # state: held groups plus this refresh's members
        assert len(c.prev) == 550
    assert sample(m, "hoofhearted_processes_started_total") == 5000
    assert sample(m, "hoofhearted_processes_exited_total") == 4500
    assert others == sorted(others)
    tree_groups = len(series(m, "hoofhearted_process_group_processes"))
    assert tree_groups == 50
    for p in live:
        tree.exit(p)
    m = refresh(c, tree, now + 2.0)
    assert len(c.groups) <= 50
    assert len(series(m, "hoofhearted_process_cpu_usage_cores")) <= 30


def test_cmdline_label_only_when_enabled_and_redacted(tmp_path):
    tree = Tree(tmp_path / "proc")
    argv = ["/usr/bin/python3", "train.py", "--password=hunter2", "--data", "/srv/" + "x" * 300]
    tree.proc(10, "python3", cpu_seconds=5.0, rss_bytes=100 * MiB, start_seconds=990.0, cmdline=argv)
    plain = collector(tree, tmp_path)
    m = refresh(plain, tree, 0.0)
    assert all("cmdline" not in dict(k) for k in series(m, "hoofhearted_process_resident_memory_bytes"))
    c = collector(tree, tmp_path, cmdline=True, cmdline_max_length=60)
    m = refresh(c, tree, 0.0)
    (labels,) = series(m, "hoofhearted_process_resident_memory_bytes")
    assert dict(labels)["cmdline"] == "/usr/bin/python3 train.py --password=*** --data /srv/xxxxxxx"
    assert len(dict(labels)["cmdline"]) == 60


def test_miners_by_name_exe_and_stratum(tmp_path):
    tree = Tree(tmp_path / "proc")
    tree.proc(10, "xmrig", uid=1000, start_seconds=999.0)
    tree.proc(11, "kworker", uid=1000, start_seconds=999.0, exe="/tmp/.x/xmrig-6.21")
    tree.proc(12, "python3", uid=1001, start_seconds=999.0)       # busy, talks to a stratum port
    tree.proc(13, "curl", uid=1001, start_seconds=999.0)          # idle, talks to a stratum port: not checked
    tree.proc(14, "nginx", uid=0, start_seconds=999.0)            # busy, talks HTTPS
    for pid, inode, port in ((12, 5551, 3333), (13, 5552, 4444), (14, 5553, 443)):
        fd = os.path.join(tree.root, str(pid), "fd")
        os.makedirs(fd)
        os.symlink(f"socket:[{inode}]", os.path.join(fd, "3"))
        os.symlink("/dev/null", os.path.join(fd, "0"))
        os.makedirs(os.path.join(tree.root, str(pid), "net"))
        with open(os.path.join(tree.root, str(pid), "net", "tcp"), "w") as f:
            f.write("  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  "
                    "timeout inode\n")
            f.write(f"   0: 0100007F:A1B2 0200000A:{port:04X} 01 00000000:00000000 00:00000000 00000000  1000"
                    f"        0 {inode} 1 0000000000000000 20 4 30 10 -1\n")
            f.write(f"   1: 0100007F:A1B3 0200000A:{port:04X} 01 00000000:00000000 00:00000000 00000000  1000"
                    f"        0 9999 1 0000000000000000 20 4 30 10 -1\n")
    c = collector(tree, tmp_path, miners=load_miner_patterns())
    refresh(c, tree, 0.0)
    tree.proc(12, "python3", uid=1001, cpu_seconds=2.0, start_seconds=999.0)
    tree.proc(14, "nginx", uid=0, cpu_seconds=2.0, start_seconds=999.0)
    m = refresh(c, tree, 2.0)
    got = {(dict(k)["pid"], dict(k)["name"], dict(k)["user"], dict(k)["reason"]): v
           for k, v in series(m, "hoofhearted_process_suspected_miner").items()}
    assert got == {("10", "xmrig", "alice", "name"): 1, ("11", "kworker", "alice", "exe"): 1,
                   ("12", "python3", "bob", "stratum"): 1}


def test_miner_list_file_is_configurable(tmp_path):
    own = tmp_path / "miners.txt"
    own.write_text("# ours\nfoo*\n")
    tree = Tree(tmp_path / "proc")
    tree.proc(10, "foobar", start_seconds=999.0)
    tree.proc(11, "xmrig", start_seconds=999.0)
    c = collector(tree, tmp_path, miners=load_miner_patterns(str(own)))
    m = refresh(c, tree, 0.0)
    assert {dict(k)["name"] for k in series(m, "hoofhearted_process_suspected_miner")} == {"foobar"}


def test_create_from_config(tmp_path):
    cfg = cfgmod.defaults()
    assert any(isinstance(c, ProcessCollector) for c in build(cfg))
    cfg["process"]["miner_names_file"] = str(tmp_path / "missing.txt")
    with pytest.raises(cfgmod.ConfigError, match="process.miner_names_file"):
        ProcessCollector.create(cfg)


def test_hot_names_nothing_but_escalates():
    c = ProcessCollector.create(cfgmod.defaults())
    assert c.escalates and DEFAULT_TIERS["process"] == "important" and c.hot({"cpu_busy_ratio": 0.9}) == ()
