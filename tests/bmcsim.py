"""Real BMC simulators for the tests: OpenIPMI's ipmi_sim (RMCP+ on a loopback port, sensors
from full SDR records) and sushy-tools' Redfish emulators (sushy-emulator --fake, sushy-static
over a mockup tree written here)."""
import json
import os
import socket
import subprocess
import sys
import time
import warnings

import requests

from conftest import need_tool, stop_group

USER, PASSWORD = "admin", "Hoof\\s3cret=9f2c"    # a backslash: FreeIPMI config files cannot hold one


def free_port(kind=socket.SOCK_DGRAM):
    s = socket.socket(socket.AF_INET, kind)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def full_sdr(record, number, entity, sensor_type, unit, m, name, upper=None, percent=False):
    """A type 01 full sensor record (IPMI 2.0 table 43-1) as bytes.

    value = M * raw (B = 0, exponents 0); ``upper``: (non-critical, critical, non-recoverable)
    raw threshold bytes, readable.
    """
    unc, uc, unr = upper or (0, 0, 0)
    readable = 0x38 if upper else 0x00
    ident = name.encode()
    body = [0x20, 0x00, number, entity, 1,
            0x7F, 0x68 if upper else 0x40,      # initialisation; capabilities: thresholds readable
            sensor_type, 0x01,                  # threshold-based reading
            0x00, 0x00, 0x00, 0x00, readable, 0x00,
            0x01 if percent else 0x00, unit, 0x00,
            0x00,                               # linear
            m & 0xFF, (m >> 8) << 6, 0x00, 0x00, 0x00, 0x00,
            0x00, 0x00, 0x00, 0x00, 0xFF, 0x00,  # analog flags, nominal, normal max/min, sensor max/min
            unr, uc, unc, 0x00, 0x00, 0x00,
            0x00, 0x00, 0x00, 0x00, 0x00,
            0xC0 | len(ident), *ident]
    return bytes([record & 0xFF, record >> 8, 0x51, 0x01, len(body), *body])


# sensor number -> (SDR fields, initial raw value or None for "no sensor behind the record")
SENSORS = {
    1: (dict(entity=0x1D, sensor_type=0x04, unit=18, m=75, name="Fan3A"), 128),        # 9600 rpm
    2: (dict(entity=0x1D, sensor_type=0x04, unit=18, m=75, name="Fan3B"), 40),         # 3000 rpm
    3: (dict(entity=0x03, sensor_type=0x01, unit=1, m=1, name="CPU2 Temp", upper=(85, 95, 100)), 83),
    4: (dict(entity=0x07, sensor_type=0x01, unit=1, m=1, name="Inlet Temp"), 24),
    5: (dict(entity=0x0A, sensor_type=0x0B, unit=6, m=4, name="PS1 Input Power"), 60),  # 240 W
    6: (dict(entity=0x1D, sensor_type=0x04, unit=0, m=1, name="Fan6 Duty", percent=True), 62),
    7: (dict(entity=0x1D, sensor_type=0x04, unit=18, m=75, name="Fan7 Empty"), None),  # no reading
    8: (dict(entity=0x1D, sensor_type=0x04, unit=18, m=75, name="Fan8 Off"), 50),      # scanning disabled
}
NO_SCANNING = "disable no-scanning per-state " + " ".join(["0" * 15] * 4)


