"""The trained fold ensemble applied to one new image of any size, in bounded memory.

The image is cut into square blocks (`block` px, the last ones flush with the image end). Each
block is read with a `margin` around it (`ImageReader.read`), every fold model predicts that
region as `cellseg.predict.predict_image` does (tiles, seams merged, TTA), the folds are fused
with `cellseg.ensemble.fuse_instance_sets` and the tuned thresholds applied
(`cellseg.evaluation.apply_tuned`). A block keeps the cells whose box centre lies in it (with a
`CENTRE_TOLERANCE` px slack, since two regions may place a cell a little differently); a kept
cell whose mask has IoU >= 0.5 with a cell of its class kept by an earlier block is the same
cell and is dropped. Cells narrower than the margin are thus seen whole and kept once. An image
that fits one block is predicted whole, exactly as the predict stage predicts an image.

Only the kept cells' binary masks (bool crops in their windows) stay in memory, never a
full-image array; `write_labels` paints the label image tile by tile into a tiled TIFF.
Within a class, pixels claimed by two cells go to the higher score (`resolve_overlaps`), so the
label image, the polygons and the table all describe the same disjoint masks.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections import defaultdict
from dataclasses import dataclass

import numpy as np
import tifffile

from cellseg.ensemble import fuse_instance_sets
from cellseg.evaluation import apply_tuned
from cellseg.instances import InstanceSet, bounding_rect
from cellseg.io import atomic_path
from cellseg.predict import predict_image
from cellseg.segment_input import ImageReader

CENTRE_TOLERANCE = 4.0  # px a cell's box centre may lie outside a block that keeps it
DUPLICATE_IOU = 0.5
LABEL_TILE = 512  # px, tiles of labels.tif
_GRID = 64  # px, buckets of the spatial index

log = logging.getLogger("cellseg.segment")


@dataclass
class Cells:
    """The cells of one image.

    image_size: (H, W). classes: (N,) int64 class ids, 1-based. scores: (N,) float32.
    windows: (N, 4) int32 x0, y0, x1, y1 (exclusive ends) of each mask's bounding rectangle.
    masks: N bool arrays of shape (y1 - y0, x1 - x0). labels: (N,) uint32, each cell's value
    in its class's plane of the label image (1..n per class; 0 until `number` ran).
    """

    image_size: tuple[int, int]
    classes: np.ndarray
    scores: np.ndarray
    windows: np.ndarray
    masks: list[np.ndarray]
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.scores)

    @classmethod
    def from_instances(cls, found: InstanceSet, offset: tuple[int, int] = (0, 0), image_size=None) -> Cells:
        """Cells from binarised instances (`apply_tuned`'s output: probabilities 0 or 255),
        shifted by `offset` (x, y) into an image of `image_size` (default: the instances')."""
        masks, windows = [], []
        for (x0, y0, _, _), probs in zip(found.windows.tolist(), found.probs):
            rect = bounding_rect(probs > 0) or (0, 0, 0, 0)
            masks.append(probs[rect[1] : rect[3], rect[0] : rect[2]] > 0)
            windows.append((x0 + rect[0] + offset[0], y0 + rect[1] + offset[1], x0 + rect[2] + offset[0], y0 + rect[3] + offset[1]))
        return cls(
            tuple(image_size or found.image_size), found.classes.astype(np.int64), found.scores.astype(np.float32),
            np.asarray(windows, np.int32).reshape(-1, 4), masks, np.zeros(len(found), np.uint32),
        )

    def select(self, index) -> Cells:
        index = np.arange(len(self))[index]
        return Cells(
            self.image_size, self.classes[index], self.scores[index], self.windows[index],
            [self.masks[i] for i in index], self.labels[index],
        )

    @classmethod
    def concatenate(cls, image_size, parts: list[Cells]) -> Cells:
        parts = [p for p in parts if len(p)] or [cls.from_instances(InstanceSet.empty(image_size))]
        return cls(
            tuple(image_size), np.concatenate([p.classes for p in parts]), np.concatenate([p.scores for p in parts]),
            np.concatenate([p.windows for p in parts]), [m for p in parts for m in p.masks],
            np.concatenate([p.labels for p in parts]),
        )

    def mask(self, i: int) -> np.ndarray:
        """Cell `i` as a dense (H, W) bool image (for tests and small images)."""
        out = np.zeros(self.image_size, bool)
        x0, y0, x1, y1 = self.windows[i]
        out[y0:y1, x0:x1] = self.masks[i]
        return out


def predict_region(models, pixels: np.ndarray, predict: dict, ensemble: dict, thresholds: dict, device) -> InstanceSet:
    """The tuned ensemble's instances in `pixels` (h, w, 3) uint8: each model as
    `predict_image(model, pixels, device=device, **predict)`, fused with
    `fuse_instance_sets(..., **ensemble)`, then `apply_tuned` (binary masks)."""
    views = [predict_image(model, pixels, device=device, **predict) for model in models]
    return apply_tuned([fuse_instance_sets(views, **ensemble)], thresholds)[0]


def block_grid(height: int, width: int, block: int) -> list[tuple[int, int, int, int]]:
    """Blocks y0, y1, x0, x1 covering the image row by row without overlap, `block` px square
    (smaller at the last row / column)."""
    return [
        (y, min(y + block, height), x, min(x + block, width))
        for y in range(0, height, block)
        for x in range(0, width, block)
    ]


def segment_image(
    reader: ImageReader,
    models,
    predict: dict,
    ensemble: dict,
    thresholds: dict,
    device,
    block: int = 2048,
    margin: int = 128,
    name: str = "",
    normalise=None,
) -> Cells:
    """The cells of the image `reader` reads, block by block (module doc), overlaps resolved
    and numbered (`resolve_overlaps`). `normalise(pixels, name)`, when given, maps each block
    (with its margin) onto the stain target (`cellseg.stain`) before the models see it; the
    exported colours stay the file's. Logs one progress line per block with an ETA."""
    height, width = reader.size
    blocks = block_grid(height, width, block)
    index: dict[tuple[int, int], list[int]] = defaultdict(list)
    kept: list[Cells] = []
    accepted = Cells.from_instances(InstanceSet.empty((height, width)))
    start = time.monotonic()
    for k, (y0, y1, x0, x1) in enumerate(blocks, 1):
        ry0, ry1, rx0, rx1 = max(0, y0 - margin), min(height, y1 + margin), max(0, x0 - margin), min(width, x1 + margin)
        pixels = reader.read(ry0, ry1, rx0, rx1)
        if normalise is not None:
            pixels = normalise(pixels, f"{name} block {k}")
        found = predict_region(models, pixels, predict, ensemble, thresholds, device)
        cx = (found.boxes[:, 0] + found.boxes[:, 2]) / 2 + rx0
        cy = (found.boxes[:, 1] + found.boxes[:, 3]) / 2 + ry0
        tol = CENTRE_TOLERANCE if len(blocks) > 1 else math.inf
        own = (cx >= x0 - tol) & (cx < x1 + tol) & (cy >= y0 - tol) & (cy < y1 + tol)
        cells = Cells.from_instances(found.select(own), (rx0, ry0), (height, width))
        cells = cells.select([not _duplicate(cells, i, accepted, index) for i in range(len(cells))])
        kept.append(cells)
        accepted = Cells.concatenate((height, width), kept)
        first = len(accepted) - len(cells)
        for i in range(len(cells)):
            for key in _buckets(cells.windows[i]):
                index[key].append(first + i)
        elapsed = time.monotonic() - start
        log.info(
            "%s: block %d/%d, %d cells so far, %.0f s elapsed, ETA %.0f s",
            name, k, len(blocks), len(accepted), elapsed, elapsed / k * (len(blocks) - k),
        )
    return resolve_overlaps(accepted)


def _buckets(window) -> list[tuple[int, int]]:
    x0, y0, x1, y1 = (int(v) for v in window)
    return [(by, bx) for by in range(y0 // _GRID, (y1 - 1) // _GRID + 1) for bx in range(x0 // _GRID, (x1 - 1) // _GRID + 1)]


def _candidates(window, index) -> set[int]:
    return {j for key in _buckets(window) for j in index.get(key, ())}


def _duplicate(cells: Cells, i: int, accepted: Cells, index) -> bool:
    """Whether cell `i` is a cell of its class already in `accepted` (mask IoU >= 0.5)."""
    return any(
        accepted.classes[j] == cells.classes[i] and _iou(cells, i, accepted, j) >= DUPLICATE_IOU
        for j in _candidates(cells.windows[i], index)
    )


def _iou(a: Cells, i: int, b: Cells, j: int) -> float:
    (ax0, ay0, ax1, ay1), (bx0, by0, bx1, by1) = a.windows[i].tolist(), b.windows[j].tolist()
    x0, y0, x1, y1 = max(ax0, bx0), max(ay0, by0), min(ax1, bx1), min(ay1, by1)
    if x0 >= x1 or y0 >= y1:
        return 0.0
    inter = np.count_nonzero(
        a.masks[i][y0 - ay0 : y1 - ay0, x0 - ax0 : x1 - ax0] & b.masks[j][y0 - by0 : y1 - by0, x0 - bx0 : x1 - bx0]
    )
    return inter / (a.masks[i].sum() + b.masks[j].sum() - inter)


def resolve_overlaps(cells: Cells) -> Cells:
    """Disjoint masks within each class: a pixel goes to the highest-scoring cell claiming it
    (the earlier one on a tie); cells left empty are dropped, windows shrunk to their masks,
    and cells numbered 1..n per class in their order (`labels`)."""
    index: dict[tuple[int, int], list[int]] = defaultdict(list)
    masks = [m.copy() for m in cells.masks]
    windows = cells.windows.copy()
    for i in np.argsort(-cells.scores, kind="stable").tolist():
        ax0, ay0, ax1, ay1 = windows[i].tolist()
        for j in _candidates(windows[i], index):
            if cells.classes[j] != cells.classes[i]:
                continue
            bx0, by0, bx1, by1 = windows[j].tolist()
            x0, y0, x1, y1 = max(ax0, bx0), max(ay0, by0), min(ax1, bx1), min(ay1, by1)
            if x0 < x1 and y0 < y1:
                masks[i][y0 - ay0 : y1 - ay0, x0 - ax0 : x1 - ax0] &= ~masks[j][y0 - by0 : y1 - by0, x0 - bx0 : x1 - bx0]
        for key in _buckets(windows[i]):
            index[key].append(i)
    keep = np.zeros(len(cells), bool)
    for i, mask in enumerate(masks):
        rect = bounding_rect(mask)
        if rect:
            keep[i] = True
            masks[i] = mask[rect[1] : rect[3], rect[0] : rect[2]]
            windows[i] = np.add(windows[i, :2].tolist() * 2, rect)
    out = Cells(cells.image_size, cells.classes, cells.scores, windows, masks, cells.labels.copy()).select(keep)
    for class_id in np.unique(out.classes):
        members = np.flatnonzero(out.classes == class_id)
        out.labels[members] = np.arange(1, len(members) + 1, dtype=np.uint32)
    return out


def label_tiles(cells: Cells, n_classes: int, tile: int = LABEL_TILE):
    """The label image (C, H, W) uint32 as (tile, tile) tiles, class plane by plane, rows of
    tiles top to bottom, left to right (the order tifffile writes them), zero-padded at the end."""
    height, width = cells.image_size
    grid: dict[tuple[int, int, int], list[int]] = defaultdict(list)
    for i, (x0, y0, x1, y1) in enumerate(cells.windows.tolist()):
        for ty in range(y0 // tile, (y1 - 1) // tile + 1):
            for tx in range(x0 // tile, (x1 - 1) // tile + 1):
                grid[(int(cells.classes[i]), ty, tx)].append(i)
    for class_id in range(1, n_classes + 1):
        for ty in range(-(-height // tile)):
            for tx in range(-(-width // tile)):
                out = np.zeros((tile, tile), np.uint32)
                oy, ox = ty * tile, tx * tile
                for i in grid.get((class_id, ty, tx), ()):
                    x0, y0, x1, y1 = cells.windows[i].tolist()
                    cy0, cy1, cx0, cx1 = max(y0, oy), min(y1, oy + tile), max(x0, ox), min(x1, ox + tile)
                    region = out[cy0 - oy : cy1 - oy, cx0 - ox : cx1 - ox]
                    region[cells.masks[i][cy0 - y0 : cy1 - y0, cx0 - x0 : cx1 - x0]] = cells.labels[i]
                yield out


def write_labels(path: str | os.PathLike, cells: Cells, n_classes: int, tile: int = LABEL_TILE) -> None:
    """labels.tif: (C, H, W) uint32 instance labels (plane c = class c + 1, 0 = background), a
    zlib-compressed tiled TIFF (BigTIFF when over 2 GB) written tile by tile, atomically."""
    height, width = cells.image_size
    with atomic_path(path) as tmp:
        tifffile.imwrite(
            tmp, label_tiles(cells, n_classes, tile), shape=(n_classes, height, width), dtype=np.uint32,
            tile=(tile, tile), compression="zlib", photometric="minisblack",
            bigtiff=n_classes * height * width * 4 > 2**31,
        )
