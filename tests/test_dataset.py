"""Indexing and loading both dataset formats, and the message of every bad input."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import tifffile
from pycocotools import mask as mask_utils

from cellseg.common.errors import DataError
from cellseg.data.dataset import (
    check_headers,
    check_test_headers,
    index_dataset,
    index_test_set,
    load_ground_truth,
    load_sample,
    load_test_image,
)

CLASSES = ["class1", "class2", "class3", "class4"]
MONUSEG = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "monuseg"


def _write_image(path, height, width):
    path.parent.mkdir(parents=True, exist_ok=True)
    image = np.full((height, width, 4), 255, np.uint8)
    image[..., :3] = np.arange(height * width * 3).reshape(height, width, 3) % 251
    tifffile.imwrite(
        path,
        image,
        photometric="rgb",
        extrasamples=("unassalpha",),
        compression="lzw",
        predictor=True,
    )


def _write_mask(path, mask):
    tifffile.imwrite(path, np.asarray(mask, np.float64), compression="zlib")


@pytest.fixture
def ref_dir(tmp_path):
    """Format 1: train/a (class1 + class3), train/b (class2 only), two test images."""
    root = tmp_path / "data"
    _write_image(root / "train" / "a" / "image.tif", 20, 30)
    mask = np.zeros((20, 30))
    mask[2:6, 2:9], mask[10:15, 10:20] = 12, 40
    _write_mask(root / "train" / "a" / "class1.tif", mask)
    _write_mask(root / "train" / "a" / "class3.tif", (mask > 0) * 5.0)
    _write_image(root / "train" / "b" / "image.tif", 12, 9)
    _write_mask(root / "train" / "b" / "class2.tif", np.eye(12, 9) * 3)
    _write_image(root / "test_release" / "t1.tif", 16, 17)
    _write_image(root / "test_release" / "t2.tif", 8, 40)
    id_map = [
        {"file_name": "t2.tif", "id": 7, "height": 8, "width": 40},
        {"file_name": "t1.tif", "id": 3, "height": 16, "width": 17},
    ]
    (root / "test_image_name_to_ids.json").write_text(json.dumps(id_map))
    return root


def _ref(root, classes=CLASSES):
    return {"format": "reference", "path": str(root), "classes": list(classes)}


def test_index_reference(ref_dir):
    index = index_dataset(_ref(ref_dir))
    assert index.train_ids == ["a", "b"]
    assert [(t.file_name, t.id, t.height, t.width) for t in index.test_images] == [
        ("t1.tif", 3, 16, 17),
        ("t2.tif", 7, 8, 40),
    ]
    assert index.test_images[0].path == ref_dir / "test_release" / "t1.tif"
    assert load_test_image(index.test_images[1]).shape == (8, 40, 3)


def test_load_reference_sample(ref_dir):
    sample = load_sample(_ref(ref_dir), "a")
    assert (
        sample.image_id == "a"
        and sample.image.shape == (20, 30, 3)
        and sample.image.dtype == np.uint8
    )
    assert sample.labels.shape == (4, 20, 30) and sample.labels.dtype == np.int32
    assert sample.labels[0, 3, 3] == 1 and sample.labels[0, 12, 12] == 2  # ids 12, 40 -> 1, 2
    assert sample.labels[2].max() == 1 and not sample.labels[1].any() and not sample.labels[3].any()
    assert load_sample(_ref(ref_dir), "b").labels[1].max() == 1


def _remove(path):
    shutil.rmtree(path) if path.is_dir() else path.unlink()


def _edit_id_map(root, edit):
    path = root / "test_image_name_to_ids.json"
    path.write_text(json.dumps(edit(json.loads(path.read_text()))))


BAD_LAYOUTS = {
    "missing folder": (lambda r: shutil.rmtree(r), "data: data folder not found"),
    "empty folder": (lambda r: [_remove(p) for p in r.iterdir()], "data: data folder is empty"),
    "no train": (lambda r: shutil.rmtree(r / "train"), "train: training folder not found"),
    "no image": (lambda r: (r / "train" / "c").mkdir(), "train/c: image.tif not found"),
    "extra class": (
        lambda r: _write_mask(r / "train" / "a" / "class5.tif", np.zeros((20, 30))),
        "a/class5.tif",
    ),
    "stray tif": (
        lambda r: _write_mask(r / "train" / "b" / "mask.tif", np.zeros((12, 9))),
        "b/mask.tif",
    ),
    "no id map": (
        lambda r: (r / "test_image_name_to_ids.json").unlink(),
        "test_image_name_to_ids.json: test id map",
    ),
    "unlisted test": (
        lambda r: _write_image(r / "test_release" / "t3.tif", 5, 5),
        "t3.tif: test image is not listed",
    ),
    "listed but absent": (
        lambda r: (r / "test_release" / "t2.tif").unlink(),
        "t2.tif: test image listed",
    ),
    "duplicate id": (
        lambda r: _edit_id_map(r, lambda m: [m[0], {**m[1], "id": 7}]),
        "test_image_name_to_ids.json: duplicate test image id 7",
    ),
    "bad entry": (
        lambda r: _edit_id_map(r, lambda m: [{"file_name": "t1.tif"}]),
        "lacks file_name, id",
    ),
}


@pytest.mark.parametrize("case", BAD_LAYOUTS, ids=list(BAD_LAYOUTS))
def test_bad_reference_layout(ref_dir, case):
    damage, message = BAD_LAYOUTS[case]
    damage(ref_dir)
    with pytest.raises(DataError, match=message):
        index_dataset(_ref(ref_dir))


def test_class_file_beyond_configured_classes(ref_dir):
    with pytest.raises(DataError, match="a/class3.tif: unexpected file"):
        index_dataset(_ref(ref_dir, classes=["class1", "class2"]))


def test_mask_shape_differs_from_image(ref_dir):
    _write_mask(ref_dir / "train" / "a" / "class2.tif", np.zeros((20, 31)))
    with pytest.raises(
        DataError, match=r"a/class2.tif: mask shape \(20, 31\) differs from image shape \(20, 30\)"
    ):
        load_sample(_ref(ref_dir), "a")


def test_truncated_image_in_sample(ref_dir):
    path = ref_dir / "train" / "a" / "image.tif"
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(DataError, match="a/image.tif"):
        load_sample(_ref(ref_dir), "a")


def test_test_image_size_differs_from_id_map(ref_dir):
    _edit_id_map(ref_dir, lambda m: [m[0], {**m[1], "height": 15}])
    test_image = index_dataset(_ref(ref_dir)).test_images[0]
    with pytest.raises(DataError, match="t1.tif: image is 16x17"):
        load_test_image(test_image)


def test_load_ground_truth(tmp_path):
    mask = np.zeros((6, 7))
    mask[1:3, 1:3] = 9
    (tmp_path / "t1").mkdir()
    _write_mask(tmp_path / "t1" / "class2.tif", mask)
    labels = load_ground_truth(tmp_path, "t1.tif", CLASSES)
    assert labels.shape == (4, 6, 7) and labels.dtype == np.int32
    assert labels[1, 1, 1] == 1 and labels.sum() == 4
    with pytest.raises(DataError, match="t9: ground-truth folder not found"):
        load_ground_truth(tmp_path, "t9", CLASSES)
    assert load_ground_truth(tmp_path, "t1", CLASSES, image_size=(6, 7)).shape == (4, 6, 7)
    empty = load_ground_truth(tmp_path, "t9", CLASSES, image_size=(5, 3))  # no folder: no cells
    assert empty.shape == (4, 5, 3) and not empty.any()
    with pytest.raises(DataError, match=r"t1/class2.tif: mask shape \(6, 7\) differs from image shape \(6, 8\)"):
        load_ground_truth(tmp_path, "t1", CLASSES, image_size=(6, 8))


@pytest.mark.skipif(not MONUSEG.is_dir(), reason="real MoNuSeg data not present")
def test_monuseg_reference_data():
    source = _ref(MONUSEG)
    index = index_dataset(source)
    assert len(index.train_ids) == 13 and len(index.test_images) == 14
    assert len({t.id for t in index.test_images}) == 14
    sample = load_sample(source, index.train_ids[0])
    assert sample.image.shape == (1000, 1000, 3) and sample.image.dtype == np.uint8
    assert sample.labels.shape == (4, 1000, 1000) and sample.labels.dtype == np.int32
    assert 200 < sample.labels[0].max() < 700 and not sample.labels[1:].any()
    assert len(np.unique(sample.labels[0])) == sample.labels[0].max() + 1  # consecutive ids
    first = index.test_images[0]
    assert load_test_image(first).shape == (first.height, first.width, 3)
    truth = load_ground_truth(MONUSEG / "test_gt", first.file_name, CLASSES)
    assert truth.shape == (4, first.height, first.width) and truth[0].max() > 100


# ---------------------------------------------------------------- COCO format


def _square(height, width, y0, y1, x0, x1):
    mask = np.zeros((height, width), np.uint8)
    mask[y0:y1, x0:x1] = 1
    return mask


def _uncompressed_rle(mask):
    """COCO's uncompressed RLE: run lengths over the column-major pixels, starting with zeros."""
    flat = mask.ravel(order="F")
    changes = np.flatnonzero(np.diff(flat)) + 1
    runs = np.diff(np.concatenate([[0], changes, [flat.size]]))
    counts = runs.tolist() if flat[0] == 0 else [0, *runs.tolist()]
    return {"size": list(mask.shape), "counts": counts}


