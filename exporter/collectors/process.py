"""Processes: who uses the CPU and memory, with a bounded number of series.

Per process (top N by CPU and top N by memory, union): cores used, resident memory, threads.
Every process is also counted in a group (by name, user or owner). Group folding, stable by
design so a counter does not hop between its own series and group="other":

- A group earns its own series when it reaches the threshold (``group_min_cpu_cores`` or
  ``group_min_memory_bytes``) and one of the ``max_groups - 1`` slots is free ("other" takes the
  last one). Candidates are taken hottest first.
- It keeps the slot while it is above the threshold and for ``group_hold_seconds`` after it last
  was (also after its last member exited, so its counter keeps the seconds of exited members).
- With every slot taken, a candidate replaces the weakest group only when it is at least twice as
  far over the threshold and the weakest has held its slot for ``group_hold_seconds``.
- Each refresh's CPU seconds go to exactly one series: the group's own, or "other" while the
  group is folded, so the group series add up to the CPU time of every process seen. Both
  counters only grow. A group's own counter holds only the seconds it burned while it had its
  slot (seconds burned while folded stay in "other"); one that left and later earns a slot
  again continues from there, unless it had no members for a while (then it starts over,
  which Prometheus reads as a counter reset).
- A real group called "other" always folds into "other".
"""
import fnmatch
import heapq
import re
from importlib import resources

from .. import redact
from ..sources import processes
from .base import Collector, counter, gauge

MIN_AGE = 0.25            # a new process's lifetime average is a rate only once it ran this long
SHARE_WINDOW = 0.5        # reuse a pass another reader of the same procfs did this recently
STRATUM_RECHECK = 10.0    # seconds between socket checks of one process
TOP_HOLD = 60.0           # seconds a process keeps its series after it left the top
OTHER = "other"
STATE_NAMES = ("running", "sleeping", "disk_sleep", "stopped", "zombie", "idle")


def load_miner_patterns(path=None):
    """Patterns from the miner list (package data unless ``path``), as one compiled regex."""
    if path:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    else:
        text = resources.files("exporter").joinpath("data/miners.txt").read_text(encoding="utf-8")
    pats = [line.strip().lower() for line in text.splitlines() if line.strip() and not line.startswith("#")]
    if not pats:
        return None
    return re.compile("|".join(f"(?:{fnmatch.translate(p)})" for p in pats))


class _Group:
    __slots__ = ("total", "promoted", "since", "last_hot", "cores", "rss", "count", "delta", "weight", "hot")

    def __init__(self):
        self.total = 0.0          # CPU seconds of members, exited ones included
        self.promoted = False
        self.since = None         # when it got its slot
        self.last_hot = None      # last refresh it was over the threshold
        self.reset()

    def reset(self):
        self.cores = 0.0
        self.rss = 0
        self.count = 0
        self.delta = 0.0
        self.weight = 0.0
        self.hot = False


