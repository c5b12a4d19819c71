"""A large image's cells finalised block by block, holding only the seam band.

Blocks are predicted in raster order (`cellseg.inference.segment` has the block rules: centre ownership,
duplicates across blocks). A cell is *final* once no block still to come reads a pixel of its
window: no later cell can then be its duplicate or claim one of its pixels. Only the cells that
are not final yet are held — those of the current block and those reaching into the margin of
the next block row, the seam band — so memory does not grow with the image.

A pixel claimed by several cells goes to the one of highest score (the earlier on a tie), as
`cellseg.inference.ownership.exclusive_pixels` decides it for a whole image: that owner depends only on
the cells whose windows hold the pixel, all known when either is finalised. A cell being
finalised gives up its pixels to the higher-ranked cells still held, and takes its pixels from
the lower-ranked ones, so that each decision is made once.
"""

from __future__ import annotations

import logging
import math
import time
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np

from cellseg.common.instances import InstanceSet, bounding_rect
from cellseg.common.iou import mask_iou, window_overlap
from cellseg.data.image_reader import ImageReader
from cellseg.inference.fold_ensemble import FoldEnsemble, infer
from cellseg.inference.ownership import grid_buckets

CENTRE_TOLERANCE = 4.0  # px a cell's box centre may lie outside a block that keeps it
DUPLICATE_IOU = 0.5

log = logging.getLogger(__name__)


def block_grid(height: int, width: int, block: int) -> list[tuple[int, int, int, int]]:
    """Blocks y0, y1, x0, x1 covering the image row by row without overlap, `block` px square
    (smaller at the last row / column)."""
    return [
        (y, min(y + block, height), x, min(x + block, width))
        for y in range(0, height, block)
        for x in range(0, width, block)
    ]


@dataclass
class _Cell:
    """A cell not yet final: `mask` as found (h, w) bool in `window` x0, y0, x1, y1; `kept` the
    pixels no higher-ranked final cell took; `pixels` (h, w, 3) uint8 the file's colours."""

    seq: int
    window: tuple[int, int, int, int]
    mask: np.ndarray
    kept: np.ndarray
    score: float
    class_id: int
    class_scores: np.ndarray | None
    box: np.ndarray
    pixels: np.ndarray

    def outranks(self, other: _Cell) -> bool:
        return self.score > other.score or (self.score == other.score and self.seq < other.seq)


class SeamBand:
    """The held cells, bucketed on the grid of `grid_buckets` by their windows."""

    def __init__(self):
        self.cells: dict[int, _Cell] = {}
        self._grid: dict[tuple[int, int], set[int]] = defaultdict(set)

    def add(self, cell: _Cell) -> None:
        self.cells[cell.seq] = cell
        for key in grid_buckets(cell.window):
            self._grid[key].add(cell.seq)

    def remove(self, cell: _Cell) -> None:
        del self.cells[cell.seq]
        for key in grid_buckets(cell.window):
            self._grid[key].discard(cell.seq)
            if not self._grid[key]:
                del self._grid[key]

    def near(self, window) -> list[_Cell]:
        """Held cells whose windows share a grid bucket with `window`."""
        seqs = {s for key in grid_buckets(window) for s in self._grid.get(key, ())}
        return [self.cells[s] for s in sorted(seqs)]

    def duplicate(self, window, mask: np.ndarray) -> bool:
        """Whether a cell of `mask` in `window` is one held already (mask IoU >= 0.5)."""
        return any(mask_iou(window, mask, c.window, c.mask) >= DUPLICATE_IOU for c in self.near(window))

    def release(self, pending) -> list[_Cell]:
        """Remove and return, in arrival order, the cells whose windows miss `pending` (a
        rectangle y0, y1, x0, x1 or None, and a row y from which every pixel is pending, or
        None), each with its exclusive pixels resolved (module doc)."""
        rect, below = pending
        final = []
        for cell in list(self.cells.values()):
            x0, y0, x1, y1 = cell.window
            hit = rect is not None and x0 < rect[3] and x1 > rect[2] and y0 < rect[1] and y1 > rect[0]
            if not hit and (below is None or y1 <= below):
                final.append(cell)
        for cell in final:
            for other in self.near(cell.window):
                if other is not cell:
                    _resolve(cell, other)
            self.remove(cell)
        return final


