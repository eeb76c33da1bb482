"""docker-compose.yml, the Dockerfile and .env.example.

No Docker engine runs here, so the stack is checked without one: the compose file against the
compose specification's JSON schema (check-jsonschema; the same schema Compose v2's own loader,
compose-go, validates with: neither compose-go nor Compose v2 is packaged in Debian 12 or on
PyPI, and Debian's docker-compose 1.29 rejects the file's top-level `name:`), every mounted file
and path the services read against the repository, the exporter's container command against the
exporter's own flag parser, and the Alertmanager secrets entrypoint run for real with sh.
"""
import glob
import os
import re
import shutil
import stat
import subprocess
import sys

import pytest
import yaml

from conftest import IN_CI, ROOT
from exporter import cli

COMPOSE = os.path.join(ROOT, "docker-compose.yml")
EXPORTERS = ("exporter", "exporter-gpu")


def load():
    with open(COMPOSE) as f:
        return yaml.safe_load(f)


def services():
    return load()["services"]


def binds(service):
    """{repo-relative source: container target} of the bind mounts of a service."""
    out = {}
    for v in service.get("volumes", []):
        if isinstance(v, dict) and v["type"] == "bind":
            out[v["source"]] = v["target"]
    return out


def check_jsonschema():
    path = shutil.which("check-jsonschema") or os.path.join(os.path.dirname(sys.executable), "check-jsonschema")
    if os.path.exists(path):
        return path
    msg = "check-jsonschema is not installed (pip install -e '.[test]')"
    if IN_CI:
        pytest.fail(msg)
    pytest.skip(msg)


def validate(path):
    return subprocess.run([check_jsonschema(), "--builtin-schema", "vendor.compose-spec", path],
                          capture_output=True, text=True, timeout=120)


def test_compose_file_is_valid_against_the_compose_spec():
    r = validate(COMPOSE)
    assert r.returncode == 0, r.stdout + r.stderr


def test_the_schema_check_catches_a_mistake(tmp_path):
    bad = tmp_path / "docker-compose.yml"
    with open(COMPOSE) as f:
        bad.write_text(f.read().replace("    restart: unless-stopped", "    restrat: unless-stopped", 1))
    r = validate(str(bad))
    assert r.returncode != 0 and "restrat" in r.stdout + r.stderr


def test_published_ports_are_bound_to_loopback():
    published = 0
    for name, svc in services().items():
        for port in svc.get("ports", []):
            assert isinstance(port, str) and port.startswith("127.0.0.1:"), f"{name}: {port}"
            published += 1
    assert published == 5  # two exporter variants (one runs), Prometheus, Alertmanager, Grafana


def test_exporter_sees_the_host_read_only():
    for name in EXPORTERS:
        svc = services()[name]
        assert svc["pid"] == "host", name
        mounts = {v["source"]: v for v in svc["volumes"]}
        for source, target in (("/proc", "/host/proc"), ("/sys", "/host/sys"), ("/", "/host/root")):
            assert mounts[source]["target"] == target and mounts[source]["read_only"] is True, (name, source)
        assert svc["read_only"] is True
        assert "ALL" in svc["cap_drop"]


def test_exporter_command_is_one_the_exporter_accepts():
    """The compose command and the image's CMD parse with the real flag parser into the /host paths."""
    with open(os.path.join(ROOT, "Dockerfile")) as f:
        dockerfile = f.read()
    assert re.search(r"^FROM python:3\.12-slim$", dockerfile, re.M)
    assert re.search(r"^RUN pip install \.", dockerfile, re.M)
    cmd = yaml.safe_load(re.search(r"^CMD (\[.*\])$", dockerfile, re.M).group(1))
    assert re.search(r'^ENTRYPOINT \["hoofhearted"\]$', dockerfile, re.M)
    for argv in [cmd] + [services()[n]["command"] for n in EXPORTERS]:
        cfg = cli.parse_run_args(argv, {})
        assert cfg["web"]["listen_address"] == "0.0.0.0:10101"
        assert cfg["paths"] == {"procfs": "/host/proc", "sysfs": "/host/sys", "rootfs": "/host/root"}


