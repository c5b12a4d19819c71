"""cellseg.segment, segment_input and segment_export on drawn images and oracle models.

The oracles segment exactly what an image holds, whatever tile or block they are shown, so
the block-wise result must equal the whole-image ensemble's instances after thresholds.
"""

import json

import numpy as np
import pandas as pd
import pytest
import tifffile
import torch
from matplotlib.path import Path as MplPath
from PIL import Image
from scipy import ndimage

from cellseg.ensemble import fuse_instance_sets
from cellseg.errors import DataError
from cellseg.evaluation import apply_tuned
from cellseg.io import read_image
from cellseg.predict import predict_image
from cellseg.segment import Cells, label_tiles, resolve_overlaps, segment_image
from cellseg.segment_export import cell_table, geojson, mask_polygons, segment_file, summary_table
from cellseg.segment_input import check_image, list_images, open_image

CPU = torch.device("cpu")
CLASSES = ["tumour", "immune"]
PREDICT = {"tile_size": 48, "overlap": 24, "tta": ["hflip"], "batch_size": 4}
ENSEMBLE = {"weights": None, "iou_thr": 0.55, "skip_box_thr": 0.0, "conf_type": "avg", "absent_as_zero": False}
THRESHOLDS = {"score_thresholds": {1: 0.5, 2: 0.0}, "mask_thresholds": {1: 0.5, 2: 0.5}, "nms_threshold": 0.5}


class Oracle:
    """Instances of drawn images: channel 0 = instance id (0 = background), 1 = class, 2 =
    score × 255 (`colour=True`); or, for grey images, each connected bright (> 128) blob one
    instance of class 1, score 0.9. Masks have probability 0.8 × `scale`."""

    def __init__(self, colour=True, scale=1.0):
        self.colour, self.scale = colour, scale

    def detect(self, images):
        results = []
        for image in images:
            pixels = (image * 255).round().numpy().astype(np.int64)
            if self.colour:
                ids = pixels[0]
            else:
                ids = ndimage.label(pixels[0] > 128)[0]
            boxes, labels, scores, windows, crops = [], [], [], [], []
            for i, sl in enumerate(ndimage.find_objects(ids), 1):
                if sl is None:
                    continue
                mask = ids[sl] == i
                y, x = sl
                window = [x.start, y.start, x.stop, y.stop]
                boxes.append(window)
                windows.append(window)
                crops.append(mask * 0.8 * self.scale)
                labels.append(pixels[1][sl][mask][0] if self.colour else 1)
                scores.append(pixels[2][sl][mask][0] / 255 if self.colour else 0.9)
            results.append({
                "boxes": np.array(boxes, np.float32).reshape(-1, 4), "scores": np.array(scores, np.float32),
                "labels": np.array(labels, np.int64), "windows": np.array(windows, np.int64).reshape(-1, 4),
                "crops": crops,
            })
        return results


