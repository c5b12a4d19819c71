"""cellseg.data.slide: pyramids written by tifffile as scanners write them (an SVS-like file and an
OME-TIFF, with their pixel sizes), segmented at the level of the training pixel size, with every
output in level-0 pixels."""

import logging

import numpy as np
import pandas as pd
import pytest
import tifffile
import torch
from scipy import ndimage

from cellseg.data.slide import choose_level, is_slide
from cellseg.inference.fold_ensemble import FoldEnsemble
from cellseg.outputs.segment_file import segment_file

CPU = torch.device("cpu")
PREDICT = {"tile_size": 0, "overlap": 0, "tta": [], "batch_size": 2}
FUSION = {"weights": None, "iou_thr": 0.55, "skip_box_thr": 0.0, "conf_type": "avg", "absent_as_zero": False}
POINT = {"point": "cells", "score_thresholds": {1: 0.5}, "mask_thresholds": {1: 0.5}, "nms_threshold": 0.5}


class BrightBlobs:
    """Each connected bright (> 0.5) blob of at least `min_area` px is one cell of class 1;
    `dark`: each dark one (mean of the channels < 0.45), as nuclei on H&E."""

    def __init__(self, min_area=20, dark=False):
        self.min_area, self.dark = min_area, dark

    def detect(self, images):
        out = []
        for image in images:
            ids, _ = ndimage.label(image.mean(0).numpy() < 0.45 if self.dark else image[0].numpy() > 0.5)
            windows, crops = [], []
            for k, box in enumerate(ndimage.find_objects(ids), 1):
                if (ids[box] == k).sum() >= self.min_area:
                    windows.append((box[1].start, box[0].start, box[1].stop, box[0].stop))
                    crops.append((ids[box] == k).astype(np.float32))
            windows = np.array(windows, np.int64).reshape(-1, 4)
            out.append({"boxes": windows.astype(np.float32), "scores": np.full(len(windows), 0.9, np.float32),
                        "labels": np.ones(len(windows), np.int64), "windows": windows, "crops": crops})
        return out


def discs(height=200, width=260, radius=9.5, spacing=30):
    """Level 0: (H, W) int ids of bright discs on black, and the (H, W, 3) uint8 image."""
    yy, xx = np.mgrid[:height, :width]
    ids = np.zeros((height, width), np.int32)
    for n, (cy, cx) in enumerate([(y, x) for y in range(15, height - 14, spacing) for x in range(15, width - 14, spacing)], 1):
        ids[(yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2] = n
    return ids, np.repeat((ids > 0)[..., None] * np.uint8(230), 3, axis=2)


def write_svs(path, image, mpp):
    """Aperio's layout: tiled baseline with `MPP =`, a stripped thumbnail, a tiled level at 1/2."""
    head = f"Aperio Image Library v12.0.15\n{image.shape[1]}x{image.shape[0]} (64x64) RGB"
    with tifffile.TiffWriter(path) as tif:
        tif.write(image, tile=(64, 64), photometric="rgb", compression="zlib", metadata=None,
                  description=f"{head}|AppMag = 40|MPP = {mpp}")
        tif.write(image[::8, ::8].copy(), photometric="rgb", metadata=None, description=f"{head} -> thumbnail")
        tif.write(image[::2, ::2].copy(), tile=(64, 64), photometric="rgb", compression="zlib", metadata=None,
                  description=f"{head} -> level 1")


def write_ome(path, image, mpp):
    """An OME-TIFF pyramid in SubIFDs at 1, 1/2, 1/4, `mpp` (or none) as PhysicalSizeX."""
    size = {"PhysicalSizeX": mpp, "PhysicalSizeY": mpp, "PhysicalSizeXUnit": "µm"} if mpp else {}
    with tifffile.TiffWriter(path, ome=True) as tif:
        tif.write(image, tile=(64, 64), photometric="rgb", compression="zlib", subifds=2, metadata={"axes": "YXS", **size})
        for step in (2, 4):
            tif.write(image[::step, ::step].copy(), tile=(64, 64), photometric="rgb", compression="zlib", subfiletype=1)


def segment(path, tmp_path, model_mpp, default_mpp=None, detector=None, out="", **kwargs):
    ensemble = FoldEnsemble([detector or BrightBlobs()], [None], CPU, PREDICT, FUSION, mpp=model_mpp)
    out = tmp_path / (out or path.stem)
    outputs = {"labels": out / "labels.tif", "geojson": out / "cells.geojson", "csv": out / "cells.csv",
               "overlay": out / "overlay.png", "tissue": out / "tissue.png"}
    segment_file(path, outputs, ensemble, POINT, ["nucleus"], default_mpp=default_mpp, block=64, margin=24, **kwargs)
    labels = tifffile.imread(outputs["labels"])  # OME-TIFF reads one class as (H, W)
    return labels[None] if labels.ndim == 2 else labels, pd.read_csv(outputs["csv"])


@pytest.mark.parametrize("writer, name", [(write_svs, "slide.svs"), (write_ome, "slide.ome.tif")])
def test_a_pyramid_is_segmented_at_the_training_pixel_size_in_level0_pixels(tmp_path, caplog, writer, name):
    ids, image = discs()
    path = tmp_path / name
    writer(path, image, 0.25)
    assert is_slide(path)
    with caplog.at_level(logging.INFO, logger="cellseg"):
        labels, table = segment(path, tmp_path, model_mpp=0.5)
    assert "level 1 of" in caplog.text  # the 0.5 µm/px level, not level 0 resampled
    assert labels.shape == (1, *ids.shape) and len(table) == ids.max()
    for row in table.itertuples():
        mask = labels[0] == row.label
        truth = ids == np.bincount(ids[mask]).argmax()
        assert (mask & truth).sum() / (mask | truth).sum() >= 0.8
        assert row.centroid_x == pytest.approx(np.nonzero(truth)[1].mean(), abs=1.0)


def test_a_slide_without_a_pixel_size_warns_once_and_is_read_at_level0(tmp_path, caplog):
    ids, image = discs()
    path = tmp_path / "bare.tif"
    write_ome(path, image, None)
    with caplog.at_level(logging.INFO, logger="cellseg"):
        labels, table = segment(path, tmp_path, model_mpp=0.5)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "states no µm per pixel" in warnings[0].getMessage()
    assert "level 0 of 3" in caplog.text and len(table) == ids.max()
    # segment.mpp stands in for the missing metadata: level 1 again
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="cellseg"):
        segment(path, tmp_path, model_mpp=0.5, default_mpp=0.25)
    assert "level 1 of 3" in caplog.text and not [r for r in caplog.records if r.levelno == logging.WARNING]


def test_choose_level():
    assert choose_level([0.25, 0.5, 1.0], 0.5) == 1
    assert choose_level([0.25, 1.0, 4.0], 0.5) == 0  # the finer level, downsampled per block
    assert choose_level([0.25, 0.5, 1.0], 0.54) == 1
    assert choose_level([0.25, 0.5, 1.0], None) == 0 and choose_level([None, None], 0.5) == 0
    assert choose_level([0.25, 0.5, 1.0], 0.1) == 0
