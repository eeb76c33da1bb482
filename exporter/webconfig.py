"""Web configuration (--web.config.file): TLS, basic auth, response headers, rate limit.

The file format is the Prometheus exporter toolkit's, so a file written for node_exporter works
here unchanged. Without a file the server speaks plain HTTP and asks for no password.

The file and the certificate, key and CA files it names are watched: the server checks their
inode, size and mtime at most once a second (and on SIGHUP) and loads them again when one
changed, so certificates rotate without a restart. A bad edit keeps the last good config and
logs one line.
"""
import base64
import binascii
import hashlib
import ipaddress
import logging
import os
import queue
import re
import ssl
import tempfile
import threading
import time
from collections import OrderedDict

import bcrypt

from .config import ConfigError, key_shown, read_yaml, shown
from .sources.host import FileTooLarge, read_file

log = logging.getLogger("hoofhearted.webconfig")

KEYS = {
    "tls_server_config": {"cert", "key", "client_ca", "cert_file", "key_file", "client_auth_type",
                          "client_ca_file", "client_allowed_sans", "min_version", "max_version",
                          "cipher_suites", "prefer_server_cipher_suites", "curve_preferences"},
    "http_server_config": {"http2", "headers"},
    "basic_auth_users": None,
    "rate_limit": {"interval", "burst"},
}

TLS_VERSIONS = {"TLS10": ssl.TLSVersion.TLSv1, "TLS11": ssl.TLSVersion.TLSv1_1,
                "TLS12": ssl.TLSVersion.TLSv1_2, "TLS13": ssl.TLSVersion.TLSv1_3}

CLIENT_AUTH = ("NoClientCert", "RequestClientCert", "RequireAnyClientCert", "RequireClientCert",
               "VerifyClientCertIfGiven", "RequireAndVerifyClientCert")

# The toolkit's cipher suite names (Go's crypto/tls) in OpenSSL's spelling; TLS 1.3 suites are
# not configurable, as in Go.
CIPHERS = {
    "TLS_RSA_WITH_AES_128_CBC_SHA": "AES128-SHA",
    "TLS_RSA_WITH_AES_256_CBC_SHA": "AES256-SHA",
    "TLS_RSA_WITH_AES_128_CBC_SHA256": "AES128-SHA256",
    "TLS_RSA_WITH_AES_128_GCM_SHA256": "AES128-GCM-SHA256",
    "TLS_RSA_WITH_AES_256_GCM_SHA384": "AES256-GCM-SHA384",
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA": "ECDHE-ECDSA-AES128-SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA": "ECDHE-ECDSA-AES256-SHA",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA": "ECDHE-RSA-AES128-SHA",
    "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA": "ECDHE-RSA-AES256-SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA256": "ECDHE-ECDSA-AES128-SHA256",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA256": "ECDHE-RSA-AES128-SHA256",
    "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256": "ECDHE-RSA-AES128-GCM-SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256": "ECDHE-ECDSA-AES128-GCM-SHA256",
    "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384": "ECDHE-RSA-AES256-GCM-SHA384",
    "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384": "ECDHE-ECDSA-AES256-GCM-SHA384",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-RSA-CHACHA20-POLY1305",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-ECDSA-CHACHA20-POLY1305",
}
CURVES = {"CurveP256": "prime256v1", "CurveP384": "secp384r1", "CurveP521": "secp521r1", "X25519": "X25519"}

# Response headers the toolkit lets a file set, with the values it accepts (None: any).
HEADERS = {
    "Strict-Transport-Security": None,
    "X-Content-Type-Options": ("nosniff",),
    "X-Frame-Options": ("deny", "sameorigin"),
    "X-XSS-Protection": None,
    "Content-Security-Policy": None,
}

_BCRYPT = re.compile(r"^\$2[abxy]\$(\d\d)\$[./A-Za-z0-9]{53}$")
_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


class WebConfigError(ConfigError):
    pass


def _fail(path, key, problem):
    raise WebConfigError(f"web config file {path}: {key}: {problem}")


