"""Fans, temperatures and power that only the server's BMC sees (IPMI, Redfish).

Series go into the same families as hwmon's, so dashboards, alerts and the verdict use them
as they are: chip "bmc" for the local BMC, "bmc-<name>" for a configured remote one.
Every target is read in its own thread with its own timeout; a BMC that hangs or answers
late marks only itself down (``hoofhearted_bmc_up{bmc}`` 0) and its thread is not started
again until the hung read returns.
"""
import logging
import os
import threading
import time
from dataclasses import replace

from .. import config as cfgmod
from ..sources import bmc_ipmi
from ..sources.bmc import BMCError, Snapshot, scrub
from .base import Collector, gauge
from ..sources.host import read_file
from ..sources.sensors import CELSIUS, RPM, WATTS, plausible
from .sensors import add_temperature, invalid_family, reading_families

log = logging.getLogger("hoofhearted.bmc")

LOCAL = "local"
RATIO = (0.0, 1.0)          # a fan in percent: 0-100 % by the Redfish and IPMI specifications


class Target:
    """One BMC: a reader, its last result and the read in flight."""

    def __init__(self, name, protocol, chip, reader, timeout, secret=None):
        self.name, self.protocol, self.chip = name, protocol, chip
        self.reader = reader
        self.timeout = timeout
        self.secret = secret
        self.thread = None
        self.result = None          # (snapshot, None) or (None, BMCError)
        self.last_error = None

    def start(self):
        if self.thread is not None and self.thread.is_alive():
            return False            # the last read still hangs: do not pile up threads
        self.result = None
        self.thread = threading.Thread(target=self._run, name=f"bmc-{self.name}", daemon=True)
        self.thread.start()
        return True

    def _run(self):
        try:
            result = (self.reader.read(), None)
        except BMCError as e:
            result = (None, e)
        except Exception as e:      # a library bug must not take the collector down
            result = (None, BMCError("protocol", f"{type(e).__name__}: {scrub(e, self.secret)}"))
        self.result = result


