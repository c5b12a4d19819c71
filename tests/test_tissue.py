"""cellseg.data.tissue: the tissue mask of a low-resolution copy, and slides predicted on their
tissue blocks only."""

import logging

import numpy as np
import pandas as pd
from PIL import Image
from test_slide import BrightBlobs, segment, write_ome

from cellseg.data.tissue import otsu_threshold, tissue_blocks, tissue_mask

GLASS, STROMA, NUCLEUS, SMUDGE = (236, 234, 238), (232, 150, 200), (90, 40, 130), (70, 70, 70)


def he_slide(height=256, width=384, seed=0):
    """(H, W, 3) uint8: glass with noise; tissue (pink, with dark nuclei) on the left 40 %;
    a grey smudge on the glass at the right; a speck of pink dust."""
    rng = np.random.default_rng(seed)
    image = np.clip(np.array(GLASS) + rng.normal(0, 2, (height, width, 3)), 0, 255).astype(np.uint8)
    image[:, : int(width * 0.4)] = STROMA
    yy, xx = np.mgrid[:height, :width]
    for cy in range(14, height - 10, 26):
        for cx in range(14, int(width * 0.4) - 10, 26):
            image[(yy - cy) ** 2 + (xx - cx) ** 2 <= 36] = NUCLEUS
    image[(yy - 128) ** 2 + (xx - 340) ** 2 <= 36] = SMUDGE
    image[200:202, 300:302] = STROMA
    return image


def test_otsu_splits_two_modes():
    values = np.concatenate([np.full(900, 0.02), np.full(100, 0.4)])
    assert 0.02 < otsu_threshold(values) <= 0.4


def test_tissue_mask_keeps_tissue_and_drops_glass_dust_and_smudges():
    image = he_slide()
    mask = tissue_mask(image, um_per_px=None)
    assert mask[:, :150].all()  # the tissue, nuclei included (holes filled)
    assert not mask[:, 160:].any()  # glass, the smudge (no colour) and the dust (too small)
    assert tissue_mask(np.repeat(image.mean(2, keepdims=True), 3, 2).astype(np.uint8)).all()  # grey: all tissue


def test_tissue_blocks_touch_the_mask():
    mask = np.zeros((4, 4), bool)
    mask[0, 0] = True
    blocks = [(0, 32, 0, 32), (0, 32, 32, 64), (32, 64, 0, 32)]
    assert tissue_blocks(mask, 16.0, blocks) == [(0, 32, 0, 32)]


def test_only_tissue_blocks_are_predicted(tmp_path, caplog):
    image = he_slide()
    path = tmp_path / "slide.ome.tif"
    write_ome(path, image, 2.0)  # 768 x 512 µm: the tissue is well above the minimum area
    dark = BrightBlobs(dark=True)
    with caplog.at_level(logging.INFO, logger="cellseg"):
        labels_on, table_on = segment(path, tmp_path, 2.0, detector=dark, out="on", tissue=True)
    assert "; 12 of 24 blocks predicted" in caplog.text  # 3 of 6 block columns touch the tissue
    labels_off, table_off = segment(path, tmp_path, 2.0, detector=dark, out="off", tissue=False)
    assert len(table_off) == len(table_on) + 1  # the smudge on the glass is only found without tissue
    assert np.array_equal(labels_on > 0, (labels_off > 0) & (np.arange(384) < 200))
    picture = np.array(Image.open(tmp_path / "on" / "tissue.png"))
    assert picture.shape[2] == 3 and (picture == (0, 200, 0)).all(2).any()
    assert pd.read_csv(tmp_path / "on" / "cells.csv")["centroid_x"].max() < 160
