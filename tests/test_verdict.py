"""The verdict's ranking and words, on process tables and expositions written here.

Real processes, a real exporter and every surface agreeing: tests/test_verdict_live.py.
"""
import pytest
from prometheus_client.parser import text_string_to_metric_families

from exporter import verdict
from exporter.families import Family
from exporter.sources.processes import Identity, Proc

MiB = 1024 * 1024


def proc(pid, name, user="root", owner="", rss=10 * MiB):
    return Proc(pid, name, "R", 1, 0.0, rss, 1, 100, Identity(0, user, owner, "", name, True), b"")


class Stub:
    """What the verdict reads of a collector: its name, last families and (process) snapshot."""

    def __init__(self, name, text="", snapshot=None, rates=None, rated=True):
        self.name = name
        self.families = families(text)
        self.snapshot = snapshot
        self.rates = rates or {}
        self.rated = rated


class Table:
    def __init__(self, procs):
        self.procs = {p.pid: p for p in procs}


def families(text):
    out = []
    for fam in text_string_to_metric_families(text):
        f = Family(fam.name, fam.documentation or "x", fam.type if fam.type != "unknown" else "gauge",
                   sorted({k for s in fam.samples for k in s.labels}))
        for s in fam.samples:
            f.add_metric([s.labels.get(k, "") for k in f._labelnames], s.value)
        out.append(f)
    return out


HOST = """
hoofhearted_cpu_usage_ratio 0.57
hoofhearted_cpu_cores 2
hoofhearted_memory_total_bytes 1000
hoofhearted_memory_used_bytes 250
"""
FANS = """
hoofhearted_temperature_celsius{chip="platform_coretemp_0",sensor="temp1",label="Package id 0"} 71
hoofhearted_temperature_max_celsius{chip="platform_coretemp_0",sensor="temp1",label="Package id 0"} 100
hoofhearted_temperature_celsius{chip="ieee80211_phy0",sensor="temp1",label=""} 74
hoofhearted_temperature_celsius{chip="nvme_nvme0",sensor="temp1",label="Composite"} 71
hoofhearted_temperature_max_celsius{chip="nvme_nvme0",sensor="temp1",label="Composite"} 80
hoofhearted_fan_speed_rpm{chip="nct6775",fan="fan2",label="CPU fan"} 1840
hoofhearted_fan_pwm_ratio{chip="nct6775",fan="fan2"} 0.78
hoofhearted_fan_speed_rpm{chip="nct6775",fan="fan1",label=""} 700
hoofhearted_fan_max_rpm{chip="nct6775",fan="fan1"} 2000
"""


def run(procs, rates, host=HOST, sensors=FANS, gpu_entries=None, gpu_text="", **kw):
    cs = [Stub("cpu", host), Stub("sensors", sensors),
          Stub("process", snapshot=Table(procs), rates=rates, **kw)]
    if gpu_entries is not None:
        cs.append(Stub("nvidia", gpu_text))
        cs.append(Stub("gpu_process", snapshot=gpu_entries))
    return verdict.compute(cs, host="box", wall=lambda: 1000.0, reason="a test box")


def many_and_solo():
    procs = [proc(100 + i, "hhmany") for i in range(12)] + [proc(200, "hhsolo")]
    rates = {100 + i: 0.07 for i in range(12)}
    rates[200] = 0.31
    return procs, rates


def test_a_group_of_same_named_workers_outranks_a_bigger_single_process():
    r = run(*many_and_solo())
    top = r["culprits"][0]
    assert (top["kind"], top["name"], top["user"], top["pid"], top["processes"]) == ("group", "hhmany", "root", None, 12)
    assert top["cores"] == pytest.approx(0.84)
    assert (r["culprits"][1]["kind"], r["culprits"][1]["pid"]) == ("process", 200)
    assert r["sentence"] == "Fans at 78% (nct6775 fan2, 1840 rpm) because hhmany ×12 (root) uses 0.84 cores."
    assert top["text"] == "hhmany ×12 (root) uses 0.84 cores"


