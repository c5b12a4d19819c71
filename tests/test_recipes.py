"""Recipes: `recipe: demo` reproduces the settings of before recipes; `recipe: gpu` gives
settings that agree with each other; a user's value wins; an unknown recipe fails in one line."""

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from test_config_files import lookup, schema_defaults

from cellseg.common.errors import ConfigError
from cellseg.workflow.configuration import (
    check_cross_keys,
    check_training_scale,
    load_schema,
    recipe_values,
    resolve_config,
    resolve_recipe,
    resolve_train_config,
)

ROOT = Path(__file__).parents[1]


def resolved(**sections) -> dict:
    """The schema's defaults with `sections` set (one level deep), the recipe resolved."""
    config = schema_defaults()
    for name, values in sections.items():
        if isinstance(values, dict):
            config[name].update(values)
        else:
            config[name] = values
    return resolve_recipe(config)


def test_demo_recipe_gives_the_values_of_before_recipes():
    config = resolved()
    assert config["recipe"] == "demo"
    assert (config["tiles"]["size"], config["tiles"]["overlap"]) == (128, 32)
    assert config["train"]["preset"] == "demo"
    predict = config["predict"]
    assert (predict["tile_size"], predict["overlap"], predict["batch_size"], predict["amp"]) == (512, 64, 4, None)
    assert config["resources"]["train"] == {"gpu": 1, "mem_mb": 16000, "runtime": 240, "cpus_per_task": 1}
    assert config["resources"]["predict"] == {"gpu": 1, "mem_mb": 16000, "runtime": 60, "cpus_per_task": 1}
    assert config["resources"]["default"] == {"gpu": 0, "mem_mb": 4000, "runtime": 30, "cpus_per_task": 1}


def test_gpu_recipe_is_a_coherent_gpu_run():
    config = resolved(recipe="gpu")
    check_cross_keys(config)
    assert config["tiles"]["size"] == 512 and config["train"]["preset"] == "gpu"
    train = config["resources"]["train"]
    assert train["gpu"] == 1 and train["cpus_per_task"] - 1 >= 4  # data-loader workers: threads - 1
    assert config["resources"]["predict"]["gpu"] == 1 and config["resources"]["predict"]["cpus_per_task"] >= 4
    cfg = resolve_train_config(config["train"], predict_tile_size=config["predict"]["tile_size"])
    check_training_scale(cfg, config["tiles"]["size"])
    assert min(cfg["multiscale_sizes"]) <= config["tiles"]["size"] <= max(cfg["multiscale_sizes"])
    assert cfg["val_tile_size"] == config["predict"]["tile_size"] == 512
    assert (config["predict"]["amp"] or cfg["amp"]) == "bf16"  # predict.amp null = train.amp


def test_a_value_the_user_sets_wins_and_the_input_is_left_alone():
    config = schema_defaults()
    config["recipe"] = "gpu"
    config["tiles"]["size"] = 640
    config["train"]["preset"] = "demo"
    config["resources"]["train"]["cpus_per_task"] = 4
    out = resolve_recipe(config)
    assert out["tiles"]["size"] == 640 and out["tiles"]["overlap"] == 64
    assert out["train"]["preset"] == "demo"
    assert out["resources"]["train"] == {"gpu": 1, "mem_mb": 32000, "runtime": 720, "cpus_per_task": 4}
    assert config["tiles"]["overlap"] is None and config["resources"]["train"]["gpu"] is None
    out["predict"]["tile_size"] = 1
    assert recipe_values()["predict.tile_size"]["gpu"] == 512


def test_a_config_without_the_sections_gets_the_demo_recipes_values():
    """As a script that reads a YAML file without the schema's defaults sees it."""
    out = resolve_recipe({"tiles": {"skip_empty": False}})
    assert out["recipe"] == "demo" and out["tiles"] == {"skip_empty": False, "size": 128, "overlap": 32}
    assert out["resources"]["predict"]["runtime"] == 60


def test_unknown_recipe_is_one_line_naming_the_key_and_the_choices():
    with pytest.raises(ConfigError) as error:
        resolve_config({"recipe": "tpu"})
    assert str(error.value) == "recipe = 'tpu' is not one of: demo, gpu"


def test_every_key_a_recipe_fills_is_null_in_config_yaml_and_may_be_null_in_the_schema():
    shown = yaml.safe_load((ROOT / "config.yaml").read_text())
    defaults = schema_defaults()
    values = recipe_values()
    recipes = load_schema()["properties"]["recipe"]["enum"]
    assert all(list(by_recipe) == recipes for by_recipe in values.values())  # each recipe sets each key
    for key in values:
        assert lookup(shown, key) is None and lookup(defaults, key) is None, key


def test_module_imports_no_torch():
    code = "import sys, cellseg.workflow.configuration; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
