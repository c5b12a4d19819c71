import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from cellseg.common.errors import ConfigError
from cellseg.training.config import TRAIN_PRESETS, effective_lr, lr_rule, resolve_train_config


def test_empty_config_is_the_demo_preset():
    cfg = resolve_train_config({})
    assert cfg == {"preset": "demo", **TRAIN_PRESETS["demo"], "val_tile_size": 0}
    assert cfg["backbone"] == "resnet18" and cfg["anchor_sizes"] == [8, 16, 32, 64, 128]
    assert resolve_train_config(None)["preset"] == "demo"


def test_presets_have_the_same_keys_and_documented_values():
    assert TRAIN_PRESETS["demo"].keys() == TRAIN_PRESETS["gpu"].keys()
    gpu = resolve_train_config({"preset": "gpu"})
    assert gpu["backbone"] == "resnet50" and gpu["weights"] == "imagenet"
    assert gpu["multiscale_sizes"] == [448, 512, 576] and gpu["rpn_post_nms_top_n_train"] == 2000
    assert gpu["optimizer"] == "sgd" and gpu["lr"] == 0.02 and gpu["amp"] == "bf16"


def test_validation_tiles_follow_predict_tile_size_unless_set():
    assert resolve_train_config({}, predict_tile_size=256)["val_tile_size"] == 256
    assert resolve_train_config({"val_tile_size": 128}, predict_tile_size=256)["val_tile_size"] == 128


def test_docs_table_holds_every_key_with_the_presets_values():
    """docs/train_keys.md and TRAIN_PRESETS cannot disagree, nor the schema's train keys."""
    root = Path(__file__).parents[1]
    rows = [
        [cell.strip() for cell in line.strip().strip("|").split("|")]
        for line in (root / "docs" / "train_keys.md").read_text().splitlines()
        if line.startswith("| ") and not line.startswith(("| key ", "| ---", "| preset "))
    ]
    documented = {key: (yaml.safe_load(demo.strip("`")), yaml.safe_load(gpu.strip("`"))) for key, _, demo, gpu in rows}
    assert list(documented) == list(TRAIN_PRESETS["demo"])
    for key, values in documented.items():
        assert values == (TRAIN_PRESETS["demo"][key], TRAIN_PRESETS["gpu"][key]), key
    schema = yaml.safe_load((root / "workflow" / "schemas" / "config.schema.yaml").read_text())
    assert set(schema["properties"]["train"]["properties"]) == {"preset", *TRAIN_PRESETS["demo"]}


def test_non_null_overrides_win_and_nothing_is_shared():
    user = {"preset": "gpu", "backbone": "resnet50_v2", "lr": None, "augment_overrides": {"elastic": False}}
    cfg = resolve_train_config(user)
    assert cfg["backbone"] == "resnet50_v2" and cfg["lr"] == 0.02
    assert cfg["augment_overrides"] == {"elastic": False}
    cfg["anchor_sizes"].append(1)
    assert resolve_train_config({})["anchor_sizes"] == [8, 16, 32, 64, 128]
    assert user["augment_overrides"] is not cfg["augment_overrides"]


@pytest.mark.parametrize(
    "user, key",
    [
        ({"learning_rate": 0.1}, "train.learning_rate"),
        ({"preset": "tpu"}, "train.preset"),
        ({"backbone": "vit"}, "train.backbone"),
        ({"weights": "coco"}, "train.weights"),  # demo backbone resnet18 has no COCO weights
        ({"weights_path": "w.pt"}, "train.weights_path"),  # demo weights are none
        ({"backbone": "resnet50", "weights": "coco"}, "train.fpn_channels"),  # demo's 128 vs COCO's 256
        ({"fpn_channels": 0}, "train.fpn_channels"),
        ({"ema_decay": 1.0}, "train.ema_decay"),
        ({"ema_decay": 0}, "train.ema_decay"),
        ({"repeat_factor_threshold": 0.0}, "train.repeat_factor_threshold"),
        ({"repeat_factor_threshold": 2}, "train.repeat_factor_threshold"),
        ({"copy_paste": 1.5}, "train.copy_paste"),
        ({"stain_jitter": 1.5}, "train.stain_jitter"),
        ({"anchor_sizes": [8, 16, 32]}, "train.anchor_sizes"),
        ({"aspect_ratios": []}, "train.aspect_ratios"),
        ({"trainable_backbone_layers": 6}, "train.trainable_backbone_layers"),
        ({"batch_size": 0}, "train.batch_size"),
        ({"epochs": 2.5}, "train.epochs"),
        ({"lr": 0}, "train.lr"),
        ({"lr_batch": 0}, "train.lr_batch"),
        ({"dice_loss_weight": -1}, "train.dice_loss_weight"),
        ({"aux_heads": "yes"}, "train.aux_heads"),
        ({"amp": "fp8"}, "train.amp"),
        ({"box_head": "cascade_rcnn"}, "train.box_head"),
        ({"min_size": 600}, "train.min_size"),  # above the demo max_size 512
        ({"multiscale_sizes": [128, 1024]}, "train.multiscale_sizes"),
        ({"augment": "extreme"}, "train.augment"),
        ({"augment_overrides": {"blur": True}}, "train.augment_overrides.blur"),
    ],
)
def test_bad_values_name_their_key(user, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        resolve_train_config(user)


def test_coco_weights_accepted_for_resnet50():
    cfg = resolve_train_config({"backbone": "resnet50", "weights": "coco", "weights_path": "/x/coco.pt", "fpn_channels": 256})
    assert cfg["weights"] == "coco" and cfg["weights_path"] == "/x/coco.pt"


@pytest.mark.parametrize(
    "user, lr, rule",
    [
        ({}, 1e-3, "0.001 x 4/4"),  # the demo preset states lr at its own batch: unchanged
        ({"preset": "gpu"}, 0.01, "0.02 x 8/16"),  # 0.02 for 16 images, at batch 8
        ({"preset": "gpu", "batch_size": 16}, 0.02, "0.02 x 16/16"),
        ({"preset": "gpu", "grad_accum_steps": 2}, 0.02, "0.02 x 16/16"),  # accumulation doubles it
        ({"preset": "gpu", "batch_size": 2, "lr": 0.04}, 0.005, "0.04 x 2/16"),
    ],
)
def test_lr_is_linear_in_the_total_batch(user, lr, rule):
    cfg = resolve_train_config(user)
    assert effective_lr(cfg) == pytest.approx(lr, rel=1e-12) and lr_rule(cfg) == rule


def test_module_imports_no_torch():
    code = "import sys, cellseg.training.config; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
