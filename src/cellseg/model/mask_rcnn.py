"""Mask R-CNN for cells, built from the resolved `train:` config (`cellseg.training.config`).

torchvision's parts (ResNet-FPN backbone, RPN, RoI heads, transform) assembled explicitly so
that every anchor, sampling and size setting comes from config, plus three additions that
torchvision lacks: class-weighted box classifier and mask losses, an optional Dice term on the
mask loss, and optional centre / boundary heads on the finest FPN level. `train.box_head:
cascade` swaps the RoI heads for the three-stage cascade of `cellseg.model.cascade`.

Train mode: `model(images, targets)` returns the loss dict. `images` are `(3, H, W)` float
tensors in [0, 1]; each target holds `boxes` `(N, 4)` float32 xyxy, `labels` `(N,)` int64
1..C (0 = background), `masks` `(N, H, W)` uint8, and with `aux_heads` also `center` and
`boundary` `(H, W)` float32 at the input image's size. Eval mode: torchvision's list of dicts
(`boxes`, `labels`, `scores`, `masks` `(N, 1, H, W)` probabilities), plus `center` and
`boundary` `(H, W)` probabilities when the aux heads are on. `model.detect(images)`: the
same detections with each mask kept inside its box window (what inference uses).
"""

import logging

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchvision import models
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
from torchvision.models.detection.faster_rcnn import FastRCNNConvFCHead, FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.generalized_rcnn import GeneralizedRCNN
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.models.detection.roi_heads import expand_boxes, expand_masks
from torchvision.models.detection.rpn import RegionProposalNetwork, RPNHead
from torchvision.models.detection.transform import GeneralizedRCNNTransform, resize_boxes
from torchvision.ops import FeaturePyramidNetwork, MultiScaleRoIAlign
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool
from torchvision.ops.misc import FrozenBatchNorm2d
from torchvision.ops.poolers import initLevelMapper

from cellseg.model.cascade import STAGE_IOUS, CascadePredictor, CascadeRoIHeads
from cellseg.model.roi_heads import CellRoIHeads
from cellseg.model.weights import load_pretrained

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
BOX_REPRESENTATION = 1024
AUX_STRIDE = 4  # FPN level '0'


def build_model(
    cfg: dict,
    num_classes: int,
    class_weights: torch.Tensor | None = None,
    *,
    tile_size: int = 0,
    pretrained: bool = True,
) -> "CellMaskRCNN":
    """Mask R-CNN for `num_classes` foreground classes (background excluded), from resolved `cfg`.

    `class_weights` `(num_classes + 1,)` float (index 0 = background) weights the box
    classifier's cross-entropy and each RoI's mask loss by its class; None = unweighted. Pretrained weights follow `cfg["weights"]` /
    `cfg["weights_path"]`; `model.weights_description` says which were used. `pretrained=False`
    builds the same architecture without loading them (inference loads trained weights anyway).
    `tile_size`: the training tiles' side S; when set, every image (tile, whole image or
    inference tile of any size) is resized by the same factor `min_size / S`, so the model sees
    cells at one magnification. 0: torchvision's behaviour (short side resized to `min_size`).
    `min_size` None: native resolution, no resizing at all (multiscale sizes relative to S).
    """
    if class_weights is not None and tuple(class_weights.shape) != (num_classes + 1,):
        raise ValueError(f"class_weights must have shape ({num_classes + 1},), got {tuple(class_weights.shape)}")
    v2 = cfg["backbone"] == "resnet50_v2"
    # Pretrained backbones use frozen batch norm (as torchvision); the architecture, and so the
    # state dict's keys, follow the config also when the weights themselves are not loaded.
    uses_pretrained = cfg["weights"] != "none"
    channels = cfg["fpn_channels"]
    backbone = _backbone(
        cfg["backbone"], cfg["trainable_backbone_layers"], frozen_bn=uses_pretrained and not v2, channels=channels
    )
    model = CellMaskRCNN(
        backbone=backbone,
        rpn=_rpn(cfg, v2),
        roi_heads=_roi_heads(cfg, num_classes, v2, class_weights),
        transform=_Transform(cfg["min_size"], cfg["max_size"], cfg["multiscale_sizes"], tile_size),
        aux_head=AuxHead(channels) if cfg["aux_heads"] else None,
        center_loss_weight=cfg["center_loss_weight"],
        boundary_loss_weight=cfg["boundary_loss_weight"],
    )
    model.weights_description = (
        load_pretrained(model, cfg) if pretrained else "architecture only (weights loaded by the caller)"
    )
    log.info("model %s, %d classes: %s", cfg["backbone"], num_classes, model.weights_description)
    return model


