"""The demo pipeline through the SLURM profile: one GPU job per fold, folds in parallel, and
the same results as a local run; then `segment` of one image in regions, each region its own
SLURM job with one GPU, joined into the cells of a local run. One file, so that its tests run
one after another on the 2-CPU cluster, also under pytest-xdist (`--dist loadfile`).

Runs the tiny preset (tests/configs/tiny.yaml: 8 images, 2 folds, 1 epoch) with
`--profile profiles/slurm` on the single-node test cluster of scripts/slurm_cluster.sh (2 CPUs,
2 placeholder GPUs, so training runs on the CPU inside GPU jobs), and compares it with the
session's local tiny run (`finished_run`, `--cores 2`). Checks:

- every `train_fold` job is its own SLURM job asking for one GPU (`sbatch ... --gpus=1`);
- the two fold jobs run at the same time (a `squeue` poller sees both RUNNING at once, and
  their training logs overlap in time);
- no job asks for more than the 1 CPU it runs on, and the queue never holds more than the
  cluster's CPUs in running jobs (without cgroups nothing else stops oversubscription);
- the maps and tiles of 8 images are one SLURM job per shard, 4 + 4 (tiny.yaml's
  preprocess.shards);
- split table and tiles byte-identical, trained weights identical tensors, predictions and
  scores equal to the local run's (CPU training is deterministic at the same thread count).

Skipped when no SLURM controller answers (`scontrol ping`). Takes about 8-10 minutes on a
2-core machine; the SLURM run's wall time and the local run's are printed (pytest -s).
"""

from __future__ import annotations

import dataclasses
import re
import shutil
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile
from workflow_helpers import FOUR_REGIONS, LOW_CELLS, copy_workdir, snakemake, write_config, write_region_image

REPO = Path(__file__).resolve().parents[1]
SNAKEFILE = REPO / "Snakefile"
CONFIGS = [REPO / "config.yaml", REPO / "tests" / "configs" / "tiny.yaml"]
PROFILE = REPO / "profiles" / "slurm"
FOLDS = (0, 1)
N_SHARDS = 4  # tiny.yaml: preprocess.shards (each of its 8 images falls in one of 4 shards)
CLUSTER_CPUS = 2
TIMEOUT_S = 1200
# The plugin queries the jobs' states this many seconds after a job ends or is submitted, then
# 10 s later each time no job has ended (its own back-off; --seconds-between-status-checks is not
# used). The test's jobs take a few seconds each, so 1 s instead of the profile's 20 s.
QUICK_STATUS = ("--slurm-init-seconds-before-status-checks", "1")


