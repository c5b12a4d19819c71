"""Correct in QuPath and retrain, end to end on the tiny run: `segment` a few images, edit the
cells.geojson as a person would (delete, move, re-class cells), train one fold from the edited
GeoJSON (`data.source: geojson`) starting from the finished run (`train.init_from`), then score."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pandas as pd
import pytest
import tifffile
from shapely.geometry import shape
from workflow_helpers import copy_workdir, snakemake, write_config

from cellseg.common.files import file_sha256
from cellseg.common.images import read_image
from cellseg.common.polygons import polygon_mask

TILE = 128  # tiny.yaml's tiles.size: each image cropped to it gives one tile
CLASSES = ["class1", "class2", "class3", "class4"]
SHIFT = 3  # px a moved cell is translated by


def cropped_images(folder, demo, count=6) -> list[str]:
    """`count` of the demo's training images cut to at most one tile, as TIFFs in `folder`."""
    folder.mkdir()
    for path in sorted((demo / "train").glob("*/image.tif"))[:count]:
        tifffile.imwrite(folder / f"{path.parent.name}.tif", read_image(path)[:TILE, :TILE], photometric="rgb")
    return sorted(p.stem for p in folder.glob("*.tif"))


def edit(features: list[dict], width: int, k: int) -> tuple[list[dict], list[dict], list[tuple[dict, str]]]:
    """What a person does in QuPath: delete every 5th cell, move every 5th + 1 to the right by
    SHIFT px (where it stays inside the image), re-class every 5th + 2 to the next class.
    Returns the kept features, the deleted ones and the re-classed ones with their old class."""
    kept, deleted, reclassed = [], [], []
    for i, feature in enumerate(features):
        if (i + k) % 5 == 0:
            deleted.append(feature)
            continue
        if (i + k) % 5 == 1 and shape(feature["geometry"]).bounds[2] + SHIFT < width:
            feature["geometry"]["coordinates"] = _shifted(feature["geometry"]["coordinates"])
        if (i + k) % 5 == 2:
            name = feature["properties"]["classification"]["name"]
            feature["properties"]["classification"]["name"] = CLASSES[(CLASSES.index(name) + 1) % len(CLASSES)]
            reclassed.append((feature, name))
        kept.append(feature)
    return kept, deleted, reclassed


def _shifted(coordinates):
    if isinstance(coordinates[0], (int, float)):
        return [coordinates[0] + SHIFT, coordinates[1]]
    return [_shifted(c) for c in coordinates]


def tile_of(results, name: str) -> tuple[pd.Series, np.ndarray]:
    """The one tile of image `name`: its index row and its `(C, S, S)` labels."""
    for tsv in sorted((results / "tiles").glob("shard_*.tsv")):
        index = pd.read_csv(tsv, sep="\t")
        rows = index[index["image_id"] == name]
        if len(rows):
            assert len(rows) == 1, name
            with np.load(tsv.with_suffix(".npz")) as tiles:
                return rows.iloc[0], tiles[f"labels_{rows.iloc[0]['tile']}"]
    raise AssertionError(f"no tile of {name}")


def covered(labels: np.ndarray, feature: dict, class_name: str) -> bool:
    """Whether every pixel of `feature` belongs to a cell in the tile's plane of `class_name`."""
    (x0, y0, x1, y1), mask = polygon_mask(shape(feature["geometry"]), labels.shape[1:])
    return bool(labels[CLASSES.index(class_name), y0:y1, x0:x1][mask].all())


def is_cell(labels: np.ndarray, feature: dict, class_name: str) -> bool:
    """Whether the tile's plane of `class_name` holds a cell of exactly the pixels of `feature`."""
    (x0, y0, x1, y1), mask = polygon_mask(shape(feature["geometry"]), labels.shape[1:])
    plane = labels[CLASSES.index(class_name)]
    pixels = np.zeros(plane.shape, bool)
    pixels[y0:y1, x0:x1] = mask
    return any(np.array_equal(plane == value, pixels) for value in np.unique(plane[pixels]) if value)


@pytest.mark.slow
def test_corrected_cells_are_what_the_fine_tuned_run_learns_from(finished_run, tmp_path):
    workdir = copy_workdir(finished_run.workdir, tmp_path / "work")
    images = tmp_path / "images"
    names = cropped_images(images, workdir / "results" / "demo")
    low = write_config(tmp_path / "segment.yaml", {"tune": {"cells": {"score_thresholds": [0.05]}}})
    snakemake(workdir, "segment", "--config", f"segment_images={images}", repo=finished_run.repo, configs=[low])

    data = tmp_path / "qupath"
    data.mkdir()
    expected, all_deleted, all_reclassed = {}, {}, {}
    for k, name in enumerate(names):
        (data / f"{name}.tif").write_bytes((images / f"{name}.tif").read_bytes())
        collection = json.loads((workdir / "results" / "segment" / name / "cells.geojson").read_text())
        width = read_image(images / f"{name}.tif").shape[1]
        kept, all_deleted[name], all_reclassed[name] = edit(collection["features"], width, k)
        collection["features"] = kept
        (data / f"{name}.geojson").write_text(json.dumps(collection))
        expected[name] = Counter(f["properties"]["classification"]["name"] for f in kept)
    assert sum(map(len, all_deleted.values())) and sum(map(len, all_reclassed.values()))

    retrain = tmp_path / "retrain"
    config = write_config(tmp_path / "retrain.yaml", {
        "data": {"source": "geojson", "path": str(data)},
        "split": {"train_folds": [0]},
        "preprocess": {"shards": 1},
        "train": {"init_from": str(finished_run.workdir), "min_steps": 2},
    })
    snakemake(retrain, "results/train/fold0/model_best.pt", repo=finished_run.repo, configs=[config])

    results = retrain / "results"
    summary = json.loads((results / "train" / "fold0" / "train_summary.json").read_text())
    source = finished_run.workdir / "results" / "train" / "fold0" / "model_best.pt"
    assert summary["init_from"] == {"path": str(source), "sha256": file_sha256(source)}
    assert "train.init_from" in summary["weights"] and summary["classes"] == CLASSES
    train_ids = set(pd.concat(pd.read_csv(t, sep="\t") for t in (results / "tiles").glob("*.tsv"))["image_id"])
    assert len(train_ids) == len(names)
    for name in names:
        row, labels = tile_of(results, name)
        assert {c: int(row[f"n_{c}"]) for c in CLASSES} == {c: expected[name][c] for c in CLASSES}, name
        # Every pixel of a cell is in its class's plane (a smaller cell of that class may claim some).
        for feature, old in all_reclassed[name]:
            assert covered(labels, feature, feature["properties"]["classification"]["name"]), name
            assert not covered(labels, feature, old), name
        for feature in all_deleted[name]:
            assert not is_cell(labels, feature, feature["properties"]["classification"]["name"]), name

    # on through the scores: fold 0 alone is the ensemble, scored on the held-out images
    snakemake(retrain, repo=finished_run.repo, configs=[config])
    scores = pd.read_csv(results / "evaluate" / "scores.tsv", sep="\t")
    assert {"fold 0", "ensemble"} <= set(scores["model"]) and scores["AP"].notna().all()
