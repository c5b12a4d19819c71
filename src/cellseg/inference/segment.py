"""The trained fold ensemble applied to one new image of any size, in bounded memory.

The image is cut into square blocks (`block` px, the last ones flush with the image end). Each
block is read with a `margin` around it (`ImageReader.read`) and run through the one inference
path at the `cells` operating point (`cellseg.inference.fold_ensemble.infer`: every fold as the predict
stage runs it, calibration and fusion as the ensemble stage, the tuned thresholds with one
class per cell and one cell per pixel). A block keeps the cells whose box centre lies in it
(with a `CENTRE_TOLERANCE` px slack, since two regions may place a cell a little
differently); a kept cell whose mask has IoU >= 0.5 with a cell of any class kept by an
earlier block is the same cell and is dropped. Cells narrower than the margin are thus seen
whole and kept once. An image that fits one block gives exactly the instances the workflow
gives an image at the `cells` operating point.

Pixels that two blocks' cells both claim go to the higher score (as
`cellseg.inference.ownership.exclusive_pixels` decides it), so the label image, the polygons and the table
all describe the same disjoint cells, one class each. Cells are finalised block by block, only
the seam band held (`cellseg.inference.cell_stream`), and the label image is painted tile by tile from
cells spooled to disk (`cellseg.common.label_pyramid`): memory does not grow with the image.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from cellseg.common.instances import InstanceSet
from cellseg.common.label_pyramid import (
    LABEL_TILE,
    LabelSpool,
    spool_cells,
    write_label_pyramid,
)
from cellseg.data.image_reader import ImageReader
from cellseg.inference.cell_stream import block_grid, stream_cells
from cellseg.inference.fold_ensemble import FoldEnsemble

__all__ = ["block_grid", "cell_labels", "segment_image", "write_labels"]


def segment_image(reader: ImageReader, ensemble: FoldEnsemble, point: dict, **options) -> InstanceSet:
    """Every cell `stream_cells(reader, ensemble, point, **options)` finalises, in one set:
    binary, disjoint instances of the image's size with their `class_scores`."""
    parts = [cells for cells, _ in stream_cells(reader, ensemble, point, **options)]
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
    it (`cellseg.common.label_pyramid.write_label_pyramid`)."""
    with LabelSpool(Path(path).parent) as spool:
        spool_cells(spool, cells, cell_labels(cells))
        write_label_pyramid(path, spool, n_classes, cells.image_size, tile=tile)
