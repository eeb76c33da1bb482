"""The verdict: the latest snapshots turned into one ranked answer to "why is the fan running?".

Every surface reads this one answer: `/api/verdict`, the `hoofhearted_culprit_*` metrics (and so
the alerts and dashboards), `hoofhearted why`, the Live stream and the page at `/`.

Culprits are units that partition the processes, so no CPU second is counted twice:
- processes of one name and one user form a group; the group is the unit when it has two or
  more members and its biggest member explains less than DOMINANT of it ("php-fpm ×12"),
  otherwise each member stands alone ("one process stays one process");
- the units inside one container, pod or service join into that owner when the owner holds
  two or more units and the biggest of them explains less than DOMINANT of the owner.
Units are ranked by their share of the machine: cores over logical CPUs plus each GPU's busy
share over the number of GPUs.

Temperatures, fans and GPUs are read from the rendered metric families by name, so any
collector that emits those families (hwmon, thermal zones, GPUs, BMCs) counts with no special case.
"""
import heapq
import os
import socket
import time

from .textsafe import terminal

VERSION = 1
RANKS = 3                 # culprits exported as metrics
SHOWN = 5                 # culprits in the JSON and in `why`
DOMINANT = 0.75           # a member explaining this share of its group (or owner) stands for it
BUSY_CORES = 0.5          # a culprit using this much CPU, or this share of a GPU, explains heat
BUSY_GPU = 0.2
IDLE_CPU = 0.25           # below this CPU share (and BUSY_GPU on every GPU) the machine is mostly idle
OWNER_KINDS = ("container/", "pod/", "lxc/")

CPU_CHIPS = ("coretemp", "k10temp", "zenpower", "cpu_thermal", "x86_pkg_temp")
GPU_CHIPS = ("amdgpu", "nouveau", "radeon", "i915", "xe_")
DRIVE_CHIPS = ("nvme", "drivetemp", "sata", "hdd")
RADIO_CHIPS = ("ieee80211", "iwlwifi", "ath1", "ath9", "mt7", "rtw", "brcm", "wifi")


def clean(text):
    """A name fit for a terminal line or a chat message: control characters shown as '?' (as ps)."""
    return terminal(str(text))


# -- reading the families ------------------------------------------------------------------

def index(collectors):
    """{family name: [Sample]} over the last refresh of the given collectors."""
    out = {}
    for c in collectors:
        for fam in getattr(c, "families", None) or ():
            name = fam.name
            if getattr(fam, "type", "") == "counter" and not name.endswith("_total"):
                name += "_total"
            out.setdefault(name, []).extend(fam.samples)
    return out


def _key(labels, *names):
    return tuple(labels.get(n, "") for n in names)


def _by(samples, *names):
    return {_key(s.labels, *names): s.value for s in samples}


def _one(m, name):
    for s in m.get(name, ()):
        return s.value
    return None


def sensor_kind(chip):
    """cpu, gpu, drive, radio, bmc or board, from the chip name (node_exporter style names such as
    platform_coretemp_0 or nvme_nvme0)."""
    low = chip.lower()
    if low.startswith("bmc"):
        return "bmc"
    for kind, words in (("cpu", CPU_CHIPS), ("drive", DRIVE_CHIPS), ("radio", RADIO_CHIPS), ("gpu", GPU_CHIPS)):
        if any(w in low for w in words):
            return kind
    return "board"


def gpu_name(gpu):
    return f"GPU{gpu}" if str(gpu).isdigit() else str(gpu)


# clock-event reasons that mean the GPU is held back, in the words the verdict uses
THROTTLE = {"sw_power_cap": "power", "hw_power_brake_slowdown": "power", "sw_thermal_slowdown": "heat",
            "hw_thermal_slowdown": "heat", "hw_slowdown": "a hardware slowdown"}

