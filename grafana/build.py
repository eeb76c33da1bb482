#!/usr/bin/env python3
"""Build hoofhearted's Grafana dashboards from this one source.

    python3 grafana/build.py          write both variants
    python3 grafana/build.py --check  exit 1 if the files on disk differ from what this builds

Two variants of every dashboard come out of it:
  grafana/dashboards/<name>.json  provisioned: data source uid PROM_UID (see provisioning/)
  grafana/import/<name>.json      for Dashboards > Import: asks for a Prometheus data source
Files are normalised JSON (sorted keys, 2-space indent) so diffs stay small.
"""
import copy
import json
import pathlib
import sys

PROM_UID = "hoofhearted-prometheus"
PROM = {"type": "prometheus", "uid": PROM_UID}
LIVE = {"type": "datasource", "uid": "grafana"}   # the built-in "-- Grafana --" data source
LIVE_STREAM = "stream/hoofhearted"                # exporter pushes to /api/live/push/hoofhearted
TAG = "hoofhearted"
REFRESH_INTERVALS = ["1s", "2s", "5s", "10s", "30s", "1m", "5m"]

HERE = pathlib.Path(__file__).resolve().parent
OUT_PROVISIONED = HERE / "dashboards"
OUT_IMPORT = HERE / "import"

J = 'job="hoofhearted"'
I = f'{J}, instance=~"$instance"'
IG = f'{I}, gpu=~"$gpu"'
PROC = "pid, name, user, owner"
FLEET_TOP = 10          # fleet graphs: the hosts that peaked highest over the range

# -- building blocks -----------------------------------------------------------------------


def target(expr, legend="", ref="A", table=False, instant=False):
    """A Prometheus query. Tables and `instant` ones ask for the current value only: a top-k or
    "hottest" tile must not list every series that was on top at some point of the range."""
    t = {"datasource": PROM, "editorMode": "code", "expr": expr, "refId": ref}
    if table:
        t.update(format="table", instant=True, range=False)
    elif instant:
        t.update(format="time_series", instant=True, range=False, legendFormat=legend or "__auto")
    else:
        t.update(format="time_series", instant=False, range=True, legendFormat=legend or "__auto")
    return t


def targets(*specs, table=False, instant=False):
    """specs: (expr, legend) pairs; refIds A, B, C ... in order."""
    return [target(e, l, chr(65 + i), table, instant) for i, (e, l) in enumerate(specs)]


def thresholds(*steps):
    """steps: ("green", None), ("orange", 70), ..."""
    return {"mode": "absolute", "steps": [{"color": c, "value": v} for c, v in steps]}


HEAT = thresholds(("green", None), ("orange", 70), ("red", 85))
BUSY = thresholds(("green", None), ("orange", 0.7), ("red", 0.9))
OK_BAD = [{"type": "value", "options": {"0": {"color": "red", "index": 0, "text": "failing"},
                                         "1": {"color": "green", "index": 1, "text": "ok"}}}]
# What a panel says instead of nothing on a box without the hardware (hoofhearted_sensors{kind}
# counts the readings; the exporter logs the same reasons once at start).
NO_TEMPERATURES = ("No temperature readings on this host: likely a virtual machine, or the sensor "
                   "modules (coretemp, k10temp, nct6775, ...) are not loaded")
NO_FANS = ("No fan readings on this host: likely a virtual machine, sensor modules not loaded, or the "
           "fans are only on the BMC")
NO_GPUS = "No GPU on the selected host"
NO_FAILURES = "Every collector succeeded over the range"


def dashed(name, dash=(10, 10)):
    """A series drawn as a dashed line without fill: a limit or a maximum beside the reading."""
    return override(name, custom__lineStyle={"dash": list(dash), "fill": "dash"}, custom__fillOpacity=0)


def override(name, **props):
    """Field override by display name or refId ('#A')."""
    if name.startswith("#"):
        matcher = {"id": "byFrameRefID", "options": name[1:]}
    else:
        matcher = {"id": "byName", "options": name}
    return {"matcher": matcher, "properties": [{"id": k.replace("__", "."), "value": v} for k, v in props.items()]}


def stat(title, tgts, unit="short", steps=None, description="", overrides=(), graph="none",
         text="value_and_name", decimals=None, mappings=None, color="background", fields="", no_data=None):
    defaults = {"unit": unit, "color": {"mode": "thresholds"},
                "thresholds": steps or thresholds(("green", None)), "mappings": mappings or []}
    if decimals is not None:
        defaults["decimals"] = decimals
    if no_data:
        defaults["noValue"] = no_data
    return {
        "type": "stat", "title": title, "description": description, "datasource": tgts[0]["datasource"],
        "targets": tgts,
        "fieldConfig": {"defaults": defaults, "overrides": list(overrides)},
        "options": {"colorMode": color, "graphMode": graph, "justifyMode": "auto", "orientation": "auto",
                    "reduceOptions": {"calcs": ["lastNotNull"], "fields": fields, "values": False},
                    "showPercentChange": False, "textMode": text, "wideLayout": True},
    }


def timeseries(title, tgts, unit="short", description="", stack=False, fill=10, overrides=(),
               minimum=None, maximum=None, legend="table", placement="right", no_data=None):
    custom = {"axisBorderShow": False, "axisPlacement": "auto", "drawStyle": "line",
              "fillOpacity": 70 if stack else fill, "gradientMode": "none", "lineInterpolation": "linear",
              "lineWidth": 1, "pointSize": 4, "showPoints": "never", "spanNulls": False,
              "stacking": {"group": "A", "mode": "normal" if stack else "none"},
              "thresholdsStyle": {"mode": "off"}}
    defaults = {"unit": unit, "color": {"mode": "palette-classic"}, "custom": custom}
    if minimum is not None:
        defaults["min"] = minimum
    if maximum is not None:
        defaults["max"] = maximum
    if no_data:
        defaults["noValue"] = no_data
    return {
        "type": "timeseries", "title": title, "description": description,
        "datasource": tgts[0]["datasource"], "targets": tgts,
        "fieldConfig": {"defaults": defaults, "overrides": list(overrides)},
        "options": {"legend": {"calcs": ["lastNotNull", "max"], "displayMode": legend, "placement": placement,
                               "showLegend": True},
                    "tooltip": {"mode": "multi", "sort": "desc"}},
    }


def table(title, tgts, transformations, description="", overrides=(), sort_by=None, unit="short", no_data=None):
    defaults = {"unit": unit, "custom": {"align": "auto", "cellOptions": {"type": "auto"},
                                         "filterable": False, "inspect": False}}
    if no_data:
        defaults["noValue"] = no_data
    return {
        "type": "table", "title": title, "description": description, "datasource": tgts[0]["datasource"],
        "targets": tgts, "transformations": transformations,
        "fieldConfig": {"defaults": defaults, "overrides": list(overrides)},
        "options": {"cellHeight": "sm", "showHeader": True,
                    "footer": {"countRows": False, "fields": "", "reducer": ["sum"], "show": False},
                    "sortBy": [{"desc": True, "displayName": sort_by}] if sort_by else []},
    }


