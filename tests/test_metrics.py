import numpy as np
import pytest
from pycocotools import mask as mask_utils

from cellseg.instances import InstanceSet
from cellseg.metrics import (
    coco_mask_metrics,
    encode_window,
    evaluate_predictions,
    f1_per_class,
    ground_truth_to_coco,
    iou_matrix,
    instance_pixels,
    metric_value,
    predictions_to_coco,
    prepare_ground_truth,
    run_cocoeval,
    sartorius_metric,
)

CLASSES = ["a", "b"]


def square(size, y, x, side, height=None):
    mask = np.zeros(size, bool)
    mask[y : y + (height or side), x : x + side] = True
    return mask


def make_set(masks, classes, scores=None):
    masks = np.asarray(masks, bool).reshape(-1, 64, 64)
    scores = np.linspace(0.9, 0.5, len(masks)) if scores is None else scores
    return InstanceSet.from_dense(np.zeros((len(masks), 4)), scores, classes, masks)


@pytest.fixture
def labels():
    """One 64x64 image: class a has two 10x10 squares, class b one."""
    labels = np.zeros((2, 64, 64), np.int32)
    labels[0][square((64, 64), 5, 5, 10)] = 1
    labels[0][square((64, 64), 30, 30, 10)] = 2
    labels[1][square((64, 64), 5, 40, 10)] = 1
    return labels


def test_perfect_predictions_score_one(labels):
    masks = [labels[0] == 1, labels[0] == 2, labels[1] == 1]
    preds = [make_set(masks, [1, 1, 2])]
    metrics = coco_mask_metrics([labels], preds, CLASSES)
    for key in ["AP", "AP50", "AP75", "AP_small", "AP@100", "AP_a", "AP_b", "AP@100_b"]:
        assert metrics[key] == pytest.approx(1.0)
    assert np.isnan(metrics["AP_medium"]) and np.isnan(metrics["AP_large"])
    gt = prepare_ground_truth([labels], CLASSES)
    assert sartorius_metric(gt, preds) == pytest.approx(1.0)
    assert f1_per_class(gt, preds) == {"F1_a": 1.0, "F1_b": 1.0, "F1": 1.0}


def test_one_missed_of_two_gives_half_the_recall_points(labels):
    labels = labels[:1]
    preds = [make_set([labels[0] == 1], [1])]
    metrics = coco_mask_metrics([labels], preds, ["a"])
    # Precision 1 at the 51 recall thresholds 0.00..0.50 of 101, 0 beyond.
    assert metrics["AP"] == pytest.approx(51 / 101)


def test_no_predictions_score_zero_and_nan_without_ground_truth(labels):
    metrics = coco_mask_metrics([labels], [InstanceSet.empty((64, 64))], CLASSES + ["c"])
    assert metrics["AP"] == 0.0 and metrics["AP_a"] == 0.0
    assert np.isnan(metrics["AP_c"]) and np.isnan(metrics["AP_large"])


def test_sartorius_and_f1_on_a_hand_computed_case(labels):
    shifted = square((64, 64), 30, 32, 10)  # IoU 80 / 120 = 0.667 with the second square
    false_positive = square((64, 64), 50, 5, 8)
    preds = [make_set([labels[0] == 1, shifted, false_positive], [1, 1, 1])]
    gt = prepare_ground_truth([labels[:1]], ["a"])
    # t in 0.50..0.65: TP 2, FP 1, FN 0 -> 2/3; t in 0.70..0.95: TP 1, FP 2, FN 1 -> 1/4.
    assert sartorius_metric(gt, preds) == pytest.approx((4 * 2 / 3 + 6 / 4) / 10)
    assert f1_per_class(gt, preds)["F1_a"] == pytest.approx(2 * 2 / (2 + 3))


def test_sartorius_is_class_agnostic_and_one_to_one(labels):
    gt = prepare_ground_truth([labels], CLASSES)
    masks = [labels[0] == 1, labels[0] == 1, labels[0] == 2, labels[1] == 1]
    preds = [make_set(masks, [2, 1, 2, 1])]  # wrong classes, one duplicate
    # Every threshold: TP 3, FP 1 (the duplicate), FN 0.
    assert sartorius_metric(gt, preds) == pytest.approx(3 / 4)


def test_iou_matrix_handles_overlapping_masks():
    masks = [square((64, 64), 0, 0, 10), square((64, 64), 0, 5, 10), square((64, 64), 40, 40, 4)]
    pixels = instance_pixels(make_set(masks, [1, 1, 1]), 0.5)
    expected = np.array([[1, 50 / 150, 0], [50 / 150, 1, 0], [0, 0, 1]])
    np.testing.assert_allclose(iou_matrix(pixels, pixels), expected)


