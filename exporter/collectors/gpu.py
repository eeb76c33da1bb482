"""GPU collectors: nvidia (NVML), nvidia_pcie (NVML PCIe throughput), amdgpu (sysfs) and
gpu_process (per-process memory and utilisation from NVML and DRM fdinfo).

NVML is opened once and shared by the three NVIDIA-backed collectors (``nvidia_source``).

NVIDIA and AMD GPUs share the device metric names; the scheduler joins the two collectors'
samples under one family per scrape.
"""
import ctypes
import importlib
import logging
import threading
import time

from .. import config as cfgmod
from ..sources import amdgpu, fdinfo, intelgpu, nvidia, processes
from .base import Collector, counter, gauge

log = logging.getLogger("hoofhearted.gpu")

DEFAULT_NVML = "pynvml"
SHARE_WINDOW = 0.5        # reuse a /proc pass another reader did this recently
OTHER = "other"

# -- NVML opened once per exporter --------------------------------------------------------------

_sources = {}
_sources_lock = threading.Lock()
_absent = {}            # NVML module name -> why there is no source (logged once, at refresh)


def _driver_present():
    """Whether NVML's library loads; checked first so a box without NVIDIA GPUs never imports
    pynvml (a few MB of ctypes structures)."""
    try:
        ctypes.CDLL("libnvidia-ml.so.1")
        return True
    except OSError:
        return False


def nvidia_source(config):
    """The shared NvidiaSource for the configured NVML module, or None without one."""
    name = config["gpu"]["nvml_module"]
    with _sources_lock:
        src = _sources.get(name)
        if src is None:
            if name == DEFAULT_NVML and not _driver_present():
                _absent.setdefault(name, "no NVIDIA driver (libnvidia-ml.so.1 not found)")
                return None
            try:
                module = importlib.import_module(name)
            except Exception as e:
                if name != DEFAULT_NVML:
                    raise cfgmod.ConfigError(f"gpu.nvml_module: cannot import {name!r}: {e}") from None
                _absent.setdefault(name, "nvidia-ml-py is not installed")
                return None
            src = _sources[name] = nvidia.NvidiaSource(module)
        src.users += 1
        return src


def release_source(source):
    if source is None:
        return
    with _sources_lock:
        source.users -= 1
        if source.users > 0:
            return
        for k, v in list(_sources.items()):
            if v is source:
                del _sources[k]
    source.close()


# -- device families ---------------------------------------------------------------------------

def _opt(family, labels, value):
    if value is not None:
        family.add_metric(labels, value)


