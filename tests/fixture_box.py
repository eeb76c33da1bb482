"""A whole machine made of fixtures: procfs and sysfs trees, a fake NVML, fixed filesystem sizes.

Used by the golden exposition and the README metric table, so both cover every collector.
"""
import os
import shutil

from conftest import FIXTURES, PROCFS_FIXTURE, PROCFS_SYSFS, SYSFS

FAKE_NVML = "tests.fakenvml.h100"


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


def make_sysfs(root):
    """hwmon, thermal, powercap and cpufreq from node_exporter's tree; DRM cards from procfs's;
    plus one board controller of ours with PWM and a power meter, which that tree lacks."""
    for sub in ("class/thermal", "class/powercap"):
        os.makedirs(os.path.dirname(os.path.join(root, sub)), exist_ok=True)
        os.symlink(os.path.join(SYSFS, sub), os.path.join(root, sub))
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
    os.symlink(os.path.join(PROCFS_SYSFS, "class", "drm"), os.path.join(root, "class", "drm"))
    os.symlink(os.path.join(PROCFS_SYSFS, "bus"), os.path.join(root, "bus"))
    return root


def make_procfs(root):
    shutil.copytree(PROCFS_FIXTURE, root, symlinks=True)
    os.makedirs(os.path.join(root, "1"), exist_ok=True)
    with open(os.path.join(root, "1", "mounts"), "w") as f:
        f.write("/dev/sda1 / ext4 rw,relatime 0 0\nproc /proc proc rw 0 0\n/dev/sdb1 /data xfs rw 0 0\n")
    with open(os.path.join(root, "filesystems"), "w") as f:
        f.write("nodev\tsysfs\nnodev\tproc\n\text4\n\txfs\n")
    return root


def box_config(tmp):
    from exporter.config import defaults
    cfg = defaults()
    cfg["paths"]["procfs"] = make_procfs(os.path.join(tmp, "proc"))
    cfg["paths"]["sysfs"] = make_sysfs(os.path.join(tmp, "sys"))
    cfg["paths"]["rootfs"] = tmp
    if "nvml_module" in cfg.get("gpu", {}):
        cfg["gpu"]["nvml_module"] = FAKE_NVML
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


def refresh_twice(built, procfs):
    families = []
    for c in built:
        c.refresh(100.0)
    bump_stat(os.path.join(procfs, "stat"), 100)
    for c in built:
        families += c.refresh(101.0)
    return families
