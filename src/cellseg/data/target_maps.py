"""Centre heatmap and boundary map of one image, the extra training targets beside the labels.

Both are computed on whole label images with a fixed number of array passes (bincount,
one distance transform, one max and one min filter), never a loop over instances, so their
cost does not grow with the number of cells.
"""

import contextlib
import os
from collections.abc import Callable, Iterable, Iterator

import numpy as np
from scipy import ndimage

from cellseg.common.files import npz_writer

_MAP_KEYS = ("center", "boundary")


def _instance_centres(labels: np.ndarray) -> np.ndarray:
    """Centre-of-mass pixel of every instance in `labels` `(C, H, W)` int (0 = background).

    Returns `(N, 2)` int64 `(row, col)` over all classes, each centre of mass rounded half up
    to the nearest pixel (for a non-convex cell it may lie outside the cell).
    """
    _, height, width = labels.shape
    rows, cols = np.mgrid[:height, :width]
    centres = []
    for plane in labels:
        area = np.bincount(plane.ravel())[1:]
        present = area > 0
        if not present.any():
            continue
        sum_r = np.bincount(plane.ravel(), weights=rows.ravel())[1:]
        sum_c = np.bincount(plane.ravel(), weights=cols.ravel())[1:]
        mean = np.stack([sum_r[present], sum_c[present]], axis=1) / area[present, None]
        centres.append(np.floor(mean + 0.5).astype(np.int64))
    return np.concatenate(centres) if centres else np.zeros((0, 2), np.int64)


def center_heatmap(labels: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian of `sigma` px at each instance centre, max over overlapping Gaussians.

    `labels` `(C, H, W)` int (0 = background), all classes together. Returns `(H, W)` float32
    in [0, 1], exactly 1 at each centre pixel (centre of mass rounded half up), 0 without instances.
    Since exp(-d²/2σ²) falls with d, the max over all Gaussians is the Gaussian of the
    distance to the nearest centre: one Euclidean distance transform for all instances.
    """
    if sigma <= 0:
        raise ValueError(f"center_heatmap: sigma must be positive, got {sigma}")
    centres = _instance_centres(labels)
    if len(centres) == 0:
        return np.zeros(labels.shape[1:], np.float32)
    not_centre = np.ones(labels.shape[1:], bool)
    not_centre[centres[:, 0], centres[:, 1]] = False
    dist = ndimage.distance_transform_edt(not_centre)
    return np.exp(-(dist**2) / (2.0 * sigma**2)).astype(np.float32)


def boundary_map(labels: np.ndarray, width: int) -> np.ndarray:
    """Inner border, `width` px thick, of every instance, including between touching cells.

    `labels` `(C, H, W)` int (0 = background). A foreground pixel is border if a pixel of a
    different label (background or another cell of its class) lies within Chebyshev distance
    `width` (a (2w+1)² square, 8-connected); class planes are ORed. The image edge is not a
    border (edge pixels are repeated outward): a cell cut by the image edge has its true
    border outside the image. Returns `(H, W)` uint8 in {0, 1}.
    """
    if width < 1:
        raise ValueError(f"boundary_map: width must be at least 1, got {width}")
    size = (1, 2 * width + 1, 2 * width + 1)
    high = ndimage.maximum_filter(labels, size=size, mode="nearest")
    low = ndimage.minimum_filter(labels, size=size, mode="nearest")
    border = (labels > 0) & ((high != labels) | (low != labels))
    return border.any(axis=0).astype(np.uint8)


def compute_maps(labels: np.ndarray, sigma: float, width: int) -> dict[str, np.ndarray]:
    """Both maps of one image, as a maps shard stores them (`save_maps_shard`).

    Returns `center` `(H, W)` float16 in [0, 1] and `boundary` `(H, W)` uint8 in {0, 1}.
    """
    return {
        "center": center_heatmap(labels, sigma).astype(np.float16),
        "boundary": boundary_map(labels, width),
    }


def save_maps_shard(path: str | os.PathLike, maps: Iterable[tuple[str, dict[str, np.ndarray]]]) -> int:
    """Write the maps of a shard's images to one compressed npz, one image in memory at a time.

    `maps` yields `(image_id, compute_maps(...))`; the file holds `center_<i>` and
    `boundary_<i>` of the i-th image and `image_ids` (str), as `results/maps/shard_{shard}.npz`.
    Returns the number of images.
    """
    image_ids = []
    with npz_writer(path) as add:
        for i, (image_id, arrays) in enumerate(maps):
            for key in _MAP_KEYS:
                add(f"{key}_{i}", arrays[key])
            image_ids.append(image_id)
        add("image_ids", np.array(image_ids, dtype=str))
    return len(image_ids)


@contextlib.contextmanager
def open_maps_shard(path: str | os.PathLike) -> Iterator[Callable[[str], dict[str, np.ndarray]]]:
    """Yield `maps_of(image_id)`, the `center` and `boundary` of one image of a maps shard,
    read from the file only when asked for."""
    with np.load(path) as npz:
        position = {image_id: i for i, image_id in enumerate(npz["image_ids"].tolist())}
        yield lambda image_id: {key: npz[f"{key}_{position[image_id]}"] for key in _MAP_KEYS}
