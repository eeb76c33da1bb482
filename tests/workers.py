"""Real worker processes with a chosen name and a metered CPU load, for the verdict's tests.

Each worker is a Python interpreter started through a symlink named as the worker, so its comm
is that name from the first instruction. The load is metered in CPU time (time.process_time), not
wall time, so a worker gets its share even on a busy 2-core machine:
- ``duty`` workers burn ``duty`` × 50 ms of CPU, then sleep the rest of the 50 ms (a starved
  worker falls behind rather than catching up in bursts);
- a ``periodic`` worker burns ``burst`` CPU seconds at the start of every ``period`` seconds.
"""
import os
import signal
import subprocess
import sys
import tempfile
import time

DUTY = """
import sys, time
duty, slice_ = float(sys.argv[1]), 0.05
while True:
    cpu = time.process_time()
    while time.process_time() - cpu < duty * slice_:
        pass
    time.sleep((1 - duty) * slice_)
"""

PERIODIC = """
import sys, time
burst, period = float(sys.argv[1]), float(sys.argv[2])
start = time.monotonic()
n = 0
while True:
    cpu = time.process_time()
    while time.process_time() - cpu < burst:
        pass
    n += 1
    time.sleep(max(0.0, start + n * period - time.monotonic()))
"""


class Workers:
    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="hoofhearted-workers-")
        self.procs = []

    def _link(self, name):
        link = os.path.join(self.dir, name)
        if not os.path.exists(link):
            os.symlink(os.path.realpath(sys.executable), link)
        return link

    def start(self, name, code, *args, nice=0):
        def child():
            if nice and os.geteuid() == 0:    # root may go ahead of the machine's other work
                os.nice(nice)
        p = subprocess.Popen([self._link(name), "-c", code, *map(str, args)], stdin=subprocess.DEVNULL,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                             preexec_fn=child)
        self.procs.append(p)
        return p

    def duty(self, name, cores, count=1, nice=0):
        """``nice`` < 0 (as root): the worker gets its share even while other work loads the machine."""
        return [self.start(name, DUTY, cores, nice=nice) for _ in range(count)]

    def periodic(self, name, burst, period, nice=0):
        return self.start(name, PERIODIC, burst, period, nice=nice)

    def stop(self):
        for p in self.procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
            p.wait()
        self.procs = []
        for f in os.listdir(self.dir):
            os.unlink(os.path.join(self.dir, f))
        os.rmdir(self.dir)


def cpu_seconds(pid):
    """utime + stime of a process from /proc/PID/stat, in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_for(predicate, timeout, interval=0.2):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            return value
        time.sleep(interval)
