"""Command-line redaction: secrets never leave the exporter, whatever a process was started with.

Redacted (replaced by ``***``):
- the value of an argument or env-style pair whose key looks secret (password, passwd, secret,
  token, key, apikey, auth, credential, ...): ``--password=x``, ``--token x``, ``PGPASSWORD=x``,
  ``-Dssl.keyStorePassword=x``, ``Authorization: Bearer x``, ``...?api_key=x&...``,
  ``host=db password=x`` (one argument holding several pairs), ``{"api_token": "x"}``;
- URL userinfo: ``https://user:pass@host`` -> ``https://***@host``;
- strings that look like keys: long hex, long high-entropy base64, well-known token formats;
- short options that usually carry a password (``-p X``, ``-pX``, ``-P X``, ``-w X``, ``-k X``),
  and user options whose value is ``user:password`` or ``user%password`` (``-uuser:X``,
  ``--user=user:X``, ``-U user%X``), with per-program exceptions where a flag means something
  else (``curl -k``, ``grep -w``);
- pairs inside an argument: ``-o username=u,password=X``, ``/p:Password=X``, ``--password:X``.

The per-argument rules are a table (RULES), each with its rows in tests/test_redact.py. When a
rule is unsure, it redacts.

Redaction runs on the whole command line before it is cut to length, so a cut can never leave
a partial secret that no longer looks like one.
"""
import os
import re

MASK = "***"

_WORDS = ("password", "passwd", "passphrase", "secret", "token", "apikey", "credential", "auth",
          "cookie", "signature", "bearer", "privatekey", "accesskey")
_EXACT_WORDS = {"key", "keys", "pass", "pw", "pwd", "dsn", "jwt", "pat", "otp"}
_SUFFIXES = ("key", "pass", "pwd")          # apikey, requirepass, dbpwd
_NOT_SECRET = {"bypass", "compass", "surpass", "overpass", "underpass"}

_SPLIT = re.compile(r"[^a-z0-9]+")
_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")

# Well-known token formats: cloud, code hosting, chat, payments, package registries, vaults.
_TOKEN = re.compile(
    r"(?<![A-Za-z0-9])(?:gh[pousr]_[A-Za-z0-9]{20,}|github_pat_[A-Za-z0-9_]{20,}"
    r"|gl(?:pat|dt|rt|ptt|ft|cbt|imt|oas|soat|agent)-[A-Za-z0-9_\-]{20,}|GR1348941[A-Za-z0-9_\-]{20,}"
    r"|xox[abposre]-[A-Za-z0-9\-]{10,}|xapp-[0-9]-[A-Za-z0-9\-]{10,}|xoxe\.xox[bp]-[A-Za-z0-9\-]{10,}"
    r"|(?:sk|rk|pk)_(?:live|test)_[A-Za-z0-9]{10,}|whsec_[A-Za-z0-9]{10,}"
    r"|hv[sbr]\.[A-Za-z0-9_\-]{20,}|s\.[A-Za-z0-9]{24}(?![A-Za-z0-9])"
    r"|npm_[A-Za-z0-9]{36}"
    r"|sk-[A-Za-z0-9_\-]{20,}|(?:AKIA|ASIA)[0-9A-Z]{16}"
    r"|AIza[0-9A-Za-z_\-]{35}|eyJ[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]*)")
_HEX = re.compile(r"(?<![0-9A-Za-z])[0-9a-fA-F]{32,}(?![0-9A-Za-z])")
_B64 = re.compile(r"(?<![A-Za-z0-9+/_\-])[A-Za-z0-9+/_\-]{32,}={0,2}")
_JSON_PAIR = re.compile(r'"([^"\\]{1,100})"(\s*:\s*)"((?:[^"\\]|\\.)*)"')

# Options that name a user: their value may be user:password (curl, mysql) or user%password (smbclient).
_USER_KEYS = {"u", "U", "user", "username", "proxy-user", "login", "credentials", "creds"}
# program -> {flag: how its value is given}; "attached": -pSECRET, "next": -p SECRET,
# "userpass": user:SECRET in the next argument, None: the flag takes no value there
_DEFAULT_FLAGS = {"-p": "both", "-P": "next", "-w": "next", "-k": "next", "-u": "userpass", "-U": "userpass"}
_PROGRAM_FLAGS = {
    **{p: {"-p": "attached", "-P": None} for p in ("mysql", "mysqldump", "mysqladmin", "mysqlimport",
                                                   "mysqlcheck", "mysqlshow", "mariadb", "mariadb-dump",
                                                   "mariadb-admin")},
    "sshpass": {"-p": "next"},
    "redis-cli": {"-a": "next"},
    "valkey-cli": {"-a": "next"},
    "curl": {"-u": "userpass", "--user": "userpass", "-U": "userpass", "--proxy-user": "userpass",
             "-k": None, "-w": None, "-p": None, "-P": None},
    "grep": {"-w": None, "-P": None},
    # programs whose short options are plainly not secrets: ports, pids, paths, field numbers
    **{p: {"-p": None} for p in ("mkdir", "ssh", "docker", "podman", "nerdctl", "ps", "top", "htop", "pidstat",
                                 "strace", "ltrace", "perf", "gdb", "renice", "taskset", "chrt", "prlimit",
                                 "nc", "ncat", "iperf3", "cp", "install", "patch", "pgrep", "pkill")},
    **{p: {"-P": None} for p in ("scp", "sftp", "xargs", "parallel")},
    **{p: {"-k": None} for p in ("sort",)},
    **{p: {"-w": None} for p in ("ping", "ping6", "wc", "fold")},
}
_COMBINED_FLAGS = re.compile(r"-[a-z]{1,3}")        # mkdir -pv: letters, not a value