class IPMISim:
    """ipmi_sim with one admin user on an RMCP+ LAN channel at 127.0.0.1:<port>; its console is
    its standard input, so tests change sensor values while it runs."""

    def __init__(self, tmp, sensors=SENSORS, password=PASSWORD):
        binary = need_tool("ipmi_sim")
        self.dir = str(tmp)
        os.makedirs(os.path.join(self.dir, "state"), exist_ok=True)
        self.port = free_port()
        lan = os.path.join(self.dir, "lan.conf")
        with open(lan, "w") as f:
            f.write(f'name "hoof"\nset_working_mc 0x20\n  startlan 1\n    addr 127.0.0.1 {self.port}\n'
                    "    priv_limit admin\n"
                    + "".join(f"    allowed_auths_{p} none md2 md5 straight\n"
                              for p in ("callback", "user", "operator", "admin"))
                    + "    guid a123456789abcdefa123456789abcdef\n  endlan\n"
                    f'  user 2 true "{USER}" "{password}" admin 10 none md2 md5 straight\n')
        emu = os.path.join(self.dir, "bmc.emu")
        lines = ["mc_setbmc 0x20", "mc_add 0x20 0 no-device-sdrs 0x23 9 8 0x9f 0x1291 0xf02"]
        for n, (sdr, _) in sorted(sensors.items()):
            lines.append("main_sdr_add 0x20 " + " ".join(f"0x{b:02x}" for b in full_sdr(n, n, **sdr)))
        for n, (sdr, raw) in sorted(sensors.items()):
            if raw is None:
                continue
            lines.append(f"sensor_add 0x20 0 {n} 0x{sdr['sensor_type']:02x} 0x01")
            lines.append(f"sensor_set_value 0x20 0 {n} {raw} 0")
            if sdr.get("upper"):
                unc, uc, unr = sdr["upper"]
                lines.append(f"sensor_set_threshold 0x20 0 {n} settable 111000 {unr} {uc} {unc} 0 0 0")
            if "Off" in sdr["name"]:
                lines.append(f"sensor_set_event_support 0x20 0 {n} {NO_SCANNING}")
        lines.append("mc_enable 0x20")
        with open(emu, "w") as f:
            f.write("\n".join(lines) + "\n")
        self.log = open(os.path.join(self.dir, "ipmi_sim.log"), "w")
        self.proc = subprocess.Popen([binary, "-c", lan, "-f", emu, "-s", os.path.join(self.dir, "state")],
                                     stdin=subprocess.PIPE, stdout=self.log, stderr=subprocess.STDOUT,
                                     text=True, start_new_session=True)
        self._wait()

    def _wait(self, timeout=15):
        """Up when it answers an RMCP presence ping (ASF, IPMI's own discovery)."""
        ping = bytes([0x06, 0x00, 0xFF, 0x06, 0x00, 0x00, 0x11, 0xBE, 0x80, 0x00, 0x00, 0x00])
        deadline = time.monotonic() + timeout
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(0.2)
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError("ipmi_sim exited: " + open(self.log.name).read()[-2000:])
                s.sendto(ping, ("127.0.0.1", self.port))
                try:
                    s.recvfrom(512)
                    return
                except OSError:
                    pass
        raise RuntimeError("ipmi_sim does not answer")

    def console(self, line):
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def set_raw(self, sensor, raw):
        self.console(f"sensor_set_value 0x20 0 {sensor} {raw} 0")

    def stop(self):
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        stop_group(self.proc)
        self.log.close()


class DeadBMC:
    """A UDP port that takes every packet and never answers."""

    def __init__(self):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]

    def stop(self):
        self.sock.close()


def _wait_http(url, proc, timeout=30, **kw):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args[0]} exited")
        try:
            with warnings.catch_warnings():     # the emulator's test certificate, before the CA is used
                warnings.simplefilter("ignore")
                requests.get(url, timeout=1, **kw)
            return
        except requests.RequestException:
            time.sleep(0.1)
    raise RuntimeError(f"{url} does not answer")


def _sushy(name):
    path = os.path.join(os.path.dirname(sys.executable), name)
    if not os.path.exists(path):
        need_tool(name)
        path = name
    return path


