"""The configuration, resolved and checked once, while the DAG is built, from the schema alone.

workflow/schemas/config.schema.yaml holds every key's type, default and description, the values
each train preset gives (`x-preset`) and those each recipe gives (`x-recipe`). Snakemake checks
each key against it; `resolve_config` then fills what the recipe and the preset control and
checks what the schema cannot: keys that must agree with each other. Each error is one
`ConfigError` line naming the keys. Jobs get the resolved values and check none of this again.
Imports no torch.
"""

import copy
import difflib
import functools
from pathlib import Path

import yaml

from cellseg.common.errors import ConfigError

SCHEMA = Path(__file__).resolve().parents[3] / "workflow" / "schemas" / "config.schema.yaml"

# The keys each data source reads its files through.
_SOURCE_KEYS = {
    "reference": ("path",),
    "coco": ("train_json", "image_dir"),
    "geojson": ("path",),
    "labels": ("path",),
}
COCO_BACKBONES = ("resnet50", "resnet50_v2")
COCO_FPN_CHANNELS = 256


@functools.cache
def load_schema(path: Path = SCHEMA) -> dict:
    return yaml.safe_load(Path(path).read_text())


def _resolve(prop: dict, definitions: dict) -> dict:
    """`prop` with a `$ref` into `definitions` merged in (its own keys win)."""
    if "$ref" not in prop:
        return prop
    name = prop["$ref"].rsplit("/", 1)[-1]
    return {**definitions[name], **{k: v for k, v in prop.items() if k != "$ref"}}


def _types(prop: dict) -> list[str]:
    kind = prop.get("type", [])
    return [kind] if isinstance(kind, str) else list(kind)


def is_section(prop: dict) -> bool:
    """A mapping whose keys are config keys of their own (not a nullable mapping value)."""
    return _types(prop) == ["object"] and "properties" in prop


def schema_keys(schema: dict) -> list[tuple[str, dict]]:
    """(dotted key, property) of every key a user sets, in the schema's order: the leaves, with
    sections (`tune.cells`) walked into and `$ref`s resolved."""
    definitions = schema.get("definitions", {})
    keys = []

    def walk(properties: dict, prefix: str) -> None:
        for name, prop in properties.items():
            prop = _resolve(prop, definitions)
            if is_section(prop):
                walk(prop["properties"], f"{prefix}{name}.")
            else:
                keys.append((f"{prefix}{name}", prop))

    walk(schema["properties"], "")
    return keys


def train_presets(schema: dict | None = None) -> dict[str, dict]:
    """{preset: {train key: value}} from the `x-preset` of the schema's train keys."""
    presets: dict[str, dict] = {}
    for key, prop in (schema or load_schema())["properties"]["train"]["properties"].items():
        for name, value in prop.get("x-preset", {}).items():
            presets.setdefault(name, {})[key] = value
    return presets


def recipe_values(schema: dict | None = None) -> dict[str, dict[str, object]]:
    """{dotted key: {recipe: value}} of every key a recipe controls (`x-recipe`)."""
    return {key: prop["x-recipe"] for key, prop in schema_keys(schema or load_schema()) if "x-recipe" in prop}


def architecture_keys(schema: dict | None = None) -> list[str]:
    """The train keys that shape the weights or what they mean (`x-architecture`): a run that
    fine-tunes another's weights (`train.init_from`) must have the same values."""
    train = (schema or load_schema())["properties"]["train"]["properties"]
    return [key for key, prop in train.items() if prop.get("x-architecture")]


def keys_of_the_test_set(schema: dict | None = None) -> list[str]:
    """The `data` keys that choose the test set (`x-test-set`): no training stage sees them."""
    data = (schema or load_schema())["properties"]["data"]["properties"]
    return [key for key, prop in data.items() if prop.get("x-test-set")]


def resolve_config(config: dict) -> tuple[dict, dict]:
    """`config` as Snakemake loaded it, checked against the schema (its defaults filled in, in
    place), then resolved: a copy with every null key that its recipe controls filled in, and
    its `train:` section with the preset's values (`resolve_train_config`). Raises one
    `ConfigError` line for the first key, or keys together, that cannot work."""
    check_against_schema(config)
    resolved = resolve_recipe(config)
    check_cross_keys(resolved)
    train = resolve_train_config(resolved["train"], predict_tile_size=resolved["predict"]["tile_size"])
    check_training_scale(train, resolved["tiles"]["size"])
    _check_weights_path(train)
    return resolved, train


def check_against_schema(config: dict) -> None:
    """Snakemake's schema validation (each key's type and range; defaults filled in, in
    place), its error cut to one line naming the key (`schema_error_line`)."""
    from snakemake.exceptions import WorkflowError
    from snakemake.utils import validate

    try:
        validate(config, str(SCHEMA))
    except WorkflowError as error:
        if error.__context__ is None:
            raise
        raise ConfigError(schema_error_line(error.__context__)) from None


