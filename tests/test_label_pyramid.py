"""cellseg.common.label_pyramid and cellseg.inference.cell_stream: labels.tif painted from spooled cells at every
pyramid level, and a slide's cells finalised with only the seam band held."""

import logging
import re

import numpy as np
import tifffile
from test_segment import Oracle, blob_image, fold_ensemble, open_reader

from cellseg.common.instances import InstanceSet
from cellseg.common.label_pyramid import LabelSpool, level_tiles
from cellseg.inference.segment import segment_image, write_labels


def test_pyramid_levels_are_level0_subsampled(tmp_path):
    rng = np.random.default_rng(0)
    ids = np.zeros((2, 150, 230), np.int32)
    for c in range(2):
        for n in range(1, 40):
            y, x = rng.integers(0, 140), rng.integers(0, 220)
            ids[c, y : y + rng.integers(2, 10), x : x + rng.integers(2, 10)] = n
    crops, windows, classes = [], [], []
    for c in range(2):
        for n in np.unique(ids[c])[1:]:
            rows, cols = np.nonzero(ids[c] == n)
            windows.append((cols.min(), rows.min(), cols.max() + 1, rows.max() + 1))
            crops.append(ids[c, rows.min() : rows.max() + 1, cols.min() : cols.max() + 1] == n)
            classes.append(c + 1)
    cells = InstanceSet.from_windows((150, 230), np.array(windows, np.float32), np.ones(len(crops)), classes,
                                     np.array(windows), crops)
    write_labels(tmp_path / "labels.tif", cells, 2, tile=32)
    with tifffile.TiffFile(tmp_path / "labels.tif") as tif:
        assert tif.is_ome and tif.pages.first.is_tiled
        levels = [level.asarray() for level in tif.series[0].levels]
    assert len(levels) == 4  # 230 -> 115 -> 58 -> 29 px: the last fits one 32 px tile
    for k, level in enumerate(levels):
        assert np.array_equal(level > 0, ids[:, :: 2**k, :: 2**k] > 0)


def test_only_the_seam_band_is_held(caplog):
    image = np.tile(blob_image(150, 190), (2, 2, 1))  # 300 x 380 px, 5 block rows of 60 px
    with caplog.at_level(logging.INFO, logger="cellseg"):
        cells = segment_image(open_reader(image), fold_ensemble([Oracle(colour=False)]),
                              {"point": "cells", "score_thresholds": {1: 0.5}, "mask_thresholds": {1: 0.5},
                               "nms_threshold": 0.5}, block=60, margin=20)
    held = [int(n) for n in re.findall(r"(\d+) held", caplog.text)]
    assert len(cells) > 150 and len(held) == 5 * 7
    assert max(held) < len(cells) / 3 and held[-1] == 0  # about a block row and its margin


def test_a_coarse_tile_reads_only_its_own_masks(tmp_path):
    """At a coarse level one row of tiles spans most of a slide; masks are read per tile, so
    the first tile is painted before the other tiles' masks are read."""
    windows = [(x, y, x + 4, y + 4) for y in range(0, 240, 16) for x in range(0, 240, 16)]
    spool = LabelSpool(tmp_path)
    for label, window in enumerate(windows, 1):
        spool.add(window, 1, label, np.ones((4, 4), bool))
    reads = []
    read = spool.mask
    spool.mask = lambda i: reads.append(i) or read(i)
    tiles = level_tiles(spool, 1, (256, 256), step=4, tile=32)  # 2 x 2 tiles of 128 level-0 px
    first = next(tiles)
    in_first = sum(x < 128 and y < 128 for x, y, _, _ in windows)
    assert len(reads) == in_first < len(windows) / 3
    assert np.count_nonzero(first) == in_first  # one sampled pixel per 4 x 4 cell
    rest = list(tiles)
    assert len(reads) == len(windows) and len(rest) == 3