def device_families(nv=None, amd=None, intel=None):
    """Families for an NvidiaSnapshot, a list of AMDGPU and/or a list of IntelGPU (any may be None)."""
    gl = ["gpu", "uuid"]
    info = gauge("hoofhearted_gpu_info", "A GPU and its identity.",
                 gl + ["name", "vendor", "driver_version", "pci_bus_id"])
    up = gauge("hoofhearted_gpu_up", "1 while the GPU answers, 0 when it fell off the bus or cannot be read.", gl)
    devices = gauge("hoofhearted_gpu_devices", "GPUs found, per vendor.", ["vendor"])
    util = gauge("hoofhearted_gpu_utilization_ratio", "Share of time the GPU was busy (0-1).", gl)
    mem_util = gauge("hoofhearted_gpu_memory_utilization_ratio",
                     "Share of time GPU memory was being read or written (0-1).", gl)
    used = gauge("hoofhearted_gpu_memory_used_bytes", "GPU memory in use.", gl)
    total = gauge("hoofhearted_gpu_memory_total_bytes", "GPU memory installed.", gl)
    temp = gauge("hoofhearted_gpu_temperature_celsius", "GPU temperature (AMD: edge sensor).", gl)
    slow = gauge("hoofhearted_gpu_temperature_slowdown_celsius", "Temperature at which the GPU slows down.", gl)
    shut = gauge("hoofhearted_gpu_temperature_shutdown_celsius", "Temperature at which the GPU shuts down.", gl)
    sensor = gauge("hoofhearted_gpu_sensor_temperature_celsius",
                   "A GPU temperature sensor (AMD: edge, junction, mem).", gl + ["sensor"])
    fan = gauge("hoofhearted_gpu_fan_speed_ratio",
                "GPU fan speed as a share of its maximum (NVIDIA may report above 1: kept as read).", gl + ["fan"])
    rpm = gauge("hoofhearted_gpu_fan_speed_rpm", "GPU fan speed.", gl + ["fan"])
    power = gauge("hoofhearted_gpu_power_watts", "Power drawn by the GPU.", gl)
    limit = gauge("hoofhearted_gpu_power_limit_watts", "Power limit the GPU enforces.", gl)
    energy = counter("hoofhearted_gpu_energy_joules", "Energy used by the GPU since its driver loaded.", gl)
    clock = gauge("hoofhearted_gpu_clock_hertz", "Current GPU clock.", gl + ["clock"])
    event = gauge("hoofhearted_gpu_clock_event",
                  "1 while a reason holds the GPU clocks down (thermal, power cap, ...) at the read or for at least "
                  "half the time since the last refresh, else 0.", gl + ["reason"])
    pstate = gauge("hoofhearted_gpu_performance_state", "Performance state: 0 (P0, fastest) to 15 (P15).", gl)
    enc = gauge("hoofhearted_gpu_encoder_utilization_ratio", "Share of time the video encoder was busy (0-1).", gl)
    dec = gauge("hoofhearted_gpu_decoder_utilization_ratio", "Share of time the video decoder was busy (0-1).", gl)
    mig = gauge("hoofhearted_gpu_mig_enabled", "1 when the GPU runs in MIG mode (split into instances).", gl)
    mig_info = gauge("hoofhearted_gpu_mig_info", "A MIG device of a GPU.",
                     gl + ["mig_uuid", "gpu_instance", "compute_instance", "profile"])
    mig_used = gauge("hoofhearted_gpu_mig_memory_used_bytes", "Memory in use in a MIG GPU instance.",
                     gl + ["gpu_instance"])
    mig_total = gauge("hoofhearted_gpu_mig_memory_total_bytes", "Memory of a MIG GPU instance.",
                      gl + ["gpu_instance"])
    margin = gauge("hoofhearted_gpu_temperature_margin_celsius",
                   "Degrees left before the GPU reaches its temperature limit (T.Limit).", gl)
    sensor_crit = gauge("hoofhearted_gpu_sensor_temperature_critical_celsius",
                        "Temperature at which a GPU sensor's domain slows down (AMD: edge, junction, mem).",
                        gl + ["sensor"])
    default_limit = gauge("hoofhearted_gpu_power_default_limit_watts", "Power limit the GPU boots with.", gl)
    max_limit = gauge("hoofhearted_gpu_power_max_limit_watts", "Highest power limit the GPU accepts.", gl)
    soc_power = gauge("hoofhearted_gpu_soc_power_watts",
                      "Power of a whole APU package (GPU and CPU cores together), as its GPU driver reports it.", gl)
    pcie_tx = counter("hoofhearted_gpu_pcie_transmit_bytes",
                      "Bytes the GPU sent over PCIe since its driver loaded.", gl)
    pcie_rx = counter("hoofhearted_gpu_pcie_receive_bytes",
                      "Bytes the GPU received over PCIe since its driver loaded.", gl)
    replays = counter("hoofhearted_gpu_pcie_replays", "PCIe packets the GPU link had to resend (link errors).", gl)
    link_gen = gauge("hoofhearted_gpu_pcie_link_generation", "PCIe generation the GPU link runs at now.", gl)
    link_gen_max = gauge("hoofhearted_gpu_pcie_link_max_generation",
                         "Highest PCIe generation the GPU and its slot support.", gl)
    link_width = gauge("hoofhearted_gpu_pcie_link_width", "PCIe lanes the GPU link runs with now.", gl)
    link_width_max = gauge("hoofhearted_gpu_pcie_link_max_width", "PCIe lanes the GPU link can have.", gl)
    ecc = counter("hoofhearted_gpu_ecc_errors", "GPU memory ECC errors; volatile: since the driver loaded, "
                  "aggregate: over the GPU's life.", gl + ["error", "counter"])
    retired = gauge("hoofhearted_gpu_retired_pages", "GPU memory pages retired after ECC errors.", gl + ["cause"])
    retired_pending = gauge("hoofhearted_gpu_retired_pages_pending",
                            "1 when GPU memory pages wait to be retired at the next driver reload.", gl)
    remapped = gauge("hoofhearted_gpu_remapped_rows", "GPU memory rows remapped after errors.", gl + ["cause"])
    remap_pending = gauge("hoofhearted_gpu_remapped_rows_pending",
                          "1 when a row remapping waits for a GPU reset.", gl)
    remap_failed = gauge("hoofhearted_gpu_remapped_rows_failed",
                         "1 when a row remapping failed: the GPU needs service.", gl)
    event_time = counter("hoofhearted_gpu_clock_event_seconds",
                         "Time a reason held the GPU clocks down (power cap, thermal, ...), as counted by the driver.",
                         gl + ["reason"])
    xids = counter("hoofhearted_gpu_xid_errors", "Xid errors the GPU driver reported, per Xid code, since the "
                   "exporter started.", gl + ["xid"])
    last_xid = gauge("hoofhearted_gpu_last_xid_info", "The last Xid error the GPU reported.", gl + ["xid"])
    nvlink_errors = counter("hoofhearted_gpu_nvlink_errors", "NVLink errors over all the GPU's links: "
                            "crc_data, replay, recovery.", gl + ["error"])
    nvlink_tx = counter("hoofhearted_gpu_nvlink_transmit_bytes",
                        "Payload bytes the GPU sent over all its NVLink links since its driver loaded.", gl)
    nvlink_rx = counter("hoofhearted_gpu_nvlink_receive_bytes",
                        "Payload bytes the GPU received over all its NVLink links since its driver loaded.", gl)
    engine_util = gauge("hoofhearted_gpu_engine_utilization_ratio",
                        "Share of time a GPU engine was busy, summed over its DRM clients (0-1).", gl + ["engine"])
    max_clock = gauge("hoofhearted_gpu_clock_max_hertz", "Highest clock the GPU may run at.", gl + ["clock"])
    health = {"margin": margin, "sensor": sensor, "default_limit": default_limit, "max_limit": max_limit,
              "pcie_tx": pcie_tx, "pcie_rx": pcie_rx, "replays": replays, "link_gen": link_gen,
              "link_gen_max": link_gen_max, "link_width": link_width, "link_width_max": link_width_max, "ecc": ecc,
              "retired": retired, "retired_pending": retired_pending, "remapped": remapped,
              "remap_pending": remap_pending, "remap_failed": remap_failed, "event_time": event_time, "xids": xids,
              "last_xid": last_xid, "nvlink_errors": nvlink_errors, "nvlink_tx": nvlink_tx,
              "nvlink_rx": nvlink_rx}
    if nv is not None:
        devices.add_metric(["nvidia"], len(nv.gpus))
        for g in nv.gpus:
            lab = [str(g.index), g.uuid]
            info.add_metric(lab + [g.name, "nvidia", nv.driver_version, g.pci_bus_id], 1)
            up.add_metric(lab, 1 if g.up else 0)
            if not g.up:
                continue
            _opt(util, lab, g.utilization)
            _opt(mem_util, lab, g.memory_utilization)
            _opt(used, lab, g.memory_used)
            _opt(total, lab, g.memory_total)
            _opt(temp, lab, g.temperature)
            _opt(slow, lab, g.slowdown)
            _opt(shut, lab, g.shutdown)
            for f, ratio in sorted(g.fans.items()):
                fan.add_metric(lab + [f], ratio)
            for f, v in sorted(g.fan_rpm.items()):
                rpm.add_metric(lab + [f], v)
            _opt(power, lab, g.power)
            _opt(limit, lab, g.power_limit)
            _opt(energy, lab, g.energy)
            _nvidia_health(g, lab, health)
            for c, hz in g.clocks.items():
                clock.add_metric(lab + [c], hz)
            for r, v in g.clock_events.items():
                event.add_metric(lab + [r], v)
            _opt(pstate, lab, g.performance_state)
            _opt(enc, lab, g.encoder)
            _opt(dec, lab, g.decoder)
            if g.mig_enabled is not None:
                mig.add_metric(lab, 1 if g.mig_enabled else 0)
            seen_gi = set()
            for m in g.migs:
                gi = "" if m.gpu_instance is None else str(m.gpu_instance)
                ci = "" if m.compute_instance is None else str(m.compute_instance)
                mig_info.add_metric(lab + [m.uuid, gi, ci, m.profile], 1)
                if gi not in seen_gi:       # memory belongs to the GPU instance, shared by its CIs
                    seen_gi.add(gi)
                    _opt(mig_used, lab + [gi], m.memory_used)
                    _opt(mig_total, lab + [gi], m.memory_total)
    if amd is not None:
        devices.add_metric(["amd"], len(amd))
        for g in amd:
            lab = [str(g.card), g.uuid]
            info.add_metric(lab + [g.name, "amd", g.driver_version, g.pci_bus_id], 1)
            up.add_metric(lab, 1)
            _opt(util, lab, g.utilization)
            _opt(mem_util, lab, g.memory_utilization)
            _opt(used, lab, g.memory_used)
            _opt(total, lab, g.memory_total)
            _opt(temp, lab, g.temperature)
            _opt(slow, lab, g.slowdown)
            _opt(shut, lab, g.shutdown)
            for s, c in sorted(g.temperatures.items()):
                sensor.add_metric(lab + [s], c)
            for s, c in sorted(g.critical.items()):
                sensor_crit.add_metric(lab + [s], c)
            for f, ratio in sorted(g.fans.items()):
                fan.add_metric(lab + [f], ratio)
            for f, v in sorted(g.fan_rpm.items()):
                rpm.add_metric(lab + [f], v)
            # an APU's power1 is the whole package: not GPU power, and RAPL already counts the CPU part
            _opt(soc_power if g.apu else power, lab, g.power)
            _opt(limit, lab, g.power_limit)
            for c, hz in g.clocks.items():
                clock.add_metric(lab + [c], hz)
    if intel is not None:
        devices.add_metric(["intel"], len(intel))
        for g in intel:
            lab = [str(g.card), g.uuid]
            info.add_metric(lab + [g.name, "intel", "", g.pci_bus_id], 1)
            up.add_metric(lab, 1)
            _opt(util, lab, g.utilization)
            for e, r in sorted(g.engines.items()):
                engine_util.add_metric(lab + [e], r)
            for c, hz in g.clocks.items():
                clock.add_metric(lab + [c], hz)
            if g.max_clock is not None:
                max_clock.add_metric(lab + ["graphics"], g.max_clock)
            for s_, c in sorted(g.temperatures.items()):
                sensor.add_metric(lab + [s_], c)
            for f, v in sorted(g.fan_rpm.items()):
                rpm.add_metric(lab + [f], v)
            _opt(power, lab, g.power)
            _opt(limit, lab, g.power_limit)
            _opt(energy, lab, g.energy)
    return [info, up, devices, util, mem_util, used, total, temp, slow, shut, sensor, fan, rpm, power, limit,
            energy, clock, event, pstate, enc, dec, mig, mig_info, mig_used, mig_total, margin, sensor_crit,
            default_limit, max_limit, soc_power, pcie_tx, pcie_rx, replays, link_gen, link_gen_max, link_width,
            link_width_max, ecc, retired, retired_pending, remapped, remap_pending, remap_failed, event_time, xids,
            last_xid, engine_util, max_clock, nvlink_errors, nvlink_tx, nvlink_rx]


