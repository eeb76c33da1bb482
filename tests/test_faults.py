"""Faults injected at the source boundary of a real exporter process: /metrics keeps answering
and the affected collector says it failed."""
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest
import requests

from conftest import PROCFS_FIXTURE, ROOT, SYSFS, parse_exposition, sample

# A scrape that waited on a hanging collector would take the whole refresh timeout: 3 s leaves room
# between that and a slow scrape on a loaded machine (the bound in metrics()).
FAST = {"HOOFHEARTED_REFRESH_TIMEOUT_SECONDS": "3", "HOOFHEARTED_TIERS_CRITICAL": "0.5",
        "HOOFHEARTED_TIERS_IMPORTANT": "0.5"}
PAGE = os.sysconf("SC_PAGE_SIZE")
# SIGTERM to exit: about 1 s (refresh threads are given 1 s to finish); a thread joined without a
# timeout would never let it exit. Half the unit's TimeoutStopSec, room for a loaded machine.
STOP_WITHIN = 5.0


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Exporter:
    """The exporter as its own process, on a known port (its stderr may go nowhere readable)."""

    def __init__(self, args, env=None, stderr=None, prefix=()):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("HOOFHEARTED_")}
        full_env.update(env or {})
        self.proc = subprocess.Popen([*prefix, sys.executable, "-m", "exporter",
                                      f"--web.listen-address=127.0.0.1:{self.port}", *args],
                                     cwd=ROOT, env=full_env, stdout=subprocess.DEVNULL,
                                     stderr=stderr if stderr is not None else subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while True:
            try:
                if requests.get(self.url + "/-/ready", timeout=2).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            assert self.proc.poll() is None, f"exporter exited with {self.proc.returncode}"
            assert time.monotonic() < deadline, "exporter not ready"
            time.sleep(0.05)

    def metrics(self):
        t = time.perf_counter()
        r = requests.get(self.url + "/metrics", timeout=5)
        took = time.perf_counter() - t
        assert r.status_code == 200
        assert took < 1.5, f"scrape took {took:.3f} s"      # half the refresh timeout
        return parse_exposition(r.text)

    def terminate(self):
        """SIGTERM; returns (exit status, seconds to exit)."""
        t = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            rc = None
        return rc, time.monotonic() - t

    def stop(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def exporter():
    started = []

    def start(*args, **kw):
        e = Exporter(list(args), **kw)
        started.append(e)
        return e

    yield start
    for e in started:
        e.stop()


def wait_for(exp, predicate, timeout=10, what="condition"):
    deadline = time.monotonic() + timeout
    while True:
        m = exp.metrics()
        if predicate(m):
            return m
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def rss(m, **labels):
    """A process series (its 'name' label clashes with sample()'s first argument)."""
    return m.get(("hoofhearted_process_resident_memory_bytes", frozenset(labels.items())))


def success(m, name):
    return sample(m, "hoofhearted_collector_success", collector=name)


def last_success(m, name):
    return sample(m, "hoofhearted_collector_last_success_timestamp_seconds", collector=name)


def copy_sysfs(tmp_path):
    dst = tmp_path / "sys"
    shutil.copytree(SYSFS, dst, symlinks=True)
    return dst


def copy_procfs(tmp_path):
    """The fixture /proc without its processes: host files only."""
    dst = tmp_path / "proc"
    shutil.copytree(PROCFS_FIXTURE, dst, symlinks=True,
                    ignore=lambda d, names: [n for n in names if n.isdigit() or n == "self"]
                    if d == PROCFS_FIXTURE else [])
    return dst


HOST_ONLY = ("--no-collector.process", "--no-collector.nvidia", "--no-collector.nvidia_pcie",
             "--no-collector.amdgpu", "--no-collector.gpu_process")

CORETEMP = "devices/platform/coretemp.0/hwmon/hwmon0/temp1_input"   # 'Physical id 0', 55 C


def test_sensor_file_that_would_block_is_skipped_not_waited_for(tmp_path, exporter):
    """A FIFO where a sensor file should be (open() would block until a writer comes) is not a
    sensor: no sample, the collector keeps succeeding, and the reading is back once the file is."""
    sysfs = copy_sysfs(tmp_path)
    exp = exporter(f"--path.sysfs={sysfs}", *HOST_ONLY, env=FAST)
    labels = dict(chip="platform_coretemp_0", sensor="temp1", label="Physical id 0")
    m = exp.metrics()
    assert success(m, "sensors") == 1 and sample(m, "hoofhearted_temperature_celsius", **labels) == 55
    fifo = sysfs / CORETEMP
    fifo.unlink()
    os.mkfifo(fifo)
    m = wait_for(exp, lambda m: sample(m, "hoofhearted_temperature_celsius", **labels) is None,
                 what="the FIFO sensor to have no sample")
    assert success(m, "sensors") == 1 and success(m, "cpu") == 1
    assert sample(m, "hoofhearted_temperature_celsius", chip="platform_coretemp_0", sensor="temp2",
                  label="Core 0") == 54
    plain = tmp_path / "temp1_input"
    plain.write_text("42000\n")
    os.replace(plain, fifo)
    wait_for(exp, lambda m: sample(m, "hoofhearted_temperature_celsius", **labels) == 42, what="sensor back")
    rc, took = exp.terminate()
    assert rc == 0 and took < STOP_WITHIN, (rc, took)


def test_sigterm_while_a_collector_hangs_exits_cleanly(tmp_path, exporter):
    hang = tmp_path / "hang"
    exp = exporter(f"--config.file={fake_gpu_config(tmp_path, 'tests.hangnvml')}", *GPU_ONLY,
                   env={**FAST, "FAKENVML_HANG": str(hang)})
    assert success(exp.metrics(), "nvidia") == 1
    hang.touch()
    wait_for(exp, lambda m: success(m, "nvidia") == 0, what="nvidia to hang")
    rc, took = exp.terminate()
    assert rc == 0 and took < STOP_WITHIN, (rc, took)


def test_unreadable_sensor_gives_no_sample_not_a_zero(tmp_path, exporter):
    sysfs = copy_sysfs(tmp_path)
    (sysfs / CORETEMP).unlink()
    (sysfs / CORETEMP).mkdir()     # read() fails with EISDIR, like an I/O error from the driver
    exp = exporter(f"--path.sysfs={sysfs}", *HOST_ONLY, env=FAST)
    m = exp.metrics()
    assert success(m, "sensors") == 1
    labels = dict(chip="platform_coretemp_0", sensor="temp1", label="Physical id 0")
    assert sample(m, "hoofhearted_temperature_celsius", **labels) is None
    assert sample(m, "hoofhearted_temperature_celsius", chip="platform_coretemp_0", sensor="temp2",
                  label="Core 0") == 54


def test_unreadable_proc_stat_fails_the_cpu_collector_alone(tmp_path, exporter):
    procfs = copy_procfs(tmp_path)
    exp = exporter(f"--path.procfs={procfs}", f"--path.sysfs={SYSFS}", *HOST_ONLY, env=FAST)
    assert success(exp.metrics(), "cpu") == 1
    (procfs / "stat").unlink()
    (procfs / "stat").mkdir()
    m = wait_for(exp, lambda m: success(m, "cpu") == 0, what="cpu to fail")
    assert success(m, "memory") == 1 and success(m, "sensors") == 1
    # After the staleness bound the stale CPU samples go away rather than freeze.
    m = wait_for(exp, lambda m: sample(m, "hoofhearted_cpu_cores") is None, timeout=10,
                 what="stale cpu samples to go")
    assert sample(m, "hoofhearted_memory_total_bytes") is not None


STAT = ("{pid} ({name}) S 1 {pid} {pid} 0 -1 4194560 100 0 0 0 {utime} {stime} 0 0 20 0 1 0 {start} "
        "10000000 {rss} 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 0 0 0 0 0 0 0 0 0 0 0 0 0 0\n")


def make_process(procfs, pid, name, rss, mode=0o444, start=100):
    d = procfs / str(pid)
    d.mkdir()
    for fname, text in (("stat", STAT.format(pid=pid, name=name, utime=50, stime=10, rss=rss, start=start)),
                        ("status", f"Name:\t{name}\nUid:\t0\t0\t0\t0\nGid:\t0\t0\t0\t0\n"),
                        ("cgroup", "0::/system.slice/secret.service\n"),
                        ("cmdline", f"/usr/bin/{name}\0--password\0hunter2\0")):
        (d / fname).write_text(text)
        os.chmod(d / fname, 0o444 if fname == "stat" else mode)
    return d


def drop_read_privileges():
    """A command prefix that takes root's read-anything capabilities away (nothing as a user)."""
    if os.geteuid() != 0:
        return ()
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.fail("setpriv (util-linux) is needed to drop root's capabilities")
    return (setpriv, "--bounding-set=-dac_override,-dac_read_search,-sys_ptrace", "--")


def test_permission_denied_process_is_shown_with_what_can_be_read(tmp_path, exporter):
    procfs = copy_procfs(tmp_path)
    make_process(procfs, 4242, "secretive", rss=5000, mode=0o000)
    make_process(procfs, 4343, "open", rss=3000)
    prefix = drop_read_privileges()
    probe = subprocess.run([*prefix, "cat", str(procfs / "4242" / "status")], capture_output=True)
    assert probe.returncode != 0, "the test process can still read the denied file"
    import pwd
    me = pwd.getpwuid(os.geteuid()).pw_name
    exp = exporter(f"--path.procfs={procfs}", f"--path.sysfs={SYSFS}", "--no-collector.nvidia",
                   "--no-collector.nvidia_pcie", "--no-collector.gpu_process", env=FAST, prefix=prefix)
    m = exp.metrics()
    assert success(m, "process") == 1
    # stat is world-readable, so memory and name are known; the owner comes from the directory.
    assert rss(m, pid="4242", name="secretive", user=me, owner="") == 5000 * PAGE
    assert rss(m, pid="4343", name="open", user="root", owner="secret.service") == 3000 * PAGE


def test_processes_vanishing_mid_read(tmp_path, exporter):
    """Processes appear and vanish while the collector reads them: never a failure, never a half-read one."""
    procfs = copy_procfs(tmp_path)
    make_process(procfs, 100, "steady", rss=7000)
    exp = exporter(f"--path.procfs={procfs}", f"--path.sysfs={SYSFS}", *HOST_ONLY[1:],
                   "--no-collector.sensors", "--no-collector.rapl", "--no-collector.filesystem",
                   env={**FAST, "HOOFHEARTED_TIERS_IMPORTANT": "0.05"})
    stop = threading.Event()
    made = [0]

    def churn():
        pid = 20000
        while not stop.is_set():
            pid = pid + 1 if pid < 29999 else 20000
            d = procfs / str(pid)
            try:
                make_process(procfs, pid, f"brief{pid % 7}", rss=pid)
                stop.wait(0.01)   # long enough for some passes to see it whole, short enough to vanish mid-read
                shutil.rmtree(d)
            except OSError:
                shutil.rmtree(d, ignore_errors=True)
            made[0] += 1

    threads = [threading.Thread(target=churn, daemon=True) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        seen = 0
        deadline = time.monotonic() + 4
        while time.monotonic() < deadline:
            m = exp.metrics()
            assert success(m, "process") == 1
            for (name, labels), value in m.items():
                if name == "hoofhearted_process_resident_memory_bytes":
                    lab = dict(labels)
                    if lab["name"].startswith("brief"):
                        seen += 1
                        assert value == int(lab["pid"]) * PAGE, lab    # what its stat said, never 0
            assert rss(m, pid="100", name="steady", user="root", owner="secret.service") == 7000 * PAGE
            time.sleep(0.05)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert made[0] > 100 and seen > 0, (made, seen)   # churn overlapped the collector's passes


def fake_gpu_config(tmp_path, module):
    conf = tmp_path / "gpu.yml"
    conf.write_text(f"gpu: {{nvml_module: {module}}}\n")
    return conf


GPU_ONLY = ("--no-collector.process", "--no-collector.gpu_process", "--no-collector.amdgpu",
            "--no-collector.sensors", "--no-collector.rapl", "--no-collector.filesystem",
            "--no-collector.disk", "--no-collector.network")


def test_nvml_call_hanging_past_its_timeout(tmp_path, exporter):
    hang = tmp_path / "hang"
    exp = exporter(f"--config.file={fake_gpu_config(tmp_path, 'tests.hangnvml')}", *GPU_ONLY,
                   env={**FAST, "FAKENVML_HANG": str(hang)})
    m = exp.metrics()
    assert success(m, "nvidia") == 1
    assert sample(m, "hoofhearted_gpu_temperature_celsius", gpu="0",
                  uuid="GPU-00000000-0000-0000-0000-000000000000") is not None
    hang.touch()
    m = wait_for(exp, lambda m: success(m, "nvidia") == 0, what="nvidia to time out")
    before = last_success(m, "cpu")
    time.sleep(1.2)
    m = exp.metrics()
    assert success(m, "nvidia") == 0 and success(m, "cpu") == 1 and last_success(m, "cpu") > before
    hang.unlink()
    wait_for(exp, lambda m: success(m, "nvidia") == 1, what="nvidia to recover")
    rc, took = exp.terminate()
    assert rc == 0 and took < STOP_WITHIN, (rc, took)


def test_gpu_lost_and_back(tmp_path, exporter):
    control = tmp_path / "lost"
    exp = exporter(f"--config.file={fake_gpu_config(tmp_path, 'tests.fakenvml.lost')}", *GPU_ONLY,
                   env={**FAST, "FAKENVML_CONTROL": str(control)})
    h100 = dict(gpu="0", uuid="GPU-00000000-0000-0000-0000-000000000000")
    h200 = dict(gpu="1", uuid="GPU-00000000-0000-0000-0000-000000000001")
    m = exp.metrics()
    assert sample(m, "hoofhearted_gpu_up", **h100) == 1 and sample(m, "hoofhearted_gpu_up", **h200) == 1
    control.write_text("1\n")
    m = wait_for(exp, lambda m: sample(m, "hoofhearted_gpu_up", **h200) == 0, what="GPU 1 to be down")
    assert sample(m, "hoofhearted_gpu_up", **h100) == 1
    assert sample(m, "hoofhearted_gpu_temperature_celsius", **h100) is not None
    assert sample(m, "hoofhearted_gpu_temperature_celsius", **h200) is None     # no stale or fake value
    assert success(m, "cpu") == 1
    control.write_text("")
    m = wait_for(exp, lambda m: sample(m, "hoofhearted_gpu_up", **h200) == 1, timeout=20, what="GPU 1 back")
    assert sample(m, "hoofhearted_gpu_temperature_celsius", **h200) is not None


def test_full_disk_for_logs(tmp_path, exporter):
    """stderr on a full device: every log write fails, the exporter serves and exits 0 all the same."""
    web = tmp_path / "web.yml"
    web.write_text("http_server_config: {headers: {X-Frame-Options: deny}}\n")
    sysfs = copy_sysfs(tmp_path)
    with open("/dev/full", "w") as full:
        exp = exporter(f"--path.sysfs={sysfs}", f"--web.config.file={web}", *HOST_ONLY,
                       "--log.level=debug", env=FAST, stderr=full)
    (sysfs / CORETEMP).unlink()
    (sysfs / CORETEMP).mkdir()
    (tmp_path / "proc-gone").mkdir()
    web.write_text("nonsense: true\n")              # a reload error to log
    os.kill(exp.proc.pid, signal.SIGHUP)
    for _ in range(20):
        m = exp.metrics()
        assert success(m, "cpu") == 1
        time.sleep(0.05)
    r = requests.get(exp.url + "/nope", timeout=5)
    assert r.status_code == 404 and r.headers["X-Frame-Options"] == "deny"
    rc, took = exp.terminate()
    assert rc == 0 and took < STOP_WITHIN, (rc, took)


def test_sigterm_under_scrape_load_exits_zero_within_two_seconds(exporter):
    exp = exporter(f"--path.sysfs={SYSFS}")
    stop = threading.Event()
    errors = []

    def scrape():
        s = requests.Session()
        while not stop.is_set():
            try:
                s.get(exp.url + "/metrics", timeout=2)
            except requests.RequestException:
                return
            except Exception as e:   # pragma: no cover - reported below
                errors.append(e)
                return

    threads = [threading.Thread(target=scrape, daemon=True) for _ in range(5)]
    for t in threads:
        t.start()
    time.sleep(0.5)
    rc, took = exp.terminate()
    stop.set()
    for t in threads:
        t.join(3)
    assert rc == 0 and took < STOP_WITHIN, (rc, took)
    assert not errors
