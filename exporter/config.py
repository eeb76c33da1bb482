"""Configuration: defaults, YAML file, HOOFHEARTED_* environment, flags; validated into a dict.

Precedence: flag > environment > file > default. Every error is a ConfigError whose message
names the bad key and what was expected; the CLI prints it on one line and exits 2.
"""
import copy
import ipaddress
import os
import re

import yaml

from .collectors import DEFAULT_TIERS
from .sources.host import FileTooLarge, read_file

TIERS = ("critical", "important", "standard", "background")


class ConfigError(Exception):
    """A bad setting. str(err) is the one-line message for the user."""

    def __init__(self, message):
        # A key or value from the user may hold a line break or a control character: show it escaped.
        super().__init__("".join(c if c.isprintable() else repr(c)[1:-1] for c in str(message)))


class Field:
    def __init__(self, kind, default, check=None, expect=None, nullable=False, lo=None, hi=None):
        self.kind = kind          # "int", "float", "bool", "str", "list_int", "list_str"
        self.default = default
        self.check = check        # callable(value) -> bool
        self.expect = expect      # words for the error message
        self.nullable = nullable
        self.lo, self.hi = lo, hi  # inclusive bounds of a number

    def parse(self, key, value, from_text=False):
        if self.nullable and (value is None or (from_text and value == "")):
            return None
        if from_text:
            value = _from_text(self.kind, value)
        ok, value = _coerce(self.kind, value)
        if ok and self.lo is not None and not (self.lo <= value <= self.hi):   # also NaN
            ok = False
        if not ok or (self.check and not self.check(value)):
            bounds = f" (allowed: {_num(self.lo)} to {_num(self.hi)})" if self.lo is not None else ""
            raise ConfigError(f"{key}: expected {self.expect or _WORDS[self.kind]}, got {shown(value)}{bounds}")
        return value


def _num(x):
    return str(int(x)) if x == int(x) else str(x)


def shown(value):
    """A bad value for an error message: short words and numbers as they are, anything else by
    its kind only, so a file that is not a config (a key file, /etc/shadow) is never echoed."""
    if value is None or isinstance(value, (bool, int, float)):
        return repr(value)
    if isinstance(value, str):
        if _SHOWABLE.fullmatch(value):
            return repr(value)
        return f"a string of {len(value)} characters"
    if isinstance(value, list) and len(value) <= 8 and all(
            isinstance(x, (bool, int, float)) or (isinstance(x, str) and _SHOWABLE.fullmatch(x)) for x in value):
        return repr(value)
    return f"a {type(value).__name__}"


def key_shown(key):
    """A key for an error message: named when it looks like a key, else withheld."""
    key = str(key)
    return key if _SHOWABLE_KEY.fullmatch(key) else "(a key that is not shown)"


_SHOWABLE = re.compile(r"[A-Za-z0-9_.:\[\]/+-]{1,40}")
_SHOWABLE_KEY = re.compile(r"[A-Za-z0-9_.-]{1,64}")


_WORDS = {
    "int": "an integer", "float": "a number", "bool": "true or false", "str": "a string",
    "list_int": "a list of integers", "list_str": "a list of strings",
}


def _from_text(kind, text):
    """Environment and flag values arrive as text."""
    if kind == "bool":
        low = text.strip().lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off"):
            return False
        return text
    if kind in ("int", "float"):
        try:
            return int(text) if kind == "int" else float(text)
        except ValueError:
            return text
    if kind == "list_int":
        try:
            return [int(x) for x in text.split(",") if x.strip()]
        except ValueError:
            return text
    if kind == "list_str":
        return [x.strip() for x in text.split(",") if x.strip()]
    return text


def _coerce(kind, v):
    if kind == "bool":
        return isinstance(v, bool), v
    if kind == "int":
        return isinstance(v, int) and not isinstance(v, bool), v
    if kind == "float":
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            return True, float(v)
        return False, v
    if kind == "str":
        return isinstance(v, str), v
    if kind == "list_int":
        return isinstance(v, list) and all(isinstance(x, int) and not isinstance(x, bool) for x in v), v
    if kind == "list_str":
        return isinstance(v, list) and all(isinstance(x, str) for x in v), v
    return False, v


def _positive(v):
    return v > 0


def _non_negative(v):
    return v >= 0


def _nonempty(v):
    return v.strip() != "" and "\0" not in v


def _ratio(v):
    return 0 <= v <= 1