def _expect(path, key, value, kind, words):
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        _fail(path, key, f"expected {words}, got {shown(value)}")
    return value


def _str_list(path, key, value):
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(x, str) for x in value):
        _fail(path, key, f"expected a list of strings, got {shown(value)}")
    return value


def parse_duration(text):
    """Go's time.ParseDuration ('1m30s', '250ms'), in seconds; None when it is not one."""
    if isinstance(text, int) and not isinstance(text, bool):
        return text * 1e-9 if text >= 0 else None     # YAML integers are nanoseconds, as in Go
    if not isinstance(text, str) or not text:
        return None
    if text == "0":
        return 0.0
    pos, total = 0, 0.0
    for m in _DURATION.finditer(text):
        if m.start() != pos:
            return None
        total += float(m.group(1)) * _UNITS[m.group(2)]
        pos = m.end()
    return total if pos == len(text) else None


class TLSSettings:
    """An ssl.SSLContext built from tls_server_config, plus the SAN allow-list it carries."""

    def __init__(self, context, allowed_sans, files, client_auth, min_version=ssl.TLSVersion.TLSv1_2,
                 cipher_suites=()):
        self.context = context
        self.allowed_sans = allowed_sans
        self.files = files
        self.client_auth = client_auth
        self.min_version = min_version
        self.cipher_suites = frozenset(cipher_suites)   # empty: OpenSSL's defaults

    def peer_allowed(self, peercert):
        """client_allowed_sans: the verified client certificate names one of the entries."""
        if self.allowed_sans is None:
            return True
        for kind, value in (peercert or {}).get("subjectAltName", ()):
            if kind == "IP Address":
                try:
                    value = str(ipaddress.ip_address(value.strip()))
                except ValueError:
                    continue
            if value in self.allowed_sans:
                return True
        return False


def _read_file(path, key, name, limit=1 << 20):
    """A certificate or key file: a regular file of at most ``limit`` bytes, read without
    blocking (a FIFO or a device in its place is an error, not a hang)."""
    try:
        return read_file(name, limit)
    except FileTooLarge:
        _fail(path, key, f"{name} is larger than {limit} bytes")
    except OSError as e:
        _fail(path, key, f"cannot read {name}: {e.strerror or e}")


def _no_password():
    raise ValueError("encrypted private keys are not supported")


def _load_pair(ctx, path, cert_pem, key_pem):
    """load_cert_chain wants files: inline PEM goes through a private temporary file."""
    with tempfile.TemporaryDirectory(prefix="hoofhearted-tls-") as d:
        cert_file, key_file = os.path.join(d, "cert.pem"), os.path.join(d, "key.pem")
        for name, data in ((cert_file, cert_pem), (key_file, key_pem)):
            fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
        try:
            ctx.load_cert_chain(cert_file, key_file, password=_no_password)
        except ValueError as e:
            _fail(path, "tls_server_config.key_file", str(e))
        except ssl.SSLError as e:
            _fail(path, "tls_server_config", f"certificate and key do not load as a pair: {e.reason or e}")


