"""A sysfs tree whose RAPL package counter advances at a known power, for the attribution test
and bench on machines without readable RAPL.

The tree links hwmon, thermal and devices from node_exporter's fixture tree (so the verdict
has fans and temperatures) and has a powercap of its own: ``intel-rapl:0`` (package-0) and
``intel-rapl:0:0`` (core), whose energy_uj a thread rewrites every few milliseconds from the
monotonic clock. Each write is a rename, so a reader never sees a half-written file.
"""
import os
import threading
import time

SYSFS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "sysfs-node-exporter")


class RaplTree:
    def __init__(self, root, watts=40.0, core_watts=None, period=0.005):
        self.root = str(root)
        self.zones = {"intel-rapl:0": ("package-0", watts)}
        if core_watts is not None:
            self.zones["intel-rapl:0:0"] = ("core", core_watts)
        self.period = period
        for sub in ("class/hwmon", "class/thermal", "devices"):
            os.makedirs(os.path.dirname(os.path.join(self.root, sub)), exist_ok=True)
            os.symlink(os.path.join(SYSFS, sub), os.path.join(self.root, sub))
        for zone, (name, _) in self.zones.items():
            d = os.path.join(self.root, "class", "powercap", zone)
            os.makedirs(d)
            with open(os.path.join(d, "name"), "w") as f:
                f.write(name + "\n")
            with open(os.path.join(d, "max_energy_range_uj"), "w") as f:
                f.write("262143328850\n")
        self.start = time.monotonic()
        self._write()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def set_watts(self, watts):
        """Change the package power from now on (the counter stays continuous)."""
        self._write()
        name, _ = self.zones["intel-rapl:0"]
        base = self._energy("intel-rapl:0")
        self.zones["intel-rapl:0"] = (name, watts)
        self._base = getattr(self, "_base", {})
        self._base["intel-rapl:0"] = (base, time.monotonic())

    def _energy(self, zone):
        _, watts = self.zones[zone]
        base, since = getattr(self, "_base", {}).get(zone, (0.0, self.start))
        return base + watts * 1e6 * (time.monotonic() - since)

    def _write(self):
        for zone in self.zones:
            d = os.path.join(self.root, "class", "powercap", zone)
            tmp = os.path.join(d, ".energy_uj")
            with open(tmp, "w") as f:
                f.write(f"{int(self._energy(zone))}\n")
            os.replace(tmp, os.path.join(d, "energy_uj"))

    def _run(self):
        while not self._stop.wait(self.period):
            self._write()

    def stop(self):
        self._stop.set()
        self._thread.join(2)
