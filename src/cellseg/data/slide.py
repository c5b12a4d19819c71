"""Whole-slide images: SVS, NDPI, OME-TIFF and generic pyramidal TIFF, read at the pyramid level
the network wants.

The reader is `tiffslide` (pure Python on tifffile and zarr): it reads OME-TIFF pyramids, which
OpenSlide does not, decodes with the same tifffile / imagecodecs as every other TIFF here, and
installs from PyPI or conda-forge without a C library on each cluster node. OpenSlide reads more
vendor formats (MIRAX, Philips, Ventana, DICOM); none of them is a TIFF pyramid.

A slide is segmented at its *working level*: the coarsest level whose pixels are at most
`LEVEL_TOLERANCE` coarser than the model's training µm/px (`choose_level`), so that the network
sees cells at their trained size without reading the finer levels; what is left of the
difference is resampled per block (`cellseg.common.pixel_size`). Cells found at the working level are
mapped back to level 0 (`cells_at_level0`): every output is in level-0 pixels.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path

import numpy as np
import tifffile
from scipy import ndimage

from cellseg.common.errors import DataError
from cellseg.common.images import _READ_ERRORS
from cellseg.common.instances import InstanceSet, bounding_rect
from cellseg.common.pixel_size import page_mpp
from cellseg.data.image_reader import SLIDE_SUFFIXES, ImageReader, check_image

LEVEL_TOLERANCE = 0.1  # a level this much coarser than the model's pixel size still counts as it

log = logging.getLogger(__name__)


def is_slide(path: str | os.PathLike) -> bool:
    """Whether `path` is a scanner format (`SLIDE_SUFFIXES`) or a TIFF whose first series is a
    pyramid (SubIFDs, as OME-TIFF writes them, or reduced pages)."""
    path = Path(path)
    if path.suffix.lower() in SLIDE_SUFFIXES:
        return True
    try:
        with tifffile.TiffFile(path) as tif:
            return len(tif.series[0].levels) > 1
    except _READ_ERRORS:
        return False


def choose_level(level_mpps: list[float | None], model_mpp: float | None) -> int:
    """The coarsest level whose µm/px is at most `model_mpp` x (1 + `LEVEL_TOLERANCE`); level 0
    when either side is unknown or every level is coarser."""
    if not model_mpp or not level_mpps[0]:
        return 0
    fine = [k for k, mpp in enumerate(level_mpps) if mpp <= model_mpp * (1 + LEVEL_TOLERANCE)]
    return max(fine, default=0)


class SlideReader(ImageReader):
    """Regions of one level of a slide as (h, w, 3) uint8, in that level's pixels.

    level0_size: (H0, W0); size: (H, W) of the working level; downsample: (dy, dx) level-0 px
    per working-level px; mpp: µm per working-level px (None when the slide does not state it).
    """

    def __init__(self, path: Path):
        import tiffslide

        self.path = path
        try:
            self._slide = tiffslide.TiffSlide(path)
            self._levels = self._slide.zarr_group
            first = self._slide.ts_tifffile.series[0].levels[0].keyframe
        except _READ_ERRORS + (ValueError, KeyError) as error:
            raise DataError(f"{path}: cannot read as a slide ({type(error).__name__}: {error})") from None
        stated = self._slide.properties.get("tiffslide.mpp-x")
        self.mpp0 = float(stated) if stated else page_mpp(first)
        width, height = self._slide.level_dimensions[0]
        self.level0_size = (height, width)
        self.use_level(0)

    @property
    def level_dims(self) -> list[tuple[int, int]]:
        """(H, W) of each level, finest first."""
        return [(h, w) for w, h in self._slide.level_dimensions]

    @property
    def level_mpps(self) -> list[float | None]:
        """µm per px of each level (None when the slide does not state it)."""
        width0 = self._slide.level_dimensions[0][0]
        return [self.mpp0 * width0 / w if self.mpp0 else None for w, _ in self._slide.level_dimensions]

    def use_level(self, level: int) -> None:
        """Read from pyramid level `level` from now on."""
        self.level = level
        array = self._levels[str(level)]
        self._array = array
        self.size = tuple(int(v) for v in array.shape[:2])
        self.dtype = array.dtype
        self.channels = array.shape[2] if array.ndim == 3 else 1
        self.downsample = (self.level0_size[0] / self.size[0], self.level0_size[1] / self.size[1])
        self.mpp = self.mpp0 * self.downsample[1] if self.mpp0 else None
        self._check()

    def _raw(self, y0, y1, x0, x1):
        try:
            region = np.asarray(self._array[y0:y1, x0:x1])
        except _READ_ERRORS as error:
            raise DataError(f"{self.path}: cannot decode the image data ({type(error).__name__}: {error})") from None
        return region[:, :, None] if region.ndim == 2 else region

    def close(self) -> None:
        self._slide.close()


def open_slide(path: str | os.PathLike, model_mpp: float | None, default_mpp: float | None = None) -> SlideReader:
    """A slide at its working level for a model trained at `model_mpp` µm/px (module doc).
    `default_mpp` (`segment.mpp`) stands for level 0's pixel size when the slide states none;
    without either, a warning says that the slide is read at level 0 as if at the training
    pixel size."""
    reader = SlideReader(Path(path))
    if not reader.mpp0 and default_mpp:
        reader.mpp0 = default_mpp
    if not reader.mpp0:
        log.warning(
            "%s: the slide states no µm per pixel; segmented at level 0 as if at the training pixel size "
            "(set segment.mpp to its level-0 µm/px)", path,
        )
    reader.use_level(choose_level(reader.level_mpps, model_mpp))
    return reader


def working_size(path: str | os.PathLike, model_mpp: float | None, default_mpp: float | None = None) -> tuple[int, int]:
    """(H, W) an image is segmented at: a slide's working level (`open_slide`), else the image's
    own (`check_image`). The workflow splits the image into regions by it when the DAG is built."""
    if not is_slide(path):
        return check_image(path)
    reader = open_slide(path, model_mpp, default_mpp)
    reader.close()
    return reader.size


def cells_at_level0(cells: InstanceSet, downsample: tuple[float, float], level0_size: tuple[int, int]) -> InstanceSet:
    """Binary cells found at a level `downsample` (dy, dx) times coarser than level 0, mapped
    onto level 0 of `level0_size` (H0, W0): each mask sampled bilinearly at the level-0 pixel
    centres and kept above 0.5, so that disjoint cells stay disjoint; boxes scaled."""
    dy, dx = downsample
    if (dy, dx) == (1.0, 1.0):
        return cells
    height, width = level0_size
    windows, probs = [], []
    for i, (x0, y0, x1, y1) in enumerate(cells.windows.tolist()):
        window, mask = _upsampled(cells.window_mask(i), (x0, y0, x1, y1), dy, dx, height, width)
        windows.append(window)
        probs.append(np.where(mask, np.uint8(255), np.uint8(0)))
    boxes = cells.boxes * np.array([dx, dy, dx, dy], np.float32)
    return InstanceSet(
        (height, width), boxes, cells.scores, cells.classes, np.array(windows, np.int32).reshape(-1, 4), probs,
        cells.class_scores,
    )


def _upsampled(mask: np.ndarray, window, dy: float, dx: float, height: int, width: int):
    """One window mask on level 0: its window x0, y0, x1, y1 and (h, w) bool mask."""
    x0, y0, x1, y1 = window
    r0, r1 = max(0, math.floor(y0 * dy)), min(height, math.ceil(y1 * dy))
    c0, c1 = max(0, math.floor(x0 * dx)), min(width, math.ceil(x1 * dx))
    rows = (np.arange(r0, r1) + 0.5) / dy - 0.5 - y0
    cols = (np.arange(c0, c1) + 0.5) / dx - 0.5 - x0
    grid = np.meshgrid(rows, cols, indexing="ij")
    values = ndimage.map_coordinates(mask.astype(np.float32), grid, order=1, mode="constant", cval=0.0)
    up = values > 0.5
    if not up.any():  # a cell narrower than the sampling: nearest pixel instead
        up = ndimage.map_coordinates(mask.astype(np.float32), grid, order=0, mode="nearest") > 0.5
    rect = bounding_rect(up) or (0, 0, 1, 1)
    left, top, right, bottom = rect
    return (c0 + left, r0 + top, c0 + right, r0 + bottom), up[top:bottom, left:right]
