"""Training augmentation: named presets of albumentations transforms with per-transform switches.

Geometry moves the image, the label planes and the center/boundary maps together: they travel
as one float32 multi-channel `mask` (nearest-neighbour resampling, so label ids stay exact and
the maps stay aligned), while colour and stain jitter touch the image only.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import numpy as np

# albumentations asks PyPI for a newer version on import (up to 2 s and a warning on offline
# compute nodes); a pipeline has no use for that.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
import albumentations as A  # noqa: E402

SWITCHES = ("hflip", "vflip", "rot90", "scale_shift", "color", "stain", "elastic")
PRESETS = {
    "none": frozenset(),
    "basic": frozenset({"hflip", "vflip", "rot90"}),
    "strong": frozenset(SWITCHES),
}


def _transform(name: str) -> A.BasicTransform:
    """The albumentations transform behind one switch (each applied with probability 0.5)."""
    if name == "hflip":
        return A.HorizontalFlip(p=0.5)
    if name == "vflip":
        return A.VerticalFlip(p=0.5)
    if name == "rot90":
        return A.RandomRotate90(p=0.5)
    if name == "scale_shift":
        return A.Affine(scale=(0.8, 1.25), translate_percent=(-0.1, 0.1), border_mode=0, p=0.5)
    if name == "color":
        return A.RandomBrightnessContrast(brightness_limit=0.2, contrast_limit=0.2, p=0.5)
    if name == "stain":
        return A.HEStain(method="random_preset", p=0.5)
    if name == "elastic":
        return A.ElasticTransform(alpha=20, sigma=5, border_mode=0, p=0.5)
    raise ValueError(f"unknown augmentation switch {name!r}; expected one of {', '.join(SWITCHES)}")


def enabled_switches(preset: str, overrides: Mapping[str, bool] | None = None) -> list[str]:
    """Switches on for `preset` after `overrides` (switch -> bool), in the order they run."""
    if preset not in PRESETS:
        raise ValueError(f"unknown augmentation preset {preset!r}; expected one of {', '.join(PRESETS)}")
    on = set(PRESETS[preset])
    for name, value in (overrides or {}).items():
        if name not in SWITCHES:
            raise ValueError(f"unknown augmentation switch {name!r}; expected one of {', '.join(SWITCHES)}")
        (on.add if value else on.discard)(name)
    return [name for name in SWITCHES if name in on]


def hed_jitter(strength: float) -> A.HEStain:
    """HED stain jitter (Tellez et al., 2018): each tile's haematoxylin and eosin concentrations,
    unmixed with Ruifrok's fixed H&E vectors, are scaled by U(1 - s, 1 + s) and shifted by
    U(-s, s), s = `strength` in (0, 1]; background pixels keep their colour. Unlike the `stain`
    switch, which swaps in another lab's stain vectors, this varies the tile's own stain amounts
    by a set amount."""
    return A.HEStain(
        method="preset",
        preset="ruifrok",
        intensity_scale_range=(1 - strength, 1 + strength),
        intensity_shift_range=(-strength, strength),
        p=0.5,
    )


def build_augment(
    preset: str, overrides: Mapping[str, bool] | None = None, stain_jitter: float = 0.0
) -> A.Compose | None:
    """The augmentation pipeline of `preset` with `overrides`, then HED jitter of strength
    `stain_jitter` (0 = none); None when nothing is switched on."""
    transforms = [_transform(name) for name in enabled_switches(preset, overrides)]
    if stain_jitter > 0:
        transforms.append(hed_jitter(stain_jitter))
    return A.Compose(transforms) if transforms else None


def augment_tile(
    transform: A.Compose,
    image: np.ndarray,
    labels: np.ndarray,
    center: np.ndarray,
    boundary: np.ndarray,
    seed: int,
) -> dict[str, np.ndarray]:
    """Apply `transform` with random seed `seed` to one tile, keeping everything aligned.

    `image` `(S, S, 3) uint8`; `labels` `(C, S, S)` int (0 = background); `center`, `boundary`
    `(S, S)`. Returns `image` uint8, `labels` `(C, S, S) int32` (an instance may shrink, split or
    vanish), `center` and `boundary` `(S, S) float32`. The same seed gives the same result.
    """
    n_classes = labels.shape[0]
    stack = np.concatenate(
        [labels.astype(np.float32), center[None].astype(np.float32), boundary[None].astype(np.float32)]
    )
    transform.set_random_seed(int(seed))
    out = transform(image=image, mask=np.ascontiguousarray(np.moveaxis(stack, 0, -1)))
    moved = np.moveaxis(out["mask"], -1, 0)
    return {
        "image": np.ascontiguousarray(out["image"]),
        "labels": np.rint(moved[:n_classes]).astype(np.int32),
        "center": np.ascontiguousarray(moved[n_classes]),
        "boundary": np.ascontiguousarray(moved[n_classes + 1]),
    }