def test_one_runaway_stays_one_process_even_with_small_namesakes():
    procs = [proc(300, "hhbig"), proc(301, "hhbig"), proc(302, "hhbig"), proc(303, "hhbig"), proc(400, "sshd")]
    rates = {300: 0.9, 301: 0.02, 302: 0.01, 303: 0.03, 400: 0.01}
    r = run(procs, rates)
    top = r["culprits"][0]
    assert (top["kind"], top["pid"], top["processes"]) == ("process", 300, 1)
    assert r["sentence"] == "Fans at 78% (nct6775 fan2, 1840 rpm) because hhbig (pid 300, root) uses 0.90 cores."
    # the small namesakes are still there, each on its own
    assert {c["pid"] for c in r["culprits"][1:]} >= {301, 303}


def test_same_name_different_users_are_different_groups():
    procs = [proc(1 + i, "worker", user="alice") for i in range(3)] + \
            [proc(10 + i, "worker", user="bob") for i in range(3)]
    rates = {p.pid: (0.2 if p.ident.user == "alice" else 0.1) for p in procs}
    r = run(procs, rates)
    assert [(c["kind"], c["user"], c["processes"]) for c in r["culprits"][:2]] == \
        [("group", "alice", 3), ("group", "bob", 3)]
    assert r["culprits"][0]["cores"] == pytest.approx(0.6)


def test_a_container_of_many_different_processes_is_one_owner():
    owner = "container/3f2a1b2c3d4e"
    procs = [proc(1, "nginx", "www", owner), proc(2, "php", "www", owner), proc(3, "redis", "www", owner),
             proc(4, "cron", "root", "cron.service")]
    rates = {1: 0.3, 2: 0.35, 3: 0.25, 4: 0.0}
    r = run(procs, rates)
    top = r["culprits"][0]
    assert (top["kind"], top["name"], top["owner"], top["user"], top["processes"]) == \
        ("owner", owner, owner, "www", 3)
    assert r["sentence"] == ("Fans at 78% (nct6775 fan2, 1840 rpm) because container 3f2a1b2c3d4e "
                             "(3 processes, www) uses 0.90 cores.")
    # a container with one big process is that process
    r = run(procs, {1: 0.9, 2: 0.05, 3: 0.05, 4: 0.0})
    assert (r["culprits"][0]["kind"], r["culprits"][0]["pid"]) == ("process", 1)
    assert r["culprits"][0]["text"] == "nginx (pid 1, www, container 3f2a1b2c3d4e) uses 0.90 cores"


def test_a_group_that_spans_owners_is_not_counted_twice():
    """python3 of root runs twice in a container and once on the host: the group stands for all
    three, and the container's owner unit keeps only what no other culprit explains."""
    owner = "container/abc"
    procs = [proc(1, "python3", "root", owner), proc(2, "python3", "root", owner), proc(3, "python3", "root", ""),
             proc(4, "nginx", "root", owner), proc(5, "redis", "root", owner)]
    units = verdict.culprits(procs, {pid: 0.3 for pid in range(1, 6)}, ncores=2)
    pids = [p.pid for u in units for p in u.procs]
    assert sorted(pids) == [1, 2, 3, 4, 5]                      # each process in one culprit
    assert sum(u.cores for u in units) == pytest.approx(1.5)    # no CPU second counted twice
    assert [(u.kind, u.name, len(u.procs)) for u in units] == \
        [("group", "python3", 3), ("owner", owner, 2)]


def test_words_never_contradict_the_numbers():
    procs, rates = many_and_solo()
    # CPU 57% busy but no culprit explains it: "spread", never "mostly idle"
    spread = {pid: 0.03 for pid in rates}
    r = run(procs, spread)
    assert r["sentence"] == ("Fans at 78% (nct6775 fan2, 1840 rpm); the load is spread over many processes "
                             "(CPU 57% busy); busiest is hhmany ×12 (root), which uses 0.36 cores.")
    quiet = HOST.replace("0.57", "0.1")
    r = run(procs, {pid: 0.004 for pid in rates}, host=quiet)
    assert r["sentence"] == ("Fans at 78% (nct6775 fan2, 1840 rpm) and the machine is mostly idle (CPU 10% busy); "
                             "busiest is hhmany ×12 (root), which uses 0.05 cores.")


