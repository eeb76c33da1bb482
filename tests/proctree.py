"""Build small procfs trees in a temporary directory, in the kernel's own file formats."""
import os

CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


def stat_line(pid, comm, state="S", ppid=1, utime=0, stime=0, threads=1, starttime=100, rss_pages=0):
    # fields 3..52 of proc(5) stat; the ones we do not read keep plausible values
    rest = [state, ppid, pid, pid, 0, -1, 4194560, 100, 0, 0, 0, utime, stime, 0, 0, 20, 0, threads, 0,
            starttime, 10_000_000, rss_pages] + [0] * 30
    return f"{pid} ({comm}) " + " ".join(str(x) for x in rest) + "\n"


def status_text(comm, uid, threads=1):
    return (f"Name:\t{comm}\nUmask:\t0022\nState:\tS (sleeping)\nTgid:\t1\nPid:\t1\nPPid:\t0\n"
            f"Uid:\t{uid}\t{uid}\t{uid}\t{uid}\nGid:\t{uid}\t{uid}\t{uid}\t{uid}\nThreads:\t{threads}\n")


class Tree:
    """A procfs root: write processes, move time, make them exit."""

    def __init__(self, root, uptime=1000.0, btime=1_700_000_000):
        self.root = str(root)
        os.makedirs(self.root, exist_ok=True)
        self.set_uptime(uptime)
        with open(os.path.join(self.root, "stat"), "w") as f:
            f.write(f"cpu  1 0 1 100 0 0 0 0 0 0\nbtime {btime}\nprocesses 1000\n")

    def set_uptime(self, seconds):
        self.uptime = seconds
        with open(os.path.join(self.root, "uptime"), "w") as f:
            f.write(f"{seconds:.2f} {seconds * 2:.2f}\n")

    def proc(self, pid, comm="worker", uid=1000, cpu_seconds=0.0, rss_bytes=0, threads=1, state="S",
             start_seconds=10.0, cgroup="0::/\n", cmdline=None, exe=None):
        d = os.path.join(self.root, str(pid))
        os.makedirs(d, exist_ok=True)
        ticks = round(cpu_seconds * CLK_TCK)
        with open(os.path.join(d, "stat"), "w") as f:
            f.write(stat_line(pid, comm, state, 1, ticks - ticks // 3, ticks // 3, threads,
                              round(start_seconds * CLK_TCK), rss_bytes // PAGE_SIZE))
        with open(os.path.join(d, "status"), "w") as f:
            f.write(status_text(comm, uid, threads))
        if cgroup is not None:
            with open(os.path.join(d, "cgroup"), "w") as f:
                f.write(cgroup)
        args = cmdline if cmdline is not None else [comm]
        with open(os.path.join(d, "cmdline"), "wb") as f:
            f.write(b"".join(a.encode() + b"\0" for a in args))
        link = os.path.join(d, "exe")
        if exe and not os.path.lexists(link):
            os.symlink(exe, link)
        return d

    def respawn(self, old_pid, pid, comm, **kw):
        """``old_pid`` exits and ``pid`` starts: reuses the directory (creating files is slow on some disks)."""
        os.rename(os.path.join(self.root, str(old_pid)), os.path.join(self.root, str(pid)))
        return self.proc(pid, comm, **kw)

    def exit(self, pid):
        """The process is gone from the listing (renamed aside: removing files is slow on some disks)."""
        os.rename(os.path.join(self.root, str(pid)), os.path.join(self.root, f".exited-{pid}"))


def passwd(root, users):
    """An etc/passwd under ``root`` mapping uid -> name."""
    os.makedirs(os.path.join(root, "etc"), exist_ok=True)
    with open(os.path.join(root, "etc", "passwd"), "w") as f:
        for uid, name in users.items():
            f.write(f"{name}:x:{uid}:{uid}::/home/{name}:/bin/sh\n")
    return str(root)