def _user_pass(value):
    """'user:secret' or 'user%secret' (not a %XX escape) -> 'user:***'; other values unchanged."""
    m = re.match(r"^([^:%\s]*)(:|%(?![0-9A-Fa-f]{2}))(.+)$", value, re.S)
    return f"{m.group(1)}{m.group(2)}{MASK}" if m else value


def _pair(m):
    key, sep, value = m.group(1), m.group(2), m.group(3)
    if secret_key(key):
        return key + sep + MASK
    if key.lstrip("-") in _USER_KEYS:
        return key + sep + _user_pass(value)
    return m.group(0)


def _inner(m):
    if m.group(2) and secret_key(m.group(1)):
        return f"{m.group(1)}={MASK}"
    if m.group(2) and m.group(1) in _USER_KEYS:
        return f"{m.group(1)}={_user_pass(m.group(2))}"
    return m.group(0)


def _json(m):
    return f'"{m.group(1)}"{m.group(2)}"{MASK}"' if secret_key(m.group(1)) else m.group(0)


def _b64_secret(m):
    """Random-looking: upper, lower and digits all present and the class flips often.

    Random base64 flips class at about 65 % of its characters; words, CamelCase names and
    paths at under 25 %."""
    s = m.group(0)
    classes = [c for c in map(_class, s) if c is not None]
    flips = sum(a != b for a, b in zip(classes, classes[1:]))
    if len(set(classes)) == 3 and flips >= 0.3 * (len(classes) - 1):
        return MASK
    return s


# The rules for one argument, in order: (name, pattern, replacement). Each has rows in
# tests/test_redact.py; when unsure, a rule redacts.
RULES = [
    # scheme://user:password@host, the password may hold '/' or '?'; scheme://token@host
    ("url-userinfo", re.compile(r"([A-Za-z][A-Za-z0-9+.\-]*://)(?:[^\s:/@?#]*:[^\s@]*|[^/\s?#@:]+)@"),
     lambda m: m.group(1) + MASK + "@"),
    # --password=x, PGPASSWORD=x, -Dssl.keyStorePassword=x, --user=bob:x, --password:x
    ("option-pair", re.compile(r"^(-{0,2}[A-Za-z_][\w.\-]*)(=|:(?=\S))(.*)$", re.S), _pair),
    # Authorization: Bearer x, X-Api-Key: x
    ("header", re.compile(r"^([A-Za-z][\w.\-]*)(:\s+)(.+)$", re.S), _pair),
    # /p:Password=x (MSBuild properties), -o username=u,password=x (mount options),
    # host=db password=x, ...?api_key=x&..., Server=s;Pwd=x;
    ("inner-pair", re.compile(r"(?:(?<=[\s?&;,:])|^)([A-Za-z_][\w.\-]*)=([^\s&;,]*)"), _inner),
    # {"api_token": "x"}
    ("json-pair", _JSON_PAIR, _json),
    # smbclient -U user%x given attached or as one argument
    ("user-percent", re.compile(r"^(-U)?([A-Za-z0-9._\\\-]+)%(?![0-9A-Fa-f]{2})(\S+)$"),
     lambda m: (m.group(1) or "") + m.group(2) + "%" + MASK),
    ("token-format", _TOKEN, MASK),
    ("long-hex", _HEX, MASK),
    ("random-base64", _B64, _b64_secret),
]


def secret_key(key):
    """Whether an option or variable name names a secret."""
    k = key.lstrip("-")
    if k.startswith("D") and "." in k:       # -Dsome.java.property
        k = k[1:]
    low = k.lower()
    if any(w in low for w in _WORDS):
        return True
    words = [w for w in _SPLIT.split(_CAMEL.sub("-", k).lower()) if w]
    return any(w in _EXACT_WORDS or (w.endswith(_SUFFIXES) and w not in _NOT_SECRET) for w in words)


def _class(ch):
    return 0 if ch.isupper() else 1 if ch.islower() else 2 if ch.isdigit() else None


def redact_arg(arg):
    """Redact what can be seen inside one argument, without looking at its neighbours."""
    for _name, pattern, repl in RULES:
        arg = pattern.sub(repl, arg)
    return arg


def redact_args(args):
    """Redacted copy of an argument list."""
    out = []
    flags = {**_DEFAULT_FLAGS, **_PROGRAM_FLAGS.get(os.path.basename(args[0]) if args else "", {})}
    mask_next = None
    for i, arg in enumerate(args):
        if mask_next is not None:
            how, mask_next = mask_next, None
            if not arg.startswith("-"):     # "--token --password x": the next option is no value
                out.append(MASK if how == "next" else redact_arg(_user_pass(arg)))
                continue
        if i > 0 and arg.startswith("-") and "=" not in arg:
            how = flags.get(arg)
            if how in ("next", "userpass", "both"):
                mask_next = "userpass" if how == "userpass" else "next"
                out.append(arg)
                continue
            if how is None and arg not in flags and secret_key(arg) and len(arg) > 2:
                if ":" in arg:                 # --password:x carries its own value
                    out.append(redact_arg(arg))
                    continue
                mask_next = "next"
                out.append(arg)
                continue
            if len(arg) > 2 and arg[1] != "-":
                short, rest = arg[:2], arg[2:]
                how = flags.get(short)
                if how == "attached" or (how == "both" and not _COMBINED_FLAGS.fullmatch("-" + rest)):
                    out.append(short + MASK)
                    continue
                if how == "userpass":          # -uuser:secret, -Uuser%secret
                    out.append(short + redact_arg(_user_pass(rest)))
                    continue
        out.append(redact_arg(arg))
    return out


def redact_cmdline(args, max_length=200):
    """One redacted line for a label: arguments joined by spaces, then cut to ``max_length``."""
    return " ".join(redact_args(list(args)))[:max_length]
