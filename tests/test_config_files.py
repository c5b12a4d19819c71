"""config.yaml against the schema: the schema holds every default and description, and
config.yaml is written from it (`make docs`), every key at its default."""

from pathlib import Path

import pytest
import yaml
from snakemake.utils import validate

from cellseg.workflow.configuration import recipe_values, resolve_recipe
from cellseg.workflow.generated_docs import config_yaml

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


def test_config_yaml_is_written_from_the_schema():
    assert (ROOT / "config.yaml").read_text() == config_yaml(ROOT), (
        "config.yaml differs from the schema: a key's description, default or order lives in "
        "workflow/schemas/config.schema.yaml; edit it there and run `make docs`. Your own values "
        "belong in a second file: snakemake --configfile config.yaml my.yaml"
    )


def test_a_partial_resources_section_takes_the_rest_from_the_recipe():
    config = {"resources": {"train": {"mem_mb": 8000}}}
    validate(config, str(SCHEMA))
    train = resolve_recipe(config)["resources"]["train"]
    demo = {key.rsplit(".", 1)[1]: values["demo"] for key, values in recipe_values().items() if key.startswith("resources.train.")}
    assert train == {**demo, "mem_mb": 8000}
    assert train["gpu"] == 1


@pytest.mark.parametrize("section", ["train", "predict", "default"])
def test_every_resources_kind_has_every_key(section):
    assert set(schema_defaults()["resources"][section]) == {"gpu", "mem_mb", "runtime", "cpus_per_task"}
