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
gives an image at the `cells` operating point.

Pixels that two blocks' cells both claim go to the higher score (as
`cellseg.overlaps.exclusive_pixels` decides it), so the label image, the polygons and the table
all describe the same disjoint cells, one class each. Cells are finalised block by block, only
the seam band held (`cellseg.cell_stream`), and the label image is painted tile by tile from
cells spooled to disk (`cellseg.label_pyramid`): memory does not grow with the image.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from cellseg.cell_stream import block_grid, stream_cells
from cellseg.inference import FoldEnsemble
from cellseg.instances import InstanceSet
from cellseg.label_pyramid import (
    LABEL_TILE,
    LabelSpool,
    spool_cells,
    write_label_pyramid,
)
from cellseg.segment_input import ImageReader

__all__ = ["block_grid", "cell_labels", "segment_image", "write_labels"]


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
    parts = [cells for cells, _ in stream_cells(reader, ensemble, point, block, margin, name, normalise, mpp, blocks)]
    return InstanceSet.concatenate(parts) if parts else InstanceSet.empty(reader.size)


def cell_labels(cells: InstanceSet) -> np.ndarray:
    """(N,) uint32: each cell's value in its class's plane of the label image, 1..n per class
    in the cells' order."""
    labels = np.zeros(len(cells), np.uint32)
    for class_id in np.unique(cells.classes):
        members = np.flatnonzero(cells.classes == class_id)
        labels[members] = np.arange(1, len(members) + 1, dtype=np.uint32)
    return labels


def write_labels(path: str | os.PathLike, cells: InstanceSet, n_classes: int, tile: int = LABEL_TILE) -> None:
    """labels.tif of binary instances `cells` (values `cell_labels`), as the segment job writes
    it (`cellseg.label_pyramid.write_label_pyramid`)."""
    with LabelSpool(Path(path).parent) as spool:
        spool_cells(spool, cells, cell_labels(cells))
        write_label_pyramid(path, spool, n_classes, cells.image_size, tile=tile)
