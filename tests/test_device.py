"""Precision choice and per-job GPU pinning (no GPU needed: the slots are lock files)."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from cellseg.common.device import pin_gpus, resolve_amp
from cellseg.common.errors import ConfigError

SRC = str(Path(__file__).parents[1] / "src")

# A fold job: claims one of argv[2] GPUs in lock dir argv[1], reports it, holds it argv[3] s.
JOB = """
import json, sys, time
from pathlib import Path
from cellseg.common.device import claim_gpus
gpus = claim_gpus(1, int(sys.argv[2]), Path(sys.argv[1]))
print(json.dumps({"gpus": gpus, "at": time.monotonic()}), flush=True)
time.sleep(float(sys.argv[3]))
"""


def test_amp_is_cuda_only_unless_forced():
    cpu = torch.device("cpu")
    assert resolve_amp(cpu, "bf16") == "none"
    assert resolve_amp(cpu, "fp16", on_cpu=True) == "fp16"


def test_bf16_on_a_gpu_without_it_names_the_fix(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device: "Tesla V100")
    with pytest.raises(ConfigError, match="Tesla V100 has no bf16 support; set amp: fp16"):
        resolve_amp(torch.device("cuda"), "bf16")


def start_job(lock_dir, gpus, hold_s):
    return subprocess.Popen(
        [sys.executable, "-c", JOB, str(lock_dir), str(gpus), str(hold_s)],
        stdout=subprocess.PIPE, text=True, env={"PYTHONPATH": SRC, "PATH": "/usr/bin:/bin"},
    )


def test_concurrent_jobs_get_distinct_gpus_and_a_fifth_waits_for_one(tmp_path):
    """4 fold jobs at once on a 4-GPU workstation each get their own device; a 5th (another
    Snakemake run on the machine) waits until one ends, then takes the freed device."""
    jobs = [start_job(tmp_path, 4, 4.0) for _ in range(4)]
    first = [json.loads(job.stdout.readline()) for job in jobs]
    assert sorted(g for r in first for g in r["gpus"]) == [0, 1, 2, 3]
    late = start_job(tmp_path, 4, 0.0)
    claim = json.loads(late.stdout.readline())
    for job in [*jobs, late]:
        job.wait()
    assert claim["gpus"][0] in range(4) and claim["at"] >= min(r["at"] for r in first) + 3.5


def test_pin_sets_visible_devices_but_leaves_slurm_and_cpu_jobs_alone(tmp_path, monkeypatch):
    monkeypatch.setattr("cellseg.common.device.count_gpus", lambda: 2)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert pin_gpus(1, tmp_path) == "0" and os.environ["CUDA_VISIBLE_DEVICES"] == "0"
    assert pin_gpus(1, tmp_path) is None  # already pinned
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")  # set by SLURM for its allocation
    assert pin_gpus(1, tmp_path) is None
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert pin_gpus(0, tmp_path) is None and "CUDA_VISIBLE_DEVICES" not in os.environ
    monkeypatch.setattr("cellseg.common.device.count_gpus", lambda: 0)
    assert pin_gpus(1, tmp_path) is None
