import numpy as np
import pytest
from pycocotools import mask as mask_utils

from cellseg.common.instances import InstanceSet
from cellseg.common.iou import instance_pixels, iou_matrix
from cellseg.common.spool import Spool
from cellseg.scoring.coco_format import predictions_to_coco
from cellseg.scoring.metrics import (
    aggregated_jaccard,
    coco_mask_metrics,
    coco_precision,
    count_errors,
    evaluate_predictions,
    f1_per_class,
    metric_value,
    pannuke_quality,
    panoptic_quality,
    run_cocoeval,
    sartorius_metric,
    sartorius_per_image,
)
from cellseg.scoring.truth import encode_window, ground_truth_to_coco, prepare_ground_truth, spool_ground_truth

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
    for key in ["AP", "AP50", "AP75", "AP_small", "AP@100", "AP_a", "AP_b", "AP@100_b", "AP50@100", "AP50@100_a"]:
        assert metrics[key] == pytest.approx(1.0)
    assert np.isnan(metrics["AP_medium"]) and np.isnan(metrics["AP_large"])
    gt = prepare_ground_truth([labels], CLASSES)
    assert sartorius_metric(gt, preds) == pytest.approx(1.0)
    assert f1_per_class(gt, preds) == {"F1_a": 1.0, "F1_b": 1.0, "F1": 1.0}
    assert panoptic_quality(gt, preds) == {"PQ": 1.0, "SQ": 1.0, "DQ": 1.0, "PQ_a": 1.0, "PQ_b": 1.0}
    assert aggregated_jaccard(gt, preds) == {"AJI_a": 1.0, "AJI_b": 1.0, "AJI": 1.0}
    assert pannuke_quality(gt, preds) == {"bPQ": 1.0, "mPQ": 1.0, "mPQ_a": 1.0, "mPQ_b": 1.0}
    counts = count_errors(gt, preds)
    assert counts == {"count_error_a": 0.0, "count_error_b": 0.0, "count_error": 0.0, "count_ratio": 1.0}


def test_one_missed_of_two_gives_half_the_recall_points(labels):
    labels = labels[:1]
    preds = [make_set([labels[0] == 1], [1])]
    metrics = coco_mask_metrics([labels], preds, ["a"])
    # Precision 1 at the 51 recall thresholds 0.00..0.50 of 101, 0 beyond.
    assert metrics["AP"] == pytest.approx(51 / 101)


@pytest.mark.parametrize("evaluator", ["streaming", "faster", "pycocotools"])
def test_no_predictions_score_zero_and_nan_without_ground_truth(labels, evaluator):
    metrics = coco_mask_metrics([labels], [InstanceSet.empty((64, 64))], CLASSES + ["c"], evaluator=evaluator)
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


def pq_and_aji(labels_list, preds, class_names):
    gt = prepare_ground_truth(labels_list, class_names)
    return panoptic_quality(gt, preds), aggregated_jaccard(gt, preds)


def test_split_cell_matches_its_larger_half(labels):
    # One 10x10 cell (area 100) predicted as a 10x6 left part (IoU 60/100) and a 10x4 right part
    # (IoU 40/100). PQ: the left part is a TP with IoU 0.6, the right part a FP: DQ = 1 / (1 +
    # 1/2) = 2/3, SQ = 0.6, PQ = 0.4. AJI: intersection 60, union 100 + the unused part's 40.
    left, right = square((64, 64), 5, 5, 6, height=10), square((64, 64), 5, 11, 4, height=10)
    pq, aji = pq_and_aji([labels[:1] * (labels[:1] == 1)], [make_set([left, right], [1, 1])], ["a"])
    assert pq["DQ"] == pytest.approx(2 / 3) and pq["SQ"] == pytest.approx(0.6)
    assert pq["PQ"] == pytest.approx(0.4) and pq["PQ_a"] == pytest.approx(0.4)
    assert aji["AJI"] == pytest.approx(60 / 140)


