"""Fake NVML scenarios built from the real nvidia-smi captures.

Every value a FakeGPU serves comes from one capture: the query-gpu CSV row (what nvidia-smi
read from NVML), the -q text (temperature thresholds, PCIe throughput, processes, MIG devices),
-L (MIG profiles) and pmon (per-process samples). A field the capture shows as [N/A] is
NOT_SUPPORTED, [Insufficient Permissions] is NO_PERMISSION, and so on.

What the captures cannot give is marked where it is made up:
- the captures mask every UUID to zeros, so a second GPU in one scenario gets its last digit;
- the energy counter integrates the captured power draw over the fake's clock;
- the 'geforce' scenario's driver refuses per-process utilisation (NOT_SUPPORTED), as older
  consumer boards and vGPUs do; its capture shows samples;
- pmon prints '-' for an engine without activity: such an engine is 0 in a sample, and a
  process with '-' everywhere has no sample at all;
- the PCIe byte counters (NVML_FI_DEV_PCIE_COUNT_*_BYTES) start at 1 TiB / 2 TiB and grow with the
  captured throughput; the clock-event time counters are the captured µs in ns;
- fan rpm is not in the captures: no scenario has it unless a test sets it;
- a GPU with links in `nvidia-smi nvlink -s` has NVLink error counters of 0; the NVLink payload
  counters (fields 138/139) are not in the captures: none unless a test sets ``nvlink_kib``.

Tests start the exporter with ``gpu.nvml_module: tests.fakenvml.<scenario>``. Two environment
variables, read only here, adapt a scenario to the test machine: FAKENVML_PIDS
("capturedpid=livepid,...") puts live test processes in place of the captured ones, and
FAKENVML_CONTROL names a file listing the indexes of GPUs that have fallen off the bus.
"""
import os
import re
import time

from . import NO_INSTANCE, NOT_AVAILABLE, NOT_SUPPORTED, Err, FakeGPU, FakeMig, build, without_library
from .capture import Capture, is_na, number, q_mig_devices, q_processes, q_value

MIB = 1024 * 1024
H100 = "linux-x86_64__nvidia-h100-80gb-hbm3__590.48.01"
H200 = "linux-x86_64__nvidia-h200__590.48.01"
H100_MIG = "linux-x86_64__nvidia-h100-mig__590.48.01"
RTX2080 = "linux-x86_64__nvidia-geforce-rtx-2080-super__610.57.04"
RTX4080 = "linux-x86_64__nvidia-geforce-rtx-4080-super__595.71.05"
RTX2080_WINDOWS = "windows-x86_64__nvidia-geforce-rtx-2080-super__610.62"

_ERRORS = {"Insufficient Permissions": 4, "Unknown Error": 999}


def _field(raw, convert):
    """A capture value turned into what NVML returns, or the Err nvidia-smi saw."""
    if raw is None:
        return Err(NOT_SUPPORTED)
    text = raw.strip().strip("[]")
    if text in _ERRORS:
        return Err(_ERRORS[text])
    if is_na(raw):
        return Err(NOT_SUPPORTED)
    return convert(raw)


def _int(raw):
    return int(number(raw))


def _milli(raw):
    return int(round(number(raw) * 1000))


def _both(a, b, convert):
    a, b = _field(a, convert), _field(b, convert)
    if isinstance(a, Err):
        return a
    if isinstance(b, Err):
        return b
    return (a, b)