def _resolve(final: _Cell, other: _Cell) -> None:
    """The pixels both cells claim go to the higher-ranked one."""
    common = window_overlap(final.window, other.window)
    if common is None:
        return
    if other.outranks(final):
        final.kept[common[0]] &= ~other.mask[common[1]]
    else:
        other.kept[common[1]] &= ~final.mask[common[0]]


def pending_area(rest: list[tuple[int, int, int, int]], margin: int, size: tuple[int, int]):
    """What the blocks `rest` (raster order) will still read: the bounding rectangle (y0, y1,
    x0, x1) of the reads of the first row among them, and the top of the reads of the rows
    after it (None without them). (None, None) when nothing is left."""
    if not rest:
        return None, None
    height, width = size
    row = [b for b in rest if b[0] == rest[0][0]]
    rect = (
        max(0, row[0][0] - margin), min(height, row[0][1] + margin),
        max(0, min(b[2] for b in row) - margin), min(width, max(b[3] for b in row) + margin),
    )
    later = [b[0] for b in rest[len(row):]]
    return rect, (max(0, min(later) - margin) if later else None)


@dataclass
class BlockCells:
    """The cells one block owns (box centre in it) as the network found them, in the image's
    pixels: `windows` (N, 4) int32 x0, y0, x1, y1; `masks` N (h, w) bool in them; `scores` (N,),
    `classes` (N,) int64, `class_scores` (N, C) or None, `boxes` (N, 4) float32."""

    windows: np.ndarray
    masks: list[np.ndarray]
    scores: np.ndarray
    classes: np.ndarray
    class_scores: np.ndarray | None
    boxes: np.ndarray


def block_read(block: tuple[int, int, int, int], margin: int, size: tuple[int, int]) -> tuple[int, int, int, int]:
    """The rectangle y0, y1, x0, x1 a block is read with: the block and its margin, clipped."""
    y0, y1, x0, x1 = block
    return max(0, y0 - margin), min(size[0], y1 + margin), max(0, x0 - margin), min(size[1], x1 + margin)


def predict_blocks(
    reader: ImageReader,
    ensemble: FoldEnsemble,
    point: dict,
    blocks: list[tuple[int, int, int, int]],
    margin: int,
    one_block: bool = False,
    name: str = "",
    normalise=None,
    mpp: float | None = None,
) -> Iterator[tuple[BlockCells, np.ndarray]]:
    """Per block of `blocks`, the cells it owns and the pixels it was read with (file colours).
    `one_block`: the image's prediction is this single block, which then keeps every cell it
    finds (no centre rule). A block's cells do not depend on the other blocks, so any subset of the image's
    blocks can be predicted apart (`cellseg.inference.region_file`)."""
    tol = math.inf if one_block else CENTRE_TOLERANCE
    for k, (y0, y1, x0, x1) in enumerate(blocks, 1):
        ry0, ry1, rx0, rx1 = block_read((y0, y1, x0, x1), margin, reader.size)
        raw = reader.read(ry0, ry1, rx0, rx1)
        pixels = normalise(raw, f"{name} block {k}") if normalise is not None else raw
        found = infer(ensemble, pixels, point, mpp)
        cx = (found.boxes[:, 0] + found.boxes[:, 2]) / 2 + rx0
        cy = (found.boxes[:, 1] + found.boxes[:, 3]) / 2 + ry0
        own = np.flatnonzero((cx >= x0 - tol) & (cx < x1 + tol) & (cy >= y0 - tol) & (cy < y1 + tol))
        offset = np.array([rx0, ry0, rx0, ry0])
        cells = BlockCells(
            (found.windows[own] + offset).astype(np.int32).reshape(-1, 4),
            [found.window_mask(i) for i in own.tolist()],
            found.scores[own].astype(np.float32),
            found.classes[own].astype(np.int64),
            None if found.class_scores is None else found.class_scores[own].astype(np.float32),
            (found.boxes[own] + offset.astype(np.float32)).reshape(-1, 4),
        )
        yield cells, raw