def test_no_fans_measuring_and_no_process_data():
    procs, rates = many_and_solo()
    r = run(procs, rates, sensors="")
    assert r["sentence"] == ("No fan readings; the load comes from hhmany ×12 (root), which uses 0.84 cores "
                             "(CPU 57% busy).")
    assert r["sensors"] == {"temperature": 0, "fan": 0}
    assert r["notes"] == ["No temperature or fan readings: a test box."]
    r = run(procs, rates, rated=False)
    assert r["measuring"] and r["culprits"] == []
    assert r["sentence"] == "Still measuring: CPU and process rates need a second reading, a few seconds after start."
    cs = [Stub("cpu", HOST), Stub("sensors", FANS)]
    r = verdict.compute(cs, host="box", reason="x")
    assert r["sentence"] == "Fans at 78% (nct6775 fan2, 1840 rpm) (CPU 57% busy); no per-process data " \
                            "(the process collector is off)."


def test_without_the_cpu_collector_the_verdict_still_answers():
    """--no-collector.cpu, or a cpu collector that fails: no busy share in the words, but the
    culprits are named; "still measuring" is only for the first seconds."""
    procs, rates = many_and_solo()
    cs = [Stub("sensors", FANS), Stub("process", snapshot=Table(procs), rates=rates)]
    r = verdict.compute(cs, host="box", wall=lambda: 1000.0, reason="a test box", failing={"cpu"})
    assert not r["measuring"] and r["cpu"]["usage_ratio"] is None
    assert (r["culprits"][0]["kind"], r["culprits"][0]["name"]) == ("group", "hhmany")
    assert r["sentence"] == "Fans at 78% (nct6775 fan2, 1840 rpm) because hhmany ×12 (root) uses 0.84 cores."
    r = verdict.compute(cs, host="box", wall=lambda: 1000.0, reason="a test box", pending={"cpu"})
    assert r["measuring"]


def test_hottest_and_fans_order():
    r = run(*many_and_solo())
    # the Wi-Fi radio is hottest but goes last; of two at 71 °C the one closer to its max comes first
    assert [t["name"] for t in r["temperatures"]] == ["nvme_nvme0 Composite", "platform_coretemp_0 Package id 0",
                                                      "ieee80211_phy0 temp1"]
    assert [t["kind"] for t in r["temperatures"]] == ["drive", "cpu", "radio"]
    assert [(f["name"], f["rpm"], f["ratio"]) for f in r["fans"]] == [
        ("nct6775 fan2", 1840.0, 0.78), ("nct6775 fan1", 700.0, 0.35)]


GPU = """
hoofhearted_gpu_info{gpu="0",uuid="GPU-1",name="NVIDIA H100",vendor="nvidia",driver_version="1",pci_bus_id="x"} 1
hoofhearted_gpu_utilization_ratio{gpu="0",uuid="GPU-1"} 0.97
hoofhearted_gpu_temperature_celsius{gpu="0",uuid="GPU-1"} 83
hoofhearted_gpu_temperature_slowdown_celsius{gpu="0",uuid="GPU-1"} 90
hoofhearted_gpu_fan_speed_ratio{gpu="0",uuid="GPU-1",fan="0"} 0.65
hoofhearted_gpu_power_watts{gpu="0",uuid="GPU-1"} 310
"""


def test_gpu_share_ranks_and_speaks():
    owner = "container/3f2a1b2c3d4e"
    procs = [proc(4242, "python3", "alice", owner, 2500 * MiB), proc(77, "sshd", "root", "ssh.service")]
    entries = [("0", "GPU-1", 4242, "python3", "alice", owner, 8 * 10**9, {"sm": 0.95, "dec": 0.1})]
    host = HOST.replace("hoofhearted_cpu_cores 2", "hoofhearted_cpu_cores 8")
    r = run(procs, {4242: 3.9, 77: 0.01}, host=host, gpu_entries=entries, gpu_text=GPU)
    top = r["culprits"][0]
    assert top["gpu"] == {"GPU0": 0.95} and top["gpu_memory_bytes"] == 8 * 10**9
    assert r["sentence"] == ("Fans at 78% (nct6775 fan2, 1840 rpm) because python3 (pid 4242, alice, "
                             "container 3f2a1b2c3d4e) uses 3.90 cores and 95% of GPU0.")
    assert r["gpus"] == [{"gpu": "0", "uuid": "GPU-1", "display": "GPU0", "name": "NVIDIA H100", "vendor": "nvidia",
                          "utilization_ratio": 0.97, "throttled_for": [],
                          "temperature_celsius": 83.0, "slowdown_celsius": 90.0, "power_watts": 310.0,
                          "memory_used_bytes": None, "memory_total_bytes": None}]
    assert r["temperatures"][0] == {"name": "GPU0", "chip": "GPU0", "sensor": "gpu", "label": "", "celsius": 83.0,
                                    "max_celsius": 90.0, "critical_celsius": None, "kind": "gpu"}
    # a GPU-only culprit: the GPU share outranks a process with a core
    r = run(procs, {4242: 0.02, 77: 1.0}, host=host, gpu_entries=entries, gpu_text=GPU)
    assert r["culprits"][0]["pid"] == 4242
    assert r["sentence"] == ("Fans at 78% (nct6775 fan2, 1840 rpm) because python3 (pid 4242, alice, "
                             "container 3f2a1b2c3d4e) uses 0.02 cores and 95% of GPU0.")
    fams = {f.name: f for f in verdict.families(r)}
    assert [s.labels for s in fams["hoofhearted_culprit_gpu_utilization_ratio"].samples] == [
        {"rank": "1", "gpu": "0", "uuid": "GPU-1"}]