def _nvidia_health(g, lab, f):
    """The health families of one NVIDIA GPU (f: those families by name)."""
    _opt(f["margin"], lab, g.margin)
    if g.memory_temperature is not None:
        f["sensor"].add_metric(lab + ["mem"], g.memory_temperature)
    _opt(f["default_limit"], lab, g.power_default_limit)
    _opt(f["max_limit"], lab, g.power_max_limit)
    _opt(f["pcie_tx"], lab, g.pcie_transmit_bytes)
    _opt(f["pcie_rx"], lab, g.pcie_receive_bytes)
    _opt(f["replays"], lab, g.pcie_replays)
    _opt(f["link_gen"], lab, g.link_generation)
    _opt(f["link_gen_max"], lab, g.link_max_generation)
    _opt(f["link_width"], lab, g.link_width)
    _opt(f["link_width_max"], lab, g.link_max_width)
    for (error, period), n in sorted(g.ecc.items()):
        f["ecc"].add_metric(lab + [error, period], n)
    for cause, n in sorted(g.retired_pages.items()):
        f["retired"].add_metric(lab + [cause], n)
    _opt(f["retired_pending"], lab, g.retired_pending)
    for cause, n in sorted(g.remapped_rows.items()):
        f["remapped"].add_metric(lab + [cause], n)
    _opt(f["remap_pending"], lab, g.remap_pending)
    _opt(f["remap_failed"], lab, g.remap_failed)
    for reason, sec in sorted(g.clock_event_seconds.items()):
        f["event_time"].add_metric(lab + [reason], sec)
    for xid, n in sorted(g.xid_errors.items()):
        f["xids"].add_metric(lab + [str(xid)], n)
    if g.last_xid is not None:
        f["last_xid"].add_metric(lab + [str(g.last_xid)], 1)
    for error, n in sorted(g.nvlink_errors.items()):
        f["nvlink_errors"].add_metric(lab + [error], n)
    _opt(f["nvlink_tx"], lab, g.nvlink_transmit_bytes)
    _opt(f["nvlink_rx"], lab, g.nvlink_receive_bytes)


