import numpy as np
import pytest

from cellseg.instances import InstanceSet
from cellseg.tune import cross_check, score_with, tune_thresholds

CLASSES = ["a", "b"]
SEARCH = {"score_thresholds": [0.2, 0.5], "mask_thresholds": [0.3, 0.7], "nms_thresholds": [0.5]}


def make_image(seed):
    """Four 12x12 cells (three of class a, one of b). Predictions have soft rims at 0.4 (so mask
    threshold 0.3 is right, 0.5 too tight), a shifted low-score duplicate of one cell (NMS
    helps) and a low-score false positive of class a (a score threshold helps)."""
    rng = np.random.default_rng(seed)
    labels = np.zeros((2, 64, 64), np.int32)
    masks, scores, classes = [], [], []
    for k, (y, x) in enumerate([(4, 4), (4, 30), (30, 4), (30, 30)]):
        y, x = y + rng.integers(0, 4), x + rng.integers(0, 4)
        c = 1 if k == 3 else 0
        labels[c, y : y + 12, x : x + 12] = labels[c].max() + 1
        soft = np.zeros((64, 64), np.float32)
        soft[y : y + 12, x : x + 12] = 0.4
        soft[y + 2 : y + 10, x + 2 : x + 10] = 0.9
        masks.append(soft)
        scores.append(0.9 - 0.1 * k)
        classes.append(c + 1)
    masks.append(np.roll(masks[0], 3, axis=1))
    fp = np.zeros((64, 64), np.float32)
    fp[50:60, 50:60] = 0.9
    masks.append(fp)
    scores += [0.15, 0.1]
    classes += [1, 1]
    preds = InstanceSet.from_dense(np.zeros((len(masks), 4)), scores, classes, np.asarray(masks))
    return labels, preds


@pytest.fixture(scope="module")
def data():
    images = [make_image(seed) for seed in range(3)]
    return [i[0] for i in images], [i[1] for i in images]


def test_tuning_finds_the_planted_thresholds_and_beats_defaults(data):
    labels_list, preds = data
    best, trials = tune_thresholds(labels_list, preds, CLASSES, SEARCH, metric="sartorius")
    default = trials.iloc[0]
    assert (default.score_threshold, default.mask_threshold, default.nms_threshold) == (0.0, 0.5, 1.0)
    assert best["mask_threshold"] == 0.3 and best["nms_threshold"] == 0.5
    assert best["score_thresholds"] == {1: 0.2, 2: 0.0}
    assert best["score"] == pytest.approx(1.0) and default.score < 0.5
    assert best["score"] == trials.score.max()
    # Bounded: 3 mask x 2 nms grid points, then 2 classes x 2 score candidates.
    assert len(trials) == 3 * 2 + 2 * 2
    assert score_with(labels_list, preds, CLASSES, best, metric="sartorius") == pytest.approx(1.0)


@pytest.mark.parametrize("metric", ["AP", "F1"])
def test_tuning_never_scores_below_defaults(data, metric):
    labels_list, preds = data
    best, trials = tune_thresholds(labels_list, preds, CLASSES, SEARCH, metric=metric)
    assert best["score"] >= trials.score.iloc[0]
    assert best["score"] == pytest.approx(trials.score.max())


def test_ties_keep_the_defaults(data):
    labels_list, _ = data
    perfect = [
        InstanceSet.from_dense(np.zeros((4, 4)), np.ones(4), [1, 1, 1, 2],
                               np.asarray([labels[c] == i for c in (0, 1) for i in range(1, labels[c].max() + 1)]))
        for labels in labels_list
    ]
    best, _ = tune_thresholds(labels_list, perfect, CLASSES, SEARCH, metric="AP50")
    assert (best["mask_threshold"], best["nms_threshold"]) == (0.5, 1.0)
    assert best["score_thresholds"] == {1: 0.0, 2: 0.0} and best["score"] == 1.0


def test_cross_check_reports_held_out_scores(data):
    labels_list, preds = data
    report = cross_check(labels_list, preds, CLASSES, SEARCH, metric="sartorius")
    # Half a has two images, half b one; the planted thresholds transfer.
    assert report["held_out_a"] == pytest.approx(1.0) and report["held_out_b"] == pytest.approx(1.0)
    assert report["held_out"] == pytest.approx(1.0) and report["tuned_b"] == pytest.approx(1.0)
    single = cross_check(labels_list[:1], preds[:1], CLASSES, SEARCH, metric="sartorius")
    assert all(np.isnan(v) for v in single.values())
