"""Fake NVML scenario 'box': an H100 (no fan, processes), a GeForce RTX 2080 SUPER (a fan, slowdown
and shutdown temperatures, graphics and compute processes) and an H100 in MIG mode, on a stopped
clock so that refreshes give the same bytes on every run. Together they emit every NVIDIA family.

Made up, as the captures have none: an Xid 43 queued on the GeForce, its fan's rpm, retired
pages on the MIG H100, and the H100's NVLink payload counters. The GeForce is read without the PCIe byte counters (as on drivers that lack
them), so both PCIe families show."""
import sys

from tests.fakenvml import scenarios

box = scenarios.assemble(
    [(scenarios.H100, None), (scenarios.RTX2080, "GPU-00000000-0000-0000-0000-000000000001"),
     (scenarios.H100_MIG, "GPU-00000000-0000-0000-0000-000000000002")],
    symbols_from=scenarios.H100, clock=lambda: 1_800_000_000.0, pids={})
h100, geforce, mig = box._fake.gpus
h100.nvlink_kib = [[3_000_000 + link, 5_000_000 + link] for link in range(len(h100.nvlinks))]
geforce.xids.append(43)
geforce.fan_rpm = [1470]
geforce.pcie_bytes = None
mig.fields.update({29: 2, 30: 0, 31: 0})
sys.modules[__name__] = box
