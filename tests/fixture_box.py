"""A whole machine made of fixtures: procfs and sysfs trees, a fake NVML, fixed filesystem sizes.

Used by the golden exposition and the README metric table, so both cover every collector.
"""
import os
import shutil

from conftest import FIXTURES, PROCFS_FIXTURE, PROCFS_SYSFS, SYSFS

FAKE_NVML = "tests.fakenvml.box"


class FixedStatvfs:
    f_frsize = 4096
    f_blocks = 25_000_000
    f_bavail = 10_000_000


def bump_stat(path, jiffies):
    """Advance every cpu line by `jiffies` in each of user and idle: 50 % busy."""
    out = []
    for line in open(path):
        if line.startswith("cpu"):
            parts = line.split()
            parts[1] = str(int(parts[1]) + jiffies)
            parts[4] = str(int(parts[4]) + jiffies)
            line = " ".join(parts) + "\n"
        out.append(line)
    with open(path, "w") as f:
        f.writelines(out)


def bump_energy(sysfs, seconds, watts=(("intel-rapl:0", 40.0), ("intel-rapl:0:0", 25.0))):
    """Advance the box's RAPL counters as if the package drew 40 W and its cores 25 W."""
    for zone, w in watts:
        path = os.path.join(sysfs, "class", "powercap", zone, "energy_uj")
        with open(path) as f:
            value = int(f.read().strip())
        with open(path + ".new", "w") as f:       # a reader never sees a half-written file
            f.write(f"{value + int(w * 1e6 * seconds)}\n")
        os.replace(path + ".new", path)


class EnergyTicker:
    """Advances the box's RAPL counters every few milliseconds, for a running exporter."""

    def __init__(self, sysfs, period=0.01):
        import threading
        self.sysfs, self.period = sysfs, period
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop.wait(self.period):
            bump_energy(self.sysfs, self.period)

    def stop(self):
        self._stop.set()
        self._thread.join(2)


def make_sysfs(root):
    """hwmon, thermal, powercap and cpufreq from node_exporter's tree; DRM cards from procfs's;
    plus one board controller of ours with PWM and a power meter, which that tree lacks."""
    for sub in ("class/thermal",):
        os.makedirs(os.path.dirname(os.path.join(root, sub)), exist_ok=True)
        os.symlink(os.path.join(SYSFS, sub), os.path.join(root, sub))
    # a copy: refresh_twice advances the package and core counters
    shutil.copytree(os.path.join(SYSFS, "class", "powercap"), os.path.join(root, "class", "powercap"), symlinks=True)
    hwmon = os.path.join(root, "class", "hwmon")
    os.makedirs(hwmon)
    for entry in os.listdir(os.path.join(SYSFS, "class", "hwmon")):
        os.symlink(os.path.realpath(os.path.join(SYSFS, "class", "hwmon", entry)), os.path.join(hwmon, entry))
    board = os.path.join(hwmon, "hwmon20")
    os.makedirs(board)
    for name, value in (("name", "nct6798"), ("fan1_input", "1500"), ("fan1_max", "3000"), ("pwm1", "153"),
                        ("power1_average", "31500000"), ("temp1_input", "41000"), ("temp1_label", "SYSTIN")):
        with open(os.path.join(board, name), "w") as f:
            f.write(value + "\n")
    os.symlink(os.path.join(SYSFS, "devices"), os.path.join(root, "devices"))
    drm = os.path.join(root, "class", "drm")
    os.makedirs(drm)
    # the Intel iGPU, with the GT frequency files i915 has beside its card
    shutil.copytree(os.path.join(PROCFS_SYSFS, "class", "drm", "card1"), os.path.join(drm, "card1"), symlinks=True)
    for name, value in (("gt_act_freq_mhz", "350"), ("gt_cur_freq_mhz", "350"), ("gt_max_freq_mhz", "1150")):
        with open(os.path.join(drm, "card1", name), "w") as f:
            f.write(value + "\n")
    shutil.copytree(os.path.join(PROCFS_SYSFS, "class", "drm", "card0"), os.path.join(drm, "card0"), symlinks=True)
    amd_hwmon = os.path.join(drm, "card0", "device", "hwmon", "hwmon31")
    os.makedirs(amd_hwmon)
    for name, value in (("name", "amdgpu"), ("temp1_input", "61000"), ("temp1_label", "edge"),
                        ("temp2_input", "74000"), ("temp2_label", "junction"), ("temp2_crit", "110000"),
                        ("fan1_input", "1830"),
                        ("pwm1", "102"), ("power1_average", "143000000")):
        with open(os.path.join(amd_hwmon, name), "w") as f:
            f.write(value + "\n")
    # an AMD APU (made up: no fixture has one): VRAM a 512 MiB carve-out, power1 the whole package
    apu = os.path.join(drm, "card2", "device")
    os.makedirs(os.path.join(apu, "hwmon", "hwmon32"))
    for name, value in (("uevent", "DRIVER=amdgpu\nPCI_SLOT_NAME=0000:c4:00.0"), ("vendor", "0x1002"),
                        ("device", "0x15bf"), ("gpu_busy_percent", "3"), ("mem_busy_percent", "1"),
                        ("mem_info_vram_total", "536870912"), ("mem_info_vram_used", "402653184"),
                        ("mem_info_gtt_total", "16106127360"), ("hwmon/hwmon32/name", "amdgpu"),
                        ("hwmon/hwmon32/temp1_input", "45000"), ("hwmon/hwmon32/temp1_label", "edge"),
                        ("hwmon/hwmon32/power1_input", "23000000")):
        with open(os.path.join(apu, name), "w") as f:
            f.write(value + "\n")
    os.symlink(os.path.join(PROCFS_SYSFS, "bus"), os.path.join(root, "bus"))
    return root


