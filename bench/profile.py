"""`python -m bench --profile`: sample hoofhearted with py-spy while it is scraped every 2 s.

Needs py-spy (`pip install py-spy`; not a test dependency). Writes the collapsed stacks and a
summary of the hottest functions to bench/out/.
"""
import collections
import os
import shutil
import subprocess
import sys

from . import exporters as ex
from .procs import IdleProcesses, count_processes
from .scrape import PeriodicScraper

WAITS = ("Condition.wait ", "Event.wait ", "EpollSelector.select ")
GENERIC = ("(threading.py)", "(<frozen", "(asyncio/", "(selectors.py)", "Scheduler._loop", "Thread.run")
OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "out")


def py_spy():
    here = os.path.join(os.path.dirname(sys.executable), "py-spy")
    return here if os.path.exists(here) else shutil.which("py-spy")


def summarise(path, top=15):
    """Self and inclusive sample shares per function from py-spy's collapsed ('raw') stacks."""
    self_, incl, total = collections.Counter(), collections.Counter(), 0
    with open(path) as f:
        for line in f:
            stack, _, count = line.rstrip("\n").rpartition(" ")
            if not stack:
                continue
            n = int(count)
            frames = stack.split(";")
            if frames[-1].startswith(WAITS):
                continue            # blocked in a wait that py-spy did not see as idle
            total += n
            self_[frames[-1]] += n
            for frame in set(frames):
                incl[frame] += n
    lines = [f"{total} samples of threads running Python code (waits left out)", "",
             "Self (where the time is spent):", ""]
    lines += [f"- {n / total * 100:5.1f} %  {fr}" for fr, n in self_.most_common(top)]
    lines += ["", "Inclusive (thread start-up and event-loop frames left out):", ""]
    own = [(fr, n) for fr, n in incl.most_common() if not any(x in fr for x in GENERIC)][:top]
    lines += [f"- {n / total * 100:5.1f} %  {fr}" for fr, n in own]
    return "\n".join(lines) + "\n"


def profile(args, reaper, workdir):
    spy = py_spy()
    if not spy:
        print("bench: py-spy is not installed (pip install py-spy)", file=sys.stderr)
        return 2
    n = args.profile_procs
    os.makedirs(OUT, exist_ok=True)
    raw = os.path.join(OUT, f"profile-{n}.txt")
    with IdleProcesses(reaper, n):
        print(f"+{n} idle processes ({count_processes()} in all); profiling for {args.profile_seconds:.0f} s",
              flush=True)
        hh = ex.start_hoofhearted(reaper, workdir)
        scraper = PeriodicScraper(hh.metrics, args.interval)
        scraper.start()
        try:
            rc = subprocess.run([spy, "record", "--pid", str(hh.pid), "--duration", str(int(args.profile_seconds)),
                                 "--rate", "500", "--format", "raw", "--nolineno", "--nonblocking",
                                 "--output", raw], capture_output=True, text=True).returncode
        finally:
            scraper.stop()
            reaper.kill(hh.proc)
    if rc != 0 or not os.path.exists(raw):
        print("bench: py-spy failed (it needs ptrace rights over the exporter)", file=sys.stderr)
        return 1
    text = summarise(raw)
    with open(os.path.join(OUT, f"profile-{n}.md"), "w") as f:
        f.write(text)
    print(text)
    return 0
