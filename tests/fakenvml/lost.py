"""Fake NVML scenario 'lost': the datacenter GPUs; a GPU listed in $FAKENVML_CONTROL is off the bus."""
import sys

from tests.fakenvml import scenarios

sys.modules[__name__] = scenarios.datacenter()
