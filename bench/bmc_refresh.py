"""Cost of reading a BMC, on OpenIPMI's simulator (ipmi_sim over RMCP+ on loopback).

    python -m bench.bmc_refresh              # the BMC collector's refresh: CPU here and in children, wall
    python -m bench.bmc_refresh --compare    # FreeIPMI vs pyghmi vs ipmitool (docs/design.md)

CPU counts this process (time.process_time) and the processes it waited for (RUSAGE_CHILDREN):
FreeIPMI reads in a child process. Prints JSON.
"""
import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "tests"))
sys.path.insert(0, os.path.dirname(HERE))


def _cpu():
    ch = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + ch.ru_utime + ch.ru_stime


def _timed(fn):
    c0, w0 = _cpu(), time.perf_counter()
    fn()
    return _cpu() - c0, time.perf_counter() - w0


def _summary(samples):
    cpu = [c for c, _ in samples]
    wall = [w for _, w in samples]
    return {"cpu_ms": round(statistics.median(cpu) * 1e3, 2), "wall_ms": round(statistics.median(wall) * 1e3, 2),
            "wall_max_ms": round(max(wall) * 1e3, 2), "reads": len(samples)}


def collector_cost(sim, repeat):
    from bmcsim import PASSWORD, USER
    from exporter import config as cfgmod, render
    from exporter.collectors import factory

    pw = os.path.join(sim.dir, "pw")
    with open(pw, "w") as f:
        f.write(PASSWORD)
    cfg = cfgmod.build(environ={})
    cfg["bmc"]["ipmi"].update(local=False, targets=[{
        "name": "sim", "host": "127.0.0.1", "port": sim.port, "username": USER, "password_file": pw,
        "password_env": None, "privilege": "user", "workaround_flags": ["opensesspriv"], "timeout_seconds": None}])
    col = factory("bmc").create(cfg)
    try:
        cold = _timed(lambda: render.text(col.refresh(time.monotonic())))
        warm = [_timed(lambda: render.text(col.refresh(time.monotonic()))) for _ in range(repeat)]
        series = sum(len(f.samples) for f in col.families)
    finally:
        col.close()
    return {"cold": _summary([cold]), "refresh": _summary(warm), "series": series}


def compare(sim, dead_port, repeat):
    from bmcsim import PASSWORD, USER
    from exporter.sources.bmc_ipmi import IPMIReader

    out = {}
    fi = IPMIReader(host="127.0.0.1", port=sim.port, username=USER, password=PASSWORD,
                    workaround_flags=["opensesspriv"])
    out["freeipmi"] = {"cold": _summary([_timed(fi.read)]), "warm": _summary([_timed(fi.read) for _ in range(repeat)])}
    dead = IPMIReader(host="127.0.0.1", port=dead_port, username=USER, password=PASSWORD, timeout=3.0,
                      workaround_flags=["opensesspriv"])
    out["freeipmi"]["beside_dead_bmc"] = _beside_dead(fi.read, dead.read, repeat)
    fi.close()
    dead.close()

    try:
        from pyghmi.ipmi import command
    except ImportError:
        out["pyghmi"] = "not installed (pip install pyghmi)"
    else:
        def pyghmi_read(port, password=PASSWORD, cache={}):
            key = (port, password)
            if key not in cache:
                cache[key] = command.Command(bmc="127.0.0.1", userid=USER, password=password, port=port)
            cmd = cache[key]
            cmd.init_sdr()
            for n in cmd._sdr.get_sensor_numbers():
                e = cmd._sdr.sensors[n]
                cmd.raw_command(netfn=4, command=0x2D, rslun=e.sensor_lun, data=(e.sensor_number,))

        cold = []
        for _ in range(5):         # a new session and SDR each time: new credentials for the cache
            c = command.Command(bmc="127.0.0.1", userid=USER, password=PASSWORD, port=sim.port)
            cold.append(_timed(c.init_sdr))
            c.ipmi_session.logout()
            from pyghmi.ipmi.private import session
            session.Session.bmc_handlers.clear()
            session.Session.initting_sessions.clear()
        warm = [_timed(lambda: pyghmi_read(sim.port)) for _ in range(repeat + 1)][1:]

        def dead_read():
            try:
                pyghmi_read(dead_port)
            except Exception:
                pass
        out["pyghmi"] = {"cold": _summary(cold), "warm": _summary(warm),
                         "beside_dead_bmc": _beside_dead(lambda: pyghmi_read(sim.port), dead_read, repeat)}

    ipmitool = shutil.which("ipmitool")
    if ipmitool:
        argv = [ipmitool, "-I", "lanplus", "-C", "3", "-H", "127.0.0.1", "-p", str(sim.port), "-U", USER,
                "-E", "sensor"]
        env = {**os.environ, "IPMI_PASSWORD": PASSWORD}
        run = lambda: subprocess.run(argv, env=env, capture_output=True, check=True, timeout=30)  # noqa: E731
        out["ipmitool"] = {"warm": _summary([_timed(run) for _ in range(min(repeat, 10))])}
    return out


def _beside_dead(good, dead, repeat):
    """Wall time of good reads while another thread keeps trying a BMC that never answers."""
    stop = threading.Event()

    def hammer():
        while not stop.is_set():
            try:
                dead()
            except Exception:
                pass
    t = threading.Thread(target=hammer, daemon=True)
    t.start()
    time.sleep(0.2)
    samples = [_timed(good) for _ in range(repeat)]
    stop.set()
    return _summary(samples)


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m bench.bmc_refresh")
    p.add_argument("--repeat", type=int, default=20)
    p.add_argument("--compare", action="store_true")
    args = p.parse_args(argv)
    if not shutil.which("ipmi_sim") or not (shutil.which("ipmi-sensors") or os.path.exists("/usr/sbin/ipmi-sensors")):
        print(json.dumps({"available": False, "why": "ipmi_sim or ipmi-sensors not installed (make deps)"}))
        return 0
    from bmcsim import DeadBMC, IPMISim

    with tempfile.TemporaryDirectory() as tmp:
        sim = IPMISim(tmp)
        dead = DeadBMC()
        try:
            out = {"available": True, "collector": collector_cost(sim, args.repeat)}
            if args.compare:
                out["compare"] = compare(sim, dead.port, args.repeat)
        finally:
            sim.stop()
            dead.stop()
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
