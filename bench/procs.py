"""Children the benchmark starts, and what /proc says about any process.

Every child runs in a session of its own, so killing its process group also kills whatever it
forked. The Reaper kills every group it started, on success, error or Ctrl-C alike.
"""
import os
import signal
import subprocess
import time

CLK_TCK = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid):
    """Fields of /proc/PID/stat after the command name (field 3, state, is index 0)."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        data = f.read()
    return data[data.rindex(b")") + 2:].split()


def cpu_seconds(pid):
    """User + system CPU seconds of a process and of the children it waited for (fields 14 to 17 of
    /proc/PID/stat): hoofhearted reads a BMC through a FreeIPMI process."""
    f = _stat_fields(pid)
    return (int(f[11]) + int(f[12]) + int(f[13]) + int(f[14])) / CLK_TCK


def status_bytes(pid, key):
    """A 'kB' line of /proc/PID/status (VmHWM: peak RSS, VmRSS: current) in bytes."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    return None


def pids():
    return [int(n) for n in os.listdir("/proc") if n.isdigit()]


def count_processes():
    return len(pids())


def group_size(pgid):
    """Live (non-zombie) processes in a process group."""
    n = 0
    for pid in pids():
        try:
            f = _stat_fields(pid)
        except (OSError, ValueError):
            continue
        if int(f[2]) == pgid and f[0] != b"Z":
            n += 1
    return n


class Reaper:
    """Starts children in their own sessions and kills all of their groups at the end."""

    def __init__(self):
        self.children = []

    def spawn(self, argv, **kw):
        p = subprocess.Popen(argv, start_new_session=True, stdin=subprocess.DEVNULL, **kw)
        self.children.append(p)
        return p

    def kill(self, p, grace=3.0):
        if p in self.children:
            self.children.remove(p)
        if p.poll() is None:
            _killpg(p.pid, signal.SIGTERM)
            try:
                p.wait(grace)
            except subprocess.TimeoutExpired:
                pass
        _killpg(p.pid, signal.SIGKILL)  # also what the leader left behind in its group
        try:
            p.wait(grace)
        except subprocess.TimeoutExpired:
            pass

    def kill_all(self):
        for p in reversed(list(self.children)):
            self.kill(p)


def _killpg(pgid, sig):
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


class IdleProcesses:
    """N extra sleeping processes, forked by one shell in its own session; killed as one group."""

    def __init__(self, reaper, n, timeout=120.0):
        self.reaper, self.n, self.timeout = reaper, n, timeout
        self.proc = None

    def __enter__(self):
        if self.n <= 0:
            return self
        script = f'i=0; while [ $i -lt {self.n} ]; do sleep 86400 & i=$((i+1)); done; wait'
        self.proc = self.reaper.spawn(["sh", "-c", script], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + self.timeout
        while group_size(self.proc.pid) < self.n + 1:
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError(f"could not start {self.n} idle processes")
            time.sleep(0.2)
        return self

    def __exit__(self, *exc):
        if self.proc is None:
            return
        pgid = self.proc.pid
        self.reaper.kill(self.proc)
        deadline = time.monotonic() + 30
        while group_size(pgid) and time.monotonic() < deadline:  # let the group die before the next count
            _killpg(pgid, signal.SIGKILL)
            time.sleep(0.2)
