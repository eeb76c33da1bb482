"""DRM fdinfo: the real amdgpu, i915, xe, panfrost and panthor samples, and utilisation from two reads."""
import os
import re
import shutil

import pytest
from prometheus_client import CollectorRegistry

from conftest import FIXTURES, PROCFS_FIXTURE, PROCFS_SYSFS
from exporter.collectors.gpu import GPUProcessCollector
from exporter.sources import fdinfo, processes
from exporter.sources.fdinfo import FdinfoReader, UsageTracker, parse
from proctree import Tree, passwd

SAMPLES = os.path.join(FIXTURES, "fdinfo")
KIB, MIB = 1024, 1024 * 1024


def sample(name):
    with open(os.path.join(SAMPLES, name)) as f:
        return f.read()


AMD = "amdgpu-2024-drm-print-memory-stats.fdinfo"
AMD_OLD = "amdgpu-legacy-memory-keys.rocmi.fdinfo"
I915 = "i915-2022-engines.fdinfo"
XE = "xe-kernel-doc.fdinfo"


def test_amdgpu_keys_and_memory_counted_once():
    c = parse(sample(AMD), pid=7)
    assert (c.pid, c.driver, c.pdev, c.client_id) == (7, "amdgpu", "0000:04:00.0", "30")
    assert c.engines == {"gfx": 39456116802}
    # drm-total-vram, drm-resident-vram and drm-memory-vram are all 544428 KiB: one region, once;
    # drm-shared-vram 13584 KiB belongs to every importer: not this client's
    assert c.memory == {"cpu": 0, "gtt": 22 * MIB, "vram": (544428 - 13584) * KIB}
    assert c.gpu_memory() == (544428 - 13584) * KIB    # device memory only: gtt and cpu are system RAM
    assert c.gpu_memory(apu=True) == (544428 - 13584) * KIB + 22 * MIB   # an APU's memory is GTT too


def test_resident_memory_not_total_and_memory_is_residents_old_name():
    text = ("drm-driver:\tamdgpu\ndrm-client-id:\t5\ndrm-pdev:\t0000:04:00.0\n"
            "drm-total-vram:\t4096 KiB\ndrm-resident-vram:\t1024 KiB\ndrm-total-gtt:\t512 KiB\n"
            "drm-memory-gtt:\t256 KiB\n")
    c = parse(text)
    # allocated but not resident (evicted) is not in use; drm-memory-gtt is resident gtt, not total
    assert c.memory == {"vram": 1024 * KIB, "gtt": 256 * KIB}


def test_a_shared_buffer_is_not_counted_once_per_importer(tmp_path):
    buf = "drm-total-vram:\t{t} KiB\ndrm-shared-vram:\t{s} KiB\ndrm-resident-vram:\t{t} KiB\n"
    head = "drm-driver:\tamdgpu\ndrm-pdev:\t0000:04:00.0\ndrm-client-id:\t{c}\n"
    t = FdTree(tmp_path / "proc")
    # a compositor and a game both hold one 8 MiB buffer; each has 1 MiB of its own
    t.proc(100, "kwin", {3: head.format(c=1) + buf.format(t=9216, s=8192)})
    t.proc(200, "game", {3: head.format(c=2) + buf.format(t=9216, s=8192)})
    used = {u.pid: u.memory for u in UsageTracker().update(FdinfoReader(t.root).read(0.0), 0.0)}
    assert used == {100: 1024 * KIB, 200: 1024 * KIB}


def test_amdgpu_legacy_memory_keys():
    c = parse(sample(AMD_OLD))
    assert (c.driver, c.pdev, c.client_id) == ("amdgpu", "0000:83:00.0", "1203108")
    assert c.engines == {} and c.cycles == {}
    assert c.memory == {"vram": 76 * KIB, "gtt": 44 * KIB, "cpu": 6200 * KIB}
    assert c.gpu_memory() == 76 * KIB


