"""One image segmented as regions, each its own job, joined by one more (`cellseg.inference.region_file`):
on a cluster a slide spreads over as many GPUs as it has regions, and a killed run keeps the
regions it finished. The outputs equal `cellseg.outputs.segment_file.segment_file`'s, to the cell
and its number."""

from __future__ import annotations

import logging
from pathlib import Path

from cellseg.inference.cell_stream import block_grid, block_read, finalise_cells, predict_blocks
from cellseg.inference.region_file import read_region_blocks, region_of, write_region
from cellseg.outputs.segment_file import open_reader, tissue_blocks_of, write_image_outputs

log = logging.getLogger(__name__)


def image_blocks(reader, image_path, block: int, tissue: bool, picture=None) -> list[tuple[int, int, int, int]]:
    """The blocks to predict, raster order: those touching tissue with `tissue`, else all."""
    kept = tissue_blocks_of(reader, block, tissue, picture, image_path)
    return block_grid(*reader.size, block) if kept is None else kept


def segment_region(
    image_path,
    path,
    region: int,
    ensemble,
    point: dict,
    region_blocks: int,
    block: int = 2048,
    margin: int = 128,
    default_mpp: float | None = None,
    tissue: bool = False,
    normalise=None,
) -> int:
    """Predict the blocks of region `region` and write them to the region file `path`; returns
    its number of cells."""
    reader = open_reader(image_path, ensemble.mpp, default_mpp)
    try:
        blocks = image_blocks(reader, image_path, block, tissue)
        mine = [b for b in blocks if region_of(b, block, region_blocks, reader.size) == region]
        log.info("%s: region %d, %d of the image's %d blocks", image_path, region, len(mine), len(blocks))
        found = predict_blocks(reader, ensemble, point, mine, margin, len(blocks) == 1, Path(image_path).name,
                               normalise, reader.mpp or default_mpp)
        return write_region(path, (cells for cells, _ in found))
    finally:
        reader.close()


def gather_regions(
    image_path,
    paths: list,
    outputs: dict,
    class_names: list[str],
    model_mpp: float | None,
    region_blocks: int,
    overlay_size: int = 2000,
    block: int = 2048,
    margin: int = 128,
    default_mpp: float | None = None,
    tissue: bool = False,
) -> dict[str, int]:
    """Join the region files `paths` (index = region) of one image into its `outputs` (as
    `segment_file`'s): their blocks finalised in raster order, each block's pixels read again
    for the cells' mean colours. Returns the cells per class name."""
    reader = open_reader(image_path, model_mpp, default_mpp)
    try:
        blocks = image_blocks(reader, image_path, block, tissue, outputs.get("tissue"))
        cells = read_region_blocks(paths, blocks, block, region_blocks, reader.size)
        found = ((c, reader.read(*block_read(b, margin, reader.size))) for c, b in zip(cells, blocks))
        batches = finalise_cells(found, blocks, margin, reader.size, Path(image_path).name)
        return write_image_outputs(reader, outputs, batches, class_names, overlay_size, default_mpp)
    finally:
        reader.close()
