"""Reading the public datasets' own files: images (PNG, JPEG, TIFF, Aperio SVS), MATLAB
`.mat` label files, and arrays of ids or classes, each failure a `DataError` naming the file."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import scipy.io
from PIL import Image, UnidentifiedImageError
from scipy.io.matlab import MatReadError

from cellseg.common.errors import DataError
from cellseg.common.images import read_image

TIFF_LIKE = (".tif", ".tiff", ".svs")
PIL_READABLE = (".png", ".jpg", ".jpeg")


def read_rgb(path: str | os.PathLike) -> np.ndarray:
    """Read an image as `(H, W, 3) uint8` RGB, alpha dropped.

    TIFF and SVS go through `cellseg.common.images.read_image` (tifffile; an SVS's first page is its
    full-resolution image); PNG and JPEG through PIL, converted to RGB (grey repeated,
    palette expanded).
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in TIFF_LIKE:
        return read_image(path)
    if suffix not in PIL_READABLE:
        raise DataError(f"{path}: unsupported image type; expected one of {', '.join(TIFF_LIKE + PIL_READABLE)}")
    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"))
    except (OSError, ValueError, UnidentifiedImageError) as err:
        raise DataError(f"{path}: cannot read as an image ({type(err).__name__}: {err})") from err


def load_mat(path: str | os.PathLike, required: tuple[str, ...]) -> dict[str, np.ndarray]:
    """The variables of a MATLAB v5/v7 `.mat` file (scipy.io.loadmat: arrays keep MATLAB's 2-D
    shape, so an N-vector is `(N, 1)`). `DataError` for a v7.3 (HDF5) file, which scipy
    cannot read, an unreadable file, or a missing `required` variable."""
    path = Path(path)
    try:
        data = scipy.io.loadmat(path)
    except NotImplementedError as err:
        raise DataError(
            f"{path}: MATLAB v7.3 (HDF5) file, which scipy cannot read; re-save it as v7 in MATLAB "
            "(save(name, '-v7', ...)) before converting"
        ) from err
    except (MatReadError, OSError, ValueError, TypeError) as err:
        raise DataError(f"{path}: cannot read as a .mat file ({type(err).__name__}: {err})") from err
    missing = [key for key in required if key not in data]
    if missing:
        present = sorted(key for key in data if not key.startswith("__"))
        raise DataError(f"{path}: lacks the variable(s) {', '.join(missing)} (has {', '.join(present) or 'none'})")
    return data


def whole_numbers(array: np.ndarray, where: str) -> np.ndarray:
    """`array` (ids or classes stored as integers or whole floats) as int64; `DataError` naming
    `where` for a value that is negative, fractional or not finite."""
    array = np.asarray(array)
    if np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all() or (array != np.floor(array)).any():
            raise DataError(f"{where}: holds fractional, NaN or infinite values; expected whole numbers")
    elif not np.issubdtype(array.dtype, np.integer):
        raise DataError(f"{where}: has dtype {array.dtype}; expected whole numbers")
    values = array.astype(np.int64)
    if values.size and values.min() < 0:
        raise DataError(f"{where}: holds negative values (min {values.min()}); expected whole numbers >= 0")
    return values
