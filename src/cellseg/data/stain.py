"""Stain normalisation of H&E images toward one target per dataset (torchstain, numpy backend).

Labs and scanners stain and image differently; mapping every image onto one dataset-wide
target before training and inference removes part of that shift. Two methods:

- `macenko`: finds each image's two stain vectors (haematoxylin, eosin) in optical density
  and their 99th-percentile concentrations, and re-renders the image with the target's
  (Macenko et al., ISBI 2009);
- `reinhard`: matches the mean and standard deviation of each LAB channel to the target's
  (Reinhard et al., 2001).

Macenko needs enough stained pixels to find two stain directions: on a blank or
background-only image it falls back to Reinhard, and Reinhard leaves an image without colour
contrast as it is; each fallback is logged. The target (`StainTarget`) is fitted once per
dataset by rule `fit_stain_reference` and stored as JSON.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import numpy as np
from torchstain.numpy.normalizers import NumpyMacenkoNormalizer, NumpyReinhardNormalizer
from torchstain.numpy.utils import get_mean_std, lab_split, rgb2lab

from cellseg.common.errors import DataError
from cellseg.common.files import atomic_path

log = logging.getLogger(__name__)

METHODS = ("none", "macenko", "reinhard")
# torchstain's defaults: transmitted light intensity, and the optical density below which a
# pixel counts as background (in any channel).
LIGHT = 240
BACKGROUND_OD = 0.15
# Macenko takes the 1st and 99th percentile stain angles: with this many stained pixels each
# rests on at least 10 of them.
MIN_STAINED_PIXELS = 1000
# LAB standard deviation (L in 0-100, a and b in about -128-127) below which a channel is flat:
# Reinhard would divide by it.
MIN_LAB_STD = 0.5


@dataclass(frozen=True)
class StainTarget:
    """What images are normalised toward: LAB channel means and standard deviations (Reinhard,
    and Macenko's fallback) and, for `macenko`, the stain vectors (3, 2) (columns H, E; RGB
    optical density) and their 99th-percentile concentrations (2,). `reference` names the image
    it was fitted on."""

    method: str
    reference: str
    lab_mean: list[float]
    lab_std: list[float]
    stain_vectors: list[list[float]] | None = None
    max_concentrations: list[float] | None = None

    def write(self, path: str | os.PathLike) -> None:
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps(asdict(self), indent=2))

    @classmethod
    def read(cls, path: str | os.PathLike) -> StainTarget:
        with open(path) as stream:
            return cls(**json.load(stream))


def stained_pixels(image: np.ndarray) -> int:
    """Pixels of `image` (H, W, 3) uint8 whose optical density reaches `BACKGROUND_OD` in every
    channel: those Macenko estimates the stains from."""
    od = -np.log((image.reshape(-1, 3).astype(np.float64) + 1) / LIGHT)
    return int(np.count_nonzero(np.all(od >= BACKGROUND_OD, axis=1)))


def lab_stats(image: np.ndarray) -> np.ndarray:
    """(6,) float64: mean of L, a, b, then their standard deviations, of `image` (H, W, 3) uint8."""
    channels = lab_split(rgb2lab(image.astype(np.float32) / 255))
    stats = np.array([get_mean_std(c) for c in channels], np.float64)
    return np.concatenate([stats[:, 0], stats[:, 1]])


def fit_target(image: np.ndarray, method: str, name: str) -> StainTarget:
    """The target of `method` fitted on `image` (H, W, 3) uint8; `DataError` naming `name` when
    the image cannot give one (blank, background only, no colour contrast)."""
    if method not in METHODS[1:]:
        raise ValueError(f"unknown stain method {method!r}; expected one of {', '.join(METHODS[1:])}")
    stats = lab_stats(image)
    if np.any(stats[3:] < MIN_LAB_STD):
        raise DataError(
            f"{name}: cannot fit a stain reference: no colour contrast (LAB standard deviations "
            f"{np.round(stats[3:], 2).tolist()}, each must reach {MIN_LAB_STD})"
        )
    target = StainTarget(method, name, stats[:3].tolist(), stats[3:].tolist())
    if method == "reinhard":
        return target
    stained = stained_pixels(image)
    if stained < MIN_STAINED_PIXELS:
        raise DataError(
            f"{name}: cannot fit a Macenko stain reference: {stained} stained pixels (optical density "
            f">= {BACKGROUND_OD} in every channel), at least {MIN_STAINED_PIXELS} needed"
        )
    macenko = NumpyMacenkoNormalizer()
    try:
        with np.errstate(divide="raise", invalid="raise", over="ignore", under="ignore"):
            macenko.fit(image, Io=LIGHT, beta=BACKGROUND_OD)
        vectors, max_c = np.asarray(macenko.HERef), np.asarray(macenko.maxCRef)
        found = np.all(np.isfinite(vectors)) and np.all(np.isfinite(max_c)) and np.all(max_c > 0)
    except (FloatingPointError, np.linalg.LinAlgError):
        found = False
    if not found:
        raise DataError(f"{name}: cannot fit a Macenko stain reference: no two stains found")
    return StainTarget(method, name, target.lab_mean, target.lab_std, vectors.tolist(), max_c.tolist())


def fit_dataset_target(ids: Sequence[str], load: Callable[[str], np.ndarray], method: str) -> StainTarget:
    """The target fitted on the most typical of the images `load(id)` returns (H, W, 3) uint8.

    Typical = nearest to the median of every image's LAB means and standard deviations, each
    scaled by its spread over the images: one real image rather than pooled pixels, whose
    standard deviations would add the images' differences to each other to the target's
    contrast. An image that cannot be fitted (blank, background only) is skipped, and the next
    most typical taken; `DataError` when none can.
    """
    stats = np.stack([lab_stats(load(image_id)) for image_id in ids])
    spread = stats.std(axis=0)
    distance = np.linalg.norm((stats - np.median(stats, axis=0)) / np.where(spread > 0, spread, 1), axis=1)
    for k in np.argsort(distance, kind="stable"):
        try:
            return fit_target(load(ids[k]), method, ids[k])
        except DataError as error:
            log.info("skipped as stain reference: %s", error)
    raise DataError(f"no training image can be fitted as a {method} stain reference; set stain.reference")


class StainNormaliser:
    """Normalises images toward a `StainTarget`; `normaliser(image, name)` returns a new
    (H, W, 3) uint8 image, or the given one when it cannot be normalised (logged)."""

    def __init__(self, target: StainTarget):
        self.target = target
        # torchstain keeps a fitted target in these attributes (pinned version)
        self._reinhard = NumpyReinhardNormalizer()
        self._reinhard.target_means = np.asarray(target.lab_mean, np.float32)
        self._reinhard.target_stds = np.asarray(target.lab_std, np.float32)
        self._macenko = None
        if target.method == "macenko":
            self._macenko = NumpyMacenkoNormalizer()
            self._macenko.HERef = np.asarray(target.stain_vectors, np.float64)
            self._macenko.maxCRef = np.asarray(target.max_concentrations, np.float64)

    def __call__(self, image: np.ndarray, name: str = "") -> np.ndarray:
        if self._macenko is not None:
            stained = stained_pixels(image)
            if stained >= MIN_STAINED_PIXELS:
                try:
                    with np.errstate(divide="raise", invalid="raise", over="ignore", under="ignore"):
                        return self._macenko.normalize(image, Io=LIGHT, beta=BACKGROUND_OD, stains=False)[0]
                except (FloatingPointError, np.linalg.LinAlgError) as error:
                    log.info("%s: Macenko failed (%s); Reinhard used", name, error)
            else:
                log.info("%s: %d stained pixels, too few for Macenko; Reinhard used", name, stained)
        return self._reinhard_or_unchanged(image, name)

    def _reinhard_or_unchanged(self, image: np.ndarray, name: str) -> np.ndarray:
        stds = lab_stats(image)[3:]
        if np.any(stds < MIN_LAB_STD):
            log.info("%s: no colour contrast (LAB standard deviations %s); left unnormalised", name, np.round(stds, 2).tolist())
            return image
        return self._reinhard.normalize(image)


def load_normaliser(path) -> Callable[[np.ndarray, str], np.ndarray]:
    """The normaliser of the target stored at `path` (a rule's `stain` input, a file name); with
    no such input (`stain.method: none`, an empty list) one that returns images unchanged."""
    if not path:
        return _unchanged
    return StainNormaliser(StainTarget.read(path))


def _unchanged(image: np.ndarray, name: str = "") -> np.ndarray:
    return image
