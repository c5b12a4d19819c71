"""The geojson source (cellseg.data.geojson_source through cellseg.data.dataset): QuPath GeoJSON read as
training labels, the GeoJSON that `segment` writes read back as the cells it came from, and one
message per bad annotation while the DAG is built."""

import json
import logging

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from cellseg.common.errors import DataError
from cellseg.common.files import write_tiff
from cellseg.common.instances import InstanceSet, bounding_rect
from cellseg.data.dataset import DatasetIndex, check_headers, index_test_set, index_training_set, load_sample
from cellseg.outputs.segment_export import cell_table, geojson

CLASSES = ["tumour", "immune", "stroma"]


def drawn_labels(height=64, width=80) -> np.ndarray:
    """(3, H, W) uint32 disjoint cells: discs, two touching discs, a ring with a hole, cells cut
    by the top border and in the bottom-right corner, cells of 1, 2 and 3 px, and one cell of
    two diagonal pixels (two pieces)."""
    yy, xx = np.mgrid[:height, :width]
    labels = np.zeros((3, height, width), np.uint32)
    taken = np.zeros((height, width), bool)

    def cell(c, pixels):
        pixels = pixels & ~taken
        labels[c][pixels] = labels[c].max() + 1
        taken[pixels] = True

    def disc(cy, cx, r, inner=-1.0):
        d2 = (yy - cy) ** 2 + (xx - cx) ** 2
        return (d2 <= r * r) & (d2 > inner * abs(inner))

    def at(*points):
        out = np.zeros((height, width), bool)
        for y, x in points:
            out[y, x] = True
        return out

    cell(0, disc(20, 20, 6))
    cell(0, disc(20, 32.5, 6.5))  # touches the first
    cell(0, disc(0, 50, 5))  # cut by the top border
    cell(0, at((60, 5), (60, 6), (61, 5)))  # 3 px
    cell(1, disc(45, 20, 4))
    cell(1, disc(63, 79, 5))  # in the bottom-right corner
    cell(1, at((5, 70)))  # 1 px
    cell(1, at((10, 70), (10, 71)))  # 2 px
    cell(1, at((15, 70), (16, 71)))  # two pieces touching at a corner
    cell(2, disc(40, 55, 9, inner=4))  # a ring
    return labels


def instance_set(labels: np.ndarray) -> InstanceSet:
    """The cells of a (C, H, W) label image as `segment` holds them."""
    masks, classes = [], []
    for c, plane in enumerate(labels):
        for number in range(1, int(plane.max()) + 1):
            masks.append(plane == number)
            classes.append(c + 1)
    boxes = np.array([bounding_rect(m) for m in masks], np.float32)
    return InstanceSet.from_dense(boxes, np.ones(len(masks)), np.array(classes), np.stack(masks))


def best_iou(truth: np.ndarray, labels: np.ndarray) -> float:
    """The IoU of mask `truth` with the label of `labels` that overlaps it most."""
    ids, counts = np.unique(labels[truth], return_counts=True)
    if not ids.any():
        return 0.0
    best = ids[np.argmax(np.where(ids > 0, counts, -1))]
    found = labels == best
    return (truth & found).sum() / (truth | found).sum()


def _png(path, height, width):
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)).save(path)


def _write(path, value):
    path.write_text(json.dumps(value))


def _source(folder, **extra):
    return {"format": "geojson", "path": str(folder), "classes": CLASSES, **extra}


def dag_check(source):
    """What common.smk runs on the training set while it builds the DAG."""
    ids = index_training_set(source)
    check_headers(source, DatasetIndex(ids, []))
    return ids


def test_segment_geojson_reads_back_as_the_same_cells(tmp_path):
    labels = drawn_labels()
    cells = instance_set(labels)
    _png(tmp_path / "slide_1.png", *labels.shape[1:])
    _write(tmp_path / "slide_1.geojson", geojson(cells, cell_table(cells, CLASSES), CLASSES))
    source = _source(tmp_path)
    assert dag_check(source) == ["slide_1"] and index_test_set(source) == []
    sample = load_sample(source, "slide_1")
    assert sample.valid is None and sample.image.shape == (64, 80, 3)
    for c, plane in enumerate(labels):
        assert sample.labels[c].max() == plane.max()  # the count per class, exactly
        for number in range(1, int(plane.max()) + 1):
            assert best_iou(plane == number, sample.labels[c]) >= 0.95
    # Stronger than the IoU bound: every pixel, down to the 1 px cell.
    np.testing.assert_array_equal(sample.labels, labels.astype(np.int32))