def gpu_from_capture(name, state="load", gpu=0, index=0, uuid=None):
    cap = Capture(name)
    row = cap.query_gpu(state)[gpu]
    block = cap.gpu_blocks(state)[gpu]
    mem = [_field(row.get(k), lambda r: int(number(r)) * MIB)
           for k in ("memory.total", "memory.reserved", "memory.used", "memory.free")]
    thresholds = {}
    for key, label in ((0, "GPU Shutdown Temp"), (1, "GPU Slowdown Temp")):
        thresholds[key] = _field(q_value(block, label), _int)   # absent (T.Limit only) -> NOT_SUPPORTED
    fan = _field(row.get("fan.speed"), _int)
    mig_mode = _both(row.get("mig.mode.current"), row.get("mig.mode.pending"),
                     lambda r: 1 if r.strip() == "Enabled" else 0)
    fields = {82: _field(q_value(block, "Memory Current Temp"), _int),
              193: _field(q_value(block, "GPU Shutdown T.Limit Temp"), _int),
              194: _field(q_value(block, "GPU Slowdown T.Limit Temp"), _int),
              94: _field(q_value(block, "Replays Since Reset"), _int)}
    for fid, key in ((3, "ecc.errors.corrected.volatile.total"), (4, "ecc.errors.uncorrected.volatile.total"),
                     (5, "ecc.errors.corrected.aggregate.total"), (6, "ecc.errors.uncorrected.aggregate.total"),
                     (29, "retired_pages.single_bit_ecc.count"), (30, "retired_pages.double_bit.count"),
                     (31, "retired_pages.pending"), (142, "remapped_rows.correctable"),
                     (143, "remapped_rows.uncorrectable"), (144, "remapped_rows.pending"),
                     (145, "remapped_rows.failure"),
                     (74, "clocks_event_reasons_counters.sw_power_cap"),
                     (76, "clocks_event_reasons_counters.sync_boost")):
        conv = (lambda r: int(number(r)) * 1000) if fid in (74, 76) else \
            (lambda r: {"No": 0, "Yes": 1}.get(r.strip(), None) if r.strip() in ("No", "Yes") else _int(r))
        fields[fid] = _field(row.get(key), conv)
    link = tuple(_field(row.get(k), _int) for k in ("pcie.link.gen.current", "pcie.link.gen.max",
                                                      "pcie.link.width.current", "pcie.link.width.max"))
    event_time = {}
    for key in ("sw_thermal", "hw_thermal", "hw_power_brake"):
        v = _field(row.get(f"clocks_event_reasons_counters.{key}_slowdown"), lambda r: int(number(r)) * 1000)
        if not isinstance(v, Err):
            event_time[key] = v
    uuid = uuid or row["uuid"]
    g = FakeGPU(
        index=index,
        name=row["name"],
        uuid=uuid,
        bus_id=row["pci.bus_id"],
        pci=tuple(int(row[k], 16) for k in ("pci.domain", "pci.bus", "pci.device", "pci.device_id",
                                             "pci.sub_device_id")),
        utilization=_both(row.get("utilization.gpu"), row.get("utilization.memory"), _int),
        memory=next((m for m in mem if isinstance(m, Err)), tuple(mem)),
        temperature=_field(row.get("temperature.gpu"), _int),
        thresholds=thresholds,
        fans=fan if isinstance(fan, Err) else [fan],
        power_mw=_field(row.get("power.draw"), _milli),
        power_limit_mw=_field(row.get("enforced.power.limit"), _milli),
        boot_energy_mj=3_600_000_000,
        clocks={i: _field(row.get(f"clocks.current.{k}"), _int)
                for i, k in enumerate(("graphics", "sm", "memory", "video"))},
        event_reasons=_field(row.get("clocks_event_reasons.active"), lambda r: int(r, 16)),
        pstate=_field(row.get("pstate"), lambda r: int(r.strip().lstrip("P"))),
        encoder=_field(row.get("utilization.encoder"), _int),
        decoder=_field(row.get("utilization.decoder"), _int),
        pcie={0: _field(q_value(block, "Tx Throughput"), _int), 1: _field(q_value(block, "Rx Throughput"), _int)},
        mig_mode=mig_mode,
        margin=_field(row.get("temperature.gpu.tlimit"), _int),
        fields=fields,
        event_time=event_time,
        pcie_bytes=(1 << 40, 2 << 40),
        power_default_mw=_field(row.get("power.default_limit"), _milli),
        power_max_mw=_field(row.get("power.max_limit"), _milli),
        link=next((v for v in link if isinstance(v, Err)), link),
    )
    names = {}
    for p in q_processes(block):
        types = set(p["type"].replace("+", ""))
        used = _field(p.get("used"), lambda r: int(number(r)) * MIB)
        g.processes.append({
            "pid": p["pid"], "types": types, "used": NOT_AVAILABLE if isinstance(used, Err) else used,
            "gi": NO_INSTANCE if is_na(p["gi"]) else int(p["gi"]),
            "ci": NO_INSTANCE if is_na(p["ci"]) else int(p["ci"]),
        })
        names[p["pid"]] = p.get("name", "")
    for rnd in cap.pmon_rounds(state):
        samples = {}
        for s in rnd:
            if s["gpu"] != gpu:
                continue
            values = (s["sm"], s["mem"], s["enc"], s["dec"])
            if any(v is not None for v in values):
                samples[s["pid"]] = tuple(v or 0 for v in values)
        g.samples.append(samples)
    try:
        links = re.findall(r"^\s+Link (\d+): (.*)$", cap.section("capabilities :: nvlink -s"), re.M)
    except KeyError:
        links = []
    g.nvlinks = [not v.strip().startswith("<inactive>") for _, v in links]
    if g.nvlinks:
        g.fields.update({45: 0, 52: 0, 59: 0})
    if not isinstance(mig_mode, Err) and mig_mode[0]:
        profiles = {(gi, i): (prof, mig_uuid) for gi, i, prof, mig_uuid in cap.mig_profiles()}
        for m in q_mig_devices(block):
            profile, mig_uuid = profiles[(gpu, m["index"])]
            g.migs.append(FakeMig(m["index"], mig_uuid, f"{row['name']} MIG {profile}", m["gi"], m["ci"],
                                  tuple(int(m[k]) * MIB for k in ("total", "reserved", "used", "free"))))
    return g, names, cap


def _remap_pids(gpus, names, mapping):
    if not mapping:
        return names
    for g in gpus:
        for p in g.processes:
            p["pid"] = mapping.get(p["pid"], p["pid"])
        g.samples = [{mapping.get(pid, pid): v for pid, v in rnd.items()} for rnd in g.samples]
    return {mapping.get(pid, pid): n for pid, n in names.items()}