def test_i915_engines_and_capacity():
    c = parse(sample(I915))
    assert (c.driver, c.pdev, c.client_id) == ("i915", "0000:00:02.0", "22")
    assert c.engines == {"render": 196329331, "copy": 0, "video": 0, "video-enhance": 0}
    assert c.capacity == {"video": 2}              # an engine count, never a busy time
    assert c.gpu_memory() is None                  # no memory keys: no sample


def test_xe_cycles_and_regions():
    c = parse(sample(XE))
    assert (c.driver, c.pdev, c.client_id) == ("xe", "0000:03:00.0", "3")
    assert c.engines == {}
    assert c.cycles == {"rcs": 28257900, "bcs": 0, "vcs": 0, "vecs": 0, "ccs": 0}
    assert c.total_cycles == {k: 7655183225 for k in ("rcs", "bcs", "vcs", "vecs", "ccs")}
    assert c.capacity == {"vcs": 2, "vecs": 2, "ccs": 4}
    # resident vram0 23992 KiB of which 16 MiB shared
    assert c.memory == {"system": 0, "gtt": 192 * KIB, "vram0": (23992 - 16384) * KIB, "stolen": 0}
    assert c.gpu_memory() == (23992 - 16384) * KIB


def test_mali_engines_with_hyphens_and_system_memory():
    pf = parse(sample("panfrost-kernel-doc.fdinfo"))
    assert (pf.driver, pf.pdev, pf.device) == ("panfrost", "", "panfrost")
    assert pf.engines == {"fragment": 1846584880, "vertex-tiler": 71932239}
    assert pf.gpu_memory() == 36496 * KIB          # integrated: system memory; resident, not the 290 MiB total
    pt = parse(sample("panthor-kernel-doc.fdinfo"))
    assert pt.engines == {"panthor": 111110952750} and pt.gpu_memory() == 16480 * KIB


def test_other_fdinfo_is_not_a_client():
    base = os.path.join(PROCFS_FIXTURE, "26231", "fdinfo")
    for fd in os.listdir(base):
        with open(os.path.join(base, fd)) as f:
            assert parse(f.read()) is None


def bump(text, **increments):
    """The same client later: each key's number grown by the increment (a second snapshot)."""
    for key, inc in increments.items():
        key = "drm-" + key.replace("_", "-")
        text = re.sub(rf"^({re.escape(key)}:\s*)(\d+)", lambda m: f"{m.group(1)}{int(m.group(2)) + inc}", text,
                      flags=re.M)
    return text


class FdTree:
    """Processes with DRM file descriptors, in a procfs tree."""

    def __init__(self, root):
        self.tree = Tree(root)
        self.root = self.tree.root

    def proc(self, pid, comm, fds, uid=1000):
        """fds: {fd: fdinfo text or None for a non-DRM fd}."""
        d = self.tree.proc(pid, comm, uid=uid)
        os.makedirs(os.path.join(d, "fd"), exist_ok=True)
        os.makedirs(os.path.join(d, "fdinfo"), exist_ok=True)
        for fd, text in fds.items():
            link = os.path.join(d, "fd", str(fd))
            if not os.path.lexists(link):
                os.symlink("/dev/dri/renderD128" if text is not None else "/tmp/some-file", link)
            with open(os.path.join(d, "fdinfo", str(fd)), "w") as f:
                f.write(text if text is not None else "pos:\t0\nflags:\t02\nmnt_id:\t9\n")


