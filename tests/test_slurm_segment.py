"""segment through the SLURM profile: one image in regions, each region its own SLURM job with
one GPU, joined into the cells of a local run. On the single-node test cluster of
scripts/slurm_cluster.sh (2 CPUs, 2 placeholder GPUs); skipped when no controller answers."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import tifffile
from test_slurm_pipeline import PROFILE, _cluster_up
from workflow_helpers import copy_workdir, snakemake, write_config

from cellseg.common.images import read_image

pytestmark = [
    pytest.mark.slurm,
    pytest.mark.slow,
    pytest.mark.skipif(not _cluster_up(), reason="no local SLURM cluster (scripts/slurm_cluster.sh start)"),
]
LOW_CELLS = {"tune": {"cells": {"score_thresholds": [0.05]}}}


def test_each_region_is_its_own_slurm_job_with_one_gpu(finished_run, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    test = read_image(sorted((finished_run.workdir / "results" / "demo" / "test_release").glob("*.tif"))[0])
    repeat = -(-256 // min(test.shape[:2]))
    tifffile.imwrite(images / "tiled.tif", np.tile(test, (repeat, repeat, 1))[:256, :256], tile=(64, 64), photometric="rgb")
    n_regions = 4
    config = write_config(tmp_path / "regions.yaml",
                          {"segment": {"block_size": 64, "margin": 24, "region_blocks": 2}, **LOW_CELLS})
    run = dict(repo=finished_run.repo, configs=[config])
    local = copy_workdir(finished_run.workdir, tmp_path / "local")
    cluster = copy_workdir(finished_run.workdir, tmp_path / "slurm")
    snakemake(local, "segment", "--config", f"segment_images={images}", **run)
    proc = snakemake(cluster, "segment", "--config", f"segment_images={images}", "--profile", str(PROFILE),
                     "--slurm-init-seconds-before-status-checks", "5", "--seconds-between-status-checks", "2", "--verbose",
                     **run)
    calls = [line for line in proc.stdout.splitlines() if line.startswith("sbatch call:")]
    regions = [line for line in calls if "rule_segment_region" in line]
    assert len(regions) == n_regions and all("--gpus=1" in line for line in regions), "\n".join(calls)
    assert sum("rule_gather_regions" in line for line in calls) == 1
    for name in ("labels.tif", "cells.csv"):
        ours, theirs = cluster / "results" / "segment" / "tiled" / name, local / "results" / "segment" / "tiled" / name
        if name == "labels.tif":
            assert np.array_equal(tifffile.imread(ours), tifffile.imread(theirs))
        else:
            assert pd.read_csv(ours).equals(pd.read_csv(theirs))
