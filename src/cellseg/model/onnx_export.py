"""A trained fold as a self-contained ONNX model plus a JSON of what running it needs.

The graph holds the whole network of `CellMaskRCNN.detect` for one image: the input
normalisation (and the resize when the model has one), the ResNet-FPN backbone, the RPN
(anchors, proposal decoding, NMS), the RoI heads (RoIAlign, box head, per-class NMS, the
detection cap) and the mask head. Input `image`: (3, H, W) float32 RGB in [0, 1], any H, W.
Outputs, in the image's pixels: `boxes` (N, 4) float32 xyxy, `scores` (N,) float32, `labels`
(N,) int64 1..C, `masks` (N, 1, M, M) float32 probabilities in the box frame. Pasting each mask
into its box window (`cellseg.inference.onnx_backend.paste_windows`, numpy), tiling and everything after
it stay outside the graph, so that the same file serves the pipeline's `onnxruntime` backend
and `cellseg.segment_exported`, which runs without torch.

ONNX (opset 17, torch's TorchScript-based exporter) loads in ONNX Runtime, in DJL's
OnnxRuntime engine and so in QuPath's DJL extension; the aux heads (`train.aux_heads`) are not
exported, as inference does not use them.
"""

from __future__ import annotations

import io
import json
import os
import warnings

import torch
from torchvision.models.detection.transform import resize_boxes

from cellseg.common.files import atomic_path
from cellseg.model.mask_rcnn import IMAGENET_MEAN, IMAGENET_STD

OPSET = 17
FORMAT_VERSION = 1


class _Detector(torch.nn.Module):
    """`CellMaskRCNN.detect`'s network on one image, before the masks are pasted."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor):
        images, _ = self.model.transform([image])
        features = self.model.backbone(images.tensors)
        proposals, _ = self.model.rpn(images, features)
        detections, _ = self.model.roi_heads(features, proposals, images.image_sizes)
        found = detections[0]
        boxes = resize_boxes(found["boxes"], images.image_sizes[0], image.shape[-2:])
        return boxes, found["scores"], found["labels"], found["masks"]


def onnx_bytes(model: torch.nn.Module, example_size: int = 256) -> bytes:
    """The ONNX model of `model` (a `CellMaskRCNN` in eval mode on the CPU), with dynamic image
    height and width. `example_size`: the side of the random image the export traces with."""
    example = torch.rand(3, example_size, example_size, generator=torch.Generator().manual_seed(0))
    buffer = io.BytesIO()
    n = {0: "detections"}
    with warnings.catch_warnings(), torch.no_grad():
        # The tracer warns of every shape it reads; the exported shapes are checked by the tests.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            _Detector(model).eval(), (example,), buffer, opset_version=OPSET, dynamo=False,
            input_names=["image"], output_names=["boxes", "scores", "labels", "masks"],
            dynamic_axes={"image": {1: "height", 2: "width"}, "boxes": n, "scores": n, "labels": n, "masks": n},
        )  # fmt: skip
    return buffer.getvalue()


def model_card(
    classes: list[str], tile_size: int, overlap: int, mpp: float | None, points: dict[str, dict], train_cfg: dict,
    stain: str = "none",
) -> dict:  # fmt: skip
    """What the JSON beside the ONNX file holds: the classes, the input the graph expects and
    the normalisation it applies inside, the prediction tile size and overlap, the training µm
    per pixel (None when unknown), both tuned operating points (`cellseg.inference.operating_points.read_point`)
    and the stain normalisation the images need first (`stain.method`)."""
    return {
        "format_version": FORMAT_VERSION,
        "classes": list(classes),
        "input": {
            "layout": "CHW", "dtype": "float32", "range": [0.0, 1.0], "channels": "RGB",
            "normalisation_in_graph": {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)},
        },  # fmt: skip
        "tile_size": tile_size,
        "overlap": overlap,
        "mpp": mpp,
        "stain": stain,
        "box_score_thresh": train_cfg["box_score_thresh"],
        "points": points,
        "opset": OPSET,
    }


def export_fold(model: torch.nn.Module, onnx_path: str | os.PathLike, json_path: str | os.PathLike, card: dict) -> None:
    """Write `model`'s ONNX file and its `card` (`model_card`), atomically."""
    with atomic_path(onnx_path) as tmp:
        tmp.write_bytes(onnx_bytes(model))
    with atomic_path(json_path) as tmp:
        tmp.write_text(json.dumps(card, indent=1) + "\n")
