"""Watts per process: the split, the GPU domain on the fake NVML, the blame chain in words.

The CPU domain with a real burner, a real exporter and a sysfs tree at 40 W: tests/test_attribution_live.py.
"""
import logging
import os
import sys

import pytest

from conftest import ROOT
from test_verdict import FANS, GPU, HOST, Stub, Table, families, proc

if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from exporter import attribution, verdict  # noqa: E402
from exporter.collectors.gpu import GPUProcessCollector, NvidiaCollector  # noqa: E402
from exporter.collectors.sensors import RAPLCollector, rapl_reason  # noqa: E402
from exporter.sources import processes  # noqa: E402
from exporter.sources.nvidia import NvidiaSource  # noqa: E402
from tests.fakenvml import scenarios  # noqa: E402

H100 = {"gpu": "0", "uuid": "GPU-00000000-0000-0000-0000-000000000000"}


def test_split_adds_up_and_scales_down_when_shares_exceed_busy():
    idle, procs, other = attribution.split(40.0, 0.75, {1: 1.0, 2: 0.25}, 2)
    assert idle == pytest.approx(10.0)
    assert procs == {1: pytest.approx(20.0), 2: pytest.approx(5.0)}
    assert other == pytest.approx(5.0)          # 0.25 cores of busy time no process accounts for
    # shares from a slightly longer window than the busy share: scaled to the active part
    idle, procs, other = attribution.split(40.0, 0.5, {1: 1.5}, 2)
    assert (idle, procs, other) == (pytest.approx(20.0), {1: pytest.approx(20.0)}, 0.0)
    # a process with no CPU gets no entry; nothing busy: all idle
    assert attribution.split(10.0, 0.0, {1: 0.0}, 4) == (10.0, {}, 0.0)


CHAIN_SENSORS = """
hoofhearted_temperature_celsius{chip="platform_coretemp_0",sensor="temp1",label="Package id 0"} 81
hoofhearted_temperature_max_celsius{chip="platform_coretemp_0",sensor="temp1",label="Package id 0"} 100
hoofhearted_temperature_celsius{chip="nvme_nvme0",sensor="temp1",label="Composite"} 44
hoofhearted_fan_speed_rpm{chip="nct6775",fan="fan2",label="CPU fan"} 1840
hoofhearted_fan_pwm_ratio{chip="nct6775",fan="fan2"} 0.78
"""
RAPL = """
hoofhearted_cpu_power_watts{domain="package-0"} 95
hoofhearted_cpu_power_watts{domain="package-0/core"} 80
hoofhearted_cpu_power_watts{domain="package-0/dram"} 4
"""


def php_box():
    """Twelve php-fpm workers of www-data on two cores, 57 % busy; sshd a little."""
    procs = [proc(100 + i, "php-fpm", user="www-data") for i in range(12)] + [proc(7, "sshd")]
    rates = {100 + i: 0.0 for i in range(12)}
    for i in range(10):
        rates[100 + i] = 0.0737
    rates[7] = 0.01
    return procs, rates


def run_power(procs, rates, sensors=CHAIN_SENSORS, rapl=RAPL, host=HOST, gpu_text="", gpu_entries=None):
    pc = Stub("process", snapshot=Table(procs), rates=rates)
    pc.top = [(p, rates.get(p.pid)) for p in procs]
    cs = [Stub("cpu", host), Stub("sensors", sensors), Stub("rapl", rapl), pc]
    if gpu_entries is not None:
        cs += [Stub("nvidia", gpu_text), Stub("gpu_process", snapshot=gpu_entries)]
    power = attribution.attribute(verdict.index(cs), pc, gpu_entries or ())
    return verdict.compute(cs, host="box", wall=lambda: 1000.0, reason="a test box", power=power), power


def test_cpu_chain_in_one_sentence():
    r, power = run_power(*php_box())
    pkg = power.by_domain()["package-0"]
    # 95 W, 57 % busy: 40.85 W idle; php-fpm 0.737 cores of 2 -> 95 × 0.737 / 2 = 35.0 W
    assert pkg.idle == pytest.approx(95 * 0.43)
    assert pkg.groups == {"php-fpm": pytest.approx(95 * 0.737 / 2), "sshd": pytest.approx(95 * 0.01 / 2)}
    assert pkg.attributed + pkg.idle + pkg.other == pytest.approx(95.0)
    top = r["culprits"][0]
    assert (top["kind"], top["name"], top["processes"]) == ("group", "php-fpm", 12)
    # the culprit's watts: package and DRAM (the cores are inside the package)
    assert top["watts_by_domain"] == {"package-0": pytest.approx(95 * 0.737 / 2),
                                      "package-0/dram": pytest.approx(4 * 0.737 / 2)}
    assert top["watts"] == pytest.approx(99 * 0.737 / 2)
    assert r["sentence"] == ("Fans at 78% (nct6775 fan2, 1840 rpm) because the CPU package is at 81 °C "
                             "drawing 95 W; 35 W of it is php-fpm ×12 (www-data).")
    assert [d["domain"] for d in r["power"]["domains"]] == ["package-0", "package-0/core", "package-0/dram"]
    fams = {f.name: f for f in verdict.families(r)}
    assert fams["hoofhearted_culprit_power_watts"].samples[0].labels == {"rank": "1"}
    assert fams["hoofhearted_culprit_power_watts"].samples[0].value == pytest.approx(99 * 0.737 / 2)


