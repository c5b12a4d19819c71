"""cellseg.workflow.allocator: freed blocks go back to the system instead of staying in the process's RSS."""

import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt thresholds are glibc's")

# Blocks of 96 KiB (under glibc's default 128 KiB mmap threshold, so from the heap) freed
# between small arrays that stay alive, as block-wise segmentation leaves them: prints the
# resident MiB that the freed blocks leave behind.
FRAGMENT = """
import sys
import numpy as np
from cellseg.workflow.allocator import release_freed_memory
if sys.argv[1] == "release":
    assert release_freed_memory()
def resident():
    return int(open("/proc/self/statm").read().split()[1]) * 4096 / 2**20
before = resident()
kept, transient = [], []
for _ in range(400):
    transient.append(np.ones(96 * 1024, np.uint8))
    kept.append(np.ones(2048, np.uint8))
del transient
print(resident() - before)
"""


def retained_mib(mode: str) -> float:
    out = subprocess.run([sys.executable, "-c", FRAGMENT, mode], check=True, capture_output=True, text=True)
    return float(out.stdout)


def test_released_blocks_leave_the_resident_set():
    assert retained_mib("default") > 20  # 400 × 96 KiB = 37.5 MiB pinned by the kept arrays
    assert retained_mib("release") < 5  # only the kept 400 × 2 KiB