GPU_FAMILIES = ("hoofhearted_gpu_info", "hoofhearted_gpu_utilization_ratio", "hoofhearted_gpu_temperature_celsius",
                "hoofhearted_gpu_fan_speed_ratio", "hoofhearted_gpu_power_watts")


def gpu_names(m):
    """(gpu, uuid) -> the name a person reads: GPU0, or "GPU0 (amd)" when two vendors both have a
    GPU 0 (NVIDIA counts its GPUs, AMD its DRM cards: only the uuid tells them apart)."""
    vendor, keys = {}, set()
    for fam in GPU_FAMILIES:
        for s in m.get(fam, ()):
            k = _key(s.labels, "gpu", "uuid")
            keys.add(k)
            if s.labels.get("vendor"):
                vendor[k] = s.labels["vendor"]
    count = {}
    for gpu, _ in keys:
        count[gpu] = count.get(gpu, 0) + 1
    return {k: gpu_name(k[0]) if count[k[0]] == 1 else f"{gpu_name(k[0])} ({vendor.get(k) or k[1][:12]})"
            for k in keys}


def temperatures(m, names=None):
    names = gpu_names(m) if names is None else names
    out = []
    tmax = {tuple(sorted(s.labels.items())): s.value for s in m.get("hoofhearted_temperature_max_celsius", ())}
    tcrit = {tuple(sorted(s.labels.items())): s.value
             for s in m.get("hoofhearted_temperature_critical_celsius", ())}
    for s in m.get("hoofhearted_temperature_celsius", ()):
        lab = s.labels
        k = tuple(sorted(lab.items()))
        chip, sensor, label = lab.get("chip", ""), lab.get("sensor", ""), lab.get("label", "")
        out.append({"name": f"{chip} {label or sensor}".strip(), "chip": chip, "sensor": sensor, "label": label,
                    "celsius": s.value, "max_celsius": tmax.get(k), "critical_celsius": tcrit.get(k),
                    "kind": sensor_kind(chip)})
    slow = _by(m.get("hoofhearted_gpu_temperature_slowdown_celsius", ()), "gpu", "uuid")
    shut = _by(m.get("hoofhearted_gpu_temperature_shutdown_celsius", ()), "gpu", "uuid")
    for s in m.get("hoofhearted_gpu_temperature_celsius", ()):
        k = _key(s.labels, "gpu", "uuid")
        name = names.get(k) or gpu_name(k[0])
        out.append({"name": name, "chip": name, "sensor": "gpu", "label": "", "celsius": s.value,
                    "max_celsius": slow.get(k), "critical_celsius": shut.get(k), "kind": "gpu"})
    out.sort(key=_hottest_first)
    return out


def _hottest_first(t):
    """Radios (Wi-Fi) run hot by design and no fan answers them: they go last. Ties go to the
    sensor closest to its own limit."""
    limit = t["max_celsius"] or t["critical_celsius"]
    closeness = t["celsius"] / limit if limit and limit > 0 else 0.0
    return (t["kind"] == "radio", -t["celsius"], -closeness, t["name"])


