"""What a BMC reports, whichever way it was read (IPMI or Redfish): plain readings and errors.

A reading the BMC marks as absent, disabled or unavailable is left out: no value is better
than a made-up 0.
"""
from dataclasses import dataclass, field


@dataclass
class Temperature:
    sensor: str
    label: str
    celsius: float
    max_celsius: float = None        # the BMC's upper non-critical threshold
    critical_celsius: float = None   # the BMC's upper critical threshold


@dataclass
class Fan:
    fan: str
    label: str
    rpm: float = None
    ratio: float = None              # fans the BMC reports in percent, as 0-1
    max_rpm: float = None


@dataclass
class Power:
    sensor: str
    watts: float


@dataclass
class Snapshot:
    temperatures: list = field(default_factory=list)
    fans: list = field(default_factory=list)
    power: list = field(default_factory=list)


class BMCError(Exception):
    """A BMC could not be read. ``reason`` is one word for logs (timeout, auth, tls, connect,
    protocol, device); the message never holds a password."""

    def __init__(self, reason, message):
        super().__init__(message)
        self.reason = reason


def scrub(text, secret):
    """A library's error text with the password masked, in case it ever echoes one."""
    text = str(text)
    if secret:
        text = text.replace(secret, "***")
    return text


def unique(name, seen):
    """Sensor names are not guaranteed unique on a BMC: the second 'Fan1' becomes 'Fan1#2'."""
    n, out = 1, name
    while out in seen:
        n += 1
        out = f"{name}#{n}"
    seen.add(out)
    return out
