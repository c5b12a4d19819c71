"""Constraints between config keys, checked while the DAG is built, before any job runs.

The schema checks each key on its own; a value that only fails against another key's value
would otherwise surface inside a job (or, for the ensemble, after every fold has trained).
Each check raises `ConfigError` with one line naming both keys. Imports no torch.
"""

import difflib

from cellseg.common.errors import ConfigError

# The keys each data source reads its files through.
_SOURCE_KEYS = {
    "reference": ("path",),
    "coco": ("train_json", "image_dir"),
    "geojson": ("path",),
    "labels": ("path",),
}


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
    demo = config["demo"]
    if config["data"]["source"] == "demo" and demo["min_size"] > demo["max_size"]:
        raise ConfigError(f"demo.min_size = {demo['min_size']} exceeds demo.max_size = {demo['max_size']}")


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
