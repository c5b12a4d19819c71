"""cellseg.common.pixel_size: pixel sizes from TIFF metadata, and images at another pixel size than
the training one resampled for the network with their cells mapped back onto their pixels."""

import json

import numpy as np
import pandas as pd
import pytest
import tifffile
import torch
from scipy import ndimage

from cellseg.common.images import read_tiff_header
from cellseg.common.instances import InstanceSet
from cellseg.common.pixel_size import instances_on_image, mpp_warnings, network_scale, resampled_image
from cellseg.data.image_reader import image_mpp, open_image
from cellseg.inference.fold_ensemble import FoldEnsemble, infer
from cellseg.outputs.segment_file import segment_file
from cellseg.workflow.header_cache import HeaderCache

CPU = torch.device("cpu")
PREDICT = {"tile_size": 0, "overlap": 0, "tta": [], "batch_size": 2}
FUSION = {"weights": None, "iou_thr": 0.55, "skip_box_thr": 0.0, "conf_type": "avg", "absent_as_zero": False}
POINT = {"point": "cells", "score_thresholds": {1: 0.5}, "mask_thresholds": {1: 0.5}, "nms_threshold": 0.5}
RGB = np.zeros((8, 8, 3), np.uint8)


@pytest.mark.parametrize(
    "kwargs, mpp",
    [
        ({"resolution": (1e4 / 0.5, 1e4 / 0.5), "resolutionunit": "CENTIMETER"}, 0.5),
        ({"resolution": (25400 / 0.25, 25400 / 0.25), "resolutionunit": "INCH"}, 0.25),
        ({"description": "Aperio Image Library v12 |AppMag = 40|MPP = 0.2527|Filename = x"}, 0.2527),
        ({"resolution": (72, 72), "resolutionunit": "INCH"}, None),  # a software default, not a microscope
        ({}, None),
    ],
)
def test_tiff_metadata_gives_the_pixel_size(tmp_path, kwargs, mpp):
    path = tmp_path / "image.tif"
    tifffile.imwrite(path, RGB, photometric="rgb", **kwargs)
    assert read_tiff_header(path).mpp == mpp
    assert image_mpp(path) == mpp
    assert open_image(path).mpp == mpp


def test_ome_and_imagej_metadata_give_the_pixel_size(tmp_path):
    tifffile.imwrite(tmp_path / "a.ome.tif", RGB, photometric="rgb", metadata={"PhysicalSizeX": 0.121, "PhysicalSizeXUnit": "µm"})
    tifffile.imwrite(tmp_path / "b.ome.tif", RGB, photometric="rgb", metadata={"PhysicalSizeX": 500, "PhysicalSizeXUnit": "nm"})
    tifffile.imwrite(tmp_path / "c.tif", RGB[..., 0], imagej=True, resolution=(4.0, 4.0), metadata={"unit": "micron"})
    assert [image_mpp(tmp_path / name) for name in ("a.ome.tif", "b.ome.tif", "c.tif")] == [0.121, 0.5, 0.25]
    assert image_mpp(tmp_path / "d.png") is None  # other formats state none


def test_header_cache_keeps_the_pixel_size(tmp_path):
    path = tmp_path / "image.tif"
    tifffile.imwrite(path, RGB, photometric="rgb", resolution=(2e4, 2e4), resolutionunit="CENTIMETER")
    HeaderCache(tmp_path / "cache.json").read(path)  # a first build reads the file
    cache = HeaderCache(tmp_path / "cache.json")
    cache.read(path)
    cache.save()
    assert HeaderCache(tmp_path / "cache.json").read(path).mpp == 0.5
    stale = json.loads((tmp_path / "cache.json").read_text())
    stale[str(path)] = stale[str(path)][:7]  # written by code that did not keep the mpp
    (tmp_path / "cache.json").write_text(json.dumps(stale))
    assert HeaderCache(tmp_path / "cache.json").read(path).mpp == 0.5


def test_network_scale_needs_both_sizes():
    assert network_scale(0.5, 0.25) == 2.0
    assert network_scale(None, 0.25) == network_scale(0.5, None) == 1.0


