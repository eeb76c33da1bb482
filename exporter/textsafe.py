"""Text from the machine (process, user, sensor names) on its way to a terminal or a log.

A process can name itself anything, escape sequences and line breaks included. Printed raw,
such a name could move the cursor, recolour the screen or forge a line ("Fans: all OK").

- ``terminal(s)``: for a human's terminal. Every control character (C0, DEL, C1), the
  Unicode line and paragraph separators, the bidirectional overrides and lone surrogates become
  ``?``, as ``ps`` shows them. Everything printable, non-ASCII letters included, stays.
- ``quote(s)``: for a logfmt value. Plain words stay as they are; anything with a space, ``=``,
  a quote or an unsafe character is double-quoted, with ``\\``, ``"`` and unsafe characters
  escaped (``\\n``, ``\\t``, ``\\x1b``, ``\\u2028``) so one log record is always one line and
  nothing is lost.
"""
import re

_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]")
_PLAIN = re.compile(r"[^\s=\"\\\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]+")
_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t", "\\": "\\\\", '"': '\\"'}


def terminal(s):
    """``s`` made safe to print: control and layout-changing characters shown as ``?``."""
    s = s if isinstance(s, str) else str(s)
    return _UNSAFE.sub("?", s)


def _escape(m):
    c = m.group(0)
    if c in _ESCAPES:
        return _ESCAPES[c]
    n = ord(c)
    return f"\\x{n:02x}" if n < 0x100 else f"\\u{n:04x}"


_QUOTE = re.compile("[\\\\\"\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]")


def quote(s):
    """``s`` as one logfmt value: bare when it is one plain word, else quoted and escaped."""
    s = s if isinstance(s, str) else str(s)
    if s and _PLAIN.fullmatch(s):
        return s
    return '"' + _QUOTE.sub(_escape, s) + '"'
