"""The `train:` config section: named presets plus user overrides, validated once.

Imports no torch, because the Snakefile resolves this section while building the DAG.
The keys and preset values are those of `docs/train_keys.md`.
"""

import copy

from cellseg.common.errors import ConfigError

BACKBONES = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet50_v2")
WEIGHTS = ("none", "imagenet", "coco")
COCO_BACKBONES = ("resnet50", "resnet50_v2")
COCO_FPN_CHANNELS = 256
AUGMENT_PRESETS = ("none", "basic", "strong")
AUGMENT_SWITCHES = ("hflip", "vflip", "rot90", "scale_shift", "color", "stain", "elastic")
OPTIMIZERS = ("adamw", "sgd")
AMP_MODES = ("none", "bf16", "fp16")
BOX_HEADS = ("standard", "cascade")
N_FPN_LEVELS = 5

TRAIN_PRESETS = {
    "demo": {
        "backbone": "resnet18",
        "weights": "none",
        "weights_path": None,
        "init_from": None,
        "trainable_backbone_layers": 5,
        "fpn_channels": 128,
        "min_size": None,
        "max_size": 512,
        "multiscale_sizes": [],
        "anchor_sizes": [8, 16, 32, 64, 128],
        "aspect_ratios": [0.5, 1.0, 2.0],
        "rpn_batch_size_per_image": 128,
        "rpn_pre_nms_top_n_train": 1000,
        "rpn_pre_nms_top_n_test": 1000,
        "rpn_post_nms_top_n_train": 300,
        "rpn_post_nms_top_n_test": 300,
        "box_batch_size_per_image": 32,
        "box_detections_per_img": 500,
        "box_score_thresh": 0.05,
        "box_head": "standard",
        "mask_roi_size": 7,
        "aux_heads": False,
        "center_loss_weight": 1.0,
        "boundary_loss_weight": 1.0,
        "dice_loss_weight": 0.0,
        "augment": "basic",
        "augment_overrides": {},
        "stain_jitter": 0.0,
        "optimizer": "adamw",
        "lr": 1e-3,
        "weight_decay": 1e-4,
        "momentum": 0.9,
        "lr_batch": 4,
        "epochs": 6,
        "min_steps": 50,
        "batch_size": 4,
        "grad_accum_steps": 1,
        "warmup_steps": 10,
        "clip_grad_norm": 10.0,
        "amp": "none",
        "channels_last": False,
        "class_weighted_loss": False,
        "repeat_factor_threshold": None,
        "copy_paste": 0.0,
        "ema_decay": None,
        "val_every_epochs": 2,
        "val_tile_size": None,
        "early_stopping_patience": 0,
        "checkpoint_every_steps": 50,
        "seed": 0,
    },
    "gpu": {
        "backbone": "resnet50",
        "weights": "imagenet",
        "weights_path": None,
        "init_from": None,
        "trainable_backbone_layers": 3,
        "fpn_channels": 256,
        "min_size": None,
        "max_size": 1333,
        "multiscale_sizes": [448, 512, 576],
        "anchor_sizes": [16, 32, 64, 128, 256],
        "aspect_ratios": [0.5, 1.0, 2.0],
        "rpn_batch_size_per_image": 256,
        "rpn_pre_nms_top_n_train": 2000,
        "rpn_pre_nms_top_n_test": 1000,
        "rpn_post_nms_top_n_train": 2000,
        "rpn_post_nms_top_n_test": 1000,
        "box_batch_size_per_image": 512,
        "box_detections_per_img": 1000,
        "box_score_thresh": 0.05,
        "box_head": "standard",
        "mask_roi_size": 14,
        "aux_heads": False,
        "center_loss_weight": 1.0,
        "boundary_loss_weight": 1.0,
        "dice_loss_weight": 0.5,
        "augment": "strong",
        "augment_overrides": {},
        "stain_jitter": 0.0,
        "optimizer": "sgd",
        "lr": 0.02,
        "weight_decay": 1e-4,
        "momentum": 0.9,
        "lr_batch": 16,
        "epochs": 24,
        "min_steps": 1000,
        "batch_size": 8,
        "grad_accum_steps": 1,
        "warmup_steps": 500,
        "clip_grad_norm": 10.0,
        "amp": "bf16",
        "channels_last": True,
        "class_weighted_loss": False,
        "repeat_factor_threshold": None,
        "copy_paste": 0.5,
        "ema_decay": None,
        "val_every_epochs": 2,
        "val_tile_size": None,
        "early_stopping_patience": 5,
        "checkpoint_every_steps": 200,
        "seed": 0,
    },
}

