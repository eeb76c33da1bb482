"""Watts per process: each measured power domain split into idle, processes and other.

The method is Kepler's proportional attribution (its 2025 rewrite), with no privileges beyond
reading /proc and /sys:

- A domain is one power reading: a RAPL zone (``package-0``, ``package-0/core``,
  ``package-0/dram``) or a GPU (``gpu0``: NVML power, amdgpu hwmon power).
- The idle part is the measured power times the share of time the domain was NOT busy: for CPU
  zones the CPU collector's busy share (/proc/stat), for a GPU its utilisation.
  ``idle = P × (1 - busy)``, ``active = P × busy``.
- A process gets the active part in proportion to its share of the domain's work over the
  domain's busy work: for CPU zones its CPU time (cores) over the busy CPU time of the whole
  machine, for a GPU its SM (NVML) or busiest-engine (DRM fdinfo) share over the GPU's busy
  share. Both reduce to ``P × work / capacity`` (capacity: logical CPUs, or 1 for a GPU).
- ``other`` is the active part no process accounts for: interrupts and kernel work, processes
  that exited between two passes, a GPU context NVML does not sample. When the shares come to
  more than the busy share (the readings are taken over slightly different windows), they are
  scaled down to the active part and other is 0.

So for every domain: sum over processes + idle + other = measured, exactly. DRAM zones use CPU
time too (there is no per-process memory traffic without perf counters), and two processes with
the same CPU time get the same watts even when one runs vector code: these are estimates.
"""
import re
import time
from dataclasses import dataclass, field

from .collectors.base import counter, gauge

METHOD = "CPU-time (GPU: engine-time) proportional split of the measured power, after an idle share by busy time"
OTHER = "other"
GROUP_FORGET = 3600.0       # seconds an energy counter of a group that left is kept
_PACKAGE = re.compile(r"^package-(\d+)$")
_PACKAGE_ID = re.compile(r"package id (\d+)", re.I)
_CHIP_INDEX = re.compile(r"coretemp[_.-]?(\d+)$")


@dataclass
class Domain:
    domain: str                 # 'package-0', 'package-0/core', 'gpu0'
    kind: str                   # 'cpu' | 'gpu'
    measured: float             # W
    busy: float                 # share 0-1 the split used
    idle: float = 0.0
    other: float = 0.0
    processes: dict = field(default_factory=dict)   # pid -> W (every process with a share)
    groups: dict = field(default_factory=dict)      # group -> W (all processes, bounded by the process collector)
    gpu: str = ""               # the GPU label of a GPU domain
    uuid: str = ""
    display: str = ""           # its name in the verdict: GPU0, or "GPU0 (amd)" when two share a label

    @property
    def attributed(self):
        return sum(self.processes.values())

    @property
    def heat(self):
        """Counts towards a culprit's watts: a package, a DRAM zone or a GPU (core and uncore are
        inside the package; psys is the whole platform)."""
        return self.kind == "gpu" or bool(_PACKAGE.match(self.domain)) or self.domain.endswith("/dram")

    def component(self, packages=1):
        """The part in words: 'the CPU package', 'CPU package 1', 'GPU0'."""
        if self.kind == "gpu":
            return self.display or (f"GPU{self.gpu}" if self.gpu.isdigit() else self.gpu)
        m = _PACKAGE.match(self.domain)
        if m:
            return "the CPU package" if packages <= 1 else f"CPU package {m.group(1)}"
        return f"the {self.domain} domain"


@dataclass
class Attribution:
    domains: list = field(default_factory=list)
    labels: dict = field(default_factory=dict)      # pid -> (name, user, owner) of GPU processes
    procs: dict = field(default_factory=dict)       # pid -> Proc of the process table
    top: dict = field(default_factory=dict)         # domain -> [pid] exported per process

    def packages(self):
        return sum(1 for d in self.domains if _PACKAGE.match(d.domain))

    def by_domain(self):
        return {d.domain: d for d in self.domains}

    def watts_of(self, pids):
        """{domain: W} for a set of processes, heat domains only; None without any."""
        heat = [d for d in self.domains if d.heat]
        if not heat:
            return None
        return {d.domain: sum(d.processes.get(p, 0.0) for p in pids) for d in heat}


def split(measured, busy, shares, capacity):
    """(idle, {key: W}, other) of one domain. shares: key -> work in units of capacity."""
    idle, scale, other = split_scale(measured, busy, sum(w for w in shares.values() if w and w > 0), capacity)
    return idle, {k: w * scale for k, w in shares.items() if w and w > 0}, other


