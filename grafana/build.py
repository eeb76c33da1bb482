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

I = 'instance=~"$instance"'
IG = 'instance=~"$instance", gpu=~"$gpu"'
PROC = "pid, name, user, owner"

# -- building blocks -----------------------------------------------------------------------


def target(expr, legend="", ref="A", table=False):
    t = {"datasource": PROM, "editorMode": "code", "expr": expr, "refId": ref}
    if table:
        t.update(format="table", instant=True, range=False)
    else:
        t.update(format="time_series", instant=False, range=True, legendFormat=legend or "__auto")
    return t


def targets(*specs, table=False):
    """specs: (expr, legend) pairs; refIds A, B, C ... in order."""
    return [target(e, l, chr(65 + i), table) for i, (e, l) in enumerate(specs)]


def thresholds(*steps):
    """steps: ("green", None), ("orange", 70), ..."""
    return {"mode": "absolute", "steps": [{"color": c, "value": v} for c, v in steps]}


HEAT = thresholds(("green", None), ("orange", 70), ("red", 85))
BUSY = thresholds(("green", None), ("orange", 0.7), ("red", 0.9))
OK_BAD = [{"type": "value", "options": {"0": {"color": "red", "index": 0, "text": "failing"},
                                         "1": {"color": "green", "index": 1, "text": "ok"}}}]


def override(name, **props):
    """Field override by display name or refId ('#A')."""
    if name.startswith("#"):
        matcher = {"id": "byFrameRefID", "options": name[1:]}
    else:
        matcher = {"id": "byName", "options": name}
    return {"matcher": matcher, "properties": [{"id": k.replace("__", "."), "value": v} for k, v in props.items()]}


def stat(title, tgts, unit="short", steps=None, description="", overrides=(), graph="area",
         text="value_and_name", decimals=None, mappings=None, color="background", fields=""):
    defaults = {"unit": unit, "color": {"mode": "thresholds"},
                "thresholds": steps or thresholds(("green", None)), "mappings": mappings or []}
    if decimals is not None:
        defaults["decimals"] = decimals
    return {
        "type": "stat", "title": title, "description": description, "datasource": tgts[0]["datasource"],
        "targets": tgts,
        "fieldConfig": {"defaults": defaults, "overrides": list(overrides)},
        "options": {"colorMode": color, "graphMode": graph, "justifyMode": "auto", "orientation": "auto",
                    "reduceOptions": {"calcs": ["lastNotNull"], "fields": fields, "values": False},
                    "showPercentChange": False, "textMode": text, "wideLayout": True},
    }


def timeseries(title, tgts, unit="short", description="", stack=False, fill=10, overrides=(),
               minimum=None, maximum=None, legend="table", placement="right"):
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
    return {
        "type": "timeseries", "title": title, "description": description,
        "datasource": tgts[0]["datasource"], "targets": tgts,
        "fieldConfig": {"defaults": defaults, "overrides": list(overrides)},
        "options": {"legend": {"calcs": ["lastNotNull", "max"], "displayMode": legend, "placement": placement,
                               "showLegend": True},
                    "tooltip": {"mode": "multi", "sort": "desc"}},
    }


def table(title, tgts, transformations, description="", overrides=(), sort_by=None, unit="short"):
    return {
        "type": "table", "title": title, "description": description, "datasource": tgts[0]["datasource"],
        "targets": tgts, "transformations": transformations,
        "fieldConfig": {"defaults": {"unit": unit, "custom": {"align": "auto", "cellOptions": {"type": "auto"},
                                                              "filterable": False, "inspect": False}},
                        "overrides": list(overrides)},
        "options": {"cellHeight": "sm", "showHeader": True,
                    "footer": {"countRows": False, "fields": "", "reducer": ["sum"], "show": False},
                    "sortBy": [{"desc": True, "displayName": sort_by}] if sort_by else []},
    }


def state_timeline(title, tgts, mappings, description="", steps=None):
    return {
        "type": "state-timeline", "title": title, "description": description,
        "datasource": tgts[0]["datasource"], "targets": tgts,
        "fieldConfig": {"defaults": {"color": {"mode": "thresholds"}, "mappings": mappings,
                                     "thresholds": steps or thresholds(("green", None)),
                                     "custom": {"fillOpacity": 80, "lineWidth": 0}},
                        "overrides": []},
        "options": {"alignValue": "left", "mergeValues": True, "rowHeight": 0.9, "showValue": "never",
                    "legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
                    "tooltip": {"mode": "single", "sort": "none"}},
    }


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


def query_var(name, label, query, multi=False, include_all=False, hide=0):
    v = {"name": name, "label": label, "type": "query", "datasource": PROM,
         "definition": query, "query": query,
         "refresh": 2, "sort": 3, "regex": "", "hide": hide,
         "multi": multi, "includeAll": include_all, "current": {}, "options": []}
    if include_all:
        v["allValue"] = ".*"
    return v


INSTANCE = query_var("instance", "Host", "label_values(hoofhearted_build_info, instance)")
INSTANCES = query_var("instance", "Hosts", "label_values(hoofhearted_build_info, instance)",
                      multi=True, include_all=True)