def _cluster_up() -> bool:
    if shutil.which("sbatch") is None or shutil.which("scontrol") is None:
        return False
    try:
        out = subprocess.run(["scontrol", "ping"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return out.returncode == 0 and "UP" in out.stdout


pytestmark = [
    pytest.mark.slurm,
    pytest.mark.slow,
    pytest.mark.skipif(not _cluster_up(), reason="no local SLURM cluster (scripts/slurm_cluster.sh start)"),
]


@dataclasses.dataclass
class Run:
    workdir: Path
    log: str
    wall_s: float
    queue: list[dict] = dataclasses.field(default_factory=list)


class QueuePoller(threading.Thread):
    """Samples `squeue` every `interval` s: the jobs whose working directory is `workdir`.

    Each sample is {"t": epoch s, "jobs": [{id, comment, state, tres, cpus}, ...]}; for every
    train job seen RUNNING, `scontrol show job -d` is read once to record its GPU index.
    """

    # -O (not -o) for tres-per-job, where --gpus=1 shows as gres:gpu:1; "|" ends each field.
    FORMAT = "JobID:20|,Comment:300|,State:20|,tres-per-job:100|,NumCPUs:10|,WorkDir:1000"

    def __init__(self, workdir: Path, interval: float = 1.0):
        super().__init__(daemon=True)
        self.workdir = str(workdir)
        self.interval = interval
        self.samples: list[dict] = []
        self.gpu_index: dict[str, str] = {}
        self._done = threading.Event()

    def stop(self) -> None:
        self._done.set()
        self.join(timeout=30)

    def run(self) -> None:
        while not self._done.is_set():
            out = subprocess.run(
                ["squeue", "-h", "-t", "all", "-O", self.FORMAT], capture_output=True, text=True
            )
            jobs = []
            for line in out.stdout.splitlines():
                job_id, comment, state, tres, cpus, workdir = (f.strip() for f in line.split("|", 5))
                if workdir == self.workdir:
                    jobs.append({"id": job_id, "comment": comment, "state": state, "tres": tres, "cpus": int(cpus)})
                    if comment.startswith("rule_train_fold") and state == "RUNNING" and comment not in self.gpu_index:
                        detail = subprocess.run(["scontrol", "show", "job", "-d", job_id], capture_output=True, text=True)
                        m = re.search(r"GRES=gpu\S*\(IDX:(\S+?)\)", detail.stdout)
                        if m:
                            self.gpu_index[comment] = m.group(1)
            self.samples.append({"t": time.time(), "jobs": jobs})
            self._done.wait(self.interval)


def _snakemake(workdir: Path, *options: str) -> tuple[str, float]:
    """Run the pipeline in `workdir` (never the checkout); return its log and wall time."""
    workdir.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable, "-m", "snakemake",
        "-s", str(SNAKEFILE),
        "--directory", str(workdir),
        "--configfile", *map(str, CONFIGS),
        *options,
    ]
    start = time.monotonic()
    proc = subprocess.run(cmd, cwd=workdir, capture_output=True, text=True, timeout=TIMEOUT_S)
    wall_s = time.monotonic() - start
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{log[-8000:]}"
    return log, wall_s


@pytest.fixture(scope="module")
def local_run(finished_run) -> Path:
    """The session's tiny run (`--cores 2`, the same config files): what SLURM must reproduce."""
    print(f"\nlocal run (--cores 2): {finished_run.seconds:.0f} s")
    return finished_run.workdir


@pytest.fixture(scope="module")
def slurm_run(tmp_path_factory, local_run) -> Run:
    # Depends on local_run so the two runs never share the 2 CPUs.
    workdir = tmp_path_factory.mktemp("slurm")
    poller = QueuePoller(workdir)
    poller.start()
    try:
        log, wall_s = _snakemake(
            workdir,
            "--profile", str(PROFILE),
            *QUICK_STATUS,
            "--slurm-keep-successful-logs",  # the per-job logs are checked below
            "--verbose",  # makes the plugin log every "sbatch call: ..."
        )
    finally:
        poller.stop()
    print(f"\nSLURM run (profiles/slurm): {wall_s:.0f} s, fold GPUs {poller.gpu_index}")
    run = Run(workdir, log, wall_s, poller.samples)
    run.gpu_index = poller.gpu_index
    return run


def _sbatch_calls(log: str) -> dict[str, str]:
    """The plugin's job comment (rule_<name>[_wildcards_<values>]) -> its sbatch call."""
    calls = {}
    for line in log.splitlines():
        if line.startswith("sbatch call:"):
            m = re.search(r"--comment (\S+)", line)
            assert m, line
            calls[m.group(1)] = line
    return calls


def _train_comment(fold: int) -> str:
    return f"rule_train_fold_wildcards_{fold}"


# --- GPU requests and CPU limits ---------------------------------------------------------------


def test_each_fold_is_its_own_slurm_job_with_one_gpu(slurm_run):
    calls = _sbatch_calls(slurm_run.log)
    train = sorted(c for c in calls if c.startswith("rule_train_fold"))
    assert train == [_train_comment(f) for f in FOLDS], sorted(calls)
    for comment in train:
        assert "--gpus=1" in calls[comment], calls[comment]
    # Data preparation asks for no GPU.
    for comment in ("rule_demo_dataset", "rule_split_dataset", "rule_evaluate_predictions"):
        assert "--gpus" not in calls[comment], calls[comment]
    # SLURM itself recorded the GPU request of each fold job, and gave them different GPUs.
    seen = {
        job["comment"]: job["tres"] for sample in slurm_run.queue for job in sample["jobs"]
        if job["comment"].startswith("rule_train_fold")
    }
    assert sorted(seen) == train, seen
    assert all("gpu:1" in tres for tres in seen.values()), seen
    assert sorted(slurm_run.gpu_index) == train and len(set(slurm_run.gpu_index.values())) == 2, slurm_run.gpu_index
    # Each fold's job log: the inner snakemake ran train_fold with that fold.
    for fold in FOLDS:
        logs = list((slurm_run.workdir / ".snakemake/slurm_logs/rule_train_fold" / str(fold)).glob("*.log"))
        assert len(logs) == 1, logs
        text = logs[0].read_text()
        assert "rule train_fold:" in text and f"wildcards: fold={fold}" in text, text[-3000:]


def test_preprocessing_is_one_submission_per_shard(slurm_run):
    """The maps and tiles of 8 images are 4 + 4 sbatch calls (preprocess.shards: 4), not 8 + 8."""
    submitted = [
        re.search(r"--comment rule_(\w+?)_wildcards", line)
        for line in slurm_run.log.splitlines()
        if line.startswith("sbatch call:")
    ]
    rules = [m[1] for m in submitted if m]
    assert rules.count("compute_maps") == N_SHARDS and rules.count("make_tiles") == N_SHARDS, rules


def test_jobs_ask_for_one_cpu_and_never_oversubscribe(slurm_run):
    calls = _sbatch_calls(slurm_run.log)
    for call in calls.values():
        assert "--cpus-per-task=1 " in call, call
    for sample in slurm_run.queue:
        running = [job for job in sample["jobs"] if job["state"] == "RUNNING"]
        assert sum(job["cpus"] for job in running) <= CLUSTER_CPUS, sample
    # Inside each fold job the rule ran with 1 thread (snakemake omits "threads:" for 1), so
    # the script's torch.set_num_threads(snakemake.threads) and OMP_NUM_THREADS are 1.
    for fold in FOLDS:
        text = next((slurm_run.workdir / ".snakemake/slurm_logs/rule_train_fold" / str(fold)).glob("*.log")).read_text()
        job_block = text[text.rindex("rule train_fold:"):]
        job_block = job_block[: job_block.index("Shell command")]
        assert "cpus_per_task=1" in job_block and "threads:" not in job_block, job_block


def test_the_thresholds_are_merged_where_snakemake_runs(slurm_run):
    """collect_thresholds, a JSON merge, is a local rule: no queue wait between tuning and scoring."""
    calls = _sbatch_calls(slurm_run.log)
    assert "rule_tune_thresholds_wildcards_cells" in calls and not any("collect_thresholds" in c for c in calls)
    assert (slurm_run.workdir / "results/tune/thresholds.json").is_file()


# --- the two folds in parallel ------------------------------------------------------------------


def _log_interval(path: Path) -> tuple[float, float]:
    """First and last timestamp of a cellseg job log (`YYYY-mm-dd HH:MM:SS,mmm ...` lines)."""
    stamps = [
        datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()
        for line in path.read_text().splitlines()
        if re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} ", line)
    ]
    assert stamps, path
    return stamps[0], stamps[-1]