def _backbone(name: str, trainable_layers: int, frozen_bn: bool, channels: int) -> nn.Module:
    """ResNet-FPN with `channels` per level '0'-'3' (strides 4-32) and 'pool', randomly initialised.

    torchvision fixes the FPN at 256 channels; a narrower one (`train.fpn_channels`) replaces
    it, which makes the FPN, RPN and RoI heads several times cheaper on a CPU.
    """
    resnet_name = "resnet50" if name == "resnet50_v2" else name
    norm_layer = FrozenBatchNorm2d if frozen_bn else nn.BatchNorm2d
    resnet = getattr(models, resnet_name)(weights=None, norm_layer=norm_layer)
    fpn_norm = nn.BatchNorm2d if name == "resnet50_v2" else None
    backbone = _resnet_fpn_extractor(resnet, trainable_layers, norm_layer=fpn_norm)
    if channels != backbone.out_channels:
        in_channels = [block[0].in_channels for block in backbone.fpn.inner_blocks]
        backbone.fpn = FeaturePyramidNetwork(in_channels, channels, LastLevelMaxPool(), norm_layer=fpn_norm)
        backbone.out_channels = channels
    return backbone


def _rpn(cfg: dict, v2: bool) -> RegionProposalNetwork:
    anchors = AnchorGenerator(
        sizes=tuple((size,) for size in cfg["anchor_sizes"]),
        aspect_ratios=(tuple(cfg["aspect_ratios"]),) * len(cfg["anchor_sizes"]),
    )
    head = RPNHead(cfg["fpn_channels"], anchors.num_anchors_per_location()[0], conv_depth=2 if v2 else 1)
    return RegionProposalNetwork(
        anchors,
        head,
        fg_iou_thresh=0.7,
        bg_iou_thresh=0.3,
        batch_size_per_image=cfg["rpn_batch_size_per_image"],
        positive_fraction=0.5,
        pre_nms_top_n={"training": cfg["rpn_pre_nms_top_n_train"], "testing": cfg["rpn_pre_nms_top_n_test"]},
        post_nms_top_n={"training": cfg["rpn_post_nms_top_n_train"], "testing": cfg["rpn_post_nms_top_n_test"]},
        nms_thresh=0.7,
    )


def _roi_heads(cfg: dict, num_classes: int, v2: bool, class_weights: torch.Tensor | None) -> CellRoIHeads:
    """torchvision's RoI heads (`train.box_head: standard`) or the cascade (`cellseg.model.cascade`)."""
    levels = ["0", "1", "2", "3"]
    channels = cfg["fpn_channels"]
    cascade = cfg["box_head"] == "cascade"
    n_box_heads = len(STAGE_IOUS) if cascade else 1
    if v2:
        box_heads = [
            FastRCNNConvFCHead((channels, 7, 7), [channels] * 4, [BOX_REPRESENTATION], norm_layer=nn.BatchNorm2d)
            for _ in range(n_box_heads)
        ]
        mask_head = MaskRCNNHeads(channels, [channels] * 4, 1, norm_layer=nn.BatchNorm2d)
    else:
        box_heads = [TwoMLPHead(channels * 7 * 7, BOX_REPRESENTATION) for _ in range(n_box_heads)]
        mask_head = MaskRCNNHeads(channels, [channels] * 4, 1)
    heads, predictor = (CascadeRoIHeads, CascadePredictor) if cascade else (CellRoIHeads, FastRCNNPredictor)
    stages = {"refine_heads": box_heads[1:]} if cascade else {}
    return heads(
        **stages,
        box_roi_pool=_roi_align(levels, 7),
        box_head=box_heads[0],
        box_predictor=predictor(BOX_REPRESENTATION, num_classes + 1),
        fg_iou_thresh=0.5,
        bg_iou_thresh=0.5,
        batch_size_per_image=cfg["box_batch_size_per_image"],
        positive_fraction=0.25,
        bbox_reg_weights=None,
        score_thresh=cfg["box_score_thresh"],
        nms_thresh=0.5,
        detections_per_img=cfg["box_detections_per_img"],
        mask_roi_pool=_roi_align(levels, cfg["mask_roi_size"]),
        mask_head=mask_head,
        mask_predictor=MaskRCNNPredictor(channels, channels, num_classes + 1),
        class_weights=class_weights,
        dice_loss_weight=cfg["dice_loss_weight"],
    )


