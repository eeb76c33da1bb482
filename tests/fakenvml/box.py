"""Fake NVML scenario 'box': an H100 (no fan, processes), a GeForce RTX 2080 SUPER (a fan, slowdown
and shutdown temperatures, graphics and compute processes) and an H100 in MIG mode, on a stopped
clock so that refreshes give the same bytes on every run. Together they emit every NVIDIA family."""
import sys

from tests.fakenvml import scenarios

sys.modules[__name__] = scenarios.assemble(
    [(scenarios.H100, None), (scenarios.RTX2080, "GPU-00000000-0000-0000-0000-000000000001"),
     (scenarios.H100_MIG, "GPU-00000000-0000-0000-0000-000000000002")],
    symbols_from=scenarios.H100, clock=lambda: 1_800_000_000.0, pids={})
