"""Fake NVML for fault tests (`gpu.nvml_module: tests.hangnvml`): the 'datacenter' scenario of
tests/fakenvml, except that reading the temperature (nvmlDeviceGetTemperatureV, and the older
nvmlDeviceGetTemperature) blocks, as a wedged driver call does, for as long as the file named by
$FAKENVML_HANG exists."""
import os
import sys
import time

from tests.fakenvml import scenarios

nvml = scenarios.datacenter()
_lib = nvml._fake


def _hanging(call):
    def hang(*args):
        flag = os.environ.get("FAKENVML_HANG", "")
        while flag and os.path.exists(flag):
            time.sleep(0.05)
        return call(*args)
    return hang


for _name in ("nvmlDeviceGetTemperatureV", "nvmlDeviceGetTemperature"):
    setattr(_lib.symbols, _name, _hanging(getattr(_lib.symbols, _name)))
sys.modules[__name__] = nvml
