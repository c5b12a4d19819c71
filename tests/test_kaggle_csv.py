import csv

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from cellseg.outputs.kaggle_csv import encode_runs, write_kaggle_csv


def decode_runs(text: str, shape: tuple[int, int], pixel_order: str) -> np.ndarray:
    """Reference decoder written from the competitions' wording, pixel by pixel."""
    height, width = shape
    mask = np.zeros(shape, dtype=bool)
    values = [int(v) for v in text.split()]
    for start, length in zip(values[0::2], values[1::2]):
        for index in range(start - 1, start - 1 + length):
            if pixel_order == "row_major":
                mask[index // width, index % width] = True
            else:
                mask[index % height, index // height] = True
    return mask


def test_runs_of_a_hand_made_mask():
    mask = np.array([[0, 1, 1], [1, 0, 0]], dtype=bool)
    assert encode_runs(mask, "row_major") == "2 3"  # pixels 2, 3 (row 0) and 4 (row 1, col 0)
    assert encode_runs(mask, "column_major") == "2 2 5 1"  # (1,0), (0,1), then (0,2)
    assert encode_runs(np.zeros((2, 3), bool), "row_major") == ""
    assert encode_runs(np.ones((2, 3), bool), "column_major") == "1 6"


@pytest.mark.parametrize("pixel_order", ["row_major", "column_major"])
def test_random_masks_round_trip(pixel_order):
    rng = np.random.default_rng(0)
    for _ in range(20):
        mask = rng.random((7, 11)) < 0.4
        assert (decode_runs(encode_runs(mask, pixel_order), mask.shape, pixel_order) == mask).all()


def rle_result(image_id: int, mask: np.ndarray, score: float) -> dict:
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"image_id": image_id, "score": score, "segmentation": {"size": list(mask.shape), "counts": rle["counts"].decode()}}


def test_csv_has_a_row_per_instance_and_one_for_an_empty_image(tmp_path):
    first, second = np.zeros((4, 5), bool), np.zeros((4, 5), bool)
    first[1:3, 1:4] = True
    second[0, 4] = True
    results = [rle_result(7, second, 0.4), rle_result(7, first, 0.9)]
    path = tmp_path / "submission.csv"
    assert write_kaggle_csv(results, {7: "img_a", 9: "img_b"}, path, "row_major") == 3
    with open(path, newline="") as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == ["id", "predicted"]
    assert [row[0] for row in rows[1:]] == ["img_a", "img_a", "img_b"]
    assert (decode_runs(rows[1][1], (4, 5), "row_major") == first).all()  # highest score first
    assert (decode_runs(rows[2][1], (4, 5), "row_major") == second).all()
    assert rows[3][1] == ""


def test_unknown_pixel_order_writes_nothing(tmp_path):
    with pytest.raises(ValueError, match="pixel_order"):
        write_kaggle_csv([], {1: "a"}, tmp_path / "s.csv", "diagonal")
    assert not list(tmp_path.iterdir())
