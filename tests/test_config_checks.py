"""Cross-key constraints: each pair that cannot work fails with one line naming both keys."""

from pathlib import Path

import pytest
from test_config_files import schema_defaults

from cellseg.common.errors import ConfigError
from cellseg.training.config import resolve_train_config
from cellseg.workflow.config_checks import check_cross_keys, check_training_scale, schema_error_line, trained_folds
from cellseg.workflow.recipes import resolve_recipe


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
