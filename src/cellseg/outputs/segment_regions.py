"""One image segmented as regions, each its own job, joined by one more (`cellseg.inference.region_file`):
on a cluster a slide spreads over as many GPUs as it has regions, and a killed run keeps the
regions it finished. The outputs equal `cellseg.outputs.segment_file.segment_file`'s, to the cell
and its number."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from cellseg.data.slide import SlideReader
from cellseg.data.tissue import write_tissue_picture
from cellseg.inference.cell_stream import block_read, finalise_cells, predict_blocks
from cellseg.inference.region_file import read_region_blocks, write_region
from cellseg.inference.region_grid import region_of
from cellseg.outputs.density_map import cell_counts, write_density_picture, write_tissue_json
from cellseg.outputs.segment_file import find_tissue, open_reader, predicted_blocks, write_image_outputs

log = logging.getLogger(__name__)


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
        blocks = predicted_blocks(reader, block, find_tissue(reader, True) if tissue else None, image_path)
        mine = [b for b in blocks if region_of(b, block, region_blocks, reader.size) == region]
        log.info("%s: region %d, %d of the %d blocks to predict", image_path, region, len(mine), len(blocks))
        found = predict_blocks(reader, ensemble, point, mine, margin, len(blocks) == 1, Path(image_path).name,
                               normalise, reader.mpp or default_mpp)
        return write_region(path, _progress(found, len(mine), f"{Path(image_path).name} region {region}"))
    finally:
        reader.close()


def _progress(found, n: int, name: str):
    """The block cells of `found`, one log line per block with an ETA."""
    start = time.monotonic()
    for k, (cells, _) in enumerate(found, 1):
        elapsed = time.monotonic() - start
        log.info("%s: block %d/%d, %d cells, %.0f s elapsed, ETA %.0f s", name, k, n, len(cells.windows),
                 elapsed, elapsed / k * (n - k))
        yield cells


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
    `segment_file`'s, and `density` and `tissue_json` of `cellseg.outputs.density_map` when
    given): their blocks finalised in raster order, each block's pixels read again for the
    cells' mean colours. Returns the cells per class name."""
    reader = open_reader(image_path, model_mpp, default_mpp)
    try:
        found = find_tissue(reader, tissue)
        image, step, mask = found
        write_tissue_picture(outputs["tissue"], image, mask)
        blocks = predicted_blocks(reader, block, found if tissue else None, image_path)
        cells = read_region_blocks(paths, blocks, block, region_blocks, reader.size)
        read = ((c, reader.read(*block_read(b, margin, reader.size))) for c, b in zip(cells, blocks))
        batches = finalise_cells(read, blocks, margin, reader.size, Path(image_path).name)
        counts = write_image_outputs(reader, outputs, batches, class_names, overlay_size, default_mpp)
        mpp, down = reader.mpp or default_mpp, reader.downsample[1] if isinstance(reader, SlideReader) else 1.0
        mpp0, step0 = (mpp / down if mpp else None), step * down  # level-0 µm/px, level-0 px per copy px
        if "density" in outputs:
            density = cell_counts(outputs["csv"], mask.shape, step0)
            write_density_picture(outputs["density"], image, mask, density, step0, mpp0)
        if "tissue_json" in outputs:
            write_tissue_json(outputs["tissue_json"], mask, step0, mpp0)
        return counts
    finally:
        reader.close()
