"""Deployment files: the systemd unit is sandboxed and valid, the DaemonSet is read-only and sees the host."""
import os
import re
import shlex
import shutil
import subprocess
import sys

import pytest
import yaml

from conftest import ROOT
from exporter.cli import run_parser

UNIT = os.path.join(ROOT, "deploy", "systemd", "hoofhearted.service")
DAEMONSET = os.path.join(ROOT, "deploy", "kubernetes", "daemonset.yaml")


def unit_directives():
    """{(section, key): [values]} of the unit file."""
    out, section = {}, None
    with open(UNIT) as f:
        for line in f:
            line = line.strip()
            if not line or line.startswith(("#", ";")):
                continue
            if line.startswith("["):
                section = line.strip("[]")
                continue
            key, _, value = line.partition("=")
            out.setdefault((section, key.strip()), []).append(value.strip())
    return out


def test_unit_sandboxing():
    d = unit_directives()
    one = {k: v[-1] for k, v in d.items()}
    assert one[("Service", "DynamicUser")] == "yes"
    assert one[("Service", "ProtectSystem")] == "strict"
    assert one[("Service", "ProtectHome")] in ("yes", "read-only", "tmpfs")
    assert one[("Service", "NoNewPrivileges")] == "yes"
    assert one[("Service", "PrivateTmp")] == "yes"
    assert set(one[("Service", "CapabilityBoundingSet")].split()) == {"CAP_SYS_PTRACE", "CAP_DAC_READ_SEARCH"}
    assert set(one[("Service", "AmbientCapabilities")].split()) <= {"CAP_SYS_PTRACE", "CAP_DAC_READ_SEARCH"}
    assert one.get(("Service", "ProtectProc"), "default") != "invisible"   # other users' processes stay visible
    assert one.get(("Service", "PrivateDevices"), "no") == "no"   # GPUs are device nodes
    assert one[("Service", "ExecReload")] == "/bin/kill -HUP $MAINPID"
    assert one[("Install", "WantedBy")] == "multi-user.target"


def test_unit_command_line_is_a_valid_one():
    exec_start = unit_directives()[("Service", "ExecStart")][-1]
    argv = shlex.split(exec_start.replace("$ARGS", ""))
    assert argv[0] == "/usr/local/bin/hoofhearted"
    run_parser().parse_args(argv[1:])      # raises on a flag the exporter does not know


def verifiable_unit(tmp_path):
    """The unit with ExecStart pointing at an executable that exists here (verify checks it)."""
    exe = shutil.which("hoofhearted") or os.path.join(os.path.dirname(sys.executable), "hoofhearted")
    assert os.access(exe, os.X_OK), exe
    text = open(UNIT).read().replace("/usr/local/bin/hoofhearted", exe)
    path = tmp_path / "hoofhearted.service"
    path.write_text(text)
    return path


def test_systemd_analyze_verify(tmp_path):
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze is not installed (the directives are checked above)")
    path = verifiable_unit(tmp_path)
    r = subprocess.run([tool, "verify", str(path)], capture_output=True, text=True, cwd=tmp_path)
    ours = [line for line in (r.stdout + r.stderr).splitlines() if "hoofhearted" in line]
    assert r.returncode == 0 and not ours, r.stdout + r.stderr
    # verify only warns about unknown or bad keys: make sure it would have told us.
    bad = tmp_path / "bad.service"
    bad.write_text(path.read_text().replace("ProtectSystem=strict", "ProtectSystm=strict"))
    r = subprocess.run([tool, "verify", str(bad)], capture_output=True, text=True, cwd=tmp_path)
    assert "ProtectSystm" in r.stdout + r.stderr


def test_systemd_security_exposure(tmp_path):
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze is not installed")
    path = verifiable_unit(tmp_path)
    r = subprocess.run([tool, "security", "--offline=yes", str(path)], capture_output=True, text=True, cwd=tmp_path)
    if "--offline" in r.stderr and r.returncode != 0:
        pytest.skip("systemd-analyze security --offline needs systemd 252 or later")
    m = re.search(r"Overall exposure level for hoofhearted\.service: ([0-9.]+)", r.stdout + r.stderr)
    assert m, r.stdout + r.stderr
    assert float(m.group(1)) <= 3.0      # "OK" on systemd's 0-10 scale


def kube_docs():
    with open(DAEMONSET) as f:
        return [d for d in yaml.safe_load_all(f) if d]


def test_daemonset_sees_the_host_read_only():
    docs = {d["kind"]: d for d in kube_docs()}
    assert set(docs) == {"Namespace", "DaemonSet", "Service"}
    ds = docs["DaemonSet"]
    assert ds["apiVersion"] == "apps/v1"
    pod = ds["spec"]["template"]["spec"]
    assert pod["hostPID"] is True
    assert pod["runtimeClassName"] == "nvidia"
    assert pod["automountServiceAccountToken"] is False
    labels = ds["spec"]["template"]["metadata"]["labels"]
    assert ds["spec"]["selector"]["matchLabels"].items() <= labels.items()
    (c,) = pod["containers"]
    sc = c["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert set(sc["capabilities"]["add"]) <= {"SYS_PTRACE", "DAC_READ_SEARCH"}
    assert sc.get("privileged", False) is False
    volumes = {v["name"]: v for v in pod["volumes"]}
    # a small scratch directory in memory for FreeIPMI's SDR cache is the only writable path
    assert volumes.pop("tmp") == {"name": "tmp", "emptyDir": {"medium": "Memory", "sizeLimit": "4Mi"}}
    mounts = {m["name"]: m for m in c["volumeMounts"] if m["name"] != "tmp"}
    assert {volumes[n]["hostPath"]["path"] for n in mounts} == {"/proc", "/sys", "/"}
    assert all(m["readOnly"] is True for m in mounts.values())
    paths = {volumes[n]["hostPath"]["path"]: m["mountPath"] for n, m in mounts.items()}
    args = run_parser().parse_args(c["args"])       # flags the exporter knows
    assert vars(args)["path.procfs"] == paths["/proc"]
    assert vars(args)["path.sysfs"] == paths["/sys"]
    assert vars(args)["path.rootfs"] == paths["/"]
    port = vars(args)["web.listen_address"].rsplit(":", 1)[1]
    assert {p["containerPort"] for p in c["ports"]} == {int(port)}
    assert c["livenessProbe"]["httpGet"]["path"] == "/-/healthy"
    assert c["readinessProbe"]["httpGet"]["path"] == "/-/ready"
    assert "memory" in c["resources"]["limits"] and "cpu" in c["resources"]["requests"]


def test_service_is_annotated_for_prometheus():
    docs = {d["kind"]: d for d in kube_docs()}
    svc, ds = docs["Service"], docs["DaemonSet"]
    ann = svc["metadata"]["annotations"]
    assert ann["prometheus.io/scrape"] == "true" and ann["prometheus.io/path"] == "/metrics"
    assert svc["spec"]["selector"].items() <= ds["spec"]["template"]["metadata"]["labels"].items()
    (port,) = svc["spec"]["ports"]
    assert str(port["port"]) == ann["prometheus.io/port"]
    assert svc["metadata"]["namespace"] == ds["metadata"]["namespace"] == docs["Namespace"]["metadata"]["name"]
