"""PanNuke: three folds of 256 x 256 patches as NumPy arrays.

As downloaded, fold k is `Fold k/images/foldk/images.npy`, `.../types.npy` and
`Fold k/masks/foldk/masks.npy`; any arrangement works in which each file has a folder named
`fold<k>` (or `Fold <k>`, `fold_<k>`) above it. `images.npy`: `(N, 256, 256, 3)` float64 RGB
values 0-255. `masks.npy`: `(N, 256, 256, 6)`, channels 0-4 the instance ids of Neoplastic,
Inflammatory, Connective/soft tissue, Dead and Epithelial nuclei (class1..class5), channel 5
background (not read). `types.npy`: `(N,)` the tissue of each patch. The arrays are memory-
mapped and read one patch at a time: a fold's masks take about 8 GB in memory.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from cellseg.common.errors import DataError
from cellseg.data.converters.layout import Conversion, Item, safe_name
from cellseg.data.converters.native import whole_numbers

CLASSES = ("Neoplastic", "Inflammatory", "Connective/soft tissue", "Dead", "Epithelial")
FILES = ("images.npy", "masks.npy", "types.npy")
_FOLD = re.compile(r"fold[ _]?(\d+)$", re.IGNORECASE)


def convert_pannuke(src: str | os.PathLike, test_fold: int = 3) -> Conversion:
    """PanNuke's folds under `src`: fold `test_fold` is the test set, the others train
    (`test_fold=0`: all train). Image ids are `fold<k>_<index>_<tissue>` (`fold1_00012_Breast`),
    the index 0-based in the fold's arrays."""
    src = Path(src)
    folds = _find_folds(src)
    if test_fold and test_fold not in folds:
        raise DataError(f"{src}: no fold {test_fold} found (folds found: {sorted(folds)}); choose another test fold")
    train = [k for k in sorted(folds) if k != test_fold]
    if not train:
        raise DataError(f"{src}: only fold {test_fold} found; no fold is left for training")
    meaning = {f"class{k}": name for k, name in enumerate(CLASSES, 1)}
    classes = list(meaning)
    test = [test_fold] if test_fold else []
    return Conversion(classes, meaning, _items(folds, train, classes), _items(folds, test, classes))


def _find_folds(src: Path) -> dict[int, dict[str, Path]]:
    """`{fold: {file name: path}}` for every fold under `src` with all of `FILES`."""
    if not src.is_dir():
        raise DataError(f"{src}: folder not found")
    folds: dict[int, dict[str, Path]] = {}
    for name in FILES:
        for path in sorted(src.rglob(name)):
            fold = next((int(m.group(1)) for part in reversed(path.parent.parts) if (m := _FOLD.search(part))), None)
            if fold is None:
                raise DataError(f"{path}: no folder named fold<k> above it, so its fold is unknown")
            if name in folds.setdefault(fold, {}):
                raise DataError(f"{path}: a second {name} for fold {fold} (the first: {folds[fold][name]})")
            folds[fold][name] = path
    if not folds:
        raise DataError(f"{src}: no PanNuke fold found (expected Fold 1/images/fold1/images.npy, ...)")
    for fold, files in sorted(folds.items()):
        missing = [name for name in FILES if name not in files]
        if missing:
            raise DataError(f"{src}: fold {fold} lacks {', '.join(missing)}")
    return folds


def _load(path: Path) -> np.ndarray:
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as err:
        raise DataError(f"{path}: cannot read as a .npy array ({type(err).__name__}: {err})") from err


def _items(folds: dict[int, dict[str, Path]], chosen: list[int], classes: list[str]) -> Iterator[Item]:
    for fold in chosen:
        paths = folds[fold]
        images, masks, types = (_load(paths[name]) for name in FILES)
        if images.ndim != 4 or images.shape[-1] != 3:
            raise DataError(f"{paths['images.npy']}: shape {images.shape}; expected (N, H, W, 3)")
        if masks.shape != (*images.shape[:3], len(classes) + 1):
            raise DataError(
                f"{paths['masks.npy']}: shape {masks.shape}; expected {(*images.shape[:3], len(classes) + 1)} "
                f"to match {paths['images.npy']}"
            )
        if types.shape != images.shape[:1]:
            raise DataError(f"{paths['types.npy']}: shape {types.shape}; expected ({images.shape[0]},)")
        for index in range(images.shape[0]):
            where = f"{paths['masks.npy']} [patch {index}]"
            planes = whole_numbers(masks[index, :, :, : len(classes)], where)
            image = _to_uint8(images[index], f"{paths['images.npy']} [patch {index}]")
            name = safe_name(f"fold{fold}_{index:05d}_{types[index]}")
            yield Item(name, image, {c: planes[:, :, k] for k, c in enumerate(classes)}, paths["images.npy"])


def _to_uint8(values: np.ndarray, where: str) -> np.ndarray:
    """RGB values 0-255 (any real dtype) as uint8, rounded; `DataError` outside 0-255 or NaN."""
    values = np.asarray(values)
    if values.dtype == np.uint8:
        return values
    if not np.isfinite(values).all() or values.min() < 0 or values.max() > 255:
        raise DataError(f"{where}: image values outside 0-255 (or NaN)")
    return np.rint(values).astype(np.uint8)