def _hot(temperatures, thresholds):
    limit = thresholds["gpu_temperature_celsius"]
    if any(t is not None and t >= limit for t in temperatures):
        return ("gpu_temperature",)
    return ()


# -- collectors --------------------------------------------------------------------------------

class NvidiaCollector(Collector):
    name = "nvidia"
    escalates = True

    def __init__(self, source, absent=None):
        super().__init__()
        self.source = source
        self.absent = absent       # why there is no NVML, logged once at the first refresh

    @classmethod
    def create(cls, config):
        source = nvidia_source(config)
        return cls(source, None if source else _absent.get(config["gpu"]["nvml_module"]))

    def update(self, now):
        if self.absent:
            log.info("%s, NVIDIA collectors report no devices", self.absent)
            self.absent = None
        snap = self.snapshot = self.source.read_devices(now) if self.source else nvidia.NvidiaSnapshot()
        return device_families(snap, None)

    def hot(self, thresholds):
        if self.snapshot is None:
            return ()
        return _hot((g.temperature for g in self.snapshot.gpus if g.up), thresholds)

    def close(self):
        release_source(self.source)
        self.source = None


class NvidiaPcieCollector(Collector):
    """PCIe throughput: each reading holds the driver for a 20 ms window, hence its own slow tier."""

    name = "nvidia_pcie"

    def __init__(self, source):
        super().__init__()
        self.source = source

    @classmethod
    def create(cls, config):
        return cls(nvidia_source(config))

    def update(self, now):
        readings = self.snapshot = self.source.read_pcie(now) if self.source else []
        gl = ["gpu", "uuid"]
        rx = gauge("hoofhearted_gpu_pcie_receive_bytes_per_second", "PCIe traffic into the GPU.", gl)
        tx = gauge("hoofhearted_gpu_pcie_transmit_bytes_per_second", "PCIe traffic out of the GPU.", gl)
        links = gauge("hoofhearted_gpu_nvlink_links", "NVLink links the GPU has.", gl)
        active = gauge("hoofhearted_gpu_nvlink_links_active", "NVLink links that are up.", gl)
        for r in readings:
            lab = [str(r.index), r.uuid]
            _opt(rx, lab, r.receive)
            _opt(tx, lab, r.transmit)
            _opt(links, lab, r.nvlinks)
            _opt(active, lab, r.nvlinks_active)
        return [rx, tx, links, active]

    def close(self):
        release_source(self.source)
        self.source = None


