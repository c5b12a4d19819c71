"""The `segment` target end to end: the trained folds and thresholds of the session's tiny run
(`finished_run`, conftest.py) applied to a folder of new images in several formats."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pandas as pd
import pytest
import tifffile
from PIL import Image
from workflow_helpers import (
    FOUR_REGIONS,
    LOW_CELLS,
    copy_workdir,
    rule_counts,
    scheduled_jobs,
    snakemake,
    snakemake_command,
    wildcard_values,
    write_config,
    write_region_image,
)

from cellseg.common.images import read_image
from cellseg.common.instances import InstanceSet
from cellseg.data.image_reader import open_image
from cellseg.data.split import read_split, validation_ids
from cellseg.inference.operating_points import apply_point, read_point
from cellseg.inference.segment import cell_labels

pytestmark = pytest.mark.workflow

OUTPUTS = ["labels.tif", "cells.geojson", "cells.csv", "overlay.png"]


def new_images(folder, demo):
    """The demo's test images, a PNG, an 8-bit grey TIFF and its 16-bit copy (x 257), a 16-bit
    copy of the first test image and a large tiled TIFF (3 x 3 demo images) in `folder`;
    returns their names."""
    folder.mkdir()
    tests = sorted((demo / "test_release").glob("*.tif"))
    for path in tests:
        shutil.copy2(path, folder)
    image = read_image(tests[0])
    Image.fromarray(image).save(folder / "photo.png")
    tifffile.imwrite(folder / "grey8.tif", image[..., 1], compression="zlib")
    tifffile.imwrite(folder / "grey16.tif", image[..., 1].astype(np.uint16) * 257, compression="zlib")
    tifffile.imwrite(folder / "rgb16.tif", image.astype(np.uint16) * 257, photometric="rgb")
    tifffile.imwrite(folder / "large.tif", np.tile(image, (3, 3, 1)), tile=(128, 128), compression="zlib", photometric="rgb")
    return sorted([p.stem for p in tests] + ["photo", "grey8", "grey16", "rgb16", "large"])


@pytest.mark.slow
def test_segment_a_folder_then_only_an_added_image(finished_run, tmp_path):
    workdir = copy_workdir(finished_run.workdir, tmp_path / "work")
    images = tmp_path / "images"
    names = new_images(images, workdir / "results" / "demo")
    config = write_config(tmp_path / "segment.yaml", {"segment": {"block_size": 256, "margin": 64}, **LOW_CELLS})
    run = dict(repo=finished_run.repo, configs=[config])

    snakemake(workdir, "segment", "--config", f"segment_images={images}", **run)
    results = workdir / "results" / "segment"
    for name in names:
        assert all((results / name / f).stat().st_size > 0 for f in OUTPUTS), name
        labels = tifffile.imread(results / name / "labels.tif")
        assert labels.shape == (4, *open_image(next(images.glob(f"{name}.*"))).size) and labels.dtype == np.uint32
        table = pd.read_csv(results / name / "cells.csv")
        assert len(table) == len(json.loads((results / name / "cells.geojson").read_text())["features"])
        assert len(table) == sum(len(np.unique(plane)) - 1 for plane in labels)  # each cell in one plane
        assert ((labels > 0).sum(axis=0) <= 1).all(), name  # no pixel in two cells, across classes too
    first = sorted(p.stem for p in (workdir / "results" / "demo" / "test_release").glob("*.tif"))[0]
    for eight, sixteen in [(first, "rgb16"), ("grey8", "grey16")]:
        assert len(pd.read_csv(results / eight / "cells.csv")) > 0, eight
        assert np.array_equal(tifffile.imread(results / eight / "labels.tif"), tifffile.imread(results / sixteen / "labels.tif"))
        assert pd.read_csv(results / eight / "cells.csv").drop(columns=["mean_r", "mean_g", "mean_b", "mean_od"]).equals(
            pd.read_csv(results / sixteen / "cells.csv").drop(columns=["mean_r", "mean_g", "mean_b", "mean_od"])
        )
    summary = pd.read_csv(results / "summary.csv")
    assert sorted(summary["image"]) == names
    assert {"n_class1", "per_mpx_class1", "tissue_mm2", "per_mm2_class1", "jobs", "job_s", "peak_rss_mb"} <= set(summary.columns)
    log = (workdir / "logs" / "segment" / "large.log").read_text()
    blocks = re.search(r"; (\d+) of \d+ blocks predicted", log).group(1)  # tissue.png shows which
    assert f"block {blocks}/{blocks}" in log and "ETA" in log

    # the config file's segment.images works as well; nothing to do
    folder = write_config(
        tmp_path / "folder.yaml", {"segment": {"images": str(images), "block_size": 256, "margin": 64}, **LOW_CELLS}
    )
    assert rule_counts(scheduled_jobs(workdir, "segment", repo=finished_run.repo, configs=[folder])) == {}

    # one more image: only it is segmented, and the summary redone
    shutil.copy2(images / "photo.png", images / "another.png")
    jobs = scheduled_jobs(workdir, "segment", repo=finished_run.repo, configs=[folder])
    assert rule_counts(jobs) == {"segment_region": 1, "gather_regions": 1, "summarise_segments": 1, "segment": 1}
    assert wildcard_values(jobs, "gather_regions", "name") == {"another"}

    # a name clash stops the DAG with one line naming the file
    shutil.copy2(images / "photo.png", images / "large.png")
    proc = snakemake(workdir, "segment", "-n", check=False, repo=finished_run.repo, configs=[folder])
    assert proc.returncode != 0
    assert f"DataError: {images / 'large.tif'}: same name as large.png" in proc.stdout, proc.stdout


@pytest.mark.slow
def test_an_image_in_regions_resumes_from_its_finished_regions(finished_run, tmp_path):
    """256 x 256 px tiled from a test image in blocks of 64 px, 2 x 2 blocks a region: 4 region
    jobs and their gather. The run is interrupted (Ctrl-C) once two regions have finished; the
    rerun predicts only the others, and the outputs equal one region's (a run in a copy of the
    workdir, on the core the interrupted run leaves free)."""
    workdir = copy_workdir(finished_run.workdir, tmp_path / "work")
    whole = copy_workdir(finished_run.workdir, tmp_path / "whole")
    images = write_region_image(tmp_path / "images", workdir).parent
    n_regions = 4
    segment = FOUR_REGIONS
    config = write_config(tmp_path / "regions.yaml", {"segment": segment, **LOW_CELLS})
    one = write_config(tmp_path / "one.yaml", {"segment": {**segment, "region_blocks": 64}, **LOW_CELLS})
    run = dict(repo=finished_run.repo, configs=[config])
    target = ("segment", "--config", f"segment_images={images}")
    with ThreadPoolExecutor(1) as pool:
        whole_done = pool.submit(snakemake, whole, *target, cores=1, repo=finished_run.repo, configs=[one])
        finished = interrupted_after(snakemake_command(workdir, *target, cores=1, **run), "segment_region", 2)
        whole_done.result()
    results = workdir / "results" / "segment"
    regions = results / "tiled" / "regions"
    assert len(finished) == 2 and not (results / "tiled" / "labels.tif").exists()
    stamps = {r: (regions / f"{r}.npz").stat().st_mtime_ns for r in finished}

    jobs = scheduled_jobs(workdir, *target, **run)
    assert wildcard_values(jobs, "segment_region", "region") == {str(r) for r in range(n_regions)} - finished
    assert rule_counts(jobs)["gather_regions"] == 1
    snakemake(workdir, *target, **run)
    assert {r: (regions / f"{r}.npz").stat().st_mtime_ns for r in finished} == stamps
    assert len(list(regions.glob("*.npz"))) == n_regions
    summary = pd.read_csv(results / "summary.csv")
    assert summary.loc[0, "jobs"] == n_regions + 1 and summary.loc[0, "job_s"] > 0

    labels, table = tifffile.imread(results / "tiled" / "labels.tif"), pd.read_csv(results / "tiled" / "cells.csv")
    one_job = whole / "results" / "segment" / "tiled"
    assert len(list((one_job / "regions").glob("*.npz"))) == 1
    assert len(table) > 0 and np.array_equal(tifffile.imread(one_job / "labels.tif"), labels)
    assert pd.read_csv(one_job / "cells.csv").equals(table)


def interrupted_after(command: list[str], rule: str, n_jobs: int) -> set[str]:
    """Run the Snakemake `command` and interrupt it as Ctrl-C does (SIGINT) once `n_jobs` jobs
    of `rule` have finished; returns their `region` wildcards. Fails if the run ends first."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}  # each line as it is logged, not at exit
    # A test session started in the background ignores SIGINT, and children inherit that.
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    log, rules, finished = [], {}, set()
    for line in proc.stdout:
        log.append(line)
        if match := re.match(r"\s*jobid: (\d+)", line):
            job = match[1]
        elif match := re.match(r"\s*wildcards: .*region=(\d+)", line):
            rules[job] = match[1]
        elif (match := re.search(r"Finished jobid: (\d+)", line)) and match[1] in rules:
            finished.add(rules[match[1]])
            if len(finished) == n_jobs:
                proc.send_signal(signal.SIGINT)
                break
    rest, _ = proc.communicate(timeout=300)
    assert len(finished) == n_jobs and proc.returncode != 0, "".join(log) + rest
    return finished