@pytest.fixture
def coco_dir(tmp_path):
    """Two 20x24 images; categories named like classes 2 and 1 (ids 5 and 9)."""
    h, w = 20, 24
    for name in ("p.tif", "q.tif"):
        _write_image(tmp_path / "images" / name, h, w)
    compressed = mask_utils.encode(np.asfortranarray(_square(h, w, 12, 18, 2, 10)))
    annotations = [
        # image 1, class1: a polygon square (x, y pairs); a smaller overlapping one as raw RLE
        {
            "id": 1,
            "image_id": 1,
            "category_id": 9,
            "segmentation": [[2, 2, 14, 2, 14, 12, 2, 12]],
            "iscrowd": 0,
        },
        {
            "id": 2,
            "image_id": 1,
            "category_id": 9,
            "segmentation": _uncompressed_rle(_square(h, w, 8, 11, 10, 20)),
        },
        # image 1, class2: compressed RLE as it appears in JSON (counts as a string)
        {
            "id": 3,
            "image_id": 1,
            "category_id": 5,
            "segmentation": {"size": [h, w], "counts": compressed["counts"].decode()},
        },
        {
            "id": 4,
            "image_id": 1,
            "category_id": 5,
            "segmentation": [[0, 0, 5, 0, 5, 5]],
            "iscrowd": 1,
        },
    ]
    data = {
        "images": [
            {"id": 1, "file_name": "p.tif", "height": h, "width": w},
            {"id": 2, "file_name": "q.tif", "height": h, "width": w},
        ],
        "annotations": annotations,
        "categories": [{"id": 9, "name": "class1"}, {"id": 5, "name": "class2"}],
    }
    (tmp_path / "train.json").write_text(json.dumps(data))
    (tmp_path / "test.json").write_text(
        json.dumps({"images": [{"id": 4, "file_name": "q.tif", "height": h, "width": w}]})
    )
    return tmp_path


