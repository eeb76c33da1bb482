"""The real exporter over HTTP: formats, encodings, endpoints, lint and duplicate checks."""
import gzip
import http.client
import subprocess
import time

import requests

from conftest import SYSFS, parse_exposition, sample

FIXTURE_ARGS = (f"--path.sysfs={SYSFS}",)


def test_metrics_text_format_and_values(start_exporter):
    exp = start_exporter(*FIXTURE_ARGS)
    r = exp.get("/metrics")
    assert r.status_code == 200
    assert r.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
    m = parse_exposition(r.text)
    assert sample(m, "hoofhearted_temperature_celsius", chip="platform_coretemp_0", sensor="temp1",
                  label="Physical id 0") == 55
    assert sample(m, "hoofhearted_fan_speed_rpm", chip="nct6779", fan="fan2", label="") == 1098
    assert sample(m, "hoofhearted_cpu_energy_joules_total", domain="package-0") == 240422.366267
    for name in ("cpu", "memory", "sensors", "rapl", "disk", "network", "filesystem"):
        assert sample(m, "hoofhearted_collector_success", collector=name) == 1, name
    from exporter import __version__
    build = [k for k in m if k[0] == "hoofhearted_build_info"]
    assert len(build) == 1 and ("version", __version__) in build[0][1]


def test_gzip_and_openmetrics_negotiation(start_exporter):
    exp = start_exporter(*FIXTURE_ARGS)
    r = requests.get(exp.url + "/metrics", headers={"Accept-Encoding": "gzip"}, stream=True, timeout=5)
    raw = r.raw.read()
    assert r.headers["Content-Encoding"] == "gzip"
    assert b"hoofhearted_temperature_celsius" in gzip.decompress(raw)
    plain = requests.get(exp.url + "/metrics", headers={"Accept-Encoding": "identity"}, timeout=5)
    assert "Content-Encoding" not in plain.headers
    om = requests.get(exp.url + "/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"},
                      timeout=5)
    assert om.headers["Content-Type"].startswith("application/openmetrics-text; version=1.0.0")
    assert om.text.endswith("# EOF\n")
    from prometheus_client.openmetrics.parser import text_string_to_metric_families
    fams = {f.name: f for f in text_string_to_metric_families(om.text)}
    assert fams["hoofhearted_cpu_energy_joules"].type == "counter"


def test_endpoints_and_methods(start_exporter):
    exp = start_exporter(*FIXTURE_ARGS)
    landing = exp.get("/")
    assert landing.status_code == 200 and 'href="metrics"' in landing.text
    from exporter import __version__
    assert __version__ in landing.text
    assert exp.get("/-/healthy").status_code == 200
    assert exp.get("/-/ready").status_code == 200
    assert exp.get("/nope").status_code == 404
    assert exp.get("/metrics/../etc/passwd").status_code == 404
    assert exp.session.post(exp.url + "/metrics", timeout=5).status_code == 405
    assert exp.session.delete(exp.url + "/", timeout=5).status_code == 405
    head = exp.session.head(exp.url + "/metrics", timeout=5)
    assert head.status_code == 200 and int(head.headers["Content-Length"]) > 1000 and head.content == b""


def test_keep_alive_scrapes_do_not_stall(start_exporter):
    """Headers and body go out in one write: no 40 ms Nagle/delayed-ACK stall per scrape."""
    exp = start_exporter(*FIXTURE_ARGS)
    host, port = exp.address.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=5)
    times = []
    for _ in range(30):
        t = time.perf_counter()
        conn.request("GET", "/metrics", headers={"Accept-Encoding": "gzip"})
        resp = conn.getresponse()
        resp.read()
        times.append(time.perf_counter() - t)
        assert resp.status == 200
    conn.close()
    # with the stall every request waits out the client's 40 ms delayed ACK; the fastest one shows
    # it whatever the load
    assert min(times) < 0.02, times


def test_promtool_check_metrics_is_clean(start_exporter, require_tool):
    promtool = require_tool("promtool")
    exp = start_exporter(*FIXTURE_ARGS)
    time.sleep(1.2)   # let rates appear
    body = exp.scrape()
    parse_exposition(body)     # no duplicate series
    r = subprocess.run([promtool, "check", "metrics"], input=body, capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout == "" and r.stderr == "", r.stdout + r.stderr


def test_targets_for_prometheus_http_discovery(start_exporter, tmp_path):
    """/api/targets: the address Prometheus asked by, and the host's name from the mounted root."""
    root = tmp_path / "host"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "hostname").write_text("gpu-box-07\n")
    exp = start_exporter(*FIXTURE_ARGS, f"--path.rootfs={root}")
    address = exp.url.split("//", 1)[1]
    r = exp.get("/api/targets")
    assert r.status_code == 200 and r.headers["Content-Type"] == "application/json"
    assert r.json() == [{"targets": [address], "labels": {"host": "gpu-box-07"}}]
    assert requests.get(exp.url + "/api/verdict", timeout=5).json()["host"] == "gpu-box-07"
    for bad in ("exporter", 'x"y:1', "a b:10101", "exporter:10101, evil:1"):
        r = requests.get(exp.url + "/api/targets", headers={"Host": bad}, timeout=5)
        assert (r.status_code, r.text) == (400, "a Host header of host:port is needed\n"), bad
    r = requests.get(exp.url + "/api/targets", headers={"Host": "[::1]:10101"}, timeout=5)
    assert r.json()[0]["targets"] == ["[::1]:10101"]