_CHOICES = {
    "backbone": BACKBONES,
    "weights": WEIGHTS,
    "augment": AUGMENT_PRESETS,
    "optimizer": OPTIMIZERS,
    "amp": AMP_MODES,
    "box_head": BOX_HEADS,
}
_POSITIVE_INTS = (
    "max_size", "fpn_channels", "rpn_batch_size_per_image", "rpn_pre_nms_top_n_train",
    "rpn_pre_nms_top_n_test", "rpn_post_nms_top_n_train", "rpn_post_nms_top_n_test",
    "box_batch_size_per_image", "box_detections_per_img", "mask_roi_size", "lr_batch", "epochs",
    "batch_size", "grad_accum_steps", "val_every_epochs", "checkpoint_every_steps",
)  # fmt: skip
_NON_NEGATIVE_INTS = ("val_tile_size", "min_steps", "warmup_steps", "early_stopping_patience", "seed")
_NON_NEGATIVE_FLOATS = (
    "center_loss_weight", "boundary_loss_weight", "dice_loss_weight", "weight_decay",
    "momentum", "clip_grad_norm", "box_score_thresh",
)  # fmt: skip
_BOOLS = ("aux_heads", "channels_last", "class_weighted_loss")


def resolve_train_config(user: dict, predict_tile_size: int = 0) -> dict:
    """The named preset (`user["preset"]`, default `demo`) overridden by every non-null user key.

    Returns a new dict with every key of `docs/train_keys.md` (plus `preset`); a null
    `val_tile_size` becomes `predict_tile_size` (the pipeline passes `predict.tile_size`, so
    validation tiles as the predict stage does; 0 = whole images). Raises `ConfigError` naming
    `train.<key>` for an unknown key or a value that cannot work.
    """
    user = dict(user or {})
    preset = user.pop("preset", None) or "demo"
    if preset not in TRAIN_PRESETS:
        raise ConfigError(f"train.preset: unknown preset {preset!r}, expected one of {sorted(TRAIN_PRESETS)}")
    cfg = copy.deepcopy(TRAIN_PRESETS[preset])
    for key, value in user.items():
        if key not in cfg:
            raise ConfigError(f"train.{key}: unknown key (known: {', '.join(sorted(cfg))})")
        if value is not None:
            cfg[key] = copy.deepcopy(value)
    if cfg["val_tile_size"] is None:
        cfg["val_tile_size"] = predict_tile_size
    _validate(cfg)
    return {"preset": preset, **cfg}


def effective_lr(cfg: dict) -> float:
    """The peak learning rate a run trains at, linear in its total batch (Goyal et al. 2017):
    `lr` is stated for `lr_batch` tiles per optimizer step, and a fold (one GPU) takes
    `batch_size` x `grad_accum_steps`; the warmup (`warmup_steps`) ramps up to it. So a
    smaller batch, to fit a smaller GPU, keeps the step per tile and needs no new lr."""
    return cfg["lr"] * cfg["batch_size"] * cfg["grad_accum_steps"] / cfg["lr_batch"]


def lr_rule(cfg: dict) -> str:
    """`effective_lr` as a formula, e.g. `0.02 x 8/16`, for the log and train_summary.json."""
    return f"{cfg['lr']:g} x {cfg['batch_size'] * cfg['grad_accum_steps']}/{cfg['lr_batch']}"