def fans(m, names=None):
    names = gpu_names(m) if names is None else names
    found = {}
    fmax = _by(m.get("hoofhearted_fan_max_rpm", ()), "chip", "fan")
    pwm = _by(m.get("hoofhearted_fan_pwm_ratio", ()), "chip", "fan")
    for s in m.get("hoofhearted_fan_speed_rpm", ()):
        k = _key(s.labels, "chip", "fan")
        ratio = pwm.get(k)
        top = fmax.get(k)
        if top and top > 0:
            ratio = min(1.0, s.value / top)
        found[k] = {"name": f"{k[0]} {k[1]}".strip(), "chip": k[0], "fan": k[1],
                    "label": s.labels.get("label", ""), "rpm": s.value, "ratio": ratio}
    for s in m.get("hoofhearted_fan_speed_ratio", ()):      # fans reported in percent (BMCs)
        k = _key(s.labels, "chip", "fan")
        f = found.setdefault(k, {"name": f"{k[0]} {k[1]}".strip(), "chip": k[0], "fan": k[1],
                                 "label": s.labels.get("label", ""), "rpm": None, "ratio": None})
        f["ratio"] = s.value
    for k, ratio in pwm.items():                            # a PWM output without a tachometer
        found.setdefault(k, {"name": f"{k[0]} {k[1]}".strip(), "chip": k[0], "fan": k[1], "label": "",
                             "rpm": None, "ratio": ratio})
    gpu_rpm = _by(m.get("hoofhearted_gpu_fan_speed_rpm", ()), "gpu", "uuid", "fan")
    for s in m.get("hoofhearted_gpu_fan_speed_ratio", ()):
        k = _key(s.labels, "gpu", "uuid", "fan")
        name = names.get(k[:2]) or gpu_name(k[0])
        found[("gpu",) + k] = {"name": f"{name} fan {k[2]}".strip(), "chip": name, "fan": k[2], "label": "",
                               "rpm": gpu_rpm.get(k), "ratio": s.value}
    out = list(found.values())
    out.sort(key=lambda f: (-(f["ratio"] if f["ratio"] is not None else -1), -(f["rpm"] or 0), f["name"]))
    return out


def gpus(m, names=None):
    names = gpu_names(m) if names is None else names
    out = {}
    for s in m.get("hoofhearted_gpu_info", ()):
        k = _key(s.labels, "gpu", "uuid")
        out.setdefault(k, {}).update(name=s.labels.get("name", ""), vendor=s.labels.get("vendor", ""))
    fields = (("hoofhearted_gpu_utilization_ratio", "utilization_ratio"),
              ("hoofhearted_gpu_temperature_celsius", "temperature_celsius"),
              ("hoofhearted_gpu_temperature_slowdown_celsius", "slowdown_celsius"),
              ("hoofhearted_gpu_power_watts", "power_watts"),
              ("hoofhearted_gpu_memory_used_bytes", "memory_used_bytes"),
              ("hoofhearted_gpu_memory_total_bytes", "memory_total_bytes"))
    for metric, field in fields:
        for s in m.get(metric, ()):
            out.setdefault(_key(s.labels, "gpu", "uuid"), {})[field] = s.value
    throttle = {}
    for s in m.get("hoofhearted_gpu_clock_event", ()):
        why = THROTTLE.get(s.labels.get("reason", ""))
        if why and s.value == 1:
            throttle.setdefault(_key(s.labels, "gpu", "uuid"), set()).add(why)
    rows = []
    for (gpu, uuid), v in sorted(out.items()):
        row = {"gpu": gpu, "uuid": uuid, "display": names.get((gpu, uuid)) or gpu_name(gpu),
               "name": v.get("name", ""), "vendor": v.get("vendor", "")}
        row.update({f: v.get(f) for _, f in fields})
        row["throttled_for"] = sorted(throttle.get((gpu, uuid), ()))
        rows.append(row)
    return rows


# -- culprits ------------------------------------------------------------------------------

class Unit:
    """A culprit candidate: one process, a group (same name and user) or an owner."""

    __slots__ = ("kind", "name", "user", "owner", "pid", "procs", "cores", "memory", "gpu", "gpu_memory", "score")

    def __init__(self, kind, name, user, owner, pid, procs):
        self.kind, self.name, self.user, self.owner, self.pid = kind, name, user, owner, pid
        self.procs = procs
        self.cores = None
        self.memory = 0
        self.gpu = {}
        self.gpu_memory = None
        self.score = 0.0


def _fill(unit, rates, gpu_use, gpu_mem, ncores, ngpus):
    cores = None
    for p in unit.procs:
        c = rates.get(p.pid)
        if c is not None:
            cores = (cores or 0.0) + c
        unit.memory += p.rss_bytes
        for g, share in gpu_use.get(p.pid, {}).items():
            unit.gpu[g] = min(1.0, unit.gpu.get(g, 0.0) + share)
        if p.pid in gpu_mem:
            unit.gpu_memory = (unit.gpu_memory or 0) + gpu_mem[p.pid]
    unit.cores = cores
    unit.score = (cores or 0.0) / ncores + sum(unit.gpu.values()) / ngpus
    return unit