GPU = query_var("gpu", "GPU", 'label_values(hoofhearted_gpu_info{instance=~"$instance"}, gpu)',
                multi=True, include_all=True)


def prom_annotation(name, expr, title, text, color, tags=""):
    return {"datasource": PROM, "enable": True, "expr": expr, "hide": False, "iconColor": color,
            "name": name, "step": "10s", "tagKeys": tags, "textFormat": text, "titleFormat": title,
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
    f"hoofhearted_process_cpu_usage_cores{{{I}}} unless hoofhearted_process_cpu_usage_cores{{{I}}} offset 1m",
    "{{name}} entered the top processes", "pid {{pid}}, user {{user}}, owner {{owner}}", "purple",
    "name,user")


class Board:
    """Panels laid out left to right in rows of 24 columns; ids in order of addition."""

    def __init__(self, uid, title, description, variables, annotations=()):
        self.uid, self.title, self.description = uid, title, description
        self.variables, self.annotations = list(variables), list(annotations)
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

    def row(self, title, collapsed=False):
        self._newline()
        row = {"type": "row", "title": title, "collapsed": collapsed, "id": self.next_id,
               "gridPos": {"x": 0, "y": self.y, "w": 24, "h": 1}, "panels": []}
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
            "refresh": "5s",
            "schemaVersion": 39,
            "tags": [TAG],
            "templating": {"list": self.variables},
            "time": {"from": "now-15m", "to": "now"},
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

TEMP = f"hoofhearted_temperature_celsius{{{I}}}"
HEADROOM = f"hoofhearted_temperature_max_celsius{{{I}}} - {TEMP}"
FAN_OF_MAX = (f"hoofhearted_fan_speed_rpm{{{I}}} / on(instance, job, chip, fan) group_left "
              f"hoofhearted_fan_max_rpm{{{I}}}")
# Recording rules (prometheus/rules/recording.yml) where they say the same thing.
FAN_RATIO = f"chip_fan:hoofhearted_fan_speed:ratio{{{I}}}"            # rpm of rated max, else PWM duty
TOP_PROCESS = f"instance:hoofhearted_process_cpu_usage_cores:topk1{{{I}}}"
GPU_TOP_PROCESS = f"gpu:hoofhearted_gpu_process_utilization_ratio:topk1{{{IG}}}"
GPU_SHARE = (f"max by (instance, job, {PROC}) "
             f"(gpu_process:hoofhearted_gpu_process_utilization_ratio:max{{{IG}}})")
GPU_MEMORY = f"sum by (instance, job, {PROC}) (hoofhearted_gpu_process_memory_bytes{{{IG}}})"
ACTIVE_ALERTS = f'count(ALERTS{{alertstate="firing", {I}}}) or vector(0)'