def test_fold_jobs_run_at_the_same_time(slurm_run):
    comments = {_train_comment(f) for f in FOLDS}
    # squeue: a moment at which both fold jobs were RUNNING.
    both_running = [
        sample["t"] for sample in slurm_run.queue
        if comments <= {job["comment"] for job in sample["jobs"] if job["state"] == "RUNNING"}
    ]
    states = [
        (round(s["t"]), {j["comment"]: j["state"] for j in s["jobs"] if j["comment"] in comments})
        for s in slurm_run.queue
    ]
    assert both_running, [s for s in states if s[1]]
    # The fold logs: each started before the other finished.
    (s0, e0), (s1, e1) = (_log_interval(slurm_run.workdir / f"logs/train/fold{f}.log") for f in FOLDS)
    assert s0 < e1 and s1 < e0, f"fold trainings did not overlap: {(s0, e0)}, {(s1, e1)}"


# --- same results as a local run ------------------------------------------------------------------


def _relative_files(root: Path, pattern: str) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.glob(pattern))


def test_split_and_tiles_are_identical(local_run, slurm_run):
    a, b = local_run / "results", slurm_run.workdir / "results"
    assert (a / "split/split.tsv").read_bytes() == (b / "split/split.tsv").read_bytes()
    tiles = _relative_files(a, "tiles/*")
    assert len(tiles) == 2 * N_SHARDS and tiles == _relative_files(b, "tiles/*")
    for name in tiles:  # .npz too: numpy writes a fixed date into the zip headers
        assert (a / name).read_bytes() == (b / name).read_bytes(), name


