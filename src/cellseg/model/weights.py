"""Pretrained weights: torchvision's download / cache, or a local file for offline compute nodes.

`train.weights` = imagenet loads a ResNet classification state dict into the backbone body;
coco loads torchvision's full Mask R-CNN state dict, re-initialising the layers whose shape
depends on the class count (box and mask predictors) or on the anchors per location (RPN
outputs). A local `train.weights_path` may hold either kind (told apart by its keys), e.g. the
file `download_weights` wrote on a host with internet.
"""

import logging
import os
from pathlib import Path

import torch
from torch import nn
from torchvision.models import ResNet18_Weights, ResNet34_Weights, ResNet50_Weights, ResNet101_Weights, WeightsEnum
from torchvision.models.detection import MaskRCNN_ResNet50_FPN_V2_Weights, MaskRCNN_ResNet50_FPN_Weights

from cellseg.common.errors import ConfigError
from cellseg.common.files import atomic_path

log = logging.getLogger(__name__)

_IMAGENET = {
    "resnet18": ResNet18_Weights.IMAGENET1K_V1,
    "resnet34": ResNet34_Weights.IMAGENET1K_V1,
    "resnet50": ResNet50_Weights.IMAGENET1K_V1,
    "resnet101": ResNet101_Weights.IMAGENET1K_V1,
    "resnet50_v2": ResNet50_Weights.IMAGENET1K_V1,
}
_COCO = {
    "resnet50": MaskRCNN_ResNet50_FPN_Weights.COCO_V1,
    "resnet50_v2": MaskRCNN_ResNet50_FPN_V2_Weights.COCO_V1,
}
# Full-model tensors whose shape depends on the class count or the anchors, re-initialised on a mismatch.
_REINITIALISABLE = (
    "roi_heads.box_predictor.",
    "roi_heads.mask_predictor.mask_fcn_logits.",
    "rpn.head.cls_logits.",
    "rpn.head.bbox_pred.",
)
_OWN_LAYERS = ("aux_head.", "roi_heads.refine.")  # not in torchvision's Mask R-CNN, always freshly initialised


def torchvision_weights(cfg: dict) -> WeightsEnum | None:
    """torchvision's weights enum for `cfg["weights"]` and `cfg["backbone"]`; None for `none`."""
    if cfg["weights"] == "none":
        return None
    return (_COCO if cfg["weights"] == "coco" else _IMAGENET)[cfg["backbone"]]


def download_weights(cfg: dict, dest_path: str | os.PathLike) -> str:
    """Download the weights `cfg` names once (on a host with internet) and save them to `dest_path`.

    The file is the plain state dict, for `train.weights_path` on offline nodes. Returns the
    weights' name, e.g. `ResNet50_Weights.IMAGENET1K_V1`.
    """
    weights = torchvision_weights(cfg)
    if weights is None:
        raise ConfigError("train.weights: is none, there is nothing to download")
    state = weights.get_state_dict(progress=True)
    with atomic_path(dest_path) as tmp:
        torch.save(state, tmp)
    return str(weights)


def load_pretrained(model: nn.Module, cfg: dict) -> str:
    """Load the weights `cfg` names into `model` (a `cellseg.model.mask_rcnn.CellMaskRCNN`); say which.

    Returns a one-line description for logs and summaries. Raises `ConfigError` naming the
    file when `weights_path` is unreadable or does not fit the model (the workflow checked that it
    exists while building the DAG).
    """
    weights = torchvision_weights(cfg)
    if weights is None:
        return "random initialisation"
    kind = "COCO Mask R-CNN" if cfg["weights"] == "coco" else "ImageNet backbone"
    if cfg["weights_path"]:
        label = f"train.weights_path {cfg['weights_path']}"
        state = read_state_dict(cfg["weights_path"])
        source = f"{kind} weights from {label}"
    else:
        label = f"train.weights {weights}"
        state = _fetch(weights)
        source = f"{kind} weights {weights} (torchvision download / cache)"
    if any(key.startswith("backbone.") for key in state):
        reset = _load_full(model, state, label)
    else:
        _load_backbone(model.backbone.body, state, label)
        reset = []
    if reset:
        log.warning("%s: re-initialised %s (shape differs: class count or anchors)", label, ", ".join(reset))
        source += f"; re-initialised for this model: {', '.join(reset)}"
    return source


def _fetch(weights: WeightsEnum) -> dict[str, torch.Tensor]:
    """torchvision's cached copy, downloaded on first use; offline nodes need `weights_path` instead."""
    try:
        return weights.get_state_dict(progress=False)
    except OSError as err:
        raise ConfigError(
            f"train.weights: could not download {weights} ({err}); without internet, download it once with "
            "cellseg.model.weights.download_weights on a connected host and set train.weights_path to the file"
        ) from err


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A state dict (name → tensor) read with `weights_only=True`; `ConfigError` naming the file otherwise."""
    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ConfigError(f"train.weights_path: {path} is not a readable PyTorch state dict ({err})") from err
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ConfigError(f"train.weights_path: {path} does not hold a state dict (a mapping of names to tensors)")
    return state


def _load_backbone(body: nn.Module, state: dict, label: str) -> None:
    """ResNet classification weights into the FPN's ResNet body; its `fc` head is not used."""
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    own = _with_bn_counters(body.state_dict(), state)
    wrong = [k for k, v in state.items() if k not in own or own[k].shape != v.shape]
    if wrong:
        raise ConfigError(
            f"{label} does not fit this ResNet backbone: {len(wrong)} tensors are unknown "
            f"or differ in shape (e.g. {', '.join(wrong[:3])}); is it for another backbone?"
        )
    missing = [k for k in body.load_state_dict(state, strict=False).missing_keys if "num_batches_tracked" not in k]
    if missing:
        raise ConfigError(f"{label} lacks backbone tensors, e.g. {', '.join(missing[:3])}")


def _with_bn_counters(own: dict, state: dict) -> dict:
    """`own` plus the file's BatchNorm `num_batches_tracked` counters, which FrozenBatchNorm2d drops on load."""
    return {**{k: v for k, v in state.items() if k.endswith("num_batches_tracked")}, **own}


def _load_full(model: nn.Module, state: dict, label: str) -> list[str]:
    """A full Mask R-CNN state dict; returns the re-initialised layers (shape mismatch in the predictors)."""
    own = _with_bn_counters(model.state_dict(), state)
    mismatched = [k for k, v in state.items() if k in own and own[k].shape != v.shape]
    fatal = [k for k in mismatched if not k.startswith(_REINITIALISABLE)]
    unknown = [k for k in state if k not in own]
    if fatal or unknown:
        raise ConfigError(
            f"{label} does not fit this model ({len(fatal)} tensors differ in shape, "
            f"{len(unknown)} unknown, e.g. {', '.join((fatal + unknown)[:3])}); is it for another backbone?"
        )
    result = model.load_state_dict({k: v for k, v in state.items() if k not in mismatched}, strict=False)
    missing = [k for k in result.missing_keys if k not in mismatched and not k.startswith(_OWN_LAYERS)]
    if missing:
        raise ConfigError(f"{label} lacks model tensors, e.g. {', '.join(missing[:3])}")
    return sorted({k.rsplit(".", 1)[0] for k in mismatched})