def _regex(v):
    try:
        re.compile(v)
        return True
    except re.error:
        return False


def _port_list(v):
    return all(0 < p < 65536 for p in v)


def parse_listen_address(text):
    """'host:port' -> (host, port). IPv6 as '[::1]:10101'. Raises ValueError."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ValueError(text)
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        ipaddress.IPv6Address(host)
    elif host == "":
        host = "0.0.0.0"
    elif not re.fullmatch(r"[A-Za-z0-9.\-]+", host):
        raise ValueError(text)
    return host, int(port)


def _listen(v):
    try:
        parse_listen_address(v)
        return True
    except ValueError:
        return False


def _tier(v):
    return v in TIERS


def _level(v):
    return v in ("debug", "info", "warning", "error")


def _group_by(v):
    return v in ("name", "user", "owner")


# The NVML bindings gpu.nvml_module may name: importing is running code, so nothing else.
# tests.fakenvml.<scenario> and tests.hangnvml are the project's own fakes (real pynvml over a
# fake library), importable only from a checkout.
NVML_MODULES = ("pynvml", "py3nvml.py3nvml", "tests.fakenvml.<scenario>", "tests.hangnvml")


def _nvml_module(v):
    return v in NVML_MODULES[:2] or re.fullmatch(r"tests\.(?:fakenvml\.[a-z][a-z0-9_]*|hangnvml)", v) is not None


def _url(v):
    return re.match(r"^https?://[^\s/]+", v) is not None


_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,31}$")


class TargetsField(Field):
    """A list of BMC targets, each a mapping with known keys. From the environment or a flag
    the list is YAML (flow style: ``[{name: a, host: 10.0.0.5, ...}]``)."""

    def __init__(self, keys, required):
        super().__init__("targets", [])
        self.keys = keys              # key -> (kind, check, expect, default)
        self.required = required

    def parse(self, key, value, from_text=False):
        if from_text:
            try:
                value = yaml.safe_load(value) if value.strip() else []
            except yaml.YAMLError:
                raise ConfigError(f"{key}: expected a YAML list of targets") from None
        if value is None:
            return []
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list of targets, got {type(value).__name__}")
        out = []
        for i, item in enumerate(value):
            where = f"{key}[{i}]"
            if not isinstance(item, dict):
                raise ConfigError(f"{where}: expected a mapping, got {type(item).__name__}")
            target = {}
            for k, v in item.items():
                spec = self.keys.get(str(k))
                if spec is None:
                    hint = " (passwords come only from password_file or password_env)" \
                        if str(k) == "password" else ""
                    raise ConfigError(f"{where}.{k}: unknown key{hint}")
                kind, check, expect, _ = spec
                ok, v = _coerce(kind, v)
                if not ok or (check and not check(v)):
                    shown = "(hidden)" if "password" in str(k) else _without_userinfo(v)
                    raise ConfigError(f"{where}.{k}: expected {expect or _WORDS[kind]}, got {shown}")
                target[str(k)] = v
            for k in self.required:
                if k not in target:
                    raise ConfigError(f"{where}.{k}: required")
            if "password_file" in target and "password_env" in target:
                raise ConfigError(f"{where}: password_file and password_env are exclusive")
            for k, (_, _, _, default) in self.keys.items():
                target.setdefault(k, default)
            out.append(target)
        names = [t["name"] for t in out]
        for n in names:
            if names.count(n) > 1:
                raise ConfigError(f"{key}: target name {n!r} used twice")
        return out


def _without_userinfo(v):
    """repr of a value, with the user:password@ of a URL (a secret, in the wrong place) masked."""
    if isinstance(v, str):
        v = re.sub(r"^([A-Za-z][A-Za-z0-9+.-]*://)[^/\s]*@", r"\1***@", v)
    return repr(v)


def _target_name(v):
    return _NAME.match(v) is not None and v != "local"


def _host(v):
    return re.fullmatch(r"[A-Za-z0-9.\-:\[\]]+", v) is not None


def _port(v):
    return 0 < v < 65536


def _bmc_url(v):
    return re.match(r"^https?://[^\s/@]+(/|$)", v) is not None


def _local(v):
    return v in (True, False, "auto")


class TristateField(Field):
    def parse(self, key, value, from_text=False):
        if from_text:
            low = value.strip().lower()
            value = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}.get(low, low)
        if not _local(value):
            raise ConfigError(f"{key}: expected auto, true or false, got {value!r}")
        return value


_SECRET_KEYS = {
    "username": ("str", None, None, None),
    "password_file": ("str", None, None, None),
    "password_env": ("str", lambda v: re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", v) is not None,
                     "an environment variable name", None),
    "timeout_seconds": ("float", _positive, "a positive number of seconds", None),
}
IPMI_TARGET = TargetsField({
    "name": ("str", _target_name, "a short name: letters, digits, '.', '_', '-' (not 'local')", None),
    "host": ("str", _host, "a host name or IP address", None),
    "port": ("int", _port, "a UDP port", 623),
    "privilege": ("str", lambda v: v in ("user", "operator", "admin"), "user, operator or admin", "user"),
    "workaround_flags": ("list_str", None, None, []),
    **_SECRET_KEYS,
}, required=("name", "host"))
REDFISH_TARGET = TargetsField({
    "name": ("str", _target_name, "a short name: letters, digits, '.', '_', '-' (not 'local')", None),
    "url": ("str", _bmc_url, "an http(s) URL without credentials, e.g. https://10.0.0.5", None),
    "verify_tls": ("bool", None, None, True),
    "ca_file": ("str", None, None, None),
    "auth": ("str", lambda v: v in ("basic", "session"), "basic or session", "basic"),
    **_SECRET_KEYS,
}, required=("name", "url"))


# Default tier per collector (declared with the collector); unknown collectors in the config are an error.
COLLECTOR_TIERS = DEFAULT_TIERS

SCHEMA = {
    "web": {
        "listen_address": Field("str", "127.0.0.1:10101", _listen, "host:port"),
        "config_file": Field("str", None, nullable=True),
        "max_requests": Field("int", 40, _positive, "a positive integer", lo=1, hi=10000),
        "read_timeout_seconds": Field("float", 5.0, _positive, "a positive number", lo=0.1, hi=300),
        "max_header_bytes": Field("int", 8192, _positive, "a positive integer", lo=1024, hi=1 << 20),
        "max_connections": Field("int", 512, _positive, "a positive integer", lo=1, hi=65536),
        "idle_timeout_seconds": Field("float", 120.0, _positive, "a positive number", lo=0.1, hi=86400),
        "live_page": Field("bool", True),
        "live_max_clients": Field("int", 10, _positive, "a positive integer", lo=1, hi=1000),
    },
    "paths": {
        "procfs": Field("str", "/proc", _nonempty, "a directory"),
        "sysfs": Field("str", "/sys", _nonempty, "a directory"),
        "rootfs": Field("str", "/", _nonempty, "a directory"),
    },
    "log": {
        "level": Field("str", "info", _level, "one of debug, info, warning, error"),
    },
    # at most a minute: ExporterStale (alerting/rules/exporter.yml) takes a success timestamp that
    # did not move for two minutes as a hung collector
    "tiers": {t: Field("float", d, _positive, "a positive number of seconds", lo=0.05, hi=60)
              for t, d in zip(TIERS, (1.0, 2.0, 5.0, 10.0))},
    "refresh": {
        "timeout_seconds": Field("float", 5.0, _positive, "a positive number of seconds", lo=0.05, hi=3600),
        "stale_after_intervals": Field("int", 5, _positive, "a positive integer", lo=1, hi=1000),
    },
    "collectors": {
        name: {
            "enabled": Field("bool", True),
            "tier": Field("str", tier, _tier, "one of " + ", ".join(TIERS)),
        }
        for name, tier in COLLECTOR_TIERS.items()
    },
    "escalation": {
        "enabled": Field("bool", True),
        "cpu_temperature_celsius": Field("float", 80.0, _positive, "a positive number", lo=1, hi=250),
        "gpu_temperature_celsius": Field("float", 80.0, _positive, "a positive number", lo=1, hi=250),
        "cpu_busy_ratio": Field("float", 0.9, _ratio, "a ratio between 0 and 1"),
    },
    "network": {
        "exclude": Field("str", r"^(veth.*|cali.*|tap.*|virbr.*-nic)$", _regex, "a regular expression"),
    },
    "disk": {
        "exclude": Field("str", r"^(z?ram|loop|fd|sr|(h|s|v|xv)d[a-z]+|nvme\d+n\d+p|mmcblk\d+p)\d+$",
                         _regex, "a regular expression"),
    },
    "process": {
        "top_n": Field("int", 10, _non_negative, "a non-negative integer", lo=0, hi=1000),
        "group_by": Field("str", "name", _group_by, "one of name, user, owner"),
        "max_groups": Field("int", 50, _positive, "a positive integer", lo=1, hi=1000),
        "group_min_cpu_cores": Field("float", 0.01, _non_negative, "a non-negative number", lo=0, hi=65536),
        "group_min_memory_bytes": Field("int", 64 * 1024 * 1024, _non_negative, "a non-negative integer",
                                        lo=0, hi=1 << 60),
        "group_hold_seconds": Field("float", 300.0, _non_negative, "a non-negative number of seconds",
                                    lo=0, hi=7 * 86400),
        "cmdline": Field("bool", False),
        "cmdline_max_length": Field("int", 200, _positive, "a positive integer", lo=1, hi=8192),
        "miner_names_file": Field("str", None, nullable=True),
        "stratum_ports": Field("list_int", [3333, 4444, 5555, 7777, 14444], _port_list, "a list of TCP ports"),
        "stratum_min_cpu_cores": Field("float", 0.5, _non_negative, "a non-negative number", lo=0, hi=65536),
    },
    "gpu": {
        "top_n": Field("int", 10, _non_negative, "a non-negative integer", lo=0, hi=1000),
        "max_groups": Field("int", 10, _positive, "a positive integer", lo=1, hi=1000),
        "nvml_module": Field("str", "pynvml", _nvml_module, "one of " + ", ".join(NVML_MODULES)),
    },
    "grafana_live": {
        "url": Field("str", None, _url, "an http(s) URL", nullable=True),
        "token": Field("str", None, nullable=True),
        "token_file": Field("str", None, nullable=True),
        "timeout_seconds": Field("float", 1.0, _positive, "a positive number of seconds", lo=0.05, hi=60),
    },
    "bmc": {
        "timeout_seconds": Field("float", 3.0, _positive, "a positive number of seconds", lo=0.05, hi=300),
        "ipmi": {
            "local": TristateField("tristate", "auto"),
            "device": Field("str", "/dev/ipmi0"),
            "ipmi_sensors": Field("str", "ipmi-sensors"),
            "targets": IPMI_TARGET,
        },
        "redfish": {
            "targets": REDFISH_TARGET,
        },
    },
}


def _walk(schema, prefix=()):
    for key, val in schema.items():
        if isinstance(val, Field):
            yield prefix + (key,), val
        else:
            yield from _walk(val, prefix + (key,))


FIELDS = dict(_walk(SCHEMA))


def defaults():
    out = {}
    for path, field in FIELDS.items():
        _set(out, path, copy.deepcopy(field.default))
    return out


def _set(d, path, value):
    for k in path[:-1]:
        d = d.setdefault(k, {})
    d[path[-1]] = value


def _report(errors, err):
    """Raise a ConfigError, or collect it when the caller wants every error (check-config)."""
    if errors is None:
        raise err
    errors.append(err)


def _flatten(data, prefix=(), errors=None):
    """Nested YAML mapping -> {path: value}, naming unknown keys."""
    if not isinstance(data, dict):
        where = ".".join(prefix) or "top level"
        _report(errors, ConfigError(f"{where}: expected a mapping, got {type(data).__name__}"))
        return
    for key, val in data.items():
        path = prefix + (str(key),)
        dotted = ".".join(prefix + (key_shown(key),))
        if path in FIELDS:
            yield path, val
        elif any(p[:len(path)] == path for p in FIELDS):
            if val is None:
                continue
            yield from _flatten(val, path, errors)
        else:
            _report(errors, ConfigError(f"{dotted}: unknown key"))


_QUOTED = re.compile(r"""\s*(?:'[^']*'|"[^"]*"|%r)""")