def state_timeline(title, tgts, mappings, description="", steps=None, no_data=None):
    defaults = {"color": {"mode": "thresholds"}, "mappings": mappings,
                "thresholds": steps or thresholds(("green", None)),
                "custom": {"fillOpacity": 80, "lineWidth": 0}}
    if no_data:
        defaults["noValue"] = no_data
    return {
        "type": "state-timeline", "title": title, "description": description,
        "datasource": tgts[0]["datasource"], "targets": tgts,
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "options": {"alignValue": "left", "mergeValues": True, "rowHeight": 0.9, "showValue": "never",
                    "legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
                    "tooltip": {"mode": "single", "sort": "none"}},
    }


def repeat(panel, variable="gpu", per_row=2):
    """One copy of the panel per selected value of the variable (Grafana repeats it)."""
    panel.update(repeat=variable, repeatDirection="h", maxPerRow=per_row)
    return panel


def live_target(measurement, fields=None, ref="A"):
    t = {"datasource": LIVE, "queryType": "measurements", "channel": f"{LIVE_STREAM}/{measurement}",
         "refId": ref}
    if fields:
        t["filter"] = {"fields": list(fields)}
    return t


def merge_table(rename, hide=("Time", "job", "instance"), order=()):
    """Instant table queries joined on their shared labels, renamed, ordered."""
    index = {name: i for i, name in enumerate(order)}
    return [{"id": "merge", "options": {}},
            {"id": "organize", "options": {"excludeByName": {h: True for h in hide},
                                           "indexByName": index, "renameByName": rename}}]


def top_over_range(expr, by="instance, job", k=FLEET_TOP):
    """The series of `expr` that peaked among the k highest over the dashboard's range: a graph of 200
    hosts shows the 10 that matter, and the same 10 from left to right."""
    return f"({expr}) and on ({by}) topk({k}, max_over_time(({expr})[$__range:] @ end()))"


def query_var(name, label, query, multi=False, include_all=False, hide=0):
    v = {"name": name, "label": label, "type": "query", "datasource": PROM,
         "definition": query, "query": query,
         "refresh": 2, "sort": 3, "regex": "", "hide": hide,
         "multi": multi, "includeAll": include_all, "current": {}, "options": []}
    if include_all:
        v["allValue"] = ".*"
    return v


INSTANCE = query_var("instance", "Host", f"label_values(hoofhearted_build_info{{{J}}}, instance)")
INSTANCES = query_var("instance", "Hosts", f"label_values(hoofhearted_build_info{{{J}}}, instance)",
                      multi=True, include_all=True)
GPU = query_var("gpu", "GPU", f'label_values(hoofhearted_gpu_info{{{I}}}, gpu)', multi=True, include_all=True)


def prom_annotation(name, expr, title, text, color, tags=""):
    return {"datasource": PROM, "enable": True, "expr": expr, "hide": False, "iconColor": color,
            "name": name, "step": "15s", "tagKeys": tags, "textFormat": text, "titleFormat": title,
            "useValueForTime": False}


ALERT_ANNOTATION = prom_annotation(
    "Alerts", f'ALERTS{{alertstate="firing", {I}}}', "{{alertname}}", "{{severity}} alert firing",
    "red", "alertname,severity")
ESCALATION_ANNOTATION = prom_annotation(
    "Hot (refresh escalated)", f"hoofhearted_escalation_active{{{I}}} == 1", "Hot",
    "a hot reading sped up sensor, process and GPU refreshes", "orange")
# A per-process series that was not there a minute ago: the process started, or started to burn.
PROCESS_ANNOTATION = prom_annotation(
    "New top processes",
    f"hoofhearted_process_cpu_seconds_total{{{I}}} unless hoofhearted_process_cpu_seconds_total{{{I}}} offset 1m",
    "{{name}} entered the top processes", "pid {{pid}}, user {{user}}, owner {{owner}}", "purple",
    "name,user")


class Board:
    """Panels laid out left to right in rows of 24 columns; ids in order of addition."""

    def __init__(self, uid, title, description, variables, annotations=(), refresh="30s"):
        self.uid, self.title, self.description = uid, title, description
        self.variables, self.annotations = list(variables), list(annotations)
        self.refresh = refresh
        self.panels = []
        self.into = self.panels
        self.x = self.y = self.line_h = 0
        self.next_id = 1

    def _newline(self):
        if self.x:
            self.y += self.line_h
            self.x = self.line_h = 0

    def add(self, panel, w, h):
        if self.x + w > 24:
            self._newline()
        panel["gridPos"] = {"x": self.x, "y": self.y, "w": w, "h": h}
        panel["id"] = self.next_id
        self.next_id += 1
        self.into.append(panel)
        self.x += w
        self.line_h = max(self.line_h, h)

    def row(self, title, collapsed=False, repeat_by=None):
        self._newline()
        row = {"type": "row", "title": title, "collapsed": collapsed, "id": self.next_id,
               "gridPos": {"x": 0, "y": self.y, "w": 24, "h": 1}, "panels": []}
        if repeat_by:
            row["repeat"] = repeat_by
        self.next_id += 1
        self.panels.append(row)
        self.into = row["panels"] if collapsed else self.panels
        self.y += 1

    def json(self):
        return {
            "annotations": {"list": self.annotations},
            "description": self.description,
            "editable": True,
            "fiscalYearStartMonth": 0,
            "graphTooltip": 1,          # shared crosshair: a spike lines up with its cause
            "id": None,
            "links": [{"asDropdown": False, "icon": "external link", "includeVars": True, "keepTime": True,
                       "tags": [TAG], "targetBlank": False, "title": "hoofhearted", "type": "dashboards"}],
            "liveNow": False,
            "panels": self.panels,
            "refresh": self.refresh,
            "schemaVersion": 39,
            "tags": [TAG],
            "templating": {"list": self.variables},
            "time": {"from": "now-1h", "to": "now"},
            "timepicker": {"refresh_intervals": REFRESH_INTERVALS},
            "timezone": "browser",
            "title": self.title,
            "uid": self.uid,
            "version": 1,
            "weekStart": "",
        }


# -- dashboards ----------------------------------------------------------------------------

CORES = "suffix: cores"
TEMP_LEGEND = "{{chip}} {{label}} ({{sensor}})"
FAN_LEGEND = "{{chip}} {{fan}} {{label}}"
PROC_LEGEND = "{{name}} (pid {{pid}}, {{user}})"
GPU_PROC_LEGEND = "GPU{{gpu}} {{name}} (pid {{pid}}, {{user}})"
CULPRIT_LEGEND = "{{name}} · {{kind}} · {{user}} {{pid}}"

TEMP = f"hoofhearted_temperature_celsius{{{I}}}"
HEADROOM = (f"hoofhearted_temperature_max_celsius{{{I}}} - on (instance, job, chip, sensor, label) "
            f"hoofhearted_temperature_celsius{{{I}}}")
