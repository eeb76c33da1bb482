"""Redfish sensors over HTTPS with requests: Chassis Thermal and Power, or the newer
ThermalSubsystem and PowerSubsystem where a BMC has only those.

Per chassis the legacy resources are read when present (one request gives every fan and
temperature with its thresholds); the subsystem resources otherwise. Members whose
Status.State is Absent, Disabled or otherwise not enabled, or with no reading, give no value.
"""
import threading
from urllib.parse import urlsplit

from .bmc import BMCError, Fan, Power, Snapshot, Temperature, scrub, unique

_OFF_STATES = {"Absent", "Disabled", "UnavailableOffline", "StandbyOffline", "StandbySpare", "Deferring",
               "Quiesced", "InTest", "Starting"}
_ROOT = "/redfish/v1"
RELIST = 30          # reads between listings of the chassis (a blade or a PSU shelf may be added)


class RedfishReader:
    """One Redfish service. ``auth``: "basic" (credentials on every request) or "session"
    (one X-Auth-Token session, logged in again when the BMC forgets it)."""

    def __init__(self, url, username=None, password=None, verify_tls=True, ca_file=None, auth="basic",
                 timeout=5.0):
        import requests

        self.url = url.rstrip("/")
        if self.url.endswith(_ROOT):
            self.url = self.url[:-len(_ROOT)]
        base = urlsplit(self.url)
        self._origin = (base.scheme.lower(), base.hostname, _port(base))
        self.username = username
        self._password = password
        self.auth = auth
        self.timeout = timeout
        self._requests = requests
        self.http = requests.Session()
        self.http.trust_env = False          # a BMC on the management LAN: no proxies from the env
        self.http.verify = ca_file if (ca_file and verify_tls) else bool(verify_tls)
        if not verify_tls:
            # the operator chose this (said once at start); urllib3 would warn on every request
            import urllib3
            urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)
        self.http.headers["Accept"] = "application/json"
        if auth == "basic" and username is not None:
            self.http.auth = (username, password or "")
        self._session_uri = None
        self._chassis = None                 # [chassis URI], listed again every RELIST reads
        self._reads = 0
        self._lock = threading.Lock()

    def __repr__(self):
        return f"RedfishReader({self.url})"

    # -- HTTP ------------------------------------------------------------------------------

    def _get(self, path, missing_ok=False):
        r = self._request("GET", path)
        if r.status_code == 401 and self.auth == "session":
            self._session_uri = None
            self.http.headers.pop("X-Auth-Token", None)
            self._login()
            r = self._request("GET", path)
        if r.status_code in (401, 403):
            raise BMCError("auth", f"GET {path}: HTTP {r.status_code} (wrong username or password?)")
        if r.status_code == 404 and missing_ok:
            return None
        if r.status_code != 200:
            raise BMCError("protocol", f"GET {path}: HTTP {r.status_code}")
        try:
            return r.json()
        except ValueError:
            raise BMCError("protocol", f"GET {path}: not JSON") from None

    def _request(self, method, path, **kw):
        url = self._resolve(method, path)
        try:
            return self.http.request(method, url, timeout=self.timeout, allow_redirects=False, **kw)
        except self._requests.exceptions.SSLError as e:
            raise BMCError("tls", f"{method} {path}: TLS verification failed: {_short(e, self._password)}") from None
        except self._requests.exceptions.Timeout:
            raise BMCError("timeout", f"{method} {path}: no answer within {self.timeout:g}s") from None
        except self._requests.exceptions.ConnectionError as e:
            raise BMCError("connect", f"{method} {path}: {_short(e, self._password)}") from None
        except self._requests.exceptions.RequestException as e:
            raise BMCError("protocol", f"{method} {path}: {_short(e, self._password)}") from None

    def _resolve(self, method, path):
        """The URL of a link the BMC gave: a path on the configured service, or an absolute URL
        of the same scheme, host and port. Anything else is refused: the credentials go with
        every request, and a BMC's documents must not send them elsewhere."""
        if path.startswith("/") and not path.startswith("//"):
            return self.url + path
        try:
            there = urlsplit(path)
            same = (there.scheme.lower(), there.hostname, _port(there)) == self._origin and not there.username
        except ValueError:
            same = False
        if not same:
            shown = path[:100] + ("..." if len(path) > 100 else "")
            raise BMCError("protocol", f"{method}: a link to another host or scheme is not followed: {shown!r}")
        return path

    def _login(self):
        path = _ROOT + "/SessionService/Sessions"
        r = self._request("POST", path, json={"UserName": self.username or "", "Password": self._password or ""})
        if r.status_code in (401, 403):
            raise BMCError("auth", f"POST {path}: HTTP {r.status_code} (wrong username or password?)")
        token = r.headers.get("X-Auth-Token")
        if r.status_code not in (200, 201, 204) or not token:
            raise BMCError("protocol", f"POST {path}: HTTP {r.status_code}, no session token")
        self.http.headers["X-Auth-Token"] = token
        self._session_uri = r.headers.get("Location")

    def close(self):
        # the session is ended only when no read is in flight: shutdown must not wait for a
        # BMC that hangs until its timeout
        if self._lock.acquire(timeout=0.1):
            try:
                if self._session_uri:
                    try:
                        self._request("DELETE", self._session_uri)
                    except BMCError:
                        pass
                    self._session_uri = None
            finally:
                self._lock.release()
        self.http.close()

    # -- reading ---------------------------------------------------------------------------

    def read(self):
        with self._lock:
            if self.auth == "session" and "X-Auth-Token" not in self.http.headers:
                self._login()
            try:
                return self._read()
            except BMCError:
                self._chassis = None       # find the chassis again next time
                raise

    def _read(self):
        self._reads += 1
        if self._chassis is None or self._reads % RELIST == 0:
            coll = self._get(_ROOT + "/Chassis")
            self._chassis = [m["@odata.id"] for m in coll.get("Members", []) if isinstance(m, dict)
                             and "@odata.id" in m]
        snap = Snapshot()
        seen_t, seen_f, seen_p = set(), set(), set()
        many = len(self._chassis) > 1
        for uri in self._chassis:
            chassis = self._get(uri)
            prefix = f"{chassis.get('Id', uri.rsplit('/', 1)[-1])}/" if many else ""
            if _link(chassis, "Thermal"):
                self._thermal(self._get(_link(chassis, "Thermal")), snap, prefix, seen_t, seen_f)
            elif _link(chassis, "ThermalSubsystem"):
                self._thermal_subsystem(_link(chassis, "ThermalSubsystem"), snap, prefix, seen_t, seen_f)
            if _link(chassis, "Power"):
                self._power(self._get(_link(chassis, "Power")), snap, prefix, seen_p)
            elif _link(chassis, "PowerSubsystem"):
                self._power_subsystem(chassis, snap, prefix, seen_p)
        return snap

    def _thermal(self, doc, snap, prefix, seen_t, seen_f):
        for t in doc.get("Temperatures") or []:
            c = _number(t.get("ReadingCelsius"))
            if c is None or not _enabled(t):
                continue
            name = unique(prefix + _name(t, "Temperature"), seen_t)
            snap.temperatures.append(Temperature(name, t.get("PhysicalContext") or "", c,
                                                 _number(t.get("UpperThresholdNonCritical")),
                                                 _number(t.get("UpperThresholdCritical"))))
        for f in doc.get("Fans") or []:
            v = _number(f.get("Reading"))
            if v is None or not _enabled(f):
                continue
            name = unique(prefix + _name(f, "Fan", "FanName"), seen_f)
            where = f.get("PhysicalContext") or ""
            if f.get("ReadingUnits") == "Percent":
                snap.fans.append(Fan(name, where, ratio=v / 100.0))
            else:
                top = _number(f.get("MaxReadingRange"))
                snap.fans.append(Fan(name, where, rpm=v, max_rpm=top if top else None))

    def _thermal_subsystem(self, uri, snap, prefix, seen_t, seen_f):
        sub = self._get(uri)
        if _link(sub, "Fans"):
            for member in self._members(_link(sub, "Fans")):
                speed = member.get("SpeedPercent") or {}
                ratio, rpm = _number(speed.get("Reading")), _number(speed.get("SpeedRPM"))
                if (ratio is None and rpm is None) or not _enabled(member):
                    continue
                name = unique(prefix + _name(member, "Fan"), seen_f)
                snap.fans.append(Fan(name, member.get("PhysicalContext") or "", rpm=rpm,
                                     ratio=None if ratio is None else ratio / 100.0))
        if _link(sub, "ThermalMetrics"):
            metrics = self._get(_link(sub, "ThermalMetrics"), missing_ok=True) or {}
            for t in metrics.get("TemperatureReadingsCelsius") or []:
                c = _number(t.get("Reading"))
                if c is None:
                    continue
                label = t.get("DeviceName") or t.get("PhysicalContext") or ""
                source = (t.get("DataSourceUri") or "").rstrip("/").rsplit("/", 1)[-1]
                name = unique(prefix + (source or label or "Temperature"), seen_t)
                snap.temperatures.append(Temperature(name, label, c))

    def _power(self, doc, snap, prefix, seen):
        for pc in doc.get("PowerControl") or []:
            w = _number(pc.get("PowerConsumedWatts"))
            if w is not None and _enabled(pc):
                snap.power.append(Power(unique(prefix + _name(pc, "System Power"), seen), w))
        for ps in doc.get("PowerSupplies") or []:
            w = _number(ps.get("PowerInputWatts"))
            if w is not None and _enabled(ps):
                snap.power.append(Power(unique(prefix + _name(ps, "Power Supply") + " Input", seen), w))

    def _power_subsystem(self, chassis, snap, prefix, seen):
        env = _link(chassis, "EnvironmentMetrics")
        if env:
            doc = self._get(env, missing_ok=True) or {}
            w = _number((doc.get("PowerWatts") or {}).get("Reading"))
            if w is not None:
                snap.power.append(Power(unique(prefix + "System Power", seen), w))
        sub = self._get(_link(chassis, "PowerSubsystem"))
        if not _link(sub, "PowerSupplies"):
            return
        for ps in self._members(_link(sub, "PowerSupplies")):
            if not _enabled(ps) or not _link(ps, "Metrics"):
                continue
            m = self._get(_link(ps, "Metrics"), missing_ok=True) or {}
            w = _number((m.get("InputPowerWatts") or {}).get("Reading"))
            if w is not None:
                snap.power.append(Power(unique(prefix + _name(ps, "Power Supply") + " Input", seen), w))

    def _members(self, uri):
        coll = self._get(uri)
        for m in coll.get("Members") or []:
            if isinstance(m, dict) and set(m) - {"@odata.id"}:
                yield m                       # expanded in place
            elif isinstance(m, dict) and "@odata.id" in m:
                yield self._get(m["@odata.id"])


def _port(parts):
    return parts.port or (443 if parts.scheme.lower() == "https" else 80)


def _link(doc, key):
    v = doc.get(key)
    if isinstance(v, dict) and isinstance(v.get("@odata.id"), str):
        return v["@odata.id"]
    return None


def _enabled(doc):
    state = (doc.get("Status") or {}).get("State")
    return state is None or state not in _OFF_STATES


def _number(v):
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    try:
        return float(v)
    except OverflowError:             # an integer past float's range: refused by the bounds later
        return float("inf")


def _name(doc, default, *alt):
    for key in ("Name", *alt, "MemberId", "Id"):
        v = doc.get(key)
        if isinstance(v, str) and v.strip():
            return v.strip()[:64]
    return default


def _short(e, secret):
    """requests' exception text, first line, without a password."""
    text = scrub(e, secret).splitlines()[0] if str(e) else type(e).__name__
    return text[:200]
