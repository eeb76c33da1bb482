"""Collectors: each turns one source's snapshot into metric families.

COLLECTORS is the one place a collector is declared: its name (config key under
``collectors:``, ``--collector.<name>`` flag, ``collector`` label), its factory ("module:class")
and its default tier. A factory's ``create(config)`` takes the validated config and returns a
Collector, or None when there is nothing to collect on this machine (the collector is then
simply absent). A collector's own settings live in the config section of the same name.
A collector with ``reads = "<name>"`` gets that collector as ``source`` and is left out when
it is.
"""
import importlib
from typing import NamedTuple


class Declared(NamedTuple):
    factory: str
    tier: str


COLLECTORS = {
    "cpu": Declared("exporter.collectors.host:CPUCollector", "critical"),
    "memory": Declared("exporter.collectors.host:MemoryCollector", "important"),
    "disk": Declared("exporter.collectors.host:DiskCollector", "standard"),
    "filesystem": Declared("exporter.collectors.host:FilesystemCollector", "background"),
    "network": Declared("exporter.collectors.host:NetworkCollector", "standard"),
    "sensors": Declared("exporter.collectors.sensors:SensorsCollector", "critical"),
    "rapl": Declared("exporter.collectors.sensors:RAPLCollector", "standard"),
    "process": Declared("exporter.collectors.process:ProcessCollector", "important"),
    "process_cpu": Declared("exporter.collectors.process_cpu:ProcessCPUCollector", "critical"),
    "nvidia": Declared("exporter.collectors.gpu:NvidiaCollector", "critical"),
    "nvidia_pcie": Declared("exporter.collectors.gpu:NvidiaPcieCollector", "background"),
    "amdgpu": Declared("exporter.collectors.gpu:AMDGPUCollector", "critical"),
    "intelgpu": Declared("exporter.collectors.gpu:IntelGPUCollector", "critical"),
    "gpu_process": Declared("exporter.collectors.gpu:GPUProcessCollector", "important"),
    "bmc": Declared("exporter.collectors.bmc:BMCCollector", "background"),
}

REGISTRY = {name: d.factory for name, d in COLLECTORS.items()}
DEFAULT_TIERS = {name: d.tier for name, d in COLLECTORS.items()}


def factory(name):
    module, attr = REGISTRY[name].split(":")
    return getattr(importlib.import_module(module), attr)


def build(config):
    """Instantiate every enabled collector, in COLLECTORS order."""
    out = []
    for name in COLLECTORS:
        if not config["collectors"][name]["enabled"]:
            continue
        c = factory(name).create(config)
        if c is not None:
            out.append(c)
    by_name = {c.name: c for c in out}
    for c in list(out):
        if getattr(c, "reads", None):
            c.source = by_name.get(c.reads)
            if c.source is None:
                out.remove(c)
    return out