def _merge(kind, name, user, owner, parts, *fill):
    procs = [p for u in parts for p in u.procs]
    return _fill(Unit(kind, name, user, owner, None, procs), *fill)


def _dominated(parts, total):
    """The biggest part explains enough of the whole to stand for it."""
    top = max(u.score for u in parts)
    return total.score <= 0 or top >= DOMINANT * total.score


def engine_share(engines):
    """How much of a GPU a process keeps busy: its busiest engine, NVML's ``memory`` left out
    (that is memory-controller traffic, not an engine; the alerts and dashboards leave it out too)."""
    return max((v for k, v in (engines or {}).items() if k != "memory"), default=0.0)


def culprits(procs, rates, gpu_entries=(), ncores=1, ngpus=1, shown=SHOWN, names=None):
    """Ranked units (see the module docstring). procs: iterable of Proc; rates: pid -> cores.

    Only groups with a member that uses CPU or a GPU become units (an idle machine has hundreds
    of idle processes); when fewer than ``shown`` do, the largest idle processes by memory fill up."""
    ncores, ngpus = max(1, ncores or 1), max(1, ngpus or 1)
    gpu_use, gpu_mem = {}, {}
    names = names or {}
    for e in gpu_entries:
        gpu, pid, mem, engines = names.get((e[0], e[1])) or gpu_name(e[0]), e[2], e[6], e[7]
        share = engine_share(engines)
        use = gpu_use.setdefault(pid, {})
        use[gpu] = min(1.0, use.get(gpu, 0.0) + share)
        if mem is not None:
            gpu_mem[pid] = gpu_mem.get(pid, 0) + mem
    fill = (rates, gpu_use, gpu_mem, ncores, ngpus)
    by_group, by_owner_procs, active = {}, {}, set()
    for p in procs:
        ident = p.ident
        key = (p.name, ident.user)
        members = by_group.get(key)
        if members is None:
            members = by_group[key] = []
        members.append(p)
        owner = ident.owner
        if owner:
            by_owner_procs.setdefault(owner, []).append(p)
        if rates.get(p.pid) or p.pid in gpu_use:
            active.add(key)
    units = []
    for key in active:
        name, user = key
        members = by_group[key]
        singles = [_fill(Unit("process", name, user, p.ident.owner, p.pid, [p]), *fill) for p in members]
        if len(singles) >= 2:
            owners = {p.ident.owner for p in members}
            group = _merge("group", name, user, owners.pop() if len(owners) == 1 else "", singles, *fill)
            if not _dominated(singles, group):
                units.append(group)
                continue
        units.extend(u for u in singles if u.score > 0)
    by_owner = {}
    for u in units:
        owners = {p.ident.owner for p in u.procs}
        owner = owners.pop() if len(owners) == 1 else ""
        if owner.startswith(OWNER_KINDS) or owner.endswith(".service"):
            by_owner.setdefault(owner, []).append(u)
    for owner, parts in by_owner.items():
        if len(parts) < 2:
            continue
        # the owner's processes that no other unit stands for: a group that spans owners keeps
        # its members, so no CPU second is counted in two culprits
        ids = {id(u) for u in parts}
        elsewhere = {p.pid for u in units if id(u) not in ids for p in u.procs}
        everyone = [p for p in by_owner_procs[owner] if p.pid not in elsewhere]
        users = {p.ident.user for p in everyone}
        whole = _fill(Unit("owner", owner, users.pop() if len(users) == 1 else "", owner, None, everyone), *fill)
        if not _dominated(parts, whole):
            units = [u for u in units if id(u) not in ids] + [whole]
    units.sort(key=lambda u: (-u.score, -(u.cores or 0), -u.memory, u.pid or 0, u.name))
    if len(units) < shown:
        taken = {p.pid for u in units for p in u.procs}
        idle = heapq.nlargest(shown - len(units), (p for p in procs if p.pid not in taken),
                              key=lambda p: (p.rss_bytes, -p.pid))
        units += [_fill(Unit("process", p.name, p.ident.user, p.ident.owner, p.pid, [p]), *fill) for p in idle]
    return units