class AMDGPUCollector(Collector):
    name = "amdgpu"
    escalates = True

    def __init__(self, source):
        super().__init__()
        self.source = source

    @classmethod
    def create(cls, config):
        return cls(amdgpu.AMDGPUSource(config["paths"]["sysfs"]))

    def update(self, now):
        cards = self.snapshot = self.source.read()
        return device_families(None, cards)

    def hot(self, thresholds):
        if self.snapshot is None:
            return ()
        return _hot((g.temperature for g in self.snapshot), thresholds)


class IntelGPUCollector(Collector):
    """Intel GPUs (i915, xe) as devices: sysfs frequency and hwmon, engines busy from fdinfo."""

    name = "intelgpu"

    def __init__(self, source, procfs="/proc", fdinfo_reader=None):
        super().__init__()
        self.source = source
        self.fdinfo = fdinfo_reader or fdinfo.FdinfoReader(procfs)
        self.tracker = fdinfo.UsageTracker()

    @classmethod
    def create(cls, config):
        return cls(intelgpu.IntelGPUSource(config["paths"]["sysfs"]), config["paths"]["procfs"])

    def update(self, now):
        cards = self.source.cards()
        usage = []
        if cards:                   # no Intel GPU: no fd scan
            keys = {c.key for c in cards}
            clients = [c for c in self.fdinfo.read(now) if c.device in keys]
            usage = self.tracker.update(clients, now)
        gpus = self.snapshot = self.source.read(now, usage) if cards else []
        return device_families(None, None, gpus)