def test_unmapped_hottest_sensor_is_said_not_guessed():
    r, _ = run_power(*php_box(), sensors=FANS)       # the NVMe drive is hottest
    assert r["sentence"] == ("Fans at 78% (nct6775 fan2, 1840 rpm); the hottest sensor (nvme_nvme0 Composite, "
                             "71 °C) is on no part with a power reading, while the CPU package draws 95 W; "
                             "35 W of it is php-fpm ×12 (www-data).")


def test_without_power_the_sentences_stay():
    procs, rates = php_box()
    r, power = run_power(procs, rates, rapl="")
    assert power.domains == [] and r["power"] is None
    assert r["culprits"][0]["watts"] is None
    assert r["sentence"] == "Fans at 78% (nct6775 fan2, 1840 rpm) because php-fpm ×12 (www-data) uses 0.74 cores."
    # a counter that did not move is no reading
    r, power = run_power(procs, rates, rapl='hoofhearted_cpu_power_watts{domain="package-0"} 0\n')
    assert power.domains == [] and r["sentence"].endswith("uses 0.74 cores.")


def test_gpu_chain_in_one_sentence():
    owner = "container/3f2a1b2c3d4e"
    procs = [proc(4242, "python3", "alice", owner), proc(77, "sshd", "root", "ssh.service")]
    entries = [("0", "GPU-1", 4242, "python3", "alice", owner, 8 * 10**9, {"sm": 0.9, "dec": 0.1}),
               ("0", "GPU-1", 77, "sshd", "root", "ssh.service", None, {"sm": 0.02})]
    host = HOST.replace("hoofhearted_cpu_cores 2", "hoofhearted_cpu_cores 8")
    r, power = run_power(procs, {4242: 1.0, 77: 0.0}, rapl="", host=host, gpu_text=GPU, gpu_entries=entries)
    g = power.by_domain()["gpu0"]
    assert g.processes == {4242: pytest.approx(279.0), 77: pytest.approx(6.2)}    # 310 W × SM share
    assert (g.idle, g.other) == (pytest.approx(310 * 0.03), pytest.approx(310 * 0.05))
    assert r["culprits"][0]["watts"] == pytest.approx(279.0)
    # the GPU fan is the busiest fan, GPU0 the hottest sensor
    assert r["sentence"] == ("Fans at 78% (nct6775 fan2, 1840 rpm) because GPU0 is at 83 °C drawing 310 W; "
                             "279 W of it is python3 (pid 4242, alice, container 3f2a1b2c3d4e).")
    from exporter import why
    assert why.lines(r)[-1] == r["sentence"]          # `why` prints the chain as one line


def test_a_hot_part_without_a_power_reading_is_not_blamed_on_another_part():
    """RAPL unreadable on a GPU box: the CPU package is hottest, the GPU's watts do not explain it;
    the sentence names rank 1, as every other surface does."""
    procs = [proc(10, "stress", "bob", ""), proc(4242, "python3", "alice", "")]
    entries = [("0", "GPU-1", 4242, "python3", "alice", "", 2 * 10**9, {"sm": 0.35})]
    sensors = CHAIN_SENSORS.replace("} 81", "} 92")
    gpu_text = GPU.replace("hoofhearted_gpu_temperature_celsius{gpu=\"0\",uuid=\"GPU-1\"} 83",
                           "hoofhearted_gpu_temperature_celsius{gpu=\"0\",uuid=\"GPU-1\"} 60")
    assert gpu_text != GPU
    r, power = run_power(procs, {10: 1.9, 4242: 0.05}, sensors=sensors, rapl="", gpu_text=gpu_text,
                         gpu_entries=entries)
    assert [d.domain for d in power.domains] == ["gpu0"]
    assert r["culprits"][0]["pid"] == 10
    assert r["sentence"] == "Fans at 78% (nct6775 fan2, 1840 rpm) because stress (pid 10, bob) uses 1.90 cores."


