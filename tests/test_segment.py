"""cellseg.inference.segment, segment_input and segment_export on drawn images and oracle models.

The oracles segment exactly what an image holds, whatever tile or block they are shown, so
the block-wise result must equal the whole-image ensemble's instances at the cells point.
"""

import json
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile
import torch
from matplotlib.path import Path as MplPath
from PIL import Image
from scipy import ndimage

from cellseg.common.errors import DataError
from cellseg.common.images import read_image
from cellseg.common.polygons import mask_polygons
from cellseg.data.image_reader import check_image, list_images, open_image
from cellseg.inference.fold_ensemble import FoldEnsemble, infer
from cellseg.inference.segment import segment_image, write_labels
from cellseg.outputs.segment_export import cell_table, class_colours, geojson, summary_table, write_overlay
from cellseg.outputs.segment_file import segment_file

CPU = torch.device("cpu")
CLASSES = ["tumour", "immune"]
PREDICT = {"tile_size": 48, "overlap": 24, "tta": ["hflip"], "batch_size": 4}
ENSEMBLE = {"weights": None, "iou_thr": 0.55, "skip_box_thr": 0.0, "conf_type": "avg", "absent_as_zero": False}
POINT = {"point": "cells", "score_thresholds": {1: 0.5, 2: 0.0}, "mask_thresholds": {1: 0.5, 2: 0.5}, "nms_threshold": 0.5}


def fold_ensemble(models, maps=None):
    return FoldEnsemble(models, maps or [None] * len(models), CPU, PREDICT, ENSEMBLE)


class Oracle:
    """Instances of drawn images: channel 0 = instance id (0 = background), 1 = class, 2 =
    score × 255 (`colour=True`); or, for grey images, each connected bright (> 128) blob one
    instance of class 1, score 0.9. Masks have probability 0.8 × `scale`. `other_class`: each
    instance is also reported as the other of two classes at 0.6 x its score (what Mask R-CNN
    does with a cell whose class it is unsure of)."""

    def __init__(self, colour=True, scale=1.0, other_class=False):
        self.colour, self.scale, self.other_class = colour, scale, other_class

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
                if self.other_class:
                    boxes.append(window)
                    windows.append(window)
                    crops.append(mask * 0.8 * self.scale)
                    labels.append(3 - labels[-1])
                    scores.append(scores[-1] * 0.6)
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
    """The (C, H, W) label image `write_labels` writes, read back (32 px tiles: several levels)."""
    with tempfile.TemporaryDirectory() as folder:
        write_labels(Path(folder) / "labels.tif", cells, n_classes, tile=32)
        return tifffile.imread(Path(folder) / "labels.tif").reshape(n_classes, *cells.image_size)


def assert_same_cells(a, b):
    """Two (C, H, W) label images hold the same masks, whatever their numbering."""
    assert a.shape == b.shape
    assert np.array_equal(a > 0, b > 0)
    for plane_a, plane_b in zip(a, b):
        pairs = np.unique(np.stack([plane_a[plane_a > 0], plane_b[plane_a > 0]]), axis=1)
        assert len(np.unique(pairs[0])) == len(np.unique(pairs[1])) == pairs.shape[1]


def ensemble_labels(image, models, n_classes, point=POINT):
    """The whole image's cells at `point`, through the one inference path, painted."""
    return paint(infer(fold_ensemble(models), image, point), n_classes)


@pytest.mark.parametrize("block, margin", [(64, 24), (50, 30), (1000, 0)])
def test_blocks_give_the_whole_image_ensembles_cells_at_the_cells_point(block, margin):
    image = drawn_cells(130, 170)
    models = [Oracle(), Oracle(scale=0.7)]  # two "folds"; the second's masks fall below 0.5 alone
    cells = segment_image(open_reader(image), fold_ensemble(models), POINT, block=block, margin=margin)
    expected = ensemble_labels(image, models, 2)
    assert_same_cells(assemble(cells, 2), expected)
    assert (cells.scores[cells.classes == 1] >= 0.5).all()  # class 1's score threshold applied
    assert len(cells) > 30


