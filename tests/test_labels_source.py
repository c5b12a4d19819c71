"""The labels source (cellseg.data.labels_source through cellseg.data.dataset): the labels.tif that
`segment` writes, or one plane of ids with a class table, read as training labels."""

import numpy as np
import pytest
import tifffile
from PIL import Image
from test_geojson_source import CLASSES, drawn_labels, instance_set

from cellseg.common.errors import DataError
from cellseg.common.files import write_tiff
from cellseg.data.dataset import DatasetIndex, check_headers, index_training_set, load_sample, training_files
from cellseg.inference.segment import write_labels

RNG = np.random.default_rng(0)


def _imwrite(path, array):
    tifffile.imwrite(path, array, photometric="minisblack")


def _source(folder):
    return {"format": "labels", "path": str(folder), "classes": CLASSES}


def dag_check(source):
    ids = index_training_set(source)
    check_headers(source, DatasetIndex(ids, []))
    return ids


def test_segment_labels_become_training_labels_unchanged(tmp_path):
    labels = drawn_labels()
    write_tiff(tmp_path / "slide_1.tif", RNG.integers(0, 256, (*labels.shape[1:], 3), dtype=np.uint8))
    write_labels(tmp_path / "slide_1.labels.tif", instance_set(labels), len(CLASSES), tile=32)
    source = _source(tmp_path)
    assert dag_check(source) == ["slide_1"]
    assert training_files(source, "slide_1") == [str(tmp_path / "slide_1.labels.tif"), str(tmp_path / "slide_1.tif")]
    sample = load_sample(source, "slide_1")
    assert sample.valid is None
    np.testing.assert_array_equal(sample.labels, labels.astype(np.int32))


def test_one_plane_of_ids_with_a_class_table(tmp_path):
    labels = drawn_labels()
    plane = np.zeros(labels.shape[1:], np.uint16)
    table = ["label,class"]
    for c, class_plane in enumerate(labels):
        for number in range(1, int(class_plane.max()) + 1):
            label = 10 * (c + 1) + number  # ids need not be consecutive
            plane[class_plane == number] = label
            table.append(f"{label},{CLASSES[c]}")
    Image.fromarray(RNG.integers(0, 256, (*plane.shape, 3), dtype=np.uint8)).save(tmp_path / "img.png")
    _imwrite(tmp_path / "img.labels.tif", plane)
    (tmp_path / "img.labels.csv").write_text("\n".join(table) + "\n")
    dag_check(_source(tmp_path))
    np.testing.assert_array_equal(load_sample(_source(tmp_path), "img").labels, labels.astype(np.int32))
    (tmp_path / "img.labels.csv").write_text("\n".join(table[:-1]) + "\n")  # the ring's label left out
    missing = r"img\.labels\.tif: labels \[31\] \(1 in all\) are not in its class table img\.labels\.csv$"
    with pytest.raises(DataError, match=missing):
        load_sample(_source(tmp_path), "img")


@pytest.mark.parametrize("edit, message", [
    (lambda d: _imwrite(d / "b.labels.tif", np.zeros((2, 20, 30), np.uint32)),
     r"b\.labels\.tif: 2 plane\(s\) of labels but 3 classes: expected one plane per class"),
    (lambda d: _imwrite(d / "b.labels.tif", np.zeros((20, 30), np.uint32)),
     r"b\.labels\.tif: 1 plane\(s\) of labels but 3 classes: expected one plane per class; add b\.labels\.csv "
     r"\(label,class\)"),
    (lambda d: _imwrite(d / "b.labels.tif", np.zeros((3, 20, 31), np.uint32)),
     r"b\.labels\.tif: label image is 20x31 \(HxW\) but its image is 20x30"),
    (lambda d: _imwrite(d / "b.labels.tif", np.zeros((3, 20, 30), np.float32)),
     r"b\.labels\.tif: label image of shape \(3, 20, 30\) and dtype float32; expected integer ids, \(H, W\) or "
     r"\(C, H, W\)"),
    (lambda d: (_imwrite(d / "b.labels.tif", np.zeros((20, 30), np.uint32)),
                (d / "b.labels.csv").write_text("label,class\n1,Tumor\n")),
     r"b\.labels\.csv: row 2: class 'Tumor' is not one of the classes \['tumour', 'immune', 'stroma'\]"),
    (lambda d: (d / "b.labels.tif").unlink(),
     r"b\.tif: image without its label image \(b\.labels\.tif\) in .+"),
    (lambda d: (d / "b.tif").unlink(),
     r"b\.labels\.tif: label image without its image \(b with one of \.tif, \.tiff, \.svs, \.ndpi, \.png, \.jpg, \.jpeg\) in .+"),
    (lambda d: (d / "c.labels.csv").write_text("label,class\n"),
     r"c\.labels\.csv: class table without its image and label image in .+"),
])
def test_bad_label_images_get_one_line_before_any_job(tmp_path, edit, message):
    for name in ("a", "b"):
        write_tiff(tmp_path / f"{name}.tif", RNG.integers(0, 256, (20, 30, 3), dtype=np.uint8))
        _imwrite(tmp_path / f"{name}.labels.tif", np.ones((3, 20, 30), np.uint32))
    dag_check(_source(tmp_path))
    edit(tmp_path)
    with pytest.raises(DataError) as caught:
        dag_check(_source(tmp_path))
    assert caught.match(rf"^{tmp_path}/{message}$")
