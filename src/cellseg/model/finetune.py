"""Starting a training from a finished run's weights (`train.init_from`), classes matched by name.

Backbone, FPN, RPN and the class-independent head layers load as they are. The class-indexed
head tensors (box classifier `cls_score`, per-class `bbox_pred`, mask `mask_fcn_logits`; row 0
= background) are rebuilt row by row: a class both runs have keeps its exact rows, a class new
to this config keeps the model's freshly initialised rows, a class only the source had is
dropped.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from cellseg.common.errors import ConfigError
from cellseg.model.init_source import InitSource

log = logging.getLogger(__name__)

_CLASS_HEADS = ("cls_score.", "bbox_pred.", "mask_fcn_logits.")
_BOX_DELTAS = 4  # torchvision's bbox_pred: 4 rows per class; the cascade's is class-agnostic (4 in all)


def load_init_weights(model: nn.Module, source: InitSource, class_names: list[str]) -> str:
    """Load `source` into `model` (built for `class_names`); returns a one-line description.

    Raises `ConfigError` naming `train.init_from` when the file does not fit the model.
    """
    state = _read(source)
    source_classes = _source_classes(source, state, class_names)
    rows = [0] + [source_classes.index(name) + 1 if name in source_classes else None for name in class_names]
    new = [name for name in class_names if name not in source_classes]
    dropped = [name for name in source_classes if name not in class_names]
    own = model.state_dict()
    merged = {}
    for key, value in state.items():
        if key.endswith("num_batches_tracked") and key not in own:
            continue  # BatchNorm's counter, which a frozen batch norm lacks
        if key not in own:
            raise ConfigError(
                f"train.init_from: {source.path} holds {key}, which this model lacks (another architecture?)"
            )
        if _is_class_head(key, own[key], len(class_names)):
            value = _remap_rows(own[key], value, rows, len(source_classes))
        if value.shape != own[key].shape:
            raise ConfigError(
                f"train.init_from: {source.path}: {key} has shape {tuple(value.shape)}, this model "
                f"{tuple(own[key].shape)} (another architecture?)"
            )
        merged[key] = value
    missing = [k for k in own if k not in merged and not k.endswith("num_batches_tracked")]
    if missing:
        raise ConfigError(
            f"train.init_from: {source.path} lacks {len(missing)} tensors of this model, e.g. {missing[:3]}"
        )
    model.load_state_dict(merged, strict=False)
    if new:
        log.info("train.init_from: new classes %s start with fresh head rows", ", ".join(new))
    if dropped:
        log.info("train.init_from: classes %s of %s are dropped (not in classes:)", ", ".join(dropped), source.path)
    return f"finished run's weights from train.init_from {source.path}"


def _read(source: InitSource) -> dict[str, torch.Tensor]:
    try:
        state = torch.load(source.path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ConfigError(f"train.init_from: {source.path} is not a readable PyTorch state dict ({err})") from err
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ConfigError(f"train.init_from: {source.path} does not hold a state dict (a mapping of names to tensors)")
    return state


def _source_classes(source: InitSource, state: dict, class_names: list[str]) -> list[str]:
    """The source's classes as recorded; without a record, this config's (same count required)."""
    if source.classes is not None:
        return list(source.classes)
    count = state["roi_heads.box_predictor.cls_score.weight"].shape[0] - 1
    if count != len(class_names):
        raise ConfigError(
            f"train.init_from: {source.path} records no classes and has {count}, classes: lists "
            f"{len(class_names)}; start from a run that records them (train_summary.json)"
        )
    log.warning(
        "WARNING: train.init_from: %s records no classes; taking them to be classes: %s", source.path, class_names
    )
    return list(class_names)


def _is_class_head(key: str, own: torch.Tensor, n_classes: int) -> bool:
    name = key.rsplit(".", 2)[-2] + "."
    return key.startswith("roi_heads.") and name in _CLASS_HEADS and own.shape[0] % (n_classes + 1) == 0 \
        and not (name == "bbox_pred." and own.shape[0] == _BOX_DELTAS)


def _remap_rows(own: torch.Tensor, value: torch.Tensor, rows: list[int | None], n_source: int) -> torch.Tensor:
    """`own` (the fresh tensor, `len(rows)` classes incl. background) with class j's block of
    rows taken from the source's class `rows[j]` where that is not None."""
    width = own.shape[0] // len(rows)
    if value.shape[0] != width * (n_source + 1) or value.shape[1:] != own.shape[1:]:
        return value  # reported as a shape mismatch by the caller
    out = own.detach().clone()
    for j, i in enumerate(rows):
        if i is not None:
            out[j * width:(j + 1) * width] = value[i * width:(i + 1) * width]
    return out
