import numpy as np

from cellseg.common.instances import InstanceSet
from cellseg.inference.operating_points import apply_cells, apply_thresholds


def rect(x, width=10):
    mask = np.zeros((32, 64), bool)
    mask[5:15, x : x + width] = True
    return mask


def make_set(masks, scores, classes):
    masks = np.asarray(masks, np.float32)
    return InstanceSet.from_dense(np.zeros((len(masks), 4)), scores, classes, masks)


def test_score_thresholds_per_class_and_global():
    instances = make_set([rect(0), rect(20), rect(40)], [0.9, 0.3, 0.6], [1, 1, 2])
    kept = apply_thresholds(instances, {1: 0.5, 2: 0.7}, 0.5, 1.0)
    np.testing.assert_allclose(kept.scores, [0.9])
    kept = apply_thresholds(instances, {1: 0.5}, 0.5, 1.0)  # class 2 unlisted: kept
    np.testing.assert_allclose(kept.scores, [0.9, 0.6])
    assert len(apply_thresholds(instances, 0.5, 0.5, 1.0)) == 2


def test_mask_threshold_is_baked_in_and_empty_masks_dropped():
    soft = np.zeros((32, 64), np.float32)
    soft[5:15, 0:10] = 0.4
    soft[5:15, 3:7] = 0.8
    instances = make_set([soft, rect(30) * 0.3], [0.9, 0.8], [1, 1])
    out = apply_thresholds(instances, 0.0, 0.6, 1.0)
    assert len(out) == 1
    for threshold in (0.01, 0.5, 1.0):
        np.testing.assert_array_equal(out.binary_mask(0, threshold), soft >= 0.6)


def test_mask_thresholds_per_class():
    soft = np.zeros((32, 64), np.float32)
    soft[5:15, 0:10] = 0.4
    soft[5:15, 3:7] = 0.8
    instances = make_set([soft, np.roll(soft, 30, axis=1), np.roll(soft, 50, axis=1)], [0.9, 0.8, 0.7], [1, 2, 3])
    out = apply_thresholds(instances, 0.0, {1: 0.3, 2: 0.6}, 1.0)  # class 3 unlisted: 0.5
    np.testing.assert_array_equal(out.binary_mask(0, 0.5), soft >= 0.3)
    np.testing.assert_array_equal(out.binary_mask(1, 0.5), np.roll(soft >= 0.6, 30, axis=1))
    np.testing.assert_array_equal(out.binary_mask(2, 0.5), np.roll(soft >= 0.5, 50, axis=1))


def test_mask_nms_within_class_is_greedy():
    # a-b and b-c overlap with IoU 6/14 = 0.43 (x shift 4); a-c with IoU 2/18 = 0.11.
    masks = [rect(0), rect(4), rect(8), rect(4)]
    instances = make_set(masks, [0.9, 0.8, 0.7, 0.6], [1, 1, 1, 2])
    out = apply_thresholds(instances, 0.0, 0.5, 0.4)
    # b is suppressed by a; c then survives (b no longer kept); d is of another class.
    np.testing.assert_allclose(out.scores, [0.9, 0.7, 0.6])
    assert len(apply_thresholds(instances, 0.0, 0.5, 0.5)) == 4
    assert len(apply_thresholds(instances, 0.0, 0.5, 1.0)) == 4


def test_nms_order_follows_scores_not_input_order():
    instances = make_set([rect(0), rect(1)], [0.2, 0.9], [1, 1])
    out = apply_thresholds(instances, 0.0, 0.5, 0.5)
    np.testing.assert_allclose(out.scores, [0.9])


def test_cells_point_twice_changes_nothing():
    rng = np.random.default_rng(0)
    masks = np.zeros((12, 40, 40), np.float32)
    for k in range(12):  # overlapping soft squares of two classes
        y, x = rng.integers(0, 30, 2)
        masks[k, y : y + 10, x : x + 10] = rng.uniform(0.3, 1.0)
    found = InstanceSet.from_dense(np.zeros((12, 4)), rng.uniform(0.1, 1, 12), rng.integers(1, 3, 12), masks)
    once = apply_cells(found, {1: 0.2, 2: 0.3}, {1: 0.4, 2: 0.5}, 0.5, 2)
    twice = apply_cells(once, {1: 0.2, 2: 0.3}, {1: 0.4, 2: 0.5}, 0.5, 2)
    assert 0 < len(once) < 12 and (once.binary_masks(0.5).sum(axis=0) <= 1).all()
    assert np.array_equal(once.binary_masks(0.5), twice.binary_masks(0.5))
    assert np.array_equal(once.class_scores, twice.class_scores) and np.array_equal(once.classes, twice.classes)
