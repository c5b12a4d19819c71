import numpy as np
import pytest
from pycocotools import mask as mask_utils

from cellseg.scoring import coco_ap
from cellseg.scoring.coco_ap import CocoAccumulator
from cellseg.scoring.metrics import run_cocoeval


def random_image(rng, size, n_truth, n_found, n_classes):
    """Ground-truth squares of varied size (some above COCO's 32² and 96² px area bounds; some
    overlapping copies of others, exact or 1 px wider, so that a detection can match several)
    and detections: shifted copies of them, with ties in score, and spurious squares."""
    def square(y, x, side):
        mask = np.zeros((size, size), np.uint8, order="F")
        mask[y : y + side, x : x + side] = 1
        return mask

    truth = []
    for _ in range(n_truth):
        side = int(rng.choice([6, 20, 40, 110]))
        y, x = rng.integers(0, size - side - 1, 2)
        truth.append((square(y, x, side), int(rng.integers(1, n_classes + 1))))
        if rng.random() < 0.3:
            truth.append((square(y, x, side + int(rng.integers(0, 2))), truth[-1][1]))
    found = []
    for i in range(n_found):
        if truth and rng.random() < 0.7:
            mask, k = truth[int(rng.integers(len(truth)))]
            mask = np.asfortranarray(np.roll(mask, tuple(rng.integers(-4, 5, 2)), axis=(0, 1)))
            k = k if rng.random() < 0.85 else int(rng.integers(1, n_classes + 1))
        else:
            side = int(rng.choice([5, 30, 100]))
            mask, k = square(*rng.integers(0, size - side, 2), side), int(rng.integers(1, n_classes + 1))
        found.append((mask, k, float(rng.choice([0.9, 0.5, rng.random()]))))  # ties in score
    return truth, found


def encode(mask):
    rle = mask_utils.encode(mask)
    rle["counts"] = rle["counts"].decode()
    return rle


@pytest.mark.parametrize(
    "seed, max_dets, merge_every",
    [(0, [1, 100, 1000], 256), (1, [1, 100, 1000], 2), (2, [1, 3, 5], 256), (3, [2, 100, 4], 3)],
)
def test_accumulated_precision_equals_pycocotools(seed, max_dets, merge_every, monkeypatch):
    monkeypatch.setattr(coco_ap, "_MERGE_EVERY", merge_every)  # 2, 3: the packed parts merged as they come
    rng = np.random.default_rng(seed)
    n_classes, size = 3, 160
    images, annotations, results = [], [], []
    accumulator = CocoAccumulator(n_classes + 1, max_dets)  # the last class has no ground truth
    for image_id in range(1, 9):
        truth, found = random_image(rng, size, int(rng.integers(0, 12)), int(rng.integers(0, 20)), n_classes)
        if image_id == 3:
            truth, found = [], []  # an empty image
        images.append({"id": image_id, "height": size, "width": size})
        truth_rles = [encode(m) for m, _ in truth]
        rles = [encode(m) for m, _, _ in found]
        for rle, (_, k) in zip(truth_rles, truth):
            area, bbox = float(mask_utils.area(rle)), mask_utils.toBbox(rle).tolist()
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": k,
                                "segmentation": rle, "area": area, "bbox": bbox, "iscrowd": 0})  # fmt: skip
        for rle, (_, k, score) in zip(rles, found):
            results.append({"image_id": image_id, "category_id": k, "segmentation": rle, "score": score})
        accumulator.add_image(
            truth_rles, np.array([k for _, k in truth]), rles,
            np.array([k for _, k, _ in found]), np.array([s for _, _, s in found]),
        )  # fmt: skip
    categories = [{"id": k, "name": str(k)} for k in range(1, n_classes + 2)]
    gt = {"images": images, "annotations": annotations, "categories": categories}
    reference = run_cocoeval(gt, results, max_dets[-1], "pycocotools")
    reference.params.maxDets = max_dets
    reference.evaluate()
    reference.accumulate()
    expected = reference.eval["precision"]
    assert (expected > 0).any() and (expected[:, :, :n_classes] == 0).any() and (expected == -1).any()
    np.testing.assert_array_equal(accumulator.precision(), expected)
