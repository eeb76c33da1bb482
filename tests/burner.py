"""A CPU-burning child process with a known name, user, owner and secrets in its command line.

As root, the burner runs as user nobody inside a cgroup named like a Docker container's, so the
exporter has a real user and owner to find. Its name comes from the file name it is started
through (a symlink to a Python interpreter), so it is right from the first instruction.
"""
import os
import pwd
import random
import shutil
import signal
import string
import subprocess
import sys
import tempfile

CODE = """
import socket, sys
if sys.argv[1] != "-":
    s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
while True:
    pass
"""


def _world_executable(path):
    path = os.path.realpath(path)
    d = path
    while True:
        st = os.stat(d)
        if not st.st_mode & 0o001:
            return False
        if d == "/":
            return True
        d = os.path.dirname(d)


def _interpreter(other_user):
    for cand in (sys.executable, "/usr/bin/python3"):
        if cand and os.path.exists(cand) and (not other_user or _world_executable(cand)):
            return os.path.realpath(cand)
    return None


def _cgroup2_root():
    for base in ("/sys/fs/cgroup/unified", "/sys/fs/cgroup"):
        if os.path.exists(os.path.join(base, "cgroup.controllers")):
            return base
    return None


def _word(n=12):
    return "Zq" + "".join(random.choice(string.ascii_letters) for _ in range(n))


class Burner:
    def __init__(self, connect_port=None):
        self.name = "hhburn" + "".join(random.choice(string.digits) for _ in range(6))
        self.dir = tempfile.mkdtemp(prefix="hoofhearted-burner-")
        os.chmod(self.dir, 0o755)
        root = os.geteuid() == 0
        exe = _interpreter(other_user=root) if root else None
        self.uid = 65534 if exe else os.geteuid()
        exe = exe or os.path.realpath(sys.executable)
        self.user = pwd.getpwuid(self.uid).pw_name
        self.cgroup, self.owner = None, None
        container = "".join(random.choice("0123456789abcdef") for _ in range(64))
        base = _cgroup2_root() if root else None
        if base:
            try:
                parent = os.path.join(base, f"hoofhearted-test-{os.getpid()}")
                os.makedirs(parent, exist_ok=True)
                self.cgroup = os.path.join(parent, f"docker-{container}.scope")
                os.mkdir(self.cgroup)
                self.owner = "container/" + container[:12]
            except OSError:
                self.cgroup = None
        link = os.path.join(self.dir, self.name)
        os.symlink(exe, link)
        self.secrets = [_word() for _ in range(4)]
        self.argv = [link, "-c", CODE, str(connect_port) if connect_port else "-",
                     f"--password={self.secrets[0]}", "--token", self.secrets[1], f"PGPASSWORD={self.secrets[2]}",
                     f"https://bob:{self.secrets[3]}@example.com/feed"]
        self.proc = subprocess.Popen(self.argv, preexec_fn=self._child, start_new_session=True,
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.pid = self.proc.pid
        if self.owner is None:
            self.owner = self._plain_owner()

    def _child(self):
        if self.cgroup:
            with open(os.path.join(self.cgroup, "cgroup.procs"), "w") as f:
                f.write(str(os.getpid()))
        if self.uid != os.geteuid():
            os.setgroups([])
            os.setgid(self.uid)
            os.setuid(self.uid)

    def _plain_owner(self):
        """Without a cgroup of our own: "" when the burner sits in the root cgroup, else unknown (None)."""
        with open(f"/proc/{self.pid}/cgroup") as f:
            paths = [line.rstrip("\n").split(":", 2)[2] for line in f if line.count(":") >= 2]
        return "" if all(p == "/" for p in paths) else None

    def stop(self):
        if self.proc.poll() is None:
            os.killpg(self.pid, signal.SIGKILL)
        self.proc.wait()

    def close(self):
        self.stop()
        if self.cgroup:
            for d in (self.cgroup, os.path.dirname(self.cgroup)):
                try:
                    os.rmdir(d)
                except OSError:
                    pass
        shutil.rmtree(self.dir, ignore_errors=True)
