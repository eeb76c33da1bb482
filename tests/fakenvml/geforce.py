"""Fake NVML scenario 'geforce' for `gpu.nvml_module: tests.fakenvml.geforce` (see scenarios.py)."""
import sys

from tests.fakenvml import scenarios

sys.modules[__name__] = scenarios.geforce()
