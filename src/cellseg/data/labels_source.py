"""Format 4 (`format: labels`): images and their instance label images, as `segment` writes them.

    DATA/<id>.tif | .tiff | .png | .jpg | .jpeg    the image, read as `segment` reads images
    DATA/<id>.labels.tif                           its instance labels (integer ids, 0 = background)
    DATA/<id>.labels.csv                           only beside a single-plane label image: the
                                                   class of each label, columns `label,class`

A label image is either one plane per class, `(C, H, W)` with C = the number of `classes:` in
their order (plane c = class c + 1), as `segment` writes `labels.tif`: a segmented image becomes
training data by copying its labels.tif to `<id>.labels.tif`; or one plane `(H, W)` of instance
ids whose classes (names from `classes:`) the CSV gives. With one class, a single plane needs
no CSV.

`check_labels` runs while the DAG is built: it reads headers and CSVs, no pixels; a label in
the image that the CSV does not list is found when the pixels are read (`load_labels`).
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import tifffile

from cellseg.common.errors import DataError
from cellseg.common.images import _READ_ERRORS, read_tiff_header, relabel_consecutive
from cellseg.data.image_folder import annotation_files, folder_images, image_size, read_image_file

LABELS_SUFFIX = ".labels.tif"
CLASSES_SUFFIX = ".labels.csv"


def index_labels(source: dict) -> list[str]:
    """The image ids (sorted), every image paired with its label image, every CSV with its
    label image."""
    folder = Path(source["path"])
    images = folder_images(folder, ".labels")
    annotation_files(folder, images, (LABELS_SUFFIX,), "label image")
    for path in sorted(folder.glob(f"*{CLASSES_SUFFIX}")):
        if path.name[: -len(CLASSES_SUFFIX)] not in images:
            raise DataError(f"{path}: class table without its image and label image in {folder}")
    return sorted(images)


def labels_files(source: dict, image_id: str) -> tuple[Path, Path, Path | None]:
    """The image, label image and class table (None when absent) of image `image_id`."""
    folder = Path(source["path"])
    images = folder_images(folder, ".labels")
    if image_id not in images:
        raise DataError(f"{folder}: no image named {image_id}")
    table = folder / f"{image_id}{CLASSES_SUFFIX}"
    return images[image_id], folder / f"{image_id}{LABELS_SUFFIX}", table if table.is_file() else None


def check_labels(source: dict, image_ids: list[str], read_header=read_tiff_header) -> None:
    """Check each image's header, its label image's shape and dtype against it, and its class
    table; `DataError` naming the file."""
    classes = source["classes"]
    for image_id in image_ids:
        image, labels, table = labels_files(source, image_id)
        size = image_size(image, read_header)
        shape, dtype = _label_header(labels)
        _check_shape(labels, shape, dtype, size, len(classes), table)
        if table is not None:
            read_class_table(table, classes)


def load_labels(source: dict, image_id: str) -> tuple[np.ndarray, np.ndarray]:
    """Image `image_id` `(H, W, 3) uint8` and its labels `(C, H, W) int32` (plane c = class
    c + 1, instances renumbered 1..n in the order of their ids)."""
    classes = source["classes"]
    image_path, labels_path, table = labels_files(source, image_id)
    image = read_image_file(image_path)
    stack = _read_stack(labels_path)
    _check_shape(labels_path, stack.shape, stack.dtype, image.shape[:2], len(classes), table)
    if stack.size and stack.min() < 0:
        raise DataError(f"{labels_path}: label image holds negative values (min {stack.min()}); expected ids >= 0")
    if table is not None:
        stack = _planes_by_class(labels_path, stack[0], read_class_table(table, classes), len(classes))
    return image, np.stack([relabel_consecutive(plane) for plane in stack])


def read_class_table(path: Path, classes: list[str]) -> dict[int, int]:
    """{label: class id 1-based} of a `label,class` CSV; `DataError` naming the file and row."""
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
            header = rows[0].keys() if rows else []
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise DataError(f"{path}: cannot read as CSV ({err})") from err
    if not {"label", "class"} <= set(header):
        raise DataError(f"{path}: expected a header row with columns label,class and a row per label")
    class_of: dict[int, int] = {}
    for row_number, row in enumerate(rows, 2):
        label = (row["label"] or "").strip()
        if not label.isdigit() or int(label) == 0:
            raise DataError(f"{path}: row {row_number}: label {label!r} is not a positive integer")
        if int(label) in class_of:
            raise DataError(f"{path}: row {row_number}: label {label} is listed twice")
        name = (row["class"] or "").strip()
        if name not in classes:
            raise DataError(f"{path}: row {row_number}: class {name!r} is not one of the classes {classes}")
        class_of[int(label)] = classes.index(name) + 1
    return class_of


def _planes_by_class(path: Path, plane: np.ndarray, class_of: dict[int, int], n_classes: int) -> np.ndarray:
    """`(C, H, W)`: plane c holds the instances of `plane` whose class id is c + 1, ids kept."""
    ids, inverse = np.unique(plane, return_inverse=True)
    missing = [int(label) for label in ids if label and int(label) not in class_of]
    if missing:
        raise DataError(
            f"{path}: labels {missing[:5]} ({len(missing)} in all) are not in its class table "
            f"{path.name.removesuffix('.tif')}.csv"
        )
    class_of_pixel = np.array([class_of.get(int(label), 0) for label in ids])[inverse.reshape(plane.shape)]
    return np.stack([np.where(class_of_pixel == c, plane, 0) for c in range(1, n_classes + 1)])


def _label_header(path: Path) -> tuple[tuple[int, ...], np.dtype]:
    try:
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            return tuple(series.shape), series.dtype
    except _READ_ERRORS as err:
        raise DataError(f"{path}: cannot read as TIFF ({type(err).__name__}: {err})") from err


def _read_stack(path: Path) -> np.ndarray:
    """The label image as `(planes, H, W)`, integer ids."""
    try:
        stack = tifffile.imread(path)
    except _READ_ERRORS as err:
        raise DataError(f"{path}: cannot read as TIFF ({type(err).__name__}: {err})") from err
    return stack[None] if stack.ndim == 2 else stack


def _check_shape(path: Path, shape, dtype, size, n_classes: int, table: Path | None) -> None:
    """The label image must be `(H, W)` or `(planes, H, W)` of an integer dtype, of its image's
    size, with one plane per class, or one plane and a class table."""
    if len(shape) not in (2, 3) or np.dtype(dtype).kind not in "ui":
        raise DataError(
            f"{path}: label image of shape {shape} and dtype {dtype}; expected integer ids, (H, W) or (C, H, W)"
        )
    planes = 1 if len(shape) == 2 else shape[0]
    if tuple(shape[-2:]) != tuple(size):
        raise DataError(f"{path}: label image is {shape[-2]}x{shape[-1]} (HxW) but its image is {size[0]}x{size[1]}")
    if table is not None and planes != 1:
        raise DataError(f"{path}: {planes} planes beside a class table; a class table goes with a single plane of ids")
    if table is None and planes != n_classes and not (planes == 1 and n_classes == 1):
        hint = f"; add {path.name.removesuffix('.tif')}.csv (label,class)" if planes == 1 else ""
        raise DataError(
            f"{path}: {planes} plane(s) of labels but {n_classes} classes: expected one plane per class{hint}"
        )
