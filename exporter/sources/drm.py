"""DRM cards in sysfs (/sys/class/drm/card<N>): which GPU sits at which PCI address.

Only ``card<N>`` entries are GPUs; ``card1-DP-1`` and the like are connectors and
``renderD128`` is a second node of a card already listed.
"""
import os
import re
from dataclasses import dataclass

from .host import read_text

_CARD = re.compile(r"^card(\d+)$")
_PCI = re.compile(r"^[0-9a-fA-F]{4,8}:[0-9a-fA-F]{2}:[0-9a-fA-F]{2}\.[0-7]$")
VENDORS = {"0x1002": "amd", "0x10de": "nvidia", "0x8086": "intel"}
# Display-only drivers (server BMC adapters, firmware framebuffers, virtual consoles): no
# render engine and no usage in fdinfo, so looking for their clients would only cost a full fd scan.
DISPLAY_ONLY = {"ast", "mgag200", "hibmc-drm", "aspeed-gfx", "simpledrm", "efifb", "vesafb", "bochs-drm",
                "bochs", "cirrus", "cirrus-qemu", "vboxvideo", "vmwgfx", "qxl", "udl", "gm12u320", "gud",
                "hyperv_drm", "xlnx", "ofdrm", "mxsfb", "tidss"}


@dataclass
class Card:
    index: int              # the N of cardN
    device: str             # path of card<N>/device
    driver: str             # 'amdgpu', 'i915', 'xe', 'nvidia', ...
    pci_slot: str           # '0000:09:00.0', or '' for a platform device
    vendor: str             # 'amd', 'nvidia', 'intel', or the PCI vendor id

    @property
    def renders(self):
        """Whether the card can run work (a GPU) rather than only drive a display."""
        return self.driver not in DISPLAY_ONLY

    @property
    def key(self):
        """What fdinfo's drm-pdev names (the PCI slot), or the driver for platform devices."""
        return self.pci_slot or self.driver

    @property
    def apu(self):
        """An AMD APU: its VRAM is a carve-out of system memory. amdgpu shows no VRAM vendor for
        one (there are no VRAM chips), and its GTT (system memory) is larger than that VRAM."""
        if self.driver != "amdgpu":
            return False
        if os.path.exists(os.path.join(self.device, "mem_info_vram_vendor")):
            return False
        vram, gtt = (_int(os.path.join(self.device, f"mem_info_{k}_total")) for k in ("vram", "gtt"))
        return vram is not None and gtt is not None and gtt > vram

    @property
    def uuid(self):
        """The card's unique_id (amdgpu), else its PCI slot."""
        return (read_text(os.path.join(self.device, "unique_id")) or "").strip() or self.key


def _int(path):
    try:
        return int((read_text(path) or "").strip())
    except ValueError:
        return None


def _uevent(device):
    out = {}
    for line in (read_text(os.path.join(device, "uevent")) or "").splitlines():
        k, _, v = line.partition("=")
        out[k.strip()] = v.strip()
    return out


def list_cards(sysfs):
    base = os.path.join(sysfs, "class", "drm")
    try:
        names = os.listdir(base)
    except OSError:
        return []
    cards = []
    for name in names:
        m = _CARD.match(name)
        if not m:
            continue
        device = os.path.join(base, name, "device")
        if not os.path.isdir(device):
            continue
        uevent = _uevent(device)
        driver = uevent.get("DRIVER", "")
        if not driver:
            try:
                driver = os.path.basename(os.readlink(os.path.join(device, "driver")))
            except OSError:
                driver = ""
        slot = uevent.get("PCI_SLOT_NAME", "")
        if not slot:
            real = os.path.basename(os.path.realpath(device))
            slot = real if _PCI.match(real) else ""
        vendor_id = (read_text(os.path.join(device, "vendor")) or "").strip().lower()
        if not vendor_id and uevent.get("PCI_ID"):
            vendor_id = "0x" + uevent["PCI_ID"].split(":")[0].lower()
        cards.append(Card(int(m.group(1)), device, driver, slot.lower(), VENDORS.get(vendor_id, vendor_id)))
    return sorted(cards, key=lambda c: c.index)
