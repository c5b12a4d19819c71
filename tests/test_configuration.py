"""The configuration module: the train presets, each bad value and each pair of keys that cannot
work together fail with one line naming the keys."""

from pathlib import Path

import jsonschema
import pytest
from test_config_files import schema_defaults

from cellseg.common.errors import ConfigError
from cellseg.workflow.configuration import (
    check_cross_keys,
    check_training_scale,
    load_schema,
    resolve_config,
    resolve_recipe,
    resolve_train_config,
    schema_error_line,
    train_presets,
    trained_folds,
)


def config(**sections) -> dict:
    """The schema's defaults with `sections` merged in (one level deep), the recipe resolved
    (as the workflow checks it)."""
    cfg = schema_defaults()
    for name, values in sections.items():
        cfg[name].update(values)
    return resolve_recipe(cfg)


def test_defaults_pass():
    check_cross_keys(config())
    check_cross_keys(config(tiles={"size": 0, "overlap": 64}, predict={"tile_size": 0}, train={"val_tile_size": 0}))


@pytest.mark.parametrize(
    "sections, keys",
    [
        ({"predict": {"tile_size": 64, "overlap": 64}}, ["predict.overlap = 64", "predict.tile_size = 64"]),
        ({"tiles": {"size": 128, "overlap": 200}}, ["tiles.overlap = 200", "tiles.size = 128"]),
        ({"train": {"val_tile_size": 256}}, ["train.val_tile_size = 256", "predict.tile_size = 512"]),
        ({"ensemble": {"weights": [1, 2]}}, ["ensemble.weights has 2 values", "split.folds gives 5 folds"]),
        (
            {"ensemble": {"weights": [1, 2]}, "split": {"folds": 5, "train_folds": [3]}},
            ["ensemble.weights has 2 values", "split.train_folds gives 1 folds"],
        ),
        ({"resources": {"train": {"gpu": 2}}}, ["resources.train.gpu = 2", "split.folds"]),
        ({"split": {"folds": 5, "train_folds": [5]}}, ["split.train_folds = [5]", "split.folds - 1 = 4"]),
        ({"split": {"folds": 5, "train_folds": [1, 1]}}, ["split.train_folds = [1, 1]", "split.folds"]),
        ({"split": {"folds": 1}}, ["split.folds = 1", "split.val_fraction"]),
        ({"demo": {"min_size": 300}}, ["demo.min_size = 300", "demo.max_size = 256"]),
    ],
)
def test_each_constraint_names_both_keys_in_one_line(sections, keys):
    with pytest.raises(ConfigError) as error:
        check_cross_keys(config(**sections))
    message = str(error.value)
    assert "\n" not in message
    for key in keys:
        assert key in message


def test_train_folds_choose_what_is_trained_and_fused():
    assert trained_folds({"folds": 3, "train_folds": None}) == [0, 1, 2]
    assert trained_folds({"folds": 3, "train_folds": [2, 0]}) == [2, 0]
    check_cross_keys(config(split={"folds": 3, "train_folds": [2]}, ensemble={"weights": [1.0]}))


def test_demo_sizes_are_not_checked_for_other_data():
    check_cross_keys(config(data={"source": "reference", "path": "x"}, demo={"min_size": 300}))


@pytest.mark.parametrize(
    "data, key",
    [({"source": "reference"}, "data.path"), ({"source": "coco", "image_dir": "x"}, "data.train_json"),
     ({"source": "coco", "train_json": "x.json"}, "data.image_dir"), ({"source": "geojson"}, "data.path"),
     ({"source": "labels"}, "data.path")],
)
def test_a_source_without_its_path_names_the_key(data, key):
    with pytest.raises(ConfigError, match=rf"^{key} is required with data.source: {data['source']}"):
        check_cross_keys(config(data=data))


def _schema_error(cfg: dict):
    import jsonschema
    import yaml

    schema = yaml.safe_load((Path(__file__).resolve().parents[1] / "workflow/schemas/config.schema.yaml").read_text())
    return jsonschema.exceptions.best_match(jsonschema.Draft202012Validator(schema).iter_errors(cfg))


@pytest.mark.parametrize(
    "cfg, line",
    [
        ({"trian": {}}, "trian: unknown key (did you mean train?); top-level sections are recipe, data, classes,"),
        ({"split": {"foldz": 3}}, "split.foldz: unknown key (did you mean folds?); split takes val_fraction, folds,"),
        ({"tune": {"metric": "mAP"}}, "tune.metric = 'mAP' is not one of: AP, "),
        ({"split": {"folds": "x"}}, "split.folds = 'x' is not of type integer"),
        ({"split": {"folds": 0}}, "split.folds = 0: 0 is less than the minimum of 1"),
    ],
)
def test_schema_errors_are_one_line_naming_the_key(cfg, line):
    message = schema_error_line(_schema_error(cfg))
    assert message.startswith(line) and "\n" not in message, message