def discs(height, width, radius, seed=0):
    """(H, W) instance ids of non-touching discs of `radius` px."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:height, :width]
    ids = np.zeros((height, width), np.int32)
    step = int(3 * radius)
    n = 0
    for cy in range(step // 2, height - radius, step):
        for cx in range(step // 2, width - radius, step):
            n += 1
            ids[(yy - cy - rng.uniform(-1, 1)) ** 2 + (xx - cx - rng.uniform(-1, 1)) ** 2 <= radius**2] = n
    return ids


def test_masks_found_on_a_resampled_copy_map_back_onto_the_image():
    ids = discs(120, 90, 6)
    for scale, least_iou in ((2.0, 0.9), (1.6, 0.9), (0.5, 0.75)):  # at 0.5 the copy holds less
        big = ndimage.zoom(ids, scale, order=0, grid_mode=True, mode="grid-constant")
        masks = np.stack([big == i for i in range(1, ids.max() + 1)])
        boxes = np.array([[sl[1].start, sl[0].start, sl[1].stop, sl[0].stop] for sl in ndimage.find_objects(big)], np.float32)
        found = InstanceSet.from_dense(boxes, np.full(len(masks), 0.9), np.ones(len(masks)), masks)
        back = instances_on_image(found, ids.shape)
        assert back.image_size == ids.shape
        for i in range(len(back)):
            mask, truth = back.binary_mask(i, 0.5), ids == i + 1
            assert (mask & truth).sum() / (mask | truth).sum() >= least_iou, (scale, i)
            np.testing.assert_allclose(back.boxes[i], boxes[i] / scale, atol=1e-4)


def test_resampled_image_keeps_colours_and_takes_the_new_size():
    image = np.full((40, 30, 3), (200, 40, 90), np.uint8)
    assert resampled_image(image, 2.0).shape == (80, 60, 3)
    assert resampled_image(image, 0.5).shape == (20, 15, 3)
    assert (resampled_image(image, 0.5) == (200, 40, 90)).all()


class LargeBlobDetector:
    """A model that, like one trained at 0.25 µm/px, finds only cells of the size it learnt:
    each bright connected blob of at least `min_area` px, mask probability 0.9."""

    def __init__(self, min_area):
        self.min_area = min_area

    def detect(self, images):
        results = []
        for image in images:
            ids = ndimage.label(image[0].numpy() > 0.5)[0]
            boxes, windows, crops = [], [], []
            for i, sl in enumerate(ndimage.find_objects(ids), 1):
                mask = ids[sl] == i
                if mask.sum() < self.min_area:
                    continue
                window = [sl[1].start, sl[0].start, sl[1].stop, sl[0].stop]
                boxes.append(window)
                windows.append(window)
                crops.append(mask * 0.9)
            n = len(boxes)
            results.append({
                "boxes": np.array(boxes, np.float32).reshape(-1, 4), "scores": np.full(n, 0.9, np.float32),
                "labels": np.ones(n, np.int64), "windows": np.array(windows, np.int64).reshape(-1, 4), "crops": crops,
            })
        return results


def twenty_x_image():
    """Discs of radius 5 px: cells of radius 10 px at 0.25 µm/px, imaged at 0.5 µm/px."""
    ids = discs(100, 100, 5)
    return ids, np.repeat((ids > 0)[..., None] * np.uint8(255), 3, axis=2)


def test_an_image_at_another_pixel_size_is_segmented_at_the_training_one():
    ids, image = twenty_x_image()
    ensemble = FoldEnsemble([LargeBlobDetector(min_area=200)], [None], CPU, PREDICT, FUSION, mpp=0.25)
    assert len(infer(ensemble, image, POINT)) == 0  # without its pixel size, every cell is too small
    cells = infer(ensemble, image, POINT, mpp=0.5)
    assert cells.image_size == ids.shape and len(cells) == ids.max()
    for i in range(len(cells)):
        mask = cells.binary_mask(i, 0.5)
        truth = ids == np.bincount(ids[mask]).argmax()
        assert (mask & truth).sum() / (mask | truth).sum() >= 0.85


def test_segment_reads_the_pixel_size_from_the_file_or_segment_mpp(tmp_path):
    ids, image = twenty_x_image()
    ensemble = FoldEnsemble([LargeBlobDetector(min_area=200)], [None], CPU, PREDICT, FUSION, mpp=0.25)
    stated, bare = tmp_path / "stated.tif", tmp_path / "bare.tif"
    tifffile.imwrite(stated, image, photometric="rgb", resolution=(2e4, 2e4), resolutionunit="CENTIMETER")
    tifffile.imwrite(bare, image, photometric="rgb")
    counts = {}
    for name, path, default in [("stated", stated, None), ("bare", bare, None), ("bare_given", bare, 0.5)]:
        outputs = {kind: tmp_path / name / f"cells.{kind}" for kind in ("csv", "geojson")}
        outputs |= {"labels": tmp_path / name / "labels.tif", "overlay": tmp_path / name / "overlay.png"}
        segment_file(path, outputs, ensemble, POINT, ["nucleus"], default_mpp=default, block=64, margin=24)
        table = pd.read_csv(outputs["csv"])
        counts[name] = len(table)
        assert tifffile.imread(outputs["labels"]).shape[-2:] == ids.shape  # the image's own pixels
    assert counts == {"stated": ids.max(), "bare": 0, "bare_given": ids.max()}


def test_a_known_image_size_without_a_training_size_is_warned_about():
    (line,) = mpp_warnings(None, {"a.tif": 0.25, "b.tif": 0.5, "c.png": None}, "data.mpp")
    assert "a.tif and 1 more images state 0.25" in line and "2x" in line and "set data.mpp" in line
    assert mpp_warnings(0.25, {"a.tif": 0.5}, "data.mpp") == []  # both known: resampled
    assert mpp_warnings(None, {"c.png": None}, "data.mpp") == []  # nothing known: nothing to say