def home():
    b = Board("hoofhearted-home", "Why is my fan running?",
              "What is hot, how fast the fans spin, and which process is to blame.",
              [INSTANCE, GPU], [ALERT_ANNOTATION, PROCESS_ANNOTATION, ESCALATION_ANNOTATION])
    # Top row: the answer at a glance.
    b.add(stat("Hottest sensor", targets((f"topk(1, {TEMP})", TEMP_LEGEND)), unit="celsius", steps=HEAT,
               decimals=1, graph="none", description="The hottest temperature sensor right now."), 4, 4)
    b.add(stat("Closest to its max", targets((f"bottomk(1, {HEADROOM})", TEMP_LEGEND + " below its max")),
               unit="celsius", decimals=1, graph="none",
               steps=thresholds(("red", None), ("orange", 5), ("green", 15)),
               description="The sensor with the least room left below the temperature its hardware calls "
                           "high, and how many degrees remain."), 4, 4)
    b.add(stat("Fans", targets(
        (FAN_RATIO, "{{chip}} {{fan}}"),
        (f"hoofhearted_gpu_fan_speed_ratio{{{IG}}}", "GPU{{gpu}} fan {{fan}}")),
        unit="percentunit", graph="none", steps=thresholds(("green", None), ("orange", 0.7), ("red", 0.9)),
        description="How hard each fan runs: rpm as a share of its rated maximum, else its PWM duty; "
                    "GPU fans as the driver reports them. The rpm are in the Fans graph below."), 5, 4)
    b.add(stat("CPU busy", targets((f"hoofhearted_cpu_usage_ratio{{{I}}}", "CPU")), unit="percentunit",
               steps=BUSY, text="value"), 3, 4)
    b.add(stat("GPU busy", targets((f"hoofhearted_gpu_utilization_ratio{{{IG}}}", "GPU{{gpu}}")),
               unit="percentunit", steps=BUSY), 3, 4)
    b.add(stat("GPU temperature", targets((f"hoofhearted_gpu_temperature_celsius{{{IG}}}", "GPU{{gpu}}")),
               unit="celsius", steps=thresholds(("green", None), ("orange", 75), ("red", 85))), 3, 4)
    b.add(stat("Active alerts", targets((ACTIVE_ALERTS, "alerts")), text="value", graph="none",
               steps=thresholds(("green", None), ("red", 1)),
               description="Alerts firing for this host in Prometheus."), 2, 4)
    # The verdict.
    b.add(stat("Top culprit", targets(
        (TOP_PROCESS, "{{name}} (pid {{pid}}, {{user}}, {{owner}})"),
        (f"topk(1, {GPU_TOP_PROCESS})", "{{name}} (pid {{pid}}, {{user}}) on GPU{{gpu}}")),
        unit=CORES, decimals=2, graph="none", color="value", steps=thresholds(("text", None)),
        overrides=[override("#B", unit="percentunit")],
        description="The process using the most CPU (cores) and the most GPU (share of a GPU)."), 6, 8)
    b.add(table("Verdict: top culprits", targets(
        (f"hoofhearted_process_cpu_usage_cores{{{I}}}", ""),
        (f"hoofhearted_process_resident_memory_bytes{{{I}}}", ""),
        (GPU_SHARE, ""),
        (GPU_MEMORY, ""),
        (f"process:hoofhearted_process_cpu_usage:ratio{{{I}}}", ""), table=True),
        merge_table({"Value #A": "Cores", "Value #B": "Memory", "Value #C": "GPU share",
                     "Value #D": "GPU memory", "Value #E": "Of all CPUs", "name": "Process", "user": "User",
                     "owner": "Owner", "pid": "PID"},
                    order=("name", "pid", "user", "owner", "Value #A", "Value #E", "Value #C", "Value #B",
                           "Value #D")),
        sort_by="Cores",
        overrides=[override("Cores", unit=CORES, decimals=2,
                            custom__cellOptions={"mode": "basic", "type": "gauge"}),
                   override("Memory", unit="bytes"), override("GPU memory", unit="bytes"),
                   override("Of all CPUs", unit="percentunit"),
                   override("GPU share", unit="percentunit",
                            custom__cellOptions={"mode": "basic", "type": "gauge"}, min=0, max=1)],
        description="The heaviest processes: CPU cores (and their share of the whole machine), share of "
                    "their busiest GPU's time, memory. Owner is the container, pod or systemd unit."), 18, 8)

    b.row("Over time: heat and fans, with the processes behind them")
    b.add(timeseries("Temperatures", targets(
        (TEMP, TEMP_LEGEND),
        (f"hoofhearted_gpu_temperature_celsius{{{IG}}}", "GPU{{gpu}}")), unit="celsius"), 24, 8)
    b.add(timeseries("Fans", targets(
        (f"hoofhearted_fan_speed_rpm{{{I}}}", FAN_LEGEND),
        (FAN_RATIO, "{{chip}} {{fan}} of max"),
        (f"hoofhearted_gpu_fan_speed_ratio{{{IG}}}", "GPU{{gpu}} fan {{fan}}")), unit="rotrpm",
        overrides=[override("#B", unit="percentunit", custom__axisPlacement="right", max=1),
                   override("#C", unit="percentunit", custom__axisPlacement="right", max=1)]), 24, 6)
    b.add(timeseries("CPU by process (stacked)", targets(
        (f"hoofhearted_process_cpu_usage_cores{{{I}}}", PROC_LEGEND),
        (f"hoofhearted_cpu_usage_ratio{{{I}}} * on(instance, job) hoofhearted_cpu_cores{{{I}}}",
         "whole machine")), unit=CORES, stack=True, minimum=0,
        overrides=[override("#B", custom__stacking={"group": "A", "mode": "none"}, custom__fillOpacity=0,
                            custom__lineStyle={"dash": [10, 10], "fill": "dash"}, color={"mode": "fixed",
                                                                                          "fixedColor": "red"})],
        description="Cores used by each top process, stacked; the dashed line is the whole machine."), 24, 7)
    b.add(timeseries("GPU by process (stacked)", targets(
        (f'max without (engine) (hoofhearted_gpu_process_utilization_ratio{{{IG}, engine!="memory"}})', GPU_PROC_LEGEND),
        (f"hoofhearted_gpu_utilization_ratio{{{IG}}}", "GPU{{gpu}} busy")), unit="percentunit", stack=True,
        minimum=0,
        overrides=[override("#B", custom__stacking={"group": "A", "mode": "none"}, custom__fillOpacity=0,
                            custom__lineStyle={"dash": [10, 10], "fill": "dash"})],
        description="Share of GPU time used by each process (its busiest engine), stacked; dashed: the GPU's busy."),
        24, 7)

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
    b.add(stat("Live verdict", [live_target("culprit", ["time", "labels", "verdict"])], text="value", graph="none",
               color="none", fields="/^verdict$/", description=live_help), 24, 3)  # a text field
    return b


