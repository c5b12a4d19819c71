"""CoNSeP: `Train/` and `Test/`, each with `Images/<name>.png` and `Labels/<name>.mat`.

A label file holds `inst_map` (1000 x 1000 instance ids, 0 = background), `type_map` (the
class of each pixel, 0-7), `inst_type` (N x 1, the class of instance id i + 1 in row i) and
`inst_centroid`. Classes: 1 other, 2 inflammatory, 3 healthy epithelial, 4 dysplastic or
malignant epithelial, 5 fibroblast, 6 muscle, 7 endothelial. By default they are merged as the
HoVer-Net paper does into 4: class1 other, class2 inflammatory, class3 epithelial (3 + 4),
class4 spindle-shaped (5 + 6 + 7). An instance's class comes from `inst_type`, or, in a file
without it, from the most frequent class of its pixels in `type_map`.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from cellseg.common.errors import DataError
from cellseg.data.converters.labels import majority_class, split_by_class
from cellseg.data.converters.layout import Conversion, Item, safe_name
from cellseg.data.converters.native import load_mat, read_rgb, whole_numbers

TYPES = ("other", "inflammatory", "healthy epithelial", "dysplastic/malignant epithelial",
         "fibroblast", "muscle", "endothelial")
MERGED = ("other", "inflammatory", "epithelial", "spindle-shaped")
# Native class (index) -> merged class; 0 stays 0 (no class).
MERGE = np.array([0, 1, 2, 3, 3, 4, 4, 4])
SPLITS = {"train": "Train", "test": "Test"}


def convert_consep(src: str | os.PathLike, merge: bool = True) -> Conversion:
    """CoNSeP under `src` (`Train/` and `Test/`; a missing `Test/` gives no test set), its
    classes merged into 4 (`merge=True`) or kept as 7. Image ids are the file stems (`train_1`)."""
    src = Path(src)
    if not src.is_dir():
        raise DataError(f"{src}: folder not found")
    names = MERGED if merge else TYPES
    meaning = {f"class{k}": name for k, name in enumerate(names, 1)}
    train = _pairs(src / SPLITS["train"])
    test = _pairs(src / SPLITS["test"]) if (src / SPLITS["test"]).is_dir() else []
    classes = list(meaning)
    return Conversion(classes, meaning, _items(train, classes, merge), _items(test, classes, merge))


def _pairs(folder: Path) -> list[tuple[Path, Path]]:
    """`(label, image)` for every `Labels/*.mat` under `folder`; `DataError` when there is none
    or its `Images/<stem>.png` is missing."""
    labels = sorted((folder / "Labels").glob("*.mat"))
    if not labels:
        raise DataError(f"{folder / 'Labels'}: no .mat label file found (expected CoNSeP's Train/Labels/*.mat)")
    pairs = []
    for label in labels:
        image = folder / "Images" / f"{label.stem}.png"
        if not image.is_file():
            raise DataError(f"{label}: its image {image} not found")
        pairs.append((label, image))
    return pairs


def _items(pairs: list[tuple[Path, Path]], classes: list[str], merge: bool) -> Iterator[Item]:
    for label, image_path in pairs:
        image = read_rgb(image_path)
        data = load_mat(label, ("inst_map",))
        inst_map = whole_numbers(data["inst_map"], f"{label} inst_map")
        class_of_id = _class_of_id(data, inst_map, label)
        if merge:
            if class_of_id.max(initial=0) >= len(MERGE):
                raise DataError(f"{label}: class {class_of_id.max()} outside CoNSeP's 1..7")
            class_of_id = MERGE[class_of_id]
        yield Item(safe_name(label.stem), image, split_by_class(inst_map, class_of_id, classes, str(label)), label)


def _class_of_id(data: dict, inst_map: np.ndarray, label: Path) -> np.ndarray:
    """Native class per instance id, `(max id + 1,)` int64, from `inst_type` or `type_map`."""
    size = int(inst_map.max(initial=0)) + 1
    if "inst_type" in data:
        types = whole_numbers(data["inst_type"], f"{label} inst_type").ravel()
        if len(types) < size - 1:
            raise DataError(f"{label}: inst_type lists {len(types)} instances but inst_map holds ids up to {size - 1}")
        return np.concatenate([[0], types[: size - 1]])
    if "type_map" in data:
        type_map = whole_numbers(data["type_map"], f"{label} type_map")
        if type_map.shape != inst_map.shape:
            raise DataError(f"{label}: type_map is {type_map.shape} but inst_map is {inst_map.shape}")
        return majority_class(inst_map, type_map)
    raise DataError(f"{label}: has neither inst_type nor type_map, so the instances have no class")