def test_memory_controller_traffic_is_not_a_gpu_share():
    """NVML's memory "engine" is memory traffic: a memory-bound kernel at sm 0.1 does not
    outrank a trainer at sm 0.6 (the alerts, dashboards and power split agree)."""
    procs = [proc(1, "train", "alice"), proc(2, "membound", "bob"), proc(3, "nvenc", "carol")]
    entries = [("0", "GPU-1", 1, "train", "alice", "", None, {"sm": 0.6, "memory": 0.2}),
               ("0", "GPU-1", 2, "membound", "bob", "", None, {"sm": 0.1, "memory": 0.9}),
               ("0", "GPU-1", 3, "nvenc", "carol", "", None, {"sm": 0.0, "memory": 0.1, "encoder": 0.4})]
    r = run(procs, {1: 0.01, 2: 0.01, 3: 0.01}, gpu_entries=entries, gpu_text=GPU)
    assert [(c["name"], c["gpu"]) for c in r["culprits"]] == \
        [("train", {"GPU0": 0.6}), ("nvenc", {"GPU0": 0.4}), ("membound", {"GPU0": 0.1})]


def test_families_carry_ranks_one_to_three():
    r = run(*many_and_solo())
    fams = {f.name: f for f in verdict.families(r)}
    info = [(s.labels, s.value) for s in fams["hoofhearted_culprit_info"].samples]
    assert info[0] == ({"rank": "1", "kind": "group", "name": "hhmany", "user": "root", "owner": "", "pid": ""}, 1)
    assert info[1][0]["pid"] == "200" and info[1][0]["kind"] == "process"
    assert len(info) == 2            # the culprits partition the processes: there is no third
    assert [s.value for s in fams["hoofhearted_culprit_processes"].samples] == [12, 1]
    r = run(*many_and_solo(), host=HOST)
    r2 = run([proc(i, f"p{i}") for i in range(1, 6)], {i: 0.1 * i for i in range(1, 6)})
    assert [s.labels["rank"] for s in {f.name: f for f in verdict.families(r2)}["hoofhearted_culprit_info"].samples] \
        == ["1", "2", "3"]
    assert [c["pid"] for c in r2["culprits"]] == [5, 4, 3, 2, 1]
    assert fams["hoofhearted_culprit_cpu_usage_cores"].samples[0].value == pytest.approx(0.84)
    assert fams["hoofhearted_verdict_measuring"].samples[0].value == 0
    assert {s.labels["kind"]: s.value for s in fams["hoofhearted_sensors"].samples} == {"temperature": 3, "fan": 2}
    measuring = run(*many_and_solo(), rated=False)
    fams = {f.name: f for f in verdict.families(measuring)}
    assert fams["hoofhearted_culprit_info"].samples == []
    assert fams["hoofhearted_verdict_measuring"].samples[0].value == 1


def test_hostile_names_cannot_forge_lines():
    evil = "x\n\x1b[2KFans: all OK"
    r = run([proc(1, evil), proc(2, "sshd")], {1: 0.9, 2: 0.0})
    assert "\n" not in r["sentence"] and "\x1b" not in r["sentence"]
    assert r["sentence"].endswith("because x??[2KFans: all OK (pid 1, root) uses 0.90 cores.")
    assert r["culprits"][0]["name"] == evil         # the data stays exact; only the words are cleaned