class SushyEmulator:
    """sushy-emulator --fake: the Redfish tree of a fake server, Chassis Thermal with two fans and
    two temperatures, behind HTTP basic auth (bcrypt htpasswd file) and optionally TLS."""

    def __init__(self, tmp, cert=None, key=None, password=PASSWORD):
        import bcrypt
        self.dir = str(tmp)
        os.makedirs(self.dir, exist_ok=True)
        self.port = free_port(socket.SOCK_STREAM)
        htpasswd = os.path.join(self.dir, "htpasswd")
        with open(htpasswd, "w") as f:
            f.write(f"{USER}:{bcrypt.hashpw(password.encode(), bcrypt.gensalt(4)).decode()}\n")
        conf = os.path.join(self.dir, "sushy.conf")
        with open(conf, "w") as f:
            f.write(f"SUSHY_EMULATOR_AUTH_FILE = {htpasswd!r}\n")
        args = [_sushy("sushy-emulator"), "--fake", "-i", "127.0.0.1", "-p", str(self.port), "--config", conf]
        if cert:
            args += ["--ssl-certificate", cert, "--ssl-key", key]
        self.scheme = "https" if cert else "http"
        self.url = f"{self.scheme}://127.0.0.1:{self.port}"
        self.log = open(os.path.join(self.dir, "sushy.log"), "w")
        self.proc = subprocess.Popen(args, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        _wait_http(self.url + "/redfish/v1", self.proc, verify=False)

    def stop(self):
        stop_group(self.proc)
        self.log.close()


class SushyStatic:
    """sushy-static serving a mockup tree: a newer BMC with ThermalSubsystem and PowerSubsystem
    only. Files are read on every request, so ``write`` changes what the BMC reports."""

    def __init__(self, tmp, tree):
        self.dir = os.path.join(str(tmp), "mockup")
        for path, doc in tree.items():
            self.write(path, doc)
        self.port = free_port(socket.SOCK_STREAM)
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(os.path.join(str(tmp), "sushy-static.log"), "w")
        self.proc = subprocess.Popen([_sushy("sushy-static"), "-i", "127.0.0.1", "-p", str(self.port),
                                      "-m", self.dir], stdout=self.log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        _wait_http(self.url + "/redfish/v1", self.proc)

    def write(self, path, doc):
        d = os.path.join(self.dir, path.replace("/redfish/v1", "").strip("/"))
        os.makedirs(d, exist_ok=True)
        tmp = os.path.join(d, "index.json.tmp")
        with open(tmp, "w") as f:
            json.dump(doc, f)
        os.replace(tmp, os.path.join(d, "index.json"))

    def stop(self):
        stop_group(self.proc)
        self.log.close()


def _ref(path):
    return {"@odata.id": path}


CH = "/redfish/v1/Chassis/1U"


def subsystem_tree(fan1_percent=62, psu_watts=412):
    """A BMC with only the newer resources: percent fans (one with rpm too), an absent fan, a
    disabled temperature, power supplies with metrics, whole-system power."""
    fans = CH + "/ThermalSubsystem/Fans"
    psus = CH + "/PowerSubsystem/PowerSupplies"
    return {
        "/redfish/v1": {"Id": "RootService", "Chassis": _ref("/redfish/v1/Chassis")},
        "/redfish/v1/Chassis": {"Members": [_ref(CH)]},
        CH: {"Id": "1U", "ThermalSubsystem": _ref(CH + "/ThermalSubsystem"),
             "PowerSubsystem": _ref(CH + "/PowerSubsystem"), "EnvironmentMetrics": _ref(CH + "/EnvironmentMetrics")},
        CH + "/ThermalSubsystem": {"Fans": _ref(fans), "ThermalMetrics": _ref(CH + "/ThermalSubsystem/ThermalMetrics")},
        fans: {"Members": [_ref(fans + "/Fan1"), _ref(fans + "/Fan2"), _ref(fans + "/Fan3")]},
        fans + "/Fan1": {"Id": "Fan1", "Name": "System Fan 1", "PhysicalContext": "SystemBoard",
                         "Status": {"State": "Enabled", "Health": "OK"},
                         "SpeedPercent": {"Reading": fan1_percent, "SpeedRPM": 8800}},
        fans + "/Fan2": {"Id": "Fan2", "Name": "System Fan 2", "PhysicalContext": "SystemBoard",
                         "Status": {"State": "Enabled", "Health": "OK"}, "SpeedPercent": {"Reading": 30}},
        fans + "/Fan3": {"Id": "Fan3", "Name": "System Fan 3", "Status": {"State": "Absent"},
                         "SpeedPercent": {"Reading": 0}},
        CH + "/ThermalSubsystem/ThermalMetrics": {"TemperatureReadingsCelsius": [
            {"DataSourceUri": CH + "/Sensors/CPU1Temp", "DeviceName": "CPU1", "Reading": 71.5},
            {"DataSourceUri": CH + "/Sensors/DIMMTemp", "DeviceName": "DIMM", "Reading": None}]},
        CH + "/PowerSubsystem": {"PowerSupplies": _ref(psus)},
        psus: {"Members": [_ref(psus + "/PSU1"), _ref(psus + "/PSU2")]},
        psus + "/PSU1": {"Id": "PSU1", "Name": "PSU1", "Status": {"State": "Enabled"},
                         "Metrics": _ref(psus + "/PSU1/Metrics")},
        psus + "/PSU1/Metrics": {"InputPowerWatts": {"Reading": psu_watts}},
        psus + "/PSU2": {"Id": "PSU2", "Name": "PSU2", "Status": {"State": "Disabled"},
                         "Metrics": _ref(psus + "/PSU2/Metrics")},
        psus + "/PSU2/Metrics": {"InputPowerWatts": {"Reading": 0}},
        CH + "/EnvironmentMetrics": {"PowerWatts": {"Reading": 398}},
    }


class SessionFront:
    """Redfish session login (SessionService) in front of a sushy emulator, which has none: POST
    .../Sessions with the right credentials gives an X-Auth-Token; GETs carrying it are passed to
    the emulator, others get 401; DELETE of the session's URI ends it."""

    def __init__(self, backend_url, password=PASSWORD):
        import http.server
        import secrets
        import threading
        import urllib.request

        front = self
        self.tokens = {}           # token -> session path
        self.logins = self.deletes = 0

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def _send(self, code, body=b"", headers=()):
                self.send_response(code)
                for k, v in headers:
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self):
                doc = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                if self.path != "/redfish/v1/SessionService/Sessions" or \
                        (doc.get("UserName"), doc.get("Password")) != (USER, password):
                    return self._send(401)
                front.logins += 1
                token = secrets.token_hex(16)
                where = f"/redfish/v1/SessionService/Sessions/{front.logins}"
                front.tokens[token] = where
                self._send(201, b"{}", [("X-Auth-Token", token), ("Location", where)])

            def do_DELETE(self):
                token = self.headers.get("X-Auth-Token")
                if front.tokens.get(token) != self.path:
                    return self._send(401)
                del front.tokens[token]
                front.deletes += 1
                self._send(204)

            def do_GET(self):
                if self.headers.get("X-Auth-Token") not in front.tokens or self.headers.get("Authorization"):
                    return self._send(401)
                with urllib.request.urlopen(backend_url + self.path, timeout=5) as r:
                    self._send(200, r.read(), [("Content-Type", "application/json")])

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


class Catcher:
    """An HTTP server that records who asked for what, with which credentials."""

    def __init__(self):
        import http.server
        import threading
        seen = self.seen = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                seen.append((self.path, self.headers.get("Authorization")))
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, *a):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()
