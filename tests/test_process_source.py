"""The /proc process reader on the upstream procfs fixture tree and on small trees built here."""
import os

import pytest

from exporter.sources import processes
from exporter.sources.processes import Scanner, UserNames, owner_from_cgroup
from conftest import PROCFS_FIXTURE
from proctree import CLK_TCK, PAGE_SIZE, Tree, passwd


@pytest.fixture
def fixture_table(tmp_path):
    rootfs = passwd(tmp_path, {1000: "alice"})
    return Scanner(PROCFS_FIXTURE, rootfs).scan(now=0.0)


def test_fixture_tree_processes(fixture_table):
    t = fixture_table
    # 26233 (cmdline+schedstat), 26234 (maps), 26235 (status) are partial directories: skipped
    assert sorted(t.pids) == [584, 26231, 26232, 27079]
    vim = t.procs[26231]
    assert (vim.name, vim.state, vim.ppid) == ("vim", "R", 5392)
    assert vim.cpu_seconds == pytest.approx((1677 + 44) / CLK_TCK)
    assert vim.rss_bytes == 1981 * PAGE_SIZE
    assert vim.threads == 1
    assert vim.starttime == 82375
    assert (vim.uid, vim.user, vim.owner, vim.exe) == (1000, "alice", "", "vim")
    assert t.boot_time == 1418183276
    assert t.start_time(vim) == pytest.approx(1418183276 + 82375 / CLK_TCK)
    assert t.uptime is None and t.age(vim) is None      # the fixture has no uptime file


def test_fixture_tricky_comm_and_kernel_thread(fixture_table):
    odd = fixture_table.procs[584]
    # the stat field is "((a b ) ( c d) )": comm is what lies between the first "(" and the LAST ")"
    assert odd.name == "(a b ) ( c d) "
    assert (odd.state, odd.ppid, odd.starttime, odd.rss_bytes) == ("R", 28378, 10839175, 155 * PAGE_SIZE)
    kthread = fixture_table.procs[26232]
    assert (kthread.name, kthread.state, kthread.cpu_seconds, kthread.rss_bytes) == ("ata_sff", "S", 0.0, 0)
    # no status file: the user comes from the owner of the /proc/<pid> directory
    assert kthread.uid == os.stat(os.path.join(PROCFS_FIXTURE, "26232")).st_uid
    assert kthread.exe == ""
    threaded = fixture_table.procs[27079]
    assert (threaded.name, threaded.threads) == ("pthread_load", 5)
    assert threaded.cpu_seconds == pytest.approx((58125 + 15) / CLK_TCK)


def test_fixture_cmdline(fixture_table, tmp_path):
    s = Scanner(PROCFS_FIXTURE, str(tmp_path))
    t = s.scan()
    assert s.cmdline(t.procs[26231]) == ["vim", "test.go", "+10"]
    assert s.cmdline(t.procs[26232]) == []          # kernel thread


def test_vanished_and_unreadable_processes_are_skipped(tmp_path):
    tree = Tree(tmp_path / "proc")
    tree.proc(100, "alive", cpu_seconds=1.0)
    tree.proc(101, "gone", cpu_seconds=1.0)
    os.makedirs(tmp_path / "proc" / "102")                     # listed, but no stat: exited mid-scan
    os.makedirs(tmp_path / "proc" / "103" / "stat")            # stat cannot be read
    (tmp_path / "proc" / "104").mkdir()
    (tmp_path / "proc" / "104" / "stat").write_text("104 (trunc")   # cut short
    s = Scanner(tree.root, str(tmp_path))
    assert sorted(s.scan().pids) == [100, 101]
    tree.exit(101)
    assert sorted(s.scan().pids) == [100]


def test_unchanged_process_is_not_parsed_again(tmp_path):
    tree = Tree(tmp_path / "proc", uptime=500.0)
    passwd(tmp_path, {1000: "alice", 1001: "bob"})
    tree.proc(100, "app", uid=1000, cpu_seconds=2.0, start_seconds=10.0)
    s = Scanner(tree.root, str(tmp_path))
    first = s.scan().procs[100]
    assert first.user == "alice"
    # identity is read once per process: a changed status is not looked at while stat is unchanged
    tree.proc(100, "app", uid=1001, cpu_seconds=2.0, start_seconds=10.0)
    second = s.scan().procs[100]
    assert second is first
    # CPU moved: a new Proc, same identity
    tree.proc(100, "app", uid=1001, cpu_seconds=3.0, start_seconds=10.0)
    third = s.scan().procs[100]
    assert third is not first and third.ident is first.ident
    assert third.cpu_seconds == pytest.approx(3.0) and third.user == "alice"
    # comm changed (an exec): identity read again
    tree.proc(100, "app2", uid=1001, cpu_seconds=3.0, start_seconds=10.0)
    assert s.scan().procs[100].user == "bob"


def test_pid_reuse_is_a_new_process(tmp_path):
    tree = Tree(tmp_path / "proc", uptime=500.0)
    passwd(tmp_path, {1000: "alice", 1001: "bob"})
    tree.proc(100, "app", uid=1000, start_seconds=10.0)
    s = Scanner(tree.root, str(tmp_path))
    a = s.scan().procs[100]
    tree.proc(100, "app", uid=1001, start_seconds=400.0)
    b = s.scan().procs[100]
    assert a.key != b.key and (a.user, b.user) == ("alice", "bob")