# -- words ---------------------------------------------------------------------------------

def pct(r):
    return f"{r * 100:.0f}%"


def owner_text(owner):
    kind, sep, ident = owner.partition("/")
    return f"{kind} {ident}" if sep and kind in ("container", "pod", "lxc") else owner


def who(c):
    name = clean(c["name"])
    if c["kind"] == "process":
        extra = [f"pid {c['pid']}", clean(c["user"])] + ([owner_text(clean(c["owner"]))] if c["owner"] else [])
        return f"{name} ({', '.join(x for x in extra if x)})"
    if c["kind"] == "group":
        extra = [clean(c["user"])] + ([owner_text(clean(c["owner"]))] if c["owner"] else [])
        return f"{name} ×{c['processes']} ({', '.join(x for x in extra if x)})"
    extra = [f"{c['processes']} processes"] + ([clean(c["user"])] if c["user"] else [])
    return f"{owner_text(name)} ({', '.join(extra)})"


def uses(c):
    parts = []
    if c["cores"] is not None and (c["cores"] >= 0.005 or not c["gpu"]):
        parts.append(f"{c['cores']:.2f} cores")
    for g, share in sorted(c["gpu"].items(), key=lambda kv: (-kv[1], kv[0])):
        parts.append(f"{pct(share)} of {g}")
    if not parts:
        parts.append(f"{bytes_text(c['memory_bytes'])} of memory" if c["memory_bytes"] else "nothing measurable")
    if len(parts) > 1:
        parts[-1] = "and " + parts[-1]
    return "uses " + (", ".join(parts) if len(parts) > 2 else " ".join(parts))


def bytes_text(n):
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024


def fan_lead(fan_list):
    if not fan_list:
        return "No fan readings"
    f = fan_list[0]
    detail = [clean(f["name"])] + ([f"{f['rpm']:.0f} rpm"] if f["rpm"] is not None else [])
    if f["ratio"] is not None:
        return f"Fans at {pct(f['ratio'])} ({', '.join(detail)})"
    return f"Fans at {f['rpm']:.0f} rpm ({clean(f['name'])})"


def load_text(report):
    bits = []
    if report["cpu"]["usage_ratio"] is not None:
        bits.append(f"CPU {pct(report['cpu']['usage_ratio'])} busy")
    for g in report["gpus"]:
        if g.get("utilization_ratio") is not None:
            bits.append(f"{g['display']} {pct(g['utilization_ratio'])} busy")
    return ", ".join(bits)


def busy(c):
    return (c["cores"] or 0) >= BUSY_CORES or max(c["gpu"].values(), default=0.0) >= BUSY_GPU


def idle(report):
    cpu = report["cpu"]["usage_ratio"]
    return (cpu is None or cpu < IDLE_CPU) and all((g.get("utilization_ratio") or 0) < BUSY_GPU
                                                   for g in report["gpus"])


def sentence(report, power=None):
    throttled = [f"{g['display']} is throttling for {' and '.join(g['throttled_for'])}."
                 for g in report["gpus"] if g.get("throttled_for")]
    return " ".join([_sentence(report, power)] + throttled)


