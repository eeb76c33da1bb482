"""Temperatures, fans and power from sysfs: hwmon, thermal zones and RAPL powercap.

Chip names follow node_exporter so the two agree on the same box: the device path
('platform_coretemp_0'), with the hwmon name appended when several hwmons share one device,
else the hwmon 'name' file, else the hwmon directory name. Two coretemp chips on a
dual-socket box are therefore two chips.
"""
import os
import re
from dataclasses import dataclass, field

from .host import SYSFS_LIMIT, FileTooLarge, TooLarge, read_bytes, read_file, read_text

_SENSOR_FILE = re.compile(r"^(temp|fan|pwm|power)(\d+)(?:_(.+))?$")
_CLEAN = re.compile(r"[^a-z0-9:_]")

# hwmon drivers and thermal zone types that measure the CPU package or cores
CPU_CHIPS = {"coretemp", "k10temp", "k8temp", "zenpower", "cpu_thermal", "cpu-thermal",
             "x86_pkg_temp", "soc_thermal", "via_cputemp", "fam15h_power"}


def clean(name):
    return _CLEAN.sub("_", name.strip().lower()).strip("_")


@dataclass
class Temperature:
    chip: str
    sensor: str
    label: str
    celsius: float
    max_celsius: float = None
    critical_celsius: float = None


@dataclass
class Fan:
    chip: str
    fan: str
    label: str
    rpm: float = None
    max_rpm: float = None
    min_rpm: float = None


@dataclass
class Pwm:
    chip: str
    fan: str
    ratio: float


@dataclass
class Power:
    chip: str
    sensor: str
    watts: float


@dataclass
class SensorsSnapshot:
    chips: dict = field(default_factory=dict)   # chip -> driver name ('coretemp'), '' if unknown
    temperatures: list = field(default_factory=list)
    fans: list = field(default_factory=list)
    pwms: list = field(default_factory=list)
    power: list = field(default_factory=list)
    invalid: int = 0                            # readings refused as implausible

    def cpu_chips(self):
        return {c for c, driver in self.chips.items() if driver in CPU_CHIPS}


# What a sysfs number looks like: ASCII digits, an optional sign and fraction. float() would also
# take 'nan', 'inf', '1_000' and digits of other scripts.
_NUMBER = re.compile(rb"[ \t]*(-?[0-9]{1,15}(?:\.[0-9]{1,9})?)[ \t]*\n?")

# Plausible readings, in the units exported; anything else is a broken or lying sensor.
CELSIUS = (-60.0, 250.0)
RPM = (0.0, 100000.0)
WATTS = (0.0, 100000.0)
PWM = (0.0, 255.0)


class Invalid(float):
    """A reading that was there but is not a plausible number: counted, never exported."""


INVALID = Invalid("nan")


def _number(text):
    """A sysfs number (str or bytes) -> float; None when empty, INVALID when not a number."""
    if text is None:
        return None
    if isinstance(text, TooLarge):
        return INVALID
    if isinstance(text, str):
        text = text.encode("utf-8", "replace")
    if not text.strip():
        return None
    m = _NUMBER.fullmatch(text)
    return float(m.group(1)) if m else INVALID


def _read_number(path):
    return _number(read_bytes(path))


def plausible(value, bounds):
    """Whether a reading is a number within bounds (NaN and infinities are not)."""
    return value is not INVALID and bounds[0] <= value <= bounds[1]


def _check(value, scale, bounds, snap):
    """value / scale when within bounds; None (counted in snap.invalid) when not."""
    if value is None:
        return None
    v = value / scale
    if not plausible(v, bounds):
        snap.invalid += 1
        return None
    return v


def _device_name(hwmon_dir):
    dev = os.path.join(hwmon_dir, "device")
    if not os.path.exists(dev):
        return None
    real = os.path.realpath(dev)
    parent, name = os.path.split(real)
    dev_type = clean(os.path.basename(parent))
    name = clean(name)
    if dev_type and name:
        return f"{dev_type}_{name}"
    return name or None


def _sensor_files(directory):
    """{('temp', '1'): {'input': path, 'label': path, ...}} for known sensor types."""
    out = {}
    try:
        names = os.listdir(directory)
    except OSError:
        return out
    for fname in names:
        m = _SENSOR_FILE.match(fname)
        if not m:
            continue
        kind, num, prop = m.group(1), m.group(2), m.group(3) or ""
        out.setdefault((kind, num), {})[prop] = os.path.join(directory, fname)
    return out


def list_hwmons(sysfs):
    """[(chip, driver, dir)] with collision-free chip names."""
    base = os.path.join(sysfs, "class", "hwmon")
    try:
        entries = sorted(os.listdir(base), key=lambda n: (len(n), n))
    except OSError:
        return []
    found = []
    for entry in entries:
        d = os.path.join(base, entry)
        if not os.path.isdir(d):
            continue
        driver = clean(read_text(os.path.join(d, "name")) or "")
        found.append((_device_name(d), driver, d, entry))
    by_device = {}
    for dev, _, _, _ in found:
        if dev:
            by_device[dev] = by_device.get(dev, 0) + 1
    out, used = [], set()
    for dev, driver, d, entry in found:
        if dev and by_device[dev] > 1 and driver:
            chip = f"{dev}_{driver}"
        else:
            chip = dev or driver or clean(entry)
        if chip in used:  # last resort: never emit two chips under one name
            chip = f"{chip}_{clean(entry)}"
        used.add(chip)
        out.append((chip, driver, d))
    return out