@pytest.mark.parametrize("block, margin", [(64, 24), (1000, 0)])
def test_one_class_per_cell_and_one_cell_per_pixel_across_classes(block, margin):
    """Every cell reported twice, as both classes: the label image holds each once, with the
    class of the higher score, no pixel in two planes, and the other class's score kept."""
    image = drawn_cells(130, 170)
    point = {**POINT, "score_thresholds": {1: 0.0, 2: 0.0}}  # every cell's own class passes
    cells = segment_image(open_reader(image), fold_ensemble([Oracle(other_class=True)]), point, block=block, margin=margin)
    single = segment_image(open_reader(image), fold_ensemble([Oracle()]), point, block=block, margin=margin)
    labels = assemble(cells, 2)
    assert ((labels > 0).sum(axis=0) <= 1).all()  # no pixel belongs to two cells, whatever their class
    assert_same_cells(labels, assemble(single, 2))  # the duplicates of the other class are gone
    assert cells.classes.tolist() == single.classes.tolist()
    table = cell_table(cells, CLASSES)
    own = table[[f"score_{name}" for name in CLASSES]].to_numpy()
    assert np.allclose(own[np.arange(len(table)), table["class_id"] - 1], table["score"], atol=1e-4)
    other = own[np.arange(len(table)), 2 - table["class_id"]]
    assert np.allclose(other, 0.6 * table["score"], atol=2e-3)  # the other class's score, kept


def open_reader(image):
    from cellseg.data.image_reader import ArrayReader

    return ArrayReader(None, image)


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
    point = {"point": "cells", "score_thresholds": {1: 0.5}, "mask_thresholds": {1: 0.5}, "nms_threshold": 0.5}
    segment_file(path, outputs, fold_ensemble(models), point, ["nucleus"], block=64, margin=24)
    # labels.tif: (C, H, W) uint32, tiled, equal to the whole image's tuned ensemble
    with tifffile.TiffFile(outputs["labels"]) as tif:
        assert tif.pages.first.is_tiled
        labels = tif.asarray().reshape(-1, 150, 190)  # OME-TIFF reads one class as (H, W)
    assert labels.dtype == np.uint32 and labels.shape == (1, 150, 190)
    image = open_image(path).read(0, 150, 190 * 0, 190)
    assert_same_cells(labels, ensemble_labels(image, models, 1, point))
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
        assert set(props["measurements"]) == {"score", "area_px", *(f"score_{name}" for name in class_names)}


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
    cells = segment_image(open_reader(image), fold_ensemble([Oracle()]), POINT, block=40, margin=20)
    table = cell_table(cells, CLASSES)
    collection = geojson(cells, table, CLASSES)
    assert_qupath_detections(collection, CLASSES)
    kinds = {f["geometry"]["type"] for f in collection["features"]}
    assert kinds == {"Polygon", "MultiPolygon"}  # the two-piece cell
    assert set(table["class"]) == set(CLASSES)
    assert (table.groupby("class_id")["label"].apply(lambda s: sorted(s) == list(range(1, len(s) + 1)))).all()


