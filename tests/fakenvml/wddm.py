"""Fake NVML scenario 'wddm' for `gpu.nvml_module: tests.fakenvml.wddm` (see scenarios.py)."""
import sys

from tests.fakenvml import scenarios

sys.modules[__name__] = scenarios.wddm()
