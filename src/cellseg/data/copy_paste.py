"""Copy-paste augmentation biased toward rare classes (after Ghiasi et al., "Simple Copy-Paste").

Instances (pixels, mask and class) of a donor tile are pasted over a training tile. Both the
donor and the pasted instances favour rare classes: a class's rarity is
`r_c = sqrt(n_max / n_c)` over the training instance counts `n_c` (1 for the most common
class), a donor tile is drawn with probability proportional to the largest rarity among its
classes, and each donor instance is pasted with probability `min(1, BASE_PASTE_PROBABILITY * r_c)`.
The donor is rotated and flipped at random first, so a pasted cell rarely lands where it was.
Pasted pixels replace what was below: a cell they cover loses those pixels, and remnants under
`train_data.MIN_INSTANCE_AREA` are dropped when targets are made. Every draw comes from the
given numpy Generator, so the result is a function of its seed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd

BASE_PASTE_PROBABILITY = 0.25  # a common class's instances; a rare class's scale up by r_c


class CopyPaste:
    """Pastes donor-tile instances into tiles with probability `probability` per tile.

    tiles: the training tile index (`n_<class>` columns); load_donor(i) returns tile i as
    `{image (S, S, 3) uint8, labels (C, S, S) int, center (S, S), boundary (S, S)}`.
    """

    def __init__(
        self, tiles: pd.DataFrame, class_names: Sequence[str], probability: float, load_donor: Callable[[int], dict]
    ):
        counts = tiles[[f"n_{name}" for name in class_names]].to_numpy(np.float64)
        totals = counts.sum(axis=0)
        self.rarity = np.where(totals > 0, np.sqrt(totals.max() / np.maximum(totals, 1)), 0.0)
        donor_weight = np.where(counts > 0, self.rarity, 0.0).max(axis=1, initial=0.0)
        self.donor_p = donor_weight / donor_weight.sum() if donor_weight.sum() > 0 else None
        self.probability = probability
        self.load_donor = load_donor

    def __call__(self, tile: dict, rng: np.random.Generator) -> dict:
        """`tile` with donor instances pasted in (a new dict), or `tile` itself when none is."""
        if self.donor_p is None or rng.random() >= self.probability:
            return tile
        donor = _turn(self.load_donor(int(rng.choice(len(self.donor_p), p=self.donor_p))), rng)
        height, width = tile["labels"].shape[1:]
        donor = {key: _fit(value, height, width, channels_first=key == "labels") for key, value in donor.items()}
        picks = [
            (c, instance)
            for c, plane in enumerate(donor["labels"])
            for instance in np.unique(plane[plane > 0])
            if rng.random() < min(1.0, BASE_PASTE_PROBABILITY * self.rarity[c])
        ]
        return paste_instances(tile, donor, picks) if picks else tile


def paste_instances(tile: dict, donor: dict, picks: list[tuple[int, int]]) -> dict:
    """`tile` with the instances `picks` ((class index, label id) in `donor`) pasted over it.

    Both are dicts of `image (H, W, 3)`, `labels (C, H, W)` (0 = background), `center` and
    `boundary` `(H, W)` of equal shapes. The pasted region takes the donor's pixels and maps and
    is cleared in every class plane before the picks get new ids (max id + 1, ...) in theirs.
    """
    labels = tile["labels"].astype(np.int32, copy=True)
    masks = [(c, donor["labels"][c] == instance) for c, instance in picks]
    region = np.logical_or.reduce([mask for _, mask in masks])
    labels[:, region] = 0
    for c, mask in masks:
        labels[c][mask] = labels[c].max() + 1
    out = {"labels": labels}
    for key in ("image", "center", "boundary"):
        out[key] = tile[key].copy()
        out[key][region] = donor[key][region]
    return out


def _turn(tile: dict, rng: np.random.Generator) -> dict:
    """`tile` rotated by a random multiple of 90 degrees, then flipped left-right half the time."""
    turns, flip = int(rng.integers(4)), bool(rng.random() < 0.5)

    def move(array: np.ndarray, axes: tuple[int, int]) -> np.ndarray:
        array = np.rot90(array, turns, axes=axes)
        return np.flip(array, axis=axes[1]) if flip else array

    return {
        "image": move(tile["image"], (0, 1)),
        "labels": move(tile["labels"], (1, 2)),
        "center": move(tile["center"], (0, 1)),
        "boundary": move(tile["boundary"], (0, 1)),
    }


def _fit(array: np.ndarray, height: int, width: int, channels_first: bool) -> np.ndarray:
    """`array` (`(C, H, W)` when `channels_first`, else `(H, W, ...)`) cropped or zero-padded
    to `height` x `width`, so that whole-image donors of any size fit."""
    axes = (1, 2) if channels_first else (0, 1)
    if (array.shape[axes[0]], array.shape[axes[1]]) == (height, width):
        return array
    shape = list(array.shape)
    shape[axes[0]], shape[axes[1]] = height, width
    out = np.zeros(shape, array.dtype)
    index = [slice(None)] * array.ndim
    index[axes[0]] = slice(0, min(height, array.shape[axes[0]]))
    index[axes[1]] = slice(0, min(width, array.shape[axes[1]]))
    out[tuple(index)] = array[tuple(index)]
    return out
