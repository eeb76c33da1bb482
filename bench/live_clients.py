"""CPU that ten connected live pages add to the exporter: `python -m bench.live_clients`.

Starts hoofhearted, then alternates windows with no page and with ten /api/live streams read
as a browser reads them (each takes every frame as it comes). The exporter's own CPU seconds
(schedstat of each of its threads) in each window give its CPU share of a core; the added cost is the median of
(with pages - without) over the window pairs, so slow drift on a shared machine cancels out.
Target: at most 0.5 % of a core.
"""
import argparse
import os
import socket
import statistics
import sys
import tempfile
import threading
import time

from . import exporters as ex
from .procs import Reaper

LIMIT_PERCENT = 0.5


class Page(threading.Thread):
    """One /api/live reader; counts the frames it took."""

    def __init__(self, address):
        super().__init__(daemon=True)
        host, port = address.rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)), timeout=10)
        self.sock.sendall(b"GET /api/live HTTP/1.1\r\nHost: bench\r\nAccept: text/event-stream\r\n\r\n")
        self.frames = 0
        self.status = None
        self._stop = False

    def run(self):
        buf = b""
        try:
            while not self._stop:
                data = self.sock.recv(65536)
                if not data:
                    return
                buf += data
                if self.status is None and b"\r\n\r\n" in buf:
                    head, buf = buf.split(b"\r\n\r\n", 1)
                    self.status = int(head.split(b" ", 2)[1])
                self.frames += buf.count(b"\nevent: verdict\n")
                buf = buf[buf.rfind(b"\n\n") + 2:] if b"\n\n" in buf else buf
        except OSError:
            return

    def close(self):
        self._stop = True
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()


def run_seconds(pid):
    """CPU seconds of every thread, from schedstat (nanoseconds; /proc/PID/stat counts 10 ms ticks,
    too coarse for a cost this small). Threads that ended are counted in /proc/PID/stat only."""
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                total += int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            pass
    return total / 1e9


def window(pid, seconds):
    c0, t0 = run_seconds(pid), time.monotonic()
    time.sleep(seconds)
    return (run_seconds(pid) - c0) / (time.monotonic() - t0) * 100


def measure(pairs, seconds, pages=10, log=print):
    reaper = Reaper()
    with tempfile.TemporaryDirectory(prefix="hoofhearted-bench-live-") as workdir:
        try:
            return _measure(reaper, workdir, pairs, seconds, pages, log)
        finally:
            reaper.kill_all()


def _measure(reaper, workdir, pairs, seconds, pages, log):
    hh = ex.start_hoofhearted(reaper, workdir)
    address = hh.url.split("://", 1)[1]
    time.sleep(3)                  # past the first refreshes of every tier
    diffs, idle, busy, frames = [], [], [], 0
    for i in range(pairs):
        without = window(hh.pid, seconds)
        opened = [Page(address) for _ in range(pages)]
        for p in opened:
            p.start()
        time.sleep(1.0)            # connected and past the first frame
        with_pages = window(hh.pid, seconds)
        statuses = [p.status for p in opened]
        frames += sum(p.frames for p in opened)
        for p in opened:
            p.close()
        if statuses != [200] * pages:
            raise RuntimeError(f"live pages not all connected: {statuses}")
        idle.append(without)
        busy.append(with_pages)
        diffs.append(with_pages - without)
        log(f"  pair {i + 1}/{pairs}: {without:.2f} % of a core without pages, {with_pages:.2f} % with {pages}")
    return {"pages": pages, "pairs": pairs, "window_seconds": seconds, "frames": frames,
            "idle_percent": statistics.median(idle), "with_pages_percent": statistics.median(busy),
            "added_percent": statistics.median(diffs)}


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m bench.live_clients", description=__doc__.split("\n\n")[0])
    p.add_argument("--pairs", type=int, default=5, help="windows without and with pages (default 5)")
    p.add_argument("--seconds", type=float, default=10.0, help="length of each window (default 10)")
    p.add_argument("--pages", type=int, default=10)
    p.add_argument("--quick", action="store_true", help="3 pairs of 5 s windows")
    args = p.parse_args(argv)
    if args.quick:
        args.pairs, args.seconds = 3, 5.0
    r = measure(args.pairs, args.seconds, args.pages)
    verdict = "OK" if r["added_percent"] <= LIMIT_PERCENT else "OVER"
    print(f"{r['pages']} live pages add {r['added_percent']:.2f} % of a core "
          f"(median of {r['pairs']} pairs of {r['window_seconds']:.0f} s windows: {r['idle_percent']:.2f} % "
          f"without, {r['with_pages_percent']:.2f} % with; {r['frames']} frames read); "
          f"target <= {LIMIT_PERCENT} %: {verdict}")
    return 0 if verdict == "OK" else 1


if __name__ == "__main__":
    sys.exit(main())
