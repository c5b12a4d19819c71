import tempfile
from pathlib import Path

import numpy as np
import pytest
import yaml

from cellseg.common.instances import InstanceSet, StoredSets, save_instance_sets
from cellseg.inference.operating_points import apply_thresholds
from cellseg.scoring.metrics import METRICS, metric_value
from cellseg.scoring.truth import prepare_ground_truth, spool_ground_truth
from cellseg.scoring.tune import cross_check, score_with, tune_thresholds

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
    assert best["mask_thresholds"] == {1: 0.3, 2: 0.3} and best["nms_threshold"] == 0.5
    assert best["score_thresholds"] == {1: 0.2, 2: 0.0}
    assert best["score"] == pytest.approx(1.0) and default.score < 0.5
    assert best["score"] == trials.score.max()
    # Bounded: 3 mask x 2 nms grid points, 2 classes x 2 other mask candidates, then 2 classes
    # x 2 score candidates.
    assert len(trials) == 3 * 2 + 2 * 2 + 2 * 2
    assert list(trials.stage.unique()) == ["grid", "mask", "score"]
    assert score_with(labels_list, preds, CLASSES, best, metric="sartorius") == pytest.approx(1.0)


@pytest.mark.parametrize("metric", ["AP", "F1", "AP50@100", "PQ"])
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
    assert (best["mask_thresholds"], best["nms_threshold"]) == ({1: 0.5, 2: 0.5}, 1.0)
    assert best["score_thresholds"] == {1: 0.0, 2: 0.0} and best["score"] == 1.0


def two_class_image():
    """A 10x10 cell of each class. Class a's prediction has a 4x4 core at 0.9 and its rim at
    0.4 (only mask threshold 0.3 gives IoU 1; at 0.5 or 0.6 IoU is 16/100); class b's has the
    cell at 0.9 and a 3 px halo at 0.5 (only 0.6 gives IoU 1; at 0.3 or 0.5 IoU is 100/256)."""
    labels = np.zeros((2, 64, 64), np.int32)
    labels[0, 5:15, 5:15] = 1
    labels[1, 30:40, 30:40] = 1
    soft_a, soft_b = np.zeros((64, 64), np.float32), np.zeros((64, 64), np.float32)
    soft_a[5:15, 5:15] = 0.4
    soft_a[8:12, 8:12] = 0.9
    soft_b[27:43, 27:43] = 0.5
    soft_b[30:40, 30:40] = 0.9
    preds = InstanceSet.from_dense(np.zeros((2, 4)), [0.9, 0.8], [1, 2], np.asarray([soft_a, soft_b]))
    return labels, preds


@pytest.mark.parametrize("metric", ["AP50@100", "PQ"])
def test_mask_threshold_is_chosen_per_class(metric):
    labels, preds = two_class_image()
    search = {"score_thresholds": [0.0], "mask_thresholds": [0.3, 0.6], "nms_thresholds": [1.0]}
    best, trials = tune_thresholds([labels], [preds], CLASSES, search, metric=metric)
    # Every single mask threshold of the grid (0.5, 0.3, 0.6) matches at most one class: at
    # best 1/2 for AP50 or PQ; the per-class pass then moves class b to 0.6.
    assert trials.score.iloc[0] == 0.0 and trials.loc[trials.stage == "grid", "score"].max() == pytest.approx(0.5)
    assert best["mask_thresholds"] == {1: 0.3, 2: 0.6} and best["score"] == pytest.approx(1.0)
    assert len(trials) == 3 + 2 * 2  # 3 grid points, 2 classes x 2 other mask thresholds
    assert score_with([labels], [preds], CLASSES, best, metric=metric) == pytest.approx(1.0)