def gpu():
    b = Board("hoofhearted-gpu", "GPU", "Per GPU: load, memory, heat vs its limits, fan, power, clocks, "
              "throttling, and the processes using it.", [INSTANCE, GPU], [ALERT_ANNOTATION])
    b.add(stat("GPU up", targets((f"hoofhearted_gpu_up{{{IG}}}", "GPU{{gpu}}")), graph="none", text="value_and_name",
               mappings=[{"type": "value", "options": {"0": {"color": "red", "index": 0, "text": "LOST"},
                                                       "1": {"color": "green", "index": 1, "text": "up"}}}],
               description="0 when the GPU fell off the bus or stopped answering."), 6, 5)
    b.add(table("GPUs", targets((f"hoofhearted_gpu_info{{{IG}}}", ""), table=True),
                merge_table({"gpu": "GPU", "name": "Model", "vendor": "Vendor", "driver_version": "Driver",
                             "pci_bus_id": "PCI", "uuid": "UUID"}, hide=("Time", "job", "instance", "Value")),
                sort_by="GPU"), 18, 5)
    b.add(timeseries("Utilisation", targets(
        (f"hoofhearted_gpu_utilization_ratio{{{IG}}}", "GPU{{gpu}} busy"),
        (f"hoofhearted_gpu_memory_utilization_ratio{{{IG}}}", "GPU{{gpu}} memory bus"),
        (f"hoofhearted_gpu_encoder_utilization_ratio{{{IG}}}", "GPU{{gpu}} encoder"),
        (f"hoofhearted_gpu_decoder_utilization_ratio{{{IG}}}", "GPU{{gpu}} decoder")),
        unit="percentunit", minimum=0, maximum=1), 12, 8)
    b.add(timeseries("Memory", targets(
        (f"hoofhearted_gpu_memory_used_bytes{{{IG}}}", "GPU{{gpu}} used"),
        (f"hoofhearted_gpu_memory_total_bytes{{{IG}}}", "GPU{{gpu}} total")), unit="bytes", minimum=0), 12, 8)
    b.add(timeseries("Temperature vs slowdown and shutdown", targets(
        (f"hoofhearted_gpu_temperature_celsius{{{IG}}}", "GPU{{gpu}}"),
        (f"hoofhearted_gpu_temperature_slowdown_celsius{{{IG}}}", "GPU{{gpu}} slowdown"),
        (f"hoofhearted_gpu_temperature_shutdown_celsius{{{IG}}}", "GPU{{gpu}} shutdown")), unit="celsius",
        overrides=[override("#B", custom__lineStyle={"dash": [10, 10], "fill": "dash"}, custom__fillOpacity=0),
                   override("#C", custom__lineStyle={"dash": [4, 4], "fill": "dash"}, custom__fillOpacity=0)]),
        12, 8)
    b.add(timeseries("Fan", targets((f"hoofhearted_gpu_fan_speed_ratio{{{IG}}}", "GPU{{gpu}} fan {{fan}}")),
                     unit="percentunit", minimum=0, maximum=1,
                     description="Datacenter GPUs have no fan of their own: no series for them."), 12, 8)
    b.add(timeseries("Power vs limit", targets(
        (f"hoofhearted_gpu_power_watts{{{IG}}}", "GPU{{gpu}}"),
        (f"hoofhearted_gpu_power_limit_watts{{{IG}}}", "GPU{{gpu}} limit"),
        (f"rate(hoofhearted_gpu_energy_joules_total{{{IG}}}[$__rate_interval])", "GPU{{gpu}} from energy"),
        (f"hoofhearted_gpu_power_default_limit_watts{{{IG}}}", "GPU{{gpu}} default limit"),
        (f"hoofhearted_gpu_power_max_limit_watts{{{IG}}}", "GPU{{gpu}} max limit"),
        (f"hoofhearted_gpu_soc_power_watts{{{IG}}}", "GPU{{gpu}} APU package")),
        unit="watt", minimum=0,
        description="An APU reports the power of its whole package (CPU cores included), shown apart.",
        overrides=[override("#B", custom__lineStyle={"dash": [10, 10], "fill": "dash"}, custom__fillOpacity=0),
                   override("#D", custom__lineStyle={"dash": [4, 4], "fill": "dash"}, custom__fillOpacity=0),
                   override("#E", custom__lineStyle={"dash": [2, 6], "fill": "dash"}, custom__fillOpacity=0)]),
        12, 8)
    b.add(timeseries("Clocks", targets((f"hoofhearted_gpu_clock_hertz{{{IG}}}", "GPU{{gpu}} {{clock}}")),
                     unit="hertz"), 12, 8)
    b.add(state_timeline("Throttle reasons", targets(
        (f"hoofhearted_gpu_clock_event{{{IG}}}", "GPU{{gpu}} {{reason}}")),
        [{"type": "value", "options": {"0": {"color": "transparent", "index": 0, "text": "-"},
                                       "1": {"color": "red", "index": 1, "text": "active"}}}],
        description="Why the GPU holds its clocks down: thermal, power cap, software slowdown..."), 12, 8)
    b.add(timeseries("Performance state and PCIe", targets(
        (f"hoofhearted_gpu_performance_state{{{IG}}}", "GPU{{gpu}} P-state"),
        (f"hoofhearted_gpu_pcie_receive_bytes_per_second{{{IG}}}", "GPU{{gpu}} PCIe rx"),
        (f"hoofhearted_gpu_pcie_transmit_bytes_per_second{{{IG}}}", "GPU{{gpu}} PCIe tx")),
        overrides=[override("#B", unit="Bps", custom__axisPlacement="right"),
                   override("#C", unit="Bps", custom__axisPlacement="right")],
        description="P0 is full speed, P8 idle. PCIe throughput only for GPUs without PCIe byte counters."),
        12, 8)

    b.row("GPU health")
    b.add(timeseries("Throttled time by reason", targets(
        (f"rate(hoofhearted_gpu_clock_event_seconds_total{{{IG}}}[$__rate_interval])", "GPU{{gpu}} {{reason}}")),
        unit="percentunit", minimum=0,
        description="Share of time the clocks were held down, from the driver's counters: throttling "
                    "between two scrapes shows too."), 12, 8)
    b.add(timeseries("Temperature margin and memory temperature", targets(
        (f"hoofhearted_gpu_temperature_margin_celsius{{{IG}}}", "GPU{{gpu}} margin to T.Limit"),
        (f'hoofhearted_gpu_sensor_temperature_celsius{{{IG}, sensor="mem"}}', "GPU{{gpu}} memory"),
        (f"hoofhearted_gpu_sensor_temperature_critical_celsius{{{IG}}}", "GPU{{gpu}} {{sensor}} critical")),
        unit="celsius",
        description="Margin: degrees left before the GPU reaches its limit; near 0 it slows down."), 12, 8)
    b.add(table("Xid errors", targets(
        (f"hoofhearted_gpu_xid_errors_total{{{IG}}}", ""), table=True),
        merge_table({"gpu": "GPU", "xid": "Xid", "Value": "Count"}, hide=("Time", "job", "instance", "uuid"),
                    order=("gpu", "xid", "Value")),
        sort_by="Count",
        description="Xid errors since the exporter started. 48, 63, 64, 74, 79, 92, 94, 95 and 119-120 mean a "
                    "broken or lost GPU."), 8, 8)
    b.add(timeseries("Memory errors and repairs", targets(
        (f"increase(hoofhearted_gpu_ecc_errors_total{{{IG}, counter=\"volatile\"}}[$__rate_interval])",
         "GPU{{gpu}} ECC {{error}}"),
        (f"hoofhearted_gpu_remapped_rows{{{IG}}}", "GPU{{gpu}} remapped rows {{cause}}"),
        (f"hoofhearted_gpu_retired_pages{{{IG}}}", "GPU{{gpu}} retired pages {{cause}}")), minimum=0,
        description="Corrected errors are repaired; uncorrected ones are lost data."), 8, 8)
    b.add(stat("Memory repair", targets(
        (f"hoofhearted_gpu_remapped_rows_pending{{{IG}}}", "GPU{{gpu}} remap pending"),
        (f"hoofhearted_gpu_remapped_rows_failed{{{IG}}}", "GPU{{gpu}} remap failed"),
        (f"hoofhearted_gpu_retired_pages_pending{{{IG}}}", "GPU{{gpu}} retirement pending")),
        graph="none", steps=thresholds(("green", None), ("red", 1)),
        mappings=[{"type": "value", "options": {"0": {"color": "green", "index": 0, "text": "no"},
                                                "1": {"color": "red", "index": 1, "text": "YES"}}}],
        description="Pending: the GPU needs a reset. Failed: the GPU needs service."), 8, 8)
    b.add(timeseries("PCIe link", targets(
        (f"hoofhearted_gpu_pcie_link_width{{{IG}}}", "GPU{{gpu}} lanes"),
        (f"hoofhearted_gpu_pcie_link_max_width{{{IG}}}", "GPU{{gpu}} max lanes"),
        (f"hoofhearted_gpu_pcie_link_generation{{{IG}}}", "GPU{{gpu}} generation"),
        (f"hoofhearted_gpu_pcie_link_max_generation{{{IG}}}", "GPU{{gpu}} max generation")), minimum=0,
        overrides=[override("#B", custom__lineStyle={"dash": [10, 10], "fill": "dash"}, custom__fillOpacity=0),
                   override("#D", custom__lineStyle={"dash": [10, 10], "fill": "dash"}, custom__fillOpacity=0)],
        description="Fewer lanes than the maximum: the link trained down (reseat the card). The generation "
                    "drops at idle to save power."), 8, 8)
    b.add(timeseries("PCIe traffic and replays", targets(
        (f"rate(hoofhearted_gpu_pcie_receive_bytes_total{{{IG}}}[$__rate_interval])", "GPU{{gpu}} rx"),
        (f"rate(hoofhearted_gpu_pcie_transmit_bytes_total{{{IG}}}[$__rate_interval])", "GPU{{gpu}} tx"),
        (f"increase(hoofhearted_gpu_pcie_replays_total{{{IG}}}[$__rate_interval])", "GPU{{gpu}} replays")),
        unit="Bps", minimum=0,
        overrides=[override("#C", unit="short", custom__axisPlacement="right")],
        description="From the driver's byte counters; replays are packets resent after link errors."), 8, 8)
    b.add(timeseries("Fan speed", targets((f"hoofhearted_gpu_fan_speed_rpm{{{IG}}}", "GPU{{gpu}} fan {{fan}}")),
                     unit="rotrpm", minimum=0), 8, 8)
    b.add(timeseries("NVLink", targets(
        (f"hoofhearted_gpu_nvlink_links_active{{{IG}}}", "GPU{{gpu}} links up"),
        (f"hoofhearted_gpu_nvlink_links{{{IG}}}", "GPU{{gpu}} links"),
        (f"increase(hoofhearted_gpu_nvlink_errors_total{{{IG}}}[$__rate_interval])", "GPU{{gpu}} {{error}} errors")),
        minimum=0,
        overrides=[override("#B", custom__lineStyle={"dash": [10, 10], "fill": "dash"}, custom__fillOpacity=0),
                   override("#C", custom__axisPlacement="right")],
        description="Links up against links present; errors over all links."), 8, 8)

    b.row("Processes on the GPUs")
    b.add(table("GPU processes", targets(
        (f'max without (engine) (hoofhearted_gpu_process_utilization_ratio{{{IG}, engine!="memory"}})', ""),
        (f"hoofhearted_gpu_process_memory_bytes{{{IG}}}", ""), table=True),
        merge_table({"Value #A": "GPU share", "Value #B": "GPU memory", "gpu": "GPU", "name": "Process",
                     "pid": "PID", "user": "User", "owner": "Owner"},
                    hide=("Time", "job", "instance", "uuid", "engine"),
                    order=("gpu", "name", "pid", "user", "owner", "Value #A", "Value #B")),
        sort_by="GPU share",
        overrides=[override("GPU share", unit="percentunit", custom__cellOptions={"mode": "basic", "type": "gauge"},
                            min=0, max=1), override("GPU memory", unit="bytes")]), 24, 8)
    b.add(timeseries("GPU share by process (stacked)", targets(
        (f'max without (engine) (hoofhearted_gpu_process_utilization_ratio{{{IG}, engine!="memory"}})', GPU_PROC_LEGEND)),
        unit="percentunit", stack=True, minimum=0), 12, 8)
    b.add(timeseries("GPU memory by process (stacked)", targets(
        (f"hoofhearted_gpu_process_memory_bytes{{{IG}}}", GPU_PROC_LEGEND)), unit="bytes", stack=True,
        minimum=0), 12, 8)
    b.add(timeseries("GPU busy time by process name (stacked)", targets(
        (f'sum by (instance, gpu, group) (rate(hoofhearted_gpu_process_group_engine_seconds_total{{{IG}, '
         f'engine!="memory"}}[$__rate_interval]))', "GPU{{gpu}} {{group}}")),
        unit="percentunit", stack=True, minimum=0,
        description="Engine busy time from counters, summed over the engines of each process name: exact over "
                    "any window, however far apart the scrapes."), 24, 8)
    return b


