"""Command line: run the exporter (default), `check-config FILE`, `why`.

Any bad input ends in one line on stderr and exit status 2, never a traceback.
"""
import argparse
import errno
import logging
import os
import re
import signal
import sys
import threading

from . import __version__, config as cfgmod, textsafe
from .collectors import REGISTRY

log = logging.getLogger("hoofhearted")


class UsageError(Exception):
    pass


class Parser(argparse.ArgumentParser):
    def error(self, message):
        raise UsageError(message)


def _flag_map():
    """Flags with a config path: dest -> (the flag as typed, config path)."""
    return {
        "web.listen_address": ("--web.listen-address", ("web", "listen_address")),
        "web.config_file": ("--web.config.file", ("web", "config_file")),
        "web.max_requests": ("--web.max-requests", ("web", "max_requests")),
        "path.procfs": ("--path.procfs", ("paths", "procfs")),
        "path.sysfs": ("--path.sysfs", ("paths", "sysfs")),
        "path.rootfs": ("--path.rootfs", ("paths", "rootfs")),
        "log.level": ("--log.level", ("log", "level")),
    }


def run_parser():
    p = Parser(prog="hoofhearted", description="Prometheus exporter: why is my server's fan running?",
               epilog="Subcommands: 'hoofhearted check-config FILE', 'hoofhearted why --help'.")
    p.add_argument("--version", action="version", version=f"hoofhearted {__version__}")
    p.add_argument("--config.file", dest="config_file", metavar="FILE", help="YAML configuration file")
    p.add_argument("--web.listen-address", dest="web.listen_address", metavar="HOST:PORT",
                   help="address to serve on (default 127.0.0.1:10101; port 0 picks a free one)")
    p.add_argument("--web.config.file", dest="web.config_file", metavar="FILE",
                   help="exporter-toolkit web config (TLS, basic auth, headers)")
    p.add_argument("--web.max-requests", dest="web.max_requests", metavar="N",
                   help="password checks waiting at once, capped at 8, before answering 503 (default 40)")
    p.add_argument("--path.procfs", dest="path.procfs", metavar="DIR", help="procfs mount point (default /proc)")
    p.add_argument("--path.sysfs", dest="path.sysfs", metavar="DIR", help="sysfs mount point (default /sys)")
    p.add_argument("--path.rootfs", dest="path.rootfs", metavar="DIR",
                   help="root filesystem mount point, for filesystem sizes (default /)")
    p.add_argument("--log.level", dest="log.level", metavar="LEVEL", help="debug, info, warning or error")
    group = p.add_argument_group("collectors", "every collector is on unless the configuration turns it "
                                 "off; these flags override it")
    for name in REGISTRY:
        # --collector.NAME and --no-collector.NAME, listed together
        group.add_argument(f"--collector.{name}", dest=f"collector.{name}", action=argparse.BooleanOptionalAction,
                           default=None, help=f"enable or disable the {name} collector")
    return p


def parse_run_args(argv, environ):
    args = vars(run_parser().parse_args(argv))
    flags, names = {}, {}
    for dest, (flag, path) in _flag_map().items():
        if args.get(dest) is not None:
            flags[path], names[path] = args[dest], flag
    for name in REGISTRY:
        if args.get(f"collector.{name}") is not None:
            flags[("collectors", name, "enabled")] = args[f"collector.{name}"]
    file = args["config_file"] or environ.get("HOOFHEARTED_CONFIG_FILE")
    env = {k: v for k, v in environ.items() if k != "HOOFHEARTED_CONFIG_FILE"}
    return cfgmod.build(file=file, environ=env, flags=flags, flag_names=names)


class LogfmtFormatter(logging.Formatter):
    """'text key=%s ...' messages become logfmt lines: ts=.. level=.. logger=.. msg="text" key=value.

    Each value is quoted and escaped on its own (textsafe.quote), so a value with spaces, quotes
    or control characters (a process name, an error text) stays one value on one line. A bare
    '%s' after the pairs is taken as ready-made pairs (WebConfig.describe())."""

    _PAIR = re.compile(r" ([A-Za-z_][A-Za-z0-9_.]*)=(%[-#0 +]?\d*(?:\.\d+)?[sdrifxXeEgG])(?= |$)")
    _BARE = re.compile(r" (%s)(?= |$)")
    _CONV = re.compile(r"%[-#0 +]?\d*(?:\.\d+)?[sdrifxXeEgG%]")

    def format(self, record):
        ts = self.formatTime(record, "%Y-%m-%dT%H:%M:%S")
        try:
            text, pairs = self._split(record)
        except (TypeError, ValueError, KeyError, IndexError):
            try:
                text = record.getMessage()
            except Exception:       # a wrong call: still one line, nothing lost
                text = f"{record.msg} {record.args!r}"
            pairs = []
        line = (f"ts={ts} level={record.levelname.lower()} logger={record.name} "
                f"msg={textsafe.quote(text)}")
        for key, value in pairs:
            line += f" {key}={textsafe.quote(value)}" if key else " " + textsafe.terminal(value)
        if record.exc_info:
            line += " exc=" + textsafe.quote(self.formatException(record.exc_info))
        return line

    def _split(self, record):
        msg = str(record.msg)
        args = record.args if isinstance(record.args, tuple) else (record.args,) if record.args else ()
        first = self._PAIR.search(msg)
        cut = first.start() if first else len(msg)
        head, tail = msg[:cut], msg[cut:]
        used = sum(1 for c in self._CONV.findall(head) if c != "%%")
        text = head % args[:used] if used else head.replace("%%", "%")
        args = list(args[used:])
        pairs, pos = [], 0
        while pos < len(tail):
            m = self._PAIR.match(tail, pos) or self._BARE.match(tail, pos)
            if m is None:
                raise ValueError("not key=value")
            if m.re is self._PAIR:
                arg, conv = args.pop(0), m.group(2)
                # a string given as %r: logfmt's quotes replace Python's
                pairs.append((m.group(1), arg if conv == "%r" and isinstance(arg, str) else conv % (arg,)))
            else:
                pairs.append((None, m.group(1) % (args.pop(0),)))
            pos = m.end()
        if args:
            raise ValueError("arguments left over")
        return text, pairs