def test_gpu_domain_on_the_fake_nvml_follows_sm_shares_and_adds_up(gpu_burn_tree):
    tree, rootfs = gpu_burn_tree
    nv = scenarios.datacenter()
    fake = nv._fake.gpus[0]
    fake.power_mw, fake.utilization = 400_000, (100, 30)
    src = NvidiaSource(nv)
    dev = NvidiaCollector(src)
    gp = GPUProcessCollector(src, procfs=tree.root, sysfs="/nonexistent", scanner=processes.Scanner(tree.root, rootfs))
    dev.refresh(1.0)
    gp.refresh(1.0)
    m = verdict.index([dev, gp])
    power = attribution.attribute(m, None, gp.snapshot)
    shares = {e[2]: e[7]["sm"] for e in gp.snapshot if e[0] == "0"}
    assert shares[11345] == 0.99
    d = power.by_domain()["gpu0"]
    assert d.measured == 400.0 and d.busy == 1.0
    assert d.processes[11345] == pytest.approx(400 * 0.99)
    assert d.attributed == pytest.approx(400 * sum(shares.values()))
    assert d.attributed + d.idle + d.other == pytest.approx(400.0, rel=1e-9)
    # at 30 % busy the shares come to more than the busy time: scaled to the active 120 W
    fake.utilization = (30, 30)
    dev.refresh(2.0)
    d = attribution.attribute(verdict.index([dev, gp]), None, gp.snapshot).by_domain()["gpu0"]
    assert (d.idle, d.other) == (pytest.approx(280.0), 0.0)
    assert d.attributed == pytest.approx(120.0)
    assert d.processes[11345] / d.attributed == pytest.approx(0.99 / sum(shares.values()))
    fams = {f.name: f for f in attribution.families(power)}
    got = {s.labels["pid"]: s.value for s in fams["hoofhearted_process_power_watts"].samples
           if s.labels["domain"] == "gpu0"}
    assert got["11345"] == pytest.approx(396.0)
    parts = {s.labels["part"]: s.value for s in fams["hoofhearted_power_unattributed_watts"].samples
             if s.labels["domain"] == "gpu0"}
    groups = sum(s.value for s in fams["hoofhearted_process_group_power_watts"].samples
                 if s.labels["domain"] == "gpu0")
    assert groups + parts["idle"] + parts["other"] == pytest.approx(400.0)


def test_energy_counters_integrate_the_group_power():
    procs, rates = php_box()
    pc = Stub("process", snapshot=Table(procs), rates=rates)
    pc.top = []
    m = verdict.index([Stub("cpu", HOST), Stub("rapl", RAPL)])
    a = attribution.Attributor(clock=lambda: 0.0)
    a.update(m, pc, (), now=10.0)
    a.update(m, pc, (), now=12.0)
    a.update(m, pc, (), now=15.0)
    fams = {f.name: f for f in a.families()}
    joules = {(s.labels["group"], s.labels["domain"]): s.value
              for s in fams["hoofhearted_process_group_energy_joules"].samples}
    assert joules[("php-fpm", "package-0")] == pytest.approx(95 * 0.737 / 2 * 5)
    assert joules[("sshd", "package-0/dram")] == pytest.approx(4 * 0.01 / 2 * 5)


def test_rapl_unreadable_is_zero_and_said_once(tmp_path, caplog):
    c = RAPLCollector(str(tmp_path))
    with caplog.at_level(logging.WARNING, logger="hoofhearted.sensors"):
        for t in (1.0, 2.0, 3.0):
            fams = {f.name: f for f in c.refresh(t)}
    assert [s.value for s in fams["hoofhearted_rapl_readable"].samples] == [0]
    said = [r.getMessage() for r in caplog.records]
    assert len(said) == 1 and said[0].startswith("no CPU power readings reason='no RAPL powercap zones")
    reason = rapl_reason([], ["package-0", "package-0/core"], "/sys")
    assert reason.startswith("RAPL energy counters are readable by root only (Linux 5.10 and later) "
                             "domains=package-0,package-0/core fix: run with CAP_DAC_READ_SEARCH")
    zone = tmp_path / "class" / "powercap" / "intel-rapl:0"
    zone.mkdir(parents=True)
    (zone / "name").write_text("package-0\n")
    (zone / "energy_uj").write_text("1000000\n")
    c = RAPLCollector(str(tmp_path))
    fams = {f.name: f for f in c.refresh(1.0)}
    assert [s.value for s in fams["hoofhearted_rapl_readable"].samples] == [1]
    (zone / "energy_uj").write_text("41000000\n")
    fams = {f.name: f for f in c.refresh(2.0)}
    assert [s.value for s in fams["hoofhearted_cpu_power_watts"].samples] == [40.0]