def test_missed_cell_counts_over_the_whole_set(labels):
    # Class a has two cells in each of two images; image 1 is predicted perfectly, image 2 finds
    # only its first cell. Summed over the set: TP 3, FN 1: DQ = 3 / 3.5, SQ = 1, PQ = 6/7 (a
    # mean of per-image PQs would give (1 + 2/3) / 2 instead). AJI: intersection 300, union 300
    # + the missed cell's 100 = 0.75.
    plane = labels[:1]
    preds = [make_set([plane[0] == 1, plane[0] == 2], [1, 1]), make_set([plane[0] == 1], [1])]
    pq, aji = pq_and_aji([plane, plane], preds, ["a"])
    assert (pq["DQ"], pq["SQ"]) == (pytest.approx(6 / 7), 1.0) and pq["PQ"] == pytest.approx(6 / 7)
    assert aji["AJI"] == pytest.approx(0.75)


def test_false_positives_and_duplicates(labels):
    # Class a's first cell (area 100) predicted twice: exactly and shifted 2 px (IoU 80/120, also
    # above 0.5; the exact one is matched, the duplicate is a FP), plus an 8x8 FP (area 64) on
    # background. Class a's second cell is predicted exactly. TP 2 (IoUs 1, 1), FP 2, FN 0:
    # DQ = 2 / (2 + 1) = 2/3, SQ = 1, PQ = 2/3. AJI: intersection 200, union 200 + the unused
    # duplicate's 100 + the FP's 64.
    plane = labels[:1]
    masks = [plane[0] == 1, square((64, 64), 5, 7, 10), plane[0] == 2, square((64, 64), 50, 50, 8)]
    pq, aji = pq_and_aji([plane], [make_set(masks, [1, 1, 1, 1])], ["a"])
    assert (pq["DQ"], pq["SQ"], pq["PQ"]) == (pytest.approx(2 / 3), 1.0, pytest.approx(2 / 3))
    assert aji["AJI"] == pytest.approx(200 / 364)


def test_wrong_class_is_a_miss_of_one_class_and_a_false_positive_of_the_other():
    # Cell A of class a and cell B of class b (10x10 each); B is predicted exactly but as class a.
    # Class a: TP 1 (A), FP 1 (B): DQ 2/3, SQ 1, PQ 2/3. Class b: FN 1, no TP: DQ 0, SQ 0, PQ 0.
    # Means over the two classes: PQ 1/3, SQ 1/2, DQ 1/3 (so PQ is not mean SQ x mean DQ).
    # AJI a: A matched exactly (100 / 100), B's prediction is nobody's best: 100 / 200 = 0.5.
    # AJI b: B unmatched, 0 / 100 = 0. AJI = 0.25.
    labels = np.zeros((2, 64, 64), np.int32)
    labels[0][square((64, 64), 5, 5, 10)] = 1
    labels[1][square((64, 64), 30, 30, 10)] = 1
    pq, aji = pq_and_aji([labels], [make_set([labels[0] == 1, labels[1] == 1], [1, 1])], CLASSES)
    assert pq == pytest.approx({"PQ": 1 / 3, "SQ": 1 / 2, "DQ": 1 / 3, "PQ_a": 2 / 3, "PQ_b": 0.0})
    assert aji == pytest.approx({"AJI_a": 0.5, "AJI_b": 0.0, "AJI": 0.25})


def test_pq_and_aji_average_the_classes_present(labels):
    # Image 1 holds class a's two cells: one predicted exactly (IoU 1), one shifted 2 px (IoU
    # 80/120 = 2/3): TP 2, SQ 5/6, DQ 1, PQ_a 5/6. Image 2 holds class b's cell, predicted by
    # its 10x8 top part (IoU 0.8): PQ_b 0.8. Class c has neither ground truth nor predictions:
    # NaN, left out. PQ = (5/6 + 0.8) / 2 = 49/60. AJI a: (100 + 80) / (100 + 120) = 9/11,
    # AJI b: 80 / 100; AJI = (9/11 + 0.8) / 2.
    image_a, image_b = np.zeros((3, 64, 64), np.int32), np.zeros((3, 64, 64), np.int32)
    image_a[0], image_b[1] = labels[0], labels[1]
    preds = [
        make_set([labels[0] == 1, square((64, 64), 30, 32, 10)], [1, 1]),
        make_set([square((64, 64), 5, 40, 10, height=8)], [2]),
    ]
    pq, aji = pq_and_aji([image_a, image_b], preds, CLASSES + ["c"])
    assert pq["PQ_a"] == pytest.approx(5 / 6) and pq["PQ_b"] == pytest.approx(0.8) and np.isnan(pq["PQ_c"])
    assert pq["PQ"] == pytest.approx(49 / 60) and pq["SQ"] == pytest.approx((5 / 6 + 0.8) / 2)
    assert pq["DQ"] == 1.0
    assert aji["AJI_a"] == pytest.approx(9 / 11) and np.isnan(aji["AJI_c"])
    assert aji["AJI"] == pytest.approx((9 / 11 + 0.8) / 2)


