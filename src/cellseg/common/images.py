"""Reading TIFF images and instance masks into the pipeline's arrays.

Every reader turns whatever a TIFF holds into one convention: images `(H, W, 3) uint8` RGB,
masks `(H, W) int32` with 0 = background and instances numbered 1..n. Any file that cannot be
read raises `DataError` naming the file, so that a bad input stops the run with a message
instead of a traceback from deep inside a codec.

`to_rgb8` is the one pixel decoder of the package: training (`read_image`) and segmentation
(`cellseg.data.image_reader`) both call it, so the same file gives the same pixels to both. It
maps values by the dtype's fixed range, never by an image's own statistics, so that a 16-bit
copy of an 8-bit image (every value x 257) decodes to the same pixels and the same tissue looks
the same in every file: uint8 as is, uint16 x 255 / 65535 rounded, float in [0, 1] x 255 rounded.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tifffile

from cellseg.common.errors import DataError
from cellseg.common.pixel_size import page_mpp

# What tifffile and the imagecodecs codecs raise on a broken file (imagecodecs' errors derive
# from RuntimeError; a truncated header shows up as struct.error, EOFError or IndexError).
_READ_ERRORS = (OSError, EOFError, ValueError, RuntimeError, IndexError, KeyError, struct.error)


@dataclass(frozen=True)
class TiffHeader:
    """What a TIFF's header says about its first image, read without decoding the pixels."""

    height: int
    width: int
    channels: int  # samples per pixel, alpha included
    dtype: np.dtype
    alpha: bool  # the extra sample is declared (associated or unassociated) alpha
    mpp: float | None = None  # µm per pixel, when the metadata states it (`cellseg.common.pixel_size`)


def _first_page(path: Path, tif: tifffile.TiffFile):
    """The one image of an open TIFF; `DataError` for no image, a stack of planes (a 2-channel
    or multi-page file keeps only its first plane otherwise), or image data beyond the file's
    end (a truncated LZW file may decode to garbage instead of failing)."""
    if not tif.pages:
        raise DataError(f"{path}: TIFF file holds no image")
    page = tif.pages.first
    planes = len(tif.series[0].pages) if tif.series else 1
    if planes > 1 or page.shaped[1] != 1:
        raise DataError(
            f"{path}: holds a stack of {max(planes, page.shaped[1])} planes (shape {tif.series[0].shape}); "
            "expected one 2-D image (grey, grey + alpha, RGB or RGBA): save the channels as one image"
        )
    size = path.stat().st_size
    for offset, count in zip(page.dataoffsets, page.databytecounts, strict=True):
        if offset + count > size:
            raise DataError(
                f"{path}: file is truncated (image data ends at byte {offset + count}, "
                f"file has {size} bytes)"
            )
    return page


def _header_of(path: Path, page) -> TiffHeader:
    samples_separate, _, height, width, samples_contig = page.shaped
    alpha = any(int(kind) in (1, 2) for kind in page.extrasamples)  # associated, unassociated
    header = TiffHeader(height, width, samples_separate * samples_contig, page.dtype, alpha, page_mpp(page))
    if header.channels == 2 and not header.alpha:
        raise DataError(
            f"{path}: 2 channels that are not grey + alpha (no alpha ExtraSamples tag); cellseg reads "
            "grey, grey + alpha, RGB or RGBA: merge the channels into one RGB image"
        )
    return header