def test_udev_rule_is_shipped():
    rule = open(os.path.join(ROOT, "deploy", "udev", "60-hoofhearted-rapl.rules")).read()
    assert 'SUBSYSTEM=="powercap"' in rule and "energy_uj" in rule


def test_why_and_live_show_the_watts():
    from exporter import live, why
    r, _ = run_power(*php_box())
    out = why.lines(r)
    assert out[-1] == r["sentence"]
    assert out[-2] == ("Power (estimates): package-0 95.0 W = 35.5 processes + 40.9 idle + 18.7 other; "
                       "package-0/core 80.0 W = 29.9 processes + 34.4 idle + 15.7 other; "
                       "package-0/dram 4.0 W = 1.5 processes + 1.7 idle + 0.8 other")
    row = next(line for line in out if line.startswith("  php-fpm"))
    assert row.split()[-2:] == ["36.5", "W"]
    fields = live._culprit(r)
    assert fields["watts"] == pytest.approx(99 * 0.737 / 2) and fields["verdict"] == r["sentence"]
    r, _ = run_power(*php_box(), rapl="")
    assert "watts" not in live._culprit(r) and not any(line.startswith("Power") for line in why.lines(r))


def test_drm_engines_and_colliding_gpu_labels():
    # an amdgpu card (fdinfo engines) and an NVIDIA GPU that are both "0"
    text = GPU + ('hoofhearted_gpu_power_watts{gpu="0",uuid="amd-1"} 100\n'
                  'hoofhearted_gpu_utilization_ratio{gpu="0",uuid="amd-1"} 0.6\n')
    entries = [("0", "amd-1", 9, "blender", "carol", "", None, {"gfx": 0.5, "compute": 0.2, "dma": 0.1}),
               ("0", "GPU-1", 4242, "python3", "alice", "", None, {"sm": 0.9, "memory": 0.4})]
    power = attribution.attribute(verdict.index([Stub("nvidia", text)]), None, entries)
    doms = power.by_domain()
    assert sorted(doms) == ["gpu0/GPU-1", "gpu0/amd-1"]
    assert doms["gpu0/amd-1"].processes == {9: pytest.approx(50.0)}        # the busiest engine: gfx
    assert (doms["gpu0/amd-1"].idle, doms["gpu0/amd-1"].other) == (pytest.approx(40.0), pytest.approx(10.0))
    assert doms["gpu0/GPU-1"].processes == {4242: pytest.approx(279.0)}   # SM, not memory


def test_with_power_known_everywhere_culprits_rank_by_watts():
    """64 cores: 40 busy cores are 62 % of the CPU and draw 40/64 of a 200 W package (125 W); half
    of a 400 W GPU is a smaller share of the machine and draws more (200 W)."""
    host = HOST.replace("hoofhearted_cpu_cores 2", "hoofhearted_cpu_cores 64").replace("0.57", "0.7")
    gpu = ('hoofhearted_gpu_info{gpu="0",uuid="GPU-1",name="H100",vendor="nvidia",driver_version="1",'
           'pci_bus_id="x"} 1\nhoofhearted_gpu_utilization_ratio{gpu="0",uuid="GPU-1"} 0.5\n'
           'hoofhearted_gpu_power_watts{gpu="0",uuid="GPU-1"} 400\n')
    procs = [proc(10, "build"), proc(20, "infer")]
    entries = [("0", "GPU-1", 20, "infer", "root", "", None, {"sm": 0.5})]
    rapl = 'hoofhearted_cpu_power_watts{domain="package-0"} 200\n'
    r, power = run_power(procs, {10: 40.0, 20: 0.1}, rapl=rapl, host=host, gpu_text=gpu, gpu_entries=entries)
    by_name = {c["name"]: c for c in r["culprits"]}
    assert by_name["build"]["watts"] == pytest.approx(125.0, rel=0.01)
    assert by_name["infer"]["watts"] == pytest.approx(200.0 + 200 * 0.1 / 64, rel=0.01)
    assert [c["name"] for c in r["culprits"][:2]] == ["infer", "build"]
    # the same box without a GPU power reading: watts cannot compare the two, shares rank
    r, _ = run_power(procs, {10: 40.0, 20: 0.1}, rapl=rapl, host=host,
                     gpu_text=gpu.replace('hoofhearted_gpu_power_watts{gpu="0",uuid="GPU-1"} 400\n', ""),
                     gpu_entries=entries)
    assert [c["name"] for c in r["culprits"][:2]] == ["build", "infer"]