def make_procfs(root):
    shutil.copytree(PROCFS_FIXTURE, root, symlinks=True)
    os.makedirs(os.path.join(root, "1"), exist_ok=True)
    with open(os.path.join(root, "1", "mounts"), "w") as f:
        f.write("/dev/sda1 / ext4 rw,relatime 0 0\nproc /proc proc rw 0 0\n/dev/sdb1 /data xfs rw 0 0\n")
    with open(os.path.join(root, "filesystems"), "w") as f:
        f.write("nodev\tsysfs\nnodev\tproc\n\text4\n\txfs\n")
    # vim renders on the Intel iGPU (card1, 0000:00:02.0): a DRM client in its fdinfo
    os.symlink("/dev/dri/renderD128", os.path.join(root, "26231", "fd", "9"))
    shutil.copy(os.path.join(FIXTURES, "fdinfo", "i915-2022-engines.fdinfo"), os.path.join(root, "26231", "fdinfo", "9"))
    # a miner, copied from the vim process: the miner metric needs one to appear
    miner = os.path.join(root, "31337")
    shutil.copytree(os.path.join(root, "26231"), miner, symlinks=True)
    with open(os.path.join(miner, "stat")) as f:
        stat = f.read().replace("(vim)", "(xmrig)", 1)
    for name, text in (("stat", stat), ("comm", "xmrig\n"),
                       ("cmdline", "xmrig\0--url\0stratum+tcp://pool.example:3333\0--pass\0hunter2\0")):
        with open(os.path.join(miner, name), "w") as f:
            f.write(text)
    # these fixture processes have no status file; without one the user would be whoever
    # copied the tree, which differs between machines
    for pid, uid in (("584", 0), ("27079", 0), ("26232", 33)):
        with open(os.path.join(root, pid, "status"), "w") as f:
            f.write(f"Name:\tfixture\nUid:\t{uid}\t{uid}\t{uid}\t{uid}\n")
    return root


def box_config(tmp):
    from exporter.config import defaults
    cfg = defaults()
    cfg["paths"]["procfs"] = make_procfs(os.path.join(tmp, "proc"))
    cfg["paths"]["sysfs"] = make_sysfs(os.path.join(tmp, "sys"))
    cfg["paths"]["rootfs"] = tmp
    cfg["gpu"]["nvml_module"] = FAKE_NVML
    # nothing listens on the discard port: pushes fail fast and are counted
    cfg["grafana_live"].update(url="http://127.0.0.1:9", token="box")
    # a server with a BMC: its device node (a file here) and FreeIPMI's output replayed, as captured
    # from the simulated BMC of tests/bmcsim.py
    device = os.path.join(tmp, "dev-ipmi0")
    open(device, "w").close()
    cfg["bmc"]["ipmi"].update(local=True, device=device,
                              ipmi_sensors=os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                        "fixtures", "bmc", "ipmi-sensors"))
    return cfg


def box_collectors(tmp):
    """Every registered collector on the fixture box; the stat file advances between refreshes."""
    from exporter import collectors
    cfg = box_config(tmp)
    built = collectors.build(cfg)
    for c in built:
        if c.name == "filesystem":
            c.statvfs = lambda path: FixedStatvfs()
    return built, cfg


def bump_process(procfs, pid, ticks):
    """Advance a process's utime (field 14 of /proc/PID/stat) by `ticks`."""
    path = os.path.join(procfs, str(pid), "stat")
    head, _, rest = open(path).read().rpartition(")")
    fields = rest.split(" ")
    fields[12] = str(int(fields[12]) + ticks)      # rest starts with the space after ')'
    with open(path, "w") as f:
        f.write(head + ")" + " ".join(fields))


def bump_engine(path, engine, ns):
    lines = []
    for line in open(path):
        if line.startswith(f"drm-engine-{engine}:"):
            line = f"drm-engine-{engine}:\t{int(line.split()[1]) + ns} ns\n"
        lines.append(line)
    with open(path, "w") as f:
        f.writelines(lines)


def refresh_twice(built, procfs):
    """Two refreshes a second apart: the host 50 % busy, the miner burning one core, vim keeping
    the Intel iGPU's render engine 40 % busy."""
    families = []
    for c in built:
        c.refresh(100.0)
    bump_stat(os.path.join(procfs, "stat"), 100)
    bump_process(procfs, 31337, os.sysconf("SC_CLK_TCK"))
    bump_engine(os.path.join(procfs, "26231", "fdinfo", "9"), "render", 400_000_000)
    for c in built:
        if c.name == "rapl":
            bump_energy(c.sysfs, 1.0)
    for c in built:
        families += c.refresh(101.0)
    return families


def box_stage_families(built, cfg):
    """What the verdict stage and the Live sink add to /metrics on the box, after one (failing) push."""
    from exporter import attribution, verdict
    from exporter.live import LiveSink
    from exporter.pipeline import attribute
    power = attribution.Attributor()
    attribute(power, built, 100.0)
    report = verdict.compute(built, host="box", wall=lambda: 1000.0, reason="a fixture box",
                             power=attribute(power, built, 101.0))
    sink = LiveSink(cfg, host="box")
    sink.push(built, report)
    return verdict.families(report) + power.families() + sink.families()