def processes():
    b = Board("hoofhearted-processes", "Processes", "Top processes by CPU and memory, groups over time, "
              "suspected miners, process starts and exits.", [INSTANCE], [ALERT_ANNOTATION, PROCESS_ANNOTATION])
    b.add(table("Top by CPU", targets(
        (f"topk(10, hoofhearted_process_cpu_usage_cores{{{I}}})", ""),
        (f"hoofhearted_process_resident_memory_bytes{{{I}}}", ""),
        (f"hoofhearted_process_threads{{{I}}}", ""), table=True),
        merge_table({"Value #A": "Cores", "Value #B": "Memory", "Value #C": "Threads", "name": "Process",
                     "pid": "PID", "user": "User", "owner": "Owner"},
                    order=("name", "pid", "user", "owner", "Value #A", "Value #B", "Value #C")),
        sort_by="Cores", overrides=[override("Cores", unit=CORES, decimals=2,
                                             custom__cellOptions={"mode": "basic", "type": "gauge"}),
                                    override("Memory", unit="bytes")]), 12, 9)
    b.add(table("Top by memory", targets(
        (f"topk(10, hoofhearted_process_resident_memory_bytes{{{I}}})", ""),
        (f"hoofhearted_process_cpu_usage_cores{{{I}}}", ""), table=True),
        merge_table({"Value #A": "Memory", "Value #B": "Cores", "name": "Process", "pid": "PID",
                     "user": "User", "owner": "Owner"},
                    order=("name", "pid", "user", "owner", "Value #A", "Value #B")),
        sort_by="Memory", overrides=[override("Memory", unit="bytes",
                                              custom__cellOptions={"mode": "basic", "type": "gauge"}),
                                     override("Cores", unit=CORES, decimals=2)]), 12, 9)
    b.add(timeseries("CPU by process (stacked)", targets(
        (f"hoofhearted_process_cpu_usage_cores{{{I}}}", PROC_LEGEND)), unit=CORES, stack=True, minimum=0), 12, 8)
    b.add(timeseries("Memory by process", targets(
        (f"hoofhearted_process_resident_memory_bytes{{{I}}}", PROC_LEGEND)), unit="bytes", minimum=0), 12, 8)

    b.row("Groups (every process, grouped; small groups fold into 'other')")
    b.add(timeseries("CPU by group (stacked)", targets(
        (f"hoofhearted_process_group_cpu_usage_cores{{{I}}}", "{{group}}")), unit=CORES, stack=True,
        minimum=0), 12, 8)
    b.add(timeseries("CPU by group, from its counter", targets(
        (f"rate(hoofhearted_process_group_cpu_seconds_total{{{I}}}[$__rate_interval])", "{{group}}")),
        unit=CORES, stack=True, minimum=0,
        description="Includes processes that exited during the interval."), 12, 8)
    b.add(timeseries("Memory by group (stacked)", targets(
        (f"hoofhearted_process_group_resident_memory_bytes{{{I}}}", "{{group}}")), unit="bytes", stack=True,
        minimum=0), 12, 8)
    b.add(timeseries("Processes by group", targets(
        (f"hoofhearted_process_group_processes{{{I}}}", "{{group}}")), minimum=0), 12, 8)

    b.row("Miners, starts and exits")
    b.add(table("Suspected miners", targets((f"hoofhearted_process_suspected_miner{{{I}}}", ""), table=True),
                merge_table({"name": "Process", "pid": "PID", "user": "User", "reason": "Why"},
                            hide=("Time", "job", "instance", "Value"), order=("name", "pid", "user", "reason")),
                description="Known miner names, or a process talking to a stratum port while burning CPU or "
                            "GPU. Empty is good."), 12, 8)
    b.add(timeseries("Starts and exits", targets(
        (f"rate(hoofhearted_processes_started_total{{{I}}}[$__rate_interval])", "started"),
        (f"rate(hoofhearted_processes_exited_total{{{I}}}[$__rate_interval])", "exited")), unit="ops"), 6, 8)
    b.add(timeseries("Processes by state", targets((f"hoofhearted_processes{{{I}}}", "{{state}}")),
                     stack=True, minimum=0, legend="list", placement="bottom"), 6, 8)
    return b


