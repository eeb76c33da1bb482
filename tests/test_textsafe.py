"""Names on their way to a terminal or a log: no escape sequence or line break gets through raw."""
import logging
import subprocess
import sys
import time

import pytest

from conftest import ROOT, SYSFS, parse_exposition
from exporter import textsafe
from exporter.cli import LogfmtFormatter

HOSTILE = "\x1bc\nFans: all OK"         # 15 characters: fits in a process name (comm); ESC c resets the terminal


@pytest.mark.parametrize("text, shown", [
    ("plain name", "plain name"),
    ("naïve café 日本", "naïve café 日本"),
    (HOSTILE, "?c?Fans: all OK"),
    ("x\x1b[2J\x1b]0;title\x07", "x?[2J?]0;title?"),
    ("a\tb\rc\x00d\x7fe\x9bf", "a?b?c?d?e?f"),
    ("line\u2028sep\u202eevil\u2066", "line?sep?evil?"),
    ("caf\udce9", "caf?"),
])
def test_terminal_shows_control_characters_as_ps_does(text, shown):
    assert textsafe.terminal(text) == shown


@pytest.mark.parametrize("value, quoted", [
    ("cpu", "cpu"),
    ("", '""'),
    ("two words", '"two words"'),
    ("a=b", '"a=b"'),
    ('say "hi"', '"say \\"hi\\""'),
    ("back\\slash", '"back\\\\slash"'),
    (HOSTILE, '"\\x1bc\\nFans: all OK"'),
    ("\u2028", '"\\u2028"'),
])
def test_logfmt_quote(value, quoted):
    assert textsafe.quote(value) == quoted


def record(msg, *args, level=logging.INFO):
    return logging.LogRecord("hoofhearted.test", level, __file__, 1, msg, args, None)


def test_logfmt_formatter_quotes_each_value():
    fmt = LogfmtFormatter()
    line = fmt.format(record("collector failed collector=%s err=%r", "process", "OSError: no such file"))
    assert line.endswith(' level=info logger=hoofhearted.test msg="collector failed" collector=process '
                         'err="OSError: no such file"')
    line = fmt.format(record("process named %s name=%s pid=%d", HOSTILE, HOSTILE, 7))
    assert "\n" not in line and "\x1b" not in line
    assert line.endswith('msg="process named \\x1bc\\nFans: all OK" name="\\x1bc\\nFans: all OK" pid=7')
    line = fmt.format(record("web config loaded file=%s %s", "/etc/a b/web.yml", "tls=off basic_auth_users=0"))
    assert line.endswith('msg="web config loaded" file="/etc/a b/web.yml" tls=off basic_auth_users=0')
    assert fmt.format(record("100%% done")).endswith('msg="100% done"')
    assert fmt.format(record("shutting down")).endswith('msg="shutting down"')


def test_log_lines_of_the_real_process_quote_paths_with_spaces(tmp_path, start_exporter):
    d = tmp_path / "web config"
    d.mkdir()
    web = d / "web.yml"
    web.write_text("http_server_config: {headers: {X-Frame-Options: deny}}\n")
    exp = start_exporter(f"--path.sysfs={SYSFS}", f"--web.config.file={web}")
    (line,) = [x for x in exp.lines if "web config loaded" in x]
    assert f'msg="web config loaded" file="{web}" tls=off ' in line


def test_why_does_not_print_escape_sequences_from_a_process_name(start_exporter):
    """A process that names itself "x<ESC>[2J<LF>Fans: all OK" cannot clear the admin's screen
    or forge a line in `hoofhearted why`."""
    code = ("import sys\nopen('/proc/self/comm', 'w').write(sys.argv[1])\nprint('named', flush=True)\n"
            "while True:\n    pass\n")
    proc = subprocess.Popen([sys.executable, "-c", code, HOSTILE], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline() == "named\n"
        with open(f"/proc/{proc.pid}/comm", "rb") as f:
            assert f.read() == HOSTILE.encode() + b"\n"
        exp = start_exporter(f"--path.sysfs={SYSFS}")
        deadline = time.monotonic() + 20
        while True:
            parsed = parse_exposition(exp.scrape())
            if any(n == "hoofhearted_process_cpu_usage_cores" and dict(labels)["pid"] == str(proc.pid) and v > 0.2
                   for (n, labels), v in parsed.items()) and ("hoofhearted_cpu_usage_ratio", frozenset()) in parsed:
                break
            assert time.monotonic() < deadline, "hostile process not among the top processes"
            time.sleep(0.2)
        deadline = time.monotonic() + 20        # other busy processes on a shared machine may rank first
        while True:
            out = subprocess.run([sys.executable, "-m", "exporter", "why", "--url", exp.url], cwd=ROOT,
                                 capture_output=True, timeout=30)
            assert out.returncode == 0, out.stderr
            text = out.stdout.decode("utf-8")
            assert "\x1b" not in text
            assert not any(line.startswith("Fans: all OK") for line in text.splitlines()), text
            if "?c?Fans: all OK" in text:
                break
            assert time.monotonic() < deadline, text
            time.sleep(0.5)
    finally:
        proc.kill()
        proc.wait()


def test_why_error_line_for_a_url_with_control_characters():
    out = subprocess.run([sys.executable, "-m", "exporter", "why", "--url", "http://127.0.0.1:1/\x1b[2J"],
                         cwd=ROOT, capture_output=True, timeout=30)
    assert out.returncode == 2 and out.stdout == b"", out.stderr
    lines = out.stderr.decode().splitlines()
    assert len(lines) == 1 and lines[0].startswith("hoofhearted why: error: cannot read http://127.0.0.1:1/?[2J")
    assert b"\x1b" not in out.stderr and b"Traceback" not in out.stderr
