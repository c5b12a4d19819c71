"""An exported fold (`cellseg.model.onnx_export`) run by ONNX Runtime on the CPU, in numpy alone.

`OnnxModel.detect` returns what `CellMaskRCNN.detect` returns, so the tiled prediction, TTA and
seam merging of `cellseg.inference.predict` run it unchanged (`predict.backend: onnxruntime`), and
`cellseg.segment_exported` runs it without torch. Imports no torch.
"""

from __future__ import annotations

import os

import numpy as np
import onnxruntime as ort


class OnnxModel:
    """An ONNX file (or its bytes) of `cellseg.model.onnx_export` in an ONNX Runtime session with full
    graph optimisation. `threads`: intra-op threads (None = ONNX Runtime's default, all cores)."""

    def __init__(self, model: str | os.PathLike | bytes, threads: int | None = None):
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = threads or 0
        options.inter_op_num_threads = 1
        source = model if isinstance(model, bytes) else os.fspath(model)
        self.session = ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])

    def eval(self) -> OnnxModel:
        return self

    def detect(self, images) -> list[dict]:
        """`CellMaskRCNN.detect` for `images`: (3, h, w) float32 arrays (or CPU tensors) in [0, 1]."""
        found = []
        for image in images:
            pixels = np.ascontiguousarray(np.asarray(image, dtype=np.float32))
            boxes, scores, labels, masks = self.session.run(None, {"image": pixels})
            windows, crops = paste_windows(masks, boxes, pixels.shape[-2:])
            found.append({
                "boxes": boxes.astype(np.float32), "scores": scores.astype(np.float32),
                "labels": labels.astype(np.int64), "windows": windows, "crops": crops,
            })  # fmt: skip
        return found


def paste_windows(masks: np.ndarray, boxes: np.ndarray, image_size) -> tuple[np.ndarray, list[np.ndarray]]:
    """`cellseg.model.mask_rcnn.paste_windows` in numpy: masks (N, 1, M, M) probabilities, boxes (N, 4)
    xyxy float32; windows (N, 4) int64 and N float32 crops, equal to the torch version up to
    float rounding (torchvision's expand_masks / expand_boxes, then one matmul per window-size
    bucket with interpolate's bilinear weights)."""
    height, width = int(image_size[0]), int(image_size[1])
    size = masks.shape[-1]
    scale = np.float32((size + 2) / size)
    padded = np.pad(masks[:, 0].astype(np.float32), ((0, 0), (1, 1), (1, 1)))
    boxes = boxes.astype(np.float32)
    half_w, half_h = (boxes[:, 2] - boxes[:, 0]) * np.float32(0.5) * scale, (boxes[:, 3] - boxes[:, 1]) * np.float32(0.5) * scale
    centre_x, centre_y = (boxes[:, 2] + boxes[:, 0]) * np.float32(0.5), (boxes[:, 3] + boxes[:, 1]) * np.float32(0.5)
    bx0, bx1 = np.trunc(centre_x - half_w).astype(np.int64), np.trunc(centre_x + half_w).astype(np.int64)
    by0, by1 = np.trunc(centre_y - half_h).astype(np.int64), np.trunc(centre_y + half_h).astype(np.int64)
    x0, y0 = np.maximum(bx0, 0), np.maximum(by0, 0)
    x1, y1 = np.maximum(np.minimum(bx1 + 1, width), x0), np.maximum(np.minimum(by1 + 1, height), y0)
    windows = np.stack([x0, y0, x1, y1], 1)
    rows, cols = y1 - y0, x1 - x0
    box_h, box_w = np.maximum(by1 - by0 + 1, 1), np.maximum(bx1 - bx0 + 1, 1)
    crops: list[np.ndarray] = [None] * len(masks)
    bucket = np.ceil(np.log2(np.maximum(np.maximum(rows, cols), 1))).astype(np.int64)
    for level in np.unique(bucket).tolist():
        members = np.flatnonzero(bucket == level)
        h, w = int(rows[members].max()), int(cols[members].max())
        ry = _bilinear_weights(y0[members] - by0[members], h, box_h[members], padded.shape[-2])
        rx = _bilinear_weights(x0[members] - bx0[members], w, box_w[members], padded.shape[-1])
        pasted = ry @ padded[members] @ rx.transpose(0, 2, 1)
        for k, i in enumerate(members.tolist()):
            crops[i] = pasted[k, : rows[i], : cols[i]]
    return windows, crops


def _bilinear_weights(first: np.ndarray, count: int, out_size: np.ndarray, in_size: int) -> np.ndarray:
    """(N, count, in_size) float32 weights of bilinear resizing (align_corners=False) from
    `in_size` to `out_size[i]` samples, for output indices first[i] .. first[i] + count - 1."""
    dst = (first[:, None] + np.arange(count)).astype(np.float32)
    scale = (np.float32(in_size) / out_size.astype(np.float32))[:, None]
    src = np.maximum((dst + np.float32(0.5)) * scale - np.float32(0.5), np.float32(0))
    low = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
    lam = np.clip(src - low, 0, 1).astype(np.float32)
    high = np.minimum(low + 1, in_size - 1)
    weights = np.zeros((*dst.shape, in_size), np.float32)
    n, c = np.indices(dst.shape)
    weights[n, c, low] += 1 - lam
    weights[n, c, high] += lam
    return weights
