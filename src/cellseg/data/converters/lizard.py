"""Lizard: colon regions as `.png` images and `.mat` labels, with a 3-way split in `info.csv`.

As downloaded: `lizard_images1/Lizard_Images1/*.png`, `lizard_images2/Lizard_Images2/*.png`,
`lizard_labels/Lizard_Labels/Labels/*.mat` and `lizard_labels/Lizard_Labels/info.csv`; any
arrangement under one folder works, since files are found by name. A label file holds
`inst_map` (H x W instance ids, 0 = background), `id` (N x 1, the ids that the rows of the
other arrays describe), `class` (N x 1), `bbox` and `centroid`. Classes: 1 Neutrophil,
2 Epithelial, 3 Lymphocyte, 4 Plasma, 5 Eosinophil, 6 Connective tissue, as class1..class6.
`info.csv` (columns Filename, Source, Split) puts each image in split 1, 2 or 3.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from cellseg.common.errors import DataError
from cellseg.data.converters.labels import split_by_class
from cellseg.data.converters.layout import Conversion, Item, safe_name
from cellseg.data.converters.native import load_mat, read_rgb, whole_numbers

CLASSES = ("Neutrophil", "Epithelial", "Lymphocyte", "Plasma", "Eosinophil", "Connective tissue")
SPLIT_FILE = "info.csv"


def convert_lizard(src: str | os.PathLike, test_fold: int = 3) -> Conversion:
    """Lizard under `src`; the images of split `test_fold` (per `info.csv`) form the test set,
    the others the training set; `test_fold=0`: every image trains, and `info.csv` is not read.
    Image ids are the label files' stems (`consep_1`, ...)."""
    src = Path(src)
    if not src.is_dir():
        raise DataError(f"{src}: folder not found")
    labels = sorted(src.rglob("*.mat"))
    if not labels:
        raise DataError(f"{src}: no .mat label file found (expected Lizard_Labels/Labels/*.mat)")
    images: dict[str, Path] = {}
    for path in sorted(src.rglob("*.png")):
        if images.setdefault(path.stem, path) != path:
            raise DataError(f"{path}: a second image named {path.name} (the first: {images[path.stem]})")
    fold_of = _folds(src) if test_fold else {}
    for label in labels:
        if label.stem not in images:
            raise DataError(f"{label}: its image {label.stem}.png not found under {src}")
        if test_fold and label.stem not in fold_of:
            raise DataError(f"{label}: not listed in {SPLIT_FILE}, so its split is unknown")
    train = [label for label in labels if fold_of.get(label.stem) != test_fold]
    test = [label for label in labels if fold_of.get(label.stem) == test_fold]
    if test_fold and not test:
        raise DataError(f"{src}: no image is in split {test_fold} of {SPLIT_FILE}; choose another test fold")
    if not train:
        raise DataError(f"{src}: every image is in split {test_fold}; no training image is left")
    meaning = {f"class{k}": name for k, name in enumerate(CLASSES, 1)}
    classes = list(meaning)
    return Conversion(classes, meaning, _items(train, images, classes), _items(test, images, classes))


def _folds(src: Path) -> dict[str, int]:
    """`{file stem: split}` from the one `info.csv` under `src`."""
    found = sorted(src.rglob(SPLIT_FILE))
    if len(found) != 1:
        raise DataError(f"{src}: expected one {SPLIT_FILE} (Lizard_Labels/{SPLIT_FILE}), found {len(found)}")
    try:
        with open(found[0], newline="", encoding="utf-8") as stream:
            return {row["Filename"].strip().removesuffix(".png"): int(row["Split"]) for row in csv.DictReader(stream)}
    except (KeyError, ValueError, TypeError, OSError) as err:
        raise DataError(
            f"{found[0]}: expected columns Filename and Split (an integer) ({type(err).__name__}: {err})"
        ) from err


def _items(labels: list[Path], images: dict[str, Path], classes: list[str]) -> Iterator[Item]:
    for label in labels:
        image = read_rgb(images[label.stem])
        data = load_mat(label, ("inst_map", "id", "class"))
        inst_map = whole_numbers(data["inst_map"], f"{label} inst_map")
        ids = whole_numbers(data["id"], f"{label} id").ravel()
        kinds = whole_numbers(data["class"], f"{label} class").ravel()
        if ids.shape != kinds.shape:
            raise DataError(f"{label}: id lists {ids.size} instances but class {kinds.size}")
        class_of_id = np.zeros(max(int(inst_map.max(initial=0)), int(ids.max(initial=0))) + 1, np.int64)
        class_of_id[ids] = kinds
        masks = split_by_class(inst_map, class_of_id, classes, str(label))
        yield Item(safe_name(label.stem), image, masks, label)