def _sentence(report, power=None):
    lead = fan_lead(report["fans"])
    load = load_text(report)
    paren = f" ({load})" if load else ""
    if report["measuring"]:
        return "Still measuring: CPU and process rates need a second reading, a few seconds after start."
    if not report["process_data"]:
        why = "failing" if "process" in report.get("failing", ()) else "off"
        return f"{lead}{paren}; no per-process data (the process collector is {why})."
    chain = blame(report, power, lead) if power is not None and power.domains else None
    if chain:
        return chain
    if not report["culprits"]:
        return f"{lead}{paren}; no process uses measurable CPU or GPU."
    top = report["culprits"][0]
    if busy(top):
        if report["fans"]:
            return f"{lead} because {who(top)} {uses(top)}."
        return f"{lead}; the load comes from {who(top)}, which {uses(top)}{paren}."
    if idle(report):
        return f"{lead} and the machine is mostly idle{paren}; busiest is {who(top)}, which {uses(top)}."
    return f"{lead}; the load is spread over many processes{paren}; busiest is {who(top)}, which {uses(top)}."


def blame(report, power, lead):
    """Fan -> hottest sensor -> its part -> the part's power -> the culprit drawing most of it."""
    from .attribution import component_of

    heat = [d for d in power.domains if d.heat]
    if not heat:
        return None
    packages = power.packages()
    hottest = report["temperatures"][0] if report["temperatures"] else None
    part = component_of(hottest, power) if hottest is not None else None
    if part is not None:
        words = f"{part.component(packages)} is at {hottest['celsius']:.0f} °C drawing {part.measured:.0f} W"
        head = f"{lead} because {words}" if report["fans"] else f"{lead}; {words}"
    elif hottest is None or hottest["kind"] in ("cpu", "gpu"):
        # no heat to follow, or the hot part itself has no power reading (RAPL unreadable, a GPU
        # without a power sensor): another part's watts would not explain it; the ranking does
        return None
    else:
        part = max(heat, key=lambda d: (d.measured, d.domain))
        where = (f"the hottest sensor ({clean(hottest['name'])}, {hottest['celsius']:.0f} °C) is on no part "
                 f"with a power reading")
        head = f"{lead}; {where}, while {part.component(packages)} draws {part.measured:.0f} W"
    best = max(report["culprits"], key=lambda c: ((c.get("watts_by_domain") or {}).get(part.domain, 0.0),
                                                  -c["rank"]), default=None)
    share = (best.get("watts_by_domain") or {}).get(part.domain, 0.0) if best else 0.0
    if best is None or round(share) < 1:
        return f"{head}; no process draws a measurable share of it."
    return f"{head}; {share:.0f} W of it is {who(best)}."


# -- why sensors are missing ---------------------------------------------------------------

VM_VENDORS = ("qemu", "kvm", "vmware", "virtualbox", "innotek", "xen", "microsoft corporation", "amazon ec2",
              "google", "bochs", "parallels", "openstack", "digitalocean", "hetzner vserver")


def _read(path, limit=4096):
    try:
        with open(path, "rb") as f:
            return f.read(limit).decode("utf-8", "replace").strip()
    except OSError:
        return ""


def missing_sensors_reason(sysfs="/sys", procfs="/proc", dev="/dev"):
    """Best guess why a box shows no temperature or fan readings, as a short clause."""
    if "microsoft" in _read(os.path.join(procfs, "version")).lower():
        return "this is WSL, which shows no hardware sensors"
    dmi = " ".join(_read(os.path.join(sysfs, "class", "dmi", "id", f)).lower()
                   for f in ("sys_vendor", "product_name", "board_vendor"))
    cpuinfo = _read(os.path.join(procfs, "cpuinfo"), 65536)
    if any(v in dmi for v in VM_VENDORS) or " hypervisor" in cpuinfo:
        return "this looks like a virtual machine, whose host keeps the sensors"
    if os.path.exists(os.path.join(dev, "ipmi0")) or os.path.isdir(os.path.join(sysfs, "class", "ipmi")):
        return "the fans are on the BMC: enable the bmc collector (IPMI or Redfish)"
    try:
        hwmon = os.listdir(os.path.join(sysfs, "class", "hwmon"))
    except OSError:
        hwmon = []
    if not hwmon:
        return "no hwmon sensors: load the sensor modules (sensors-detect; coretemp, k10temp, nct6775 ...)"
    return "the hwmon chips report no temperatures or fans (sensor modules for the board may be missing)"