# Recording rules (prometheus/rules/recording.yml) where they say the same thing as the alerts.
FAN_RATIO = f"chip_fan:hoofhearted_fan_speed:ratio{{{I}}}"            # rpm of rated max, else PWM duty
CPU_BUSY = f"instance:hoofhearted_cpu_usage:ratio_rate5m{{{I}}}"    # from the CPU time counters
# The exporter's verdict: who is to blame, ranked, with the numbers behind it.
CULPRIT = (f"hoofhearted_culprit_cpu_usage_cores{{{I}}} * on (instance, job, rank) group_right () "
           f"hoofhearted_culprit_info{{{I}}}")
TOP_CULPRIT = CULPRIT.replace(f"{{{I}}}", f'{{{I}, rank="1"}}')
PROC_CPU = f"rate(hoofhearted_process_cpu_seconds_total{{{I}}}[$__rate_interval])"
GROUP_CPU = f"rate(hoofhearted_process_group_cpu_seconds_total{{{I}}}[$__rate_interval])"
GPU_PROC_SHARE = f'max without (engine) (hoofhearted_gpu_process_utilization_ratio{{{IG}, engine!="memory"}})'
ACTIVE_ALERTS = f'count(ALERTS{{alertstate="firing", {I}}}) or vector(0)'


def top_processes(expr, k=10):
    """Per-process series, only the k processes that peaked highest over the range."""
    return top_over_range(expr, by="instance, job, pid, name", k=k)


def home():
    b = Board("hoofhearted-home", "Why is my fan running?",
              "What is hot, how fast the fans spin, and which process is to blame.",
              [INSTANCE, GPU], [ALERT_ANNOTATION, PROCESS_ANNOTATION, ESCALATION_ANNOTATION])
    # Top row: the answer at a glance, current values only.
    b.add(stat("Hottest sensor", targets((f"topk(1, {TEMP})", TEMP_LEGEND), instant=True), unit="celsius",
               steps=HEAT, decimals=1, no_data=NO_TEMPERATURES,
               description="The hottest temperature sensor right now, any kind (CPU, board, drive, Wi-Fi)."),
          4, 4)
    b.add(stat("Closest to its max", targets((f"bottomk(1, {HEADROOM})", TEMP_LEGEND + " below its max"),
                                             instant=True),
               unit="celsius", decimals=1, steps=thresholds(("red", None), ("orange", 5), ("green", 15)),
               no_data=NO_TEMPERATURES,
               description="The sensor with the least room left below the temperature its hardware calls "
                           "high, and how many degrees remain."), 4, 4)
    b.add(stat("Fans", targets(
        (FAN_RATIO, "{{chip}} {{fan}}"),
        (f"hoofhearted_gpu_fan_speed_ratio{{{IG}}}", "GPU{{gpu}} fan {{fan}}"), instant=True),
        unit="percentunit", steps=thresholds(("green", None), ("orange", 0.7), ("red", 0.9)), no_data=NO_FANS,
        description="How hard each fan runs: rpm as a share of its rated maximum, else its PWM duty; "
                    "GPU fans as the driver asks for them. The rpm are in the Fans graph below."), 5, 4)
    b.add(stat("CPU busy", targets((f"hoofhearted_cpu_usage_ratio{{{I}}}", "CPU"), instant=True),
               unit="percentunit", steps=BUSY, text="value"), 3, 4)
    b.add(stat("GPU busy", targets((f"hoofhearted_gpu_utilization_ratio{{{IG}}}", "GPU{{gpu}}"), instant=True),
               unit="percentunit", steps=BUSY, no_data=NO_GPUS), 3, 4)
    b.add(stat("GPU temperature", targets((f"hoofhearted_gpu_temperature_celsius{{{IG}}}", "GPU{{gpu}}"),
                                          instant=True),
               unit="celsius", steps=thresholds(("green", None), ("orange", 75), ("red", 85)), no_data=NO_GPUS),
          3, 4)
    b.add(stat("Active alerts", targets((ACTIVE_ALERTS, "alerts"), instant=True), text="value",
               steps=thresholds(("green", None), ("red", 1)),
               description="Alerts firing for this host in Prometheus."), 2, 4)
    # The verdict, as the exporter ranks it (the same answer as `hoofhearted why` and the alerts).
    b.add(stat("Top culprit", targets(
        (TOP_CULPRIT, CULPRIT_LEGEND),
        (f'hoofhearted_culprit_processes{{{I}, rank="1"}}', "processes"), instant=True),
        unit=CORES, decimals=2, color="value", steps=thresholds(("text", None)),
        overrides=[override("#B", unit="none", decimals=0)], no_data="Still measuring",
        description="The exporter's verdict: the process, group of same-named processes or owner "
                    "(container, unit) that explains the load best, its cores and its size."), 6, 8)
    b.add(table("Verdict: top culprits", targets(
        (f"hoofhearted_culprit_info{{{I}}}", ""),
        (f"hoofhearted_culprit_cpu_usage_cores{{{I}}}", ""),
        (f"hoofhearted_culprit_processes{{{I}}}", ""),
        (f"hoofhearted_culprit_memory_bytes{{{I}}}", ""), table=True),
        merge_table({"Value #B": "Cores", "Value #C": "Processes", "Value #D": "Memory",
                     "rank": "Rank", "kind": "Kind", "name": "Name", "user": "User", "owner": "Owner", "pid": "PID"},
                    hide=("Time", "job", "instance", "Value #A"),
                    order=("rank", "kind", "name", "user", "owner", "pid", "Value #C", "Value #B", "Value #D")),
        overrides=[override("Cores", unit=CORES, decimals=2, custom__cellOptions={"mode": "basic", "type": "gauge"}),
                   override("Memory", unit="bytes")],
        no_data="Still measuring",
        description="The exporter's ranked culprits: a process (with its pid), a group of same-named "
                    "processes of one user, or an owner (container, pod, systemd unit)."), 18, 8)

    b.row("Over time: heat and fans, with the processes behind them")
    b.add(timeseries("Temperatures", targets(
        (TEMP, TEMP_LEGEND),
        (f"hoofhearted_gpu_temperature_celsius{{{IG}}}", "GPU{{gpu}}")), unit="celsius",
        no_data=NO_TEMPERATURES), 20, 8)
    b.add(stat("Sensor readings", targets((f"hoofhearted_sensors{{{I}}}", "{{kind}}"), instant=True),
               text="value_and_name", color="value", steps=thresholds(("red", None), ("green", 1)),
               mappings=[{"type": "value", "options": {"0": {"color": "red", "index": 0, "text": "none"}}}],
               description="Readings the exporter found, per kind. None: a virtual machine, sensor modules "
                           "not loaded, or (fans) only on the BMC; the exporter's log says which."), 4, 8)
    b.add(timeseries("Fans", targets(
        (f"hoofhearted_fan_speed_rpm{{{I}}}", FAN_LEGEND),
        (FAN_RATIO, "{{chip}} {{fan}} of max"),
        (f"hoofhearted_gpu_fan_speed_ratio{{{IG}}}", "GPU{{gpu}} fan {{fan}}")), unit="rotrpm", no_data=NO_FANS,
        overrides=[override("#B", unit="percentunit", custom__axisPlacement="right", max=1),
                   override("#C", unit="percentunit", custom__axisPlacement="right", max=1)]), 24, 6)
    b.add(timeseries("CPU by process (stacked)", targets(
        (top_processes(PROC_CPU), PROC_LEGEND),
        (f"instance:hoofhearted_cpu_usage:ratio_rate5m{{{I}}} * on (instance, job) group_left () "
         f"hoofhearted_cpu_cores{{{I}}}", "whole machine (5m)")), unit=CORES, stack=True, minimum=0,
        overrides=[override("#B", custom__stacking={"group": "A", "mode": "none"}, custom__fillOpacity=0,
                            custom__lineStyle={"dash": [10, 10], "fill": "dash"}, color={"mode": "fixed",
                                                                                          "fixedColor": "red"})],
        description="Cores used by the 10 busiest processes of the range, from their CPU time counters, "
                    "stacked; the dashed line is the whole machine."), 24, 7)
    b.add(repeat(timeseries("GPU$gpu by process (stacked)", targets(
        (GPU_PROC_SHARE, "{{name}} (pid {{pid}}, {{user}})"),
        (f"hoofhearted_gpu_utilization_ratio{{{IG}}}", "GPU busy")), unit="percentunit", stack=True,
        minimum=0, no_data=NO_GPUS,
        overrides=[override("#B", custom__stacking={"group": "A", "mode": "none"}, custom__fillOpacity=0,
                            custom__lineStyle={"dash": [10, 10], "fill": "dash"})],
        description="Share of this GPU's time used by each process (its busiest engine), stacked; dashed: "
                    "the GPU's busy. One panel per GPU: shares of different GPUs never add up.")), 24, 7)

    heat_row(b)

    b.row("Live (Grafana Live stream from the exporter, every second, no polling)")
    live_help = ("Pushed by the exporter when grafana_live is configured; shows nothing otherwise. "
                 "Not filtered by the Host variable: every pushing host appears.")
    b.add(timeseries("Live temperatures", [live_target("temperature", ["time", "labels", "celsius"])],
                     unit="celsius", description=live_help, legend="list", placement="bottom"), 8, 7)
    b.add(timeseries("Live fans", [live_target("fan", ["time", "labels", "rpm"])], unit="rotrpm",
                     description=live_help, legend="list", placement="bottom"), 8, 7)
    b.add(timeseries("Live CPU and GPU busy", [
        live_target("cpu", ["time", "labels", "busy_ratio"], "A"),
        live_target("gpu", ["time", "labels", "busy_ratio"], "B")], unit="percentunit", minimum=0,
        maximum=1, description=live_help, legend="list", placement="bottom"), 8, 7)
    b.add(stat("Live verdict", [live_target("culprit", ["time", "labels", "verdict"])], text="value",
               color="none", fields="/^verdict$/", description=live_help), 24, 3)  # a text field
    return b