class GPUProcessCollector(Collector):
    """Which processes use each GPU: memory and per-engine utilisation, top N per GPU.

    NVIDIA: NVML's process lists and samples (engines sm, memory, encoder, decoder). Other GPUs:
    DRM fdinfo, with the driver's own engine names (amdgpu gfx/compute/dma/enc/dec, i915
    render/copy/video/video-enhance/compute, xe rcs/bcs/vcs/vecs/ccs, ...).
    """

    name = "gpu_process"
    escalates = True
    follows = "process"     # runs right after it on one /proc pass when both share a tier

    def __init__(self, source=None, procfs="/proc", sysfs="/sys", top_n=10, max_groups=10, scanner=None,
                 fdinfo_reader=None):
        super().__init__()
        self.source = source
        self.procfs, self.sysfs = procfs, sysfs
        self.top_n, self.max_groups = top_n, max_groups
        self.scanner = scanner or processes.Scanner(procfs)
        self.fdinfo = fdinfo_reader or fdinfo.FdinfoReader(procfs)
        self.tracker = fdinfo.UsageTracker()
        self.nvml_names = {}        # pid -> name from NVML, for pids /proc does not show
        self.proc_busy = {}         # (gpu, uuid, pid) -> {engine: s} at the last refresh
        self.group_busy = {}        # (gpu, uuid, group) -> {engine: s}: group counters

    @classmethod
    def create(cls, config):
        paths, g = config["paths"], config["gpu"]
        src = nvidia_source(config) if config["collectors"]["nvidia"]["enabled"] else None
        if src is not None and not (src.ensure(time.monotonic()) and src.devices):
            release_source(src)       # a driver without GPUs (or none loaded): nothing to ask NVML
            src = None
        if src is None and not fdinfo.gpu_cards(paths["sysfs"]):
            return None     # no GPU (a BMC's display chip is none): nothing to look for in every process's fds
        return cls(src, paths["procfs"], paths["sysfs"], g["top_n"], g["max_groups"],
                   processes.shared(paths["procfs"], paths["rootfs"]))

    # Each entry: (gpu label, uuid, pid, name, user, owner, memory or None, {engine: ratio} or None,
    #              {engine: busy s counter} or None)

    def _identity(self, table, pid, from_nvml):
        proc = table.procs.get(pid)
        if proc is not None:
            return proc.name, proc.user, proc.owner
        if from_nvml and self.source is not None:
            # not in this /proc (another pid namespace): NVML still knows the name
            name = self.nvml_names.get(pid)
            if name is None:
                name = self.source.process_name(pid)
                if name is None:
                    return None          # gone
                self.nvml_names[pid] = name
            return name, "", ""
        return None

    def _nvidia(self, now, table):
        out = []
        if self.source is None:
            return out
        live = set()
        for gpu in self.source.read_processes(now):
            for p in gpu.processes:
                ident = self._identity(table, p.pid, True)
                if ident is None:
                    continue
                live.add(p.pid)
                out.append((str(gpu.index), gpu.uuid, p.pid) + ident + (p.memory, p.utilization, p.engine_seconds))
        self.nvml_names = {k: v for k, v in self.nvml_names.items() if k in live}
        return out

    def _drm(self, now, table):
        cards = fdinfo.gpu_cards(self.sysfs)
        if not cards:
            return []
        by_key = {c.key: c for c in cards}
        clients = self.fdinfo.read(now, table.pids)
        apus = {c.key for c in cards if c.apu}
        out = []
        for u in self.tracker.update(clients, now, apus):
            card = by_key.get(u.device)
            if card is None:
                continue             # a device without a card in sysfs: not a GPU we list
            ident = self._identity(table, u.pid, False)
            if ident is None:
                continue
            out.append((str(card.index), card.uuid, u.pid) + ident + (u.memory, u.engines, u.busy))
        return out

    def update(self, now):
        table = self.scanner.scan(now, SHARE_WINDOW)
        entries = self._nvidia(now, table) + self._drm(now, table)
        self.snapshot = entries
        try:
            self.scanner.note_gpu_pids({e[2] for e in entries})
        except AttributeError:
            pass
        return self._families(entries)

    def _families(self, entries):
        gl = ["gpu", "uuid"]
        pl = gl + ["pid", "name", "user", "owner"]
        mem = gauge("hoofhearted_gpu_process_memory_bytes", "GPU memory a top process holds on a GPU.", pl)
        util = gauge("hoofhearted_gpu_process_utilization_ratio",
                     "Share of time a GPU engine worked for a top process (0-1).", pl + ["engine"])
        count = gauge("hoofhearted_gpu_processes", "Processes using a GPU.", gl)
        gmem = gauge("hoofhearted_gpu_process_group_memory_bytes",
                     "GPU memory held by the processes of one name on a GPU.", gl + ["group"])
        gutil = gauge("hoofhearted_gpu_process_group_utilization_ratio",
                      "Share of time a GPU engine worked for the processes of one name (0-1).",
                      gl + ["group", "engine"])
        busy = counter("hoofhearted_gpu_process_engine_seconds",
                       "Time a GPU engine worked for a top process (NVIDIA: integrated from the driver's "
                       "samples).", pl + ["engine"])
        gbusy = counter("hoofhearted_gpu_process_group_engine_seconds",
                        "Time a GPU engine worked for the processes of one name, counted from the refresh "
                        "each process was first seen.", gl + ["group", "engine"])
        self._count_groups(entries)
        by_gpu = {}
        for e in entries:
            by_gpu.setdefault((e[0], e[1]), []).append(e)
        for (gpu, uuid), items in sorted(by_gpu.items()):
            count.add_metric([gpu, uuid], len(items))
            for e in _top(items, self.top_n):
                lab = [gpu, uuid, str(e[2]), e[3], e[4], e[5]]
                _opt(mem, lab, e[6])
                for engine, ratio in sorted((e[7] or {}).items()):
                    util.add_metric(lab + [engine], ratio)
                for engine, sec in sorted((e[8] or {}).items()):
                    busy.add_metric(lab + [engine], sec)
            for group, (m, engines) in _groups(items, self.max_groups):
                if m is not None:
                    gmem.add_metric([gpu, uuid, group], m)
                for engine, ratio in sorted(engines.items()):
                    gutil.add_metric([gpu, uuid, group, engine], ratio)
        for (gpu, uuid, group), engines in sorted(self.group_busy.items()):
            for engine, sec in sorted(engines.items()):
                gbusy.add_metric([gpu, uuid, group, engine], sec)
        return [mem, util, count, gmem, gutil, busy, gbusy]

    def _count_groups(self, entries):
        """Add each process's busy time since the last refresh to its group's counter (or to
        'other' while the group is not among the shown ones). A process counts from the refresh
        it is first seen; a group's counter goes when its last process has gone."""
        shown, live, now_busy = {}, set(), {}
        by_gpu = {}
        for e in entries:
            by_gpu.setdefault((e[0], e[1]), []).append(e)
        for (gpu, uuid), items in by_gpu.items():
            shown[(gpu, uuid)] = {name for name, _ in _groups(items, self.max_groups)}
        for e in entries:
            if e[8] is None:
                continue
            key = (e[0], e[1], e[2])
            now_busy[key] = e[8]
            group = e[3] if e[3] in shown[(e[0], e[1])] else OTHER
            gkey = (e[0], e[1], group)
            live.add(gkey)
            acc = self.group_busy.setdefault(gkey, {})
            before = self.proc_busy.get(key)
            for engine, sec in e[8].items():
                grown = 0.0 if before is None else max(0.0, sec - before.get(engine, 0.0))
                acc[engine] = acc.get(engine, 0.0) + grown
        self.proc_busy = now_busy
        self.group_busy = {k: v for k, v in self.group_busy.items() if k in live}

    def close(self):
        release_source(self.source)
        self.source = None


