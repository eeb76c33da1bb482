"""Collectors: each turns one source's snapshot into metric families.

REGISTRY maps a collector name (config key, ``--collector.<name>`` flag, ``collector`` label)
to "module:factory". A factory takes the validated config and returns a Collector, or None
when there is nothing to collect on this machine (the collector is then simply absent).
"""
import importlib

REGISTRY = {
    "cpu": "exporter.collectors.host:CPUCollector",
    "memory": "exporter.collectors.host:MemoryCollector",
    "disk": "exporter.collectors.host:DiskCollector",
    "filesystem": "exporter.collectors.host:FilesystemCollector",
    "network": "exporter.collectors.host:NetworkCollector",
    "sensors": "exporter.collectors.sensors:SensorsCollector",
    "rapl": "exporter.collectors.sensors:RAPLCollector",
    "process": "exporter.collectors.process:ProcessCollector",
    "nvidia": "exporter.collectors.gpu:NvidiaCollector",
    "nvidia_pcie": "exporter.collectors.gpu:NvidiaPcieCollector",
    "amdgpu": "exporter.collectors.gpu:AMDGPUCollector",
    "intelgpu": "exporter.collectors.gpu:IntelGPUCollector",
    "gpu_process": "exporter.collectors.gpu:GPUProcessCollector",
    "grafana_live": "exporter.live:LivePusher",
}


def factory(name):
    module, attr = REGISTRY[name].split(":")
    return getattr(importlib.import_module(module), attr)


def build(config):
    """Instantiate every enabled collector, in REGISTRY order."""
    out = []
    for name in REGISTRY:
        if not config["collectors"][name]["enabled"]:
            continue
        c = factory(name).create(config)
        if c is not None:
            out.append(c)
    return out