def resolve_recipe(config: dict) -> dict:
    """A copy of `config` in which every null or missing key that `config["recipe"]` (default
    `demo`; the schema checked the name) controls holds the recipe's value; a value the user set
    is kept."""
    resolved = copy.deepcopy(config)
    name = resolved["recipe"] = config.get("recipe") or "demo"
    for key, values in recipe_values().items():
        *sections, leaf = key.split(".")
        section = resolved
        for part in sections:
            section = section.setdefault(part, {})
        if section.get(leaf) is None:
            section[leaf] = copy.deepcopy(values[name])
    return resolved


def resolve_train_config(user: dict, predict_tile_size: int = 0) -> dict:
    """The named preset (`user["preset"]`, default `demo`) overridden by every non-null key of
    the schema-validated `user` section, with every train key (plus `preset`). A null
    `val_tile_size` becomes `predict_tile_size` (validation tiles as the predict stage's; 0 =
    whole images)."""
    user = dict(user or {})
    preset = user.pop("preset", None) or "demo"
    cfg = copy.deepcopy(train_presets()[preset])
    cfg.update({key: copy.deepcopy(value) for key, value in user.items() if value is not None})
    if cfg["val_tile_size"] is None:
        cfg["val_tile_size"] = predict_tile_size
    _check_train_keys(cfg)
    return {"preset": preset, **cfg}


def weights_download_path(train: dict) -> str:
    """The file `snakemake download_weights` writes, for hosts without internet."""
    return f"resources/weights/{train['backbone']}_{train['weights']}.pth"


def _check_weights_path(train: dict) -> None:
    # The download rule writes its own file; train.init_from takes precedence over the weights.
    path = train["weights_path"]
    if path and not train["init_from"] and not Path(path).is_file() and Path(path) != Path(weights_download_path(train)):
        raise ConfigError(
            f"train.weights_path: {path} not found; run `snakemake download_weights` where there is "
            f"internet and set the key to the file it writes ({weights_download_path(train)}), or set it to null"
        )


def _check_train_keys(cfg: dict) -> None:
    """The train keys that must agree with each other, in the preset's values too."""
    if cfg["weights"] == "coco" and cfg["backbone"] not in COCO_BACKBONES:
        raise ConfigError(f"train.weights: coco weights exist only for {', '.join(COCO_BACKBONES)}, not train.backbone {cfg['backbone']}")
    if cfg["weights"] == "coco" and cfg["fpn_channels"] != COCO_FPN_CHANNELS:
        raise ConfigError(f"train.fpn_channels: coco weights have {COCO_FPN_CHANNELS} FPN channels, got {cfg['fpn_channels']}")
    if cfg["weights_path"] is not None and cfg["weights"] == "none":
        raise ConfigError("train.weights_path: is set but train.weights is none; set weights to imagenet or coco")
    if cfg["min_size"] is not None and cfg["min_size"] > cfg["max_size"]:
        raise ConfigError(f"train.min_size: {cfg['min_size']} exceeds train.max_size {cfg['max_size']}")
    too_big = [size for size in cfg["multiscale_sizes"] if size > cfg["max_size"]]
    if too_big:
        raise ConfigError(f"train.multiscale_sizes: sizes {too_big} exceed train.max_size {cfg['max_size']}")


def check_cross_keys(config: dict) -> None:
    """Raise `ConfigError` for the first pair of keys in the validated `config` that cannot
    work together (schema defaults filled in)."""
    _check_data_keys(config["data"])
    _check_overlap(config["tiles"], "tiles.size", "tiles.overlap", config["tiles"]["size"])
    _check_overlap(config["predict"], "predict.tile_size", "predict.overlap", config["predict"]["tile_size"])
    _check_val_tile_size(config["train"].get("val_tile_size"), config["predict"]["tile_size"])
    _check_train_folds(config["split"])
    _check_one_gpu_per_fold(config["resources"]["train"])
    _check_ensemble_weights(config["ensemble"]["weights"], config["split"])
    _check_single_fold(config["split"])
    if config["data"]["source"] == "demo":
        _check_demo(config["demo"], config["classes"])


def check_training_scale(train: dict, tile_size: int) -> None:
    """Training and inference must show the model cells at one magnification. `train`: the
    resolved train config (`resolve_train_config`); tile_size: `tiles.size`.

    With tiles of S px, the model resizes every image by (min size) / S: by each of
    `train.multiscale_sizes` / S while training, by `train.min_size` / S (1 when null) when it
    predicts. Without tiles, the short side goes to those sizes. The prediction's size must lie
    within the training sizes' range (their jitter), else cells are predicted at a scale the
    model never saw (a gpu preset's 448-576 on 128 px tiles trains at 3.5-4.5x, predicts at 1x).
    """
    sizes = train["multiscale_sizes"]
    if not sizes:
        return
    predicted = train["min_size"] or tile_size
    if predicted and min(sizes) <= predicted <= max(sizes):
        return
    if tile_size:
        scale = f"resize by {min(sizes) / tile_size:g}-{max(sizes) / tile_size:g}x while training"
        raise ConfigError(
            f"train.multiscale_sizes = {sizes} with tiles.size = {tile_size} {scale} but by "
            f"{predicted / tile_size:g}x when predicting (train.min_size = {train['min_size'] or 'null'}): "
            "set tiles.size "
            f"within {min(sizes)}-{max(sizes)}, or multiscale sizes around it"
        )
    raise ConfigError(
        f"train.multiscale_sizes = {sizes} train at other short sides than train.min_size = {train['min_size']} "
        f"predicts at: put train.min_size within {min(sizes)}-{max(sizes)}"
    )


