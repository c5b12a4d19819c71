"""New images to segment: listing a folder, checking headers, and reading regions lazily.

`open_image(path)` gives an `ImageReader` whose `read(y0, y1, x0, x1)` returns that region as
`(h, w, 3) uint8` RGB, decoded by `cellseg.common.images.to_rgb8`, the decoder `cellseg.common.images.read_image`
uses for training: uint8 kept, uint16 scaled by its 16-bit depth, float in [0, 1] x 255,
grayscale repeated to 3 channels, alpha dropped. The mapping depends on the dtype alone, so a
region decodes the same whatever else the image holds. A TIFF (strips or tiles, BigTIFF, any
codec of `imagecodecs`) is never read whole: only the strips or tiles a region touches are
decoded (a float TIFF's values are therefore checked region by region, as they are read).
PNG and JPEG files are decoded whole (they cannot be read in parts).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image

from cellseg.common.errors import DataError
from cellseg.common.images import _READ_ERRORS, check_pixel_dtype, read_tiff_header, to_rgb8
from cellseg.common.pixel_size import page_mpp

TIFF_SUFFIXES = (".tif", ".tiff")
SLIDE_SUFFIXES = (".svs", ".ndpi")  # scanners' TIFF variants; read as slides (`cellseg.data.slide`)
SUFFIXES = (*TIFF_SUFFIXES, *SLIDE_SUFFIXES, ".png", ".jpg", ".jpeg")
_PIL_MODES = {"L": 1, "LA": 2, "RGB": 3, "RGBA": 4, "I;16": 1, "I;16B": 1, "I;16L": 1, "I": 1}
BAND_ROWS = 1024  # rows per band when a whole image is scanned (thumbnails, cell intensities)


def list_images(folder: str | os.PathLike) -> dict[str, Path]:
    """{name: path} of the images in `folder` (suffixes `SUFFIXES`, any case; hidden files and
    other suffixes are ignored), sorted by name; the name is the file name without suffix.
    Raises `DataError` for a missing folder, one without images, or two files of one name
    (`a.tif` and `a.png` would write the same outputs)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: images folder not found")
    images: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or path.suffix.lower() not in SUFFIXES or not path.is_file():
            continue
        if path.stem in images:
            raise DataError(f"{path}: same name as {images[path.stem].name}; rename one of them")
        images[path.stem] = path
    if not images:
        raise DataError(f"{folder}: no images ({', '.join(SUFFIXES)}) in the folder")
    return images


def check_image(path: str | os.PathLike) -> tuple[int, int]:
    """(H, W) of an image from its header (a PNG / JPEG is verified, not decoded); `DataError`
    naming the file when it is not readable, holds a dtype `to_rgb8` rejects, or not 1-4
    channels. Float values outside [0, 1] are only found when the pixels are read."""
    path = Path(path)
    if path.suffix.lower() in (*TIFF_SUFFIXES, *SLIDE_SUFFIXES):
        reader = open_image(path)
        reader.close()
        return reader.size
    try:
        with Image.open(path) as image:
            if image.mode not in _PIL_MODES:
                raise DataError(f"{path}: unsupported image mode {image.mode}; expected 8- or 16-bit grey, RGB or RGBA")
            image.verify()
            return image.height, image.width
    except DataError:
        raise
    except (*_READ_ERRORS, SyntaxError, Image.DecompressionBombError) as error:
        raise DataError(f"{path}: cannot read as an image ({type(error).__name__}: {error})") from None


def image_mpp(path: str | os.PathLike) -> float | None:
    """The µm per pixel a TIFF's metadata states (`cellseg.common.pixel_size.page_mpp`); None for
    other formats or without the metadata."""
    if Path(path).suffix.lower() not in (*TIFF_SUFFIXES, *SLIDE_SUFFIXES):
        return None
    return read_tiff_header(path).mpp