PACKAGES = 'domain=~"package-[0-9]+"'
GPU_DOMAINS = 'domain=~"gpu.*"'


def power_by_process(title, domains, measured, measured_legend):
    """Watts per process group in some domains, stacked with the idle and other parts, so the
    stack reaches the measured power (dashed)."""
    return timeseries(title, targets(
        (f"hoofhearted_process_group_power_watts{{{I}, {domains}}}", "{{group}} ({{domain}})"),
        (f"hoofhearted_power_unattributed_watts{{{I}, {domains}}}", "{{part}} ({{domain}})"),
        (measured, measured_legend)), unit="watt", stack=True, minimum=0,
        overrides=[override("#C", custom__stacking={"group": "A", "mode": "none"}, custom__fillOpacity=0,
                            custom__lineStyle={"dash": [10, 10], "fill": "dash"},
                            color={"mode": "fixed", "fixedColor": "red"})],
        description="Estimates: the measured power split into idle (the not-busy share), the process groups "
                    "(by CPU time, or GPU engine time) and other (busy time no process accounts for); dashed: "
                    "the measured power. See docs/processes.md, Watts per process.")


def heat_row(b):
    """What heats this box: each part's power and who draws it (where power is measured)."""
    b.row("What heats this box: power by part and by process (estimates)")
    b.add(stat("Power by part", targets(
        (f"hoofhearted_cpu_power_watts{{{I}, {PACKAGES}}}", "CPU {{domain}}"),
        (f"hoofhearted_gpu_power_watts{{{IG}}}", "GPU{{gpu}}"), instant=True), unit="watt", decimals=0,
        description="Measured power of each CPU package (RAPL) and GPU. Nothing here for the CPU when "
                    "hoofhearted_rapl_readable is 0: the exporter's log says why."), 8, 7)
    b.add(stat("Culprits' watts", targets(
        (f"hoofhearted_culprit_power_watts{{{I}}} * on(instance, job, rank) group_left(kind, name, user) "
         f"hoofhearted_culprit_info{{{I}}}", "{{rank}}. {{name}} ({{user}})"), instant=True), unit="watt", decimals=1,
        graph="none", color="value", steps=thresholds(("text", None)),
        description="Watts the verdict's culprits draw in CPU packages, DRAM and GPUs (estimates)."), 16, 7)
    b.add(power_by_process("CPU package power by process (stacked)", PACKAGES,
                           f"hoofhearted_cpu_power_watts{{{I}, {PACKAGES}}}", "measured ({{domain}})"), 24, 8)
    b.add(power_by_process("GPU power by process (stacked)", GPU_DOMAINS,
                           f"hoofhearted_gpu_power_watts{{{IG}}}", "measured (GPU{{gpu}})"), 24, 8)