def test_no_predictions_score_zero_and_empty_classes_nan():
    labels = np.zeros((2, 16, 16), np.int32)
    labels[0, 2:6, 2:6] = 1
    pq, aji = pq_and_aji([labels], [InstanceSet.empty((16, 16))], CLASSES)
    assert (pq["PQ"], pq["SQ"], pq["DQ"], pq["PQ_a"]) == (0.0, 0.0, 0.0, 0.0) and np.isnan(pq["PQ_b"])
    assert aji["AJI"] == 0.0 and np.isnan(aji["AJI_b"])


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


def test_streaming_and_faster_evaluators_equal_pycocotools():
    labels_list, preds = random_case()
    gt = ground_truth_to_coco(labels_list, CLASSES)
    results = predictions_to_coco(preds, 0.5)
    reference = run_cocoeval(gt, results, 1000, "pycocotools")
    faster = run_cocoeval(gt, results, 1000, "faster")
    np.testing.assert_allclose(faster.stats[:12], reference.stats, atol=1e-6)
    np.testing.assert_allclose(faster.eval["precision"], reference.eval["precision"], atol=1e-6)
    gt = prepare_ground_truth(labels_list, CLASSES)
    np.testing.assert_array_equal(coco_precision(gt, preds, 0.5, 1000, "streaming"), reference.eval["precision"])
    b = coco_mask_metrics(labels_list, preds, CLASSES, evaluator="pycocotools")
    for evaluator in ("faster", "streaming"):
        a = coco_mask_metrics(labels_list, preds, CLASSES, evaluator=evaluator)
        assert a.keys() == b.keys()
        np.testing.assert_allclose(list(a.values()), list(b.values()), atol=1e-6)
    with pytest.raises(ValueError, match="unknown COCO evaluator 'fast'"):
        coco_precision(gt, preds, evaluator="fast")


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
    expected = {"AP", "AP50@100", "AP50@100_a", "sartorius", "F1", "F1_a", "PQ", "SQ", "DQ", "PQ_a", "AJI", "AJI_a"}
    assert expected <= metrics.keys()
    assert list(curve.columns) == ["recall", "precision_iou50", "precision_iou50_95"]
    # Class a: precision 1 up to recall 0.5; class b: 1 everywhere.
    assert curve["precision_iou50"].iloc[50] == pytest.approx(1.0)
    assert curve["precision_iou50"].iloc[51] == pytest.approx(0.5)
    gt = prepare_ground_truth([labels], CLASSES)
    for metric in ("AP50", "AP50@100", "PQ", "bPQ", "mPQ"):
        assert metric_value(gt, preds, metric) == pytest.approx(metrics[metric])
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


def test_right_mask_wrong_class_scores_zero_per_class_and_one_class_agnostic(labels):
    """Every cell found with its exact mask, but each with the other class."""
    masks = [labels[0] == 1, labels[0] == 2, labels[1] == 1]
    preds = [make_set(masks, [2, 2, 1])]
    per_class, _ = evaluate_predictions([labels], preds, CLASSES)
    for key in ("AP", "AP50@100", "AP_a", "AP_b", "PQ", "F1", "AJI", "mPQ"):
        assert per_class[key] == pytest.approx(0.0), key
    assert per_class["bPQ"] == 1.0  # binary PQ merges the classes even here
    agnostic, _ = evaluate_predictions([labels], preds, CLASSES, class_agnostic=True)
    for key in ("AP", "AP50", "AP50@100", "AP@100", "PQ", "SQ", "DQ", "F1", "AJI", "sartorius", "bPQ", "mPQ"):
        assert agnostic[key] == pytest.approx(1.0), key
    assert (agnostic["count_error"], agnostic["count_ratio"]) == (0.0, 1.0)
    assert not [key for key in agnostic if key.endswith(("_a", "_b", "_cell"))]