def _tls(path, tls):
    """tls_server_config -> TLSSettings, or None when the section sets nothing TLS."""
    base = os.path.dirname(os.path.abspath(path))
    k = "tls_server_config."

    def text(name):
        v = tls.get(name)
        if v is None:
            return ""
        return _expect(path, k + name, v, str, "a string")

    def file(name):
        v = text(name)
        return os.path.join(base, v) if v else ""

    cert_file, key_file, ca_file = file("cert_file"), file("key_file"), file("client_ca_file")
    cert, key, ca = text("cert"), text("key"), text("client_ca")
    auth = text("client_auth_type")
    if not (cert_file or key_file or ca_file or cert or key or ca or auth):
        return None
    if cert and cert_file:
        _fail(path, k + "cert", "set either cert or cert_file, not both")
    if key and key_file:
        _fail(path, k + "key", "set either key or key_file, not both")
    if not (cert or cert_file):
        _fail(path, k + "cert_file", "missing one of cert or cert_file")
    if not (key or key_file):
        _fail(path, k + "key_file", "missing one of key or key_file")

    versions = {}
    for name, default in (("min_version", "TLS12"), ("max_version", "TLS13")):
        v = tls.get(name) or default
        if v not in TLS_VERSIONS:
            _fail(path, k + name, f"expected one of {', '.join(TLS_VERSIONS)}, got {shown(v)}")
        versions[name] = TLS_VERSIONS[v]
    if versions["min_version"] > versions["max_version"]:
        _fail(path, k + "min_version", "is above max_version")

    auth = auth or "NoClientCert"
    if auth not in CLIENT_AUTH:
        _fail(path, k + "client_auth_type", f"expected one of {', '.join(CLIENT_AUTH)}, got {shown(auth)}")
    if (ca or ca_file) and auth == "NoClientCert":
        _fail(path, k + "client_ca_file", "client CAs are set but client_auth_type is NoClientCert")
    if auth in ("RequireAnyClientCert", "RequireClientCert") and not (ca or ca_file):
        # Python's ssl module cannot accept an unverified certificate: verify against the CA.
        _fail(path, k + "client_auth_type",
              f"{auth} needs client_ca_file here (client certificates are always verified)")
    sans = _str_list(path, k + "client_allowed_sans", tls.get("client_allowed_sans"))
    if "client_allowed_sans" in tls and tls["client_allowed_sans"] is not None:
        if auth not in ("RequireAnyClientCert", "RequireClientCert", "RequireAndVerifyClientCert"):
            _fail(path, k + "client_allowed_sans",
                  "needs client_auth_type RequireAnyClientCert or RequireAndVerifyClientCert")
        allowed = set()
        for s in sans:
            try:
                allowed.add(str(ipaddress.ip_address(s)))
            except ValueError:
                allowed.add(s)
        allowed_sans = frozenset(allowed)
    else:
        allowed_sans = None

    ciphers = _str_list(path, k + "cipher_suites", tls.get("cipher_suites"))
    for c in ciphers:
        if c not in CIPHERS:
            _fail(path, k + "cipher_suites", f"unknown cipher: {key_shown(c)}")
    curves = _str_list(path, k + "curve_preferences", tls.get("curve_preferences"))
    for c in curves:
        if c not in CURVES:
            _fail(path, k + "curve_preferences", f"unknown curve: {key_shown(c)}")
    prefer = tls.get("prefer_server_cipher_suites", True)
    _expect(path, k + "prefer_server_cipher_suites", prefer, bool, "true or false")

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = versions["min_version"]
    ctx.maximum_version = versions["max_version"]
    if versions["min_version"] < ssl.TLSVersion.TLSv1_2:
        ctx.set_ciphers("DEFAULT:@SECLEVEL=0")   # OpenSSL 3 refuses TLS 1.0/1.1 at the default level
    ctx.options |= ssl.OP_NO_COMPRESSION
    if prefer:
        ctx.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
    ctx.set_alpn_protocols(["http/1.1"])
    if ciphers:
        try:
            ctx.set_ciphers(":".join(CIPHERS[c] for c in ciphers))
        except ssl.SSLError:
            _fail(path, k + "cipher_suites", "none of these ciphers is available in this OpenSSL")
    if curves:
        ctx.set_ecdh_curve(CURVES[curves[0]])   # the ssl module sets one group: the preferred one

    files = tuple(f for f in (cert_file, key_file, ca_file) if f)
    cert_pem = _read_file(path, k + "cert_file", cert_file) if cert_file else cert.encode()
    key_pem = _read_file(path, k + "key_file", key_file) if key_file else key.encode()
    _load_pair(ctx, path, cert_pem, key_pem)

    if auth in ("RequestClientCert", "NoClientCert"):
        # RequestClientCert lets every client in whatever it sends: not asking is the same.
        ctx.verify_mode = ssl.CERT_NONE
    else:
        ctx.verify_mode = ssl.CERT_OPTIONAL if auth == "VerifyClientCertIfGiven" else ssl.CERT_REQUIRED
        try:
            if ca_file:
                ctx.load_verify_locations(cadata=_read_file(path, k + "client_ca_file", ca_file).decode("latin-1"))
            elif ca:
                ctx.load_verify_locations(cadata=ca)
            else:
                ctx.load_default_certs(ssl.Purpose.CLIENT_AUTH)
        except (ssl.SSLError, ValueError) as e:
            _fail(path, k + ("client_ca_file" if ca_file else "client_ca"),
                  f"no CA certificate loads: {getattr(e, 'reason', None) or e}")
    return TLSSettings(ctx, allowed_sans, files, auth, versions["min_version"], ciphers)


