"""AMD GPUs from sysfs (amdgpu driver), with pyamdgpuinfo for what sysfs lacks.

Per card (/sys/class/drm/card<N>/device with driver amdgpu): gpu_busy_percent,
mem_info_vram_used/total, and the card's hwmon: temperatures (edge, junction, mem) with their
crit/emergency limits, fan rpm and pwm, power1_average (or power1_input) and power1_cap, and the
sclk/mclk frequencies (else the current level of pp_dpm_sclk/pp_dpm_mclk).

A card in runtime suspend (device/power/runtime_status = suspended) is not read: reading its
busy or memory files would wake it up, and a sleeping GPU is idle anyway.
"""
import glob
import logging
import os
import re
from dataclasses import dataclass, field

from .drm import list_cards
from .host import read_text

log = logging.getLogger("hoofhearted.amdgpu")

_DPM_CURRENT = re.compile(r"^\s*\d+:\s*(\d+)\s*Mhz\s*\*", re.I | re.M)


@dataclass
class AMDGPU:
    card: int
    uuid: str
    name: str = ""
    pci_bus_id: str = ""
    driver_version: str = ""
    suspended: bool = False
    utilization: float = None          # ratio
    memory_utilization: float = None   # ratio (mem_busy_percent)
    apu: bool = False                  # integrated: power1 is the whole package's
    memory_used: int = None            # bytes
    memory_total: int = None
    temperature: float = None          # °C: edge, else junction
    temperatures: dict = field(default_factory=dict)   # 'edge'/'junction'/'mem' -> °C
    critical: dict = field(default_factory=dict)       # 'edge'/'junction'/'mem' -> crit °C
    slowdown: float = None             # crit of that sensor
    shutdown: float = None             # emergency of that sensor
    fans: dict = field(default_factory=dict)           # "0" -> ratio
    fan_rpm: dict = field(default_factory=dict)        # "0" -> rpm
    power: float = None                # W
    power_limit: float = None
    clocks: dict = field(default_factory=dict)         # 'graphics'/'memory' -> Hz


def _int(path):
    text = read_text(path)
    if text is None:
        return None
    try:
        return int(text.strip())
    except ValueError:
        return None


def _suspended(device):
    return (read_text(os.path.join(device, "power", "runtime_status")) or "").strip() == "suspended"


def _hwmon(device):
    found = sorted(glob.glob(os.path.join(device, "hwmon", "hwmon*")))
    return found[0] if found else None


def _read_hwmon(gpu, hw):
    temps = {}
    for path in sorted(glob.glob(os.path.join(hw, "temp*_input"))):
        n = os.path.basename(path)[4:-6]
        value = _int(path)
        if value is None:
            continue
        label = (read_text(os.path.join(hw, f"temp{n}_label")) or f"temp{n}").strip()
        temps[label] = (value / 1000, _int(os.path.join(hw, f"temp{n}_crit")),
                        _int(os.path.join(hw, f"temp{n}_emergency")))
    gpu.temperatures = {k: v[0] for k, v in temps.items()}
    gpu.critical = {k: v[1] / 1000 for k, v in temps.items() if v[1]}
    main = temps.get("edge") or temps.get("junction") or next(iter(temps.values()), None)
    if main is not None:
        gpu.temperature = main[0]
        gpu.slowdown = main[1] / 1000 if main[1] else None
        gpu.shutdown = main[2] / 1000 if main[2] else None
    for path in sorted(glob.glob(os.path.join(hw, "fan*_input"))):
        n = os.path.basename(path)[3:-6]
        rpm = _int(path)
        if rpm is not None:
            gpu.fan_rpm[str(int(n) - 1)] = rpm
    for path in sorted(glob.glob(os.path.join(hw, "pwm[0-9]"))):
        n = os.path.basename(path)[3:]
        value = _int(path)
        top = _int(os.path.join(hw, f"pwm{n}_max")) or 255
        if (read_text(os.path.join(hw, f"pwm{n}_enable")) or "1").strip() == "0":
            gpu.fans[str(int(n) - 1)] = 1.0      # hwmon ABI: 0 = no fan speed control, full speed
        elif value is not None:
            gpu.fans[str(int(n) - 1)] = min(1.0, value / top)
    for fan, rpm in gpu.fan_rpm.items():
        if fan not in gpu.fans:
            top = _int(os.path.join(hw, f"fan{int(fan) + 1}_max"))
            if top:
                gpu.fans[fan] = min(1.0, rpm / top)
    uw = _int(os.path.join(hw, "power1_average"))
    if uw is None:
        uw = _int(os.path.join(hw, "power1_input"))
    gpu.power = None if uw is None else uw / 1e6
    cap = _int(os.path.join(hw, "power1_cap"))
    gpu.power_limit = None if not cap else cap / 1e6
    for path in sorted(glob.glob(os.path.join(hw, "freq*_input"))):
        n = os.path.basename(path)[4:-6]
        label = (read_text(os.path.join(hw, f"freq{n}_label")) or "").strip()
        hz = _int(path)
        clock = {"sclk": "graphics", "mclk": "memory"}.get(label)
        if clock and hz is not None:
            gpu.clocks[clock] = float(hz)