def fleet():
    b = Board("hoofhearted-fleet", "Fleet", "One row per host, hottest first: sensor, fans, CPU, GPUs and the "
              "top culprit.", [INSTANCES], [])
    per_host = targets(
        (f"instance:hoofhearted_temperature_celsius:max{{{I}}}", ""),
        (f"min by (instance) ({HEADROOM})", ""),
        (f"instance:hoofhearted_fan_speed:max_ratio{{{I}}}", ""),
        (f"max by (instance) (hoofhearted_cpu_usage_ratio{{{I}}})", ""),
        (f"max by (instance) (hoofhearted_gpu_utilization_ratio{{{I}}})", ""),
        (f"instance:hoofhearted_gpu_temperature_celsius:max{{{I}}}", ""),
        (TOP_PROCESS, ""),
        (f'sum by (instance) (ALERTS{{alertstate="firing", {I}}}) '
         f"or sum by (instance) (0 * hoofhearted_build_info{{{I}}})", ""), table=True)
    names = {"Value #A": "Hottest sensor", "Value #B": "Below its max", "Value #C": "Fastest fan",
             "Value #D": "CPU busy", "Value #E": "Busiest GPU", "Value #F": "Hottest GPU",
             "Value #G": "Culprit cores", "Value #H": "Alerts", "instance": "Host", "name": "Top culprit",
             "pid": "PID", "user": "User"}
    order = ("instance", "Value #A", "Value #B", "Value #C", "Value #D", "Value #E", "Value #F", "name", "pid",
             "user", "Value #G", "Value #H")
    b.add(table("Hosts, hottest first", per_host, [
        {"id": "joinByField", "options": {"byField": "instance", "mode": "outer"}},
        {"id": "filterFieldsByName", "options": {"include": {"pattern": "^(instance|name|pid|user|Value #[A-H])$"}}},
        {"id": "organize", "options": {"excludeByName": {}, "indexByName": {n: i for i, n in enumerate(order)},
                                       "renameByName": names}}],
        sort_by="Hottest sensor",
        overrides=[override("Hottest sensor", unit="celsius", decimals=1, thresholds=HEAT, color={"mode": "thresholds"},
                            custom__cellOptions={"type": "color-background"}),
                   override("Below its max", unit="celsius", decimals=1), override("Fastest fan", unit="percentunit"),
                   override("CPU busy", unit="percentunit", custom__cellOptions={"mode": "basic", "type": "gauge"},
                            min=0, max=1),
                   override("Busiest GPU", unit="percentunit"), override("Hottest GPU", unit="celsius"),
                   override("Culprit cores", unit=CORES, decimals=2)],
        description="Fastest fan: share of its rated maximum (or PWM duty), GPU fans included. Hosts "
                    "without GPUs or fans leave those cells empty."), 24, 12)
    b.add(stat("Hosts reporting", targets((f"count(hoofhearted_build_info{{{I}}})", "hosts")), text="value",
               graph="none", color="value"), 4, 5)
    b.add(stat("Hosts down", targets(('count(up{job="hoofhearted"} == 0) or vector(0)', "down")), text="value",
               graph="none", steps=thresholds(("green", None), ("red", 1))), 4, 5)
    b.add(stat("Alerts firing", targets((f'count(ALERTS{{alertstate="firing", {I}}}) or vector(0)', "alerts")),
               text="value", graph="none", steps=thresholds(("green", None), ("red", 1))), 4, 5)
    b.add(stat("GPUs", targets((f"count(hoofhearted_gpu_up{{{I}}} == 1) or vector(0)", "up"),
                               (f"count(hoofhearted_gpu_up{{{I}}} == 0) or vector(0)", "lost")),
               graph="none", color="value"), 4, 5)
    b.add(stat("Busiest process in the fleet", targets(
        (f"topk(1, {TOP_PROCESS})", "{{name}} on {{instance}} ({{user}})")),
        unit=CORES, decimals=2, graph="none", color="value", steps=thresholds(("text", None))), 8, 5)
    b.add(timeseries("Hottest reading per host (sensors and GPUs)", targets(
        (f"instance:hoofhearted_hottest_temperature_celsius:max{{{I}}}", "{{instance}}")), unit="celsius"), 12, 8)
    b.add(timeseries("Fastest fan per host (share of max)", targets(
        (f"instance:hoofhearted_fan_speed:max_ratio{{{I}}}", "{{instance}}")), unit="percentunit", minimum=0,
        maximum=1), 12, 8)
    b.add(timeseries("CPU busy per host", targets(
        (f"max by (instance) (hoofhearted_cpu_usage_ratio{{{I}}})", "{{instance}}")), unit="percentunit",
        minimum=0, maximum=1), 12, 8)
    b.add(timeseries("Busiest GPU per host", targets(
        (f"max by (instance) (hoofhearted_gpu_utilization_ratio{{{I}}})", "{{instance}}")), unit="percentunit",
        minimum=0, maximum=1), 12, 8)
    return b