def _users(path, users):
    if users is None:
        return {}
    if not isinstance(users, dict):
        _fail(path, "basic_auth_users", f"expected a mapping of user names to bcrypt hashes, got {shown(users)}")
    out = {}
    for user, hashed in users.items():
        if not isinstance(user, str):
            _fail(path, "basic_auth_users", f"user name {shown(user)} is not a string")
        key = f"basic_auth_users.{key_shown(user)}"
        if not isinstance(hashed, str) or not _BCRYPT.match(hashed):
            _fail(path, key, "expected a bcrypt hash such as $2y$10$...")
        cost = int(_BCRYPT.match(hashed).group(1))
        if not 4 <= cost <= 31:
            _fail(path, key, f"bcrypt cost {cost} is outside 4-31")
        out[user] = hashed.encode("ascii")
    return out


def _headers(path, http):
    if http is None:
        return {}
    if not isinstance(http, dict):
        _fail(path, "http_server_config", f"expected a mapping, got {shown(http)}")
    _expect(path, "http_server_config.http2", http.get("http2", True), bool, "true or false")
    headers = http.get("headers") or {}
    if not isinstance(headers, dict):
        _fail(path, "http_server_config.headers", f"expected a mapping, got {shown(headers)}")
    out = {}
    for name, value in headers.items():
        key = f"http_server_config.headers.{key_shown(name)}"
        if name not in HEADERS:
            _fail(path, key, f"header {shown(name)} can not be configured (allowed: {', '.join(HEADERS)})")
        _expect(path, key, value, str, "a string")
        allowed = HEADERS[name]
        if allowed and value not in allowed:
            _fail(path, key, f"expected one of {', '.join(allowed)}, got {shown(value)}")
        if "\r" in value or "\n" in value:
            _fail(path, key, "value contains a line break")
        if value:
            out[name] = value
    return out


def _rate(path, rate):
    if rate is None:
        return None
    if not isinstance(rate, dict):
        _fail(path, "rate_limit", f"expected a mapping, got {shown(rate)}")
    interval = parse_duration(rate.get("interval", 0))
    if interval is None:
        _fail(path, "rate_limit.interval",
              f"expected a duration such as 1s or 100ms, got {shown(rate.get('interval'))}")
    burst = _expect(path, "rate_limit.burst", rate.get("burst", 0), int, "an integer")
    if burst < 0:
        _fail(path, "rate_limit.burst", f"expected a non-negative integer, got {burst}")
    return (interval, burst) if interval > 0 else None


class RateLimiter:
    """Token bucket: ``burst`` requests at once, then one per ``interval`` (the toolkit's rate_limit)."""

    def __init__(self, interval, burst, clock=time.monotonic):
        self.interval, self.burst, self.clock = interval, burst, clock
        self.tokens = float(burst)
        self.last = clock()

    def allow(self):
        now = self.clock()
        self.tokens = min(self.burst, self.tokens + (now - self.last) / self.interval)
        self.last = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False