class DuplicateKey(yaml.YAMLError):
    def __init__(self, key, line):
        super().__init__(f"duplicate key {key}")
        self.key, self.line = key, line


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice in one mapping (PyYAML keeps the last one)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=deep)
            try:
                dup = key in seen
                seen.add(key)
            except TypeError:       # unhashable keys: SafeLoader reports them itself
                continue
            if dup:
                raise DuplicateKey(key, key_node.start_mark.line + 1)
        return super().construct_mapping(node, deep=deep)


MAX_FILE_BYTES = 1 << 20


def read_yaml(path, what="config file", error=ConfigError, regular_only=False):
    """Parse a YAML file of at most MAX_FILE_BYTES; every failure is one `error` line naming the
    file. ``regular_only``: refuse FIFOs and devices (a file re-read while serving must not block)."""
    try:
        data = read_file(path, MAX_FILE_BYTES, regular_only)
    except FileTooLarge:
        raise error(f"{what} {path}: larger than {MAX_FILE_BYTES} bytes") from None
    except OSError as e:
        raise error(f"{what} {path}: cannot read: {e.strerror or e}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise error(f"{what} {path}: not UTF-8 text") from None
    try:
        return yaml.load(text, Loader=_StrictLoader)
    except DuplicateKey as e:
        raise error(f"{what} {path}: duplicate key {key_shown(e.key)} at line {e.line}") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        # PyYAML quotes what it found; the file may not be ours to show (a key, /etc/shadow)
        problem = _QUOTED.sub("", getattr(e, "problem", None) or "invalid YAML").strip()
        raise error(f"{what} {path}: bad YAML{where}: {problem}") from None
    except (ValueError, RecursionError) as e:   # an impossible date (2001-13-45), absurd nesting
        raise error(f"{what} {path}: bad YAML: {e}") from None


def _parse_all(items, errors):
    """{path: parsed value} of (path, name for messages, value, from_text) items."""
    out = {}
    for p, name, v, from_text in items:
        try:
            out[p] = FIELDS[p].parse(name, v, from_text=from_text)
        except ConfigError as e:
            _report(errors, e)
    return out


def load_file(path, errors=None):
    """Read and validate a YAML config file into {path: value} overrides."""
    data = read_yaml(path)
    if data is None:
        return {}
    return _parse_all(((p, ".".join(p), v, False) for p, v in _flatten(data, errors=errors)), errors)


def env_name(path):
    return "HOOFHEARTED_" + "_".join(path).upper()


def from_env(environ, errors=None):
    known = {env_name(p): p for p in FIELDS}
    items = []
    for key, val in environ.items():
        if not key.startswith("HOOFHEARTED_"):
            continue
        if key not in known:
            _report(errors, ConfigError(f"{key}: unknown environment variable"))
            continue
        items.append((known[key], key, val, True))
    return _parse_all(items, errors)


def build(file=None, environ=None, flags=None, flag_names=None, errors=None):
    """Merge defaults < file < environment < flags into one validated nested dict.

    ``flags`` is {path tuple: value} with values already typed or as text; ``flag_names``
    {path tuple: "--flag.name"} spells them in messages as the user typed them. With an
    ``errors`` list, every bad setting is appended to it and the rest still merged; without,
    the first one raises.
    """
    cfg = defaults()
    names = flag_names or {}
    layers = []
    if file:
        layers.append(load_file(file, errors))
    layers.append(from_env(environ if environ is not None else os.environ, errors))
    layers.append(_parse_all(((p, names.get(p, "--" + ".".join(p)), v, isinstance(v, str))
                              for p, v in (flags or {}).items()), errors))
    for layer in layers:
        for p, v in layer.items():
            _set(cfg, p, v)
    return cfg


SECTION_DOCS = {
    "web": "HTTP server (TLS and basic auth live in the web config file) and the live page at /",
    "paths": "where procfs, sysfs and the root filesystem are mounted",
    "log": "log verbosity",
    "tiers": "refresh interval of each tier, in seconds (0.05 to 60)",
    "refresh": "a refresh slower than timeout_seconds is a failure; data older than this many intervals is dropped",
    "collectors": "enable or disable a collector, or move it to another tier",
    "escalation": "hot readings that switch sensors, process and GPU collectors to the critical interval",
    "network": "interfaces to skip (regular expression)",
    "disk": "block devices to skip (regular expression; partitions and virtual devices by default)",
    "process": "per-process series: top N by CPU and by memory, everything else in groups",
    "gpu": "per-process GPU series per GPU",
    "grafana_live": "push the critical tier to Grafana Live (off unless url is set)",
    "bmc": "server BMCs over IPMI and Redfish; passwords only from password_file or password_env",
}


def defaults_yaml():
    """The full default configuration as commented YAML (the README's reference)."""
    out = []
    for section, value in defaults().items():
        out.append(f"# {SECTION_DOCS[section]}")
        flow = None if section == "collectors" else False
        out.append(yaml.safe_dump({section: value}, sort_keys=False, default_flow_style=flow).rstrip())
    return "\n".join(out) + "\n"
