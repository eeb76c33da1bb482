"""Configuration: precedence, validation, and one clear line with exit status 2 for bad input."""
import socket
import subprocess
import sys

import pytest

from conftest import ROOT
from exporter import config as cfgmod
from exporter.config import ConfigError


def run_cli(*args, env=None, timeout=20):
    base = {"PATH": "/usr/bin:/bin", "PYTHONUNBUFFERED": "1"}
    base.update(env or {})
    return subprocess.run([sys.executable, "-m", "exporter", *args], cwd=ROOT, env=base,
                          capture_output=True, text=True, timeout=timeout)


def write(tmp_path, text, name="hoofhearted.yml"):
    p = tmp_path / name
    p.write_text(text)
    return str(p)


def test_zero_config_defaults():
    cfg = cfgmod.build(environ={})
    assert cfg["web"]["listen_address"] == "127.0.0.1:10101"
    assert cfg["tiers"] == {"critical": 1.0, "important": 2.0, "standard": 5.0, "background": 10.0}
    assert cfg["collectors"]["sensors"] == {"enabled": True, "tier": "critical"}
    assert cfg["process"]["top_n"] == 10 and cfg["process"]["cmdline"] is False


def test_precedence_flag_over_env_over_file_over_default(tmp_path):
    f = write(tmp_path, "tiers: {critical: 0.5, standard: 7}\nweb: {listen_address: '127.0.0.1:1111'}\n"
                        "process: {top_n: 3}\n")
    env = {"HOOFHEARTED_TIERS_STANDARD": "8", "HOOFHEARTED_WEB_LISTEN_ADDRESS": "127.0.0.1:2222",
           "HOOFHEARTED_COLLECTORS_DISK_ENABLED": "false"}
    cfg = cfgmod.build(file=f, environ=env, flags={("web", "listen_address"): "127.0.0.1:3333"})
    assert cfg["tiers"]["critical"] == 0.5        # file
    assert cfg["tiers"]["standard"] == 8.0        # env beats file
    assert cfg["web"]["listen_address"] == "127.0.0.1:3333"   # flag beats env
    assert cfg["process"]["top_n"] == 3
    assert cfg["collectors"]["disk"]["enabled"] is False
    assert cfg["tiers"]["background"] == 10.0     # default


@pytest.mark.parametrize("text, message", [
    ("tiers: {critical: -1}\n", "tiers.critical: expected a positive number of seconds, got -1.0"),
    ("tiers: {critcal: 1}\n", "tiers.critcal: unknown key"),
    ("bogus: 1\n", "bogus: unknown key"),
    ("process: {top_n: ten}\n", "process.top_n: expected a non-negative integer, got 'ten'"),
    ("process: {cmdline: 'yes'}\n", "process.cmdline: expected true or false, got 'yes'"),
    ("web: {listen_address: 'nowhere'}\n", "web.listen_address: expected host:port, got 'nowhere'"),
    ("collectors: {gpu_magic: {enabled: true}}\n", "collectors.gpu_magic: unknown key"),
    ("collectors: {disk: {tier: fast}}\n", "collectors.disk.tier: expected one of critical, important"),
    ("tiers: [1, 2]\n", "tiers: expected a mapping, got list"),
    ("tiers: {critical: 1\n", "bad YAML"),
])
def test_bad_file_names_the_key(tmp_path, text, message):
    with pytest.raises(ConfigError) as e:
        cfgmod.build(file=write(tmp_path, text), environ={})
    assert message in str(e.value)


def test_bad_environment_names_the_variable():
    with pytest.raises(ConfigError, match="HOOFHEARTED_TIERS_CRITICAL: expected a positive number"):
        cfgmod.build(environ={"HOOFHEARTED_TIERS_CRITICAL": "soon"})
    with pytest.raises(ConfigError, match="HOOFHEARTED_NOPE: unknown environment variable"):
        cfgmod.build(environ={"HOOFHEARTED_NOPE": "1"})


def assert_one_line_exit_2(result, *words):
    assert result.returncode == 2, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    for w in words:
        assert w in lines[0]


def test_cli_bad_config_file(tmp_path):
    r = run_cli("--config.file", write(tmp_path, "tiers: {standard: 0}\n"))
    assert_one_line_exit_2(r, "tiers.standard", "positive")


def test_cli_unreadable_config_file(tmp_path):
    r = run_cli("--config.file", str(tmp_path / "missing.yml"))
    assert_one_line_exit_2(r, "missing.yml", "cannot read")


def test_cli_unknown_flag():
    r = run_cli("--web.listen-adress=127.0.0.1:1")
    assert_one_line_exit_2(r, "--web.listen-adress")


def test_cli_bad_flag_values_name_the_flag_as_typed():
    r = run_cli("--web.listen-address=localhost")
    assert_one_line_exit_2(r, "hoofhearted: error: --web.listen-address: expected host:port, got 'localhost'")
    r = run_cli("--web.max-requests=0")
    assert_one_line_exit_2(r, "hoofhearted: error: --web.max-requests: expected a positive integer, got 0")
    r = run_cli("--log.level=loud")
    assert_one_line_exit_2(r, "hoofhearted: error: --log.level: expected one of debug, info, warning, error")


def test_help_lists_every_collector_flag_both_ways():
    from exporter.collectors import REGISTRY
    r = run_cli("--help")
    assert r.returncode == 0
    for name in REGISTRY:
        assert f"--collector.{name}, --no-collector.{name}" in r.stdout, name


def test_cli_port_in_use():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen()
    port = s.getsockname()[1]
    try:
        r = run_cli(f"--web.listen-address=127.0.0.1:{port}", "--no-collector.filesystem")
    finally:
        s.close()
    assert_one_line_exit_2(r, f"127.0.0.1:{port}", "address already in use")


def test_check_config(tmp_path):
    good = run_cli("check-config", write(tmp_path, "process: {top_n: 5}\n"))
    assert good.returncode == 0 and "OK" in good.stdout
    bad = run_cli("check-config", write(tmp_path, "process: {top_m: 5}\n", "bad.yml"))
    assert_one_line_exit_2(bad, "process.top_m: unknown key")


def test_check_config_reports_every_error(tmp_path):
    path = write(tmp_path, "process: {top_m: 5, top_n: -1, cmdline: maybe}\ntiers: {critical: 0}\nbogus: 1\n"
                           "web: {listen_address: 'nowhere', max_requests: 8}\n")
    r = run_cli("check-config", path)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.splitlines() == [
        "hoofhearted: error: process.top_m: unknown key",
        "hoofhearted: error: process.top_n: expected a non-negative integer, got -1 (allowed: 0 to 1000)",
        "hoofhearted: error: process.cmdline: expected true or false, got 'maybe'",
        "hoofhearted: error: tiers.critical: expected a positive number of seconds, got 0.0 (allowed: 0.05 to 60)",
        "hoofhearted: error: bogus: unknown key",
        "hoofhearted: error: web.listen_address: expected host:port, got 'nowhere'",
    ]
    assert r.stdout == ""


def test_collector_flags_disable_and_enable(start_exporter):
    exp = start_exporter("--no-collector.disk", "--no-collector.network", "--collector.cpu")
    body = exp.scrape()
    assert 'hoofhearted_collector_success{collector="disk"}' not in body
    assert 'hoofhearted_collector_success{collector="cpu"} 1' in body
