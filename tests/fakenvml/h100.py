"""Fake NVML scenario 'h100': one H100 under load, on a stopped clock, so that refreshes give the
same bytes on every run (golden exposition, README metric table)."""
import sys

from tests.fakenvml import scenarios

sys.modules[__name__] = scenarios.assemble([(scenarios.H100, None)], symbols_from=scenarios.H100,
                                           clock=lambda: 1_800_000_000.0, pids={})
