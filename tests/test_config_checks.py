"""Cross-key constraints: each pair that cannot work fails with one line naming both keys."""

import pytest
from test_config_files import schema_defaults

from cellseg.config_checks import check_cross_keys
from cellseg.errors import ConfigError


def config(**sections) -> dict:
    """The schema's defaults with `sections` merged in (one level deep)."""
    cfg = schema_defaults()
    for name, values in sections.items():
        cfg[name].update(values)
    return cfg


def test_defaults_pass():
    check_cross_keys(config())
    check_cross_keys(config(tiles={"size": 0, "overlap": 64}, predict={"tile_size": 0}, train={"val_tile_size": 0}))


@pytest.mark.parametrize(
    "sections, keys",
    [
        ({"predict": {"tile_size": 64, "overlap": 64}}, ["predict.overlap = 64", "predict.tile_size = 64"]),
        ({"tiles": {"size": 128, "overlap": 200}}, ["tiles.overlap = 200", "tiles.size = 128"]),
        ({"train": {"val_tile_size": 256}}, ["train.val_tile_size = 256", "predict.tile_size = 512"]),
        ({"ensemble": {"weights": [1, 2]}}, ["ensemble.weights has 2 values", "split.folds = 5"]),
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


def test_demo_sizes_are_not_checked_for_other_data():
    check_cross_keys(config(data={"source": "reference", "path": "x"}, demo={"min_size": 300}))