def test_young_process_identity_is_read_again(tmp_path):
    # a fork that is about to setuid and move cgroup: read at age 0.5 s, read again next pass
    tree = Tree(tmp_path / "proc", uptime=100.5)
    passwd(tmp_path, {0: "root", 1000: "alice"})
    tree.proc(100, "nginx", uid=0, start_seconds=100.0)
    s = Scanner(tree.root, str(tmp_path))
    assert s.scan().procs[100].user == "root"
    tree.proc(100, "nginx", uid=1000, start_seconds=100.0, cgroup="0::/system.slice/nginx.service\n")
    tree.set_uptime(102.5)
    p = s.scan().procs[100]
    assert (p.user, p.owner) == ("alice", "nginx.service")
    tree.proc(100, "nginx", uid=0, start_seconds=100.0)
    assert s.scan().procs[100].user == "alice"      # settled now: kept for the process's life


def test_shared_scanner_reuses_a_recent_pass(tmp_path):
    tree = Tree(tmp_path / "proc")
    tree.proc(100, "a")
    s = processes.shared(tree.root, str(tmp_path))
    assert processes.shared(tree.root, str(tmp_path)) is s
    t1 = s.scan(now=10.0, max_age=0.5)
    tree.proc(101, "b")
    assert s.scan(now=10.4, max_age=0.5) is t1          # another reader in the same tier
    t2 = s.scan(now=10.6, max_age=0.5)
    assert t2 is not t1 and sorted(t2.pids) == [100, 101]
    assert t2.when == 10.6


def test_user_names_fall_back_to_the_number(tmp_path):
    names = UserNames(passwd(tmp_path / "host", {1000: "alice"}))
    assert names(1000) == "alice"
    assert names(4242) == "4242"
    # a rootfs without a passwd: numbers, not the names of the machine the exporter runs in
    assert UserNames(str(tmp_path / "empty"))(0) == "0"


C64 = "3f2a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8"


@pytest.mark.parametrize("text,owner", [
    ("0::/\n", ""),
    ("0::/init.scope\n", ""),
    (f"0::/system.slice/docker-{C64}.scope\n", "container/3f2a1b2c3d4e"),
    (f"12:pids:/docker/{C64}\n11:memory:/docker/{C64}\n1:name=systemd:/docker/{C64}\n0::/\n",
     "container/3f2a1b2c3d4e"),
    (f"0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod1f4c8a2e_55b1_4c3d_9e8f_0a1b2c3d4e5f"
     f".slice/cri-containerd-{C64}.scope\n", "pod/1f4c8a2e-55b1-4c3d-9e8f-0a1b2c3d4e5f"),
    (f"11:cpu:/kubepods/burstable/pod1f4c8a2e-55b1-4c3d-9e8f-0a1b2c3d4e5f/{C64}\n",
     "pod/1f4c8a2e-55b1-4c3d-9e8f-0a1b2c3d4e5f"),
    (f"0::/machine.slice/libpod-{C64}.scope/container\n", "container/3f2a1b2c3d4e"),
    (f"0::/system.slice/crio-{C64}.scope\n", "container/3f2a1b2c3d4e"),
    ("0::/system.slice/nginx.service\n", "nginx.service"),
    ("0::/user.slice/user-1000.slice/session-3.scope\n", "session-3.scope"),
    ("0::/user.slice/user-1000.slice/user@1000.service/app.slice/app-firefox-1234.scope\n", "app-firefox-1234.scope"),
    ("9:name=systemd:/system.slice/cron.service\n4:memory:/system.slice/cron.service\n0::/\n", "cron.service"),
    ("4:memory:/process_api/98157d7619194191ec584be6927bc07a\n0::/\n", ""),
    ("0::/lxc.payload.web1/system.slice/nginx.service\n", "lxc/web1"),
])
def test_owner_from_cgroup(text, owner):
    assert owner_from_cgroup(text) == owner


def test_owner_read_from_the_process(tmp_path):
    tree = Tree(tmp_path / "proc")
    tree.proc(100, "app", cgroup=f"0::/system.slice/docker-{C64}.scope\n")
    tree.proc(101, "cron", cgroup="0::/system.slice/cron.service\n")
    tree.proc(102, "noperm", cgroup=None)
    t = Scanner(tree.root, str(tmp_path)).scan()
    assert [t.procs[p].owner for p in (100, 101, 102)] == ["container/3f2a1b2c3d4e", "cron.service", ""]


def test_real_proc_sees_this_process():
    t = Scanner().scan()
    me = t.procs[os.getpid()]
    with open(f"/proc/{os.getpid()}/stat", "rb") as f:
        fields = f.read().rpartition(b")")[2].split()
    assert me.starttime == int(fields[19])
    assert me.uid == os.geteuid()
    assert me.threads == int(fields[17]) == len(os.listdir(f"/proc/{os.getpid()}/task"))
    assert me.rss_bytes > 1_000_000           # changes with every allocation, the scan's own too
    with open("/proc/uptime") as f:
        uptime = float(f.read().split()[0])
    assert t.age(me) == pytest.approx(uptime - int(fields[19]) / CLK_TCK, abs=1.0)
    assert 1 in t.procs                 # init
    assert any(p.ppid == 2 or p.pid == 2 for p in t.procs.values())   # kernel threads are processes too