def random_case(seed=0, n_images=3):
    """Images of 128x128 with rectangles of all COCO area ranges; jittered, partly missing
    and duplicated predictions with random scores."""
    rng = np.random.default_rng(seed)
    labels_list, preds = [], []
    for _ in range(n_images):
        labels = np.zeros((2, 128, 128), np.int32)
        masks, classes = [], []
        for k, (y, x, side) in enumerate([(2, 2, 20), (2, 60, 40), (5, 5, 100), (110, 110, 12)]):
            c = k % 2
            mask = np.zeros((128, 128), bool)
            mask[y : y + side, x : x + side] = True
            labels[c][mask & (labels[c] == 0)] = labels[c].max() + 1
            if rng.random() < 0.8:
                for _ in range(rng.integers(1, 3)):
                    dy, dx = rng.integers(-3, 4, 2)
                    masks.append(np.roll(mask, (dy, dx), axis=(0, 1)))
                    classes.append(c + 1 if rng.random() < 0.9 else 2 - c)
        labels_list.append(labels)
        scores = rng.random(len(masks))
        dense = np.asarray(masks).reshape(-1, 128, 128)
        preds.append(InstanceSet.from_dense(np.zeros((len(masks), 4)), scores, classes, dense))
    return labels_list, preds


def test_faster_evaluator_equals_pycocotools():
    labels_list, preds = random_case()
    gt = ground_truth_to_coco(labels_list, CLASSES)
    results = predictions_to_coco(preds, 0.5)
    reference = run_cocoeval(gt, results, 1000, "pycocotools")
    faster = run_cocoeval(gt, results, 1000, "faster")
    np.testing.assert_allclose(faster.stats[:12], reference.stats, atol=1e-6)
    np.testing.assert_allclose(faster.eval["precision"], reference.eval["precision"], atol=1e-6)
    a = coco_mask_metrics(labels_list, preds, CLASSES, evaluator="faster")
    b = coco_mask_metrics(labels_list, preds, CLASSES, evaluator="pycocotools")
    assert a.keys() == b.keys()
    np.testing.assert_allclose(list(a.values()), list(b.values()), atol=1e-6)


def test_ap_counts_detections_beyond_100():
    """pycocotools' stats[0] is read at 100 detections; AP here uses max_dets."""
    labels = np.zeros((1, 64, 64), np.int32)
    labels[0] = (np.arange(64)[:, None] // 4) * 16 + np.arange(64)[None, :] // 4 + 1  # 256 cells
    masks = [labels[0] == i for i in range(1, 257)]
    preds = [InstanceSet.from_dense(np.zeros((256, 4)), np.ones(256), np.ones(256), np.asarray(masks))]
    metrics = coco_mask_metrics([labels], preds, ["a"], max_dets=300)
    assert metrics["AP"] == pytest.approx(1.0)
    assert metrics["AP@100"] < 0.5


def test_evaluate_predictions_and_pr_curve(labels):
    preds = [make_set([labels[0] == 1, labels[1] == 1], [1, 2])]
    metrics, curve = evaluate_predictions([labels], preds, CLASSES)
    assert {"AP", "sartorius", "F1", "F1_a"} <= metrics.keys()
    assert list(curve.columns) == ["recall", "precision_iou50", "precision_iou50_95"]
    # Class a: precision 1 up to recall 0.5; class b: 1 everywhere.
    assert curve["precision_iou50"].iloc[50] == 1.0 and curve["precision_iou50"].iloc[51] == 0.5
    gt = prepare_ground_truth([labels], CLASSES)
    assert metric_value(gt, preds, "AP50") == pytest.approx(metrics["AP50"])
    with pytest.raises(ValueError, match="unknown metric"):
        metric_value(gt, preds, "mAP")


@pytest.mark.parametrize("seed", range(4))
def test_encode_window_equals_encoding_the_full_mask(seed):
    rng = np.random.default_rng(seed)
    crop = rng.random((7, 5)) < [0.0, 0.5, 1.0, 0.5, 0.9][seed % 5]
    crop[:, 0] = seed == 3  # runs that continue across columns
    y0, x0 = [(0, 0), (13, 25), (3, 4), (0, 25)][seed]
    full = np.zeros((20, 30), np.uint8)
    full[y0 : y0 + 7, x0 : x0 + 5] = crop
    expected = mask_utils.encode(np.asfortranarray(full))
    assert encode_window(crop, x0, y0, (20, 30)) == {**expected, "counts": expected["counts"].decode()}
