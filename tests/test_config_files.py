"""config.yaml against the schema: the schema holds every default, config.yaml shows what a
user edits and no value that disagrees with the schema."""

from pathlib import Path

import pytest
import yaml
from snakemake.utils import validate

from cellseg.workflow.recipes import RECIPES, resolve_recipe

ROOT = Path(__file__).parents[1]
SCHEMA = ROOT / "workflow" / "schemas" / "config.schema.yaml"


def schema_defaults() -> dict:
    """The config an empty config file gets: every default the schema fills in."""
    config = {}
    validate(config, str(SCHEMA))
    return config


def leaves(tree: dict, prefix: str = ""):
    """(dotted key, value) of every non-null leaf; lists are leaves."""
    for key, value in tree.items():
        if isinstance(value, dict):
            yield from leaves(value, f"{prefix}{key}.")
        elif value is not None:
            yield f"{prefix}{key}", value


def lookup(tree: dict, dotted: str):
    for part in dotted.split("."):
        tree = tree[part]
    return tree


def test_config_yaml_shows_no_value_that_disagrees_with_the_schema():
    shown = dict(leaves(yaml.safe_load((ROOT / "config.yaml").read_text())))
    assert "predict.tta" in shown and "resources.default.cpus_per_task" in shown
    defaults = schema_defaults()
    disagree = {key: (value, lookup(defaults, key)) for key, value in shown.items() if lookup(defaults, key) != value}
    assert disagree == {}, "config.yaml value, schema default"


def test_a_partial_resources_section_takes_the_rest_from_the_recipe():
    config = {"resources": {"train": {"mem_mb": 8000}}}
    validate(config, str(SCHEMA))
    train = resolve_recipe(config)["resources"]["train"]
    assert train == {**RECIPES["demo"]["resources"]["train"], "mem_mb": 8000}
    assert train["gpu"] == 1


@pytest.mark.parametrize("section", ["train", "predict", "default"])
def test_every_resources_kind_has_every_key(section):
    assert set(schema_defaults()["resources"][section]) == {"gpu", "mem_mb", "runtime", "cpus_per_task"}