class WebConfig:
    """One loaded web config file. Immutable except for the password caches."""

    def __init__(self, path=None, tls=None, users=None, headers=None, rate=None):
        self.path = path
        self.tls = tls
        self.users = users or {}
        self.headers = headers or {}
        self.header_bytes = "".join(f"{k}: {v}\r\n" for k, v in self.headers.items()).encode("latin-1")
        self.rate = rate
        self.limiter = RateLimiter(*rate) if rate else None
        self.auth = Authenticator(self.users)
        self.empty = False

    def posture(self):
        """What decides who gets in: compared on reload, any change logged at warning."""
        tls = self.tls
        return {"tls": tls is not None,
                "client_auth": tls.client_auth if tls else None,
                "min_version": tls.min_version.name if tls else None,
                "client_allowed_sans": tls.allowed_sans if tls else None,
                "basic_auth_users": frozenset(self.users.items())}

    @property
    def files(self):
        return ((self.path,) if self.path else ()) + (self.tls.files if self.tls else ())

    def describe(self):
        tls = f"on client_auth={self.tls.client_auth}" if self.tls else "off"
        return f"tls={tls} basic_auth_users={len(self.users)} headers={len(self.headers)}"


def load_web_config(path):
    """Read and validate a web config file; WebConfigError names the file and the key."""
    data = read_yaml(path, "web config file", WebConfigError, regular_only=True)
    empty = data is None           # an empty or comment-only file
    if empty:
        data = {}
    if not isinstance(data, dict):
        raise WebConfigError(f"web config file {path}: top level: expected a mapping, got {type(data).__name__}")
    for key, val in data.items():
        if key not in KEYS:
            _fail(path, key_shown(key), "unknown key")
        allowed = KEYS[key]
        if allowed is None or val is None:
            continue
        if not isinstance(val, dict):
            _fail(path, key, f"expected a mapping, got {type(val).__name__}")
        for sub in val:
            if sub not in allowed:
                _fail(path, f"{key}.{key_shown(sub)}", "unknown key")
    web = WebConfig(path, _tls(path, data.get("tls_server_config") or {}),
                    _users(path, data.get("basic_auth_users")),
                    _headers(path, data.get("http_server_config")),
                    _rate(path, data.get("rate_limit")))
    web.empty = empty
    return web


class Authenticator:
    """Basic auth against bcrypt hashes.

    A bcrypt check costs 50-200 ms of CPU at the usual costs, so each distinct Authorization
    header is checked once and its outcome cached (keyed by its SHA-256, so no password is kept):
    a scrape with known credentials costs one hash and a dict lookup. Checks run one at a time
    on a single thread, so a flood of new passwords costs at most one core.
    """

    MAX_CACHED_FAILURES = 256

    def __init__(self, users):
        self.users = users
        self.good = {}                    # digest -> user
        self.bad = OrderedDict()          # digest -> None, most recent last

    def cached(self, header):
        """True or False when this header's outcome is known, None when it needs a check."""
        if header is None:
            return False
        digest = hashlib.sha256(header.encode("latin-1", "replace")).digest()
        if digest in self.good:
            return True
        if digest in self.bad:
            return False
        return None

    def check(self, header):
        """The slow path: decode, bcrypt, cache. Runs on the checker thread."""
        digest = hashlib.sha256(header.encode("latin-1", "replace")).digest()
        user, password = parse_basic(header)
        ok = False
        if user is not None:
            hashed = self.users.get(user)
            try:
                if hashed is None:
                    # Same cost as a real check, so timing does not tell which users exist.
                    bcrypt.checkpw(password, _dummy_hash(_cost(next(iter(self.users.values())))))
                else:
                    ok = bcrypt.checkpw(password, hashed)
            except ValueError:
                ok = False
        if ok:
            self.good[digest] = user
        else:
            self.bad[digest] = None
            while len(self.bad) > self.MAX_CACHED_FAILURES:
                self.bad.popitem(last=False)
        return ok


def parse_basic(header):
    """'Basic dXNlcjpwdw==' -> ('user', b'pw'); (None, None) when it is not basic credentials."""
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "basic":
        return None, None
    try:
        raw = base64.b64decode(token.strip(), validate=True)
    except (binascii.Error, ValueError):
        return None, None
    user, sep, password = raw.partition(b":")
    if not sep:
        return None, None
    return user.decode("utf-8", "surrogateescape"), password


