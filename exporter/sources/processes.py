"""Processes straight from /proc: one pass per refresh, shared by every reader of one procfs root.

A pass lists the root and reads each /proc/<pid>/stat (state, CPU, RSS, threads, start). What a
process keeps for its life (user, cgroup owner, executable, command line) is read once per
process, keyed by (pid, start time), and read again only when its comm changes (an exec) or when
it was first read in the process's first second (a fork about to setuid or change cgroup). A
process whose stat bytes did not change since the last pass is not parsed again.

Sharing: ``shared(procfs)`` returns the one Scanner for a root; ``scan(now, max_age)`` gives the
table of the last pass when it is younger than ``max_age`` (in the caller's clock), so the process
and GPU fdinfo readers of one tier do one pass between them. GPU readers report the pids they
saw on a GPU with ``note_gpu_pids`` (the miner check looks at those).

Processes that vanish or deny access mid-pass are skipped without noise. Kernel threads are
processes too (empty command line, owner "").
"""
import os
import pwd
import re
import threading

from .host import PROCFS_LIMIT, read_bytes, read_text

CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
SETTLE_SECONDS = 1.0   # identity read younger than this is read again on the next pass

STATES = {"R": "running", "S": "sleeping", "D": "disk_sleep", "Z": "zombie", "T": "stopped",
          "t": "tracing_stop", "I": "idle", "X": "dead", "x": "dead", "K": "wakekill", "W": "waking",
          "P": "parked"}


class Identity:
    """What a process keeps for its life; shared by the Proc of every pass."""

    __slots__ = ("uid", "user", "owner", "exe", "comm", "settled", "cmdline")

    def __init__(self, uid, user, owner, exe, comm, settled):
        self.uid, self.user, self.owner, self.exe = uid, user, owner, exe
        self.comm, self.settled = comm, settled
        self.cmdline = None       # list of str, read on demand (Scanner.cmdline)


class Proc:
    """One process in one pass. Immutable once published."""

    __slots__ = ("pid", "name", "state", "ppid", "cpu_seconds", "rss_bytes", "threads", "starttime",
                 "ident", "_comm_raw")

    def __init__(self, pid, name, state, ppid, cpu_seconds, rss_bytes, threads, starttime, ident, comm_raw):
        self.pid, self.name, self.state, self.ppid = pid, name, state, ppid
        self.cpu_seconds, self.rss_bytes, self.threads = cpu_seconds, rss_bytes, threads
        self.starttime, self.ident, self._comm_raw = starttime, ident, comm_raw

    @property
    def key(self):
        """(pid, start ticks): unique over the machine's uptime, unlike the pid alone."""
        return (self.pid, self.starttime)

    @property
    def user(self):
        return self.ident.user

    @property
    def uid(self):
        return self.ident.uid

    @property
    def owner(self):
        return self.ident.owner

    @property
    def exe(self):
        return self.ident.exe

    def __repr__(self):
        return (f"Proc(pid={self.pid}, name={self.name!r}, user={self.user!r}, owner={self.owner!r}, "
                f"cpu={self.cpu_seconds}, rss={self.rss_bytes}, threads={self.threads})")


class ProcessTable:
    """The result of one pass. ``when`` is in the clock of whoever asked for the pass."""

    __slots__ = ("procs", "when", "uptime", "boot_time")

    def __init__(self, procs, when, uptime, boot_time):
        self.procs = procs            # pid -> Proc
        self.when = when
        self.uptime = uptime          # seconds since boot at the pass, None if unreadable
        self.boot_time = boot_time    # unix time of boot, None if unreadable

    @property
    def pids(self):
        return list(self.procs)

    def age(self, proc):
        """Seconds the process has been running at the pass, or None."""
        if self.uptime is None:
            return None
        return self.uptime - proc.starttime / CLK_TCK

    def start_time(self, proc):
        """Unix time the process started, or None."""
        if self.boot_time is None:
            return None
        return self.boot_time + proc.starttime / CLK_TCK


# -- cgroup -> owner ----------------------------------------------------------------------------

_POD = re.compile(r"pod([0-9a-f]{8}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{12})")
_CONTAINER = re.compile(r"(?:^|[/:-])([0-9a-f]{64})(?:\.scope)?(?=/|$)")
_LXC = re.compile(r"/lxc(?:\.payload)?[./]([^/]+)")
_UNIT = re.compile(r"[^/]+\.(?:service|scope)$")