def split_scale(measured, busy, work, capacity):
    """(idle, watts per unit of work, other) of one domain doing ``work`` in all."""
    busy = min(1.0, max(0.0, busy))
    active = measured * busy
    idle = measured - active
    scale = measured / max(capacity, 1e-9)
    total = work * scale
    if total > active and total > 0:
        scale *= active / total
        total = active
    return idle, scale, max(0.0, active - total)


def prepare(process, group_of=None):
    """What the CPU split needs from the process collector, once per process refresh:
    ({pid: cores} of processes that ran, {group: cores} of every group with a known rate)."""
    table = getattr(process, "snapshot", None)
    procs = getattr(table, "procs", None) or {}
    rates = getattr(process, "rates", None) or {}
    group_of = group_of or (lambda pid, name: name)
    busy, groups = {}, {}
    for pid, r in rates.items():
        g = group_of(pid, procs[pid].name if pid in procs else "")
        groups[g] = groups.get(g, 0.0) + r
        if r > 0:
            busy[pid] = r
    return busy, groups


def _samples(m, name):
    return m.get(name, ())


def gpu_share(engines):
    """The process's share of a GPU: NVML's SM share, else the busiest DRM engine."""
    engines = engines or {}
    if "sm" in engines:
        return engines["sm"]
    return max(engines.values(), default=0.0)


def attribute(m, process=None, gpu_entries=(), group_of=None, prepared=None):
    """The Attribution of the rendered families ``m`` ({name: [Sample]}, see verdict.index).

    process: the process collector (rates pid -> cores, snapshot table, top) or None;
    gpu_entries: the gpu_process collector's snapshot; group_of(pid, name) -> group label;
    prepared: prepare(process, group_of), when the caller keeps it between calls."""
    out = Attribution()
    table = getattr(process, "snapshot", None)
    procs = getattr(table, "procs", None) or {}
    rates = getattr(process, "rates", None) or {}
    group_of = group_of or (lambda pid, name: name)
    out.procs = procs
    ncores = next((s.value for s in _samples(m, "hoofhearted_cpu_cores")), None) or 0
    busy = next((s.value for s in _samples(m, "hoofhearted_cpu_usage_ratio")), None)
    cpu_top = [p.pid for p, _ in (getattr(process, "top", None) or ())]
    cpu_power = [s for s in _samples(m, "hoofhearted_cpu_power_watts") if s.value > 0]   # 0: no reading
    if cpu_power and process is not None and table is not None and getattr(process, "rated", False) and ncores:
        running, group_cores = prepared if prepared is not None else prepare(process, group_of)
        work = sum(running.values())
        if busy is None:
            busy = work / ncores
        for s in cpu_power:
            d = Domain(s.labels.get("domain", ""), "cpu", s.value, min(1.0, max(0.0, busy)))
            d.idle, scale, d.other = split_scale(s.value, busy, work, ncores)
            d.processes = {pid: r * scale for pid, r in running.items()}
            # every group with a known rate, so its series stays while it idles
            d.groups = {g: c * scale for g, c in group_cores.items()}
            out.domains.append(d)
            out.top[d.domain] = [pid for pid in cpu_top if pid in rates]
    util = {(s.labels.get("gpu", ""), s.labels.get("uuid", "")): s.value
            for s in _samples(m, "hoofhearted_gpu_utilization_ratio")}
    by_gpu = {}
    for e in gpu_entries or ():
        by_gpu.setdefault((e[0], e[1]), []).append(e)
    from .verdict import gpu_names
    display = gpu_names(m)
    powered = list(_samples(m, "hoofhearted_gpu_power_watts"))
    labels_seen = [s.labels.get("gpu", "") for s in powered]
    for s in powered:
        gpu, uuid = s.labels.get("gpu", ""), s.labels.get("uuid", "")
        # NVIDIA's index and an AMD card number can both be "0": the uuid tells them apart
        name = f"gpu{gpu}" if labels_seen.count(gpu) == 1 else f"gpu{gpu}/{uuid}"
        if s.value <= 0:
            continue
        entries = by_gpu.get((gpu, uuid), [])
        shares, names = {}, {}
        for e in entries:
            shares[e[2]] = shares.get(e[2], 0.0) + gpu_share(e[7])
            names[e[2]] = e[3]
            out.labels[e[2]] = (e[3], e[4], e[5])
        b = util.get((gpu, uuid))
        if b is None:
            b = min(1.0, sum(shares.values()))
        d = Domain(name, "gpu", s.value, min(1.0, max(0.0, b)), gpu=gpu, uuid=uuid,
                   display=display.get((gpu, uuid), ""))
        d.idle, d.processes, d.other = split(s.value, b, shares, 1.0)
        for pid in shares:
            g = group_of(pid, names.get(pid, ""))
            d.groups[g] = d.groups.get(g, 0.0) + d.processes.get(pid, 0.0)
        out.domains.append(d)
        ranked = sorted(d.processes, key=lambda pid: (-d.processes[pid], pid))
        out.top[d.domain] = ranked[:max(10, len(cpu_top))]
    return out


