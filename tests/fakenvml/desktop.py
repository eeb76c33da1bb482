"""Fake NVML scenario 'desktop' for `gpu.nvml_module: tests.fakenvml.desktop` (see scenarios.py)."""
import sys

from tests.fakenvml import scenarios

sys.modules[__name__] = scenarios.desktop()
