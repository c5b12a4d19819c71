"""Writing a converted dataset into the reference layout that `cellseg.data.dataset` reads.

    DEST/train/<id>/image.tif           RGB uint8, zlib
    DEST/train/<id>/<class>.tif         instance ids (uint16, or uint32 past 65,535 instances),
                                        1..n, 0 = background; absent when the image has none
    DEST/test_release/<name>.tif        RGB uint8, zlib
    DEST/test_image_name_to_ids.json    [{"file_name", "id", "height", "width"}], ids 1..N
    DEST/test_gt/<name>/<class>.tif     the test ground truth, laid out like train/; no folder
                                        for a test image without instances
    DEST/classes.json                   {class file name: the dataset's own class name}

The conversion is written into a hidden folder beside DEST and renamed to DEST only once every
file is in place, so a failed or interrupted conversion leaves no partial DEST for a pipeline
run to mistake for a finished one.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cellseg.common.errors import DataError
from cellseg.common.files import write_tiff
from cellseg.common.images import relabel_consecutive
from cellseg.data.tiles import tile_origins

COMPRESSION = "zlib"
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


@dataclass(frozen=True)
class Item:
    """One converted image: `image` is `(H, W, 3) uint8` RGB; `masks` maps a class name to an
    `(H, W)` integer plane of instance ids (0 = background, ids need not be consecutive); a
    class may be left out when the image has none. `source` names the native file in messages."""

    name: str
    image: np.ndarray
    masks: dict[str, np.ndarray]
    source: Path


@dataclass(frozen=True)
class Conversion:
    """What a converter returns: the class file names in order (the config's `classes:`), the
    dataset's own name for each, and the training and test items (read lazily, one at a time)."""

    classes: list[str]
    meaning: dict[str, str]
    train: Iterable[Item]
    test: Iterable[Item]


@dataclass
class Summary:
    """Images written per split (`"train"`, `"test"`) and instances per split and class."""

    images: dict[str, int] = field(default_factory=lambda: {"train": 0, "test": 0})
    instances: dict[str, dict[str, int]] = field(default_factory=lambda: {"train": {}, "test": {}})


def safe_name(name: str) -> str:
    """`name` with every character but letters, digits, `.`, `_` and `-` replaced by `_`, and
    no leading dot (the reader skips hidden folders): a valid folder name and Snakemake wildcard."""
    return _UNSAFE.sub("_", name).lstrip(".") or "_"


def write_reference(conversion: Conversion, dest: str | os.PathLike, patch: int | None = None) -> Summary:
    """Write `conversion` to `dest` in the reference layout. With `patch`, every image is cut
    first into `patch` x `patch` tiles named `<name>_<k>` (k = 000, 001, ... row by row), placed
    as the pipeline places its tiles (`cellseg.data.tiles.tile_origins` without overlap: every
    `patch` px and a last one flush with the edge, so 1000 px gives 0, 256, 512, 744; one
    smaller tile where the image is smaller). `dest` must not exist or be an empty folder.
    Raises `DataError` naming the source file for a duplicate name or a mask of another size
    than its image."""
    summary = Summary()
    with staged(Path(dest)) as stage:
        seen: dict[str, Path] = {}
        for item in _tiled(conversion.train, patch):
            _claim(seen, item)
            folder = stage / "train" / item.name
            write_tiff(folder / "image.tif", item.image, compression=COMPRESSION)
            _write_masks(folder, item, conversion.classes, summary.instances["train"])
            summary.images["train"] += 1
        listing = []
        for item in _tiled(conversion.test, patch):
            _claim(seen, item)
            write_tiff(stage / "test_release" / f"{item.name}.tif", item.image, compression=COMPRESSION)
            _write_masks(stage / "test_gt" / item.name, item, conversion.classes, summary.instances["test"])
            height, width = item.image.shape[:2]
            listing.append({"file_name": f"{item.name}.tif", "id": len(listing) + 1, "height": height, "width": width})
        summary.images["test"] = len(listing)
        (stage / "test_release").mkdir(exist_ok=True)
        _write_json(stage / "test_image_name_to_ids.json", listing)
        _write_json(stage / "classes.json", {name: conversion.meaning[name] for name in conversion.classes})
    return summary


def _tiled(items: Iterable[Item], patch: int | None) -> Iterator[Item]:
    for item in items:
        if patch is None:
            yield item
            continue
        height, width = item.image.shape[:2]
        corners = [(r, c) for r in tile_origins(height, patch, 0) for c in tile_origins(width, patch, 0)]
        for k, (r, c) in enumerate(corners):
            window = (slice(r, r + patch), slice(c, c + patch))
            masks = {name: plane[window] for name, plane in item.masks.items()}
            yield Item(f"{item.name}_{k:03d}", item.image[window], masks, item.source)


def _claim(seen: dict[str, Path], item: Item) -> None:
    """`DataError` unless `item.name` is safe and unused by an earlier item (train or test)."""
    if safe_name(item.name) != item.name:
        raise DataError(f"{item.source}: image name {item.name!r} is not a safe folder name")
    if item.name in seen:
        raise DataError(f"{item.source}: image name {item.name!r} is taken already by {seen[item.name]}")
    seen[item.name] = item.source


def _write_masks(folder: Path, item: Item, classes: list[str], counts: dict[str, int]) -> None:
    """Write each class plane holding an instance as `folder/<class>.tif`, ids renumbered 1..n."""
    for name in classes:
        plane = item.masks.get(name)
        if plane is None:
            continue
        if plane.shape != item.image.shape[:2]:
            raise DataError(
                f"{item.source}: {name} mask is {plane.shape[0]}x{plane.shape[1]} but the image is "
                f"{item.image.shape[0]}x{item.image.shape[1]}"
            )
        ids = relabel_consecutive(plane)
        count = int(ids.max(initial=0))
        counts[name] = counts.get(name, 0) + count
        if count:
            dtype = np.uint16 if count <= np.iinfo(np.uint16).max else np.uint32
            write_tiff(folder / f"{name}.tif", ids.astype(dtype), compression=COMPRESSION)


def _write_json(path: Path, value) -> None:
    path.write_text(json.dumps(value, indent=1) + "\n", encoding="utf-8")


@contextlib.contextmanager
def staged(dest: Path) -> Iterator[Path]:
    """Yield a new hidden folder beside `dest`; rename it to `dest` when the block succeeds,
    delete it when it fails."""
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise DataError(f"{dest}: exists and is not an empty folder; remove it or choose another destination")
    dest.parent.mkdir(parents=True, exist_ok=True)
    stage = dest.parent / f".{dest.name}.partial-{uuid.uuid4().hex[:8]}"
    stage.mkdir()
    try:
        yield stage
        os.replace(stage, dest)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
