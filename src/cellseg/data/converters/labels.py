"""From one instance map plus a class per instance (the HoVer-Net `.mat` convention of CoNSeP
and Lizard) to the reference layout's one instance plane per class."""

from __future__ import annotations

import numpy as np

from cellseg.common.errors import DataError


def split_by_class(
    inst_map: np.ndarray, class_of_id: np.ndarray, classes: list[str], where: str
) -> dict[str, np.ndarray]:
    """`{class name: (H, W) int64 plane}`: the instances of `inst_map` (`(H, W)` int64, 0 =
    background) whose class, `class_of_id[id]`, is k (1-based) go to `classes[k - 1]`, ids
    kept. `class_of_id` is indexed by instance id (length > the largest id); `DataError`
    naming `where` when an instance in the map has a class outside 1..len(classes)."""
    present = np.flatnonzero(np.bincount(inst_map.ravel()))
    present = present[present > 0]
    wrong = present[(class_of_id[present] < 1) | (class_of_id[present] > len(classes))]
    if wrong.size:
        raise DataError(
            f"{where}: instance {wrong[0]} has class {class_of_id[wrong[0]]}, outside 1..{len(classes)} "
            f"({len(wrong)} such instance(s))"
        )
    per_pixel = class_of_id[inst_map]
    return {name: np.where(per_pixel == k, inst_map, 0) for k, name in enumerate(classes, 1)}


def majority_class(inst_map: np.ndarray, type_map: np.ndarray) -> np.ndarray:
    """Class per instance id from a per-pixel class map: the most frequent non-zero class
    among the instance's pixels (ties: the smaller class), 0 when all its pixels are 0.
    Both maps `(H, W)` non-negative int64; returns `(max id + 1,)` int64."""
    n_ids, n_types = int(inst_map.max()) + 1, int(type_map.max()) + 1
    counts = np.bincount((inst_map * n_types + type_map).ravel(), minlength=n_ids * n_types)
    counts = counts.reshape(n_ids, n_types)
    counts[:, 0] = 0
    best = counts.argmax(axis=1)
    best[counts.max(axis=1) == 0] = 0
    return best