def test_the_overlay_is_the_thumbnail_pixel_for_pixel_beside_a_legend_in_class_colours(tmp_path):
    image = np.random.default_rng(0).integers(0, 256, (60, 80, 3), dtype=np.uint8)
    names = [f"class{k}" for k in range(1, 13)]
    write_overlay(tmp_path / "overlay.png", image, list(range(12)), names)
    overlay = np.asarray(Image.open(tmp_path / "overlay.png").convert("RGB"))
    assert np.array_equal(overlay[:60, :80], image)
    legend = overlay[:, 80:]
    assert overlay.shape[0] > 12 * 14  # the legend of 12 classes is taller than the image
    for colour in class_colours(12)[:10]:  # tab10: the 11th class takes the 1st colour again
        assert (legend == colour).all(axis=-1).sum() >= 60, colour  # a line 3 px wide, 30 px long
    assert (legend.max(axis=-1) < 100).sum() > 12 * 20  # the names and counts, in black


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
        "int32.tif": lambda p: tifffile.imwrite(p, np.zeros((8, 8), np.int32)),
        "uint32.tif": lambda p: tifffile.imwrite(p, np.zeros((8, 8), np.uint32)),
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
    rgba8 = np.concatenate([(rgb16 // 256).astype(np.uint8), np.full((101, 133, 1), 255, np.uint8)], axis=2)
    files = {
        "tiled16.tif": dict(data=rgb16, tile=(32, 48), compression="zlib", photometric="rgb"),
        "grey16.tif": dict(data=rgb16[..., 0], compression="lzw", rowsperstrip=7),
        "grey8.tif": dict(data=rgba8[..., 0], rowsperstrip=16),
        "planar.tif": dict(data=np.moveaxis(rgb16, -1, 0), photometric="rgb", planarconfig="separate"),
        "big8.tif": dict(data=rgba8[..., :3], bigtiff=True, tile=(16, 16), photometric="rgb"),
        "rgba8.tif": dict(data=rgba8, compression="lzw", predictor=True, photometric="rgb", extrasamples=["unassalpha"]),
        "rgba16.tif": dict(data=np.concatenate([rgb16, rgb16[..., :1]], axis=2), tile=(32, 32), photometric="rgb",
                           extrasamples=["unassalpha"]),
        "float.tif": dict(data=rgb16 / 65535, tile=(48, 32), photometric="rgb"),
    }
    for name, kwargs in files.items():
        tifffile.imwrite(tmp_path / name, **kwargs)
        whole = read_image(tmp_path / name)
        reader = open_image(tmp_path / name)
        assert reader.size == (101, 133)
        assert np.array_equal(reader.read(0, 101, 0, 133), whole), name
        assert np.array_equal(reader.read(17, 70, 45, 131), whole[17:70, 45:131]), name


def test_a_16bit_copy_of_an_8bit_image_segments_from_the_same_pixels(tmp_path):
    """Regions of a 16-bit TIFF or PNG (every value x 257) equal those of the 8-bit file."""
    rgb = np.random.default_rng(1).integers(0, 256, (70, 90, 3), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "rgb8.tif", rgb, tile=(32, 32), photometric="rgb")
    tifffile.imwrite(tmp_path / "rgb16.tif", rgb.astype(np.uint16) * 257, tile=(32, 32), photometric="rgb")
    Image.fromarray(rgb[..., 0]).save(tmp_path / "grey8.png")
    Image.fromarray(rgb[..., 0].astype(np.uint16) * 257).save(tmp_path / "grey16.png")
    with Image.open(tmp_path / "grey16.png") as png:
        assert png.mode == "I;16"
    for eight, sixteen in [("rgb8.tif", "rgb16.tif"), ("grey8.png", "grey16.png")]:
        a, b = open_image(tmp_path / eight), open_image(tmp_path / sixteen)
        assert np.array_equal(a.read(0, 70, 0, 90), b.read(0, 70, 0, 90)), sixteen
        assert np.array_equal(a.read(5, 40, 33, 81), b.read(5, 40, 33, 81)), sixteen
    assert np.array_equal(open_image(tmp_path / "rgb16.tif").read(0, 70, 0, 90), rgb)


def test_float_values_outside_0_1_fail_when_read(tmp_path):
    image = np.zeros((40, 40), np.float32)
    image[30, 30] = 2.0
    tifffile.imwrite(tmp_path / "bright.tif", image, tile=(16, 16))
    assert check_image(tmp_path / "bright.tif") == (40, 40)  # the header is fine
    reader = open_image(tmp_path / "bright.tif")
    assert (reader.read(0, 16, 0, 16) == 0).all()
    with pytest.raises(DataError, match=r"bright.tif: float image holds values 0 to 2, outside 0-1"):
        reader.read(0, 40, 0, 40)


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