def test_class_agnostic_scores_labels_of_another_class_list(labels):
    """A one-class model against labels of two classes: the classes merged, one of three
    cells missed, overlapping instances of the two classes kept apart."""
    overlapping = labels.copy()
    overlapping[1][square((64, 64), 5, 5, 10)] = 2  # class b's second cell lies on a's first
    masks = [labels[0] == 1, labels[0] == 2, overlapping[1] == 2]
    preds = [make_set(masks, [1, 1, 1])]
    metrics, _ = evaluate_predictions([overlapping], preds, ["x", "y"], class_agnostic=True)
    assert metrics["F1"] == pytest.approx(2 * 3 / (4 + 3))  # 3 of 4 cells found, no false one
    assert metrics["PQ"] == pytest.approx(3 / (3 + 0.5))
    assert metrics["AP50"] == pytest.approx(0.75, abs=0.01)  # recall 3/4 at precision 1


@pytest.mark.parametrize("on_disk", [False, True])
def test_ground_truth_from_a_generator_and_its_subsets_equal_the_lists(on_disk, tmp_path):
    """The tune and evaluate jobs convert labels one image at a time (a generator), tune into a
    spool on disk, and take halves of the result (tune's cross-check): all as from the label
    stacks themselves."""
    labels_list, _ = random_case(seed=2, n_images=5)
    if on_disk:
        gt = spool_ground_truth(iter(labels_list), CLASSES, tmp_path)
        assert isinstance(gt.images, Spool) and isinstance(gt.subset([1]).images, Spool)
    else:
        gt = prepare_ground_truth(iter(labels_list), CLASSES)

    def same(a, b):
        assert a.coco == b.coco and a.class_names == b.class_names and len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            assert x.size == y.size and x.rles == y.rles and np.array_equal(x.classes, y.classes)

    same(gt, prepare_ground_truth(labels_list, CLASSES))
    assert gt.coco == ground_truth_to_coco(labels_list, CLASSES)
    for index in ([1, 3], [0, 2, 4], [], [4]):
        same(gt.subset(index), prepare_ground_truth([labels_list[i] for i in index], CLASSES))


def test_evaluate_predictions_takes_prepared_ground_truth():
    labels_list, preds = random_case(seed=3)
    gt = prepare_ground_truth(labels_list, CLASSES)
    for agnostic in (False, True):
        a, curve_a = evaluate_predictions(labels_list, preds, CLASSES, class_agnostic=agnostic)
        b, curve_b = evaluate_predictions(gt, preds, CLASSES, class_agnostic=agnostic)
        assert a.keys() == b.keys()
        np.testing.assert_array_equal(list(a.values()), list(b.values()))
        assert curve_a.equals(curve_b)


@pytest.mark.parametrize("evaluator", ["streaming", "faster", "pycocotools"])
def test_one_pass_scores_equal_each_metric_on_its_own(evaluator):
    """`evaluate_predictions` scores every metric in one pass over the images (a generator of
    labels, read once); each equals its own whole-set function."""
    labels_list, preds = random_case(seed=4)
    gt = prepare_ground_truth(labels_list, CLASSES)
    metrics, curve = evaluate_predictions(iter(labels_list), iter(preds), CLASSES, evaluator=evaluator)
    expected = coco_mask_metrics(labels_list, preds, CLASSES, evaluator="pycocotools")
    expected["sartorius"] = float(np.mean(sartorius_per_image(gt, preds)))
    for part in (f1_per_class(gt, preds), panoptic_quality(gt, preds), aggregated_jaccard(gt, preds)):
        expected.update(part)
    expected.update(pannuke_quality(gt, preds) | count_errors(gt, preds))
    assert metrics.keys() == expected.keys()
    np.testing.assert_allclose(list(metrics.values()), list(expected.values()), atol=1e-12)
    assert 0 < metrics["F1"] < 1 and 0 < metrics["AJI"] < 1 and 0 < metrics["sartorius"] < 1
    with pytest.raises(ValueError):  # labels of one image more than predictions
        evaluate_predictions(labels_list, preds[:-1], CLASSES, evaluator=evaluator)


