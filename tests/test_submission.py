import json
import zipfile

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from cellseg.common.errors import DataError
from cellseg.common.instances import InstanceSet
from cellseg.outputs.submission import build_submission, validate_submission, write_submission

CLASSES = ["a", "b"]
ID_MAP = [
    {"file_name": "x.tif", "id": 7, "height": 20, "width": 30},
    {"file_name": "y.tif", "id": 3, "height": 16, "width": 16},
]


def masks_x():
    masks = np.zeros((3, 20, 30), np.float32)
    masks[0, 2:6, 3:10] = 0.9
    masks[1, 10:19, 20:29] = 0.7
    masks[1, 12:14, 22:24] = 0.3  # a hole below the 0.5 threshold
    masks[2, 0:2, 0:2] = 0.2  # empty at 0.5: left out
    return masks


@pytest.fixture
def preds():
    x = InstanceSet.from_dense(np.zeros((3, 4)), [0.9, 0.8, 0.7], [1, 2, 1], masks_x())
    return {"x.tif": x, "y.tif": InstanceSet.empty((16, 16))}


def test_round_trip(preds, tmp_path):
    results = build_submission(preds, ID_MAP, CLASSES)
    assert [r["image_id"] for r in results] == [7, 7]
    assert [r["category_id"] for r in results] == [1, 2]
    expected = masks_x()[:2] >= 0.5
    for result, mask in zip(results, expected):
        np.testing.assert_array_equal(mask_utils.decode(result["segmentation"]).astype(bool), mask)
        assert result["segmentation"]["size"] == [20, 30]
    assert results[0]["bbox"] == [3.0, 2.0, 7.0, 4.0]  # xywh
    write_submission(results, tmp_path / "r.json", tmp_path / "r.zip", ID_MAP, CLASSES)
    with zipfile.ZipFile(tmp_path / "r.zip") as archive:
        assert archive.namelist() == ["test-results.json"]
        assert json.loads(archive.read("test-results.json")) == results
    assert json.loads((tmp_path / "r.json").read_text()) == results
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.json", "r.zip"]


def test_every_image_must_be_predicted(preds):
    del preds["y.tif"]
    with pytest.raises(DataError, match=r"missing \['y.tif'\]"):
        build_submission(preds, ID_MAP, CLASSES)
    preds["z.tif"] = InstanceSet.empty((16, 16))
    with pytest.raises(DataError, match=r"not in the map \['z.tif'\]"):
        build_submission(preds, ID_MAP, CLASSES)


def test_size_and_class_mismatches_are_reported(preds):
    preds["y.tif"] = InstanceSet.empty((16, 17))
    with pytest.raises(DataError, match="y.tif: predicted size"):
        build_submission(preds, ID_MAP, CLASSES)
    with pytest.raises(DataError, match=r"x.tif: category ids \[2\] outside 1..1"):
        build_submission(preds, ID_MAP, ["a"])


@pytest.mark.parametrize(
    "change, message",
    [
        ({"image_id": 99}, "image_id 99 is not in the test id map"),
        ({"category_id": 5}, "category_id 5 outside 1..2"),
        ({"segmentation": {"size": [16, 16], "counts": "0"}}, r"mask is \(16, 16\), the image \(20, 30\)"),
        ({"segmentation": {"size": [20, 30], "counts": 12}}, "does not decode"),
    ],
)
def test_invalid_results_raise_and_write_nothing(preds, tmp_path, change, message):
    results = build_submission(preds, ID_MAP, CLASSES)
    results[1] = {**results[1], **change}
    with pytest.raises(DataError, match=message):
        write_submission(results, tmp_path / "r.json", tmp_path / "r.zip", ID_MAP, CLASSES)
    assert list(tmp_path.iterdir()) == []


def test_empty_submission_is_valid():
    validate_submission([], ID_MAP, CLASSES)
