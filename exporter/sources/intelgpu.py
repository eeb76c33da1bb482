"""Intel GPUs (i915 and xe drivers) as devices, from sysfs and DRM fdinfo.

Per card (/sys/class/drm/card<N> whose driver is i915 or xe):
- the GT frequency the hardware runs at: i915 ``card<N>/gt_act_freq_mhz`` (else
  ``gt_cur_freq_mhz``), xe ``device/tile0/gt0/freq0/act_freq``;
- the card's hwmon, on discrete cards: ``energy1_input`` (µJ, a counter; power is its growth over
  the time between two reads), ``power1_max`` (the sustained power limit), ``temp*_input`` and
  ``fan*_input``;
- busy: the engines' busy time of every DRM client on the card (fdinfo), summed per engine
  (capped at 1); the GPU's utilisation is its busiest engine.

A card in runtime suspend is not read (reading its frequency would wake it): utilisation 0.
"""
import glob
import os
from dataclasses import dataclass, field

from .drm import list_cards
from .host import read_text

DRIVERS = ("i915", "xe")


@dataclass
class IntelGPU:
    card: int
    uuid: str
    name: str = ""
    pci_bus_id: str = ""
    driver: str = ""
    suspended: bool = False
    utilization: float = None          # ratio: the busiest engine
    engines: dict = field(default_factory=dict)        # engine -> ratio
    clocks: dict = field(default_factory=dict)         # 'graphics' -> Hz
    max_clock: float = None            # Hz
    energy: float = None               # J (counter)
    power: float = None                # W, from the energy counter
    power_limit: float = None          # W
    temperatures: dict = field(default_factory=dict)   # label -> °C
    fan_rpm: dict = field(default_factory=dict)        # "0" -> rpm


def _int(path):
    try:
        return int((read_text(path) or "").strip())
    except ValueError:
        return None


def _freq(card_dir, device):
    """(actual, max) GT frequency in Hz, or None each."""
    act = _int(os.path.join(card_dir, "gt_act_freq_mhz"))
    if act is None:
        act = _int(os.path.join(card_dir, "gt_cur_freq_mhz"))
    top = _int(os.path.join(card_dir, "gt_max_freq_mhz"))
    if act is None:
        freq = os.path.join(device, "tile0", "gt0", "freq0")
        act, top = _int(os.path.join(freq, "act_freq")), _int(os.path.join(freq, "max_freq"))
    return (None if act is None else act * 1e6), (None if top is None else top * 1e6)


class IntelGPUSource:
    def __init__(self, sysfs="/sys"):
        self.sysfs = sysfs
        self.prev_energy = {}        # card key -> (now, J)

    def cards(self):
        return [c for c in list_cards(self.sysfs) if c.driver in DRIVERS]

    def read(self, now, usage=()):
        """``usage``: fdinfo.ProcessUsage of this refresh (all processes, all cards)."""
        busy = {}
        for u in usage:
            for engine, ratio in (u.engines or {}).items():
                per = busy.setdefault(u.device, {})
                per[engine] = min(1.0, per.get(engine, 0.0) + ratio)
        out = []
        seen = set()
        for card in self.cards():
            seen.add(card.key)
            out.append(self._read_card(card, now, busy.get(card.key)))
        self.prev_energy = {k: v for k, v in self.prev_energy.items() if k in seen}
        return out

    def _read_card(self, card, now, engines):
        d = card.device
        vendor = (read_text(os.path.join(d, "vendor")) or "").strip()[2:]
        dev = (read_text(os.path.join(d, "device")) or "").strip()[2:]
        if not (vendor and dev):
            for line in (read_text(os.path.join(d, "uevent")) or "").splitlines():
                if line.startswith("PCI_ID="):
                    vendor, _, dev = line[7:].strip().lower().partition(":")
        name = f"Intel GPU {vendor}:{dev}" if vendor and dev else "Intel GPU"
        g = IntelGPU(card.index, card.uuid, name, card.pci_slot, card.driver)
        if (read_text(os.path.join(d, "power", "runtime_status")) or "").strip() == "suspended":
            g.suspended, g.utilization = True, 0.0
            return g
        if engines is not None:
            g.engines = dict(engines)
            g.utilization = max(engines.values(), default=None)
        card_dir = os.path.dirname(d) if os.path.basename(d) == "device" else d
        act, top = _freq(card_dir, d)
        if act is not None:
            g.clocks["graphics"] = act
        g.max_clock = top
        hw = sorted(glob.glob(os.path.join(d, "hwmon", "hwmon*")))
        if hw:
            self._hwmon(g, card.key, hw[0], now)
        return g

    def _hwmon(self, g, key, hw, now):
        uj = _int(os.path.join(hw, "energy1_input"))
        if uj is not None:
            g.energy = uj / 1e6
            before = self.prev_energy.get(key)
            if before is not None and now > before[0] and g.energy >= before[1]:
                g.power = (g.energy - before[1]) / (now - before[0])
            self.prev_energy[key] = (now, g.energy)
        limit = _int(os.path.join(hw, "power1_max"))
        g.power_limit = limit / 1e6 if limit else None
        for path in sorted(glob.glob(os.path.join(hw, "temp*_input"))):
            n = os.path.basename(path)[4:-6]
            v = _int(path)
            if v is not None:
                label = (read_text(os.path.join(hw, f"temp{n}_label")) or f"temp{n}").strip()
                g.temperatures[label] = v / 1000
        for path in sorted(glob.glob(os.path.join(hw, "fan*_input"))):
            n = os.path.basename(path)[3:-6]
            v = _int(path)
            if v is not None and n.isdigit():
                g.fan_rpm[str(int(n) - 1)] = v
