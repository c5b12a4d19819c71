"""A synthetic H&E-like dataset, so that a fresh clone runs end to end with no download.

It is written in format 1 with the real files' quirks (RGBA uint8 images, LZW with a
horizontal predictor; float64 masks, zlib, whose instance ids skip; absent class files), so
the demo exercises the same reading code as real data. The four classes differ clearly in
colour, size, shape and texture, so that a small model learns them in a few dozen steps:

- class1: large irregular pale-lavender cells (radius ~10-15 px), soft texture;
- class2: small round dark-blue nuclei (radius ~4.5-6.5 px), nearly flat;
- class3: medium red ovals (semi-axes ~9-12 x 5-7 px), smooth;
- class4: violet multi-lobed cells (3-4 lobes, radius ~9-12 px), speckled.

Cells touch and overlap; cells of different classes overlap (each class has its own file,
later classes are painted on top in the image); within a class a later cell overwrites an
earlier one. Everything is drawn from the seed and the image's name, so the same seed gives
byte-identical files.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from cellseg.common.files import atomic_path, write_tiff
from cellseg.common.images import relabel_consecutive


@dataclass(frozen=True)
class _Style:
    """How one class looks: size and shape ranges, colour (RGB 0-255) and texture."""

    radius: tuple[float, float]  # mean radius range, px
    aspect: tuple[float, float]  # long / short axis ratio range
    wobble: float  # amplitude of the random boundary harmonics (irregularity)
    lobes: tuple[int, ...]  # numbers of lobes to choose from; () = no lobes
    colour: tuple[float, float, float]
    texture: float  # amplitude of the in-cell noise, grey levels
    texture_sigma: float  # its grain size, px
    weight: float  # relative frequency among the cells of an image


_STYLES = (
    _Style((10.0, 15.0), (1.0, 1.4), 0.12, (), (196, 150, 212), 14.0, 2.0, 1.0),
    _Style((4.5, 6.5), (1.0, 1.2), 0.03, (), (62, 38, 118), 5.0, 1.0, 2.0),
    _Style((7.0, 8.5), (1.6, 2.2), 0.03, (), (214, 72, 96), 6.0, 1.5, 1.2),
    _Style((9.0, 12.0), (1.0, 1.15), 0.04, (3, 4), (118, 58, 166), 22.0, 0.7, 1.0),
)
_BACKGROUND = np.array([238.0, 204.0, 222.0])
_MIN_PIXELS = 30  # instances left smaller than this after overwriting are removed
_RIM = 0.72  # brightness of a cell's outline


def demo_ids(n_train: int, n_test: int) -> tuple[list[str], list[str]]:
    """Names of the demo's training images and test images (without `.tif`), without drawing."""
    return [f"demo_train_{i:03d}" for i in range(n_train)], [
        f"demo_test_{i:03d}" for i in range(n_test)
    ]


def write_demo_dataset(
    out_dir: str | os.PathLike,
    seed: int = 0,
    n_train: int = 24,
    n_test: int = 6,
    min_size: int = 40,
    max_size: int = 256,
    n_classes: int = 4,
) -> None:
    """Write the demo dataset in format 1 into `out_dir` (best absent or empty).

    Writes `train/<id>/image.tif` + `class<k>.tif` (only for classes present in the image),
    `test_release/<name>.tif`, `test_image_name_to_ids.json` and the test ground truth
    `test_gt/<name>/class<k>.tif` (every class, all-zero where absent). In each split the first
    image is `min_size x ~2.25*min_size`, the second `max_size x max_size`, the third lacks the
    last class; the rest have random sizes in `[min_size, max_size]`.
    """
    out = Path(out_dir)
    train_ids, test_names = demo_ids(n_train, n_test)
    for i, image_id in enumerate(train_ids):
        rgba, labels = _draw_image(seed, 0, i, min_size, max_size, n_classes)
        folder = out / "train" / image_id
        write_tiff(folder / "image.tif", rgba, compression="lzw", predictor=True)
        for c, plane in enumerate(labels):
            if plane.any():
                write_tiff(folder / f"class{c + 1}.tif", plane, compression="zlib")
    id_map = []
    for i, name in enumerate(test_names):
        rgba, labels = _draw_image(seed, 1, i, min_size, max_size, n_classes)
        write_tiff(out / "test_release" / f"{name}.tif", rgba, compression="lzw", predictor=True)
        for c, plane in enumerate(labels):
            write_tiff(out / "test_gt" / name / f"class{c + 1}.tif", plane, compression="zlib")
        id_map.append(
            {
                "file_name": f"{name}.tif",
                "id": i + 1,
                "height": rgba.shape[0],
                "width": rgba.shape[1],
            }
        )
    with atomic_path(out / "test_image_name_to_ids.json") as tmp:
        tmp.write_text(json.dumps(id_map, indent=1) + "\n")


