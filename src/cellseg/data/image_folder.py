"""A training folder of images, each beside its own annotation file (the `geojson` and
`labels` sources): pairing the files, checking image headers, reading an image whole.

Images are what `segment` reads (`cellseg.data.image_reader`: TIFF, PNG, JPEG, any case of the
suffix); an image's id is its file name without the suffix. Every image must have its
annotation file and every annotation file its image, so that a misnamed file stops the run
instead of silently training on fewer images.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import numpy as np

from cellseg.common.errors import DataError
from cellseg.common.images import TiffHeader, check_pixel_dtype
from cellseg.data.image_reader import SUFFIXES, TIFF_SUFFIXES, check_image, list_images, open_image


def folder_images(folder: str | os.PathLike, annotation_suffix: str = "") -> dict[str, Path]:
    """{image id: path} of the images in `folder`, sorted; files whose name ends in
    `annotation_suffix` + an image suffix (`x.labels.tif`) are annotations, not images.
    Listed once per process and folder version (jobs look up one image at a time)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: data folder not found")
    return dict(_listing(str(folder), folder.stat().st_mtime_ns, annotation_suffix))


@functools.lru_cache(maxsize=4)
def _listing(folder: str, mtime_ns: int, annotation_suffix: str) -> tuple[tuple[str, Path], ...]:
    """`folder_images` of a folder; `mtime_ns` keys the cache only."""
    images = list_images(folder)
    return tuple(
        (image_id, path) for image_id, path in images.items()
        if not (annotation_suffix and image_id.endswith(annotation_suffix))
    )


def annotation_files(folder: Path, images: dict[str, Path], suffixes: tuple[str, ...], what: str) -> dict[str, Path]:
    """{image id: its annotation file}, the first of `<id><suffix>` for `suffixes` that exists.
    `DataError` for an image without one, an image with two, or an annotation file (any of
    `suffixes`) without its image; `what` names the annotation kind in the message."""
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        suffix = next((s for s in suffixes if path.name.endswith(s)), None)
        if suffix is None or path.name.startswith("."):
            continue
        image_id = path.name[: -len(suffix)]
        if image_id not in images:
            raise DataError(
                f"{path}: {what} without its image ({image_id} with one of {', '.join(SUFFIXES)}) in {folder}"
            )
        if image_id in found:
            raise DataError(f"{path}: second {what} of image {image_id} beside {found[image_id].name}; keep one")
        found[image_id] = path
    for image_id, image in images.items():
        if image_id not in found:
            names = " or ".join(f"{image_id}{s}" for s in suffixes)
            raise DataError(f"{image}: image without its {what} ({names}) in {folder}")
    return found


def image_size(path: Path, read_header) -> tuple[int, int]:
    """(H, W) of a training image from its header; `DataError` naming the file when reading
    its pixels would fail. `read_header` reads a TIFF's (`io.read_tiff_header`, or a
    `HeaderCache`'s `read`); PNG and JPEG are verified by `segment_input.check_image`."""
    if path.suffix.lower() not in TIFF_SUFFIXES:
        return check_image(path)
    header: TiffHeader = read_header(path)
    check_pixel_dtype(header.dtype, path)
    return header.height, header.width


def read_image_file(path: Path) -> np.ndarray:
    """A training image whole, `(H, W, 3) uint8` RGB, decoded as `segment` decodes it."""
    reader = open_image(path)
    try:
        return reader.read(0, reader.size[0], 0, reader.size[1])
    finally:
        reader.close()