def gpu():
    b = Board("hoofhearted-gpu", "GPU", "Per GPU: load, memory, heat vs its limits, fan, power, clocks, "
              "throttling, and the processes using it.", [INSTANCE, GPU], [ALERT_ANNOTATION])
    b.add(stat("GPU up", targets((f"hoofhearted_gpu_up{{{IG}}}", "GPU{{gpu}}"), instant=True), text="value_and_name",
               mappings=[{"type": "value", "options": {"0": {"color": "red", "index": 0, "text": "LOST"},
                                                       "1": {"color": "green", "index": 1, "text": "up"}}}],
               no_data=NO_GPUS, description="0 when the GPU fell off the bus or stopped answering."), 6, 5)
    b.add(table("GPUs", targets((f"hoofhearted_gpu_info{{{IG}}}", ""), table=True),
                merge_table({"gpu": "GPU", "name": "Model", "vendor": "Vendor", "driver_version": "Driver",
                             "pci_bus_id": "PCI", "uuid": "UUID"}, hide=("Time", "job", "instance", "Value")),
                sort_by="GPU", no_data=NO_GPUS), 18, 5)

    # One row of panels per selected GPU.
    b.row("GPU $gpu", repeat_by="gpu")
    b.add(timeseries("Utilisation", targets(
        (f"hoofhearted_gpu_utilization_ratio{{{IG}}}", "busy"),
        (f"hoofhearted_gpu_memory_utilization_ratio{{{IG}}}", "memory bus"),
        (f"hoofhearted_gpu_encoder_utilization_ratio{{{IG}}}", "encoder"),
        (f"hoofhearted_gpu_decoder_utilization_ratio{{{IG}}}", "decoder")),
        unit="percentunit", minimum=0, maximum=1, no_data=NO_GPUS), 8, 8)
    b.add(timeseries("Memory", targets(
        (f"hoofhearted_gpu_memory_used_bytes{{{IG}}}", "used"),
        (f"hoofhearted_gpu_memory_total_bytes{{{IG}}}", "total")), unit="bytes", minimum=0, no_data=NO_GPUS), 8, 8)
    b.add(timeseries("Temperature vs slowdown and shutdown", targets(
        (f"hoofhearted_gpu_temperature_celsius{{{IG}}}", "temperature"),
        (f"hoofhearted_gpu_temperature_slowdown_celsius{{{IG}}}", "slowdown"),
        (f"hoofhearted_gpu_temperature_shutdown_celsius{{{IG}}}", "shutdown")), unit="celsius", no_data=NO_GPUS,
        overrides=[dashed("#B"),
                   dashed("#C", (4, 4))]),
        8, 8)
    b.add(timeseries("Fan", targets((f"hoofhearted_gpu_fan_speed_ratio{{{IG}}}", "fan {{fan}} (asked)"),
                                    (f"hoofhearted_gpu_fan_speed_rpm{{{IG}}}", "fan {{fan}} rpm")),
                     unit="percentunit", minimum=0, no_data="No fan on this GPU (datacenter GPUs have none)",
                     overrides=[override("#B", unit="rotrpm", custom__axisPlacement="right")],
                     description="The speed the driver asks for (0-1) and, where reported, the rpm measured."),
          8, 8)
    b.add(timeseries("Power vs limit", targets(
        (f"hoofhearted_gpu_power_watts{{{IG}}}", "power"),
        (f"hoofhearted_gpu_power_limit_watts{{{IG}}}", "limit"),
        (f"rate(hoofhearted_gpu_energy_joules_total{{{IG}}}[$__rate_interval])", "from energy"),
        (f"hoofhearted_gpu_power_default_limit_watts{{{IG}}}", "default limit"),
        (f"hoofhearted_gpu_power_max_limit_watts{{{IG}}}", "max limit"),
        (f"hoofhearted_gpu_soc_power_watts{{{IG}}}", "APU package")),
        unit="watt", minimum=0, no_data=NO_GPUS,
        description="An APU reports the power of its whole package (CPU cores included), shown apart.",
        overrides=[dashed("#B"),
                   dashed("#D", (4, 4)),
                   dashed("#E", (2, 6))]),
        8, 8)
    b.add(timeseries("Clocks", targets((f"hoofhearted_gpu_clock_hertz{{{IG}}}", "{{clock}}")),
                     unit="hertz", no_data=NO_GPUS), 8, 8)
    b.add(state_timeline("Throttle reasons", targets(
        (f"hoofhearted_gpu_clock_event{{{IG}}}", "{{reason}}")),
        [{"type": "value", "options": {"0": {"color": "transparent", "index": 0, "text": "-"},
                                       "1": {"color": "red", "index": 1, "text": "active"}}}], no_data=NO_GPUS,
        description="Why the GPU holds its clocks down: thermal, power cap, software slowdown..."), 12, 8)
    b.add(timeseries("Performance state and PCIe", targets(
        (f"hoofhearted_gpu_performance_state{{{IG}}}", "P-state"),
        (f"hoofhearted_gpu_pcie_receive_bytes_per_second{{{IG}}}", "PCIe rx"),
        (f"hoofhearted_gpu_pcie_transmit_bytes_per_second{{{IG}}}", "PCIe tx")), no_data=NO_GPUS,
        overrides=[override("#B", unit="Bps", custom__axisPlacement="right"),
                   override("#C", unit="Bps", custom__axisPlacement="right")],
        description="P0 is full speed, P8 idle. PCIe throughput only for GPUs without PCIe byte counters."),
        12, 8)
    b.add(timeseries("GPU share by process (stacked)", targets((GPU_PROC_SHARE, PROC_LEGEND)),
                     unit="percentunit", stack=True, minimum=0, no_data="No process on this GPU"), 12, 8)
    b.add(timeseries("GPU memory by process (stacked)", targets(
        (f"hoofhearted_gpu_process_memory_bytes{{{IG}}}", PROC_LEGEND)), unit="bytes", stack=True,
        minimum=0, no_data="No process on this GPU"), 12, 8)
    b.add(timeseries("GPU busy time by process name (stacked)", targets(
        (f'sum without (engine, uuid) (rate(hoofhearted_gpu_process_group_engine_seconds_total{{{IG}, '
         f'engine!="memory"}}[$__rate_interval]))', "{{group}}")),
        unit="percentunit", stack=True, minimum=0, no_data="No process on this GPU",
        description="Engine busy time from counters, summed over the engines of each process name: exact over "
                    "any window, however far apart the scrapes."), 24, 8)
    # health
    b.add(timeseries("Throttled time by reason", targets(
        (f"rate(hoofhearted_gpu_clock_event_seconds_total{{{IG}}}[$__rate_interval])", "{{reason}}")),
        unit="percentunit", minimum=0, no_data="No throttling counters from this GPU's driver",
        description="Share of time the clocks were held down, from the driver's counters: throttling "
                    "between two scrapes shows too."), 12, 8)
    b.add(timeseries("Temperature margin and memory temperature", targets(
        (f"hoofhearted_gpu_temperature_margin_celsius{{{IG}}}", "margin to T.Limit"),
        (f'hoofhearted_gpu_sensor_temperature_celsius{{{IG}, sensor="mem"}}', "memory"),
        (f"hoofhearted_gpu_sensor_temperature_critical_celsius{{{IG}}}", "{{sensor}} critical")),
        unit="celsius", no_data="This GPU reports neither a margin nor a memory temperature",
        description="Margin: degrees left before the GPU reaches its limit; near 0 it slows down."), 12, 8)
    b.add(table("Xid errors", targets(
        (f"hoofhearted_gpu_xid_errors_total{{{IG}}}", ""), table=True),
        merge_table({"gpu": "GPU", "xid": "Xid", "Value": "Count"}, hide=("Time", "job", "instance", "uuid"),
                    order=("gpu", "xid", "Value")),
        sort_by="Count", no_data="No Xid error since the exporter started",
        description="Xid errors since the exporter started. 48, 63, 64, 74, 79, 92, 94, 95 and 119-120 mean a "
                    "broken or lost GPU."), 8, 8)
    b.add(timeseries("Memory errors and repairs", targets(
        (f"increase(hoofhearted_gpu_ecc_errors_total{{{IG}, counter=\"volatile\"}}[$__rate_interval])",
         "ECC {{error}}"),
        (f"hoofhearted_gpu_remapped_rows{{{IG}}}", "remapped rows {{cause}}"),
        (f"hoofhearted_gpu_retired_pages{{{IG}}}", "retired pages {{cause}}")), minimum=0,
        no_data="No ECC or memory repair data from this GPU (consumer GPUs have none)",
        description="Corrected errors are repaired; uncorrected ones are lost data."), 8, 8)
    b.add(stat("Memory repair", targets(
        (f"hoofhearted_gpu_remapped_rows_pending{{{IG}}}", "remap pending"),
        (f"hoofhearted_gpu_remapped_rows_failed{{{IG}}}", "remap failed"),
        (f"hoofhearted_gpu_retired_pages_pending{{{IG}}}", "retirement pending"), instant=True),
        steps=thresholds(("green", None), ("red", 1)), no_data="No memory repair data from this GPU",
        mappings=[{"type": "value", "options": {"0": {"color": "green", "index": 0, "text": "no"},
                                                "1": {"color": "red", "index": 1, "text": "YES"}}}],
        description="Pending: the GPU needs a reset. Failed: the GPU needs service."), 8, 8)
    b.add(timeseries("PCIe link", targets(
        (f"hoofhearted_gpu_pcie_link_width{{{IG}}}", "lanes"),
        (f"hoofhearted_gpu_pcie_link_max_width{{{IG}}}", "max lanes"),
        (f"hoofhearted_gpu_pcie_link_generation{{{IG}}}", "generation"),
        (f"hoofhearted_gpu_pcie_link_max_generation{{{IG}}}", "max generation")), minimum=0, no_data=NO_GPUS,
        overrides=[dashed("#B"),
                   dashed("#D")],
        description="Fewer lanes than the maximum: the link trained down (reseat the card). The generation "
                    "drops at idle to save power."), 8, 8)
    b.add(timeseries("PCIe traffic and replays", targets(
        (f"rate(hoofhearted_gpu_pcie_receive_bytes_total{{{IG}}}[$__rate_interval])", "rx"),
        (f"rate(hoofhearted_gpu_pcie_transmit_bytes_total{{{IG}}}[$__rate_interval])", "tx"),
        (f"increase(hoofhearted_gpu_pcie_replays_total{{{IG}}}[$__rate_interval])", "replays")),
        unit="Bps", minimum=0, no_data="No PCIe counters from this GPU's driver",
        overrides=[override("#C", unit="short", custom__axisPlacement="right")],
        description="From the driver's byte counters; replays are packets resent after link errors."), 8, 8)
    b.add(timeseries("NVLink", targets(
        (f"hoofhearted_gpu_nvlink_links_active{{{IG}}}", "links up"),
        (f"hoofhearted_gpu_nvlink_links{{{IG}}}", "links"),
        (f"increase(hoofhearted_gpu_nvlink_errors_total{{{IG}}}[$__rate_interval])", "{{error}} errors")),
        minimum=0, no_data="No NVLink on this GPU",
        overrides=[dashed("#B"),
                   override("#C", custom__axisPlacement="right")],
        description="Links up against links present; errors over all links."), 8, 8)
    b.add(timeseries("NVLink traffic", targets(
        (f"rate(hoofhearted_gpu_nvlink_receive_bytes_total{{{IG}}}[$__rate_interval])", "rx"),
        (f"rate(hoofhearted_gpu_nvlink_transmit_bytes_total{{{IG}}}[$__rate_interval])", "tx")),
        unit="Bps", minimum=0, no_data="No NVLink traffic counters from this GPU's driver",
        description="Payload over all links, from the driver's counters."), 8, 8)

    b.row("Processes on the GPUs")
    b.add(table("GPU processes", targets(
        (GPU_PROC_SHARE, ""),
        (f"hoofhearted_gpu_process_memory_bytes{{{IG}}}", ""), table=True),
        merge_table({"Value #A": "GPU share", "Value #B": "GPU memory", "gpu": "GPU", "name": "Process",
                     "pid": "PID", "user": "User", "owner": "Owner"},
                    hide=("Time", "job", "instance", "uuid", "engine"),
                    order=("gpu", "name", "pid", "user", "owner", "Value #A", "Value #B")),
        sort_by="GPU share", no_data="No process on the selected GPUs",
        overrides=[override("GPU share", unit="percentunit", custom__cellOptions={"mode": "basic", "type": "gauge"},
                            min=0, max=1), override("GPU memory", unit="bytes")]), 24, 8)
    return b


