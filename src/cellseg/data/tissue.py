"""Where a slide has tissue: a mask from a low-resolution copy, so that blocks of bare glass are
never predicted.

Stained tissue is coloured and glass is grey, so the mask is the saturation (HSV: (max - min) /
max of R, G, B) above its Otsu threshold, holes filled, pieces smaller than `MIN_AREA_UM2` (or,
without a pixel size, `MIN_AREA_FRACTION` of the image) dropped, and grown by one pixel so that
a block that only grazes the tissue's edge is still predicted. An image with no colour at all
(fluorescence, grey scans) is all tissue. Otsu is a few lines of numpy here; scikit-image would
add a large dependency for this one threshold.
"""

from __future__ import annotations

import os

import numpy as np
from PIL import Image
from scipy import ndimage

from cellseg.common.files import atomic_path
from cellseg.data.image_reader import ImageReader

TISSUE_SIDE = 2048  # px, longer side of the copy the mask is computed on
MIN_SATURATION = 0.05  # below this everywhere, the image has no colour to tell tissue by
MIN_AREA_UM2 = 10_000.0  # a piece of tissue smaller than 0.01 mm² is dust or a pen mark
MIN_AREA_FRACTION = 1e-4


def low_resolution(reader: ImageReader, max_side: int = TISSUE_SIDE) -> tuple[np.ndarray, float]:
    """(h, w, 3) uint8 copy of the image whose longer side is at most `max_side`, and the
    image px (of the reader's current level) per copy px. A slide (`cellseg.data.slide.SlideReader`)
    is read from its finest level at most twice that size, other images in bands of the image,
    each subsampled by an integer step."""
    from cellseg.data.image_reader import thumbnail

    level = getattr(reader, "level", None)
    if level is None:
        image, step = thumbnail(reader, max_side)
        return image, float(step)
    width = reader.size[1]
    dims = reader.level_dims
    fits = [k for k, (h, w) in enumerate(dims) if max(h, w) <= 2 * max_side] or [len(dims) - 1]
    reader.use_level(max(fits[0], level))
    try:
        image, step = thumbnail(reader, max_side)
        return image, step * width / reader.size[1]
    finally:
        reader.use_level(level)


def saturation(image: np.ndarray) -> np.ndarray:
    """(h, w) float32 HSV saturation in [0, 1] of an (h, w, 3) uint8 image."""
    high = image.max(axis=2).astype(np.float32)
    low = image.min(axis=2).astype(np.float32)
    return np.where(high > 0, (high - low) / np.maximum(high, 1), 0.0).astype(np.float32)


def otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """The threshold between two classes of `values` in [0, 1] that maximises the variance
    between them (Otsu 1979), on a histogram of `bins` bins."""
    counts, edges = np.histogram(values, bins=bins, range=(0.0, 1.0))
    centres = (edges[:-1] + edges[1:]) / 2
    weight = np.cumsum(counts).astype(np.float64)
    mean = np.cumsum(counts * centres)
    total_weight, total_mean = weight[-1], mean[-1]
    upper = total_weight - weight
    valid = (weight > 0) & (upper > 0)
    between = np.zeros(bins)
    between[valid] = (total_mean * weight[valid] - mean[valid] * total_weight) ** 2 / (weight[valid] * upper[valid])
    return float(edges[np.argmax(between) + 1])


def tissue_mask(image: np.ndarray, um_per_px: float | None = None) -> np.ndarray:
    """(h, w) bool: the tissue of an (h, w, 3) uint8 low-resolution copy (module doc);
    `um_per_px`: µm per px of the copy, None when unknown."""
    sat = saturation(image)
    if sat.max() < MIN_SATURATION:
        return np.ones(sat.shape, bool)
    mask = ndimage.binary_fill_holes(sat > max(otsu_threshold(sat), MIN_SATURATION))
    min_area = MIN_AREA_UM2 / um_per_px**2 if um_per_px else MIN_AREA_FRACTION * mask.size
    pieces, n = ndimage.label(mask)
    areas = np.bincount(pieces.ravel(), minlength=n + 1)
    keep = areas >= min_area
    keep[0] = False
    return ndimage.binary_dilation(keep[pieces])


def tissue_blocks(mask: np.ndarray, step: float, blocks: list[tuple[int, int, int, int]]) -> list[tuple[int, int, int, int]]:
    """The blocks (y0, y1, x0, x1 in image px) that touch the tissue of `mask`, a mask of
    `step` image px per mask px, in their order."""
    out = []
    for y0, y1, x0, x1 in blocks:
        r0, r1 = int(y0 // step), int(np.ceil(y1 / step))
        c0, c1 = int(x0 // step), int(np.ceil(x1 / step))
        if mask[r0:r1, c0:c1].any():
            out.append((y0, y1, x0, x1))
    return out


def write_tissue_picture(path: str | os.PathLike, image: np.ndarray, mask: np.ndarray) -> None:
    """tissue.png: the low-resolution copy with the glass left out of the mask dimmed and the
    mask's outline in green."""
    out = image.copy()
    out[~mask] = out[~mask] // 3 + 170
    out[mask & ~ndimage.binary_erosion(mask, iterations=2)] = (0, 200, 0)
    with atomic_path(path) as tmp:
        Image.fromarray(out).save(tmp, format="png")