def drawn_cells(height, width, seed=0):
    """(H, W, 3) uint8 image for the colour `Oracle`: discs of random class and score, a ring
    (a mask with a hole) and a cell in two pieces; ids 1..n in channel 0."""
    rng = np.random.default_rng(seed)
    image = np.zeros((height, width, 3), np.uint8)
    yy, xx = np.mgrid[:height, :width]
    n = 0
    for cy in range(10, height - 8, 19):
        for cx in range(10 + (cy // 19) % 2 * 6, width - 8, 21):
            n += 1
            r = rng.uniform(4, 8)
            disc = (yy - cy - rng.uniform(-2, 2)) ** 2 + (xx - cx) ** 2 <= r * r
            image[disc] = (n, rng.integers(1, 3), rng.integers(60, 250))
    ring = ((yy - 30) ** 2 + (xx - 30) ** 2 <= 64) & ((yy - 30) ** 2 + (xx - 30) ** 2 > 9)
    image[(yy - 30) ** 2 + (xx - 30) ** 2 <= 81] = 0
    image[ring] = (n + 1, 2, 200)
    image[(yy >= 8) & (yy < 12) & (((xx >= 70) & (xx < 74)) | ((xx >= 78) & (xx < 82)))] = (n + 2, 1, 220)
    return image


def paint(found, n_classes):
    """(C, H, W) labels of binarised instances, painted in ascending score (the highest wins)."""
    labels = np.zeros((n_classes, *found.image_size), np.int64)
    for i in np.argsort(found.scores, kind="stable"):
        labels[found.classes[i] - 1][found.binary_mask(i, 0.5)] = i + 1
    return labels


def assemble(cells, n_classes):
    """The (C, H, W) label image `label_tiles` yields, put together."""
    tile = 32
    height, width = cells.image_size
    rows, cols = -(-height // tile), -(-width // tile)
    tiles = iter(label_tiles(cells, n_classes, tile))
    out = np.zeros((n_classes, rows * tile, cols * tile), np.uint32)
    for c in range(n_classes):
        for ty in range(rows):
            for tx in range(cols):
                out[c, ty * tile : (ty + 1) * tile, tx * tile : (tx + 1) * tile] = next(tiles)
    return out[:, :height, :width]


def assert_same_cells(a, b):
    """Two (C, H, W) label images hold the same masks, whatever their numbering."""
    assert a.shape == b.shape
    assert np.array_equal(a > 0, b > 0)
    for plane_a, plane_b in zip(a, b):
        pairs = np.unique(np.stack([plane_a[plane_a > 0], plane_b[plane_a > 0]]), axis=1)
        assert len(np.unique(pairs[0])) == len(np.unique(pairs[1])) == pairs.shape[1]


def ensemble_labels(image, models, n_classes, thresholds=THRESHOLDS):
    views = [predict_image(m, image, device=CPU, **PREDICT) for m in models]
    return paint(apply_tuned([fuse_instance_sets(views, **ENSEMBLE)], thresholds)[0], n_classes)


@pytest.mark.parametrize("block, margin", [(64, 24), (50, 30), (1000, 0)])
def test_blocks_give_the_whole_image_ensembles_cells_after_thresholds(block, margin):
    image = drawn_cells(130, 170)
    models = [Oracle(), Oracle(scale=0.7)]  # two "folds"; the second's masks fall below 0.5 alone
    cells = segment_image(
        open_reader(image), models, PREDICT, ENSEMBLE, THRESHOLDS, CPU, block=block, margin=margin
    )
    expected = ensemble_labels(image, models, 2)
    assert_same_cells(assemble(cells, 2), expected)
    assert (cells.scores[cells.classes == 1] >= 0.5).all()  # class 1's score threshold applied
    assert len(cells) > 30


def open_reader(image):
    from cellseg.segment_input import ArrayReader

    return ArrayReader(None, image)


def test_resolve_overlaps_gives_shared_pixels_to_the_higher_score():
    masks = [np.ones((4, 4), bool), np.ones((4, 4), bool), np.ones((4, 4), bool), np.ones((2, 2), bool)]
    cells = Cells(
        (10, 10), np.array([1, 1, 2, 1]), np.array([0.5, 0.9, 0.1, 0.3], np.float32),
        np.array([[0, 0, 4, 4], [2, 2, 6, 6], [0, 0, 4, 4], [2, 2, 4, 4]], np.int32), masks, np.zeros(4, np.uint32),
    )
    out = resolve_overlaps(cells)
    assert len(out) == 3  # the 2×2 cell lies inside the 0.9 cell and is gone
    first = out.mask(0)
    assert first.sum() == 12 and not first[2:4, 2:4].any()
    assert out.mask(2).sum() == 16  # another class keeps the shared pixels
    assert out.labels.tolist() == [1, 2, 1]


def write_format(folder, kind, image):
    """`image` (H, W, 3) uint8 saved as `kind`; returns the path."""
    grey = image[..., 0]
    if kind == "tiff_rgb_tiled":
        path = folder / "a.tif"
        tifffile.imwrite(path, image, tile=(64, 64), compression="zlib", photometric="rgb")
    elif kind == "bigtiff_rgba_strips":
        path = folder / "b.tiff"
        rgba = np.concatenate([image, np.full(grey.shape + (1,), 255, np.uint8)], axis=2)
        tifffile.imwrite(path, rgba, bigtiff=True, compression="lzw", rowsperstrip=16, photometric="rgb", extrasamples=["unassalpha"])
    elif kind == "tiff_grey16":
        path = folder / "c.tif"
        tifffile.imwrite(path, grey.astype(np.uint16) * 200 + 1000, compression="zlib")
    elif kind == "png_rgb":
        path = folder / "d.png"
        Image.fromarray(image).save(path)
    elif kind == "png_grey16":
        path = folder / "e.png"
        Image.fromarray(grey.astype(np.uint16) * 200).save(path)
    else:
        path = folder / "f.jpg"
        Image.fromarray(image).save(path, quality=95)
    return path


FORMATS = ["tiff_rgb_tiled", "bigtiff_rgba_strips", "tiff_grey16", "png_rgb", "png_grey16", "jpeg"]


def blob_image(height=150, width=190, seed=1):
    """Bright blobs (discs, a ring, a cell in two pieces) on black, for the grey `Oracle`."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:height, :width]
    grey = np.zeros((height, width), np.uint8)
    for cy in range(12, height - 10, 22):
        for cx in range(12, width - 10, 24):
            grey[(yy - cy) ** 2 + (xx - cx - rng.integers(-3, 4)) ** 2 <= rng.uniform(16, 64)] = 220
    grey[(yy - 12) ** 2 + (xx - 12) ** 2 <= 81] = 0
    grey[((yy - 12) ** 2 + (xx - 12) ** 2 <= 81) & ((yy - 12) ** 2 + (xx - 12) ** 2 > 9)] = 220
    return np.repeat(grey[..., None], 3, axis=2)


@pytest.mark.parametrize("kind", FORMATS)
def test_every_format_gives_labels_polygons_and_table_of_the_ensemble(tmp_path, kind):
    path = write_format(tmp_path, kind, blob_image())
    models = [Oracle(colour=False), Oracle(colour=False, scale=0.9)]
    outputs = {k: tmp_path / "out" / f for k, f in
               [("labels", "labels.tif"), ("geojson", "cells.geojson"), ("csv", "cells.csv"), ("overlay", "overlay.png")]}
    thresholds = {"score_thresholds": {1: 0.5}, "mask_thresholds": {1: 0.5}, "nms_threshold": 0.5}
    segment_file(
        path, outputs, models, ["nucleus"], predict=PREDICT, ensemble=ENSEMBLE, thresholds=thresholds,
        device=CPU, block=64, margin=24,
    )
    # labels.tif: (C, H, W) uint32, tiled, equal to the whole image's tuned ensemble
    with tifffile.TiffFile(outputs["labels"]) as tif:
        assert tif.pages.first.is_tiled
        labels = tif.asarray()
    assert labels.dtype == np.uint32 and labels.shape == (1, 150, 190)
    image = open_image(path).read(0, 150, 190 * 0, 190)
    assert_same_cells(labels, ensemble_labels(image, models, 1, thresholds))
    ids = np.unique(labels[0])[1:]
    assert ids.tolist() == list(range(1, len(ids) + 1)) and len(ids) >= 40

    table = pd.read_csv(outputs["csv"])
    assert len(table) == len(ids)
    for row in table.itertuples():
        rows, cols = np.nonzero(labels[row.class_id - 1] == row.label)
        assert row.area_px == len(rows)
        assert row.centroid_x == pytest.approx(cols.mean(), abs=0.01)
        assert row.centroid_y == pytest.approx(rows.mean(), abs=0.01)
        assert (row.bbox_x0, row.bbox_y0, row.bbox_x1, row.bbox_y1) == (cols.min(), rows.min(), cols.max() + 1, rows.max() + 1)
        assert row.mean_r == pytest.approx(image[rows, cols, 0].mean(), abs=1e-3)

    collection = json.loads(outputs["geojson"].read_text())
    assert_qupath_detections(collection, ["nucleus"])
    assert len(collection["features"]) == len(ids)
    holes = 0
    for feature, row in zip(collection["features"], table.itertuples()):
        truth = labels[row.class_id - 1] == row.label
        drawn = rasterise(feature["geometry"], truth.shape)
        assert (drawn & truth).sum() / (drawn | truth).sum() >= 0.9
        assert np.array_equal(drawn, truth)  # pixel centres: exact, not only IoU >= 0.9
        holes += feature["geometry"]["type"] == "Polygon" and len(feature["geometry"]["coordinates"]) > 1
    assert holes == 1  # the ring
    assert outputs["overlay"].stat().st_size > 1000


def assert_qupath_detections(collection, class_names):
    """The shape QuPath's GeoJSON import reads as detection objects."""
    assert collection["type"] == "FeatureCollection"
    for feature in collection["features"]:
        assert feature["type"] == "Feature"
        geometry = feature["geometry"]
        polygons = [geometry["coordinates"]] if geometry["type"] == "Polygon" else geometry["coordinates"]
        assert geometry["type"] in ("Polygon", "MultiPolygon")
        for polygon in polygons:
            for ring in polygon:
                assert len(ring) >= 4 and ring[0] == ring[-1]
                assert all(len(point) == 2 and all(isinstance(v, float | int) for v in point) for point in ring)
        props = feature["properties"]
        assert props["objectType"] == "detection"
        assert props["classification"]["name"] in class_names
        colour = props["classification"]["color"]
        assert len(colour) == 3 and all(isinstance(v, int) and 0 <= v <= 255 for v in colour)
        assert all(isinstance(v, float | int) for v in props["measurements"].values())
        assert set(props["measurements"]) == {"score", "area_px"}


def rasterise(geometry, shape):
    """Pixels whose centre lies inside a GeoJSON Polygon / MultiPolygon (image coordinates)."""
    polygons = [geometry["coordinates"]] if geometry["type"] == "Polygon" else geometry["coordinates"]
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    centres = np.stack([xx.ravel() + 0.5, yy.ravel() + 0.5], 1)
    out = np.zeros(shape[0] * shape[1], bool)
    for outer, *holes in polygons:
        inside = MplPath(outer).contains_points(centres)
        for hole in holes:
            inside &= ~MplPath(hole).contains_points(centres)
        out |= inside
    return out.reshape(shape)


def test_mask_polygons_pieces_and_holes():
    mask = np.zeros((7, 9), bool)
    mask[1:6, 1:6] = True
    mask[3, 3] = False  # a hole
    mask[2, 7] = True  # a second piece
    pieces = mask_polygons(mask, x0=10, y0=20)
    assert sorted(len(p) for p in pieces) == [1, 2]
    geometry = {"type": "MultiPolygon", "coordinates": [[r.tolist() for r in p] for p in pieces]}
    full = np.zeros((30, 20), bool)
    full[20:27, 10:19] = mask
    assert np.array_equal(rasterise(geometry, full.shape), full)


def test_cell_table_and_geojson_of_a_drawn_image():
    image = drawn_cells(60, 90)
    cells = segment_image(open_reader(image), [Oracle()], PREDICT, ENSEMBLE, THRESHOLDS, CPU, block=40, margin=20)
    table = cell_table(cells, CLASSES)
    collection = geojson(cells, table, CLASSES)
    assert_qupath_detections(collection, CLASSES)
    kinds = {f["geometry"]["type"] for f in collection["features"]}
    assert kinds == {"Polygon", "MultiPolygon"}  # the two-piece cell
    assert set(table["class"]) == set(CLASSES)
    assert (table.groupby("class_id")["label"].apply(lambda s: sorted(s) == list(range(1, len(s) + 1)))).all()


def test_list_images_and_bad_input(tmp_path):
    with pytest.raises(DataError, match="images folder not found"):
        list_images(tmp_path / "none")
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(DataError, match=f"{tmp_path}: no images"):
        list_images(tmp_path)
    write_format(tmp_path, "png_rgb", blob_image(20, 30))
    tifffile.imwrite(tmp_path / "a.tif", blob_image(20, 30), photometric="rgb")
    assert list(list_images(tmp_path)) == ["a", "d"]
    Image.fromarray(blob_image(20, 30)).save(tmp_path / "a.png")
    with pytest.raises(DataError, match=r"a\.tif: same name as a\.png"):
        list_images(tmp_path)

    bad = {
        "garbage.tif": lambda p: p.write_bytes(b"not a tiff at all"),
        "float.tif": lambda p: tifffile.imwrite(p, np.zeros((8, 8), np.float32)),
        "five.tif": lambda p: tifffile.imwrite(p, np.zeros((5, 8, 8), np.uint8), photometric="minisblack", planarconfig="separate"),
        "truncated.png": lambda p: p.write_bytes((tmp_path / "d.png").read_bytes()[:60]),
        "cmyk.jpg": lambda p: Image.new("CMYK", (8, 8)).save(p),
    }
    for name, write in bad.items():
        write(tmp_path / name)
        with pytest.raises(DataError) as error:
            check_image(tmp_path / name)
        assert str(error.value).startswith(str(tmp_path / name)) and "\n" not in str(error.value)


def test_reader_regions_equal_read_image(tmp_path):
    rng = np.random.default_rng(0)
    rgb16 = rng.gamma(2, 3000, (101, 133, 3)).clip(0, 65535).astype(np.uint16)
    files = {
        "tiled16.tif": dict(data=rgb16, tile=(32, 48), compression="zlib", photometric="rgb"),
        "grey16.tif": dict(data=rgb16[..., 0], compression="lzw", rowsperstrip=7),
        "planar.tif": dict(data=np.moveaxis(rgb16, -1, 0), photometric="rgb", planarconfig="separate"),
        "big8.tif": dict(data=(rgb16 // 256).astype(np.uint8), bigtiff=True, tile=(16, 16), photometric="rgb"),
    }
    for name, kwargs in files.items():
        tifffile.imwrite(tmp_path / name, **kwargs)
        whole = read_image(tmp_path / name)
        reader = open_image(tmp_path / name)
        assert reader.size == (101, 133)
        assert np.array_equal(reader.read(0, 101, 0, 133), whole), name
        assert np.array_equal(reader.read(17, 70, 45, 131), whole[17:70, 45:131]), name


def test_summary_counts_and_density(tmp_path):
    folder = tmp_path / "x"
    folder.mkdir()
    tifffile.imwrite(folder / "labels.tif", np.zeros((2, 1000, 500), np.uint32))
    pd.DataFrame({"class_id": [1, 1, 2]}).to_csv(folder / "cells.csv", index=False)
    table = summary_table({"x": folder}, CLASSES)
    assert table.iloc[0].to_dict() == {
        "image": "x", "height": 1000, "width": 500, "megapixels": 0.5,
        "n_tumour": 2, "per_mpx_tumour": 4.0, "n_immune": 1, "per_mpx_immune": 2.0,
    }
