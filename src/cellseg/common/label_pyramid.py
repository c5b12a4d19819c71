"""labels.tif as a tiled, pyramidal OME-TIFF, painted from cells spooled to disk.

Cells arrive in the order they are finalised, not in the order of the label image's tiles, so
each cell's mask goes to a spool file (bits packed) as it comes, with its window, class and
label in compact arrays (about 30 bytes a cell). The label image is then painted tile by tile,
each tile from the masks of the cells that reach into it, read one at a time: a tile of a
coarse level spans a large part of a slide, so holding more would follow the cells. Level 0,
and levels subsampled by 2, 4, ... (nearest pixel: labels are ids), go in SubIFDs until the
image fits one tile, so QuPath, napari and Fiji open a slide's labels at any zoom.
"""

from __future__ import annotations

import os
import tempfile
from array import array

import numpy as np
import tifffile

from cellseg.common.files import atomic_path

LABEL_TILE = 512  # px, tiles of labels.tif at every level


class LabelSpool:
    """Final cells' masks in a temporary file, with their windows, classes and labels."""

    def __init__(self, folder: str | os.PathLike | None = None):
        if folder is not None:
            os.makedirs(folder, exist_ok=True)
        self._file = tempfile.TemporaryFile(dir=folder, prefix="labels-", suffix=".spool")
        self._windows, self._classes, self._labels = array("i"), array("B"), array("I")
        self._offsets = array("q", [0])

    def __enter__(self) -> LabelSpool:
        return self

    def __exit__(self, *exc) -> None:
        self._file.close()

    def __len__(self) -> int:
        return len(self._labels)

    def add(self, window, class_id: int, label: int, mask: np.ndarray) -> None:
        """One cell: `window` x0, y0, x1, y1, its (y1 - y0, x1 - x0) bool `mask`."""
        self._file.seek(0, os.SEEK_END)
        self._file.write(np.packbits(mask, axis=None).tobytes())
        self._offsets.append(self._file.tell())
        self._windows.extend(int(v) for v in window)
        self._classes.append(class_id)
        self._labels.append(label)

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(N, 4) windows, (N,) classes, (N,) labels, as numpy views."""
        return (np.frombuffer(self._windows, np.int32).reshape(-1, 4), np.frombuffer(self._classes, np.uint8),
                np.frombuffer(self._labels, np.uint32))

    def mask(self, i: int) -> np.ndarray:
        x0, y0, x1, y1 = self._windows[4 * i : 4 * i + 4]
        self._file.seek(self._offsets[i])
        bits = np.frombuffer(self._file.read(self._offsets[i + 1] - self._offsets[i]), np.uint8)
        return np.unpackbits(bits, count=(y1 - y0) * (x1 - x0)).reshape(y1 - y0, x1 - x0).astype(bool)


def level_count(size: tuple[int, int], tile: int = LABEL_TILE) -> int:
    """Levels 0, 1, ... (each half the last) until the longer side fits one tile."""
    levels, side = 1, max(size)
    while side > tile:
        side = -(-side // 2)
        levels += 1
    return levels


def level_tiles(spool: LabelSpool, n_classes: int, size: tuple[int, int], step: int, tile: int = LABEL_TILE):
    """The (tile, tile) uint32 tiles of the label image subsampled by `step` (pixel (r, c) of
    the level is pixel (r * step, c * step) of level 0), class plane by plane, rows of tiles
    top to bottom, left to right, zero-padded at the end."""
    windows, classes, labels = spool.arrays()
    height, width = -(-size[0] // step), -(-size[1] // step)
    span = tile * step  # level-0 px of one tile
    for class_id in range(1, n_classes + 1):
        of_class = np.flatnonzero(classes == class_id)
        for ty in range(-(-height // tile)):
            oy = ty * span
            rows = of_class[(windows[of_class, 1] < oy + span) & (windows[of_class, 3] > oy)]
            for tx in range(-(-width // tile)):
                ox = tx * span
                out = np.zeros((tile, tile), np.uint32)
                for i in rows[(windows[rows, 0] < ox + span) & (windows[rows, 2] > ox)].tolist():
                    _paint(out, spool.mask(i), windows[i], labels[i], oy, ox, step)
                yield out


def _paint(out: np.ndarray, mask: np.ndarray, window, label: int, oy: int, ox: int, step: int) -> None:
    """Paint `mask` (in level-0 `window`) into the tile `out` whose pixel (0, 0) is level-0
    pixel (oy, ox), sampling every `step`-th level-0 pixel."""
    x0, y0, x1, y1 = window.tolist()
    tile = out.shape[0]
    r0, r1 = max(0, -(-(y0 - oy) // step)), min(tile, -(-(y1 - oy) // step))
    c0, c1 = max(0, -(-(x0 - ox) // step)), min(tile, -(-(x1 - ox) // step))
    if r0 >= r1 or c0 >= c1:
        return
    sampled = mask[oy + r0 * step - y0 : oy + (r1 - 1) * step - y0 + 1 : step,
                   ox + c0 * step - x0 : ox + (c1 - 1) * step - x0 + 1 : step]  # fmt: skip
    out[r0:r1, c0:c1][sampled] = label


def write_label_pyramid(
    path: str | os.PathLike, spool: LabelSpool, n_classes: int, size: tuple[int, int], mpp: float | None = None,
    tile: int = LABEL_TILE,
) -> None:  # fmt: skip
    """labels.tif: (C, H, W) uint32 instance labels (plane c = class c + 1, 0 = background) as
    a zlib-compressed tiled OME-TIFF (BigTIFF when over 2 GB uncompressed), its pyramid levels
    in SubIFDs, `mpp` µm per px in its metadata when known; written atomically."""
    height, width = size
    levels = level_count(size, tile)
    metadata = {"axes": "CYX", **({"PhysicalSizeX": mpp, "PhysicalSizeY": mpp, "PhysicalSizeXUnit": "µm"} if mpp else {})}
    options = {"dtype": np.uint32, "tile": (tile, tile), "compression": "zlib", "photometric": "minisblack"}
    with atomic_path(path) as tmp:
        with tifffile.TiffWriter(tmp, bigtiff=n_classes * height * width * 4 > 2**31, ome=True) as tif:
            tif.write(level_tiles(spool, n_classes, size, 1, tile), shape=(n_classes, height, width),
                      subifds=levels - 1, metadata=metadata, **options)
            for level in range(1, levels):
                step = 2**level
                tif.write(level_tiles(spool, n_classes, size, step, tile),
                          shape=(n_classes, -(-height // step), -(-width // step)), subfiletype=1, **options)


def spool_cells(spool: LabelSpool, cells, labels: np.ndarray) -> None:
    """Add binary instances `cells` (an `InstanceSet`) with their `labels` to `spool`."""
    for i, window in enumerate(cells.windows.tolist()):
        spool.add(window, int(cells.classes[i]), int(labels[i]), cells.window_mask(i))
