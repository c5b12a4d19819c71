"""An exported fold (`cellseg.model.onnx_export`) with static INT8 convolutions and matrix products.

On a CPU without a GPU the network is most of the time of inference, and it already runs near
the core's fp32 peak, so only cheaper operations make it faster. Static quantisation stores
the Conv, MatMul and Gemm weights as int8 (one scale per output channel) and the activations
they read as uint8, with ranges measured once on training images; ONNX Runtime then runs
those operators as int8 kernels. The graph keeps its inputs and outputs
(`cellseg.inference.onnx_backend.OnnxModel` runs it as the fp32 one), and everything else stays
fp32: NMS, RoIAlign, box decoding, the mask sigmoid. Dynamic quantisation (activation ranges
found per call) was measured slower than fp32 for the convolutions (docs/benchmarks.md).
Imports no torch.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import onnx
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_static,
)
from onnxruntime.quantization.shape_inference import quant_pre_process

QUANTISED_OPS = ("Conv", "MatMul", "Gemm")
# The last layer of each head, by its name in torchvision's modules (and so in the exported graph).
HEAD_OUTPUTS = ("cls_logits", "bbox_pred", "cls_score", "mask_fcn_logits")
CALIBRATION_IMAGES = 16


class _Images(CalibrationDataReader):
    def __init__(self, images: list[np.ndarray]):
        self._images = iter(images)

    def get_next(self) -> dict | None:
        image = next(self._images, None)
        return None if image is None else {"image": np.ascontiguousarray(image, dtype=np.float32)}


def quantised_onnx(model: bytes, images: Iterable[np.ndarray]) -> bytes:
    """The INT8 version of the ONNX `model` (bytes of `onnx_bytes`), its activation ranges the
    extremes over `images`: (3, h, w) float32 RGB in [0, 1], as the model's input. The last
    layer of each head (RPN objectness and box deltas, class scores, box deltas, mask logits)
    stays fp32, as scores and coordinates are read from it directly: that kept AP50 closer to
    the fp32 model's than a fully INT8 graph, and closer than ranges averaged over the images
    (docs/benchmarks.md). The same model and images give the same bytes."""
    images = list(images)
    if not images:
        raise ValueError("quantised_onnx: no calibration images")
    with tempfile.TemporaryDirectory() as tmp:
        source, prepared, out = Path(tmp, "fp32.onnx"), Path(tmp, "prepared.onnx"), Path(tmp, "int8.onnx")
        source.write_bytes(model)
        # Shapes and constant folding for the quantiser; the symbolic pass cannot follow NMS.
        quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
        quantize_static(
            str(prepared), str(out), _Images(images),
            quant_format=QuantFormat.QDQ, op_types_to_quantize=list(QUANTISED_OPS), per_channel=True,
            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax,
            nodes_to_exclude=_head_outputs(onnx.load(str(prepared))),
        )  # fmt: skip
        return out.read_bytes()


def _head_outputs(model: onnx.ModelProto) -> list[str]:
    """Names of the nodes of `QUANTISED_OPS` that are a head's last layer (`HEAD_OUTPUTS`)."""
    return [
        node.name for node in model.graph.node
        if node.op_type in QUANTISED_OPS and any(f"/{layer}" in node.name for layer in HEAD_OUTPUTS)
    ]  # fmt: skip


def calibration_ids(image_ids: list[str], count: int = CALIBRATION_IMAGES) -> list[str]:
    """Up to `count` of the sorted `image_ids`, evenly spread over them."""
    ids = sorted(image_ids)
    if len(ids) <= count:
        return ids
    return [ids[round(k * (len(ids) - 1) / (count - 1))] for k in range(count)] if count > 1 else ids[:1]


def calibration_input(image: np.ndarray, tile_size: int) -> np.ndarray:
    """(H, W, 3) uint8 `image` as the model sees a prediction tile of it: its central
    `tile_size` px square (the whole image where smaller, or when 0), (3, h, w) float32 in [0, 1]."""
    height, width = image.shape[:2]
    h, w = (height, width) if tile_size == 0 else (min(tile_size, height), min(tile_size, width))
    top, left = (height - h) // 2, (width - w) // 2
    crop = image[top : top + h, left : left + w]
    return np.ascontiguousarray(crop.transpose(2, 0, 1), dtype=np.float32) / np.float32(255)