def read_tiff_header(path: str | os.PathLike) -> TiffHeader:
    """Size, channels and dtype of a TIFF's image from its header, checking what `read_image` /
    `read_mask` would reject before decoding: a missing, unreadable or truncated file, a stack
    of planes, 2 channels without alpha. Raises `DataError` naming the file."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        with tifffile.TiffFile(path) as tif:
            return _header_of(path, _first_page(path, tif))
    except DataError:
        raise
    except _READ_ERRORS as err:
        raise DataError(f"{path}: cannot read as TIFF ({type(err).__name__}: {err})") from err


def _read_tiff(path: str | os.PathLike) -> np.ndarray:
    """Read the one image of a TIFF; `DataError` when it is missing, not a TIFF, truncated, or
    not one image (see `_first_page`)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        with tifffile.TiffFile(path) as tif:
            page = _first_page(path, tif)
            _header_of(path, page)
            return page.asarray()
    except DataError:
        raise
    except _READ_ERRORS as err:
        raise DataError(f"{path}: cannot read as TIFF ({type(err).__name__}: {err})") from err


def _to_channels_last(path: Path, array: np.ndarray) -> np.ndarray:
    """Return `(H, W, K)` with K in 1..4 from `(H, W)`, `(H, W, K)` or channel-first `(K, H, W)`."""
    if array.ndim == 2:
        return array[:, :, None]
    if array.ndim == 3 and array.shape[-1] <= 4:
        return array
    if array.ndim == 3 and array.shape[0] <= 4:
        return np.moveaxis(array, 0, -1)
    raise DataError(
        f"{path}: expected one 2-D image with 1-4 channels, got array of shape {array.shape}"
    )