def test_utilisation_from_two_snapshots(tmp_path):
    t = FdTree(tmp_path / "proc")
    t.proc(100, "game", {3: sample(AMD), 4: None})
    t.proc(200, "video", {5: sample(I915)})
    t.proc(300, "compute", {6: sample(XE)})
    reader, tracker = FdinfoReader(t.root), UsageTracker()
    first = {u.pid: u for u in tracker.update(reader.read(10.0), 10.0)}
    assert {p: u.engines for p, u in first.items()} == {100: None, 200: None, 300: None}
    assert first[100].memory == (544428 - 13584) * KIB and first[200].memory is None
    # 0.5 s later: gfx 250 ms busy; render 125 ms; video 0.5 s on a 2-engine group; xe rcs cycles
    t.proc(100, "game", {3: bump(sample(AMD), engine_gfx=250_000_000), 4: None})
    t.proc(200, "video", {5: bump(sample(I915), engine_render=125_000_000, engine_video=500_000_000)})
    t.proc(300, "compute", {6: bump(sample(XE), cycles_rcs=250, cycles_ccs=400, total_cycles_rcs=1000,
                                    total_cycles_bcs=1000, total_cycles_vcs=1000, total_cycles_vecs=1000,
                                    total_cycles_ccs=1000)})
    second = {u.pid: u for u in tracker.update(reader.read(10.5), 10.5)}
    assert second[100].engines == {"gfx": 0.5}
    assert second[200].engines == {"render": 0.25, "copy": 0.0, "video": 0.5, "video-enhance": 0.0}
    # 250 of 1000 cycles; 400 of 1000 cycles over a group of 4 engines
    assert second[300].engines == {"rcs": 0.25, "bcs": 0.0, "vcs": 0.0, "vecs": 0.0, "ccs": 0.1}
    assert second[300].memory == (23992 - 16384) * KIB


def test_busy_seconds_are_counters_that_never_go_backwards(tmp_path):
    t = FdTree(tmp_path / "proc")
    second = sample(AMD).replace("drm-client-id:\t30", "drm-client-id:\t31")
    t.proc(100, "game", {3: sample(AMD), 4: second})
    reader, tracker = FdinfoReader(t.root), UsageTracker()
    # two clients of one process: their ns, as they are (39.456116802 s each)
    assert tracker.update(reader.read(0.0), 0.0)[0].busy == {"gfx": 2 * 39.456116802}
    t.proc(100, "game", {3: bump(sample(AMD), engine_gfx=500_000_000), 4: second})
    assert tracker.update(reader.read(1.0), 1.0)[0].busy == pytest.approx({"gfx": 2 * 39.456116802 + 0.5})
    # the second client closes: its share stays counted
    os.unlink(os.path.join(t.root, "100", "fd", "4"))
    os.unlink(os.path.join(t.root, "100", "fdinfo", "4"))
    reader.last_full = None
    assert tracker.update(reader.read(2.0), 2.0)[0].busy == pytest.approx({"gfx": 2 * 39.456116802 + 0.5})


def test_counters_going_backwards_keep_the_larger_value(tmp_path):
    t = FdTree(tmp_path / "proc")
    t.proc(100, "game", {3: bump(sample(AMD), engine_gfx=1_000_000_000)})
    reader, tracker = FdinfoReader(t.root), UsageTracker()
    tracker.update(reader.read(0.0), 0.0)
    t.proc(100, "game", {3: sample(AMD)})                     # 1 s of busy time went missing
    assert tracker.update(reader.read(1.0), 1.0)[0].engines == {"gfx": 0.0}
    t.proc(100, "game", {3: bump(sample(AMD), engine_gfx=1_200_000_000)})
    # measured from the larger value seen before, not from the dip
    assert tracker.update(reader.read(2.0), 2.0)[0].engines == {"gfx": 0.2}


def test_one_client_counted_once_across_fds_and_processes(tmp_path):
    t = FdTree(tmp_path / "proc")
    t.proc(100, "parent", {3: sample(AMD), 7: sample(AMD)})    # a dup'ed fd
    t.proc(101, "child", {3: sample(AMD)})                     # inherited over fork
    t.proc(102, "other", {3: sample(AMD).replace("drm-client-id:\t30", "drm-client-id:\t31")})
    clients = FdinfoReader(t.root).read(0.0)
    assert sorted((c.pid, c.client_id) for c in clients) == [(100, "30"), (102, "31")]