def _square(x0, y0, x1, y1):
    return [[[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]]


def _feature(coordinates, name="tumour", kind="Polygon", **properties):
    classification = {"classification": {"name": name}} if name else {}
    return {
        "type": "Feature",
        "geometry": {"type": kind, "coordinates": coordinates},
        "properties": {"objectType": "annotation", **classification, **properties},
    }


def test_cells_nuclei_regions_and_class_forms(tmp_path):
    _png(tmp_path / "a.tif.png", 40, 50)  # image id 'a.tif'
    cell = _feature(_square(0, 0, 10, 10), "immune", objectType="cell")
    cell["nucleusGeometry"] = {"type": "Polygon", "coordinates": _square(2, 2, 5, 5)}
    features = [
        cell,  # a cell object: its nucleus
        _feature(_square(20, 0, 30, 10), "stroma", objectType="cell"),  # no nucleus: the cell outline
        {**_feature(_square(0, 20, 4, 24)), "properties": {"classification": "tumour"}},  # class as a string
        _feature([_square(40, 0, 44, 4), _square(46, 0, 48, 2)], kind="MultiPolygon"),  # one cell, two pieces
        _feature(_square(0, 0, 50, 30), "Region 1"),
        _feature(_square(0, 30, 10, 40), "Region 2"),
    ]
    _write(tmp_path / "a.tif.json", features)  # a plain list, and the .json suffix
    sample = load_sample(_source(tmp_path), "a.tif")
    assert sample.labels[1].sum() == 9 and sample.labels[1][2:5, 2:5].all()
    assert sample.labels[2][0:10, 20:30].all() and sample.labels[2].sum() == 100
    assert sample.labels[0].max() == 2 and sample.labels[0][0, 46] == sample.labels[0][0, 40] == 2
    expected = np.zeros((40, 50), bool)
    expected[:30] = True
    expected[30:, :10] = True
    np.testing.assert_array_equal(sample.valid, expected)
    # Another region glob: the regions are cells of no configured class now.
    with pytest.raises(DataError, match=r"feature 4: class 'Region 1' is not one of the classes"):
        load_sample(_source(tmp_path, geojson_region_class="Annotated*"), "a.tif")


def test_overlaps_within_a_class_go_to_the_smaller_cell_as_in_coco(tmp_path):
    squares = [(0, 0, 20, 20), (5, 5, 10, 10), (22, 0, 32, 10), (27, 5, 37, 15)]  # big, small inside; equal pair
    _png(tmp_path / "img.png", 30, 40)
    features = [_feature(_square(*square)) for square in squares]
    _write(tmp_path / "img.geojson", {"type": "FeatureCollection", "features": features})
    sample = load_sample(_source(tmp_path), "img")
    masks = np.zeros((len(squares), 30, 40), np.uint8)
    for k, (x0, y0, x1, y1) in enumerate(squares):
        masks[k, y0:y1, x0:x1] = 1
    rles = mask_utils.encode(np.asfortranarray(masks.transpose(1, 2, 0)))
    coco = {
        "images": [{"id": 1, "file_name": "img.tif", "height": 30, "width": 40}],
        "categories": [{"id": k + 1, "name": name} for k, name in enumerate(CLASSES)],
        "annotations": [
            {"id": k + 1, "image_id": 1, "category_id": 1, "iscrowd": 0,
             "segmentation": {"size": rle["size"], "counts": rle["counts"].decode()}}
            for k, rle in enumerate(rles)
        ],
    }
    _write(tmp_path / "coco.json", coco)
    (tmp_path / "coco_images").mkdir()
    write_tiff(tmp_path / "coco_images" / "img.tif", sample.image)
    coco_source = {"format": "coco", "train_json": str(tmp_path / "coco.json"),
                   "image_dir": str(tmp_path / "coco_images"), "classes": CLASSES}
    coco_sample = load_sample(coco_source, "img")
    np.testing.assert_array_equal(sample.labels, coco_sample.labels)
    plane = sample.labels[0]
    assert (plane[5:10, 5:10] == plane[7, 7]).all() and plane[7, 7] != plane[0, 0]  # the small one whole
    assert plane[7, 30] == plane[14, 36] != plane[0, 22]  # of equal areas the later one


def test_a_self_intersecting_polygon_is_repaired_with_a_warning(tmp_path, caplog):
    _png(tmp_path / "img.png", 20, 20)
    bow_tie = [[[0, 0], [10, 10], [10, 0], [0, 10], [0, 0]]]
    _write(tmp_path / "img.geojson", {"type": "Feature", **_feature(bow_tie)})  # a single Feature
    with caplog.at_level(logging.WARNING, logger="cellseg.data.dataset"):
        dag_check(_source(tmp_path))
    assert "img.geojson: feature 0: invalid Polygon (Self-intersection" in caplog.text
    assert "repaired by shapely make_valid into 2 polygon(s)" in caplog.text
    plane = load_sample(_source(tmp_path), "img").labels[0]
    assert plane.max() == 1 and plane[5, 1] == plane[5, 8] == 1 and plane[1, 5] == 0  # two triangles, one cell


GOOD = _feature(_square(1, 1, 6, 6))


def _annotate(features):
    return lambda folder: _write(folder / "b.geojson", {"type": "FeatureCollection", "features": [GOOD, *features]})


@pytest.mark.parametrize("edit, message", [
    (_annotate([_feature([[[0, 0], [5, 5], [0, 0]]])]),
     r"b\.geojson: feature 1: Polygon has no area \(Too few points.+\); a polygon needs 3 distinct points not "
     r"on one line: redraw or delete it"),
    (_annotate([_feature([[[0, 0], [2, 2], [4, 4], [0, 0]]])]),
     r"b\.geojson: feature 1: Polygon has no area \(Self-intersection.+\); a polygon needs 3 distinct points "
     r"not on one line: redraw or delete it"),
    (_annotate([_feature([[0, 0], [5, 5], [0, 5]])]),
     r"b\.geojson: feature 1: Polygon coordinates are not rings of x, y points \(.+\)"),
    (_annotate([_feature(_square(1, 1, 6, 6), "Tumor")]),
     r"b\.geojson: feature 1: class 'Tumor' is not one of the classes \['tumour', 'immune', 'stroma'\] nor a "
     r"region \(data\.geojson_region_class 'Region\*'\)"),
    (_annotate([_feature(_square(1, 1, 6, 6), None)]),
     r"b\.geojson: feature 1: has no classification; classify it as one of \['tumour', 'immune', 'stroma'\] or "
     r"as a region \(a class matching data\.geojson_region_class 'Region\*'\)"),
    (_annotate([_feature(_square(10, 10, 32, 20))]),
     r"b\.geojson: feature 1: coordinates x 10\.\.32, y 10\.\.20 reach beyond the 30 x 20 \(W x H\) image by "
     r"more than 1 px; is it the GeoJSON of another or a downsampled image\?"),
    (_annotate([{**GOOD, "geometry": {"type": "Point", "coordinates": [3, 3]}}]),
     r"b\.geojson: feature 1: geometry is Point; expected a Polygon or MultiPolygon"),
    (lambda folder: _write(folder / "b.geojson", {"type": "FeatureCollection", "features": []}),
     r"b\.geojson: GeoJSON without features; export the image's objects from QuPath \(a region alone marks an "
     r"area without cells\)"),
    (lambda folder: (folder / "b.geojson").write_text("{not json"),
     r"b\.geojson: cannot read as JSON \(.+\)"),
    (lambda folder: (folder / "b.geojson").unlink(),
     r"b\.png: image without its GeoJSON \(b\.geojson or b\.json\) in .+"),
    (lambda folder: (folder / "b.png").unlink(),
     r"b\.geojson: GeoJSON without its image \(b with one of \.tif, \.tiff, \.svs, \.ndpi, \.png, \.jpg, \.jpeg\) in .+"),
    (lambda folder: _write(folder / "b.json", [GOOD]),
     r"b\.json: second GeoJSON of image b beside b\.geojson; keep one"),
])
def test_bad_annotations_get_one_line_before_any_job(tmp_path, edit, message):
    for name in ("a", "b"):
        _png(tmp_path / f"{name}.png", 20, 30)
        _write(tmp_path / f"{name}.geojson", [GOOD])
    dag_check(_source(tmp_path))
    edit(tmp_path)
    with pytest.raises(DataError) as caught:
        dag_check(_source(tmp_path))
    assert "\n" not in str(caught.value)
    assert caught.match(rf"^{tmp_path}/{message}$")


def test_coordinates_within_a_pixel_of_the_border_are_cut_off(tmp_path):
    _png(tmp_path / "img.png", 20, 30)
    _write(tmp_path / "img.geojson", [_feature(_square(-0.9, 15, 30.9, 20.9))])
    dag_check(_source(tmp_path))
    assert load_sample(_source(tmp_path), "img").labels[0].sum() == 5 * 30


def test_a_dataset_without_any_cell_of_the_classes(tmp_path):
    _png(tmp_path / "img.png", 20, 30)
    _write(tmp_path / "img.geojson", [_feature(_square(0, 0, 30, 20), "Region")])
    with pytest.raises(DataError, match=r"no GeoJSON file holds a cell of the classes"):
        dag_check(_source(tmp_path))


def test_an_image_name_that_snakemake_patterns_cannot_carry(tmp_path):
    _png(tmp_path / "a{1}.png", 20, 30)
    _write(tmp_path / "a{1}.geojson", [GOOD])
    with pytest.raises(DataError, match=r"a\{1\}\.png: the name 'a\{1\}' holds \{ or \}"):
        dag_check(_source(tmp_path))
