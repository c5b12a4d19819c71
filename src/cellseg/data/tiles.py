"""Overlapping training tiles of one image with its labels and maps, and their index table.

Files (see docs/design.md): a shard's `results/tiles/shard_{shard}.npz` holds, per tile k
(numbered over the shard's images in turn), `image_k` `(S, S, 3) uint8`, `labels_k`
`(C, S, S) int32`, `center_k` `(S, S) float16` and `boundary_k` `(S, S) uint8`, zero-padded
where the image is smaller than a tile; `results/tiles/shard_{shard}.tsv` is the index:
`image_id`, `tile` (k), `y0`, `x0`, `height`, `width` (valid, unpadded extent),
`n_instances`, `n_<class name>`.

An image annotated only in parts (a `Sample.valid` area, the geojson format's regions) gives
only the tiles that lie wholly inside that area: a pixel outside it is unknown, and in a tile
it would be taken for background. Tiles are laid out over each connected piece of the area as
over an image (`tile_origins` over its bounding box) and kept when every pixel is valid; a
piece smaller than a tile gives one tile of its bounding box, zero-padded like an image
smaller than a tile, when that box is wholly valid (a rectangle), else none.
"""

import itertools
import logging
import os
from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd
from scipy import ndimage

from cellseg.common.files import atomic_path, npz_writer

_KEYS = ("image", "labels", "center", "boundary")
_INDEX_START = ["image_id", "tile", "y0", "x0", "height", "width", "n_instances"]

log = logging.getLogger("cellseg.data.tiles")


def tile_origins(length: int, size: int, overlap: int) -> list[int]:
    """Tile starts covering [0, length): step `size - overlap`, the last tile flush with the end.

    One origin 0 when `length <= size` (the tile is then padded).
    """
    if not 0 <= overlap < size:
        raise ValueError(f"tile size {size} and overlap {overlap}: need 0 <= overlap < size")
    if length <= size:
        return [0]
    return [*range(0, length - size, size - overlap), length - size]


def _crop_labels(plane: np.ndarray, full_area: np.ndarray, min_area: int) -> np.ndarray:
    """Relabel one class's crop `(h, w)` to 1..n (in order of the old ids), slivers set to 0.

    A sliver is an instance cut by the tile border whose part inside is under `min_area` px;
    `full_area[i]` is instance i's area in the whole image.
    """
    area = np.bincount(plane.ravel(), minlength=len(full_area))
    keep = (area > 0) & ~((area < min_area) & (area < full_area))
    keep[0] = False
    lut = np.zeros(len(area), np.int32)
    lut[keep] = np.arange(1, np.count_nonzero(keep) + 1, dtype=np.int32)
    return lut[plane]


def _cut(
    arrays: dict[str, np.ndarray], y0: int, x0: int, h: int, w: int, tile_h: int, tile_w: int,
    full_areas: list[np.ndarray], min_area: int,
) -> dict[str, np.ndarray]:
    """One `tile_h` x `tile_w` tile of `arrays` (full-image `image`, `labels`, `center`,
    `boundary`) holding their `h` x `w` window at (y0, x0).

    The rest of the tile is zero; labels are relabelled per class with slivers dropped.
    """
    window = (slice(y0, y0 + h), slice(x0, x0 + w))
    n_classes = arrays["labels"].shape[0]
    tile = {
        "image": np.zeros((tile_h, tile_w, 3), np.uint8),
        "labels": np.zeros((n_classes, tile_h, tile_w), np.int32),
        "center": np.zeros((tile_h, tile_w), np.float16),
        "boundary": np.zeros((tile_h, tile_w), np.uint8),
    }
    tile["image"][:h, :w] = arrays["image"][window]
    tile["center"][:h, :w] = arrays["center"][window]
    tile["boundary"][:h, :w] = arrays["boundary"][window]
    for c, plane in enumerate(arrays["labels"]):
        tile["labels"][c, :h, :w] = _crop_labels(plane[window], full_areas[c], min_area)
    return tile


