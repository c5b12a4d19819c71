"""Validation hold-out and K folds, stratified by each image's per-class instance counts.

The split is computed once from the image table sorted by `image_id` and a seed, and written
to `results/split/split.tsv`; every later stage reads that table.

Stratification is the iterative stratification of Sechidis et al. (2011), run on per-class
instance *counts* rather than presence: in cell images nearly every image contains every
common class, so presence carries little information, whereas counts say how much training
signal of each class a group receives. Groups also have a hard size (number of images), so
that the validation set and the folds have exactly the requested sizes.

With `split.group_by`, related images (patches of one source slide, say) move together: the
units stratified are the groups, with their summed counts, so no group spans two folds or a
fold and the validation set. Sizes are then counted in groups, not images.
"""

import os
import re
from collections.abc import Sequence

import numpy as np
import pandas as pd

from cellseg.common.errors import ConfigError
from cellseg.data.dataset import load_sample


def count_instances(labels: np.ndarray) -> list[int]:
    """Number of instances per class in `labels` `(C, H, W)` int (0 = background).

    Counts distinct non-zero ids, so it does not rely on ids being consecutive.
    """
    return [int(np.count_nonzero(np.bincount(plane.ravel())[1:])) for plane in labels]


def instance_count_table(source: dict, image_ids: Sequence[str]) -> pd.DataFrame:
    """Read every training image once (so that bad files fail here, before training) and
    count its instances: one row per image with `image_id`, `height`, `width`, `n_<class>`.
    """
    rows = []
    for image_id in image_ids:
        sample = load_sample(source, image_id)
        counts = count_instances(sample.labels)
        rows.append(
            {
                "image_id": image_id,
                "height": sample.image.shape[0],
                "width": sample.image.shape[1],
                **{f"n_{name}": n for name, n in zip(source["classes"], counts)},
            }
        )
    return pd.DataFrame(rows)


def image_groups(image_ids: Sequence[str], group_by: str | None) -> list[str]:
    """The group of each image id: the first capture group of regex `group_by` (searched in the
    id), or the id itself when `group_by` is None. Raises `ConfigError` naming `split.group_by`
    for a regex that does not compile, has no group, or does not match some id.
    """
    if group_by is None:
        return list(image_ids)
    try:
        pattern = re.compile(group_by)
    except re.error as err:
        raise ConfigError(f"split.group_by: {group_by!r} is not a valid regex ({err})") from err
    if pattern.groups < 1:
        raise ConfigError(f"split.group_by: {group_by!r} has no capture group; its first group names the group")
    matches = [pattern.search(image_id) for image_id in image_ids]
    unmatched = [i for i, m in zip(image_ids, matches) if m is None or m.group(1) is None]
    if unmatched:
        raise ConfigError(
            f"split.group_by: {group_by!r} does not match {len(unmatched)} of {len(image_ids)} image ids, "
            f"e.g. {', '.join(unmatched[:3])}"
        )
    return [m.group(1) for m in matches]


def split_sizes(n_units: int, val_fraction: float, n_folds: int, unit: str = "images") -> tuple[int, int]:
    """(validation, training) sizes of `n_units` images or groups; `ConfigError` naming
    `split.folds` when the training part cannot fill `n_folds` folds.
    """
    n_val = max(1, round(val_fraction * n_units))
    n_train = n_units - n_val
    if n_train < n_folds:
        raise ConfigError(
            f"split.folds = {n_folds} needs at least {n_folds} non-validation {unit}, "
            f"but {n_units} {unit} with {n_val} held out for validation leave {n_train}"
        )
    return n_val, n_train


def make_split(
    counts: pd.DataFrame, val_fraction: float, n_folds: int, seed: int, group_by: str | None = None
) -> pd.DataFrame:
    """Assign each training image to the validation set or to one of `n_folds` folds.

    `counts` has one row per image: `image_id`, `height`, `width` and an `n_<class name>`
    instance count per class. Returns the same rows sorted by `image_id`, with `subset`
    (`val` or `train`), `fold` (0..n_folds-1 for `train`, -1 for `val`) and `group` after
    `image_id`. The units split are the groups of `image_groups(ids, group_by)` (each image its
    own group when `group_by` is None): the validation set holds `round(val_fraction * G)` of
    the G groups, at least 1, and the folds differ by at most one group. The result depends
    only on the table's content, `group_by` and `seed`.
    """
    table = counts.sort_values("image_id", kind="stable").reset_index(drop=True)
    if table["image_id"].duplicated().any():
        raise ValueError("make_split: duplicated image_id in the counts table")
    groups = image_groups(table["image_id"].tolist(), group_by)
    names, group_of_row = np.unique(groups, return_inverse=True)
    n_units = len(names)
    n_val, n_train = split_sizes(n_units, val_fraction, n_folds, "groups" if group_by is not None else "images")
    row_counts = table[[c for c in table.columns if c.startswith("n_")]].to_numpy(np.float64)
    class_counts = np.zeros((n_units, row_counts.shape[1]))
    np.add.at(class_counts, group_of_row, row_counts)
    rng = np.random.default_rng(seed)

    is_val = _stratify(class_counts, [n_val, n_train], rng) == 0
    train_units = np.flatnonzero(~is_val)
    fold_sizes = [len(part) for part in np.array_split(np.arange(n_train), n_folds)]
    fold = np.full(n_units, -1, dtype=np.int64)
    fold[train_units] = _stratify(class_counts[train_units], fold_sizes, rng)

    table.insert(1, "subset", np.where(is_val[group_of_row], "val", "train"))
    table.insert(2, "fold", fold[group_of_row])
    table.insert(3, "group", groups)
    return table


def _stratify(counts: np.ndarray, sizes: Sequence[int], rng: np.random.Generator) -> np.ndarray:
    """Iterative stratification: a group index per row of `counts` `(N, C)`, sizes[g] rows in g.

    Repeatedly takes the class with the fewest instances left among unassigned images and
    hands its images (largest count first) to the group that still wants most of that class,
    then most images; remaining ties are broken by `rng`. Full groups take no more images.
    """
    n_images = counts.shape[0]
    sizes = np.asarray(sizes, dtype=np.float64)
    want_images = sizes.copy()
    want_class = np.outer(sizes / n_images, counts.sum(axis=0))  # (G, C)
    group = np.full(n_images, -1, dtype=np.int64)
    while (unassigned := group < 0).any():
        left = counts[unassigned].sum(axis=0)
        if left.any():
            cls = int(np.argmin(np.where(left > 0, left, np.inf)))
            rows = np.flatnonzero(unassigned & (counts[:, cls] > 0))
            rows = rows[np.argsort(-counts[rows, cls], kind="stable")]
        else:  # images without any instance: only the image budget matters
            cls, rows = None, np.flatnonzero(unassigned)
        for row in rows:
            open_ = want_images > 0
            keys = [rng.random(len(sizes)), want_images]
            if cls is not None:
                keys.append(want_class[:, cls])
            order = np.lexsort(keys)  # last key is the primary one
            g = next(int(g) for g in order[::-1] if open_[g])
            group[row] = g
            want_images[g] -= 1
            want_class[g] -= counts[row]
    return group


def read_split(path: str | os.PathLike) -> pd.DataFrame:
    """The split table written by the split stage (`image_id` and `group` kept as text)."""
    return pd.read_csv(path, sep="\t", dtype={"image_id": str, "group": str})


def validation_ids(split: pd.DataFrame) -> list[str]:
    """Ids of the held-out validation images, sorted."""
    return sorted(split.loc[split["subset"] == "val", "image_id"])