def painted(cells: InstanceSet, n_classes: int) -> np.ndarray:
    """The (C, H, W) label image of binary instances, as labels.tif holds it."""
    labels = np.zeros((n_classes, *cells.image_size), np.uint32)
    for i, value in enumerate(cell_labels(cells)):
        x0, y0, x1, y1 = cells.windows[i]
        labels[cells.classes[i] - 1, y0:y1, x0:x1][cells.window_mask(i)] = value
    return labels


@pytest.mark.slow
@pytest.mark.parametrize("calibrate", ["none", "quantile"])
def test_segment_gives_a_validation_image_the_workflows_cells(finished_run, tmp_path, calibrate):
    """segment on the run's validation images gives exactly the instances the workflow scores
    for them at the cells point (the tiny run predicts with hflip TTA), also with the folds'
    scores calibrated."""
    workdir = copy_workdir(finished_run.workdir, tmp_path / "work")
    config = write_config(tmp_path / "c.yaml", {"ensemble": {"calibrate": calibrate}, **LOW_CELLS})
    run = dict(repo=finished_run.repo, configs=[config])
    snakemake(workdir, **run)  # the workflow's own ensemble and cells point with these settings
    results = workdir / "results"
    names = validation_ids(read_split(results / "split" / "split.tsv"))
    images = tmp_path / "images"
    images.mkdir()
    for name in names:
        shutil.copy2(results / "demo" / "train" / name / "image.tif", images / f"{name}.tif")
    snakemake(workdir, "segment", "--config", f"segment_images={images}", **run)
    cells = read_point(results / "tune" / "cells.json")
    found = 0
    for name in names:
        expected = apply_point(InstanceSet.load(results / "ensemble" / "val" / f"{name}.npz"), cells)
        found += len(expected)
        assert np.array_equal(tifffile.imread(results / "segment" / name / "labels.tif"), painted(expected, 4)), name
        table = pd.read_csv(results / "segment" / name / "cells.csv")
        assert table["class_id"].tolist() == expected.classes.tolist()
        assert np.allclose(table["score"], expected.scores, rtol=0, atol=5e-5)  # the table rounds to 4 places
    assert found > 0
    assert ((results / "ensemble" / "calibration.json").is_file()) == (calibrate != "none")


def test_segment_without_a_folder_or_with_a_bad_image_fails_at_dag_time(tmp_path):
    proc = snakemake(tmp_path / "work", "segment", "-n", check=False)
    assert proc.returncode != 0 and "segment.images: no folder set" in proc.stdout, proc.stdout
    images = tmp_path / "images"
    images.mkdir()
    proc = snakemake(tmp_path / "work", "segment", "-n", "--config", f"segment_images={images}", check=False)
    assert f"DataError: {images}: no images" in proc.stdout, proc.stdout
    tifffile.imwrite(images / "int32.tif", np.zeros((8, 8), np.int32))
    proc = snakemake(tmp_path / "work", "segment", "-n", "--config", f"segment_images={images}", check=False)
    assert f"DataError: {images / 'int32.tif'}: unsupported dtype int32" in proc.stdout, proc.stdout
    assert not (tmp_path / "work" / "results").exists()