def finalise_cells(
    found: Iterable[tuple[BlockCells, np.ndarray]],
    blocks: list[tuple[int, int, int, int]],
    margin: int,
    size: tuple[int, int],
    name: str = "",
) -> Iterator[tuple[InstanceSet, np.ndarray]]:
    """Per block of `blocks` (raster order), given its cells and read pixels in that order
    (`predict_blocks`, or region files), the cells that became final (module doc): binary,
    disjoint instances of `size`, and (N, 4) their mean R, G, B and optical density. Logs one
    progress line per block with an ETA."""
    band = SeamBand()
    seq = done = 0
    start = time.monotonic()
    for k, (block, (cells, raw)) in enumerate(zip(blocks, found, strict=True), 1):
        ry0, _, rx0, _ = block_read(block, margin, size)
        new = []
        for i, (x0, y0, x1, y1) in enumerate(cells.windows.tolist()):
            window, mask = (x0, y0, x1, y1), cells.masks[i]
            if band.duplicate(window, mask):
                continue
            class_scores = None if cells.class_scores is None else cells.class_scores[i]
            pixels = raw[y0 - ry0:y1 - ry0, x0 - rx0:x1 - rx0].copy()
            new.append(_Cell(seq, window, mask, mask.copy(), float(cells.scores[i]), int(cells.classes[i]),
                             class_scores, cells.boxes[i], pixels))
            seq += 1
        for cell in new:
            band.add(cell)
        final = band.release(pending_area(blocks[k:], margin, size))
        batch, means = _finished(final, size)
        done += len(batch)
        elapsed = time.monotonic() - start
        log.info(
            "%s: block %d/%d, %d cells final, %d held, %.0f s elapsed, ETA %.0f s",
            name, k, len(blocks), done, len(band.cells), elapsed, elapsed / k * (len(blocks) - k),
        )
        yield batch, means


def stream_cells(
    reader: ImageReader,
    ensemble: FoldEnsemble,
    point: dict,
    block: int = 2048,
    margin: int = 128,
    name: str = "",
    normalise=None,
    mpp: float | None = None,
    blocks: list[tuple[int, int, int, int]] | None = None,
) -> Iterator[tuple[InstanceSet, np.ndarray]]:
    """Per block (of `block_grid`, or the given `blocks` in raster order), the cells that became
    final at the operating point `point` (the `cells` one of thresholds.json): binary, disjoint
    instances of the reader's size, and (N, 4) their mean R, G, B and optical density over their
    pixels in the file's colours. `normalise(pixels, name)`, when given, maps each block (with
    its margin) onto the stain target (`cellseg.data.stain`) before the models see it; the
    exported colours stay the file's. `mpp`: the image's µm per pixel (None = the training pixel
    size); each block is resampled to the training pixel size for the network and its cells
    mapped back (`cellseg.common.pixel_size`). `blocks`: the blocks to predict (None = all;
    `cellseg.data.tissue.tissue_blocks`)."""
    blocks = block_grid(*reader.size, block) if blocks is None else list(blocks)
    found = predict_blocks(reader, ensemble, point, blocks, margin, len(blocks) == 1, name, normalise, mpp)
    return finalise_cells(found, blocks, margin, reader.size, name)


def _finished(cells: list[_Cell], size: tuple[int, int]) -> tuple[InstanceSet, np.ndarray]:
    """The final cells that kept a pixel, as binary instances in shrunk windows, and their
    mean colours (`stream_cells`)."""
    windows, probs, means, keep = [], [], [], []
    for cell in cells:
        rect = bounding_rect(cell.kept)
        if rect is None:
            continue
        left, top, right, bottom = rect
        kept = cell.kept[top:bottom, left:right]
        colours = cell.pixels[top:bottom, left:right][kept].astype(np.float64)
        density = (-np.log10((colours + 1) / 256)).mean(1)
        means.append([*colours.mean(0), density.mean()])
        windows.append((cell.window[0] + left, cell.window[1] + top, cell.window[0] + right, cell.window[1] + bottom))
        probs.append(np.where(kept, np.uint8(255), np.uint8(0)))
        keep.append(cell)
    scores = [c.class_scores for c in keep]
    out = InstanceSet(
        size,
        np.array([c.box for c in keep], np.float32).reshape(-1, 4),
        np.array([c.score for c in keep], np.float32),
        np.array([c.class_id for c in keep], np.int64),
        np.array(windows, np.int32).reshape(-1, 4),
        probs,
        np.array(scores, np.float32) if keep and scores[0] is not None else None,
    )
    return out, np.array(means, np.float64).reshape(-1, 4)