def _busy(e):
    return max((e[7] or {}).values(), default=0.0)


def _top(items, n):
    """Top n by utilisation and top n by memory, union, in pid order."""
    if len(items) <= n:
        return sorted(items, key=lambda e: e[2])
    by_util = sorted(items, key=lambda e: (-_busy(e), e[2]))[:n]
    by_mem = sorted(items, key=lambda e: (-(e[6] or 0), e[2]))[:n]
    chosen = {id(e): e for e in by_util + by_mem}
    return sorted(chosen.values(), key=lambda e: e[2])


def _groups(items, max_groups):
    """[(name, (memory or None, {engine: ratio}))], at most max_groups with 'other' last."""
    groups = {}
    for e in items:
        m, engines = groups.get(e[3], (None, {}))
        if e[6] is not None:
            m = (m or 0) + e[6]
        for k, v in (e[7] or {}).items():
            engines[k] = engines.get(k, 0.0) + v
        groups[e[3]] = (m, engines)
    ranked = sorted(groups.items(), key=lambda kv: (-max(kv[1][1].values(), default=0.0),
                                                    -(kv[1][0] or 0), kv[0]))
    keep = ranked if len(ranked) <= max_groups else ranked[:max_groups - 1]
    out = [(name, (m, {k: min(1.0, v) for k, v in eng.items()})) for name, (m, eng) in keep if name != OTHER]
    rest = [kv for kv in ranked if kv not in keep or kv[0] == OTHER]
    if rest:
        m = sum(v[0] for _, v in rest if v[0] is not None) if any(v[0] is not None for _, v in rest) else None
        engines = {}
        for _, (_, eng) in rest:
            for k, v in eng.items():
                engines[k] = min(1.0, engines.get(k, 0.0) + v)
        out.append((OTHER, (m, engines)))
    return out
