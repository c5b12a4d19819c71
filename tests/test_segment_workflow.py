"""The `segment` target end to end: the tiny pipeline's trained folds and thresholds (the
`finished_run` of test_workflow.py) applied to a folder of new images in several formats."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
import tifffile
from PIL import Image
from test_workflow import finished_run  # noqa: F401  (the shared tiny run, a fixture)
from workflow_helpers import copy_workdir, rule_counts, scheduled_jobs, snakemake, wildcard_values, write_config

from cellseg.io import read_image
from cellseg.segment_input import open_image

OUTPUTS = ["labels.tif", "cells.geojson", "cells.csv", "overlay.png"]


def new_images(folder, demo):
    """The demo's test images, a PNG, a 16-bit grey TIFF and a large tiled TIFF (3 x 3 demo
    images) in `folder`; returns their names."""
    folder.mkdir()
    tests = sorted((demo / "test_release").glob("*.tif"))
    for path in tests:
        shutil.copy2(path, folder)
    image = read_image(tests[0])
    Image.fromarray(image).save(folder / "photo.png")
    tifffile.imwrite(folder / "grey16.tif", image[..., 1].astype(np.uint16) * 257, compression="zlib")
    tifffile.imwrite(folder / "large.tif", np.tile(image, (3, 3, 1)), tile=(128, 128), compression="zlib", photometric="rgb")
    return sorted([p.stem for p in tests] + ["photo", "grey16", "large"])


@pytest.mark.slow
def test_segment_a_folder_then_only_an_added_image(finished_run, tmp_path):  # noqa: F811
    workdir = copy_workdir(finished_run.workdir, tmp_path / "work")
    images = tmp_path / "images"
    names = new_images(images, workdir / "results" / "demo")
    config = write_config(tmp_path / "segment.yaml", {"segment": {"block_size": 256, "margin": 64}})
    run = dict(repo=finished_run.repo, configs=[config])

    snakemake(workdir, "segment", "--config", f"segment_images={images}", **run)
    results = workdir / "results" / "segment"
    for name in names:
        assert all((results / name / f).stat().st_size > 0 for f in OUTPUTS), name
        labels = tifffile.imread(results / name / "labels.tif")
        assert labels.shape == (4, *open_image(next(images.glob(f"{name}.*"))).size) and labels.dtype == np.uint32
        table = pd.read_csv(results / name / "cells.csv")
        assert len(table) == len(json.loads((results / name / "cells.geojson").read_text())["features"])
        assert len(table) == sum(len(np.unique(plane)) - 1 for plane in labels)
    summary = pd.read_csv(results / "summary.csv")
    assert sorted(summary["image"]) == names
    assert {"n_class1", "per_mpx_class1"} <= set(summary.columns)
    log = (workdir / "logs" / "segment" / "large.log").read_text()
    height, width = open_image(images / "large.tif").size
    blocks = -(-height // 256) * -(-width // 256)
    assert f"block {blocks}/{blocks}" in log and "ETA" in log

    # the config file's segment.images works as well; nothing to do
    folder = write_config(tmp_path / "folder.yaml", {"segment": {"images": str(images), "block_size": 256, "margin": 64}})
    assert rule_counts(scheduled_jobs(workdir, "segment", repo=finished_run.repo, configs=[folder])) == {}

    # one more image: only it is segmented, and the summary redone
    shutil.copy2(images / "photo.png", images / "another.png")
    jobs = scheduled_jobs(workdir, "segment", repo=finished_run.repo, configs=[folder])
    assert rule_counts(jobs) == {"segment_image": 1, "summarise_segments": 1, "segment": 1}
    assert wildcard_values(jobs, "segment_image", "name") == {"another"}

    # a name clash stops the DAG with one line naming the file
    shutil.copy2(images / "photo.png", images / "large.png")
    proc = snakemake(workdir, "segment", "-n", check=False, repo=finished_run.repo, configs=[folder])
    assert proc.returncode != 0
    assert f"DataError: {images / 'large.tif'}: same name as large.png" in proc.stdout, proc.stdout


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