def _check_overlap(section: dict, size_key: str, overlap_key: str, size: int) -> None:
    overlap = section[overlap_key.split(".")[1]]
    if size > 0 and overlap >= size:
        raise ConfigError(f"{overlap_key} = {overlap} must be smaller than {size_key} = {size} (0 = no tiling)")


def _check_val_tile_size(val_tile_size: int | None, predict_tile_size: int) -> None:
    # Validation picks the best epoch; on other tiles than the predict stage's, it would pick
    # it on something the pipeline never scores.
    if val_tile_size is not None and val_tile_size != predict_tile_size:
        raise ConfigError(
            f"train.val_tile_size = {val_tile_size} differs from predict.tile_size = {predict_tile_size}; "
            "leave train.val_tile_size null (it then equals predict.tile_size)"
        )


def trained_folds(split: dict) -> list[int]:
    """The folds that are trained, predicted and fused: `split.train_folds`, else all of them."""
    return list(split.get("train_folds") or range(split["folds"]))


def _check_one_gpu_per_fold(train_resources: dict) -> None:
    # A fold trains on one GPU (folds run in parallel, one job each): more would sit idle while
    # the learning-rate rule (train.lr_batch) counted only the one that trains.
    gpus = train_resources.get("gpu")
    if gpus is not None and gpus > 1:
        raise ConfigError(
            f"resources.train.gpu = {gpus}: each fold trains on one GPU and the folds (split.folds) train "
            "in parallel as separate jobs; set resources.train.gpu: 1"
        )


def _check_train_folds(split: dict) -> None:
    chosen = split.get("train_folds")
    if chosen is None:
        return
    outside = [fold for fold in chosen if not 0 <= fold < split["folds"]]
    if not chosen or outside or len(set(chosen)) != len(chosen):
        raise ConfigError(
            f"split.train_folds = {chosen} must name distinct folds from 0 to split.folds - 1 = {split['folds'] - 1}"
        )


def _check_ensemble_weights(weights: list | None, split: dict) -> None:
    folds = trained_folds(split)
    if weights is not None and len(weights) != len(folds):
        key = "split.train_folds" if split.get("train_folds") else "split.folds"
        raise ConfigError(
            f"ensemble.weights has {len(weights)} values but {key} gives {len(folds)} folds (one weight per fold)"
        )


def _check_single_fold(split: dict) -> None:
    # One fold has no held-out images of its own: it would be validated on the validation set
    # (split.val_fraction), which also tunes the thresholds and reports the scores.
    if split["folds"] == 1:
        raise ConfigError(
            f"split.folds = 1 leaves the fold no held-out images apart from the validation set "
            f"(split.val_fraction = {split['val_fraction']}), which tunes and scores the ensemble; "
            "use split.folds >= 2"
        )


def _check_demo(demo: dict, classes: list[str]) -> None:
    if demo["min_size"] > demo["max_size"]:
        raise ConfigError(f"demo.min_size = {demo['min_size']} exceeds demo.max_size = {demo['max_size']}")
    if classes != [f"class{k}" for k in range(1, len(classes) + 1)][:4]:
        raise ConfigError(f"classes: the demo dataset draws up to 4 classes named class1..class4; got {classes}")


def _check_data_keys(data: dict) -> None:
    for key in _SOURCE_KEYS.get(data["source"], ()):
        if not data.get(key):
            raise ConfigError(f"data.{key} is required with data.source: {data['source']}; see the README, Your own data")


def schema_error_line(error) -> str:
    """One line naming the key, the bad value and what is allowed, for a jsonschema
    `ValidationError` of the config (jsonschema's own message dumps the whole schema)."""
    path = list(error.absolute_path)
    key = ".".join(str(part) for part in path)
    if error.validator == "additionalProperties":
        known = list(error.schema.get("properties", {}))
        extra = [name for name in error.instance if name not in known]
        where = f"{key}.{extra[0]}" if key else extra[0]
        close = difflib.get_close_matches(str(extra[0]), known, n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        section = f"{key} takes" if key else "top-level sections are"
        return f"{where}: unknown key{hint}; {section} {', '.join(known)}"
    if error.validator == "enum":
        allowed = ", ".join("null" if v is None else str(v) for v in error.validator_value)
        return f"{key} = {error.instance!r} is not one of: {allowed}"
    if error.validator == "type":
        kinds = error.validator_value if isinstance(error.validator_value, list) else [error.validator_value]
        return f"{key} = {error.instance!r} is not of type {' or '.join(kinds)}"
    return f"{key or 'config'} = {error.instance!r}: {error.message}"