def open_image(path: str | os.PathLike) -> ImageReader:
    """A lazy region reader of a TIFF's first image (a slide's level 0), or a reader over a
    decoded PNG / JPEG."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    if path.suffix.lower() in (*TIFF_SUFFIXES, *SLIDE_SUFFIXES):
        return TiffReader(path)
    return ArrayReader(path, _read_pil(path))


class ImageReader:
    """Regions of one image as (h, w, 3) uint8 RGB; subclasses give `size` (H, W), `dtype`,
    `channels` and `_raw(y0, y1, x0, x1)` -> (h, w, channels) of `dtype`."""

    path: Path
    size: tuple[int, int]
    dtype: np.dtype
    channels: int
    mpp: float | None = None  # µm per pixel, when the file's metadata states it

    def _check(self) -> None:
        check_pixel_dtype(self.dtype, self.path)
        if not 1 <= self.channels <= 4:
            raise DataError(f"{self.path}: unsupported channel count {self.channels}; expected 1-4")
        if 0 in self.size:
            raise DataError(f"{self.path}: image is empty (size {self.size})")

    def read(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        """Rows y0:y1, columns x0:x1 as (h, w, 3) uint8 RGB, decoded by `to_rgb8`."""
        return to_rgb8(self._raw(y0, y1, x0, x1), self.path)


class ArrayReader(ImageReader):
    """Regions of an image held in memory as (H, W, K)."""

    def __init__(self, path: Path, array: np.ndarray):
        self.path, self.array = path, array
        self.size, self.dtype, self.channels = array.shape[:2], array.dtype, array.shape[2]
        self._check()

    def _raw(self, y0, y1, x0, x1):
        return self.array[y0:y1, x0:x1]

    def close(self) -> None:
        pass


def _read_pil(path: Path) -> np.ndarray:
    """A PNG or JPEG as (H, W, K) uint8 or uint16; `DataError` when it cannot be read."""
    try:
        with Image.open(path) as image:
            if image.mode not in _PIL_MODES:
                raise DataError(f"{path}: unsupported image mode {image.mode}; expected 8- or 16-bit grey, RGB or RGBA")
            array = np.array(image)  # a writable copy (torch warns on read-only arrays)
    except DataError:
        raise
    except (*_READ_ERRORS, Image.DecompressionBombError) as error:
        raise DataError(f"{path}: cannot read as an image ({type(error).__name__}: {error})") from None
    if image.mode in ("I", "I;16", "I;16B", "I;16L"):
        if array.min() < 0 or array.max() > 65535:
            raise DataError(f"{path}: unsupported 32-bit values; expected 8- or 16-bit")
        array = array.astype(np.uint16)
    return array[:, :, None] if array.ndim == 2 else array


class TiffReader(ImageReader):
    """Regions of a TIFF's first image, decoding only the strips or tiles they touch."""

    def __init__(self, path: Path):
        self.path = path
        try:
            self._tif = tifffile.TiffFile(path)
            if not self._tif.pages:
                raise DataError(f"{path}: TIFF file holds no image")
            page = self._tif.pages.first
            samples, depth, height, width, per_pixel = page.shaped
            offsets, counts = page.dataoffsets, page.databytecounts
        except DataError:
            raise
        except _READ_ERRORS as error:
            raise DataError(f"{path}: cannot read as TIFF ({type(error).__name__}: {error})") from None
        if depth != 1:
            raise DataError(f"{path}: volumes (depth {depth}) are not supported; expected one 2-D image")
        file_size = path.stat().st_size
        ends = [o + c for o, c in zip(offsets, counts) if c]
        if ends and max(ends) > file_size:
            raise DataError(f"{path}: file is truncated (image data ends at byte {max(ends)}, file has {file_size} bytes)")
        self._page = page
        self.mpp = page_mpp(page)
        self.size, self.dtype, self.channels = (height, width), page.dtype, samples * per_pixel
        self._samples = samples
        self._check()
        if page.is_tiled:
            self._chunk = (page.tilelength, page.tilewidth)
        else:
            self._chunk = (min(page.rowsperstrip, height), width)
        self._across = -(-width // self._chunk[1])
        self._per_plane = len(offsets) // samples

    def _raw(self, y0, y1, x0, x1):
        th, tw = self._chunk
        out = np.zeros((y1 - y0, x1 - x0, self.channels), self.dtype)
        page, handle = self._page, self._tif.filehandle
        try:
            for s in range(self._samples):
                for ty in range(y0 // th, -(-y1 // th)):
                    for tx in range(x0 // tw, -(-x1 // tw)):
                        index = s * self._per_plane + ty * self._across + tx
                        count = page.databytecounts[index]
                        if not count:
                            continue  # a sparse (never written) tile reads as zeros
                        handle.seek(page.dataoffsets[index])
                        segment = page.decode(handle.read(count), index, jpegtables=page.jpegtables)[0][0]
                        sy0, sx0 = ty * th, tx * tw
                        ry0, ry1 = max(y0, sy0), min(y1, sy0 + segment.shape[0])
                        rx0, rx1 = max(x0, sx0), min(x1, sx0 + segment.shape[1])
                        channels = slice(s, s + 1) if self._samples > 1 else slice(None)
                        out[ry0 - y0 : ry1 - y0, rx0 - x0 : rx1 - x0, channels] = segment[
                            ry0 - sy0 : ry1 - sy0, rx0 - sx0 : rx1 - sx0
                        ]
        except _READ_ERRORS as error:
            raise DataError(f"{self.path}: cannot decode the image data ({type(error).__name__}: {error})") from None
        return out

    def close(self) -> None:
        self._tif.close()


def thumbnail(reader: ImageReader, max_side: int) -> tuple[np.ndarray, int]:
    """The image subsampled by an integer step so that its longer side is at most `max_side`,
    read in row bands; returns (h, w, 3) uint8 and the step."""
    height, width = reader.size
    step = max(1, -(-max(height, width) // max_side))
    rows = []
    band = BAND_ROWS - BAND_ROWS % step or step
    for b0 in range(0, height, band):
        rows.append(reader.read(b0, min(b0 + band, height), 0, width)[::step, ::step])
    return np.concatenate(rows), step