def processes():
    b = Board("hoofhearted-processes", "Processes", "Top processes by CPU and memory, groups over time, "
              "suspected miners, process starts and exits.", [INSTANCE], [ALERT_ANNOTATION, PROCESS_ANNOTATION])
    b.add(table("Top by CPU", targets(
        (f"topk(10, rate(hoofhearted_process_cpu_seconds_total{{{I}}}[5m]))", ""),
        (f"hoofhearted_process_resident_memory_bytes{{{I}}}", ""),
        (f"hoofhearted_process_threads{{{I}}}", ""), table=True),
        merge_table({"Value #A": "Cores (5m)", "Value #B": "Memory", "Value #C": "Threads", "name": "Process",
                     "pid": "PID", "user": "User", "owner": "Owner"},
                    order=("name", "pid", "user", "owner", "Value #A", "Value #B", "Value #C")),
        sort_by="Cores (5m)", overrides=[override("Cores (5m)", unit=CORES, decimals=2,
                                                  custom__cellOptions={"mode": "basic", "type": "gauge"}),
                                         override("Memory", unit="bytes")],
        description="From the CPU time counters over the last 5 minutes."), 12, 9)
    b.add(table("Top by memory", targets(
        (f"topk(10, hoofhearted_process_resident_memory_bytes{{{I}}})", ""),
        (f"rate(hoofhearted_process_cpu_seconds_total{{{I}}}[5m])", ""), table=True),
        merge_table({"Value #A": "Memory", "Value #B": "Cores (5m)", "name": "Process", "pid": "PID",
                     "user": "User", "owner": "Owner"},
                    order=("name", "pid", "user", "owner", "Value #A", "Value #B")),
        sort_by="Memory", overrides=[override("Memory", unit="bytes",
                                              custom__cellOptions={"mode": "basic", "type": "gauge"}),
                                     override("Cores (5m)", unit=CORES, decimals=2)]), 12, 9)
    b.add(timeseries("CPU by process (stacked)", targets((top_processes(PROC_CPU), PROC_LEGEND)), unit=CORES,
                     stack=True, minimum=0,
                     description="The 10 busiest processes of the range, from their CPU time counters."), 12, 8)
    b.add(timeseries("Memory by process", targets(
        (top_processes(f"hoofhearted_process_resident_memory_bytes{{{I}}}"), PROC_LEGEND)), unit="bytes",
        minimum=0), 12, 8)

    b.row("Groups (every process, grouped; small groups fold into 'other')")
    b.add(timeseries("CPU by group (stacked)", targets((GROUP_CPU, "{{group}}")), unit=CORES, stack=True,
                     minimum=0, description="From each group's CPU time counter: every CPU second is in "
                                            "exactly one group, exited processes included."), 12, 8)
    b.add(timeseries("Memory by group (stacked)", targets(
        (f"hoofhearted_process_group_resident_memory_bytes{{{I}}}", "{{group}}")), unit="bytes", stack=True,
        minimum=0), 12, 8)
    b.add(timeseries("Processes by group", targets(
        (f"hoofhearted_process_group_processes{{{I}}}", "{{group}}")), minimum=0), 12, 8)
    b.add(timeseries("Processes by state", targets((f"hoofhearted_processes{{{I}}}", "{{state}}")),
                     stack=True, minimum=0, legend="list", placement="bottom"), 12, 8)

    b.row("Miners, starts and exits")
    b.add(table("Suspected miners", targets((f"hoofhearted_process_suspected_miner{{{I}}} == 1", ""), table=True),
                merge_table({"name": "Process", "pid": "PID", "user": "User", "reason": "Why"},
                            hide=("Time", "job", "instance", "Value"), order=("name", "pid", "user", "reason")),
                no_data="No suspected miner",
                description="Known miner names, or a process talking to a stratum port while burning CPU or "
                            "GPU. Empty is good."), 12, 8)
    b.add(timeseries("Starts and exits", targets(
        (f"rate(hoofhearted_processes_started_total{{{I}}}[$__rate_interval])", "started"),
        (f"rate(hoofhearted_processes_exited_total{{{I}}}[$__rate_interval])", "exited")), unit="ops"), 12, 8)
    return b