def _roi_align(levels: list[str], output_size: int) -> MultiScaleRoIAlign:
    """RoIAlign over FPN levels '0'-'3' with their scales fixed (1/4 … 1/32).

    torchvision infers the scales from the first batch it sees and keeps them; an image under
    ~64 px in that batch rounds them wrongly (a 40 px image gives 1/2 for stride 4), which
    silently ruins every later prediction of the process.
    """
    pool = MultiScaleRoIAlign(levels, output_size=output_size, sampling_ratio=2)
    strides = [2 ** (k + 2) for k in range(len(levels))]
    pool.scales = [1.0 / stride for stride in strides]
    pool.map_levels = initLevelMapper(
        2, 1 + len(levels), canonical_scale=pool.canonical_scale, canonical_level=pool.canonical_level
    )
    return pool


class _Transform(GeneralizedRCNNTransform):
    """torchvision's resize + normalise, training at a random min size per batch from `train_sizes`.

    torchvision's own multi-scale draws per image and evaluates at the last size; here
    evaluation always uses `min_size`. With `tile_size` S, an image of any size is resized by
    the factor (chosen min size) / S instead of to a fixed short side (see `build_model`).
    """

    def __init__(self, min_size: int | None, max_size: int, train_sizes: list[int], tile_size: int = 0):
        size = min_size or tile_size or max_size  # torchvision needs a number even when unused
        super().__init__(size, max_size, IMAGENET_MEAN, IMAGENET_STD)
        self.eval_min_size = (size,)
        self.train_sizes = tuple(train_sizes)
        self.tile_size = tile_size
        self.native = min_size is None and not tile_size

    def resize(self, image, target=None):
        if self.native:
            return image, target
        if not self.tile_size:
            return super().resize(image, target)
        scale = self.min_size[-1] / self.tile_size
        if scale == 1.0:
            return image, target
        height, width = image.shape[-2:]
        saved = self.min_size, self.max_size
        self.min_size, self.max_size = (min(height, width) * scale,), max(height, width) * scale + 1e-3
        try:
            return super().resize(image, target)
        finally:
            self.min_size, self.max_size = saved

    def scales(self) -> dict:
        """The resize factors this transform applies to a tile: `train`, one per training size;
        `predict`, when predicting (None where images go to a fixed short side, no tiles)."""
        if self.native:
            return {"train": [1.0], "predict": 1.0}
        if not self.tile_size:
            return {"train": None, "predict": None}
        sizes = self.train_sizes or self.eval_min_size
        return {"train": [size / self.tile_size for size in sizes], "predict": self.eval_min_size[0] / self.tile_size}

    def forward(self, images, targets=None):
        self.min_size = self.eval_min_size
        if self.training and self.train_sizes:
            self.min_size = (self.train_sizes[int(torch.randint(len(self.train_sizes), ()))],)
        return super().forward(images, targets)


class AuxHead(nn.Module):
    """Centre heatmap and boundary map logits from FPN level '0' (stride 4): `(B, 2, h, w)`.

    Channel 0 = centre (trained with MSE of its sigmoid against the heatmap), 1 = boundary
    (BCE). The centre bias starts low (sigmoid ≈ 0.1), as most pixels are far from a centre.
    """

    def __init__(self, channels: int, hidden: int = 64):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, hidden, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, hidden, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, 2, 1),
        )
        nn.init.constant_(self.body[-1].bias, -2.2)

    def forward(self, feature: torch.Tensor) -> torch.Tensor:
        return self.body(feature)


