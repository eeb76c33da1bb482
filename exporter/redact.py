"""Command-line redaction: secrets never leave the exporter, whatever a process was started with.

Redacted (replaced by ``***``):
- the value of an argument or env-style pair whose key looks secret (password, passwd, secret,
  token, key, apikey, auth, credential, ...): ``--password=x``, ``--token x``, ``PGPASSWORD=x``,
  ``-Dssl.keyStorePassword=x``, ``Authorization: Bearer x``, ``...?api_key=x&...``,
  ``host=db password=x`` (one argument holding several pairs), ``{"api_token": "x"}``;
- URL userinfo: ``https://user:pass@host`` -> ``https://***@host``;
- strings that look like keys: long hex, long high-entropy base64, well-known token formats;
- a few well-known short flags per program (``mysql -pSECRET``, ``sshpass -p SECRET``).

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
_URL_USERINFO = re.compile(r"([A-Za-z][A-Za-z0-9+.\-]*://)([^/\s?#]*)@")
_PAIR_ARG = re.compile(r"^(-{0,2}[A-Za-z_][\w.\-]*)(=)(.*)$", re.S)
_HEADER = re.compile(r"^([A-Za-z][\w.\-]*)(:\s*)(.+)$", re.S)
_INNER_PAIR = re.compile(r"(?<=[\s?&;])([A-Za-z_][\w.\-]*)=([^\s&;]*)")
_JSON_PAIR = re.compile(r'"([^"\\]{1,100})"(\s*:\s*)"((?:[^"\\]|\\.)*)"')
_HEX = re.compile(r"(?<![0-9A-Za-z])[0-9a-fA-F]{32,}(?![0-9A-Za-z])")
_TOKEN = re.compile(
    r"(?<![A-Za-z0-9])(?:gh[pousr]_[A-Za-z0-9]{20,}|github_pat_[A-Za-z0-9_]{20,}|glpat-[A-Za-z0-9_\-]{20,}"
    r"|xox[abposr]-[A-Za-z0-9\-]{10,}|sk-[A-Za-z0-9_\-]{20,}|(?:AKIA|ASIA)[0-9A-Z]{16}"
    r"|AIza[0-9A-Za-z_\-]{35}|eyJ[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]*)")
_B64 = re.compile(r"(?<![A-Za-z0-9+/_\-])[A-Za-z0-9+/_\-]{32,}={0,2}")

# program -> {flag: how its value is given}; "attached": -pSECRET, "next": -p SECRET,
# "userpass": user:SECRET in the next argument
_PROGRAM_FLAGS = {
    **{p: {"-p": "attached"} for p in ("mysql", "mysqldump", "mysqladmin", "mysqlimport", "mysqlcheck",
                                       "mysqlshow", "mariadb", "mariadb-dump", "mariadb-admin")},
    "sshpass": {"-p": "next"},
    "redis-cli": {"-a": "next"},
    "valkey-cli": {"-a": "next"},
    "curl": {"-u": "userpass", "--user": "userpass", "-U": "userpass", "--proxy-user": "userpass"},
}


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


def _inner(m):
    return f"{m.group(1)}={MASK}" if secret_key(m.group(1)) and m.group(2) else m.group(0)


def _json(m):
    return f'"{m.group(1)}"{m.group(2)}"{MASK}"' if secret_key(m.group(1)) else m.group(0)


def redact_arg(arg):
    """Redact what can be seen inside one argument, without looking at its neighbours."""
    arg = _URL_USERINFO.sub(lambda m: m.group(1) + MASK + "@", arg)
    m = _PAIR_ARG.match(arg)
    if m and secret_key(m.group(1)):
        return m.group(1) + "=" + MASK
    m = _HEADER.match(arg)
    if m and secret_key(m.group(1)):
        return m.group(1) + m.group(2) + MASK
    arg = _INNER_PAIR.sub(_inner, arg)
    arg = _JSON_PAIR.sub(_json, arg)
    arg = _TOKEN.sub(MASK, arg)
    arg = _HEX.sub(MASK, arg)
    return _B64.sub(_b64_secret, arg)


def redact_args(args):
    """Redacted copy of an argument list."""
    out = []
    flags = _PROGRAM_FLAGS.get(os.path.basename(args[0]) if args else "", {})
    mask_next = None
    for i, arg in enumerate(args):
        if mask_next is not None:
            how, mask_next = mask_next, None
            if not arg.startswith("--"):     # "--token --password x": the next option is no value
                if how == "next":
                    out.append(MASK)
                    continue
                user, sep, _ = arg.partition(":")
                out.append(redact_arg(user) + sep + (MASK if sep else ""))
                continue
        if i > 0 and arg.startswith("-") and "=" not in arg:
            how = flags.get(arg)
            if how in ("next", "userpass"):
                mask_next = how
                out.append(arg)
                continue
            if how is None and secret_key(arg) and len(arg) > 2:
                mask_next = "next"
                out.append(arg)
                continue
            attached = next((f for f, h in flags.items() if h == "attached" and arg.startswith(f)
                             and len(arg) > len(f)), None)
            if attached:
                out.append(attached + MASK)
                continue
        out.append(redact_arg(arg))
    return out


def redact_cmdline(args, max_length=200):
    """One redacted line for a label: arguments joined by spaces, then cut to ``max_length``."""
    return " ".join(redact_args(list(args)))[:max_length]