def one_cell_image(labels):
    """`labels`' shape, holding only class a's first cell."""
    image = np.zeros_like(labels)
    image[0] = labels[0] == 1
    return image


def test_bpq_is_the_mean_of_per_image_binary_pq(labels):
    # Image 1: its three cells found exactly, two with the wrong class: binary PQ 1. Image 2:
    # its one cell found by its 10x6 left part (IoU 0.6) plus an 8x8 FP: DQ 1 / (1 + 1/2),
    # SQ 0.6, PQ 0.4. bPQ = (1 + 0.4) / 2 = 0.7; the pooled class-agnostic PQ weighs image 1's
    # three cells against image 2's one: TP 4, FP 1, IoU sum 3.6: 3.6 / 4.5 = 0.8.
    image_2 = one_cell_image(labels)
    left, false_positive = square((64, 64), 5, 5, 6, height=10), square((64, 64), 50, 50, 8)
    preds = [
        make_set([labels[0] == 1, labels[0] == 2, labels[1] == 1], [2, 1, 1]),
        make_set([left, false_positive], [1, 1]),
    ]
    gt = prepare_ground_truth([labels, image_2], CLASSES)
    assert pannuke_quality(gt, preds)["bPQ"] == pytest.approx(0.7)
    agnostic, _ = evaluate_predictions([labels, image_2], preds, CLASSES, class_agnostic=True)
    assert agnostic["bPQ"] == pytest.approx(0.7) and agnostic["mPQ"] == pytest.approx(0.7)
    assert agnostic["PQ"] == pytest.approx(0.8)


def test_images_without_ground_truth_are_left_out_of_bpq_and_mpq_whatever_was_predicted(labels):
    # PanNuke's rule. Image 1: found exactly, PQ 1. Image 2: nothing true, nothing found; image
    # 3: nothing true, one FP: both left out. Image 4: nothing found, PQ 0. bPQ = mPQ = 0.5.
    # The pooled PQ counts image 3's FP: class a TP 2, FP 1, FN 2: PQ_a = 2 / 3.5.
    empty = np.zeros_like(labels)
    exact = make_set([labels[0] == 1, labels[0] == 2, labels[1] == 1], [1, 1, 2])
    nothing, false_positive = InstanceSet.empty((64, 64)), make_set([square((64, 64), 50, 50, 8)], [1])
    preds = [exact, nothing, false_positive, nothing]
    metrics, _ = evaluate_predictions([labels, empty, empty, labels], preds, CLASSES)
    assert (metrics["bPQ"], metrics["mPQ"], metrics["mPQ_a"], metrics["mPQ_b"]) == (0.5, 0.5, 0.5, 0.5)
    assert metrics["PQ_a"] == pytest.approx(2 / 3.5)
    gt = prepare_ground_truth([empty], CLASSES)
    assert all(np.isnan(v) for v in pannuke_quality(gt, preds[2:3]).values())


def test_mpq_leaves_out_a_class_absent_from_an_image(labels):
    # Image 1: class a's two cells found exactly (PQ_a 1), class b's by its 10x8 top part (IoU
    # 0.8, PQ_b 0.8): class mean 0.9. Image 2 holds class a's first cell only, found by its
    # 10x6 left part (IoU 0.6, PQ_a 0.6); its FP of class b is left out with class b there:
    # class mean 0.6. mPQ = (0.9 + 0.6) / 2 = 0.75; mPQ_a = (1 + 0.6) / 2 = 0.8, mPQ_b = 0.8
    # (image 1 alone), whose mean (0.8) is not mPQ. The pooled PQ_b counts the FP: 0.8 / 1.5.
    # bPQ: image 1 TP 3 with IoU sum 2.8 -> 2.8 / 3; image 2 TP 1 (0.6), FP 1 -> 0.4.
    image_2 = one_cell_image(labels)
    top = square((64, 64), 5, 40, 10, height=8)
    left, false_positive = square((64, 64), 5, 5, 6, height=10), square((64, 64), 50, 50, 8)
    preds = [make_set([labels[0] == 1, labels[0] == 2, top], [1, 1, 2]), make_set([left, false_positive], [1, 2])]
    metrics, _ = evaluate_predictions([labels, image_2], preds, CLASSES)
    assert metrics["mPQ"] == pytest.approx(0.75)
    assert metrics["mPQ_a"] == pytest.approx(0.8) and metrics["mPQ_b"] == pytest.approx(0.8)
    assert metrics["PQ_b"] == pytest.approx(0.8 / 1.5)
    assert metrics["bPQ"] == pytest.approx((2.8 / 3 + 0.4) / 2)


