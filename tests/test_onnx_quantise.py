"""The static INT8 model (`predict.backend: onnxruntime-int8`): what is quantised, and that it
still finds the cells the fp32 model finds."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from tiny_trained import TILE, drawn_cells, tiny_trained_model

from cellseg.inference.onnx_backend import OnnxModel
from cellseg.inference.predict import load_model_for_inference, predict_image
from cellseg.model.onnx_export import onnx_bytes
from cellseg.model.onnx_quantise import HEAD_OUTPUTS, calibration_ids, calibration_input, quantised_onnx
from cellseg.scoring.agreement import agreement

CPU = torch.device("cpu")
SETTINGS = {"tile_size": TILE, "overlap": 32, "tta": ["hflip"], "batch_size": 2}
STEPS = 60  # enough training that the model's confident cells are cells


@pytest.fixture(scope="module")
def trained():
    return tiny_trained_model(STEPS)


@pytest.fixture(scope="module")
def int8(trained):
    calibration = [calibration_input(drawn_cells(seed)[0], TILE) for seed in (10, 11, 12, 13)]
    return quantised_onnx(onnx_bytes(trained[0]), calibration)


def test_every_convolution_and_product_is_int8_but_each_heads_last_layer(int8):
    graph = onnx.load_from_string(int8).graph
    initialisers = {tensor.name: numpy_helper.to_array(tensor) for tensor in graph.initializer}
    producer = {output: node for node in graph.node for output in node.output}
    layers = [node for node in graph.node if node.op_type in ("Conv", "Gemm", "MatMul")]
    heads = [node for node in layers if any(f"/{name}" in node.name for name in HEAD_OUTPUTS)]
    assert len(heads) >= 4 and len(layers) > 3 * len(heads)
    for node in layers:
        weight = producer.get(node.input[1])
        if node in heads:
            assert weight is None and initialisers[node.input[1]].dtype == np.float32, node.name
        else:
            assert weight is not None and weight.op_type == "DequantizeLinear", node.name
            assert initialisers[weight.input[0]].dtype == np.int8, node.name


def test_the_int8_model_finds_the_fp32_models_confident_cells(trained, int8):
    """Through the same tiles, seams and TTA: >= 90 % of the torch model's instances scoring
    >= 0.5 are found (same class, mask IoU >= 0.5) among the int8 model's scoring >= 0.3."""
    model, _ = trained
    image = drawn_cells(5, size=200)[0]
    reference = predict_image(model, image, device=CPU, **SETTINGS)
    quantised = predict_image(OnnxModel(int8, threads=1), image, device=CPU, **SETTINGS)
    confident = reference.select(reference.scores >= 0.5)
    check = agreement(confident, quantised.select(quantised.scores >= 0.3), iou=0.5)
    assert len(confident) >= 20
    assert check.matched / check.n_a >= 0.9


def test_quantising_again_gives_the_same_model(trained, int8):
    calibration = [calibration_input(drawn_cells(seed)[0], TILE) for seed in (10, 11, 12, 13)]
    assert quantised_onnx(onnx_bytes(trained[0]), calibration) == int8
    with pytest.raises(ValueError, match="no calibration images"):
        quantised_onnx(onnx_bytes(trained[0]), [])


def test_the_backend_loads_the_quantised_file(trained, int8, tmp_path):
    (tmp_path / "fold0.int8.onnx").write_bytes(int8)
    loaded = load_model_for_inference(tmp_path / "fold0.int8.onnx", trained[1], 2, CPU, backend="onnxruntime-int8")
    found = loaded.detect([np.zeros((3, 64, 64), np.float32)])
    assert isinstance(loaded, OnnxModel) and set(found[0]) == {"boxes", "scores", "labels", "windows", "crops"}


def test_calibration_images_spread_over_the_training_set_and_cropped_to_a_tile():
    ids = [f"img{k:02d}" for k in range(40)]
    chosen = calibration_ids(ids[::-1], 16)
    assert len(chosen) == 16 and chosen == sorted(chosen) and chosen[0] == "img00" and chosen[-1] == "img39"
    assert calibration_ids(ids[:5], 16) == ids[:5] and calibration_ids(ids, 1) == ["img00"]
    image = np.zeros((300, 100, 3), np.uint8)
    image[150, 50] = 255
    crop = calibration_input(image, 128)
    assert crop.shape == (3, 128, 100) and crop.dtype == np.float32 and crop[:, 150 - 86, 50].tolist() == [1.0] * 3
    assert calibration_input(image, 0).shape == (3, 300, 100)