def _coco(root, classes=CLASSES, **extra):
    return {
        "format": "coco",
        "train_json": str(root / "train.json"),
        "image_dir": str(root / "images"),
        "test_json": None,
        "test_image_dir": None,
        "classes": list(classes),
        **extra,
    }


def test_coco_index_and_decoding(coco_dir):
    source = _coco(coco_dir, test_json=str(coco_dir / "test.json"))
    index = index_dataset(source)
    assert index.train_ids == ["p", "q"]
    assert [(t.file_name, t.id, t.path) for t in index.test_images] == [
        ("q.tif", 4, coco_dir / "images" / "q.tif")
    ]
    sample = load_sample(source, "p")
    assert sample.labels.shape == (4, 20, 24) and sample.labels.dtype == np.int32
    big, small = sample.labels[0] == 1, sample.labels[0] == 2
    assert big[2, 2] and small[9, 18]  # polygon and uncompressed RLE
    # overlap within a class: the shared pixels go to the smaller instance, which stays whole
    assert small.sum() == 3 * 10 and small[8:11, 10:20].all()
    np.testing.assert_array_equal(
        sample.labels[1], _square(20, 24, 12, 18, 2, 10)
    )  # compressed RLE; crowd skipped
    assert not load_sample(source, "q").labels.any()


