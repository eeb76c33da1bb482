"""Deployment files: the systemd unit is sandboxed and valid, the DaemonSet is read-only and sees the host."""
import os
import re
import shlex
import shutil
import subprocess
import sys

import pytest
import yaml

from conftest import ROOT, need_module, need_tool
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
    assert argv[0] == "/opt/hoofhearted/bin/hoofhearted"     # the venv README installs into
    run_parser().parse_args(argv[1:])      # raises on a flag the exporter does not know


def verifiable_unit(tmp_path):
    """The unit with ExecStart pointing at an executable that exists here (the checks look at it).
    tests/test_package.py verifies the unit unchanged against a real install."""
    exe = shutil.which("hoofhearted") or os.path.join(os.path.dirname(sys.executable), "hoofhearted")
    assert os.access(exe, os.X_OK), exe
    text = open(UNIT).read().replace("/opt/hoofhearted/bin/hoofhearted", exe)
    path = tmp_path / "hoofhearted.service"
    path.write_text(text)
    return path


def test_systemd_security_exposure(tmp_path):
    tool = need_tool("systemd-analyze")       # Debian 12's systemd 252 has security --offline
    path = verifiable_unit(tmp_path)
    r = subprocess.run([tool, "security", "--offline=yes", str(path)], capture_output=True, text=True, cwd=tmp_path)
    m = re.search(r"Overall exposure level for hoofhearted\.service: ([0-9.]+)", r.stdout + r.stderr)
    assert m, r.stdout + r.stderr
    assert float(m.group(1)) <= 3.0      # "OK" on systemd's 0-10 scale


def kube_docs():
    with open(DAEMONSET) as f:
        return [d for d in yaml.safe_load_all(f) if d]


def kube(kind, name=None):
    docs = [d for d in kube_docs() if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(docs) == 1, (kind, name)
    return docs[0]


GPU_LABEL = "nvidia.com/gpu.present"
VARIANTS = ("hoofhearted", "hoofhearted-gpu")


def test_manifest_passes_the_kubernetes_schemas_offline():
    validate = need_module("kubernetes_validate", "validate")
    from kubernetes_validate import utils
    versions = ("1.28.0", utils.latest_version())       # oldest supported upstream then, and newest
    for doc in kube_docs():
        for version in versions:
            validate(doc, version, strict=True)          # raises on an unknown or mistyped field
    bad = kube("DaemonSet", "hoofhearted")
    bad["spec"]["template"]["spec"]["hostPid"] = True    # a typo the API server would drop silently
    with pytest.raises(utils.ValidationError):
        validate(bad, versions[-1], strict=True)


def test_manifest_kinds():
    assert sorted((d["kind"], d["metadata"]["name"]) for d in kube_docs()) == [
        ("DaemonSet", "hoofhearted"), ("DaemonSet", "hoofhearted-gpu"), ("Namespace", "monitoring"),
        ("Service", "hoofhearted")]


def matches(pod, node_labels):
    """Whether a pod's nodeSelector and required node affinity admit a node with these labels."""
    if any(node_labels.get(k) != v for k, v in (pod.get("nodeSelector") or {}).items()):
        return False
    required = (((pod.get("affinity") or {}).get("nodeAffinity") or {})
                .get("requiredDuringSchedulingIgnoredDuringExecution"))
    if not required:
        return True
    ops = {"In": lambda k, v: k in node_labels and node_labels[k] in v,
           "NotIn": lambda k, v: k not in node_labels or node_labels[k] not in v,
           "Exists": lambda k, v: k in node_labels, "DoesNotExist": lambda k, v: k not in node_labels}
    return any(all(ops[e["operator"]](e["key"], e.get("values")) for e in term["matchExpressions"])
               for term in required["nodeSelectorTerms"])


def test_gpu_nodes_get_the_gpu_variant_every_other_node_the_plain_one():
    pods = {n: kube("DaemonSet", n)["spec"]["template"]["spec"] for n in VARIANTS}
    for labels, wanted in (({GPU_LABEL: "true"}, "hoofhearted-gpu"), ({GPU_LABEL: "false"}, "hoofhearted"),
                           ({}, "hoofhearted"), ({"kubernetes.io/os": "linux"}, "hoofhearted")):
        assert [n for n in VARIANTS if matches(pods[n], labels)] == [wanted], labels
    assert pods["hoofhearted-gpu"]["runtimeClassName"] == "nvidia"
    assert "runtimeClassName" not in pods["hoofhearted"]
    env = {e["name"] for e in pods["hoofhearted-gpu"]["containers"][0]["env"]}
    assert env == {"NVIDIA_VISIBLE_DEVICES", "NVIDIA_DRIVER_CAPABILITIES"}
    assert "env" not in pods["hoofhearted"]["containers"][0]
    # apart from where they run and the NVIDIA runtime, the two are the same
    cpu, gpu = (dict(pods[n]) for n in VARIANTS)
    for key in ("runtimeClassName", "nodeSelector", "affinity"):
        cpu.pop(key, None)
        gpu.pop(key, None)
    gpu["containers"] = [{k: v for k, v in gpu["containers"][0].items() if k != "env"}]
    assert cpu == gpu
    selectors = [kube("DaemonSet", n)["spec"]["selector"]["matchLabels"] for n in VARIANTS]
    assert selectors[0] != selectors[1]      # each DaemonSet owns only its own pods


@pytest.mark.parametrize("name", VARIANTS)
def test_daemonset_sees_the_host_read_only(name):
    ds = kube("DaemonSet", name)
    assert ds["apiVersion"] == "apps/v1"
    pod = ds["spec"]["template"]["spec"]
    assert pod["hostPID"] is True
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


def test_service_is_annotated_for_prometheus_and_selects_both_variants():
    svc, ns = kube("Service"), kube("Namespace")
    ann = svc["metadata"]["annotations"]
    assert ann["prometheus.io/scrape"] == "true" and ann["prometheus.io/path"] == "/metrics"
    (port,) = svc["spec"]["ports"]
    assert str(port["port"]) == ann["prometheus.io/port"]
    for name in VARIANTS:
        ds = kube("DaemonSet", name)
        assert svc["spec"]["selector"].items() <= ds["spec"]["template"]["metadata"]["labels"].items()
        assert svc["metadata"]["namespace"] == ds["metadata"]["namespace"] == ns["metadata"]["name"]