class ProcessCollector(Collector):
    name = "process"
    escalates = True

    def __init__(self, procfs="/proc", rootfs="/", top_n=10, group_by="name", max_groups=50,
                 group_min_cpu_cores=0.01, group_min_memory_bytes=64 * 1024 * 1024, group_hold_seconds=300.0,
                 cmdline=False, cmdline_max_length=200, miners=None, stratum_ports=(3333, 4444, 5555, 7777, 14444),
                 stratum_min_cpu_cores=0.5, scanner=None):
        super().__init__()
        self.scanner = scanner or processes.Scanner(procfs, rootfs)
        self.top_n = top_n
        self.group_by = group_by
        self.max_groups = max_groups
        self.min_cores = group_min_cpu_cores
        self.min_memory = group_min_memory_bytes
        self.hold = group_hold_seconds
        self.cmdline = cmdline
        self.cmdline_max_length = cmdline_max_length
        self.miners = miners
        self.stratum_ports = frozenset(stratum_ports)
        self.stratum_min_cores = stratum_min_cpu_cores   # only busy processes get their sockets looked at
        self.prev = {}            # (pid, starttime) -> CPU seconds at the last refresh
        self.prev_when = None
        self.groups = {}          # group -> _Group
        self.other_total = 0.0
        self.started = 0
        self.exited = 0
        self.first = True
        self.top = []             # [(proc, cores or None)] exported last refresh
        self.rates = {}           # pid -> cores of every process with a known rate
        self.rated = False        # rates come from two passes (not lifetime averages)
        self._held = {}           # (pid, starttime) -> last time in the top
        self.exported = []        # [((pid, starttime), label values)] of the last refresh
        self._miner_names = {}    # Identity -> reason or None
        self._stratum = {}        # (pid, starttime) -> (checked at, bool)

    @classmethod
    def create(cls, config):
        p = config["process"]
        paths = config["paths"]
        try:
            miners = load_miner_patterns(p["miner_names_file"])
        except OSError as e:
            from ..config import ConfigError
            raise ConfigError(f"process.miner_names_file: cannot read {p['miner_names_file']}: "
                              f"{e.strerror or e}") from None
        return cls(top_n=p["top_n"], group_by=p["group_by"], max_groups=p["max_groups"],
                   group_min_cpu_cores=p["group_min_cpu_cores"], group_min_memory_bytes=p["group_min_memory_bytes"],
                   group_hold_seconds=p["group_hold_seconds"], cmdline=p["cmdline"],
                   cmdline_max_length=p["cmdline_max_length"], miners=miners, stratum_ports=p["stratum_ports"],
                   stratum_min_cpu_cores=p["stratum_min_cpu_cores"],
                   scanner=processes.shared(paths["procfs"], paths["rootfs"]))

    # -- refresh ----------------------------------------------------------------------------

    def update(self, now):
        table = self.snapshot = self.scanner.scan(now, SHARE_WINDOW)
        if not table.procs:     # not a procfs (a wrong --path.procfs): a failure, not an idle box
            raise OSError(f"no processes under {self.scanner.procfs}")
        when = now if table.when is None else table.when
        dt = None
        if self.prev_when is not None and when > self.prev_when:
            dt = when - self.prev_when
        uptime = table.uptime
        tck = processes.CLK_TCK
        prev, cur = self.prev, {}
        by = self.group_by
        groups = self.groups
        for g in groups.values():
            g.reset()
        matched = 0
        rated = []                # (cores, pid, proc) with cores > 0
        rates = {}                # pid -> cores, for every process with a known rate
        states = {}
        for proc in table.procs.values():
            key = (proc.pid, proc.starttime)
            c = proc.cpu_seconds
            p = prev.get(key)
            if p is None:
                d = c
                cores = None
                if uptime is not None:
                    age = uptime - proc.starttime / tck
                    if age >= MIN_AGE:
                        cores = c / age
            else:
                matched += 1
                d = c - p if c > p else 0.0
                cores = d / dt if dt else None
            cur[key] = c
            if cores is not None:
                rates[proc.pid] = cores
                if cores > 0:
                    rated.append((cores, proc.pid, proc))
            gk = proc.name if by == "name" else proc.ident.user if by == "user" else (proc.ident.owner or "none")
            g = groups.get(gk)
            if g is None:
                g = groups[gk] = _Group()
            g.count += 1
            g.rss += proc.rss_bytes
            g.delta += d
            if cores:
                g.cores += cores
            states[proc.state] = states.get(proc.state, 0) + 1
        if not self.first:
            self.started += len(cur) - matched
            self.exited += len(prev) - matched
        self.first = False
        self.prev, self.prev_when = cur, when

        self._fold(when)
        top = self._top(table, rated, when)
        self.top = [(proc, rates.get(proc.pid)) for proc in top]
        self.rates = rates        # pid -> cores, for the verdict
        self.rated = dt is not None
        return (self._process_families(table, rates) + self._group_families(bool(rates))
                + self._count_families(states) + [self._miner_family(table, rates, rated)])

    def _fold(self, when):
        """Decide which groups have their own series this refresh (see the module docstring)."""
        min_cores, min_mem = self.min_cores, self.min_memory
        slots = self.max_groups - 1
        promoted, candidates = [], []
        for gk, g in list(self.groups.items()):
            g.hot = (g.cores >= min_cores or g.rss >= min_mem) and g.count > 0
            g.weight = g.cores / max(min_cores, 1e-9) + g.rss / max(min_mem, 1)
            if g.hot:
                g.last_hot = when
            if g.promoted and (g.last_hot is None or when - g.last_hot >= self.hold) and not g.hot:
                g.promoted = False
            if g.promoted:
                promoted.append(g)
            elif g.hot and gk != OTHER:
                candidates.append(g)
            elif g.count == 0:
                del self.groups[gk]          # nobody left and no series: forget it
        candidates.sort(key=lambda g: g.weight, reverse=True)
        for g in candidates:
            if len(promoted) >= slots:
                held = [p for p in promoted if when - p.since >= self.hold]
                weakest = min(held, key=lambda p: p.weight, default=None)
                if weakest is None or g.weight < 2 * weakest.weight:
                    continue
                weakest.promoted = False
                promoted.remove(weakest)
            g.promoted, g.since = True, when
            promoted.append(g)
        for g in self.groups.values():   # each second lands in exactly one series
            if g.promoted:
                g.total += g.delta
            else:
                self.other_total += g.delta

    def _top(self, table, rated, when):
        """Top N by CPU and top N by memory; a process that was in the top keeps its series for
        TOP_HOLD seconds (at most N more), so rate() over its counter sees a whole burst-and-pause
        cycle instead of a series that comes and goes with each pause."""
        n = self.top_n
        if n <= 0:
            return []
        by_cpu = [p for _, _, p in heapq.nlargest(n, rated, key=lambda t: (t[0], -t[1]))]
        by_mem = heapq.nlargest(n, table.procs.values(), key=lambda p: (p.rss_bytes, -p.pid))
        seen, out = set(), []
        for p in by_cpu + [p for p in by_mem if p.rss_bytes > 0]:
            if p.pid not in seen:
                seen.add(p.pid)
                out.append(p)
        held = self._held
        for p in out:
            held[p.key] = when
        extra = []
        for key, last in list(held.items()):
            proc = table.procs.get(key[0])
            if proc is None or proc.key != key or when - last > TOP_HOLD:
                del held[key]
            elif key[0] not in seen:
                extra.append((last, proc))
        extra.sort(key=lambda t: (-t[0], t[1].pid))
        out.extend(p for _, p in extra[:n])
        return out

    def group_slot(self, pid, name=""):
        """The group series a process's share lands in: its group while that has a slot, else
        "other" (the same folding as the CPU-seconds counter)."""
        table = self.snapshot
        proc = table.procs.get(pid) if table is not None else None
        by = self.group_by
        if proc is not None:
            gk = proc.name if by == "name" else proc.ident.user if by == "user" else (proc.ident.owner or "none")
        elif by == "name" and name:
            gk = name
        else:
            return OTHER
        g = self.groups.get(gk)
        return gk if g is not None and g.promoted and gk != OTHER else OTHER

    # -- families ---------------------------------------------------------------------------

    def labels(self):
        return ["pid", "name", "user", "owner"] + (["cmdline"] if self.cmdline else [])

    def _values(self, proc):
        v = [str(proc.pid), proc.name, proc.ident.user, proc.ident.owner]
        if self.cmdline:
            args = self.scanner.cmdline(proc)
            v.append(redact.redact_cmdline(args or [], self.cmdline_max_length))
        return v

    def _process_families(self, table, rates):
        labels = self.labels()
        cpu = gauge("hoofhearted_process_cpu_usage_cores",
                    "CPU cores a top process used since the last refresh (4.0 = four cores busy).", labels)
        mem = gauge("hoofhearted_process_resident_memory_bytes", "Resident memory of a top process.", labels)
        threads = gauge("hoofhearted_process_threads", "Threads of a top process.", labels)
        exported = []
        for proc, cores in self.top:
            v = self._values(proc)
            exported.append((proc.key, v))
            if cores is not None:
                cpu.add_metric(v, cores)
            mem.add_metric(v, proc.rss_bytes)
            threads.add_metric(v, proc.threads)
        self.exported = exported     # the process_cpu collector's counters: same processes, same labels
        return [cpu, mem, threads]

    def _group_families(self, have_rates):
        total = counter("hoofhearted_process_group_cpu_seconds",
                        "CPU seconds of a process group, exited members included.", ["group"])
        cores = gauge("hoofhearted_process_group_cpu_usage_cores",
                      "CPU cores a process group used since the last refresh.", ["group"])
        mem = gauge("hoofhearted_process_group_resident_memory_bytes", "Resident memory of a process group.",
                    ["group"])
        count = gauge("hoofhearted_process_group_processes", "Processes in a process group.", ["group"])
        o_cores, o_rss, o_count = 0.0, 0, 0
        for gk in sorted(self.groups):
            g = self.groups[gk]
            if not g.promoted:
                o_cores += g.cores
                o_rss += g.rss
                o_count += g.count
                continue
            total.add_metric([gk], g.total)
            if have_rates:
                cores.add_metric([gk], g.cores)
            mem.add_metric([gk], g.rss)
            count.add_metric([gk], g.count)
        total.add_metric([OTHER], self.other_total)
        if have_rates:
            cores.add_metric([OTHER], o_cores)
        mem.add_metric([OTHER], o_rss)
        count.add_metric([OTHER], o_count)
        return [total, cores, mem, count]

    def _count_families(self, states):
        started = counter("hoofhearted_processes_started", "Processes seen starting since the exporter started.")
        started.add_metric([], self.started)
        exited = counter("hoofhearted_processes_exited", "Processes seen exiting since the exporter started.")
        exited.add_metric([], self.exited)
        by_state = gauge("hoofhearted_processes", "Processes by state.", ["state"])
        counts = dict.fromkeys(STATE_NAMES, 0)
        for code, n in states.items():
            name = processes.STATES.get(code, "other")
            counts[name] = counts.get(name, 0) + n
        for name, n in counts.items():
            by_state.add_metric([name], n)
        return [started, exited, by_state]

    # -- miners -----------------------------------------------------------------------------

    def _name_reason(self, proc):
        ident = proc.ident
        cache = self._miner_names
        if ident in cache:
            return cache[ident]
        reason = None
        if self.miners is not None:
            if self.miners.match(proc.name.lower()):
                reason = "name"
            elif ident.exe and self.miners.match(ident.exe.lower()):
                reason = "exe"
        cache[ident] = reason
        return reason

    def _stratum_hit(self, proc, when):
        key = (proc.pid, proc.starttime)
        seen = self._stratum.get(key)
        if seen is not None and when - seen[0] < STRATUM_RECHECK:
            return seen[1]
        inodes = self.scanner.sockets(proc.pid)
        hit = bool(self.scanner.tcp_remote_ports(proc.pid, inodes, when) & self.stratum_ports)
        self._stratum[key] = (when, hit)
        return hit

    def _miner_family(self, table, rates, rated):
        fam = gauge("hoofhearted_process_suspected_miner",
                    "1 for a process that looks like a cryptocurrency miner (name, executable, or a stratum "
                    "connection while busy).", ["pid", "name", "user", "reason"])
        found = []
        if self.miners is not None:
            live = set()
            for proc in table.procs.values():
                live.add(proc.ident)
                reason = self._name_reason(proc)
                if reason:
                    found.append((rates.get(proc.pid) or 0.0, proc, reason))
            if len(self._miner_names) > len(live):
                self._miner_names = {k: v for k, v in self._miner_names.items() if k in live}
        if self.stratum_ports:
            flagged = {p.pid for _, p, _ in found}
            gpu = self.scanner.gpu_pids
            busy = [p for c, _, p in rated if c >= self.stratum_min_cores]
            busy += [table.procs[pid] for pid in gpu if pid in table.procs]
            when = table.when if table.when is not None else 0.0
            for proc in busy:
                if proc.pid not in flagged and self._stratum_hit(proc, when):
                    flagged.add(proc.pid)
                    found.append((rates.get(proc.pid) or 0.0, proc, "stratum"))
            if self._stratum:
                self._stratum = {k: v for k, v in self._stratum.items() if k[0] in table.procs}
        cap = max(self.top_n, 10)
        for _, proc, reason in sorted(found, key=lambda t: (-t[0], t[1].pid))[:cap]:
            fam.add_metric([str(proc.pid), proc.name, proc.ident.user, reason], 1)
        return fam

    def hot(self, thresholds):
        return ()   # processes explain heat; sensors and GPUs define it