# -- the whole answer ----------------------------------------------------------------------

def compute(collectors, host=None, wall=None, reason=None, pending=(), failing=(), cache=None, power=None,
            m=None):
    """The verdict as a dict (the /api/verdict JSON) from the fresh collectors' last refresh.

    ``pending``: collectors that exist but have not refreshed yet; ``failing``: ones whose data
    is missing now (failed or stale). ``cache``: a dict kept between calls, so the culprits are
    ranked again only when the process or GPU-process snapshot changed. ``power``: an
    attribution.Attribution of the same refreshes, or None (then no watts and the sentences
    without power). ``m``: index(collectors), when the caller has it already."""
    m = index(collectors) if m is None else m
    by_name = {c.name: c for c in collectors}
    names = gpu_names(m)
    temps, fan_list, gpu_list = temperatures(m, names), fans(m, names), gpus(m, names)
    cpu_usage, ncores = _one(m, "hoofhearted_cpu_usage_ratio"), _one(m, "hoofhearted_cpu_cores")
    total, used = _one(m, "hoofhearted_memory_total_bytes"), _one(m, "hoofhearted_memory_used_bytes")
    memory = None
    if total:
        memory = {"used_bytes": used, "total_bytes": total,
                  "usage_ratio": used / total if used is not None else None}
    proc_c, gpu_c = by_name.get("process"), by_name.get("gpu_process")
    report = {
        "version": VERSION, "host": host or socket.gethostname(), "time": (wall or time.time)(),
        "measuring": False, "sentence": "",
        "cpu": {"usage_ratio": cpu_usage, "cores": int(ncores) if ncores else None},
        "memory": memory, "temperatures": temps, "fans": fan_list, "gpus": gpu_list,
        "culprits": [], "process_data": proc_c is not None,
        "sensors": {"temperature": len(m.get("hoofhearted_temperature_celsius", ()))
                    + len(m.get("hoofhearted_gpu_temperature_celsius", ())),
                    "fan": len(fan_list)},
        "notes": [], "power": None,
    }
    report["process_data"] = proc_c is not None or "process" in pending
    report["failing"] = sorted(failing)
    table = getattr(proc_c, "snapshot", None)
    # measuring until the process rates exist; a cpu collector that is off or failing only
    # leaves the busy share out of the words
    if "process" in pending or "cpu" in pending or (proc_c is not None and (table is None or not proc_c.rated)):
        report["measuring"] = True
    elif proc_c is not None:
        entries = (getattr(gpu_c, "snapshot", None) or ()) if gpu_c is not None else ()
        key = (table, entries, ncores, len(gpu_list))
        if cache is not None and cache.get("key") == key:
            units = cache["units"]
        else:
            units = culprits(table.procs.values(), proc_c.rates, entries, ncores, len(gpu_list), names=names)
            if cache is not None:
                cache.update(key=key, units=units)
        if power is not None and power_complete(power, gpu_list):
            units = by_watts(units, power)
        for rank, u in enumerate(units[:SHOWN], 1):
            c = {"rank": rank, "kind": u.kind, "name": u.name, "user": u.user, "owner": u.owner, "pid": u.pid,
                 "processes": len(u.procs), "cores": u.cores, "memory_bytes": u.memory, "gpu": u.gpu,
                 "gpu_memory_bytes": u.gpu_memory, "watts": None}
            by_domain = power.watts_of([p.pid for p in u.procs]) if power is not None else None
            if by_domain is not None:
                c["watts"] = sum(by_domain.values())
                c["watts_by_domain"] = by_domain
            c["text"] = f"{who(c)} {uses(c)}"
            report["culprits"].append(c)
        if power is not None and power.domains:
            report["power"] = power_report(power)
    if not report["sensors"]["temperature"] and not report["sensors"]["fan"] and reason:
        report["notes"].append(f"No temperature or fan readings: {reason}.")
    report["sentence"] = sentence(report, power)
    return report