def aux_map_targets(
    targets: list[dict], image_sizes: list[tuple[int, int]], padded_shape: tuple[int, int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each target's `center` and `boundary` `(H, W)` resized as the transform resized its image.

    `image_sizes` are the resized, unpadded `(h, w)` (`ImageList.image_sizes`), `padded_shape`
    the batch tensor's `(Hp, Wp)`. Bilinear, align_corners=False, as GeneralizedRCNNTransform
    resizes images. Returns maps `(B, 2, Hp, Wp)` float32 (centre, boundary; 0 in the padding)
    and `valid` `(B, 1, Hp, Wp)` bool (True inside each resized image).
    """
    device = targets[0]["center"].device
    maps = torch.zeros((len(targets), 2, *padded_shape), dtype=torch.float32, device=device)
    valid = torch.zeros((len(targets), 1, *padded_shape), dtype=torch.bool, device=device)
    for i, (target, (height, width)) in enumerate(zip(targets, image_sizes)):
        pair = torch.stack([target["center"], target["boundary"]]).float()[None]
        maps[i, :, :height, :width] = F.interpolate(pair, size=(height, width), mode="bilinear", align_corners=False)[0]
        valid[i, :, :height, :width] = True
    return maps, valid


class CellMaskRCNN(GeneralizedRCNN):
    """GeneralizedRCNN (state-dict keys as torchvision's MaskRCNN) plus the optional `aux_head`."""

    def __init__(self, backbone, rpn, roi_heads, transform, aux_head, center_loss_weight, boundary_loss_weight):
        super().__init__(backbone, rpn, roi_heads, transform)
        self.aux_head = aux_head
        self.center_loss_weight = center_loss_weight
        self.boundary_loss_weight = boundary_loss_weight
        self.weights_description = "random initialisation"

    def forward(self, images: list[torch.Tensor], targets: list[dict] | None = None):
        if self.training:
            _check_targets(targets, self.aux_head is not None)
        original_sizes = [tuple(image.shape[-2:]) for image in images]
        image_list, resized_targets = self.transform(images, targets)
        features = self.backbone(image_list.tensors)
        proposals, losses = self.rpn(image_list, features, resized_targets)
        detections, roi_losses = self.roi_heads(features, proposals, image_list.image_sizes, resized_targets)
        losses.update(roi_losses)
        aux_logits = None
        if self.aux_head is not None:
            aux_logits = F.interpolate(
                self.aux_head(features["0"]), size=image_list.tensors.shape[-2:], mode="bilinear", align_corners=False
            )
        if self.training:
            if aux_logits is not None:
                losses.update(self._aux_losses(aux_logits, targets, image_list))
            return losses
        detections = self.transform.postprocess(detections, image_list.image_sizes, original_sizes)
        if aux_logits is not None:
            _attach_maps(detections, aux_logits.sigmoid(), image_list.image_sizes, original_sizes)
        return detections

    @torch.inference_mode()
    def detect(self, images: list[torch.Tensor]) -> list[dict]:
        """Eval-mode detections with each mask kept inside its box window, as numpy arrays.

        torchvision pastes every mask into a full-size image: 400 cells on a 512 px tile are
        400 MB of floats, most of it zeros, and pasting and cropping them took longer than the
        network. Per image: `boxes` (N, 4) float32, `scores` (N,) float32, `labels` (N,)
        int64, `windows` (N, 4) int64 x0, y0, x1, y1 (exclusive ends, inside the image) and
        `crops`: N float32 probability arrays of their windows' shapes. Inside its window a
        crop equals torchvision's pasted mask (to float rounding, see `paste_windows`); outside it
        that mask is 0. No aux maps.
        """
        original_sizes = [tuple(image.shape[-2:]) for image in images]
        image_list, _ = self.transform(images)
        features = self.backbone(image_list.tensors)
        # Under a caller's autocast only the backbone and FPN (most of the work) run in half
        # precision: bf16 keeps 8 mantissa bits, so a box decoded at x = 500 would move by 2 px.
        with torch.autocast(image_list.tensors.device.type, enabled=False):
            features = {name: feature.float() for name, feature in features.items()}
            proposals, _ = self.rpn(image_list, features)
            detections, _ = self.roi_heads(features, proposals, image_list.image_sizes)
            return [
                self._windowed(detection, resized, original)
                for detection, resized, original in zip(detections, image_list.image_sizes, original_sizes)
            ]

    @staticmethod
    def _windowed(detection: dict, resized: tuple[int, int], original: tuple[int, int]) -> dict:
        """One image's detections at its original size, masks pasted into windows (`detect`)."""
        boxes = resize_boxes(detection["boxes"], resized, original)
        windows, crops = paste_windows(detection["masks"], boxes, original)
        return {
            "boxes": boxes.float().cpu().numpy(),
            "scores": detection["scores"].float().cpu().numpy(),
            "labels": detection["labels"].cpu().numpy().astype(np.int64),
            "windows": windows,
            "crops": crops,
        }

    def _aux_losses(self, logits: torch.Tensor, targets: list[dict], image_list) -> dict:
        maps, valid = aux_map_targets(targets, image_list.image_sizes, tuple(logits.shape[-2:]))
        logits = logits.float()
        n_valid = valid.sum().clamp(min=1)
        center = (F.mse_loss(logits[:, :1].sigmoid(), maps[:, :1], reduction="none") * valid).sum() / n_valid
        boundary = F.binary_cross_entropy_with_logits(logits[:, 1:], maps[:, 1:], reduction="none")
        boundary = (boundary * valid).sum() / n_valid
        return {
            "loss_center": self.center_loss_weight * center,
            "loss_boundary": self.boundary_loss_weight * boundary,
        }


def paste_windows(
    masks: torch.Tensor, boxes: torch.Tensor, image_size: tuple[int, int]
) -> tuple[np.ndarray, list[np.ndarray]]:
    """torchvision's `paste_masks_in_image`, keeping each pasted mask only inside its window.

    masks: (N, 1, M, M) probabilities; boxes: (N, 4) xyxy in the image. Returns windows (N, 4)
    int64 (the expanded integer box clipped to the image) and N float32 crops.

    torchvision resizes each mask to its box with one `interpolate` call, a kernel launch per
    detection (1,000 per tile on a GPU). Bilinear resizing is separable: a crop is
    `Ry @ mask @ Rx.T`, with Ry (h, M) and Rx (w, M) holding interpolate's (align_corners=False)
    two weights per output row / column, so one batched matmul pastes all masks of similar
    size at once. Masks are grouped by window size (powers of 2), which bounds the zero padding
    of small windows next to a large one. Equal to interpolate up to float rounding (the sums
    run in another order): `tests/test_model.py` checks 1e-5.
    """
    height, width = image_size
    masks, scale = expand_masks(masks, padding=1)
    masks = masks[:, 0].float()
    bx0, by0, bx1, by1 = expand_boxes(boxes, scale).to(torch.int64).unbind(1)
    x0, y0 = bx0.clamp(min=0), by0.clamp(min=0)
    x1, y1 = torch.maximum((bx1 + 1).clamp(max=width), x0), torch.maximum((by1 + 1).clamp(max=height), y0)
    windows = torch.stack([x0, y0, x1, y1], 1)
    rows, cols = y1 - y0, x1 - x0
    box_h, box_w = (by1 - by0 + 1).clamp(min=1), (bx1 - bx0 + 1).clamp(min=1)
    crops = [None] * len(masks)
    bucket = torch.maximum(rows, cols).clamp(min=1).float().log2().ceil().long()
    for level in bucket.unique().tolist():
        members = torch.nonzero(bucket == level)[:, 0]
        h, w = int(rows[members].max()), int(cols[members].max())
        ry = _bilinear_weights(y0[members] - by0[members], h, box_h[members], masks.shape[-2])
        rx = _bilinear_weights(x0[members] - bx0[members], w, box_w[members], masks.shape[-1])
        pasted = (ry @ masks[members] @ rx.transpose(1, 2)).cpu().numpy()
        for k, i in enumerate(members.tolist()):
            crops[i] = pasted[k, : int(rows[i]), : int(cols[i])]
    return windows.cpu().numpy(), crops


def _bilinear_weights(first: torch.Tensor, count: int, out_size: torch.Tensor, in_size: int) -> torch.Tensor:
    """(N, count, in_size) weights of `interpolate(mode="bilinear", align_corners=False)` from
    `in_size` to `out_size[i]` samples, for output indices first[i] .. first[i] + count - 1."""
    dst = first[:, None] + torch.arange(count, device=first.device)
    scale = in_size / out_size.float()
    src = ((dst + 0.5) * scale[:, None] - 0.5).clamp(min=0)
    low = src.floor().long().clamp(max=in_size - 1)
    lam = (src - low).clamp(0, 1)
    high = (low + 1).clamp(max=in_size - 1)
    weights = torch.zeros((*dst.shape, in_size), device=first.device)
    weights.scatter_add_(2, low[..., None], (1 - lam)[..., None])
    return weights.scatter_add_(2, high[..., None], lam[..., None])


def _check_targets(targets: list[dict] | None, need_maps: bool) -> None:
    """Fail with a clear message on targets the losses cannot use (degenerate boxes give NaN)."""
    if targets is None:
        raise ValueError("training mode needs targets")
    for i, target in enumerate(targets):
        boxes = target["boxes"]
        if len(boxes) and not bool(((boxes[:, 2:] > boxes[:, :2]).all())):
            raise ValueError(f"target {i}: boxes must have x2 > x1 and y2 > y1 (xyxy)")
        if need_maps and not {"center", "boundary"} <= target.keys():
            raise ValueError(f"target {i}: aux_heads need 'center' and 'boundary' (H, W) float32 maps")


def _attach_maps(detections: list[dict], probs: torch.Tensor, image_sizes, original_sizes) -> None:
    """Add `center` and `boundary` `(H, W)` probabilities at each original image size."""
    for detection, prob, (height, width), original in zip(detections, probs, image_sizes, original_sizes):
        crop = prob[None, :, :height, :width]
        prob = F.interpolate(crop, size=original, mode="bilinear", align_corners=False)[0]
        detection["center"], detection["boundary"] = prob[0], prob[1]