def _fail(key: str, why: str):
    raise ConfigError(f"train.{key}: {why}")


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _validate(cfg: dict) -> None:
    """Raise `ConfigError` for the first value of `cfg` that cannot work."""
    for key, choices in _CHOICES.items():
        if cfg[key] not in choices:
            _fail(key, f"{cfg[key]!r} is not one of {', '.join(choices)}")
    for key in _POSITIVE_INTS:
        if not _is_int(cfg[key]) or cfg[key] <= 0:
            _fail(key, f"must be a positive integer, got {cfg[key]!r}")
    for key in _NON_NEGATIVE_INTS:
        if not _is_int(cfg[key]) or cfg[key] < 0:
            _fail(key, f"must be a non-negative integer, got {cfg[key]!r}")
    for key in _NON_NEGATIVE_FLOATS:
        if not _is_number(cfg[key]) or cfg[key] < 0:
            _fail(key, f"must be a non-negative number, got {cfg[key]!r}")
    for key in _BOOLS:
        if not isinstance(cfg[key], bool):
            _fail(key, f"must be true or false, got {cfg[key]!r}")
    if not _is_number(cfg["lr"]) or cfg["lr"] <= 0:
        _fail("lr", f"must be a positive number, got {cfg['lr']!r}")
    if cfg["box_score_thresh"] > 1:
        _fail("box_score_thresh", f"must lie in [0, 1], got {cfg['box_score_thresh']!r}")
    if not _is_int(cfg["trainable_backbone_layers"]) or not 0 <= cfg["trainable_backbone_layers"] <= 5:
        _fail("trainable_backbone_layers", f"must be an integer 0-5, got {cfg['trainable_backbone_layers']!r}")
    if cfg["weights"] == "coco" and cfg["backbone"] not in COCO_BACKBONES:
        _fail("weights", f"coco weights exist only for {', '.join(COCO_BACKBONES)}, not {cfg['backbone']}")
    if cfg["weights"] == "coco" and cfg["fpn_channels"] != COCO_FPN_CHANNELS:
        _fail("fpn_channels", f"coco weights have {COCO_FPN_CHANNELS} FPN channels, got {cfg['fpn_channels']}")
    if cfg["weights_path"] is not None and cfg["weights"] == "none":
        _fail("weights_path", "is set but train.weights is none; set weights to imagenet or coco")
    if cfg["init_from"] is not None and (not isinstance(cfg["init_from"], str) or not cfg["init_from"]):
        _fail("init_from", f"must be a run's folder or a model_best.pt file, or null, got {cfg['init_from']!r}")
    if cfg["min_size"] is not None and (not _is_int(cfg["min_size"]) or cfg["min_size"] <= 0):
        _fail("min_size", f"must be a positive integer or null (native resolution), got {cfg['min_size']!r}")
    if cfg["min_size"] is not None and cfg["min_size"] > cfg["max_size"]:
        _fail("min_size", f"{cfg['min_size']} exceeds train.max_size {cfg['max_size']}")
    _validate_rare_class_keys(cfg)
    _validate_lists(cfg)
    _validate_augment_overrides(cfg["augment_overrides"])
    if not _is_number(cfg["stain_jitter"]) or not 0 <= cfg["stain_jitter"] <= 1:
        _fail("stain_jitter", f"must lie in [0, 1] (0 = off), got {cfg['stain_jitter']!r}")


def _validate_rare_class_keys(cfg: dict) -> None:
    threshold = cfg["repeat_factor_threshold"]
    if threshold is not None and (not _is_number(threshold) or not 0 < threshold <= 1):
        _fail("repeat_factor_threshold", f"must lie in (0, 1] or be null (off), got {threshold!r}")
    if not _is_number(cfg["copy_paste"]) or not 0 <= cfg["copy_paste"] <= 1:
        _fail("copy_paste", f"must be a probability in [0, 1] (0 = off), got {cfg['copy_paste']!r}")
    decay = cfg["ema_decay"]
    if decay is not None and (not _is_number(decay) or not 0 < decay < 1):
        _fail("ema_decay", f"must lie in (0, 1) or be null (off), got {decay!r}")


def _validate_lists(cfg: dict) -> None:
    anchors = cfg["anchor_sizes"]
    if not isinstance(anchors, list) or len(anchors) != N_FPN_LEVELS or not all(_is_int(a) and a > 0 for a in anchors):
        _fail("anchor_sizes", f"must be {N_FPN_LEVELS} positive integers (one per FPN level), got {anchors!r}")
    ratios = cfg["aspect_ratios"]
    if not isinstance(ratios, list) or not ratios or not all(_is_number(r) and r > 0 for r in ratios):
        _fail("aspect_ratios", f"must be a non-empty list of positive numbers, got {ratios!r}")
    sizes = cfg["multiscale_sizes"]
    if not isinstance(sizes, list) or not all(_is_int(s) and s > 0 for s in sizes):
        _fail("multiscale_sizes", f"must be a list of positive integers ([] = off), got {sizes!r}")
    too_big = [s for s in sizes if s > cfg["max_size"]]
    if too_big:
        _fail("multiscale_sizes", f"sizes {too_big} exceed train.max_size {cfg['max_size']}")


def _validate_augment_overrides(overrides) -> None:
    if not isinstance(overrides, dict):
        _fail("augment_overrides", f"must be a mapping of switch: bool, got {overrides!r}")
    for name, value in overrides.items():
        if name not in AUGMENT_SWITCHES:
            _fail(f"augment_overrides.{name}", f"unknown switch, expected one of {', '.join(AUGMENT_SWITCHES)}")
        if not isinstance(value, bool):
            _fail(f"augment_overrides.{name}", f"must be true or false, got {value!r}")