def test_gpu_profile_reserves_nvidia_gpus_and_plain_profile_does_not():
    svc = services()
    assert svc["exporter"]["profiles"] == ["cpu"] and "deploy" not in svc["exporter"]
    assert svc["exporter-gpu"]["profiles"] == ["gpu"]
    devices = svc["exporter-gpu"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": "all", "capabilities": ["gpu", "utility"]}]
    for name in EXPORTERS:  # Prometheus scrapes "exporter" whichever variant runs
        assert svc[name]["networks"]["default"]["aliases"] == ["exporter"]
    for name, s in svc.items():
        if name not in EXPORTERS:
            assert "profiles" not in s, f"{name} must run in every profile"


def test_data_lives_in_named_volumes():
    doc = load()
    assert set(doc["volumes"]) == {"prometheus-data", "alertmanager-data", "grafana-data"}
    svc = doc["services"]
    assert "prometheus-data:/prometheus" in svc["prometheus"]["volumes"]
    assert "alertmanager-data:/alertmanager" in svc["alertmanager"]["volumes"]
    assert "grafana-data:/var/lib/grafana" in svc["grafana"]["volumes"]


def test_every_bind_mount_source_is_in_the_repository():
    for name, svc in services().items():
        for source in binds(svc):
            if source.startswith("./"):
                assert os.path.exists(os.path.join(ROOT, source)), f"{name}: {source} is missing"


def container_to_repo(svc, path):
    """A path inside a service's container, as a repository path through its bind mounts."""
    for source, target in sorted(binds(svc).items(), key=lambda kv: -len(kv[1])):
        if source.startswith("./") and (path == target or path.startswith(target + "/")):
            return os.path.normpath(os.path.join(ROOT, source, os.path.relpath(path, target)))
    return None


def flag(svc, name):
    return next(a.split("=", 1)[1] for a in svc["command"] if a.startswith(f"--{name}="))


def test_prometheus_finds_its_config_rules_and_targets_through_the_mounts():
    svc = services()["prometheus"]
    config_path = flag(svc, "config.file")
    config_file = container_to_repo(svc, config_path)
    assert config_file == os.path.join(ROOT, "prometheus", "prometheus.yml")
    with open(config_file) as f:
        config = yaml.safe_load(f)
    base = os.path.dirname(config_path)
    for pattern in config["rule_files"]:
        repo = container_to_repo(svc, os.path.normpath(os.path.join(base, pattern)))
        assert repo and glob.glob(repo), f"rule_files {pattern}: nothing mounted there"
    job = next(j for j in config["scrape_configs"] if j["job_name"] == "hoofhearted")
    targets = []
    for sd in job.get("file_sd_configs", []):
        for pattern in sd["files"]:
            for path in glob.glob(container_to_repo(svc, os.path.join(base, pattern))):
                with open(path) as f:
                    targets += [t for group in yaml.safe_load(f) for t in group["targets"]]
    for sc in job.get("static_configs", []):
        targets += sc["targets"]
    # the stack's exporter is found through its own discovery endpoint, which names the host
    assert [sd["url"] for sd in job["http_sd_configs"]] == ["http://exporter:10101/api/targets"]
    assert "exporter:10101" not in targets       # not twice, once as "exporter"
    assert config["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"] == ["alertmanager:9093"]


def run_alertmanager_entrypoint(tmp_path, env):
    """The compose entrypoint, run here with the secrets tmpfs and the config mount as directories:
    returns (the flags it would start Alertmanager with, the secrets directory)."""
    svc = services()["alertmanager"]
    script = svc["entrypoint"][2].replace("$$", "$")
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    config_dir = container_to_repo(svc, "/etc/alertmanager/config")
    assert config_dir == os.path.join(ROOT, "alerting")
    script = script.replace("/etc/alertmanager/secrets", str(secrets)).replace(
        "/etc/alertmanager/config", config_dir).replace("exec /bin/alertmanager", "exec printf '%s\\n'")
    r = subprocess.run(["sh", "-c", script, "alertmanager", *svc["command"]],
                       env={"PATH": os.environ["PATH"], **env}, capture_output=True, text=True, timeout=10)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == svc["command"]  # the flags reach Alertmanager unchanged
    return svc, secrets


def test_alertmanager_reads_the_secret_files_the_entrypoint_writes(tmp_path):
    env = {"SLACK_WEBHOOK_URL": "https://hooks.slack.example/T/B/x",
           "DISCORD_WEBHOOK_URL": "https://discord.example/api/webhooks/1/y/slack"}
    svc, secrets = run_alertmanager_entrypoint(tmp_path, env)
    assert flag(svc, "config.file") == "/etc/alertmanager/secrets/alertmanager.yml"
    with open(os.path.join(ROOT, "alerting", "alertmanager.yml")) as f:
        wanted = set(re.findall(r"/etc/alertmanager/secrets/(\w+)", f.read()))
    assert {"slack_webhook_url", "discord_webhook_url"} <= wanted
    written = {p.name: p for p in secrets.iterdir()}
    assert wanted <= set(written), f"never written: {wanted - set(written)}"
    assert written["slack_webhook_url"].read_text() == env["SLACK_WEBHOOK_URL"]
    assert written["discord_webhook_url"].read_text() == env["DISCORD_WEBHOOK_URL"]
    assert written["telegram_bot_token"].read_text() == ""
    for p in written.values():
        assert stat.S_IMODE(p.stat().st_mode) == 0o600, p.name
    # Every variable the script reads is passed into the container.
    script = svc["entrypoint"][2].replace("$$", "$")
    assert set(re.findall(r"\$\{(\w+):-\}", script)) == set(svc["environment"])


@pytest.mark.parametrize("given", [(), ("slack",), ("discord", "pagerduty"), ("slack", "discord", "pagerduty")])
def test_alertmanager_gets_only_the_integrations_with_a_secret(tmp_path, require_tool, given):
    """.env leaves unused integrations empty: they are left out of the config Alertmanager runs,
    instead of failing every notification (and keeping AlertNotificationsFailing firing)."""
    amtool = require_tool("amtool")
    env = {"SLACK_WEBHOOK_URL": "https://hooks.slack.example/T/B/x" if "slack" in given else "",
           "DISCORD_WEBHOOK_URL": "https://discord.example/api/webhooks/1/y" if "discord" in given else "",
           "PAGERDUTY_ROUTING_KEY": "0123456789abcdef0123456789abcdef" if "pagerduty" in given else ""}
    _, secrets = run_alertmanager_entrypoint(tmp_path, env)
    config = secrets / "alertmanager.yml"
    r = subprocess.run([amtool, "check-config", str(config)], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stdout + r.stderr
    cfg = yaml.safe_load(config.read_text())
    receivers = {rc["name"]: rc for rc in cfg["receivers"]}
    urls = lambda name: [c["api_url_file"].rsplit("/", 1)[1] for c in receivers[name].get("slack_configs") or []]  # noqa: E731
    chat = [f"{k}_webhook_url" for k in ("slack", "discord") if k in given]
    assert urls("critical") == chat and urls("warning") == chat
    pager_routes = [rt for rt in cfg["route"]["routes"] if rt["receiver"] == "pager"]
    assert bool(pager_routes) == ("pagerduty" in given)
    assert bool(receivers["pager"].get("pagerduty_configs")) == ("pagerduty" in given)
    # the templates and everything else are the repository's
    assert cfg["templates"][0] == os.path.join(ROOT, "alerting", "templates", "*.tmpl")
    full = yaml.safe_load(open(os.path.join(ROOT, "alerting", "alertmanager.yml")))
    assert cfg["inhibit_rules"] == full["inhibit_rules"]
    assert [rt for rt in cfg["route"]["routes"] if rt["receiver"] != "pager"] == \
        [rt for rt in full["route"]["routes"] if rt["receiver"] != "pager"]


def test_grafana_is_provisioned_with_min_refresh_and_a_home_dashboard():
    svc = services()["grafana"]
    env = svc["environment"]
    assert env["GF_SECURITY_ADMIN_PASSWORD"].startswith("${GRAFANA_ADMIN_PASSWORD:?")
    assert env["GF_DASHBOARDS_MIN_REFRESH_INTERVAL"] == "1s"
    home = container_to_repo(svc, env["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"])
    assert home == os.path.join(ROOT, "grafana", "dashboards", "home.json")
    with open(os.path.join(ROOT, "grafana", "provisioning", "datasources", "hoofhearted.yml")) as f:
        sources = {d["type"]: d["url"] for d in yaml.safe_load(f)["datasources"]}
    for kind, service, port in (("prometheus", "prometheus", 9090), ("alertmanager", "alertmanager", 9093)):
        assert sources[kind] == f"http://{service}:{port}"
        assert services()[service]["ports"][0].endswith(f":{port}")


def test_env_example_documents_every_variable_and_env_is_ignored():
    with open(COMPOSE) as f:
        text = f.read()
    used = set(re.findall(r"\$\{(\w+)", text.replace("$$", "")))
    for svc in services().values():
        env = svc.get("environment", [])
        if isinstance(env, list):  # bare names pass the value from .env through
            used |= {e for e in env if "=" not in e}
    with open(os.path.join(ROOT, ".env.example")) as f:
        documented = set(re.findall(r"^#?(\w+)=", f.read(), re.M))
    assert used - documented == set(), f"not in .env.example: {used - documented}"
    assert "COMPOSE_PROFILES" in documented
    ignored = subprocess.run(["git", "check-ignore", "-q", ".env"], cwd=ROOT)
    assert ignored.returncode == 0, ".env must be git-ignored"
    assert subprocess.run(["git", "check-ignore", "-q", ".env.example"], cwd=ROOT).returncode == 1