def owner_from_cgroup(text):
    """Readable owner of a /proc/<pid>/cgroup text.

    'pod/<uid>' (Kubernetes), 'container/<12 hex>' (Docker, containerd, CRI-O, Podman),
    'lxc/<name>', a systemd unit ('nginx.service', 'session-3.scope'), or '' (none, or the root).
    """
    paths, unit_paths = [], []
    for line in text.splitlines():
        hier, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        path = path.strip()
        if not path or path == "/":
            continue
        paths.append(path)
        if hier == "0" or controllers == "name=systemd":
            unit_paths.append(path)
    for path in paths:
        m = _POD.search(path)
        if m:
            return "pod/" + m.group(1).replace("_", "-")
    for path in paths:
        ids = _CONTAINER.findall(path)
        if ids:
            return "container/" + ids[-1][:12]     # innermost, for a container in a container
    for path in paths:
        m = _LXC.search(path)
        if m:
            return "lxc/" + m.group(1)
    for path in unit_paths or paths:
        for part in reversed(path.split("/")):
            if _UNIT.match(part) and not part.startswith("init.scope"):
                return part
    return ""


# -- users ----------------------------------------------------------------------------------------

class UserNames:
    """uid -> name, from the host's passwd: rootfs/etc/passwd when rootfs is not '/' (then never
    this container's own user database, which would name the wrong users); the number otherwise."""

    def __init__(self, rootfs="/", getpwuid=pwd.getpwuid):
        self.rootfs = rootfs or "/"
        self.getpwuid = getpwuid
        self.names = {}
        self._file = None
        if os.path.realpath(self.rootfs) != "/":
            self._file = self._read_passwd(os.path.join(self.rootfs, "etc", "passwd")) or {}

    @staticmethod
    def _read_passwd(path):
        out = {}
        text = read_text(path, PROCFS_LIMIT)
        if text is None:
            return None
        for line in text.splitlines():
            parts = line.split(":")
            if len(parts) > 2 and parts[2].isascii() and parts[2].isdigit():
                out.setdefault(int(parts[2]), parts[0])
        return out

    def __call__(self, uid):
        name = self.names.get(uid)
        if name is None:
            if self._file is not None:
                name = self._file.get(uid)
            else:
                try:
                    name = self.getpwuid(uid).pw_name
                    # not UTF-8 in the user database: Python hands it over surrogate-escaped
                    name = name.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
                except (KeyError, OverflowError, UnicodeError):
                    name = None
            name = name or str(uid)
            self.names[uid] = name
        return name


# -- the scanner ----------------------------------------------------------------------------------

def _read(path, dir_fd, size=4096):
    """Bytes of a small /proc file, or None when the process vanished or denies access."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK, dir_fd=dir_fd)
    except OSError:
        return None
    try:
        return os.read(fd, size)
    except OSError:
        return None
    finally:
        os.close(fd)


def _read_all(path, dir_fd, limit=4 << 20):
    """A whole /proc file (cmdline), cut at ``limit`` (the kernel caps arguments lower)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK, dir_fd=dir_fd)
    except OSError:
        return None
    try:
        chunks, size = [], 0
        while size < limit:
            b = os.read(fd, 65536)
            if not b:
                break
            chunks.append(b)
            size += len(b)
        return b"".join(chunks)
    except OSError:
        return None
    finally:
        os.close(fd)