def test_full_fd_scan_is_periodic_known_clients_every_time(tmp_path):
    t = FdTree(tmp_path / "proc")
    t.proc(100, "game", {3: sample(AMD)})
    reader = FdinfoReader(t.root, full_scan_every=10.0)
    assert [c.pid for c in reader.read(0.0)] == [100]
    t.proc(200, "late", {5: sample(I915)})
    assert [c.pid for c in reader.read(2.0)] == [100]          # known clients only
    assert sorted(c.pid for c in reader.read(10.0)) == [100, 200]
    assert [c.pid for c in reader.read(11.0, pids=[200])] == [200]   # the pids of a shared /proc pass


@pytest.fixture
def box(tmp_path):
    """procfs's sysfs tree (amdgpu card0 at 0000:09:00.0, i915 card1 at 0000:00:02.0) and processes."""
    sysfs = tmp_path / "sys"
    shutil.copytree(PROCFS_SYSFS, sysfs, symlinks=True)
    rootfs = passwd(tmp_path / "root", {1000: "alice", 1001: "bob"})
    return FdTree(tmp_path / "proc"), str(sysfs), rootfs


def test_process_collector_matches_clients_to_cards_by_pci_address(box):
    t, sysfs, rootfs = box
    amd_here = sample(AMD).replace("0000:04:00.0", "0000:09:00.0")   # the sample, moved to card0's slot
    t.proc(100, "blender", {3: amd_here}, uid=1000)
    t.proc(200, "vlc", {5: sample(I915)}, uid=1001)
    t.proc(300, "elsewhere", {6: sample(AMD)}, uid=1000)          # 0000:04:00.0: no such card here
    gp = GPUProcessCollector(None, procfs=t.root, sysfs=sysfs, scanner=processes.Scanner(t.root, rootfs))
    reg = CollectorRegistry()
    reg.register(gp)
    gp.refresh(0.0)
    blender = {"gpu": "0", "uuid": "0123456789abcdef", "pid": "100", "name": "blender", "user": "alice", "owner": ""}
    assert reg.get_sample_value("hoofhearted_gpu_process_memory_bytes", blender) == (544428 - 13584) * KIB
    assert reg.get_sample_value("hoofhearted_gpu_process_utilization_ratio", dict(blender, engine="gfx")) is None
    t.proc(100, "blender", {3: bump(amd_here, engine_gfx=1_500_000_000)}, uid=1000)
    t.proc(200, "vlc", {5: bump(sample(I915), engine_video=1_000_000_000)}, uid=1001)
    gp.refresh(2.0)
    assert reg.get_sample_value("hoofhearted_gpu_process_utilization_ratio", dict(blender, engine="gfx")) == 0.75
    vlc = {"gpu": "1", "uuid": "0000:00:02.0", "pid": "200", "name": "vlc", "user": "bob", "owner": ""}
    assert reg.get_sample_value("hoofhearted_gpu_process_utilization_ratio", dict(vlc, engine="video")) == 0.25
    assert reg.get_sample_value("hoofhearted_gpu_process_memory_bytes", vlc) is None   # i915 gave no memory
    pids = {s.labels["pid"] for m in reg.collect() for s in m.samples if "pid" in s.labels}
    assert pids == {"100", "200"}
    assert reg.get_sample_value("hoofhearted_gpu_processes", {"gpu": "0", "uuid": "0123456789abcdef"}) == 1


def test_nvidia_drm_clients_are_left_to_nvml(box):
    t, sysfs, rootfs = box
    text = sample(I915).replace("drm-driver:     i915", "drm-driver:     nvidia-drm")
    t.proc(100, "x", {3: text})
    assert FdinfoReader(t.root).read(0.0) == []
    assert "nvidia-drm" in fdinfo.SKIP_DRIVERS