def test_ap50_at_100_is_read_at_100_detections():
    """256 cells of 4x4 px, each predicted exactly and by a 1 px shifted duplicate (IoU 0.6)
    scored just below it. Without NMS the 100 best detections are 50 cells and their 50
    duplicates; NMS at 0.5 removes the duplicates, so 100 distinct cells, recall 100/256, and
    precision 1 at the 40 recall points 0.00..0.39: AP50@100 = 40/101. AP50 at maxDets 1000
    sees every cell: 1."""
    labels = np.zeros((1, 64, 64), np.int32)
    labels[0] = (np.arange(64)[:, None] // 4) * 16 + np.arange(64)[None, :] // 4 + 1
    cells = [labels[0] == i for i in range(1, 257)]
    masks = [m for cell in cells for m in (cell, np.roll(cell, 1, axis=1))]
    scores = [s for i in range(256) for s in (1 - i / 1000, 1 - i / 1000 - 0.0005)]
    preds = [InstanceSet.from_dense(np.zeros((512, 4)), scores, np.ones(512), np.asarray(masks))]
    search = {"score_thresholds": [0.0], "mask_thresholds": [0.5], "nms_thresholds": [0.5]}
    best, trials = tune_thresholds([labels], preds, ["a"], search, metric="AP50@100")
    assert best["nms_threshold"] == 0.5 and best["score"] == pytest.approx(40 / 101)
    assert trials.score.iloc[0] < 40 / 101
    processed = [apply_thresholds(p, 0.0, 0.5, 0.5) for p in preds]
    gt = prepare_ground_truth([labels], ["a"])
    assert metric_value(gt, processed, "AP50@100") == pytest.approx(40 / 101)
    assert metric_value(gt, processed, "AP50") == pytest.approx(1.0)


def test_cross_check_reports_held_out_scores(data):
    labels_list, preds = data
    report = cross_check(labels_list, preds, CLASSES, SEARCH, metric="sartorius")
    # Half a has two images, half b one; the planted thresholds transfer.
    assert report["held_out_a"] == pytest.approx(1.0) and report["held_out_b"] == pytest.approx(1.0)
    assert report["held_out"] == pytest.approx(1.0) and report["tuned_b"] == pytest.approx(1.0)
    single = cross_check(labels_list[:1], preds[:1], CLASSES, SEARCH, metric="sartorius")
    assert all(np.isnan(v) for v in single.values())


def test_the_schema_offers_exactly_the_tunable_metrics():
    schema = yaml.safe_load((Path(__file__).parents[1] / "workflow/schemas/config.schema.yaml").read_text())
    assert set(schema["properties"]["tune"]["properties"]["metric"]["enum"]) == set(METRICS)


def test_prepared_ground_truth_tunes_and_cross_checks_as_the_labels(data):
    labels_list, preds = data
    gt = prepare_ground_truth(iter(labels_list), CLASSES)
    for metric in ("AP", "sartorius"):
        best, trials = tune_thresholds(labels_list, preds, CLASSES, SEARCH, metric=metric)
        best_gt, trials_gt = tune_thresholds(gt, preds, CLASSES, SEARCH, metric=metric)
        assert best_gt == best and trials_gt.equals(trials)
        assert score_with(gt, preds, CLASSES, best, metric=metric) == score_with(labels_list, preds, CLASSES, best, metric=metric)
        a = cross_check(labels_list, preds, CLASSES, SEARCH, metric=metric)
        b = cross_check(gt, preds, CLASSES, SEARCH, metric=metric)
        assert a.keys() == b.keys() and all(a[k] == b[k] or (np.isnan(a[k]) and np.isnan(b[k])) for k in a)


def test_tuning_from_disk_equals_tuning_in_memory(data, tmp_path, monkeypatch):
    """The tune job reads the predictions from disk on every pass (`StoredSets`) and the ground
    truth from a spool: the same trials and thresholds as from lists, and no spool left over."""
    labels_list, preds = data
    names = [f"img{i}" for i in range(len(preds))]
    save_instance_sets(tmp_path / "ensemble", dict(zip(names, preds)))
    stored = StoredSets(tmp_path / "ensemble", names)
    spools = tmp_path / "spools"
    spools.mkdir()
    monkeypatch.setenv("TMPDIR", str(spools))  # where tune writes its trials' spools
    tempfile.tempdir = None  # re-read TMPDIR
    try:
        gt = spool_ground_truth(iter(labels_list), CLASSES, spools)
        for metric in ("AP50@100", "sartorius"):
            best, trials = tune_thresholds(labels_list, preds, CLASSES, SEARCH, metric=metric)
            best_disk, trials_disk = tune_thresholds(gt, stored, CLASSES, SEARCH, metric=metric)
            assert best_disk == best and trials_disk.equals(trials)
            a = cross_check(labels_list, preds, CLASSES, SEARCH, metric=metric)
            b = cross_check(gt, stored, CLASSES, SEARCH, metric=metric)
            assert a == pytest.approx(b, nan_ok=True)
        assert [p.name for p in spools.iterdir() if p.is_dir()] == []  # trials' spools removed
    finally:
        tempfile.tempdir = None


def with_other_class_copies(preds):
    """Each prediction also reported as the other class at 0.7 x its score, same mask: what
    Mask R-CNN gives a cell whose class it is unsure of."""
    out = []
    for p in preds:
        copy = InstanceSet(p.image_size, p.boxes, p.scores * 0.7, 3 - p.classes, p.windows, p.probs)
        out.append(InstanceSet.concatenate([p, copy]))
    return out


def test_cells_point_keeps_each_cell_once_with_one_class(data):
    labels_list, preds = data
    preds = with_other_class_copies(preds)
    search = {"score_thresholds": [0.2, 0.5], "mask_thresholds": [0.3, 0.5], "nms_thresholds": [0.5, 0.9]}
    leaderboard, _ = tune_thresholds(labels_list, preds, CLASSES, SEARCH, metric="PQ")
    cells, trials = tune_thresholds(labels_list, preds, CLASSES, search, metric="PQ", point="cells")
    assert cells["point"] == "cells" and leaderboard["point"] == "leaderboard"
    # classes may not overlap at the leaderboard point; at the cells point the copies are gone
    assert cells["score"] == pytest.approx(1.0) and leaderboard["score"] < cells["score"]
    assert cells["nms_threshold"] == 0.5 and cells["mask_thresholds"] == {1: 0.3, 2: 0.3}
    assert score_with(labels_list, preds, CLASSES, cells, metric="PQ") == cells["score"]
    # bounded: 2 score x 2 nms grid points, 2 classes x 1 other mask, 2 classes x 1 other score
    assert list(trials["stage"]) == ["grid"] * 4 + ["mask"] * 2 + ["score"] * 2
    check = cross_check(labels_list, preds, CLASSES, search, metric="PQ", point="cells")
    assert check["held_out"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="unknown operating point"):
        tune_thresholds(labels_list, preds, CLASSES, search, point="people")
