"""IPMI sensors through FreeIPMI's ipmi-sensors: the local BMC in-band (/dev/ipmi0) or a remote
one over RMCP+ (lanplus), as prometheus-community/ipmi_exporter does.

One short-lived process per read: a BMC that hangs costs one process that is killed at the
timeout, and can never stall the reads of other BMCs (docs/design.md has the measurements that
chose this over pyghmi). The password goes to ipmi-sensors on its standard input (its password
prompt, in a session without a terminal), never on a command line or on disk, whatever
characters it holds. The SDR (sensor names, units, conversion factors) is cached in a private
directory, so a read is one session and one Get Sensor Reading per sensor.
Sensors the BMC does not read (scanning disabled, reading unavailable, no sensor behind the
record) give no value.
"""
import os
import re
import shutil
import subprocess
import tempfile
import threading

from .bmc import BMCError, Fan, Power, Snapshot, Temperature, scrub, unique

DEVICE = "/dev/ipmi0"
TOOL = "ipmi-sensors"
_AUTH = ("password invalid", "username invalid", "privilege level", "authentication", "k_g invalid",
         "password verification")
_TIMEOUT = ("connection timeout", "session timeout", "timed out")


def local_problem(device=DEVICE):
    """Why the in-band BMC cannot be used, or None when it can."""
    if not os.path.exists(device):
        return (f"{device} does not exist (no BMC, or the ipmi_si and ipmi_devintf kernel modules "
                f"are not loaded, or the device is not passed into the container)")
    if not os.access(device, os.R_OK | os.W_OK):
        return f"{device} is not readable and writable by uid {os.getuid()} (run as root or grant access)"
    return None


class IPMIReader:
    """One BMC. ``host`` None means in-band through ``device``."""

    def __init__(self, host=None, port=623, username=None, password=None, device=DEVICE, timeout=3.0,
                 privilege="user", workaround_flags=(), tool=None):
        self.host, self.port, self.username, self.device = host, port, username, device
        self.timeout = timeout
        self.privilege = privilege
        self.workaround_flags = list(workaround_flags)
        self._password = password
        self._tool = tool
        self._dir = None
        self._lock = threading.Lock()

    def __repr__(self):
        where = f"{self.host}:{self.port}" if self.host else self.device
        return f"IPMIReader({where})"

    def _private_dir(self):
        """A 0700 directory for the SDR cache (and FreeIPMI's home)."""
        if self._dir is None:
            d = tempfile.mkdtemp(prefix="hoofhearted-ipmi-")
            os.makedirs(os.path.join(d, "sdr"), mode=0o700)
            self._dir = d
        return self._dir

    def argv(self):
        name = self._tool or TOOL
        tool = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")
        if tool is None:
            raise BMCError("setup", f"{name} not found (install FreeIPMI: Debian package freeipmi-tools)")
        d = self._private_dir()
        args = [tool, "--sdr-cache-directory", os.path.join(d, "sdr"), "--sdr-cache-recreate", "--quiet-cache",
                "--comma-separated-output", "--no-header-output", "--output-sensor-thresholds",
                "--ignore-not-available-sensors", "--ignore-unrecognized-events"]
        if self.host is None:
            args += ["--driver-type", "OPENIPMI", "--driver-device", self.device]
        else:
            ms = max(200, int(self.timeout * 1000) - 100)
            args += ["--hostname", f"{self.host}:{self.port}", "--driver-type", "LAN_2_0",
                     "--privilege-level", self.privilege,
                     "--session-timeout", str(ms), "--retransmission-timeout", str(max(100, ms // 4))]
            if self.username:
                args += ["--username", self.username]
            if self._password is not None:
                args.append("--password-prompt")   # read from standard input: no controlling terminal
        for w in self.workaround_flags:
            args += ["--workaround-flags", w]
        return args

    def read(self):
        with self._lock:
            if self.host is None:
                problem = local_problem(self.device)
                if problem:
                    raise BMCError("device", problem)
            args = self.argv()
            env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": self._dir, "LC_ALL": "C"}
            try:
                done = subprocess.run(args, capture_output=True, text=True, timeout=self.timeout, env=env,
                                      input=self._password + "\n" if self._password is not None else "",
                                      errors="replace", start_new_session=True)
            except subprocess.TimeoutExpired:
                raise BMCError("timeout", f"no answer within {self.timeout:g}s") from None
            except OSError as e:
                raise BMCError("setup", f"cannot run {args[0]}: {e.strerror or e}") from None
            if done.returncode != 0:
                raise self._error(done.stderr or done.stdout)
            return parse(done.stdout)

    def _error(self, text):
        text = scrub(text, self._password).replace("Password:", "")    # the prompt, on stderr
        lines = [l.strip() for l in text.splitlines() if l.strip()]
        first = lines[0] if lines else "no output"
        first = re.sub(r"^\S*ipmi-sensors: ", "", first)[:200]
        low = first.lower()
        if any(w in low for w in _AUTH):
            return BMCError("auth", first)
        if any(w in low for w in _TIMEOUT):
            return BMCError("timeout", first)
        return BMCError("protocol", first)

    def close(self):
        # no lock: shutdown must not wait for a read that hangs until its timeout
        d, self._dir = self._dir, None
        if d is not None:
            shutil.rmtree(d, ignore_errors=True)


def parse(text):
    """ipmi-sensors CSV with thresholds: ID,Name,Type,Reading,Units,LNR,LC,LNC,UNC,UC,UNR,Event."""
    snap = Snapshot()
    seen = set()
    for line in text.splitlines():
        f = line.split(",")
        if len(f) < 12:
            continue
        # a comma inside the sensor name shifts the columns: the last 10 are fixed
        name = ",".join(f[1:len(f) - 10]).strip()
        kind, reading, units = f[-10].strip(), _number(f[-9]), f[-8].strip()
        unc, uc = _number(f[-4]), _number(f[-3])
        if reading is None or not name:
            continue
        if units == "RPM":
            snap.fans.append(Fan(unique(name, seen), "", rpm=reading))
        elif units == "%" and kind == "Fan":
            snap.fans.append(Fan(unique(name, seen), "", ratio=reading / 100.0))
        elif units in ("C", "F"):
            c = _celsius if units == "F" else (lambda v: v)
            snap.temperatures.append(Temperature(unique(name, seen), "", c(reading),
                                                 None if unc is None else c(unc), None if uc is None else c(uc)))
        elif units == "W":
            snap.power.append(Power(unique(name, seen), reading))
    return snap


def _number(text):
    try:
        return float(text)
    except ValueError:
        return None


def _celsius(f):
    return (f - 32.0) * 5.0 / 9.0