def make_tiles(
    image: np.ndarray,
    labels: np.ndarray,
    center: np.ndarray,
    boundary: np.ndarray,
    size: int,
    overlap: int,
    skip_empty: bool,
    min_area: int,
    *,
    image_id: str,
    class_names: Sequence[str],
    valid: np.ndarray | None = None,
) -> tuple[list[dict[str, np.ndarray]], pd.DataFrame]:
    """Cut one image into overlapping `size` x `size` tiles for training.

    `image` `(H, W, 3) uint8`, `labels` `(C, H, W) int32` (0 = background), `center` and
    `boundary` `(H, W)` maps. Returns the tiles, dicts of `image` `(S, S, 3) uint8`, `labels`
    `(C, S, S) int32` (relabelled 1..n per class), `center` `(S, S) float16` and `boundary`
    `(S, S) uint8`, zero-padded where the image is smaller than a tile; and their index table
    (one row per tile, columns as the index TSV). A cut instance keeps its pixels
    on each side; its part in a tile is dropped (set to 0 in labels; the maps stay as they
    are) when under `min_area` px. `skip_empty` leaves out tiles without foreground, but the
    first tile is kept when all are empty. `size == 0`: one tile, the whole image, unpadded.
    `valid`: `(H, W)` bool, the annotated area (module doc; None = the whole image); an image
    with no tile inside it gives none.
    """
    if len(class_names) != labels.shape[0]:
        raise ValueError(
            f"make_tiles: {len(class_names)} class names for {labels.shape[0]} label planes"
        )
    height, width = center.shape
    if valid is None:
        windows = _windows(0, 0, height, width, size, overlap)
    else:
        windows = _valid_windows(valid, size, overlap)
        if not windows:
            log.warning("%s: no %s tile lies wholly inside its annotated regions; it gives no tiles",
                        image_id, f"{size} px" if size else "whole-region")
    arrays = {"image": image, "labels": labels, "center": center, "boundary": boundary}
    full_areas = [np.bincount(plane.ravel()) for plane in labels]
    cut = [
        ((y0, x0, h, w), _cut(arrays, y0, x0, h, w, size or h, size or w, full_areas, min_area))
        for y0, x0, h, w in windows
    ]
    if skip_empty:
        cut = [item for item in cut if item[1]["labels"].any()] or cut[:1]
    rows = []
    for k, ((y0, x0, h, w), tile) in enumerate(cut):
        counts = [int(plane.max()) for plane in tile["labels"]]  # ids are 1..n
        rows.append({
            "image_id": image_id, "tile": k, "y0": y0, "x0": x0, "height": h, "width": w,
            "n_instances": sum(counts), **{f"n_{name}": n for name, n in zip(class_names, counts)},
        })
    columns = [*_INDEX_START, *(f"n_{name}" for name in class_names)]
    return [tile for _, tile in cut], pd.DataFrame(rows, columns=columns)


def _windows(top: int, left: int, height: int, width: int, size: int, overlap: int) -> list[tuple[int, int, int, int]]:
    """Tile windows y0, x0, h, w over the `height` x `width` box at (top, left): `size` px
    tiles at `tile_origins` (smaller where the box is), or with `size == 0` the box itself."""
    if size == 0:
        return [(top, left, height, width)]
    ys, xs = tile_origins(height, size, overlap), tile_origins(width, size, overlap)
    return [(top + y, left + x, min(size, height), min(size, width)) for y, x in itertools.product(ys, xs)]


def _valid_windows(valid: np.ndarray, size: int, overlap: int) -> list[tuple[int, int, int, int]]:
    """The windows of each connected piece of `valid` that lie wholly inside it (module doc)."""
    pieces, _ = ndimage.label(valid)
    windows = []
    for rows, cols in ndimage.find_objects(pieces):
        box = (rows.start, cols.start, rows.stop - rows.start, cols.stop - cols.start)
        for y0, x0, h, w in _windows(*box, size, overlap):
            if valid[y0 : y0 + h, x0 : x0 + w].all():
                windows.append((y0, x0, h, w))
    return windows


def save_tiles(
    npz_path: str | os.PathLike, tsv_path: str | os.PathLike,
    tiles: list[dict[str, np.ndarray]], index: pd.DataFrame,
) -> None:
    """Write one image's `tiles` to one compressed npz (`image_k`, ...), `index` to TSV atomically."""
    save_tiles_shard(npz_path, tsv_path, [(tiles, index)])


def save_tiles_shard(
    npz_path: str | os.PathLike, tsv_path: str | os.PathLike,
    images: Iterable[tuple[list[dict[str, np.ndarray]], pd.DataFrame]],
) -> int:
    """Write the tiles of several images (`(tiles, index)` pairs from `make_tiles`, consumed
    one image at a time) to one npz and one index TSV, atomically; the tiles are numbered on
    over the images, and each index's `tile` column with them. Returns the number of tiles."""
    tables = []
    k = 0
    with npz_writer(npz_path) as add:
        for tiles, index in images:
            if len(tiles) != len(index):
                raise ValueError(f"save_tiles: {len(tiles)} tiles but {len(index)} index rows")
            for offset, tile in enumerate(tiles):
                for key in _KEYS:
                    add(f"{key}_{k + offset}", tile[key])
            tables.append(index.assign(tile=index["tile"] + k))
            k += len(tiles)
    with atomic_path(tsv_path) as tmp:
        pd.concat(tables, ignore_index=True).to_csv(tmp, sep="\t", index=False)
    return k


def load_tile(npz: str | os.PathLike | np.lib.npyio.NpzFile, k: int) -> dict[str, np.ndarray]:
    """Tile `k` of a tiles npz (a path or an open `np.load` result), reading only its members."""
    if isinstance(npz, np.lib.npyio.NpzFile):
        return {key: npz[f"{key}_{k}"] for key in _KEYS}
    with np.load(npz) as opened:
        return load_tile(opened, k)


def read_index(tsv_paths: Iterable[str | os.PathLike]) -> pd.DataFrame:
    """Concatenate tile index TSVs into one table (`image_id` kept as text)."""
    tables = [pd.read_csv(path, sep="\t", dtype={"image_id": str}) for path in tsv_paths]
    return pd.concat(tables, ignore_index=True)
