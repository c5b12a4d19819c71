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

Two parts are traced in an equivalent form that ONNX Runtime runs faster: the RoIs pooled per
pyramid level are put back in order by one gather (`_merge_levels`), and the mask predictor's
transposed convolution becomes a 1 × 1 convolution (`_MaskPredictorByConv`); the model itself
is left as it was.

ONNX (opset 17, torch's TorchScript-based exporter) loads in ONNX Runtime, in DJL's
OnnxRuntime engine and so in QuPath's DJL extension; the aux heads (`train.aux_heads`) are not
exported, as inference does not use them.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import warnings
from unittest import mock

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


def _merge_levels(levels: torch.Tensor, per_level: list[torch.Tensor]) -> torch.Tensor:
    """The RoIs pooled level by level (`per_level`, in level order) back in RoI order.

    torchvision's traced version scatters every level into a zero tensor of all RoIs, element by
    element (ONNX ScatterElements over N × C × 14 × 14 values, once per level), which ONNX
    Runtime runs slowly; one gather by the inverse permutation gives the same tensor."""
    order = torch.cat([torch.where(levels == level)[0] for level in range(len(per_level))])
    return torch.cat(per_level)[torch.argsort(order)]


class _MaskPredictorByConv(torch.nn.Module):
    """torchvision's mask predictor (2 × 2 stride-2 transposed convolution, ReLU, 1 × 1
    convolution to the class logits) as the same sums in operators ONNX Runtime runs fast.

    The strided kernel's windows do not overlap, so the transposed convolution is a 1 × 1
    convolution to 4 × its channels, one block per output sub-pixel (a, b); ReLU and the 1 × 1
    logits act per pixel, so they run on each block before the sub-pixels are interleaved, and
    only the class logits are moved into place. ONNX Runtime has no int8 ConvTranspose and a
    slow fp32 one, and moving all channels (DepthToSpace) was slow too."""

    def __init__(self, predictor: torch.nn.Module):
        super().__init__()
        deconv, logits = predictor.conv5_mask, predictor.mask_fcn_logits
        c_in, c_mid = deconv.weight.shape[:2]
        self.classes = logits.out_channels
        # Names as torchvision's, so that the quantiser keeps mask_fcn_logits in fp32.
        self.conv5_mask = torch.nn.Conv2d(c_in, 4 * c_mid, 1)
        self.conv5_mask.weight.data = deconv.weight.data.permute(2, 3, 1, 0).reshape(4 * c_mid, c_in, 1, 1).clone()
        self.conv5_mask.bias.data = deconv.bias.data.repeat(4).clone()
        self.mask_fcn_logits = torch.nn.Conv2d(4 * c_mid, 4 * self.classes, 1, groups=4)
        self.mask_fcn_logits.weight.data = logits.weight.data.repeat(4, 1, 1, 1).clone()
        self.mask_fcn_logits.bias.data = logits.bias.data.repeat(4).clone()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Channel (a * 2 + b) * classes + k holds sub-pixel (a, b) of class k's logits.
        y = self.mask_fcn_logits(torch.relu(self.conv5_mask(x)))
        n, _, h, w = y.shape
        return y.view(n, 2, 2, self.classes, h, w).permute(0, 3, 4, 1, 5, 2).reshape(n, self.classes, 2 * h, 2 * w)


@contextlib.contextmanager
def _mask_predictor_by_conv(model):
    """`model` with `_MaskPredictorByConv` as its mask predictor, put back on exit; unchanged
    when that predictor is not torchvision's with a plain 2 × 2 stride-2 transposed convolution."""
    heads = model.roi_heads
    predictor = heads.mask_predictor
    deconv = getattr(predictor, "conv5_mask", None)
    plain = isinstance(deconv, torch.nn.ConvTranspose2d) and (
        deconv.kernel_size, deconv.stride, deconv.padding, deconv.output_padding, deconv.dilation, deconv.groups
    ) == ((2, 2), (2, 2), (0, 0), (0, 0), (1, 1), 1)
    if not plain:
        yield
        return
    heads.mask_predictor = _MaskPredictorByConv(predictor)
    try:
        yield
    finally:
        heads.mask_predictor = predictor


def onnx_bytes(model: torch.nn.Module, example_size: int = 256) -> bytes:
    """The ONNX model of `model` (a `CellMaskRCNN` in eval mode on the CPU), with dynamic image
    height and width. `example_size`: the side of the random image the export traces with."""
    example = torch.rand(3, example_size, example_size, generator=torch.Generator().manual_seed(0))
    buffer = io.BytesIO()
    n = {0: "detections"}
    merge = mock.patch("torchvision.ops.poolers._onnx_merge_levels", _merge_levels)
    with warnings.catch_warnings(), torch.no_grad(), merge, _mask_predictor_by_conv(model):
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