class Attributor:
    """Keeps the group energy counters between verdicts and renders the power families."""

    def __init__(self, clock=time.monotonic):
        self.clock = clock
        self.energy = {}        # (group, domain) -> [joules, last seen]
        self.last = None
        self.latest = Attribution()
        self._prepared = (None, None)

    def update(self, m, process=None, gpu_entries=(), now=None):
        now = self.clock() if now is None else now
        group_of = getattr(process, "group_slot", None)
        # the per-process pass runs once per process refresh, not once per verdict
        key = (getattr(process, "snapshot", None), getattr(process, "rates", None))
        if self._prepared[0] is None or self._prepared[0][0] is not key[0] or self._prepared[0][1] is not key[1]:
            self._prepared = (key, prepare(process, group_of))
        attr = attribute(m, process, gpu_entries, group_of, self._prepared[1])
        dt = now - self.last if self.last is not None and now > self.last else 0.0
        self.last = now
        # the power of the previous verdict held until now: integrate it, then take the new one
        for d in self.latest.domains:
            for g, w in d.groups.items():
                e = self.energy.setdefault((g, d.domain), [0.0, now])
                e[0] += w * dt
        for d in attr.domains:
            for g in d.groups:
                self.energy.setdefault((g, d.domain), [0.0, now])[1] = now
        self.energy = {k: v for k, v in self.energy.items() if now - v[1] <= GROUP_FORGET}
        self.latest = attr
        return attr

    def families(self):
        return families(self.latest, self.energy)


def families(attr, energy=None):
    note = f"Estimate ({METHOD}); see docs/processes.md."
    proc = gauge("hoofhearted_process_power_watts",
                 f"Power of a top process in a measured domain. {note}", ["pid", "name", "user", "owner", "domain"])
    group = gauge("hoofhearted_process_group_power_watts",
                  f"Power of a process group in a measured domain. {note}", ["group", "domain"])
    joules = counter("hoofhearted_process_group_energy_joules",
                     f"Energy of a process group in a measured domain since the exporter started. {note}",
                     ["group", "domain"])
    rest = gauge("hoofhearted_power_unattributed_watts",
                 "Power of a measured domain given to no process: idle (the not-busy share) and other (busy "
                 "time no process accounts for); with the process groups it adds up to the measured power.",
                 ["domain", "part"])
    for d in attr.domains:
        for pid in attr.top.get(d.domain, ()):
            p = attr.procs.get(pid)
            name, user, owner = (p.name, p.ident.user, p.ident.owner) if p is not None else \
                attr.labels.get(pid, ("", "", ""))
            proc.add_metric([str(pid), name, user, owner, d.domain], d.processes.get(pid, 0.0))
        for g in sorted(d.groups):
            group.add_metric([g, d.domain], d.groups[g])
        rest.add_metric([d.domain, "idle"], d.idle)
        rest.add_metric([d.domain, "other"], d.other)
    for (g, dom), (j, _) in sorted((energy or {}).items()):
        joules.add_metric([g, dom], j)
    return [proc, group, joules, rest]


# -- sensors to parts ----------------------------------------------------------------------

def component_of(temp, attr):
    """The measured domain a temperature reading belongs to, or None when that is not known."""
    doms = attr.by_domain()
    if temp["kind"] == "cpu":
        packages = [d for d in attr.domains if _PACKAGE.match(d.domain)]
        m = _PACKAGE_ID.search(temp.get("label") or "")
        if m and f"package-{m.group(1)}" in doms:
            return doms[f"package-{m.group(1)}"]
        m = _CHIP_INDEX.search(temp.get("chip") or "")
        if m and len(packages) > 1 and f"package-{m.group(1)}" in doms:
            return doms[f"package-{m.group(1)}"]
        return packages[0] if len(packages) == 1 else None
    if temp["kind"] == "gpu":
        gpus = [d for d in attr.domains if d.kind == "gpu"]
        if temp.get("sensor") == "gpu":        # from the GPU families: chip is 'GPU<n>'
            for d in gpus:
                if d.component() == temp["chip"]:
                    return d
            return None
        return gpus[0] if len(gpus) == 1 else None
    return None
