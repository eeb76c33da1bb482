"""Sensors: temperatures, fans, PWM and power (hwmon, thermal zones); RAPL CPU energy."""
import logging
from typing import NamedTuple

from ..sources import sensors
from .base import Collector, counter, gauge

log = logging.getLogger("hoofhearted.sensors")



class Readings(NamedTuple):
    temp: object
    tmax: object
    tcrit: object
    rpm: object
    rpm_max: object
    power: object


def reading_families():
    """The families every source of sensor readings fills (hwmon here, BMCs in collectors/bmc.py):
    declared once, so the scrape that joins them has one HELP and one label set each."""
    tl = ["chip", "sensor", "label"]
    return Readings(
        gauge("hoofhearted_temperature_celsius", "Temperature reading of a sensor.", tl),
        gauge("hoofhearted_temperature_max_celsius", "Temperature above which the sensor reports 'high'.", tl),
        gauge("hoofhearted_temperature_critical_celsius", "Temperature at which the hardware protects itself.", tl),
        gauge("hoofhearted_fan_speed_rpm", "Fan speed.", ["chip", "fan", "label"]),
        gauge("hoofhearted_fan_max_rpm", "Highest speed the fan is rated for.", ["chip", "fan"]),
        gauge("hoofhearted_power_watts", "Power drawn, as reported by a hardware monitor.", ["chip", "sensor"]))


def add_temperature(r, chip, t):
    """A temperature with its limits, where the source gives them."""
    labels = [chip, t.sensor, t.label]
    r.temp.add_metric(labels, t.celsius)
    if t.max_celsius is not None:
        r.tmax.add_metric(labels, t.max_celsius)
    if t.critical_celsius is not None:
        r.tcrit.add_metric(labels, t.critical_celsius)

class SensorsCollector(Collector):
    name = "sensors"
    escalates = True

    def __init__(self, sysfs="/sys"):
        super().__init__()
        self.sysfs = sysfs
        self.invalid = 0

    @classmethod
    def create(cls, config):
        return cls(config["paths"]["sysfs"])

    def update(self, now):
        snap = self.snapshot = sensors.read_sensors(self.sysfs)
        self.invalid += snap.invalid
        chip = gauge("hoofhearted_sensor_chip_info", "A sensor chip and the driver that provides it.",
                     ["chip", "chip_name"])
        for c, driver in sorted(snap.chips.items()):
            chip.add_metric([c, driver], 1)
        r = reading_families()
        temp, tmax, tcrit, rpm, rpm_max, power = r.temp, r.tmax, r.tcrit, r.rpm, r.rpm_max, r.power
        for t in snap.temperatures:
            add_temperature(r, t.chip, t)
        rpm_min = gauge("hoofhearted_fan_min_rpm", "Lowest speed the fan is set to.", ["chip", "fan"])
        for f in snap.fans:
            rpm.add_metric([f.chip, f.fan, f.label], f.rpm)
            if f.max_rpm is not None:
                rpm_max.add_metric([f.chip, f.fan], f.max_rpm)
            if f.min_rpm is not None:
                rpm_min.add_metric([f.chip, f.fan], f.min_rpm)
        pwm = gauge("hoofhearted_fan_pwm_ratio", "Fan drive duty cycle (0-1).", ["chip", "fan"])
        for p in snap.pwms:
            pwm.add_metric([p.chip, p.fan], p.ratio)
        for p in snap.power:
            power.add_metric([p.chip, p.sensor], p.watts)
        return [chip, temp, tmax, tcrit, rpm, rpm_max, rpm_min, pwm, power, invalid_family(self.name, self.invalid)]

    def hot(self, thresholds):
        if self.snapshot is None:
            return ()
        cpu = self.snapshot.cpu_chips()
        limit = thresholds["cpu_temperature_celsius"]
        if any(t.chip in cpu and t.celsius >= limit for t in self.snapshot.temperatures):
            return ("cpu_temperature",)
        return ()


def invalid_family(collector, total):
    fam = counter("hoofhearted_invalid_readings_total",
                  "Readings refused as implausible (NaN, out of range, not a number, too long); never exported.",
                  ["collector"])
    fam.add_metric([collector], total)
    return fam


RAPL_FIX = ("run with CAP_DAC_READ_SEARCH (the systemd unit and docker-compose.yml do) or let a group read "
            "the counters with deploy/udev/60-hoofhearted-rapl.rules")


def rapl_reason(zones, denied, sysfs):
    """Why no RAPL energy counter can be read, with the fix; None when some can."""
    if zones:
        return None
    if denied:
        return (f"RAPL energy counters are readable by root only (Linux 5.10 and later) domains={','.join(denied)} "
                f"fix: {RAPL_FIX}")
    return ("no RAPL powercap zones (a virtual machine or WSL, or the intel_rapl driver is not loaded: "
            "modprobe intel_rapl_msr); power per process comes only from GPUs, culprits are ranked by CPU share")


class RAPLCollector(Collector):
    """CPU energy counters; a wrap of the hardware counter is folded in so the total only grows."""

    name = "rapl"

    def __init__(self, sysfs="/sys"):
        super().__init__()
        self.sysfs = sysfs
        self.prev = {}       # zone directory -> (raw µJ, wrap offset µJ, total µJ, now)
        self.logged = False
        self.reason = None
        self.invalid = 0

    @classmethod
    def create(cls, config):
        return cls(config["paths"]["sysfs"])

    def update(self, now):
        invalid = [0]
        zones, denied = sensors.read_rapl(self.sysfs, invalid)
        self.invalid += invalid[0]
        self.snapshot = zones
        self.reason = rapl_reason(zones, denied, self.sysfs)
        if not self.logged:
            self.logged = True
            if self.reason:
                log.warning("no CPU power readings reason=%r", self.reason)
            elif denied:
                log.warning("some RAPL domains are readable by root only, skipped domains=%s fix: %s",
                            ",".join(denied), RAPL_FIX)
        readable = gauge("hoofhearted_rapl_readable",
                         "1 when RAPL CPU energy counters can be read, 0 when not (root-only since Linux 5.10, "
                         "or no powercap: the log says why once).")
        readable.add_metric([], 0 if self.reason else 1)
        energy = counter("hoofhearted_cpu_energy_joules", "Energy used by a RAPL domain (CPU package, cores, DRAM).",
                         ["domain"])
        watts = gauge("hoofhearted_cpu_power_watts", "Average power of a RAPL domain since the last refresh.",
                      ["domain"])
        seen = {}
        for z in zones:
            offset, total = 0, z.energy_uj
            if z.zone in self.prev:
                prev_raw, offset, prev_total, then = self.prev[z.zone]
                if z.energy_uj < prev_raw:  # the hardware counter wrapped
                    offset += z.max_energy_range_uj or prev_raw
                total = z.energy_uj + offset
                if now > then:
                    watts.add_metric([z.domain], (total - prev_total) / 1e6 / (now - then))
            seen[z.zone] = (z.energy_uj, offset, total, now)
            energy.add_metric([z.domain], total / 1e6)
        self.prev = seen
        return [readable, energy, watts, invalid_family(self.name, self.invalid)]