def fleet():
    b = Board("hoofhearted-fleet", "Fleet", "One row per host, hottest first: sensor, fans, CPU, GPUs and the "
              "top culprit. The graphs show the 10 hosts that peaked highest over the range.", [INSTANCES], [],
              refresh="1m")
    per_host = targets(
        (f"instance:hoofhearted_temperature_celsius:max{{{I}}}", ""),
        (f"min without (chip, sensor, label) ({HEADROOM})", ""),
        (f"instance:hoofhearted_fan_speed:max_ratio{{{I}}}", ""),
        (CPU_BUSY, ""),
        (f"max without (gpu, uuid) (hoofhearted_gpu_utilization_ratio{{{I}}})", ""),
        (f"instance:hoofhearted_gpu_temperature_celsius:max{{{I}}}", ""),
        (TOP_CULPRIT, ""),
        (f'count without (alertname, alertstate, severity) (ALERTS{{alertstate="firing", {I}}}) '
         f"or 0 * hoofhearted_build_info{{{I}}}", ""), table=True)
    names = {"Value #A": "Hottest sensor", "Value #B": "Below its max", "Value #C": "Fastest fan",
             "Value #D": "CPU busy", "Value #E": "Busiest GPU", "Value #F": "Hottest GPU",
             "Value #G": "Culprit cores", "Value #H": "Alerts", "instance": "Host", "name": "Top culprit",
             "kind": "Kind", "user": "User"}
    order = ("instance", "Value #A", "Value #B", "Value #C", "Value #D", "Value #E", "Value #F", "name", "kind",
             "user", "Value #G", "Value #H")
    host_link = [{"title": "Home dashboard of ${__value.text}", "targetBlank": False,
                  "url": "/d/hoofhearted-home/hoofhearted?var-instance=${__value.raw}&${__url_time_range}"}]
    b.add(table("Hosts, hottest first", per_host, [
        {"id": "joinByField", "options": {"byField": "instance", "mode": "outer"}},
        {"id": "filterFieldsByName", "options": {"include": {"pattern": "^(instance|name|kind|user|Value #[A-H])$"}}},
        {"id": "organize", "options": {"excludeByName": {}, "indexByName": {n: i for i, n in enumerate(order)},
                                       "renameByName": names}}],
        sort_by="Hottest sensor",
        overrides=[override("Host", links=host_link),
                   override("Hottest sensor", unit="celsius", decimals=1, thresholds=HEAT, color={"mode": "thresholds"},
                            custom__cellOptions={"type": "color-background"}),
                   override("Below its max", unit="celsius", decimals=1), override("Fastest fan", unit="percentunit"),
                   override("CPU busy", unit="percentunit", custom__cellOptions={"mode": "basic", "type": "gauge"},
                            min=0, max=1),
                   override("Busiest GPU", unit="percentunit"), override("Hottest GPU", unit="celsius"),
                   override("Culprit cores", unit=CORES, decimals=2)],
        description="Click a host for its home dashboard. Fastest fan: share of its rated maximum (or PWM "
                    "duty), GPU fans included; CPU busy over 5 minutes from the counters. Hosts without GPUs "
                    "or fans leave those cells empty."), 24, 12)
    b.add(stat("Hosts reporting", targets((f"count(hoofhearted_build_info{{{I}}})", "hosts"), instant=True),
               text="value", color="value"), 4, 5)
    b.add(stat("Hosts down", targets((f"count(up{{{I}}} == 0) or vector(0)", "down"), instant=True),
               text="value", steps=thresholds(("green", None), ("red", 1))), 4, 5)
    b.add(stat("Alerts firing", targets((ACTIVE_ALERTS, "alerts"), instant=True),
               text="value", steps=thresholds(("green", None), ("red", 1))), 4, 5)
    b.add(stat("GPUs", targets((f"count(hoofhearted_gpu_up{{{I}}} == 1) or vector(0)", "up"),
                               (f"count(hoofhearted_gpu_up{{{I}}} == 0) or vector(0)", "lost"), instant=True),
               color="value"), 4, 5)
    b.add(stat("Busiest culprit in the fleet", targets(
        (f"topk(1, {TOP_CULPRIT})", "{{name}} on {{instance}} ({{user}})"), instant=True),
        unit=CORES, decimals=2, color="value", steps=thresholds(("text", None))), 8, 5)
    b.add(timeseries("Hottest reading per host (sensors and GPUs)", targets(
        (top_over_range(f"instance:hoofhearted_hottest_temperature_celsius:max{{{I}}}"), "{{instance}}")),
        unit="celsius", legend="list", placement="bottom"), 12, 8)
    b.add(timeseries("Fastest fan per host (share of max)", targets(
        (top_over_range(f"instance:hoofhearted_fan_speed:max_ratio{{{I}}}"), "{{instance}}")),
        unit="percentunit", minimum=0, maximum=1, legend="list", placement="bottom",
        no_data="No fan readings from the selected hosts (virtual machines, or fans only on a BMC)"), 12, 8)
    b.add(timeseries("CPU busy per host", targets((top_over_range(CPU_BUSY), "{{instance}}")), unit="percentunit",
                     minimum=0, maximum=1, legend="list", placement="bottom"), 12, 8)
    b.add(timeseries("Busiest GPU per host", targets(
        (top_over_range(f"max without (gpu, uuid) (hoofhearted_gpu_utilization_ratio{{{I}}})"), "{{instance}}")),
        unit="percentunit", minimum=0, maximum=1, legend="list", placement="bottom", no_data="No GPU in the fleet"),
        12, 8)
    return b