def test_count_error_per_class_and_count_ratio(labels):
    # Image 1: true a 2, b 1; found a 3, b 0. Image 2: true a 1, b 0; found a 0, b 2. Class c:
    # none true, none found (NaN, left out of the mean). count_error_a = (1 + 1) / 3, _b =
    # (1 + 2) / 1; count_ratio = 5 found / 4 true. Classes merged: |3 - 3| + |2 - 1| over 4 true.
    stacks = [np.concatenate([image, np.zeros_like(labels[:1])]) for image in (labels, one_cell_image(labels))]
    cells = [square((64, 64), 4 * i, 50, 3) for i in range(3)]
    preds = [make_set(cells, [1, 1, 1]), make_set(cells[:2], [2, 2])]
    metrics, _ = evaluate_predictions(stacks, preds, CLASSES + ["c"])
    assert metrics["count_error_a"] == pytest.approx(2 / 3) and metrics["count_error_b"] == 3.0
    assert np.isnan(metrics["count_error_c"])
    assert metrics["count_error"] == pytest.approx((2 / 3 + 3) / 2) and metrics["count_ratio"] == 1.25
    agnostic, _ = evaluate_predictions(stacks, preds, CLASSES + ["c"], class_agnostic=True)
    assert agnostic["count_error"] == 0.25 and agnostic["count_ratio"] == 1.25
    assert not [key for key in agnostic if key.startswith(("mPQ_", "count_error_"))]


def pannuke_pq(true, pred):
    """PQ of two (H, W) instance label images as PanNuke's `get_fast_pq` computes it: pairs at
    IoU > 0.5 (unique when instances do not overlap), SQ = summed IoU / (TP + 1e-6)."""
    true_ids, pred_ids = np.unique(true[true > 0]), np.unique(pred[pred > 0])
    iou = np.zeros((len(true_ids), len(pred_ids)))
    for i, t in enumerate(true_ids):
        for j, p in enumerate(pred_ids):
            iou[i, j] = ((true == t) & (pred == p)).sum() / ((true == t) | (pred == p)).sum()
    paired = iou[iou > 0.5]
    tp, fp, fn = len(paired), len(pred_ids) - len(paired), len(true_ids) - len(paired)
    return tp / (tp + fp / 2 + fn / 2) * paired.sum() / (tp + 1e-6)


def pannuke_scores(true_stacks, pred_stacks):
    """bPQ, mPQ and per-class PQ as PanNuke's run.py scores (C, H, W) label stacks of one
    tissue: an image, or a class in an image, without ground truth is left out (NaN)."""

    def merged(stack):  # every class's instances in one label image, ids kept apart
        offsets = np.cumsum([0, *[plane.max() for plane in stack[:-1]]])
        return np.where(stack > 0, stack + offsets[:, None, None], 0).max(axis=0)

    binary, per_class = [], []
    for true, pred in zip(true_stacks, pred_stacks):
        binary.append(pannuke_pq(merged(true), merged(pred)) if true.any() else np.nan)
        per_class.append([pannuke_pq(t, p) if t.any() else np.nan for t, p in zip(true, pred)])
    per_class = np.array(per_class)
    image_means = [np.mean(row[np.isfinite(row)]) for row in per_class if np.isfinite(row).any()]
    class_means = [np.mean(col[np.isfinite(col)]) if np.isfinite(col).any() else np.nan for col in per_class.T]
    return np.nanmean(binary), np.mean(image_means), class_means