def exporter():
    b = Board("hoofhearted-exporter", "Exporter health", "Is hoofhearted itself healthy: collector success, "
              "refresh durations, tier intervals, scrape latency, Grafana Live pushes.", [INSTANCES], [])
    b.add(stat("Up", targets((f"up{{{I}}}", "{{instance}}")), graph="none", mappings=[
        {"type": "value", "options": {"0": {"color": "red", "index": 0, "text": "down"},
                                      "1": {"color": "green", "index": 1, "text": "up"}}}]), 8, 4)
    b.add(stat("Refresh escalated", targets((f"hoofhearted_escalation_active{{{I}}}", "{{instance}}")),
               graph="none", mappings=[{"type": "value", "options": {
                   "0": {"color": "green", "index": 0, "text": "normal"},
                   "1": {"color": "orange", "index": 1, "text": "hot: fast refresh"}}}]), 8, 4)
    b.add(table("Version", targets((f"hoofhearted_build_info{{{I}}}", ""), table=True),
                merge_table({"instance": "Host", "version": "Version", "python_version": "Python"},
                            hide=("Time", "job", "Value")), sort_by="Host"), 8, 4)
    b.add(state_timeline("Collector success", targets(
        (f"hoofhearted_collector_success{{{I}}}", "{{instance}} {{collector}}")), OK_BAD,
        steps=thresholds(("red", None), ("green", 1)),
        description="Red: the last refresh failed, or is hanging past its timeout."), 24, 8)
    b.add(timeseries("Refresh duration", targets(
        (f"hoofhearted_collector_duration_seconds{{{I}}}", "{{instance}} {{collector}}")), unit="s"), 12, 8)
    b.add(timeseries("Refresh interval (tier, shorter while escalated)", targets(
        (f"hoofhearted_collector_refresh_interval_seconds{{{I}}}", "{{instance}} {{collector}} ({{tier}})")),
        unit="s", minimum=0), 12, 8)
    b.add(timeseries("Data age", targets(
        (f"time() - hoofhearted_collector_last_success_timestamp_seconds{{{I}}}", "{{instance}} {{collector}}")),
        unit="s", minimum=0, description="Seconds since each collector last refreshed successfully."), 12, 8)
    b.add(timeseries("Scrape latency", targets(
        (f"scrape_duration_seconds{{{I}}}", "{{instance}}")), unit="s", minimum=0,
        description="Time Prometheus needed for one scrape of /metrics."), 12, 8)
    b.add(timeseries("Series per scrape", targets((f"scrape_samples_scraped{{{I}}}", "{{instance}}")),
                     minimum=0), 12, 8)
    b.add(timeseries("Grafana Live pushes", targets(
        (f"rate(hoofhearted_live_pushes_total{{{I}}}[$__rate_interval])", "{{instance}} {{result}}")),
        unit="ops", minimum=0, description="Only when grafana_live is configured."), 12, 8)
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
