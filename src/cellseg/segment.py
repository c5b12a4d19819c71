"""The trained fold ensemble applied to one new image of any size, in bounded memory.

The image is cut into square blocks (`block` px, the last ones flush with the image end). Each
block is read with a `margin` around it (`ImageReader.read`) and run through the one inference
path at the `cells` operating point (`cellseg.inference.infer`: every fold as the predict
stage runs it, calibration and fusion as the ensemble stage, the tuned thresholds with one
class per cell and one cell per pixel). A block keeps the cells whose box centre lies in it
(with a `CENTRE_TOLERANCE` px slack, since two regions may place a cell a little
differently); a kept cell whose mask has IoU >= 0.5 with a cell of any class kept by an
earlier block is the same cell and is dropped. Cells narrower than the margin are thus seen
whole and kept once. An image that fits one block gives exactly the instances the workflow
gives an image at the `cells` point.

Only the kept cells' binary masks (in their windows) stay in memory, never a full-image
array; `write_labels` paints the label image tile by tile into a tiled TIFF. Pixels that two
blocks' cells both claim go to the higher score (`cellseg.overlaps.exclusive_pixels`), so the
label image, the polygons and the table all describe the same disjoint cells, one class each.
"""

from __future__ import annotations

import logging
import math
from collections import defaultdict
import os
import time

import numpy as np
import tifffile

from cellseg.inference import FoldEnsemble, infer
from cellseg.instances import InstanceSet
from cellseg.io import atomic_path
from cellseg.overlaps import WindowIndex, exclusive_pixels, window_iou
from cellseg.segment_input import ImageReader

CENTRE_TOLERANCE = 4.0  # px a cell's box centre may lie outside a block that keeps it
DUPLICATE_IOU = 0.5
LABEL_TILE = 512  # px, tiles of labels.tif

log = logging.getLogger("cellseg.segment")


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
    ensemble: FoldEnsemble,
    point: dict,
    block: int = 2048,
    margin: int = 128,
    name: str = "",
    normalise=None,
    mpp: float | None = None,
    blocks: list[tuple[int, int, int, int]] | None = None,
) -> InstanceSet:
    """The cells of the image `reader` reads, block by block (module doc), at the operating
    point `point` (the `cells` one of thresholds.json): binary, disjoint instances of size
    (H, W) with their `class_scores`. `normalise(pixels, name)`, when given, maps each block
    (with its margin) onto the stain target (`cellseg.stain`) before the models see it; the
    exported colours stay the file's. `mpp`: the image's µm per pixel (None = the training
    pixel size); each block is resampled to the training pixel size for the network and its
    cells mapped back (`cellseg.pixel_size`). `blocks`: the blocks of `block_grid` to predict
    (None = all; `cellseg.tissue.tissue_blocks`). Logs one progress line per block with an ETA."""
    height, width = reader.size
    blocks = block_grid(height, width, block) if blocks is None else blocks
    index = WindowIndex()
    kept: list[InstanceSet] = []
    accepted = InstanceSet.empty((height, width))
    start = time.monotonic()
    for k, (y0, y1, x0, x1) in enumerate(blocks, 1):
        ry0, ry1, rx0, rx1 = max(0, y0 - margin), min(height, y1 + margin), max(0, x0 - margin), min(width, x1 + margin)
        pixels = reader.read(ry0, ry1, rx0, rx1)
        if normalise is not None:
            pixels = normalise(pixels, f"{name} block {k}")
        found = infer(ensemble, pixels, point, mpp)
        cx = (found.boxes[:, 0] + found.boxes[:, 2]) / 2 + rx0
        cy = (found.boxes[:, 1] + found.boxes[:, 3]) / 2 + ry0
        tol = CENTRE_TOLERANCE if len(blocks) > 1 else math.inf
        own = (cx >= x0 - tol) & (cx < x1 + tol) & (cy >= y0 - tol) & (cy < y1 + tol)
        cells = shifted(found.select(own), (rx0, ry0), (height, width))
        cells = cells.select([not _duplicate(cells, i, accepted, index) for i in range(len(cells))])
        kept.append(cells)
        accepted = InstanceSet.concatenate(kept)
        first = len(accepted) - len(cells)
        for i in range(len(cells)):
            index.add(first + i, cells.windows[i])
        elapsed = time.monotonic() - start
        log.info(
            "%s: block %d/%d, %d cells so far, %.0f s elapsed, ETA %.0f s",
            name, k, len(blocks), len(accepted), elapsed, elapsed / k * (len(blocks) - k),
        )
    return exclusive_pixels(accepted)


def shifted(found: InstanceSet, offset: tuple[int, int], image_size: tuple[int, int]) -> InstanceSet:
    """The instances of a region whose pixel (0, 0) is pixel `offset` (x, y) of an image of
    `image_size` (H, W), in that image's coordinates."""
    shift = np.array([*offset, *offset])
    return InstanceSet(
        (int(image_size[0]), int(image_size[1])), found.boxes + shift.astype(np.float32), found.scores, found.classes,
        (found.windows + shift).astype(np.int32), found.probs, found.class_scores,
    )


def _duplicate(cells: InstanceSet, i: int, accepted: InstanceSet, index: WindowIndex) -> bool:
    """Whether cell `i` is a cell already in `accepted` (mask IoU >= 0.5, whatever the class)."""
    return any(window_iou(cells, i, accepted, j) >= DUPLICATE_IOU for j in index.candidates(cells.windows[i]))


def cell_labels(cells: InstanceSet) -> np.ndarray:
    """(N,) uint32: each cell's value in its class's plane of the label image, 1..n per class
    in the cells' order."""
    labels = np.zeros(len(cells), np.uint32)
    for class_id in np.unique(cells.classes):
        members = np.flatnonzero(cells.classes == class_id)
        labels[members] = np.arange(1, len(members) + 1, dtype=np.uint32)
    return labels


def label_tiles(cells: InstanceSet, n_classes: int, tile: int = LABEL_TILE):
    """The label image (C, H, W) uint32 of binary instances `cells` (values `cell_labels`) as
    (tile, tile) tiles, class plane by plane, rows of tiles top to bottom, left to right (the
    order tifffile writes them), zero-padded at the end."""
    height, width = cells.image_size
    labels = cell_labels(cells)
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
                    region[cells.window_mask(i)[cy0 - y0 : cy1 - y0, cx0 - x0 : cx1 - x0]] = labels[i]
                yield out


def write_labels(path: str | os.PathLike, cells: InstanceSet, n_classes: int, tile: int = LABEL_TILE) -> None:
    """labels.tif: (C, H, W) uint32 instance labels (plane c = class c + 1, 0 = background), a
    zlib-compressed tiled TIFF (BigTIFF when over 2 GB) written tile by tile, atomically."""
    height, width = cells.image_size
    with atomic_path(path) as tmp:
        tifffile.imwrite(
            tmp, label_tiles(cells, n_classes, tile), shape=(n_classes, height, width), dtype=np.uint32,
            tile=(tile, tile), compression="zlib", photometric="minisblack",
            bigtiff=n_classes * height * width * 4 > 2**31,
        )
