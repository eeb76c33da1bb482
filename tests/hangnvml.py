"""Fake NVML for fault tests (`gpu.nvml_module: tests.hangnvml`): the 'datacenter' scenario of
tests/fakenvml, except that nvmlDeviceGetTemperature blocks, as a wedged driver call does, for
as long as the file named by $FAKENVML_HANG exists."""
import os
import sys
import time

from tests.fakenvml import scenarios

nvml = scenarios.datacenter()
_lib = nvml._fake
_temperature = _lib.symbols.nvmlDeviceGetTemperature


def _hanging_temperature(*args):
    flag = os.environ.get("FAKENVML_HANG", "")
    while flag and os.path.exists(flag):
        time.sleep(0.05)
    return _temperature(*args)


_lib.symbols.nvmlDeviceGetTemperature = _hanging_temperature
sys.modules[__name__] = nvml
