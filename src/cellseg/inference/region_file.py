"""A large image split into regions of whole blocks, each predicted by its own job.

Region r covers `region_blocks` x `region_blocks` blocks of `cellseg.inference.cell_stream.block_grid`
(`cellseg.inference.region_grid`). A region's job predicts its blocks (each read with its
margin, so the cells near a region's edge are found as they would be in one job) and writes what
each block owns (`BlockCells`) to one file; no cell is finalised there. The job that joins the
regions reads the blocks back in the image's raster order and finalises them as one job would
(`cellseg.inference.cell_stream.finalise_cells`): the result is the single job's, to the cell.

The file is an .npz written member by member, so that neither side holds a region in memory:
per block `b<k>_windows`, `_scores`, `_classes`, `_boxes`, optional `_class_scores` and
`_masks` (the masks' pixels, each raveled in its window, concatenated, bit-packed); `blocks`, the
number of blocks, last.
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Iterable, Iterator

import numpy as np

from cellseg.common.files import atomic_path
from cellseg.inference.cell_stream import BlockCells
from cellseg.inference.region_grid import region_of

FIELDS = ("windows", "scores", "classes", "boxes", "class_scores")


def write_region(path: str | os.PathLike, found: Iterable[BlockCells]) -> int:
    """Write each block's cells of `found` (in order) to the region file `path`; returns the
    number of cells."""
    total = k = 0
    with atomic_path(path) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as archive:
        for k, cells in enumerate(found, 1):
            arrays = {field: getattr(cells, field) for field in FIELDS if getattr(cells, field) is not None}
            flat = [mask.ravel() for mask in cells.masks]
            arrays["masks"] = np.packbits(np.concatenate(flat) if flat else np.zeros(0, bool))
            for field, array in arrays.items():
                _write_member(archive, f"b{k - 1}_{field}", array)
            total += len(cells.windows)
        _write_member(archive, "blocks", np.array(k))  # also makes a region without blocks a valid .npz
    return total


def _write_member(archive: zipfile.ZipFile, name: str, array: np.ndarray) -> None:
    with archive.open(f"{name}.npy", "w", force_zip64=True) as member:
        np.lib.format.write_array(member, np.ascontiguousarray(array), allow_pickle=False)


def read_region_blocks(paths: list[str | os.PathLike], blocks: list[tuple[int, int, int, int]], block: int,
                       region_blocks: int, size: tuple[int, int]) -> Iterator[BlockCells]:
    """The cells of each of `blocks` (the image's predicted blocks, raster order) from the region
    files `paths` (index = region number), each region's blocks stored in that order."""
    files = [np.load(path, allow_pickle=False) for path in paths]
    try:
        seen = [0] * len(files)
        for rect in blocks:
            r = region_of(rect, block, region_blocks, size)
            yield _block_cells(files[r], seen[r])
            seen[r] += 1
    finally:
        for f in files:
            f.close()


def _block_cells(archive, k: int) -> BlockCells:
    windows = archive[f"b{k}_windows"]
    shapes = [(y1 - y0, x1 - x0) for x0, y0, x1, y1 in windows.tolist()]
    sizes = [h * w for h, w in shapes]
    bits = np.unpackbits(archive[f"b{k}_masks"], count=sum(sizes)).astype(bool)
    starts = np.cumsum([0, *sizes])
    masks = [bits[starts[i]:starts[i + 1]].reshape(shape) for i, shape in enumerate(shapes)]
    name = f"b{k}_class_scores"
    return BlockCells(
        windows, masks, archive[f"b{k}_scores"], archive[f"b{k}_classes"],
        archive[name] if name in archive.files else None, archive[f"b{k}_boxes"],
    )
