"""Overlapping training tiles of one image with its labels and maps, and their index table.

Files (see docs/design.md): a shard's `results/tiles/shard_{shard}.npz` holds, per tile k
(numbered over the shard's images in turn), `image_k` `(S, S, 3) uint8`, `labels_k`
`(C, S, S) int32`, `center_k` `(S, S) float16` and `boundary_k` `(S, S) uint8`, zero-padded
where the image is smaller than a tile; `results/tiles/shard_{shard}.tsv` is the index:
`image_id`, `tile` (k), `y0`, `x0`, `height`, `width` (valid, unpadded extent),
`n_instances`, `n_<class name>`.
"""

import itertools
import os
from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd

from cellseg.errors import ConfigError
from cellseg.io import atomic_path, npz_writer

_KEYS = ("image", "labels", "center", "boundary")


def tile_origins(length: int, size: int, overlap: int) -> list[int]:
    """Tile starts covering [0, length): step `size - overlap`, the last tile flush with the end.

    One origin 0 when `length <= size` (the tile is then padded).
    """
    if size <= 0:
        raise ConfigError(f"tiles.size must be 0 (no tiling) or positive, got {size}")
    if not 0 <= overlap < size:
        raise ConfigError(f"tiles.overlap must be in [0, tiles.size = {size}), got {overlap}")
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
    arrays: dict[str, np.ndarray], y0: int, x0: int, tile_h: int, tile_w: int,
    full_areas: list[np.ndarray], min_area: int,
) -> dict[str, np.ndarray]:
    """One tile of `arrays` (full-image `image`, `labels`, `center`, `boundary`) at (y0, x0).

    The part beyond the image is zero; labels are relabelled per class with slivers dropped.
    """
    height, width = arrays["center"].shape
    window = (slice(y0, min(y0 + tile_h, height)), slice(x0, min(x0 + tile_w, width)))
    h, w = window[0].stop - y0, window[1].stop - x0
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
    """
    if len(class_names) != labels.shape[0]:
        raise ValueError(
            f"make_tiles: {len(class_names)} class names for {labels.shape[0]} label planes"
        )
    height, width = center.shape
    if size == 0:
        tile_h, tile_w, ys, xs = height, width, [0], [0]
    else:
        tile_h = tile_w = size
        ys, xs = tile_origins(height, size, overlap), tile_origins(width, size, overlap)
    arrays = {"image": image, "labels": labels, "center": center, "boundary": boundary}
    full_areas = [np.bincount(plane.ravel()) for plane in labels]
    cut = [
        (y0, x0, _cut(arrays, y0, x0, tile_h, tile_w, full_areas, min_area))
        for y0, x0 in itertools.product(ys, xs)
    ]
    if skip_empty:
        cut = [item for item in cut if item[2]["labels"].any()] or cut[:1]
    rows = []
    for k, (y0, x0, tile) in enumerate(cut):
        counts = [int(plane.max()) for plane in tile["labels"]]  # ids are 1..n
        rows.append({
            "image_id": image_id, "tile": k, "y0": y0, "x0": x0,
            "height": min(tile_h, height - y0), "width": min(tile_w, width - x0),
            "n_instances": sum(counts), **{f"n_{name}": n for name, n in zip(class_names, counts)},
        })
    return [tile for _, _, tile in cut], pd.DataFrame(rows)


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
