"""IPMI sensors through pyghmi: the local BMC in-band (/dev/ipmi0) or a remote one over RMCP+.

The SDR repository (sensor names, units, conversion factors) and the thresholds are read once
per connection; a refresh then costs one Get Sensor Reading per sensor. Sensors the BMC does
not read (scanning disabled, reading unavailable, not present) give no value.
"""
import os
import threading

from .bmc import BMCError, Fan, Power, Snapshot, Temperature, scrub, unique

FAN, TEMPERATURE = 0x04, 0x01
_NO_READING = {0xCB, 0xCC, 0xD5}   # not present, invalid field (no such sensor), not in this state
_UNIT_C, _UNIT_F, _UNIT_W, _UNIT_RPM = 1, 2, 6, 18
DEVICE = "/dev/ipmi0"


def local_problem(device=DEVICE):
    """Why the in-band BMC cannot be used, or None when it can."""
    if not os.path.exists(device):
        return (f"{device} does not exist (no BMC, or the ipmi_si and ipmi_devintf kernel modules "
                f"are not loaded, or the device is not passed into the container)")
    if not os.access(device, os.R_OK | os.W_OK):
        return f"{device} is not readable and writable by uid {os.getuid()} (run as root or grant access)"
    return None


class IPMIReader:
    """One BMC. ``host`` None means in-band. Not thread-safe: one reader per thread at a time."""

    def __init__(self, host=None, port=623, username=None, password=None, device=DEVICE):
        self.host, self.port, self.username, self.device = host, port, username, device
        self._password = password
        self._cmd = None
        self._thresholds = {}
        self._lock = threading.Lock()

    def __repr__(self):
        where = f"{self.host}:{self.port}" if self.host else self.device
        return f"IPMIReader({where})"

    def _connect(self):
        try:
            from pyghmi.ipmi import command
        except ImportError:
            raise BMCError("setup", "pyghmi is not installed (pip install pyghmi)") from None
        try:
            if self.host is None:
                problem = local_problem(self.device)
                if problem:
                    raise BMCError("device", problem)
                return command.Command()
            return command.Command(bmc=self.host, userid=self.username, password=self._password,
                                   port=self.port, keepalive=True)
        except BMCError:
            raise
        except Exception as e:
            raise self._error(e, "login") from None

    def _error(self, e, stage):
        text = scrub(e, self._password)
        low = text.lower()
        if "password" in low or "unauthorized" in low or "auth" in low or "privilege" in low:
            reason = "auth"
        elif "timeout" in low or "timed out" in low or "not responding" in low:
            reason = "timeout"
        else:
            reason = "protocol"
        return BMCError(reason, f"{stage} failed: {text}")

    def read(self):
        with self._lock:
            if self._cmd is None:
                self._cmd = self._connect()
                self._thresholds = {}
            try:
                return self._read(self._cmd)
            except BMCError:
                self._drop()
                raise
            except Exception as e:
                self._drop()
                raise self._error(e, "reading sensors") from None

    def _drop(self):
        cmd, self._cmd = self._cmd, None
        if cmd is not None and self.host is not None:
            try:
                cmd.ipmi_session.logout()
            except Exception:
                pass

    def close(self):
        with self._lock:
            self._drop()

    def _read(self, cmd):
        sdr = cmd.init_sdr()
        snap = Snapshot()
        seen = set()
        for key in sdr.get_sensor_numbers():
            entry = sdr.sensors[key]
            if getattr(entry, "numeric_format", 3) == 3 or not getattr(entry, "readable", True):
                continue        # discrete or event-only: no number to export
            kind = _kind(entry)
            if kind is None:
                continue
            rsp = cmd.raw_command(netfn=4, command=0x2D, rslun=entry.sensor_lun, data=(entry.sensor_number,))
            if "error" in rsp:
                if rsp.get("code") in _NO_READING:
                    continue
                raise BMCError("protocol", f"sensor {entry.name}: {rsp['error']}")
            reading = entry.decode_sensor_reading(cmd, rsp["data"])
            if reading.unavailable or reading.value is None:
                continue
            name = unique(entry.name, seen)
            where = str(entry.entity)
            value = float(reading.value)
            if kind == "fan":
                if entry.percent:
                    snap.fans.append(Fan(name, where, ratio=value / 100.0))
                else:
                    snap.fans.append(Fan(name, where, rpm=value))
            elif kind == "temperature":
                unc, uc = self._upper_thresholds(cmd, entry)
                convert = _f_to_c if entry.baseunit == "°F" else float
                snap.temperatures.append(Temperature(
                    name, where, convert(value),
                    None if unc is None else convert(unc), None if uc is None else convert(uc)))
            elif kind == "power":
                snap.power.append(Power(name, value))
        return snap

    def _upper_thresholds(self, cmd, entry):
        """(upper non-critical, upper critical) in the sensor's unit; None where not readable."""
        key = (entry.sensor_owner, entry.sensor_lun, entry.sensor_number)
        if key not in self._thresholds:
            out = (None, None)
            if entry.has_thresholds:
                rsp = cmd.raw_command(netfn=4, command=0x27, rslun=entry.sensor_lun, data=(entry.sensor_number,))
                data = rsp.get("data") if "error" not in rsp else None
                if data and len(data) >= 7:
                    mask = data[0]
                    unc = entry.decode_value(cmd, data[4]) if mask & 0x08 else None
                    uc = entry.decode_value(cmd, data[5]) if mask & 0x10 else None
                    out = (unc, uc)
            self._thresholds[key] = out
        return self._thresholds[key]


def _f_to_c(f):
    return (float(f) - 32.0) * 5.0 / 9.0


def _kind(entry):
    unit = getattr(entry, "baseunit", "")
    if entry.sensor_type_number == FAN and (unit == "RPM" or entry.percent):
        return "fan"
    if entry.sensor_type_number == TEMPERATURE and unit in ("°C", "°F"):
        return "temperature"
    if unit == "W" and not getattr(entry, "unit_mod", ""):
        return "power"
    return None