def test_missing_sensors_reasons(tmp_path):
    sysfs, procfs, dev = tmp_path / "sys", tmp_path / "proc", tmp_path / "dev"
    for d in (sysfs / "class" / "dmi" / "id", procfs, dev):
        d.mkdir(parents=True)
    (procfs / "version").write_text("Linux version 6.1.0\n")
    (procfs / "cpuinfo").write_text("flags\t\t: fpu vme sse\n")
    assert verdict.missing_sensors_reason(str(sysfs), str(procfs), str(dev)).startswith("no hwmon sensors")
    (sysfs / "class" / "hwmon" / "hwmon0").mkdir(parents=True)
    assert verdict.missing_sensors_reason(str(sysfs), str(procfs), str(dev)).startswith("the hwmon chips report")
    (dev / "ipmi0").write_text("")
    assert verdict.missing_sensors_reason(str(sysfs), str(procfs), str(dev)).startswith("the fans are on the BMC")
    (sysfs / "class" / "dmi" / "id" / "sys_vendor").write_text("QEMU\n")
    assert "virtual machine" in verdict.missing_sensors_reason(str(sysfs), str(procfs), str(dev))
    (procfs / "version").write_text("Linux version 5.15.90.1-microsoft-standard-WSL2\n")
    assert "WSL" in verdict.missing_sensors_reason(str(sysfs), str(procfs), str(dev))


def test_pending_and_failing_process_collector():
    cs = [Stub("cpu", HOST), Stub("sensors", FANS)]
    r = verdict.compute(cs, host="box", reason="x", pending={"process"})
    assert r["measuring"] and r["sentence"].startswith("Still measuring")
    r = verdict.compute(cs, host="box", reason="x", failing={"process"})
    assert r["sentence"] == "Fans at 78% (nct6775 fan2, 1840 rpm) (CPU 57% busy); no per-process data " \
                            "(the process collector is failing)."


def test_two_vendors_with_a_gpu_0_are_told_apart():
    amd = GPU.replace('gpu="0",uuid="GPU-1"', 'gpu="0",uuid="0000:0b:00.0"').replace("NVIDIA H100", "Radeon") \
        .replace('vendor="nvidia"', 'vendor="amd"')
    owner = "container/3f2a1b2c3d4e"
    procs = [proc(4242, "python3", "alice", owner), proc(5, "blender", "bob")]
    entries = [("0", "GPU-1", 4242, "python3", "alice", owner, None, {"sm": 0.6}),
               ("0", "0000:0b:00.0", 5, "blender", "bob", "", None, {"gfx": 0.9})]
    r = run(procs, {4242: 0.1, 5: 0.1}, gpu_entries=entries, gpu_text=GPU + amd)
    assert sorted(g["display"] for g in r["gpus"]) == ["GPU0 (amd)", "GPU0 (nvidia)"]
    assert {c["name"]: c["gpu"] for c in r["culprits"][:2]} == {"blender": {"GPU0 (amd)": 0.9},
                                                               "python3": {"GPU0 (nvidia)": 0.6}}
    assert r["sentence"].endswith("because blender (pid 5, bob) uses 0.10 cores and 90% of GPU0 (amd).")
    fams = {f.name: f for f in verdict.families(r)}
    assert sorted(s.labels["uuid"] for s in fams["hoofhearted_culprit_gpu_utilization_ratio"].samples) == \
        ["0000:0b:00.0", "GPU-1"]


def test_a_throttling_gpu_is_said():
    owner = "container/3f2a1b2c3d4e"
    procs = [proc(4242, "python3", "alice", owner)]
    entries = [("0", "GPU-1", 4242, "python3", "alice", owner, None, {"sm": 0.95})]
    events = GPU + "".join(
        f'hoofhearted_gpu_clock_event{{gpu="0",uuid="GPU-1",reason="{r}"}} {v}\n'
        for r, v in (("gpu_idle", 0), ("sw_power_cap", 1), ("hw_thermal_slowdown", 1), ("sync_boost", 1)))
    r = run(procs, {4242: 0.1}, gpu_entries=entries, gpu_text=events)
    assert r["gpus"][0]["throttled_for"] == ["heat", "power"]
    assert r["sentence"] == ("Fans at 78% (nct6775 fan2, 1840 rpm) because python3 (pid 4242, alice, container "
                             "3f2a1b2c3d4e) uses 0.10 cores and 95% of GPU0. GPU0 is throttling for heat and power.")
