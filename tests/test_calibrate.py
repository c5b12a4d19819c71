import json

import numpy as np
import pytest

from cellseg.common.instances import InstanceSet
from cellseg.inference.calibrate import (
    calibrate_scores,
    calibrate_set,
    fit_calibration,
    read_calibration,
    write_calibration,
)
from cellseg.inference.ensemble import fuse_instance_sets

RNG = np.random.default_rng(0)
CONFIDENT = RNG.uniform(0.5, 1.0, 400)  # fold 0
UNDER_CONFIDENT = RNG.uniform(0.0, 0.2, 300)  # fold 1: finds cells, scores them all low


def test_quantile_lifts_an_under_confident_fold_onto_the_other_folds_scale():
    maps = fit_calibration({0: CONFIDENT, 1: UNDER_CONFIDENT}, "quantile")
    lifted = calibrate_scores(UNDER_CONFIDENT, maps[1])
    lowered = calibrate_scores(CONFIDENT, maps[0])
    assert np.median(lifted) > np.median(UNDER_CONFIDENT) + 0.3
    # Both folds now follow the pooled distribution: their quantiles agree.
    levels = np.linspace(0.05, 0.95, 19)
    np.testing.assert_allclose(np.quantile(lifted, levels), np.quantile(lowered, levels), atol=0.03)


def test_calibration_keeps_the_order_within_a_fold_also_outside_the_fitted_range():
    maps = fit_calibration({0: CONFIDENT, 1: UNDER_CONFIDENT}, "quantile")
    for fold, scores in ((0, CONFIDENT), (1, UNDER_CONFIDENT)):
        test = np.concatenate([scores, [0.0, 0.001, 0.21, 0.3, 0.99, 1.0]])  # unseen scores too
        order = np.argsort(test, kind="stable")
        mapped = calibrate_scores(test, maps[fold])[order]
        assert np.all(np.diff(mapped) >= 0)
        assert mapped.min() >= 0.0 and mapped.max() <= 1.0


def test_rank_maps_each_fold_onto_uniform_quantiles():
    maps = fit_calibration({0: CONFIDENT, 1: UNDER_CONFIDENT}, "rank")
    for fold, scores in ((0, CONFIDENT), (1, UNDER_CONFIDENT)):
        ranked = calibrate_scores(scores, maps[fold])
        np.testing.assert_allclose(np.sort(ranked), np.linspace(0, 1, len(scores)), atol=0.02)


def test_none_leaves_the_ensemble_as_it_was(tmp_path):
    assert fit_calibration({0: CONFIDENT, 1: UNDER_CONFIDENT}, "none") == {}
    write_calibration(tmp_path / "c.json", "none", {})
    assert read_calibration(tmp_path / "c.json") == {} and read_calibration(None) == {}
    boxes = np.array([[2, 2, 12, 12], [20, 20, 30, 30]], np.float32)
    sets = [
        InstanceSet.from_dense(boxes, scores, [1, 1], _box_masks(boxes))
        for scores in ([0.9, 0.6], [0.1, 0.05])
    ]
    calibrated = [calibrate_set(s, None) for s in sets]
    assert all(a is b for a, b in zip(calibrated, sets))
    before, after = fuse_instance_sets(sets), fuse_instance_sets(calibrated)
    np.testing.assert_array_equal(before.scores, after.scores)


def test_calibrated_scores_raise_the_fused_score_of_an_under_confident_folds_cells(tmp_path):
    maps = fit_calibration({0: CONFIDENT, 1: UNDER_CONFIDENT}, "quantile")
    write_calibration(tmp_path / "c.json", "quantile", maps)
    maps = read_calibration(tmp_path / "c.json")
    assert set(maps) == {0, 1} and json.loads((tmp_path / "c.json").read_text())["method"] == "quantile"
    boxes = np.array([[2, 2, 12, 12]], np.float32)
    medians = [np.median(CONFIDENT), np.median(UNDER_CONFIDENT)]
    sets = [InstanceSet.from_dense(boxes, [s], [1], _box_masks(boxes)) for s in medians]
    plain = fuse_instance_sets(sets).scores[0]
    calibrated = fuse_instance_sets([calibrate_set(s, maps[k]) for k, s in enumerate(sets)]).scores[0]
    assert plain == pytest.approx(np.mean(medians))
    # One cell found by both folds with each fold's median score: both become the pooled median.
    assert calibrated == pytest.approx(np.median(np.concatenate([CONFIDENT, UNDER_CONFIDENT])), abs=0.02)
    assert calibrated > plain + 0.1


def test_unknown_method_and_a_fold_without_detections():
    with pytest.raises(ValueError, match="unknown calibration"):
        fit_calibration({0: CONFIDENT}, "isotonic")
    maps = fit_calibration({0: CONFIDENT, 1: np.zeros(0)}, "quantile")
    assert maps[1] == {"x": [0.0, 1.0], "y": [0.0, 1.0]}


def _box_masks(boxes):
    masks = np.zeros((len(boxes), 32, 32), bool)
    for mask, (x0, y0, x1, y1) in zip(masks, boxes.astype(int)):
        mask[y0:y1, x0:x1] = True
    return masks
