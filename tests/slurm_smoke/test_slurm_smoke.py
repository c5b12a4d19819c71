"""The SLURM profile on the local test cluster: GPU requests and parallel fold jobs.

Needs the single-node cluster of scripts/slurm_cluster.sh (`install` + `start`, as root);
skipped when no SLURM controller answers. Takes about 75 s.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
PROFILE = REPO / "profiles" / "slurm"

pytestmark = [pytest.mark.slurm, pytest.mark.slow]


def _cluster_up() -> bool:
    if shutil.which("sbatch") is None or shutil.which("scontrol") is None:
        return False
    try:
        out = subprocess.run(["scontrol", "ping"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return out.returncode == 0 and "UP" in out.stdout


def _read_kv(path: Path) -> dict[str, str]:
    return dict(line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)


def _sbatch_calls(log: str) -> dict[str, str]:
    """Map the plugin's job comment (rule_<name>[_wildcards_<values>]) to its sbatch call."""
    calls = {}
    for line in log.splitlines():
        if line.startswith("sbatch call:"):
            m = re.search(r"--comment (\S+)", line)
            assert m, line
            calls[m.group(1)] = line
    return calls


@pytest.mark.skipif(not _cluster_up(), reason="no local SLURM cluster (scripts/slurm_cluster.sh start)")
def test_train_jobs_get_a_gpu_each_and_run_in_parallel(tmp_path):
    shutil.copy(HERE / "Snakefile", tmp_path / "Snakefile")
    cmd = [
        sys.executable, "-m", "snakemake",
        "--profile", str(PROFILE),
        "--slurm-init-seconds-before-status-checks", "5",
        "--verbose",  # makes the plugin log every "sbatch call: ..."
        "--config", "sleep=15",
    ]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=400)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-5000:]

    # One sbatch per train job, each asking for one GPU; the aggregate job asks for none.
    calls = _sbatch_calls(log)
    train = {k: v for k, v in calls.items() if k.startswith("rule_train_")}
    assert sorted(train) == ["rule_train_wildcards_0", "rule_train_wildcards_1"], calls.keys()
    for call in train.values():
        assert "--gpus=1" in call, call
    assert "--gpus" not in calls["rule_aggregate"]

    # Inside the jobs: two different SLURM jobs, two different (placeholder) GPUs, overlapping runs.
    folds = [_read_kv(tmp_path / f"results/train_fold{f}.txt") for f in (0, 1)]
    job_ids = {f["SLURM_JOB_ID"] for f in folds}
    assert len(job_ids) == 2 and all(job_ids), folds
    gpus = {f["CUDA_VISIBLE_DEVICES"] for f in folds}
    assert len(gpus) == 2 and all(gpus), folds
    (s0, e0), (s1, e1) = ((int(f["start"]), int(f["end"])) for f in folds)
    assert s0 < e1 and s1 < e0, f"train jobs did not overlap: {folds}"
    assert (tmp_path / "results/summary.txt").exists()