def cpu_seconds(procfs, keys):
    """{(pid, start ticks): CPU seconds now} for ``keys``, read from each /proc/PID/stat alone.
    A process that is gone, or whose pid now belongs to another process, is left out."""
    out = {}
    try:
        dfd = os.open(procfs, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return out
    try:
        for pid, start in keys:
            data = _read(f"{pid}/stat", dfd, 1024)
            if not data:
                continue
            f = data[data.rfind(b")") + 2:].split()
            try:
                if int(f[19]) == start:
                    out[(pid, start)] = (int(f[11]) + int(f[12])) / CLK_TCK
            except (ValueError, IndexError):
                continue
    finally:
        os.close(dfd)
    return out


class Scanner:
    def __init__(self, procfs="/proc", rootfs="/", users=None):
        self.procfs = procfs
        self.users = users or UserNames(rootfs)
        self.table = None
        self.gpu_pids = frozenset()
        self._raw = {}            # dir name -> (hash of its stat bytes, Proc)
        self._owners = {}         # cgroup bytes -> owner
        self._tcp_tables = {}     # network namespace -> (refresh, {inode: remote port})
        self._lock = threading.Lock()
        self.boot_time = self._boot_time()

    def _boot_time(self):
        try:
            for line in (read_bytes(os.path.join(self.procfs, "stat"), PROCFS_LIMIT) or b"").splitlines():
                if line.startswith(b"btime "):
                    return int(line.split()[1])
        except (ValueError, IndexError):
            pass
        return None

    def _uptime(self):
        try:
            return float((read_bytes(os.path.join(self.procfs, "uptime")) or b"").split()[0])
        except (ValueError, IndexError):
            return None

    def note_gpu_pids(self, pids):
        """GPU readers: the pids seen using a GPU in their last refresh."""
        self.gpu_pids = frozenset(pids)

    def scan(self, now=None, max_age=0.0):
        """One pass over the root, or the last one when younger than ``max_age`` at ``now``."""
        with self._lock:
            t = self.table
            if t is not None and now is not None and t.when is not None and 0 <= now - t.when <= max_age:
                return t
            self.table = self._pass(now)
            return self.table

    def _pass(self, now):
        uptime = self._uptime()
        dfd = os.open(self.procfs, os.O_RDONLY | os.O_DIRECTORY)
        op, rd, cl, rdonly = os.open, os.read, os.close, os.O_RDONLY   # the hot loop: syscalls only
        try:
            names = os.listdir(dfd)
            prev, raw, procs = self._raw, {}, {}
            for name in names:
                if not name.isdigit():
                    continue
                try:
                    fd = op(name + "/stat", rdonly, dir_fd=dfd)
                except OSError:
                    continue
                try:
                    data = rd(fd, 1024)
                except OSError:
                    continue
                finally:
                    cl(fd)
                if not data:
                    continue
                # keep a hash, not the bytes: 8 bytes a process instead of ~330
                key = hash(data)
                old = prev.get(name)
                if old is not None and old[0] == key:
                    proc = old[1]
                    if proc.ident.settled:       # unchanged: nothing to parse or allocate
                        raw[name] = old
                        procs[proc.pid] = proc
                        continue
                    proc = self._parse(name, data, proc, uptime, dfd)
                else:
                    proc = self._parse(name, data, old[1] if old else None, uptime, dfd)
                if proc is None:
                    continue
                raw[name] = (key, proc)
                procs[proc.pid] = proc
        finally:
            os.close(dfd)
        self._raw = raw
        return ProcessTable(procs, now, uptime, self.boot_time)

    def _parse(self, name, data, old, uptime, dfd):
        lp = data.find(b"(")
        rp = data.rfind(b")")
        if lp < 0 or rp < lp:
            return None
        f = data[rp + 2:].split()
        if len(f) < 22:
            return None
        try:
            starttime = int(f[19])
            cpu = (int(f[11]) + int(f[12])) / CLK_TCK
            rss = int(f[21]) * PAGE_SIZE
            threads = int(f[17])
            ppid = int(f[1])
        except ValueError:
            return None
        comm = data[lp + 1:rp]
        pid = int(name)
        if old is not None and old.starttime == starttime and old._comm_raw == comm:
            cname, ident = old.name, old.ident
            if not ident.settled:
                ident = self._identity(name, dfd, cname, starttime, uptime)
        else:
            cname = comm.decode("utf-8", "replace")
            ident = self._identity(name, dfd, cname, starttime, uptime)
        if ident is None:
            return None
        return Proc(pid, cname, f[0].decode("ascii", "replace"), ppid, cpu, rss, threads, starttime, ident, comm)

    def _identity(self, name, dfd, comm, starttime, uptime):
        status = _read(name + "/status", dfd, 4096)
        uid = None
        if status:
            i = status.find(b"\nUid:")
            if i >= 0:
                parts = status[i + 5:status.find(b"\n", i + 5)].split()
                if len(parts) > 1 and parts[1].isdigit():
                    uid = int(parts[1])          # effective uid, as ps and top show
        if uid is None:
            try:
                uid = os.stat(name, dir_fd=dfd).st_uid
            except OSError:
                return None                      # vanished
        cg = _read_all(name + "/cgroup", dfd)
        owner = ""
        if cg:
            owner = self._owners.get(cg)
            if owner is None:
                if len(self._owners) > 4096:
                    self._owners.clear()
                owner = self._owners[cg] = owner_from_cgroup(cg.decode("utf-8", "replace"))
        try:
            exe = os.readlink(name + "/exe", dir_fd=dfd)
            exe = os.path.basename(exe.removesuffix(" (deleted)"))
        except (OSError, ValueError):
            exe = ""                             # kernel thread, or not ours to see
        age = None if uptime is None else uptime - starttime / CLK_TCK
        settled = age is None or age >= SETTLE_SECONDS
        return Identity(uid, self.users(uid), owner, exe, comm, settled)

    def cmdline(self, proc):
        """Arguments of a process (read once per process), [] for a kernel thread, None if gone."""
        ident = proc.ident
        if ident.cmdline is None:
            dfd = os.open(self.procfs, os.O_RDONLY | os.O_DIRECTORY)
            try:
                data = _read_all(f"{proc.pid}/cmdline", dfd)
            finally:
                os.close(dfd)
            if data is None:
                return None
            ident.cmdline = [a.decode("utf-8", "replace") for a in data.rstrip(b"\0").split(b"\0")] if data else []
        return ident.cmdline

    def sockets(self, pid):
        """Inodes of a process's sockets (needs ptrace access to its fd directory)."""
        base = os.path.join(self.procfs, str(pid), "fd")
        out = set()
        try:
            fds = os.listdir(base)
        except OSError:
            return out
        for fd in fds:
            try:
                link = os.readlink(os.path.join(base, fd))
            except OSError:
                continue
            if link.startswith("socket:["):
                try:
                    out.add(int(link[8:-1]))
                except ValueError:
                    pass
        return out

    def tcp_remote_ports(self, pid, inodes, when=None):
        """Remote ports of established/connecting TCP sockets among ``inodes``, seen from pid's netns.
        Lookups with the same ``when`` (one refresh) share each namespace's table."""
        if not inodes:
            return set()
        table = self._tcp_table(pid, when)
        return {table[i] for i in inodes if i in table}

    def _tcp_table(self, pid, when):
        """{socket inode: remote port} of pid's network namespace. The table is the same for every
        process in a namespace (19k sockets cost 125-160 ms to parse), so one refresh reads it once
        per namespace, not once per process."""
        try:
            ns = os.readlink(os.path.join(self.procfs, str(pid), "ns", "net"))
        except OSError:
            ns = None
        if ns is not None and when is not None:
            hit = self._tcp_tables.get(ns)
            if hit is not None and hit[0] == when:
                return hit[1]
        table = {}
        for fname in ("tcp", "tcp6"):
            data = read_bytes(os.path.join(self.procfs, str(pid), "net", fname), PROCFS_LIMIT)
            if not data:
                continue
            for line in data.splitlines()[1:]:
                parts = line.split()
                if len(parts) < 10 or parts[3] not in (b"01", b"02"):   # ESTABLISHED, SYN_SENT
                    continue
                try:
                    table[int(parts[9])] = int(parts[2].rpartition(b":")[2], 16)
                except ValueError:
                    continue
        if ns is not None and when is not None:
            if len(self._tcp_tables) > 256:
                self._tcp_tables = {k: v for k, v in self._tcp_tables.items() if v[0] == when}
            self._tcp_tables[ns] = (when, table)
        return table


_shared = {}
_shared_lock = threading.Lock()


def shared(procfs="/proc", rootfs="/"):
    """The one Scanner per procfs root in this process."""
    key = (os.path.realpath(procfs), os.path.realpath(rootfs or "/"))
    with _shared_lock:
        s = _shared.get(key)
        if s is None:
            s = _shared[key] = Scanner(procfs, rootfs)
        return s


def scan(procfs="/proc", now=None, max_age=0.0):
    """Convenience: a pass over ``procfs`` through its shared Scanner."""
    return shared(procfs).scan(now, max_age)