def read_hwmon(sysfs, snap):
    for chip, driver, d in list_hwmons(sysfs):
        snap.chips[chip] = driver
        files = _sensor_files(os.path.join(d, "device"))
        files.update(_sensor_files(d))
        for (kind, num), props in sorted(files.items(), key=lambda kv: (kv[0][0], int(kv[0][1]))):
            read = lambda p: _read_number(props[p]) if p in props else None  # noqa: E731
            label = (read_text(props["label"]) or "").strip() if "label" in props else ""
            if kind == "temp":
                value = _check(read("input"), 1000, CELSIUS, snap)
                if value is None:
                    continue
                mx, crit = read("max"), read("crit")
                snap.temperatures.append(Temperature(
                    chip, f"temp{num}", label, value,
                    _check(mx, 1000, CELSIUS, snap) if mx else None,
                    _check(crit, 1000, CELSIUS, snap) if crit else None))
            elif kind == "fan":
                rpm = _check(read("input"), 1, RPM, snap)
                if rpm is None:
                    continue
                mx, mn = read("max"), read("min")
                snap.fans.append(Fan(chip, f"fan{num}", label, rpm, _check(mx, 1, RPM, snap) if mx else None,
                                     _check(mn, 1, RPM, snap)))
            elif kind == "pwm":
                value = _check(read(""), 255, (0.0, 1.0), snap)
                if value is not None:
                    snap.pwms.append(Pwm(chip, f"fan{num}", value))
            elif kind == "power":
                value = read("input")
                if value is None:
                    value = read("average")
                value = _check(value, 1e6, WATTS, snap)
                if value is not None:
                    snap.power.append(Power(chip, label or f"power{num}", value))


def read_thermal_zones(sysfs, snap):
    base = os.path.join(sysfs, "class", "thermal")
    try:
        zones = sorted(n for n in os.listdir(base) if n.startswith("thermal_zone"))
    except OSError:
        return
    for zone in zones:
        d = os.path.join(base, zone)
        value = _check(_read_number(os.path.join(d, "temp")), 1000, CELSIUS, snap)
        if value is None:
            continue
        kind = (read_text(os.path.join(d, "type")) or "").strip()
        crit = None
        for i in range(16):
            ttype = read_text(os.path.join(d, f"trip_point_{i}_type"))
            if ttype is None:
                break
            if ttype.strip() == "critical":
                crit = _read_number(os.path.join(d, f"trip_point_{i}_temp"))
        snap.chips[zone] = kind
        snap.temperatures.append(Temperature(zone, "temp", kind, value, None,
                                             _check(crit, 1000, CELSIUS, snap) if crit else None))


def read_sensors(sysfs):
    snap = SensorsSnapshot()
    read_hwmon(sysfs, snap)
    read_thermal_zones(sysfs, snap)
    return snap


@dataclass
class RAPLZone:
    domain: str          # 'package-0', 'package-0/core'; unique among the zones read together
    energy_uj: int
    max_energy_range_uj: int = None
    zone: str = ""       # the powercap directory ('intel-rapl:0'): the key, as node_exporter keys it


def read_rapl(sysfs, invalid=None):
    """Energy counters of every powercap zone; unreadable zones (root-only) are skipped.

    ``intel-rapl:0`` and ``intel-rapl-mmio:0`` are both named 'package-0': zones are keyed by
    directory, and a domain name taken already gets its control type added
    ('package-0 (intel-rapl-mmio)'). Implausible counters are skipped and counted in
    ``invalid`` (a one-element list) when given."""
    base = os.path.join(sysfs, "class", "powercap")
    try:
        names = sorted(os.listdir(base))
    except OSError:
        return [], []
    zones, denied = [], []
    by_dir = {}
    for n in names:
        d = os.path.join(base, n)
        name = (read_text(os.path.join(d, "name")) or "").strip()
        if not name or ":" not in n:
            continue
        by_dir[n] = name
    # the plain control type first, so 'intel-rapl:0' keeps the plain 'package-0'
    order = sorted(by_dir, key=lambda n: (len(n.split(":", 1)[0]), n))
    used = set()
    for n in order:
        name = by_dir[n]
        parent = n.rsplit(":", 1)[0]
        domain = f"{by_dir[parent]}/{name}" if parent in by_dir and parent != n else name
        if domain in used:
            domain = f"{domain} ({n.split(':', 1)[0]})"
        used.add(domain)
        path = os.path.join(base, n, "energy_uj")
        try:
            energy = _number(read_file(path, SYSFS_LIMIT))
        except FileTooLarge:
            energy = INVALID
        except PermissionError:          # root-only since Linux 5.10: said, not just skipped
            denied.append(domain)
            continue
        except OSError:
            continue
        rng = _read_number(os.path.join(base, n, "max_energy_range_uj"))
        if energy is None:
            continue
        if energy is INVALID or energy < 0 or (rng and rng is not INVALID and energy > rng):
            if invalid is not None:
                invalid[0] += 1
            continue
        zones.append(RAPLZone(domain, int(energy), int(rng) if rng and rng is not INVALID and rng > 0 else None, n))
    return zones, denied
