"""One image file segmented into the files other tools read: the image or slide opened at the
training pixel size, its tissue found, its cells streamed block by block
(`cellseg.inference.cell_stream`) into the writers (`cellseg.outputs.cell_writers`)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from cellseg.common.pixel_size import network_scale
from cellseg.data.image_reader import ImageReader, open_image
from cellseg.data.slide import SlideReader, is_slide, open_slide
from cellseg.data.tissue import low_resolution, tissue_blocks, tissue_mask, write_tissue_picture
from cellseg.inference.cell_stream import block_grid, stream_cells
from cellseg.outputs.cell_writers import write_outputs

log = logging.getLogger(__name__)


def find_tissue(reader: ImageReader, tissue: bool) -> tuple[np.ndarray, float, np.ndarray]:
    """The image's low-resolution copy (`cellseg.data.tissue.low_resolution`), its image px per
    copy px, and the tissue mask on it: `tissue_mask` with `tissue`, else all tissue."""
    image, step = low_resolution(reader)
    mask = tissue_mask(image, reader.mpp * step if reader.mpp else None) if tissue else np.ones(image.shape[:2], bool)
    return image, step, mask


def predicted_blocks(reader: ImageReader, block: int, found=None, image_path="") -> list[tuple[int, int, int, int]]:
    """The blocks of `block` px to predict, raster order: with `found` (`find_tissue`), those
    touching its tissue (`cellseg.data.tissue.tissue_blocks`); else every block."""
    blocks = block_grid(*reader.size, block)
    if found is None:
        return blocks
    _, step, mask = found
    kept = tissue_blocks(mask, step, blocks)
    log.info("%s: tissue on %.1f%% of the image; %d of %d blocks predicted",
             image_path, 100 * mask.mean(), len(kept), len(blocks))
    return kept


def open_reader(image_path, model_mpp: float | None, default_mpp: float | None = None) -> ImageReader:
    """The image, or a slide at its working level for a model trained at `model_mpp`
    (`cellseg.data.slide`), its pixel size logged."""
    slide = is_slide(image_path)
    reader = open_slide(image_path, model_mpp, default_mpp) if slide else open_image(image_path)
    mpp = reader.mpp or default_mpp
    scale = network_scale(mpp, model_mpp)
    if slide:
        log.info("%s: level %d of %d, %d x %d px", image_path, reader.level, len(reader.level_mpps), *reader.size[::-1])
    if scale != 1.0:
        log.info("%s: %g µm/px, resampled by %.3g to the training %g µm/px", image_path, mpp, scale, model_mpp)
    return reader


def write_image_outputs(reader: ImageReader, outputs: dict, batches, class_names: list[str], overlay_size: int,
                        default_mpp: float | None) -> dict[str, int]:
    """`cellseg.outputs.cell_writers.write_outputs` of the finalised `batches`, in level-0
    pixels of a slide, with the overlay's thumbnail read from `reader`."""
    image, step = low_resolution(reader, overlay_size)
    slide = isinstance(reader, SlideReader)
    downsample = reader.downsample if slide else (1.0, 1.0)
    size0 = reader.level0_size if slide else reader.size
    mpp = reader.mpp or default_mpp
    mpp0 = mpp / downsample[1] if mpp else None
    return write_outputs(outputs, batches, class_names, (image, step * downsample[1]), (size0, downsample), mpp0)


def segment_file(
    image_path,
    outputs: dict,
    ensemble,
    point: dict,
    class_names: list[str],
    overlay_size: int = 2000,
    default_mpp: float | None = None,
    tissue: bool = False,
    **segment,
) -> dict[str, int]:
    """Segment one image file block by block (`cellseg.inference.cell_stream.stream_cells(reader,
    ensemble, point, **segment)`) and write its `outputs` {labels, geojson, csv, overlay and
    optionally tissue: path} as the cells are finalised (`cellseg.outputs.cell_writers`); returns the
    cells per class name. The image's pixel size is its metadata's, else `default_mpp`
    (`segment.mpp`), else taken to be the training one. A slide (`cellseg.data.slide`) is segmented
    at its working level, its outputs in level-0 pixels. With `tissue`, only the blocks that
    touch tissue are predicted (`cellseg.data.tissue`). The workflow runs the same in regions
    (`cellseg.outputs.segment_regions`)."""
    reader = open_reader(image_path, ensemble.mpp, default_mpp)
    try:
        found = find_tissue(reader, tissue) if tissue or outputs.get("tissue") else None
        if outputs.get("tissue"):
            write_tissue_picture(outputs["tissue"], found[0], found[2])
        blocks = predicted_blocks(reader, segment.get("block", 2048), found if tissue else None, image_path)
        mpp = reader.mpp or default_mpp
        batches = stream_cells(reader, ensemble, point, name=Path(image_path).name, mpp=mpp, blocks=blocks, **segment)
        return write_image_outputs(reader, outputs, batches, class_names, overlay_size, default_mpp)
    finally:
        reader.close()