def _cost(hashed):
    return int(hashed[4:6].decode("ascii"))


_dummies = {}


def _dummy_hash(cost):
    if cost not in _dummies:
        _dummies[cost] = bcrypt.hashpw(b"not a password", bcrypt.gensalt(cost))
    return _dummies[cost]


class Checker:
    """The one thread that runs bcrypt checks, in order; results go back to the asking loop."""

    def __init__(self):
        self.jobs = queue.Queue()
        self.thread = None
        self.lock = threading.Lock()

    def submit(self, loop, auth, header, done):
        """Run auth.check(header) and call done(ok) on ``loop``. Jobs whose asker gave up are skipped."""
        with self.lock:
            if self.thread is None:
                self.thread = threading.Thread(target=self._run, name="auth-check", daemon=True)
                self.thread.start()
        job = {"loop": loop, "auth": auth, "header": header, "done": done, "cancelled": False}
        self.jobs.put(job)
        return job

    def _run(self):
        while True:
            job = self.jobs.get()
            if job["cancelled"]:
                continue
            try:
                ok = job["auth"].check(job["header"])
            except Exception as e:   # a bad header must not end the checker
                log.warning("password check failed err=%r", e)
                ok = False
            try:
                job["loop"].call_soon_threadsafe(job["done"], ok)
            except RuntimeError:     # loop closed while we checked
                pass


def _signature(files):
    sig = []
    for name in files:
        try:
            st = os.stat(name)
            sig.append((st.st_ino, st.st_size, st.st_mtime_ns))
        except OSError:
            sig.append(None)
    return tuple(sig)


# client_auth_type from weakest to strongest
_CLIENT_AUTH_RANK = {"NoClientCert": 0, "RequestClientCert": 0, "VerifyClientCertIfGiven": 1,
                     "RequireAnyClientCert": 2, "RequireClientCert": 2, "RequireAndVerifyClientCert": 2}


def weakenings(old, new):
    """Why replacing ``old`` by ``new`` would let in someone ``old`` keeps out ([] when it would not)."""
    out = []
    if new.empty:
        out.append("the file is empty")
    if old.tls is not None and new.tls is None:
        out.append("TLS would be turned off")
    if old.users and not new.users:
        out.append("basic auth would be turned off")
    if old.tls is not None and new.tls is not None:
        if _CLIENT_AUTH_RANK[new.tls.client_auth] < _CLIENT_AUTH_RANK[old.tls.client_auth]:
            out.append(f"client_auth_type would go from {old.tls.client_auth} to {new.tls.client_auth}")
        if new.tls.min_version < old.tls.min_version:
            out.append(f"min_version would go down to {new.tls.min_version.name}")
        if old.tls.allowed_sans is not None and new.tls.allowed_sans is None:
            out.append("client_allowed_sans would be dropped")
        wider = not new.tls.cipher_suites or not new.tls.cipher_suites <= old.tls.cipher_suites   # empty: defaults
        if old.tls.cipher_suites and wider:
            out.append("cipher_suites would allow ciphers the running config refuses")
    return out


def _posture_change(old, new):
    """One line on what changed in who gets in, or None."""
    a, b = old.posture(), new.posture()
    if a == b:
        return None
    parts = []
    for key in a:
        if a[key] == b[key]:
            continue
        if key == "basic_auth_users":
            before, after = dict(a[key]), dict(b[key])
            added = sorted(set(after) - set(before))
            removed = sorted(set(before) - set(after))
            changed = sorted(u for u in set(before) & set(after) if before[u] != after[u])
            for what, users in (("added", added), ("removed", removed), ("new password", changed)):
                if users:
                    parts.append(f"basic_auth_users {what}: {','.join(key_shown(u) for u in users)}")
        elif key == "client_allowed_sans":
            parts.append("client_allowed_sans changed")
        else:
            parts.append(f"{key}: {a[key]} -> {b[key]}")
    return "; ".join(parts)