def test_trained_weights_are_identical(local_run, slurm_run):
    import torch

    for fold in FOLDS:
        path = f"results/train/fold{fold}/model_best.pt"
        local = torch.load(local_run / path, map_location="cpu", weights_only=True)
        slurm = torch.load(slurm_run.workdir / path, map_location="cpu", weights_only=True)
        assert local.keys() == slurm.keys(), path
        differ = [k for k in local if not torch.equal(local[k], slurm[k])]
        assert not differ, f"{path}: {len(differ)} of {len(local)} tensors differ, e.g. {differ[:5]}"


def test_predictions_and_scores_are_equal(local_run, slurm_run):
    a, b = local_run / "results", slurm_run.workdir / "results"
    predictions = _relative_files(a, "predict/fold*/*/*.npz") + _relative_files(a, "ensemble/*/*.npz")
    assert predictions and predictions == (
        _relative_files(b, "predict/fold*/*/*.npz") + _relative_files(b, "ensemble/*/*.npz")
    )
    for name in predictions:
        with np.load(a / name) as x, np.load(b / name) as y:
            assert sorted(x.files) == sorted(y.files), name
            for key in x.files:
                np.testing.assert_array_equal(x[key], y[key], err_msg=f"{name}:{key}")
    for name in ("evaluate/scores.tsv", "tune/thresholds.json", "submission/test-results.json"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name


# --- segment in regions ------------------------------------------------------------------------


def test_each_region_is_its_own_slurm_job_with_one_gpu(finished_run, tmp_path):
    images = write_region_image(tmp_path / "images", finished_run.workdir).parent
    n_regions = 4
    config = write_config(tmp_path / "regions.yaml", {"segment": FOUR_REGIONS, **LOW_CELLS})
    run = dict(repo=finished_run.repo, configs=[config])
    local = copy_workdir(finished_run.workdir, tmp_path / "local")
    cluster = copy_workdir(finished_run.workdir, tmp_path / "slurm")
    with ThreadPoolExecutor(1) as pool:  # the local run uses the cores while the cluster's jobs wait
        local_done = pool.submit(snakemake, local, "segment", "--config", f"segment_images={images}", **run)
        proc = snakemake(cluster, "segment", "--config", f"segment_images={images}", "--profile", str(PROFILE),
                         *QUICK_STATUS, "--verbose", **run)
        local_done.result()
    calls = [line for line in proc.stdout.splitlines() if line.startswith("sbatch call:")]
    regions = [line for line in calls if "rule_segment_region" in line]
    assert len(regions) == n_regions and all("--gpus=1" in line for line in regions), "\n".join(calls)
    assert sum("rule_gather_regions" in line for line in calls) == 1
    ours, theirs = (workdir / "results" / "segment" / "tiled" for workdir in (cluster, local))
    assert np.array_equal(tifffile.imread(ours / "labels.tif"), tifffile.imread(theirs / "labels.tif"))
    assert pd.read_csv(ours / "cells.csv").equals(pd.read_csv(theirs / "cells.csv"))