def grid_case(seed, n_images=6, n_classes=3):
    """64x64 images of up to 16 rectangles, one per 16x16 grid cell, of random classes; each
    predicted with probability 0.8 jittered (IoU above and below 0.5), 20% of them with another
    class, plus false positives in empty grid cells. Nothing overlaps, so that label images
    hold predictions too. Image 0 holds no ground truth but a false positive; image 1 nothing."""
    rng = np.random.default_rng(seed)
    true_stacks, pred_stacks, preds = [], [], []
    for image in range(n_images):
        true, pred = np.zeros((2, n_classes, 64, 64), np.int32)
        masks, classes = [], []
        for gy, gx in np.ndindex(4, 4):
            y, x = gy * 16 + 3, gx * 16 + 3
            h, w = rng.integers(5, 11, 2)
            c = int(rng.integers(n_classes))
            has_cell = image > 1 and rng.random() < 0.7
            if has_cell:
                true[c][y : y + h, x : x + w] = true[c].max() + 1
            predicted = rng.random() < (0.8 if has_cell else 0.2) or (image, gy, gx) == (0, 0, 0)
            if predicted:
                dy, dx, dh, dw = rng.integers(-2, 3, 4)
                found = c if rng.random() < 0.8 else int(rng.integers(n_classes))
                mask = square((64, 64), y + dy, x + dx, w + dw, height=h + dh)
                pred[found][mask] = pred[found].max() + 1
                masks.append(mask)
                classes.append(found + 1)
        true_stacks.append(true)
        pred_stacks.append(pred)
        preds.append(make_set(masks, classes) if masks else InstanceSet.empty((64, 64)))
    return true_stacks, pred_stacks, preds


@pytest.mark.parametrize("seed", range(3))
def test_bpq_and_mpq_equal_a_reimplementation_of_pannuke(seed):
    true_stacks, pred_stacks, preds = grid_case(seed)
    names = ["a", "b", "c"]
    bpq, mpq, per_class = pannuke_scores(true_stacks, pred_stacks)
    metrics, _ = evaluate_predictions(true_stacks, preds, names)
    assert metrics["bPQ"] == pytest.approx(bpq, abs=1e-5) and metrics["mPQ"] == pytest.approx(mpq, abs=1e-5)
    np.testing.assert_allclose([metrics[f"mPQ_{n}"] for n in names], per_class, atol=1e-5)
    assert 0 < mpq < bpq < 1
    agnostic, _ = evaluate_predictions(true_stacks, preds, names, class_agnostic=True)
    assert agnostic["bPQ"] == pytest.approx(bpq, abs=1e-5) and agnostic["mPQ"] == agnostic["bPQ"]


def test_a_prediction_over_two_overlapping_cells_of_merged_classes_matches_one(labels):
    # Class b's cell lies 1 px off class a's first (IoU 90/110 with it). One prediction, class
    # a's cell exactly: per class, a TP of a (PQ_a 1) and a FN of b. Classes merged, it exceeds
    # IoU 0.5 with both cells yet matches one: TP 1 (IoU 1), FN 1: PQ 1 / 1.5.
    overlapping = np.zeros_like(labels)
    overlapping[0][square((64, 64), 5, 5, 10)] = 1
    overlapping[1][square((64, 64), 5, 6, 10)] = 1
    preds = [make_set([overlapping[0] == 1], [1])]
    metrics, _ = evaluate_predictions([overlapping], preds, CLASSES)
    assert (metrics["mPQ_a"], metrics["mPQ_b"], metrics["PQ_a"]) == (1.0, 0.0, 1.0)
    assert metrics["bPQ"] == pytest.approx(1 / 1.5)
    agnostic, _ = evaluate_predictions([overlapping], preds, CLASSES, class_agnostic=True)
    for key in ("PQ", "bPQ", "mPQ"):
        assert agnostic[key] == pytest.approx(1 / 1.5), key
    assert agnostic["DQ"] == pytest.approx(1 / 1.5) and agnostic["SQ"] == 1.0