def test_coco_categories_by_id_order(coco_dir):
    sample = load_sample(_coco(coco_dir, classes=["nucleus", "cell"]), "p")
    assert (
        sample.labels[0].max() == 1 and sample.labels[1].max() == 2
    )  # id 5 -> first class, 9 -> second


def test_coco_errors(coco_dir):
    with pytest.raises(DataError, match="train.json: categories .* match neither"):
        index_dataset(_coco(coco_dir, classes=["a", "b", "c"]))
    (coco_dir / "images" / "q.tif").unlink()
    with pytest.raises(DataError, match="q.tif: image listed in"):
        index_dataset(_coco(coco_dir))
    data = json.loads((coco_dir / "train.json").read_text())
    data["annotations"][0]["category_id"] = 77
    (coco_dir / "bad.json").write_text(json.dumps(data))
    with pytest.raises(DataError, match="bad.json: annotation 1 has unknown category id 77"):
        index_dataset(_coco(coco_dir, train_json=str(coco_dir / "bad.json")))


# ---------------------------------------------------------------- issue 16: bad input by name


def _entries(root):
    return json.loads((root / "test_image_name_to_ids.json").read_text())


def _set_entries(root, entries):
    (root / "test_image_name_to_ids.json").write_text(json.dumps(entries))


def test_headers_of_good_data_pass(ref_dir):
    source = {**_ref(ref_dir), "test_gt": str(ref_dir / "gt")}
    _write_mask_at(ref_dir / "gt" / "t1" / "class1.tif", np.zeros((16, 17)))
    check_headers(source, index_dataset(source))


def _write_mask_at(path, mask):
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_mask(path, mask)


def test_id_map_size_differing_from_the_image_header(ref_dir):
    entries = _entries(ref_dir)
    entries[0]["height"] = 9
    _set_entries(ref_dir, entries)
    with pytest.raises(DataError, match=r"t2.tif: image is 8x40 \(HxW\) but .*test_image_name_to_ids.json says 9x40"):
        check_headers(_ref(ref_dir), index_dataset(_ref(ref_dir)))


@pytest.mark.parametrize("key, value", [("id", 1.7), ("height", "8.5"), ("width", float("nan"))])
def test_id_map_value_that_is_not_an_integer(ref_dir, key, value):
    entries = _entries(ref_dir)
    entries[0][key] = value
    _set_entries(ref_dir, entries)
    with pytest.raises(DataError, match=rf"test_image_name_to_ids.json: entry .*: {key} .* is not an integer"):
        index_dataset(_ref(ref_dir))


def test_truncated_test_image_found_from_its_header(ref_dir):
    path = ref_dir / "test_release" / "t1.tif"
    path.write_bytes(path.read_bytes()[:-40])
    with pytest.raises(DataError, match="t1.tif: file is truncated"):
        check_headers(_ref(ref_dir), index_dataset(_ref(ref_dir)))


def test_train_mask_and_test_gt_shape_found_from_headers(ref_dir):
    _write_mask(ref_dir / "train" / "b" / "class2.tif", np.zeros((12, 10)))
    with pytest.raises(DataError, match=r"train/b/class2.tif: mask shape \(12, 10\) differs from image shape \(12, 9\)"):
        check_headers(_ref(ref_dir), index_dataset(_ref(ref_dir)))
    _write_mask(ref_dir / "train" / "b" / "class2.tif", np.zeros((12, 9)))
    _write_mask_at(ref_dir / "gt" / "t1" / "class3.tif", np.zeros((16, 18)))
    source = {**_ref(ref_dir), "test_gt": str(ref_dir / "gt")}
    with pytest.raises(DataError, match=r"gt/t1/class3.tif: mask shape \(16, 18\) differs from image shape \(16, 17\)"):
        check_headers(source, index_dataset(source))