def _dpm_current(path):
    m = _DPM_CURRENT.search(read_text(path) or "")
    return int(m.group(1)) * 1e6 if m else None


class AMDGPUSource:
    """Reads every amdgpu card under ``sysfs``; ``amdgpuinfo`` is the pyamdgpuinfo module
    (imported when not given; False to not use it)."""

    def __init__(self, sysfs="/sys", amdgpuinfo=None):
        self.sysfs = sysfs
        if amdgpuinfo is None:
            try:
                import pyamdgpuinfo as amdgpuinfo
            except ImportError:
                amdgpuinfo = False
        self.amdgpuinfo = amdgpuinfo or None
        self._infos = None          # pci slot -> GPUInfo
        self._asleep = False        # a card is runtime-suspended now
        self.unsupported = set()    # (pci slot, query)
        self.driver_version = (read_text(os.path.join(sysfs, "module", "amdgpu", "version")) or "").strip()

    def read(self):
        cards = [c for c in list_cards(self.sysfs) if c.driver == "amdgpu"]
        # pyamdgpuinfo opens every card when it looks for them: not while one of them sleeps
        self._asleep = any(_suspended(c.device) for c in cards)
        return [self._read_card(c) for c in cards]

    def _read_card(self, card):
        d = card.device
        uuid = card.uuid
        name = (read_text(os.path.join(d, "product_name")) or "").strip()
        gpu = AMDGPU(card.index, uuid, name, card.pci_slot, self.driver_version)
        if _suspended(d):
            gpu.suspended = True
            gpu.utilization = 0.0
            return gpu
        busy = _int(os.path.join(d, "gpu_busy_percent"))
        gpu.utilization = None if busy is None else busy / 100
        busy = _int(os.path.join(d, "mem_busy_percent"))
        gpu.memory_utilization = None if busy is None else busy / 100
        gpu.apu = card.apu
        gpu.memory_used = _int(os.path.join(d, "mem_info_vram_used"))
        gpu.memory_total = _int(os.path.join(d, "mem_info_vram_total"))
        hw = _hwmon(d)
        if hw:
            _read_hwmon(gpu, hw)
        for clock, fname in (("graphics", "pp_dpm_sclk"), ("memory", "pp_dpm_mclk")):
            if clock not in gpu.clocks:
                hz = _dpm_current(os.path.join(d, fname))
                if hz is not None:
                    gpu.clocks[clock] = hz
        self._fill_from_library(card, gpu)
        if not gpu.name:
            gpu.name = self._library_name(card) or "AMD GPU " + self._pci_id(d)
        return gpu

    @staticmethod
    def _pci_id(device):
        vendor = (read_text(os.path.join(device, "vendor")) or "").strip()
        dev = (read_text(os.path.join(device, "device")) or "").strip()
        return f"{vendor[2:]}:{dev[2:]}" if vendor and dev else ""

    # -- pyamdgpuinfo --------------------------------------------------------------------------

    def _info(self, card):
        if self.amdgpuinfo is None or not card.pci_slot:
            return None
        if self._infos is None:
            if self._asleep:
                return None
            self._infos = {}
            try:
                for i in range(self.amdgpuinfo.detect_gpus()):
                    info = self.amdgpuinfo.get_gpu(i)
                    self._infos[str(info.pci_slot).lower()] = info
            except (OSError, RuntimeError) as e:   # no /dev/dri, no permission
                log.debug("pyamdgpuinfo unavailable err=%r", str(e))
        return self._infos.get(card.pci_slot)

    def _query(self, card, info, what):
        key = (card.pci_slot, what)
        if key in self.unsupported:
            return None
        try:
            return getattr(info, what)()
        except (OSError, RuntimeError, AttributeError) as e:
            self.unsupported.add(key)
            log.info("AMD GPU reading not available, not asked again card=%d query=%s err=%r",
                     card.index, what, str(e))
            return None

    def _fill_from_library(self, card, gpu):
        missing = (gpu.utilization is None or gpu.memory_used is None or gpu.temperature is None
                   or gpu.power is None or len(gpu.clocks) < 2)
        if not missing:
            return
        info = self._info(card)
        if info is None:
            return
        if gpu.utilization is None:
            v = self._query(card, info, "query_load")
            gpu.utilization = None if v is None else float(v)
        if gpu.memory_used is None:
            gpu.memory_used = self._query(card, info, "query_vram_usage")
        if gpu.memory_total is None:
            gpu.memory_total = (getattr(info, "memory_info", None) or {}).get("vram_size")
        if gpu.temperature is None:
            gpu.temperature = self._query(card, info, "query_temperature")
        if gpu.power is None:
            v = self._query(card, info, "query_power")
            gpu.power = None if v is None else float(v)
        for clock, what in (("graphics", "query_sclk"), ("memory", "query_mclk")):
            if clock not in gpu.clocks:
                v = self._query(card, info, what)
                if v is not None:
                    gpu.clocks[clock] = float(v)

    def _library_name(self, card):
        info = self._info(card)
        name = getattr(info, "name", None) if info is not None else None
        return name.strip() if isinstance(name, str) else None