def exporter():
    b = Board("hoofhearted-exporter", "Exporter health", "Is hoofhearted itself healthy: hosts down, failing "
              "collectors, BMCs not answering, refresh durations, tier intervals, scrape latency, Grafana Live "
              "pushes. At fleet size the graphs show the 10 worst hosts or collectors of the range.", [INSTANCES], [],
              refresh="1m")
    b.add(stat("Hosts down", targets((f"up{{{I}}} == 0", "{{instance}}"), instant=True), text="name",
               steps=thresholds(("red", None)), no_data="All up"), 8, 4)
    b.add(stat("Refresh escalated", targets((f"hoofhearted_escalation_active{{{I}}} == 1", "{{instance}}"),
                                            instant=True),
               text="name", steps=thresholds(("orange", None)), no_data="None: normal refresh",
               description="Hosts where a hot reading keeps the explaining collectors at the critical interval."),
          8, 4)
    b.add(table("Versions", targets((f"count without (instance) (hoofhearted_build_info{{{I}}})", ""), table=True),
                merge_table({"version": "Version", "python_version": "Python", "Value": "Hosts"}, hide=("Time", "job")),
                sort_by="Hosts"), 8, 4)
    b.add(state_timeline("Failing collectors", targets(
        (f"hoofhearted_collector_success{{{I}}} and on (instance, job, collector) "
         f"(min_over_time(hoofhearted_collector_success{{{I}}}[$__range] @ end()) == 0)",
         "{{instance}} {{collector}}")), OK_BAD, steps=thresholds(("red", None), ("green", 1)),
        no_data=NO_FAILURES,
        description="Only collectors that failed at least once in the range. Red: the refresh failed, or is "
                    "hanging past its timeout."), 24, 8)
    b.add(state_timeline("BMCs not answering", targets(
        (f"hoofhearted_bmc_up{{{I}}} and on (instance, job, bmc) "
         f"(min_over_time(hoofhearted_bmc_up{{{I}}}[$__range] @ end()) == 0)",
         "{{instance}} {{bmc}}")), OK_BAD, steps=thresholds(("red", None), ("green", 1)),
        no_data="Every BMC answers (or none is read)",
        description="Only BMCs (IPMI or Redfish) that failed or did not answer in time at least once in the "
                    "range; the exporter's log says why."), 24, 6)
    by_collector = "instance, job, collector"
    b.add(timeseries("Refresh duration (slowest 10)", targets(
        (top_over_range(f"hoofhearted_collector_duration_seconds{{{I}}}", by_collector), "{{instance}} {{collector}}")),
        unit="s"), 12, 8)
    b.add(timeseries("Refresh interval (shortest 10: escalated)", targets(
        (f"(hoofhearted_collector_refresh_interval_seconds{{{I}}}) and on ({by_collector}) bottomk(10, "
         f"min_over_time(hoofhearted_collector_refresh_interval_seconds{{{I}}}[$__range] @ end()))",
         "{{instance}} {{collector}} ({{tier}})")), unit="s", minimum=0), 12, 8)
    b.add(timeseries("Data age (oldest 10)", targets(
        (top_over_range(f"time() - hoofhearted_collector_last_success_timestamp_seconds{{{I}}}", by_collector),
         "{{instance}} {{collector}}")),
        unit="s", minimum=0, description="Seconds since each collector last refreshed successfully."), 12, 8)
    b.add(timeseries("Scrape latency (slowest 10)", targets(
        (top_over_range(f"scrape_duration_seconds{{{I}}}"), "{{instance}}")), unit="s", minimum=0,
        description="Time Prometheus needed for one scrape of /metrics."), 12, 8)
    b.add(timeseries("Series per scrape (largest 10)", targets(
        (top_over_range(f"scrape_samples_scraped{{{I}}}"), "{{instance}}")), minimum=0), 12, 8)
    b.add(timeseries("Grafana Live pushes", targets(
        (f"sum without (instance) (rate(hoofhearted_live_pushes_total{{{I}}}[$__rate_interval]))", "{{result}}")),
        unit="ops", minimum=0, no_data="No host pushes to Grafana Live",
        description="All selected hosts together. Only when grafana_live is configured."), 12, 8)
    return b


DASHBOARDS = {"home": home, "gpu": gpu, "processes": processes, "fleet": fleet, "exporter": exporter}

# -- output --------------------------------------------------------------------------------


def provisioned():
    return {name: make().json() for name, make in DASHBOARDS.items()}


def _replace_prom_uid(node, uid):
    if isinstance(node, dict):
        if node.get("type") == "prometheus" and node.get("uid") == PROM_UID:
            node["uid"] = uid
        for v in node.values():
            _replace_prom_uid(v, uid)
    elif isinstance(node, list):
        for v in node:
            _replace_prom_uid(v, uid)


def importable(dash):
    """The variant for Dashboards > Import: Grafana asks which Prometheus to use."""
    d = copy.deepcopy(dash)
    _replace_prom_uid(d, "${DS_PROMETHEUS}")
    d["__inputs"] = [{"description": "Prometheus that scrapes hoofhearted", "label": "Prometheus",
                      "name": "DS_PROMETHEUS", "pluginId": "prometheus", "pluginName": "Prometheus",
                      "type": "datasource"}]
    types = sorted({p["type"] for p in _all_panels(d["panels"])})
    d["__requires"] = ([{"id": "grafana", "name": "Grafana", "type": "grafana", "version": "10.0.0"},
                        {"id": "prometheus", "name": "Prometheus", "type": "datasource", "version": "1.0.0"}]
                       + [{"id": t, "name": t, "type": "panel", "version": ""} for t in types if t != "row"])
    return d


def _all_panels(panels):
    for p in panels:
        yield p
        yield from _all_panels(p.get("panels", []))


def render(dash):
    return json.dumps(dash, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def outputs():
    """{path: text} of every file this script owns."""
    out = {}
    for name, dash in provisioned().items():
        out[OUT_PROVISIONED / f"{name}.json"] = render(dash)
        out[OUT_IMPORT / f"{name}.json"] = render(importable(dash))
    return out


def main(argv):
    check = "--check" in argv
    stale = []
    for path, text in outputs().items():
        current = path.read_text(encoding="utf-8") if path.exists() else None
        if current == text:
            continue
        stale.append(path)
        if not check:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
    if check and stale:
        names = ", ".join(str(p.relative_to(HERE.parent)) for p in stale)
        print(f"out of date (run python3 grafana/build.py): {names}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