def _draw_image(seed: int, split: int, index: int, min_size: int, max_size: int, n_classes: int):
    """Draw one image: `(H, W, 4) uint8` RGBA and `(C, H, W) float64` masks with skipping ids."""
    rng = np.random.default_rng([seed, split, index])
    if index == 0:
        shape = (min_size, min(max_size, round(2.25 * min_size)))
    elif index == 1:
        shape = (max_size, max_size)
    else:
        shape = tuple(int(s) for s in rng.integers(min_size, max_size + 1, size=2))
    present = list(range(n_classes))
    if n_classes > 1 and (index == 2 or rng.random() < 0.2):
        present.remove(n_classes - 1 if index == 2 else int(rng.integers(n_classes)))
    labels = _draw_labels(rng, shape, n_classes, present)
    rgb = _render(rng, labels)
    alpha = np.full((*shape, 1), 255, np.uint8)
    return np.concatenate([rgb, alpha], axis=2), _skipping_ids(rng, labels)


def _draw_labels(
    rng: np.random.Generator, shape: tuple[int, int], n_classes: int, present: list[int]
) -> np.ndarray:
    """Place 5-40 cells of the present classes; `(C, H, W) int32`, instances 1..n per class.

    About a third of the cells are placed against an earlier cell, so that cells touch and
    overlap; a later cell of the same class overwrites an earlier one, and slivers left smaller
    than `_MIN_PIXELS` are removed.
    """
    height, width = shape
    labels = np.zeros((n_classes, height, width), np.int32)
    weights = np.array([_STYLES[c].weight for c in present])
    n_cells = int(np.clip(round(height * width * 5.5e-4), 5, 40))
    counts = np.zeros(n_classes, np.int32)
    centres: list[tuple[float, float, float]] = []
    for _ in range(n_cells):
        c = present[rng.choice(len(present), p=weights / weights.sum())]
        style = _STYLES[c]
        radius = rng.uniform(*style.radius)
        if centres and rng.random() < 0.35:
            y, x, r = centres[rng.integers(len(centres))]
            angle = rng.uniform(0, 2 * np.pi)
            distance = (r + radius) * rng.uniform(0.7, 1.0)
            cy = float(np.clip(y + distance * np.sin(angle), 0, height - 1))
            cx = float(np.clip(x + distance * np.cos(angle), 0, width - 1))
        else:
            cy, cx = rng.uniform(0, height), rng.uniform(0, width)
        centres.append((cy, cx, radius))
        window, inside = _cell_shape(rng, style, radius, cy, cx, shape)
        counts[c] += 1
        labels[c][window][inside] = counts[c]
    for c in range(n_classes):
        sizes = np.bincount(labels[c].ravel())
        small = np.flatnonzero(sizes < _MIN_PIXELS)
        labels[c][np.isin(labels[c], small[small > 0])] = 0
        labels[c] = relabel_consecutive(labels[c])
    return labels