def setup_logging(level):
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(LogfmtFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(getattr(logging, level.upper()))


def serve(config, ready_event=None, stop_event=None):
    """Build the pipeline (collectors, scheduler, verdict, sinks) and the HTTP server; block until stopped."""
    from .pipeline import Pipeline
    from .webconfig import load_server_security

    # Refresh threads hold the GIL in long stretches; a short switch interval lets a scrape
    # (a few microseconds of Python) in without waiting out the default 5 ms.
    sys.setswitchinterval(0.001)
    security = load_server_security(config)
    host, port = cfgmod.parse_listen_address(config["web"]["listen_address"])
    pipeline = Pipeline(config)
    live = live_stream(config, pipeline)
    try:
        server = security.make_server((host, port), pipeline, config, live=live)
    except OSError as e:
        pipeline.stop()
        why = "address already in use" if e.errno == errno.EADDRINUSE else (e.strerror or str(e))
        raise cfgmod.ConfigError(f"--web.listen-address {config['web']['listen_address']}: {why}") from None
    pipeline.start()
    server.serve_in_thread()
    bound = server.server_address
    shown = f"[{bound[0]}]:{bound[1]}" if ":" in bound[0] else f"{bound[0]}:{bound[1]}"
    log.info("listening address=%s collectors=%s", shown, ",".join(j.name for j in pipeline.jobs))
    stop = stop_event or threading.Event()
    if ready_event:
        ready_event.set()

    def on_term(signum, frame):
        stop.set()

    def on_hup(signum, frame):
        security.reload(log_errors=True)

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, on_term)
        signal.signal(signal.SIGINT, on_term)
        signal.signal(signal.SIGHUP, on_hup)
    stop.wait()
    log.info("shutting down")
    server.shutdown()
    server.server_close()
    pipeline.stop(timeout=1.0)
    return 0


def live_stream(config, pipeline):
    """The live page's stream, fed with each new verdict (at most one per critical interval); None when off."""
    if not config["web"]["live_page"]:
        return None
    from .web import Live

    live = Live(config["web"]["live_max_clients"], interval=config["tiers"]["critical"])

    def on_verdict(event):
        live.publish(event.verdict, [f for c in event.collectors for f in getattr(c, "families", None) or ()])

    pipeline.subscribe(on_verdict)
    return live


def check_config(argv):
    p = Parser(prog="hoofhearted check-config", description="Validate a configuration file and exit.")
    p.add_argument("file", nargs="?")
    p.add_argument("--print-defaults", action="store_true", help="print every setting with its default")
    args = p.parse_args(argv)
    if args.print_defaults:
        sys.stdout.write(cfgmod.defaults_yaml())
        return 0
    if not args.file:
        raise UsageError("check-config: a FILE to check is required")
    errors = []
    cfg = cfgmod.build(file=args.file, environ={}, errors=errors)
    if cfg["web"]["config_file"]:
        from .webconfig import load_web_config
        try:
            load_web_config(cfg["web"]["config_file"])
        except cfgmod.ConfigError as e:
            errors.append(e)
    if errors:
        for e in errors:          # every one, so a file is fixed in one go
            print(f"hoofhearted: error: {e}", file=sys.stderr)
        return 2
    print(f"{args.file}: OK")
    return 0


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv and argv[0] == "check-config":
            return check_config(argv[1:])
        if argv and argv[0] == "why":
            from . import why
            return why.main(argv[1:])
        config = parse_run_args(argv, os.environ)
        setup_logging(config["log"]["level"])
        return serve(config)
    except UsageError as e:
        print(f"hoofhearted: error: {e}", file=sys.stderr)
        return 2
    except cfgmod.ConfigError as e:
        print(f"hoofhearted: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