class ServerSecurity:
    """The current web config of a running server, re-read when its files change.

    A watcher thread (``watch``) stats the files every CHECK_EVERY seconds and reads them once
    they have looked the same for SETTLE seconds, so an editor or config manager that rewrites
    in place is read when it is done, not half-way; YAML and certificates are loaded there,
    never on the event loop. A reload that would weaken security (TLS or basic auth off, weaker
    client certificate checks, an empty file) is refused until the operator restarts.
    """

    CHECK_EVERY = 0.25
    SETTLE = 0.5

    def __init__(self, path=None, clock=time.monotonic):
        self.path = path
        self.clock = clock
        self.current = load_web_config(path) if path else WebConfig()
        self._sig = _signature(self.current.files)
        self._bad_sig = None
        self._pending = None             # (signature, first seen) of files still changing
        self._lock = threading.RLock()     # a second SIGHUP may arrive inside the first one's reload
        self._stop = threading.Event()
        self._thread = None
        self.checker = Checker()
        if path:
            log.info("web config loaded file=%s %s", path, self.current.describe())

    def make_server(self, address, scheduler, config, live=None):
        from .server import Server
        web = config["web"]
        return Server(address, scheduler, read_timeout=web["read_timeout_seconds"],
                      max_requests=web["max_requests"], max_header_bytes=web["max_header_bytes"],
                      max_connections=web["max_connections"],
                      idle_timeout=web["idle_timeout_seconds"], security=self, live=live)

    def watch(self):
        """Start the watcher thread (once)."""
        if self.path and self._thread is None:
            self._thread = threading.Thread(target=self._watch, name="web-config", daemon=True)
            self._thread.start()

    def close(self):
        self._stop.set()

    def _watch(self):
        while not self._stop.wait(self.CHECK_EVERY):
            try:
                self.poll()
            except Exception as e:      # the watcher must outlive any surprise
                log.error("web config watcher err=%r", e)

    def poll(self):
        """One look at the files; reload once they changed and then stayed the same SETTLE seconds."""
        sig = _signature(self.current.files)
        if sig == self._sig or sig == self._bad_sig:
            self._pending = None
            return False
        now = self.clock()
        if self._pending is None or self._pending[0] != sig:
            self._pending = (sig, now)
            return False
        if now - self._pending[1] < self.SETTLE:
            return False
        self._pending = None
        return self._reload(log_errors=True, repeat=False)

    def maybe_reload(self):
        """Without a watcher thread (tests, tools): one poll."""
        if self._thread is None and self.path:
            self.poll()

    def reload(self, log_errors=True):
        """Load the file again (SIGHUP); on error keep the last good config. True when the new one is in use."""
        return self._reload(log_errors, repeat=True)

    def _reload(self, log_errors, repeat):
        """``repeat``: log an error even when this bad version of the files was logged before."""
        if not self.path:
            return True
        with self._lock:
            old = self.current
            before = _signature(old.files)
            try:
                new = load_web_config(self.path)
                refused = weakenings(old, new)
            except Exception as e:   # ConfigError, or anything else: the running server keeps going
                new, refused = None, [str(e) if isinstance(e, ConfigError) else repr(e)]
            sig = _signature(old.files)
            if sig != before:
                return False         # changed while being read: the watcher reads it again when it settles
            if refused:
                if log_errors and (repeat or sig != self._bad_sig):
                    if new is None:
                        log.error("web config not reloaded, keeping the last good one err=%r", refused[0])
                    else:
                        log.error("web config not reloaded: it would weaken security, keeping the last "
                                  "good one (restart to apply it) reason=%r", "; ".join(refused))
                self._bad_sig = sig
                return False
            if new.users == old.users:
                new.auth = old.auth          # same hashes: keep the checked passwords
            self._sig = _signature(new.files)
            self._bad_sig = None
            self.current = new
        change = _posture_change(old, new)
        if change:
            log.warning("web config security changed file=%s change=%r", self.path, change)
        log.info("web config loaded file=%s %s", self.path, new.describe())
        return True


def load_server_security(config):
    return ServerSecurity(config["web"]["config_file"])