# uint16 -> uint8 by the 16-bit depth, rounded to nearest: v x 257 maps back to v exactly.
_UINT16_TO_8 = ((np.arange(65536, dtype=np.uint32) * 255 + 32767) // 65535).astype(np.uint8)


def check_pixel_dtype(dtype: np.dtype, path: str | os.PathLike) -> None:
    """`DataError` naming the file unless `to_rgb8` decodes `dtype` (uint8, uint16 or float);
    lets a header check reject at once what decoding the pixels would."""
    dtype = np.dtype(dtype)
    if dtype not in (np.uint8, np.uint16) and dtype.kind != "f":
        raise DataError(
            f"{path}: unsupported dtype {dtype}; expected uint8, uint16 or float (values 0-1): "
            "convert the image to one of them"
        )


def _float_to_uint8(path: str | os.PathLike, values: np.ndarray) -> np.ndarray:
    """Float values in [0, 1] x 255, rounded; `DataError` naming the file for any other value."""
    if not np.isfinite(values).all():
        raise DataError(f"{path}: float image holds NaN or infinite values; replace them, or save it as 8- or 16-bit")
    low, high = float(values.min()), float(values.max())
    if low < 0 or high > 1:
        raise DataError(
            f"{path}: float image holds values {low:g} to {high:g}, outside 0-1; scale them to 0-1 "
            "or save the image as 8- or 16-bit"
        )
    return np.rint(values.astype(np.float64) * 255).astype(np.uint8)


def to_rgb8(array: np.ndarray, path: str | os.PathLike) -> np.ndarray:
    """Decode raw pixels `(h, w, K)`, K = 1..4, into `(h, w, 3) uint8` RGB.

    Grey (K = 1, or 2 = grey + alpha) is repeated to 3 channels and alpha dropped. uint8 is
    kept; uint16 becomes round(v x 255 / 65535), so 12-bit data in a 16-bit file (0-4095) comes
    out dark (0-16); float must lie in [0, 1] and becomes round(v x 255). Other dtypes and float
    values outside [0, 1] (NaN, inf included) raise `DataError` naming `path`.
    """
    check_pixel_dtype(array.dtype, path)
    colour = array[:, :, :3] if array.shape[-1] >= 3 else array[:, :, :1]
    if colour.dtype == np.uint16:
        colour = _UINT16_TO_8[colour]
    elif colour.dtype != np.uint8:
        colour = _float_to_uint8(path, colour)
    return np.ascontiguousarray(colour if colour.shape[-1] == 3 else np.repeat(colour, 3, axis=2))


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read a TIFF image as `(H, W, 3) uint8` RGB.

    Accepts RGBA (the reference files: uint8, LZW with a horizontal predictor, which needs
    `imagecodecs`), RGB, grayscale (replicated to 3 channels), grey+alpha (2 channels whose
    second is declared alpha; other 2-channel files are rejected), and channel-first
    `(3 or 4, H, W)` arrays; alpha is dropped. Pixels are decoded by `to_rgb8` (uint8 kept,
    uint16 and float [0, 1] scaled by their fixed range). Raises `DataError` naming the file
    when it is missing, not a TIFF, truncated, of another shape or dtype, or a float image with
    values outside [0, 1].
    """
    path = Path(path)
    array = _to_channels_last(path, _read_tiff(path))
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise DataError(f"{path}: image is empty (shape {array.shape})")
    return to_rgb8(array, path)


# Largest id, per pixel, that `relabel_consecutive` renumbers through a lookup table.
_LOOKUP_LIMIT = 4


def relabel_consecutive(labels: np.ndarray) -> np.ndarray:
    """Renumber a label image's ids to 1..n in ascending order of the old ids; 0 stays 0.

    `labels` is `(H, W)` of non-negative integral values (any dtype); returns `(H, W) int32`.
    Ids up to a few times the pixel count (every real mask) go through a lookup table, one
    counting pass instead of `np.unique`'s sort, which cost most of a preprocessing job.
    """
    flat = labels.ravel()
    if flat.size and np.issubdtype(labels.dtype, np.integer) and int(flat.max()) <= _LOOKUP_LIMIT * flat.size:
        present = np.bincount(flat) > 0
        present[0] = True  # 0 stays 0 whether or not it occurs
        lookup = (np.cumsum(present) - 1).astype(np.int32)
        return lookup[flat].reshape(labels.shape)
    ids, inverse = np.unique(labels, return_inverse=True)
    inverse = inverse.reshape(labels.shape).astype(np.int32)
    return inverse if ids.size == 0 or ids[0] == 0 else inverse + 1


def paint_order(areas: np.ndarray) -> np.ndarray:
    """The order in which to paint one class's instances (areas in px, in file order) into a
    label image: largest first, so that a pixel two instances claim goes to the smaller one and
    a small cell lying on a large one stays whole; of equal areas the later one wins. Every
    annotation format with overlapping instances (COCO, GeoJSON) paints in this order."""
    return np.argsort(-np.asarray(areas, np.int64), kind="stable")


def read_mask(path: str | os.PathLike) -> np.ndarray:
    """Read an instance mask TIFF as `(H, W) int32`: 0 = background, instances 1..n.

    The reference masks are float64 arrays of instance ids that skip (the largest id exceeds the
    number of instances); integer dtypes are accepted too. Ids are renumbered 1..n keeping their
    order. Raises `DataError` naming the file for values that are negative, non-integral or not
    finite, or for an array that is not one 2-D plane.
    """
    path = Path(path)
    mask = _read_tiff(path)
    if mask.ndim == 3 and 1 in (mask.shape[0], mask.shape[-1]):
        mask = mask.reshape(mask.shape[:2] if mask.shape[-1] == 1 else mask.shape[1:])
    if mask.ndim != 2:
        raise DataError(f"{path}: expected a 2-D mask of instance ids, got shape {mask.shape}")
    if mask.dtype == np.bool_ or not np.issubdtype(mask.dtype, np.number):
        raise DataError(f"{path}: mask has dtype {mask.dtype}, expected integer or float ids")
    if np.issubdtype(mask.dtype, np.floating):
        if not np.isfinite(mask).all():
            raise DataError(f"{path}: mask contains NaN or infinite values")
        if (mask != np.floor(mask)).any():
            raise DataError(f"{path}: mask holds non-integral values; expected instance ids")
        mask = mask.astype(np.int64)
    if mask.size and mask.min() < 0:
        raise DataError(f"{path}: mask holds negative values (min {mask.min()}); expected ids >= 0")
    return relabel_consecutive(mask)
