"""Fake NVML scenario 'mig' for `gpu.nvml_module: tests.fakenvml.mig` (see scenarios.py)."""
import sys

from tests.fakenvml import scenarios

sys.modules[__name__] = scenarios.mig()
