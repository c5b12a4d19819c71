"""The GPU acceptance script's CPU smoke mode: its own bugs show before a GPU is lent."""

import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]


@pytest.mark.slow
def test_gpu_check_cpu_smoke_prints_a_passing_table():
    done = subprocess.run(
        [str(ROOT / "benchmarks" / "gpu_check.sh"), "--cpu-smoke"],
        capture_output=True, text=True, timeout=900,
    )
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    table = [line for line in done.stdout.splitlines() if line.startswith("| ")]
    checks = [line.split("|")[1].strip() for line in table[2:]]
    assert checks[:3] == ["train bf16", "train fp16", "infer bf16"]
    assert "resume after SIGTERM (bf16, channels_last)" in checks
    assert "FAIL" not in done.stdout
    assert all(float(line.split("|")[2]) > 0 for line in table[2:5])  # images/s measured
