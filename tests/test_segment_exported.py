"""The standalone runner of an exported fold (`cellseg.segment_exported`): run in a process in
which torch, scipy, pandas, PIL and the other pipeline dependencies cannot be imported."""

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
from tiny_trained import TILE, drawn_cells, tiny_trained_model

from cellseg.model.onnx_export import export_fold, model_card, onnx_bytes
from cellseg.model.onnx_quantise import calibration_input, quantised_onnx
from cellseg.segment_exported import _contains, card_path, outline, read_rgb8, tile_cores

SRC = Path(__file__).resolve().parents[1] / "src"
BLOCKED = ("torch", "torchvision", "scipy", "pandas", "PIL", "shapely", "contourpy", "matplotlib", "imagecodecs", "skimage", "cv2")
WITHOUT_TORCH = f"""
import importlib.abc, runpy, sys
class Absent(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in {BLOCKED!r}:
            raise ImportError("not installed: " + name)
sys.meta_path.insert(0, Absent())
sys.argv[0] = "segment_exported"
runpy.run_module("cellseg.segment_exported", run_name="__main__")
"""


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    model, cfg = tiny_trained_model()
    folder = tmp_path_factory.mktemp("export")
    point = {"point": "cells", "score_thresholds": {"1": 0.05, "2": 0.05}, "mask_thresholds": {"1": 0.5, "2": 0.5},
             "nms_threshold": 0.3}  # fmt: skip
    export_fold(model, folder / "fold0.onnx", folder / "fold0.json", model_card(["small", "large"], TILE, 32, None, {"cells": point}, cfg))
    calibration = [calibration_input(drawn_cells(seed)[0], TILE) for seed in (10, 11)]
    (folder / "fold0.int8.onnx").write_bytes(quantised_onnx(onnx_bytes(model), calibration))
    return folder


@pytest.mark.parametrize("model", ["fold0.onnx", "fold0.int8.onnx"])  # the INT8 fold reads fold0.json too
def test_runs_without_torch_and_writes_labels_geojson_csv(exported, model, tmp_path):
    image = drawn_cells(5, size=200)[0]
    tifffile.imwrite(tmp_path / "slide.tif", image)
    command = [sys.executable, "-c", WITHOUT_TORCH, "--model", str(exported / model), "--out", str(tmp_path / "out"),
               "--threads", "1", str(tmp_path / "slide.tif")]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, env={"PYTHONPATH": str(SRC)}, timeout=120)
    assert done.returncode == 0, done.stderr
    out = tmp_path / "out" / "slide"
    labels = tifffile.imread(out / "labels.tif")
    rows = list(csv.DictReader(open(out / "cells.csv")))
    features = json.loads((out / "cells.geojson").read_text())["features"]
    assert labels.shape == (2, 200, 200) and labels.dtype == np.uint32
    assert len(rows) == len(features) >= 10
    assert ((labels > 0).sum(0) <= 1).all()  # one cell per pixel
    for row, feature in zip(rows, features):
        plane = labels[int(row["class_id"]) - 1] == int(row["label"])
        assert plane.sum() == int(row["area_px"]) == feature["properties"]["measurements"]["area_px"]
        assert feature["properties"]["classification"]["name"] == row["class"]
        assert _area(feature["geometry"]) == int(row["area_px"])


def _area(geometry) -> float:
    polygons = [geometry["coordinates"]] if geometry["type"] == "Polygon" else geometry["coordinates"]
    total = 0.0
    for polygon in polygons:
        for ring in polygon:
            x, y = np.array(ring, float).T
            total += np.sum(x[:-1] * y[1:] - x[1:] * y[:-1]) / 2  # holes wind the other way
    return total


def test_outlines_hold_exactly_the_mask_pixel_centres():
    rng = np.random.default_rng(0)
    for _ in range(50):
        mask = rng.random((6, 7)) < 0.5
        if not mask.any():
            continue
        geometry = outline(mask, 3, 2)
        polygons = [geometry["coordinates"]] if geometry["type"] == "Polygon" else geometry["coordinates"]
        for r, c in np.ndindex(mask.shape):
            centre = np.array([c + 3.5, r + 2.5])
            inside = sum(_contains(np.array(ring), centre) for polygon in polygons for ring in polygon) % 2
            assert inside == mask[r, c]


def test_the_card_is_the_folds_for_both_model_files():
    assert card_path("out/fold0.onnx") == card_path("out/fold0.int8.onnx") == Path("out/fold0.json")
    assert card_path("a.b/my.model.onnx") == Path("a.b/my.model.json")


def test_tile_cores_cover_each_pixel_once():
    for length, size, overlap in ((1000, 256, 32), (200, 96, 32), (90, 96, 32), (500, 0, 0)):
        cores = tile_cores(length, size, overlap)
        assert cores[0][1] == 0 and cores[-1][2] == length
        assert all(a[2] == b[1] for a, b in zip(cores, cores[1:]))
        assert all(start <= lo and (size == 0 or hi <= start + size) for start, lo, hi in cores)


def test_reads_grey_16_bit_and_rgba(tmp_path):
    tifffile.imwrite(tmp_path / "a.tif", np.full((4, 5), 65535, np.uint16))
    tifffile.imwrite(tmp_path / "b.tif", np.full((4, 5, 4), 7, np.uint8))
    assert (read_rgb8(tmp_path / "a.tif") == 255).all() and read_rgb8(tmp_path / "a.tif").shape == (4, 5, 3)
    assert (read_rgb8(tmp_path / "b.tif") == 7).all() and read_rgb8(tmp_path / "b.tif").shape == (4, 5, 3)