def power_complete(power, gpu_list):
    """Power is known for the CPU packages and every GPU: watts can rank culprits across both."""
    return bool(power.packages()) and all(g.get("power_watts") is not None for g in gpu_list) and \
        sum(1 for d in power.domains if d.kind == "gpu") >= len(gpu_list)


def by_watts(units, power):
    """Culprits ranked by the watts attributed to them over every domain; share breaks ties."""
    watts = {id(u): sum((power.watts_of([p.pid for p in u.procs]) or {}).values()) for u in units}
    return sorted(units, key=lambda u: (-round(watts[id(u)], 1), -u.score, -u.memory, u.pid or 0, u.name))


def power_report(power):
    """The measured domains for the JSON: measured = attributed + idle + other."""
    return {"method": "proportional", "domains": [
        {"domain": d.domain, "kind": d.kind, "measured_watts": d.measured, "busy_ratio": d.busy,
         "attributed_watts": d.attributed, "idle_watts": d.idle, "other_watts": d.other,
         "component": d.component(power.packages())} for d in power.domains]}


def families(report):
    """The verdict as metric families: culprits by rank, sensor counts, the measuring flag."""
    from .collectors.base import gauge

    measuring = gauge("hoofhearted_verdict_measuring",
                      "1 right after start, while rates need a second reading and there is no verdict yet.")
    measuring.add_metric([], 1 if report["measuring"] else 0)
    sensors = gauge("hoofhearted_sensors", "Temperature and fan readings the verdict sees (0: none on this box).",
                    ["kind"])
    for kind in ("temperature", "fan"):
        sensors.add_metric([kind], report["sensors"][kind])
    info = gauge("hoofhearted_culprit_info",
                 "The verdict's culprits by rank: a process, a group (same name and user) or an owner "
                 "(container, pod, unit); pid empty unless a process.", ["rank", "kind", "name", "user", "owner", "pid"])
    cores = gauge("hoofhearted_culprit_cpu_usage_cores", "CPU cores the culprit of a rank uses.", ["rank"])
    count = gauge("hoofhearted_culprit_processes", "Processes in the culprit of a rank (1 for a process).", ["rank"])
    mem = gauge("hoofhearted_culprit_memory_bytes", "Resident memory of the culprit of a rank.", ["rank"])
    gpu = gauge("hoofhearted_culprit_gpu_utilization_ratio", "Share of a GPU the culprit of a rank keeps busy (0-1).",
                ["rank", "gpu", "uuid"])
    by_display = {g["display"]: g for g in report.get("gpus", ())}
    watts = gauge("hoofhearted_culprit_power_watts",
                  "Power the culprit of a rank draws in CPU packages, DRAM and GPUs (an estimate, see "
                  "hoofhearted_process_power_watts); only where power is measured.", ["rank"])
    for c in report["culprits"][:RANKS]:
        rank = str(c["rank"])
        info.add_metric([rank, c["kind"], c["name"], c["user"], c["owner"],
                         "" if c["pid"] is None else str(c["pid"])], 1)
        if c["cores"] is not None:
            cores.add_metric([rank], c["cores"])
        count.add_metric([rank], c["processes"])
        mem.add_metric([rank], c["memory_bytes"])
        for g, share in sorted(c["gpu"].items()):
            row = by_display.get(g)
            if row is not None:
                gpu.add_metric([rank, row["gpu"], row["uuid"]], share)
        if c.get("watts") is not None:
            watts.add_metric([rank], c["watts"])
    return [measuring, sensors, info, cores, count, mem, gpu, watts]