def test_braces_in_an_image_id_or_test_name(ref_dir):
    (ref_dir / "train" / "a").rename(ref_dir / "train" / "a{1}")
    with pytest.raises(DataError, match=r"train/a\{1\}: the name 'a\{1\}' holds \{ or \}"):
        index_dataset(_ref(ref_dir))
    (ref_dir / "train" / "a{1}").rename(ref_dir / "train" / "a")
    (ref_dir / "test_release" / "t1.tif").rename(ref_dir / "test_release" / "t}.tif")
    entries = _entries(ref_dir)
    entries[1]["file_name"] = "t}.tif"
    _set_entries(ref_dir, entries)
    with pytest.raises(DataError, match=r"test_image_name_to_ids.json: the name 't\}' holds"):
        index_dataset(_ref(ref_dir))


def test_a_dataset_without_any_mask_file(ref_dir):
    for path in (ref_dir / "train").glob("*/class*.tif"):
        path.unlink()
    with pytest.raises(DataError, match=r"train: no image folder holds a mask file"):
        index_dataset(_ref(ref_dir))


def test_a_dot_named_image_folder_fails_and_other_hidden_folders_are_skipped(ref_dir):
    (ref_dir / "train" / ".ipynb_checkpoints").mkdir()
    assert index_dataset(_ref(ref_dir)).train_ids == ["a", "b"]
    (ref_dir / "train" / "b").rename(ref_dir / "train" / ".b")
    with pytest.raises(DataError, match=r"train/\.b: a hidden \(dot-named\) image folder is skipped"):
        index_dataset(_ref(ref_dir))


@pytest.mark.parametrize("name", ["image.TIF", "Image.tif", "image.tiff"])
def test_near_miss_of_image_tif_gets_a_hint(ref_dir, name):
    (ref_dir / "train" / "a" / "image.tif").rename(ref_dir / "train" / "a" / name)
    with pytest.raises(DataError, match=rf"train/a: image.tif not found; found {name}: rename it to image.tif"):
        index_dataset(_ref(ref_dir))


def test_near_miss_of_a_class_file_gets_a_hint(ref_dir):
    (ref_dir / "train" / "a" / "class1.tif").rename(ref_dir / "train" / "a" / "Class1.TIF")
    with pytest.raises(DataError, match=r"Class1.TIF: unexpected file; rename it to class1.tif"):
        index_dataset(_ref(ref_dir))


def test_near_miss_of_a_test_image_gets_a_hint(ref_dir):
    (ref_dir / "test_release" / "t1.tif").rename(ref_dir / "test_release" / "t1.TIF")
    with pytest.raises(DataError, match=r"t1.tif: test image listed in .* not found; found t1.TIF"):
        index_dataset(_ref(ref_dir))


def test_test_set_of_another_folder_and_its_class_files(tmp_path):
    """`test_path` takes the test images of another reference-layout folder (the training
    folder's own test set is not read); a ground-truth class file beyond the test set's
    classes fails at once, naming data.test_classes."""
    from cellseg.data.demo import write_demo_dataset

    write_demo_dataset(tmp_path / "train_set", seed=0, n_train=2, n_test=1, min_size=16, max_size=32)
    write_demo_dataset(tmp_path / "other", seed=1, n_train=2, n_test=3, min_size=16, max_size=32, n_classes=2)
    (tmp_path / "train_set" / "test_image_name_to_ids.json").unlink()
    source = {
        "format": "reference", "path": str(tmp_path / "train_set"), "classes": ["class1", "class2"],
        "test_path": str(tmp_path / "other"), "test_gt": str(tmp_path / "other" / "test_gt"),
    }  # fmt: skip
    tests = index_test_set(source)
    assert [t.path.parent for t in tests] == [tmp_path / "other" / "test_release"] * 3
    check_test_headers(source, tests)
    with pytest.raises(DataError, match="class2.tif: class file not among the test set's classes.*data.test_classes"):
        check_test_headers({**source, "classes": ["class1"]}, tests)