def test_training_and_prediction_scales_must_agree():
    gpu = resolve_train_config({"preset": "gpu"})
    check_training_scale(gpu, 512)  # trains at 0.875-1.125x, predicts at 1x
    check_training_scale(resolve_train_config({"preset": "demo"}), 128)  # no multiscale
    with pytest.raises(ConfigError) as error:
        check_training_scale(gpu, 128)
    message = str(error.value)
    assert "\n" not in message and "train.multiscale_sizes = [448, 512, 576]" in message and "tiles.size = 128" in message
    assert "3.5-4.5x while training but by 1x when predicting (train.min_size = null)" in message
    check_training_scale({**gpu, "min_size": 512}, 128)  # min_size 512 predicts at 4x, inside the jitter
    check_training_scale({**gpu, "min_size": 500}, 0)
    with pytest.raises(ConfigError, match="train.min_size = 600"):
        check_training_scale({**gpu, "min_size": 600}, 0)


def test_empty_config_is_the_demo_preset():
    cfg = resolve_train_config({})
    assert cfg == {"preset": "demo", **train_presets()["demo"], "val_tile_size": 0}
    assert cfg["backbone"] == "resnet18" and cfg["anchor_sizes"] == [8, 16, 32, 64, 128]
    assert resolve_train_config(None)["preset"] == "demo"


def test_presets_have_the_same_keys_and_documented_values():
    assert train_presets()["demo"].keys() == train_presets()["gpu"].keys()
    gpu = resolve_train_config({"preset": "gpu"})
    assert gpu["backbone"] == "resnet50" and gpu["weights"] == "imagenet"
    assert gpu["multiscale_sizes"] == [448, 512, 576] and gpu["rpn_post_nms_top_n_train"] == 2000
    assert gpu["optimizer"] == "sgd" and gpu["lr"] == 0.02 and gpu["amp"] == "bf16"


def test_validation_tiles_follow_predict_tile_size_unless_set():
    assert resolve_train_config({}, predict_tile_size=256)["val_tile_size"] == 256
    assert resolve_train_config({"val_tile_size": 128}, predict_tile_size=256)["val_tile_size"] == 128


def test_every_train_key_has_a_value_in_each_preset_that_the_schema_accepts():
    """The presets live in the schema (`x-preset`), beside the type each value must have."""
    schema = load_schema()
    train = schema["properties"]["train"]["properties"]
    presets = train_presets()
    assert set(presets) == {"demo", "gpu"}
    assert all(set(values) == set(train) - {"preset"} for values in presets.values())
    for name, values in presets.items():
        errors = jsonschema.Draft202012Validator(
            {"type": "object", "properties": train, "definitions": schema["definitions"]}
        ).iter_errors(values)
        assert [e.message for e in errors] == [], name


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
    """The schema checks each value, `resolve_config` the train keys that must agree."""
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")) as error:
        resolve_config({"train": user})
    assert "\n" not in str(error.value)


def test_coco_weights_accepted_for_resnet50():
    cfg = resolve_train_config({"backbone": "resnet50", "weights": "coco", "weights_path": "/x/coco.pt", "fpn_channels": 256})
    assert cfg["weights"] == "coco" and cfg["weights_path"] == "/x/coco.pt"


@pytest.mark.parametrize(
    "user, line",
    [
        ({"split": {"val_fraction": 0.0}}, "split.val_fraction = 0.0"),
        ({"split": {"folds": 0}}, "split.folds = 0"),
        ({"train": {"amp": "fp8"}}, "train.amp = 'fp8' is not one of"),
        ({"predict": {"tta": ["rot180"]}}, "predict.tta.0 = 'rot180' is not one of"),
        ({"tiles": {"size": 16, "overlap": 16}}, "tiles.overlap = 16 must be smaller than tiles.size = 16"),
        ({"demo": {"min_size": 200, "max_size": 100}}, "demo.min_size = 200 exceeds demo.max_size = 100"),
        ({"demo": {"min_size": 8}}, "demo.min_size = 8"),
        ({"tiles": {"size": 0}, "train": {"multiscale_sizes": [64, 96]}}, "train.multiscale_sizes = [64, 96]"),
        ({"train": {"weights": "imagenet", "weights_path": "missing.pth"}}, "train.weights_path: missing.pth not found"),
    ],
)
def test_values_that_no_job_checks_again_fail_before_the_dag(user, line, tmp_path, monkeypatch):
    """The conditions the jobs (split, tiles, demo, device, predict, model, weights) checked
    before the configuration module did them all, once."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as error:
        resolve_config(user)
    assert str(error.value).startswith(line) and "\n" not in str(error.value), str(error.value)