def _env_pids():
    text = os.environ.get("FAKENVML_PIDS", "")
    out = {}
    for pair in text.split(","):
        if "=" in pair:
            a, b = pair.split("=", 1)
            out[int(a)] = int(b)
    return out


def assemble(specs, symbols_from=None, clock=time.time, pids=None, control=None, **overrides):
    """specs: [(capture, uuid or None)]. Returns the fake pynvml module."""
    gpus, names, driver = [], {}, ""
    for i, (capture, uuid) in enumerate(specs):
        g, n, cap = gpu_from_capture(capture, index=i, uuid=uuid)
        driver = driver or cap.query_gpu("load")[0]["driver_version"]
        gpus.append(g)
        names.update(n)
    for g in gpus:
        for k, v in overrides.items():
            setattr(g, k, v)
    names = _remap_pids(gpus, names, pids if pids is not None else _env_pids())
    symbols = Capture(symbols_from).symbols() if symbols_from else None
    return build(gpus, driver, symbols, clock, names,
                 control if control is not None else os.environ.get("FAKENVML_CONTROL"))


def datacenter(**kw):
    """H100 and H200 under gpu-burn and two memhogs: processes, no fan, per-process samples."""
    return assemble([(H100, None), (H200, "GPU-00000000-0000-0000-0000-000000000001")], symbols_from=H100, **kw)


def geforce(**kw):
    """RTX 2080 SUPER under NVENC load: one fan; this driver refuses per-process utilisation."""
    return assemble([(RTX2080, None)], symbols_from=RTX2080, process_utilization=NOT_SUPPORTED, **kw)


def desktop(**kw):
    """RTX 4080 SUPER on a KDE desktop: compute, graphics and compute+graphics processes."""
    return assemble([(RTX4080, None)], **kw)


def wddm(**kw):
    """RTX 2080 SUPER on Windows: the driver cannot tell per-process memory (WDDM)."""
    return assemble([(RTX2080_WINDOWS, None)], **kw)


def mig(**kw):
    """H100 in MIG mode with four instances; no utilisation, no per-process samples."""
    return assemble([(H100_MIG, None)], symbols_from=H100_MIG, **kw)


# An older driver: none of the newer entry points the exporter prefers.
OLD_DRIVER_MISSING = {
    "nvmlDeviceGetComputeRunningProcesses_v3", "nvmlDeviceGetGraphicsRunningProcesses_v3",
    "nvmlDeviceGetMPSComputeRunningProcesses_v3", "nvmlDeviceGetProcessesUtilizationInfo",
    "nvmlDeviceGetCurrentClocksEventReasons", "nvmlDeviceGetMemoryInfo_v2",
}


def old_driver(**kw):
    return drop_symbols(datacenter(**kw), OLD_DRIVER_MISSING)


# Process-list entry points by driver generation (see FakeLibrary._v3_entry)
GENERATIONS = {
    "current": set(),                                                       # _v3, 24-byte entries
    "r535_early": {"nvmlDeviceGetRunningProcessDetailList"},               # _v3, 32-byte entries
    "v2_only": {f"nvmlDevice{k}RunningProcesses_v3" for k in ("GetCompute", "GetGraphics", "GetMPSCompute")},
    "v1_only": {f"nvmlDevice{k}RunningProcesses_{v}" for k in ("GetCompute", "GetGraphics", "GetMPSCompute")
                for v in ("v3", "v2")},
}


def drop_symbols(nvml, names):
    """The fake's library without ``names``, as an older driver."""
    lib = nvml._fake
    for name in names:
        lib.exported.discard(name)
        if hasattr(lib.symbols, name):
            delattr(lib.symbols, name)
    return nvml


def generation(name, **kw):
    """The datacenter scenario on a driver of one process-list generation."""
    return drop_symbols(datacenter(**kw), GENERATIONS[name])


def nodriver(**kw):
    return without_library()


def scale(gpus=8, processes=50, clock=time.time):
    """``gpus`` copies of the H100 capture, each with ``processes`` compute processes sampled each round."""
    base, names, cap = gpu_from_capture(H100)
    out, all_names = [], {}
    for i in range(gpus):
        g, _, _ = gpu_from_capture(H100, index=i, uuid=f"GPU-00000000-0000-0000-0000-{i:012d}")
        g.bus_id = f"00000000:{i + 1:02X}:00.0"
        g.processes = []
        rnd = {}
        for j in range(processes):
            pid = 100000 + i * 1000 + j
            g.processes.append({"pid": pid, "types": {"C"}, "used": (j + 1) * 64 * MIB,
                                "gi": NO_INSTANCE, "ci": NO_INSTANCE})
            rnd[pid] = (j % 100, j % 50, 0, 0)
            all_names[pid] = f"/opt/app/worker{j}"
        g.samples = [rnd] * 5
        out.append(g)
    return build(out, cap.query_gpu("load")[0]["driver_version"], cap.symbols(), clock, all_names)
