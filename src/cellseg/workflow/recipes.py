"""Recipes: whole run configurations, chosen by the top-level `recipe` key (`demo` or `gpu`).

A train preset sets the model and the optimizer, but a run also needs tiles at the scale the
preset trains at, prediction tiles and batches that fit the model and the device, and the CPUs
that keep its data loader fed. A recipe sets all of them together, so that one key gives a run
whose parts agree. Each key a recipe controls is null in config.yaml; `resolve_recipe` fills
every null with the recipe's value, and a value the user sets wins. Imports no torch (the
Snakefile resolves the recipe while building the DAG).
"""

import copy

from cellseg.common.errors import ConfigError

# {section: {key: value}}, `resources` one level deeper (per job kind). `predict.amp` is not
# here: null already means `train.amp`, which the preset sets.
RECIPES = {
    # The CPU demo: resnet18 on small tiles, one core per job so that folds train side by side.
    "demo": {
        "tiles": {"size": 128, "overlap": 32},
        "train": {"preset": "demo"},
        "predict": {"tile_size": 512, "overlap": 64, "batch_size": 4},
        "resources": {
            "train": {"gpu": 1, "mem_mb": 16000, "runtime": 240, "cpus_per_task": 1},
            "predict": {"gpu": 1, "mem_mb": 16000, "runtime": 60, "cpus_per_task": 1},
        },
    },
    # One GPU per fold: R50-FPN in bf16 (the gpu preset), whose multiscale sizes 448-576
    # straddle 512 px tiles, so training and prediction see cells at one magnification.
    "gpu": {
        "tiles": {"size": 512, "overlap": 64},
        "train": {"preset": "gpu"},
        # Prediction tiles of the training tiles' size: the proposal and detection caps
        # (rpn_post_nms_top_n_test, box_detections_per_img) are per tile, sized for the cells
        # of a training tile. Batch 8 as in training, which also holds the gradients.
        "predict": {"tile_size": 512, "overlap": 64, "batch_size": 8},
        "resources": {
            # 8 CPUs: 7 data-loader workers (threads - 1) decode and augment tiles for the GPU;
            # their processes and the tile files they hold need the memory.
            "train": {"gpu": 1, "mem_mb": 32000, "runtime": 720, "cpus_per_task": 8},
            # Threads for stitching tiles and pasting masks on the CPU, next to the GPU.
            "predict": {"gpu": 1, "mem_mb": 32000, "runtime": 120, "cpus_per_task": 4},
        },
    },
}


def resolve_recipe(config: dict) -> dict:
    """A copy of `config` (schema-validated) in which every null or missing key that
    `config["recipe"]` (default `demo`) controls holds the recipe's value; a value the user set
    is kept. Raises `ConfigError` naming `recipe` for an unknown recipe."""
    name = config.get("recipe") or "demo"
    if name not in RECIPES:
        raise ConfigError(f"recipe: unknown recipe {name!r}, expected one of {', '.join(RECIPES)}")
    resolved = copy.deepcopy(config)
    resolved["recipe"] = name
    _fill(resolved, RECIPES[name])
    return resolved


def _fill(section: dict, values: dict) -> None:
    for key, value in values.items():
        if isinstance(value, dict):
            _fill(section.setdefault(key, {}), value)
        elif section.get(key) is None:
            section[key] = copy.deepcopy(value)


def recipe_values() -> dict[str, dict[str, object]]:
    """{dotted key: {recipe: value}} of every key a recipe controls (for docs and tests)."""
    out: dict[str, dict[str, object]] = {}

    def walk(name: str, values: dict, prefix: str) -> None:
        for key, value in values.items():
            if isinstance(value, dict):
                walk(name, value, f"{prefix}{key}.")
            else:
                out.setdefault(f"{prefix}{key}", {})[name] = value

    for name, recipe in RECIPES.items():
        walk(name, recipe, "")
    return out