class BMCCollector(Collector):
    name = "bmc"

    def __init__(self, targets, note=None):
        super().__init__()
        self.targets = targets
        self.note = note            # (log level, text): why there is no local BMC, said on the first refresh
        self.invalid = 0            # readings refused as implausible (NaN, infinite, out of range)

    @classmethod
    def create(cls, config):
        bmc = config["bmc"]
        timeout = min(bmc["timeout_seconds"], config["refresh"]["timeout_seconds"] * 0.8)
        targets = []
        note = None
        local = bmc["ipmi"]["local"]
        device = bmc["ipmi"]["device"]
        if local is not False:
            problem = bmc_ipmi.local_problem(device)
            if problem is None or local is True:
                reader = bmc_ipmi.IPMIReader(device=device, timeout=timeout, tool=bmc["ipmi"]["ipmi_sensors"])
                targets.append(Target(LOCAL, "ipmi", "bmc", reader, timeout))
            if problem is not None:
                # with local: true the target also stays down
                note = (logging.WARNING if local is True else logging.INFO, f"no local BMC: {problem}")
        for i, t in enumerate(bmc["ipmi"]["targets"]):
            secret = _password(t, f"bmc.ipmi.targets[{i}]")
            tmo = min(t["timeout_seconds"] or timeout, timeout)
            reader = bmc_ipmi.IPMIReader(host=t["host"], port=t["port"], username=t["username"], password=secret,
                                         timeout=tmo, privilege=t["privilege"],
                                         workaround_flags=t["workaround_flags"], tool=bmc["ipmi"]["ipmi_sensors"])
            targets.append(Target(t["name"], "ipmi", "bmc-" + t["name"], reader, tmo, secret))
        for i, t in enumerate(bmc["redfish"]["targets"]):
            from ..sources import bmc_redfish
            secret = _password(t, f"bmc.redfish.targets[{i}]")
            key = f"bmc.redfish.targets[{i}].ca_file"
            if t["ca_file"] and not os.access(t["ca_file"], os.R_OK):
                raise cfgmod.ConfigError(f"{key}: cannot read {t['ca_file']}")
            tmo = min(t["timeout_seconds"] or timeout, timeout)
            reader = bmc_redfish.RedfishReader(t["url"], username=t["username"], password=secret,
                                               verify_tls=t["verify_tls"], ca_file=t["ca_file"],
                                               auth=t["auth"], timeout=tmo)
            if not t["verify_tls"]:
                log.warning("TLS certificate of the BMC is not verified bmc=%s", t["name"])
            targets.append(Target(t["name"], "redfish", "bmc-" + t["name"], reader, tmo, secret))
        names = [t.name for t in targets]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise cfgmod.ConfigError(f"bmc: target name {sorted(dup)[0]!r} is used by an IPMI and a Redfish target")
        if not targets and note is None:
            return None             # BMCs switched off entirely
        return cls(targets, note)

    def update(self, now):
        if self.note is not None:
            log.log(*self.note)
            self.note = None
        started = time.monotonic()
        for t in self.targets:
            t.start()
        # all reads run at once; wait for each up to its own deadline
        for t in self.targets:
            left = t.timeout + 0.2 - (time.monotonic() - started)   # the reader's own timeout fires first
            if t.thread is not None and left > 0:
                t.thread.join(left)
        up = gauge("hoofhearted_bmc_up", "Whether the BMC answered the last read in time.", ["bmc"])
        info = gauge("hoofhearted_bmc_info", "A BMC read by the exporter: protocol and the chip label of its series.",
                     ["bmc", "protocol", "chip"])
        r = reading_families()
        temp, tmax, tcrit, rpm, rpm_max, power = r.temp, r.tmax, r.tcrit, r.rpm, r.rpm_max, r.power
        ratio = gauge("hoofhearted_fan_speed_ratio",
                      "Fan speed as a fraction of full speed (0-1), for fans reported in percent (BMCs).",
                      ["chip", "fan", "label"])
        snapshots = {}
        for t in self.targets:
            info.add_metric([t.name, t.protocol, t.chip], 1)
            snap, err = t.result if t.result is not None else (None, None)
            if snap is None and err is None:
                alive = t.thread is not None and t.thread.is_alive()
                err = BMCError("timeout", f"no answer within {t.timeout:g}s" if alive else "not read")
            self._log_state(t, err)
            up.add_metric([t.name], 0 if err else 1)
            if err:
                continue
            snap = snapshots[t.name] = self._plausible(snap)
            for reading in snap.temperatures:
                add_temperature(r, t.chip, reading)
            for f in snap.fans:
                if f.rpm is not None:
                    rpm.add_metric([t.chip, f.fan, f.label], f.rpm)
                if f.ratio is not None:
                    ratio.add_metric([t.chip, f.fan, f.label], f.ratio)
                if f.max_rpm is not None:
                    rpm_max.add_metric([t.chip, f.fan], f.max_rpm)
            for p in snap.power:
                power.add_metric([t.chip, p.sensor], p.watts)
        self.snapshot = snapshots
        return [up, info, temp, tmax, tcrit, rpm, rpm_max, ratio, power, invalid_family(self.name, self.invalid)]

    def _check(self, value, bounds):
        """The value when it is a plausible reading; None (counted) when a BMC sent NaN, an
        infinity or a number out of range: a lying sensor must not become the verdict's hottest."""
        if value is None or plausible(value, bounds):
            return value
        self.invalid += 1
        return None

    def _plausible(self, snap):
        out = Snapshot()
        for t in snap.temperatures:
            if self._check(t.celsius, CELSIUS) is not None:
                out.temperatures.append(replace(t, max_celsius=self._check(t.max_celsius, CELSIUS),
                                                critical_celsius=self._check(t.critical_celsius, CELSIUS)))
        for f in snap.fans:
            f = replace(f, rpm=self._check(f.rpm, RPM), ratio=self._check(f.ratio, RATIO),
                        max_rpm=self._check(f.max_rpm, RPM) or None)
            if f.rpm is not None or f.ratio is not None:
                out.fans.append(f)
        out.power = [p for p in snap.power if self._check(p.watts, WATTS) is not None]
        return out

    def _log_state(self, t, err):
        text = None if err is None else f"{err.reason}: {scrub(err, t.secret)}"
        # a new line only when the kind of failure changes, not for every refresh of a dead BMC
        if (err.reason if err else None) == t.last_error:
            return
        if err is None:
            log.info("BMC answers again bmc=%s", t.name)
        else:
            log.warning("BMC read failed bmc=%s protocol=%s err=%r", t.name, t.protocol, text)
        t.last_error = err.reason if err else None

    def close(self):
        for t in self.targets:
            try:
                t.reader.close()
            except Exception as e:
                log.debug("close failed bmc=%s err=%r", t.name, scrub(e, t.secret))


PASSWORD_LIMIT = 4096      # bytes: a password file, not whatever the path points at


def _password(target, key):
    """A target's password from its file or environment variable; None when it has neither.
    The file must be a regular file of at most PASSWORD_LIMIT bytes, read without blocking (a
    FIFO or /dev/zero in its place is an error, not a hang or a full memory)."""
    if target.get("password_file"):
        path = target["password_file"]
        where = f"{key}.password_file: cannot read {path}"
        try:
            data = read_file(path, PASSWORD_LIMIT)
        except OSError as e:
            raise cfgmod.ConfigError(f"{where}: {e.strerror or type(e).__name__}") from None
        try:
            return data.decode("utf-8").rstrip("\r\n")
        except UnicodeDecodeError:
            raise cfgmod.ConfigError(f"{where}: not UTF-8 text") from None
    if target.get("password_env"):
        var = target["password_env"]
        if var not in os.environ:
            raise cfgmod.ConfigError(f"{key}.password_env: environment variable {var} is not set")
        return os.environ[var]
    return None
