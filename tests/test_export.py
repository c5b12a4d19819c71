"""The exported model (`cellseg.model.onnx_export`) run by ONNX Runtime (`cellseg.inference.onnx_backend`) finds the
torch model's instances, through the one inference path (`predict.backend: onnxruntime`)."""

import json

import numpy as np
import pytest
import torch
from tiny_trained import TILE, drawn_cells, tiny_trained_model

from cellseg.common.errors import ConfigError
from cellseg.inference.onnx_backend import OnnxModel, paste_windows
from cellseg.inference.predict import load_model_for_inference, predict_image
from cellseg.model.mask_rcnn import paste_windows as torch_paste_windows
from cellseg.model.onnx_export import _mask_predictor_by_conv, _merge_levels, export_fold, model_card, onnx_bytes
from cellseg.scoring.agreement import agreement
from cellseg.workflow.configuration import resolve_config

CPU = torch.device("cpu")
SETTINGS = {"tile_size": TILE, "overlap": 32, "tta": ["hflip"], "batch_size": 2}


@pytest.fixture(scope="module")
def trained():
    return tiny_trained_model()


@pytest.fixture(scope="module")
def onnx(trained):
    return OnnxModel(onnx_bytes(trained[0]), threads=1)


def test_onnxruntime_backend_finds_the_torch_instances(trained, onnx):
    """Same instances matched at mask IoU >= 0.95 for >= 99 %, scores within 1e-3, on a tiled
    image with TTA (seams and views as the pipeline runs them)."""
    model, _ = trained
    image = drawn_cells(5, size=200)[0]
    reference = predict_image(model, image, device=CPU, **SETTINGS)
    exported = predict_image(onnx, image, device=CPU, **SETTINGS)
    check = agreement(reference, exported)
    assert len(reference) >= 20
    assert check.fraction >= 0.99 and check.max_score_diff <= 1e-3
    assert reference.probs[0].dtype == exported.probs[0].dtype == np.uint8


def test_any_image_size_and_no_detections(trained, onnx):
    model, _ = trained
    for height, width in ((40, 130), (TILE, TILE)):
        pixels = torch.from_numpy(drawn_cells(3, size=130)[0][:height, :width]).permute(2, 0, 1).float() / 255
        ours, theirs = onnx.detect([pixels])[0], model.detect([pixels])[0]
        assert np.abs(ours["boxes"] - theirs["boxes"]).max() < 1e-3
        assert (ours["windows"][:, 2:] <= [width, height]).all()
    blank = onnx.detect([np.zeros((3, 50, 60), np.float32)])[0]
    assert blank["boxes"].shape == (0, 4) and blank["crops"] == []


def test_numpy_paste_equals_torch_paste():
    rng = np.random.default_rng(0)
    masks = rng.random((40, 1, 14, 14)).astype(np.float32)
    corner = rng.uniform(-10, 180, (40, 2))
    boxes = np.concatenate([corner, corner + rng.uniform(1, 60, (40, 2))], 1).astype(np.float32)
    windows, crops = paste_windows(masks, boxes, (150, 170))
    expected_windows, expected = torch_paste_windows(torch.from_numpy(masks), torch.from_numpy(boxes), (150, 170))
    assert (windows == expected_windows).all()
    for ours, theirs in zip(crops, expected):
        assert ours.shape == theirs.shape and (ours.size == 0 or np.abs(ours - theirs).max() < 1e-5)


def test_export_fold_writes_the_model_and_its_card(trained, tmp_path):
    model, cfg = trained
    points = {"cells": {"point": "cells", "score_thresholds": {"1": 0.3, "2": 0.3}}}
    card = model_card(["a", "b"], TILE, 32, 0.5, points, cfg)
    export_fold(model, tmp_path / "fold0.onnx", tmp_path / "fold0.json", card)
    written = json.loads((tmp_path / "fold0.json").read_text())
    assert written["classes"] == ["a", "b"] and written["tile_size"] == TILE and written["mpp"] == 0.5
    assert written["points"] == points and written["input"]["normalisation_in_graph"]["std"][0] == 0.229
    found = OnnxModel(tmp_path / "fold0.onnx", threads=1).detect([np.zeros((3, 64, 64), np.float32)])
    assert set(found[0]) == {"boxes", "scores", "labels", "windows", "crops"}


def test_backend_from_config(trained, tmp_path):
    model, cfg = trained
    torch.save(model.state_dict(), tmp_path / "model.pt")
    loaded = load_model_for_inference(tmp_path / "model.pt", cfg, 2, CPU, tile_size=TILE, backend="onnxruntime")
    assert isinstance(loaded, OnnxModel)
    with pytest.raises(ConfigError, match="predict.backend"):  # the schema's, before any job runs
        resolve_config({"predict": {"backend": "tvm"}})


def test_the_exported_mask_predictor_computes_the_same_logits_and_the_model_is_given_back(trained):
    model, _ = trained
    predictor = model.roi_heads.mask_predictor
    features = torch.randn(6, predictor.conv5_mask.in_channels, 14, 14, generator=torch.Generator().manual_seed(0))
    expected = predictor(features)
    with _mask_predictor_by_conv(model):
        assert model.roi_heads.mask_predictor is not predictor
        assert torch.allclose(model.roi_heads.mask_predictor(features), expected, atol=1e-5)
    assert model.roi_heads.mask_predictor is predictor


def test_pooled_levels_are_put_back_in_roi_order():
    levels = torch.tensor([2, 0, 1, 0, 2, 2])
    per_level = [torch.where(levels == level)[0].float().view(-1, 1, 1, 1).expand(-1, 3, 2, 2) for level in range(4)]
    merged = _merge_levels(levels, per_level)  # level 3 pools no RoI
    assert merged.shape == (6, 3, 2, 2) and merged[:, 0, 0, 0].tolist() == list(range(6))
