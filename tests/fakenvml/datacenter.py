"""Fake NVML scenario 'datacenter' for `gpu.nvml_module: tests.fakenvml.datacenter` (see scenarios.py)."""
import sys

from tests.fakenvml import scenarios

sys.modules[__name__] = scenarios.datacenter()
