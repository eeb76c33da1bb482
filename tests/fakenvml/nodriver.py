"""Fake NVML scenario 'nodriver' for `gpu.nvml_module: tests.fakenvml.nodriver` (see scenarios.py)."""
import sys

from tests.fakenvml import scenarios

sys.modules[__name__] = scenarios.nodriver()