def _cell_shape(
    rng: np.random.Generator, style: _Style, radius: float, cy: float, cx: float, shape
):
    """One cell's bounding window (a pair of slices) and `(h, w)` bool mask inside it.

    The outline is an ellipse of the style's aspect ratio, at a random angle, whose radius
    varies with the polar angle by random harmonics (irregularity) and, for lobed styles, by
    `|cos(n * theta / 2)|` (n lobes).
    """
    aspect = rng.uniform(*style.aspect)
    a, b = radius * np.sqrt(aspect), radius / np.sqrt(aspect)
    extent = int(np.ceil(a * (1 + 4 * style.wobble))) + 2
    y0, y1 = max(0, int(cy) - extent), min(shape[0], int(cy) + extent + 1)
    x0, x1 = max(0, int(cx) - extent), min(shape[1], int(cx) + extent + 1)
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
    yy -= cy
    xx -= cx
    rotation = rng.uniform(0, np.pi)
    u = (xx * np.cos(rotation) + yy * np.sin(rotation)) / a
    v = (-xx * np.sin(rotation) + yy * np.cos(rotation)) / b
    theta = np.arctan2(v, u)
    edge = np.ones_like(theta)
    amplitudes, phases = rng.uniform(0, style.wobble, 4), rng.uniform(0, 2 * np.pi, 4)
    for k, amplitude, phase in zip(range(2, 6), amplitudes, phases, strict=True):
        edge += amplitude * np.cos(k * theta + phase)
    if style.lobes:
        n_lobes = int(rng.choice(style.lobes))
        edge *= 0.62 + 0.38 * np.abs(np.cos(n_lobes * (theta + rng.uniform(0, np.pi)) / 2))
    return (slice(y0, y1), slice(x0, x1)), np.hypot(u, v) <= edge


def _smooth_noise(rng: np.random.Generator, shape, sigma: float) -> np.ndarray:
    """Gaussian-filtered white noise, rescaled to unit standard deviation; `shape` float32."""
    noise = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma)
    return noise / max(float(noise.std()), 1e-6)


def _render(rng: np.random.Generator, labels: np.ndarray) -> np.ndarray:
    """Paint the image from its labels: `(H, W, 3) uint8` RGB.

    Textured pink background (smooth noise), then each class in order (later classes on top),
    each cell with its own brightness, the class texture and a darker outline; finally a slight
    blur and pixel noise.
    """
    shape = labels.shape[1:]
    tint = np.array([0.7, 1.0, 0.6])
    image = (
        _BACKGROUND
        + (14 * _smooth_noise(rng, shape, 8) + 5 * _smooth_noise(rng, shape, 2))[..., None] * tint
    )
    for c, plane in enumerate(labels):
        style = _STYLES[c]
        brightness = rng.uniform(0.88, 1.12, plane.max() + 1).astype(np.float32)
        texture = style.texture * _smooth_noise(rng, shape, style.texture_sigma)
        cell = (
            np.asarray(style.colour, np.float32) * brightness[plane][..., None] + texture[..., None]
        )
        rim = _outline(plane)
        cell[rim] *= _RIM
        inside = plane > 0
        image[inside] = cell[inside]
    image = ndimage.gaussian_filter(image, sigma=(0.6, 0.6, 0))
    image += rng.normal(0, 4, image.shape)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def _outline(plane: np.ndarray) -> np.ndarray:
    """`(H, W)` bool: instance pixels with a 4-neighbour of another label (or background)."""
    padded = np.pad(plane, 1, mode="edge")
    centre = padded[1:-1, 1:-1]
    differs = (
        (padded[:-2, 1:-1] != centre)
        | (padded[2:, 1:-1] != centre)
        | (padded[1:-1, :-2] != centre)
        | (padded[1:-1, 2:] != centre)
    )
    return differs & (plane > 0)


def _skipping_ids(rng: np.random.Generator, labels: np.ndarray) -> np.ndarray:
    """Renumber each plane's 1..n to increasing ids with random gaps (max id > n), as float64."""
    out = np.zeros(labels.shape, np.float64)
    for c, plane in enumerate(labels):
        n = int(plane.max())
        ids = np.concatenate([[0], 1 + np.cumsum(rng.integers(1, 4, n))]).astype(np.float64)
        out[c] = ids[plane]
    return out
