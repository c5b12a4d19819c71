import json

import numpy as np
import pandas as pd
import pytest

from cellseg.common.instances import InstanceSet, save_instance_sets
from cellseg.inference.operating_points import at_point, read_point, read_thresholds
from cellseg.scoring.scoreboard import load_predictions, scoreboard

CLASSES = ["a", "b"]


def test_thresholds_json_round_trip_and_per_class_masks(tmp_path):
    # What the tune stage writes: json turns the int class ids into strings.
    best = {"point": "leaderboard", "score_thresholds": {1: 0.2, 2: 0.0}, "mask_thresholds": {1: 0.3, 2: 0.6},
            "nms_threshold": 1.0}  # fmt: skip
    cells = {**best, "point": "cells", "mask_thresholds": {1: 0.3, 2: 0.3}, "nms_threshold": 0.5}
    (tmp_path / "leaderboard.json").write_text(json.dumps(best))
    (tmp_path / "thresholds.json").write_text(json.dumps({"leaderboard": best, "cells": cells}))
    assert read_point(tmp_path / "leaderboard.json") == best
    assert read_thresholds(tmp_path / "thresholds.json") == {"leaderboard": best, "cells": cells}
    (tmp_path / "old.json").write_text(json.dumps(best))
    with pytest.raises(ValueError, match="old.json: no operating point leaderboard, cells"):
        read_thresholds(tmp_path / "old.json")
    soft = np.zeros((16, 16), np.float32)
    soft[2:8, 2:8] = 0.4
    soft[4:6, 4:6] = 0.9
    preds = InstanceSet.from_dense(np.zeros((3, 4)), [0.9, 0.8, 0.1], [1, 2, 1], np.asarray([soft] * 3))
    tuned = at_point([preds], best)[0]
    # The class-1 instance scoring 0.1 is dropped; class 1 keeps the 0.4 rim, class 2 does not.
    assert list(tuned.classes) == [1, 2]
    np.testing.assert_array_equal(tuned.binary_mask(0, 0.5), soft >= 0.3)
    np.testing.assert_array_equal(tuned.binary_mask(1, 0.5), soft >= 0.6)
    # The cells point: one cell, of the higher-scoring class, that keeps the other's score.
    one = at_point([preds], cells)[0]
    assert list(one.classes) == [1] and one.class_scores.tolist() == [[pytest.approx(0.9), pytest.approx(0.8)]]


POINTS = {
    "leaderboard": {"point": "leaderboard", "score_thresholds": {1: 0.0, 2: 0.0}, "mask_thresholds": {1: 0.5, 2: 0.5},
                    "nms_threshold": 1.0},
    "cells": {"point": "cells", "score_thresholds": {1: 0.0, 2: 0.0}, "mask_thresholds": {1: 0.5, 2: 0.5},
              "nms_threshold": 0.5},
}  # fmt: skip


def test_scoreboard_has_the_panoptic_and_leaderboard_columns():
    labels = np.zeros((2, 16, 16), np.int32)
    labels[0, 2:8, 2:8] = 1
    labels[1, 9:14, 9:14] = 1
    masks = np.asarray([labels[0] == 1, labels[1] == 1])
    preds = [InstanceSet.from_dense(np.zeros((2, 4)), [0.9, 0.8], [1, 2], masks)]
    table = scoreboard([labels], {0: preds}, preds, POINTS, CLASSES, 100, "faster").tables["per_class"]
    columns = ["AP50@100", "AP50@100_a", "AP50@100_b", "PQ", "SQ", "DQ", "PQ_a", "PQ_b", "AJI", "AJI_a"]
    assert (table[columns] == 1.0).all().all()
    assert list(table["model"]) == ["fold 0", "ensemble", "ensemble", "ensemble"]
    assert list(table["thresholds"]) == ["default", "default", "leaderboard", "cells"]


def test_scoreboard_scores_each_point_with_its_own_thresholds():
    labels = np.zeros((2, 16, 16), np.int32)
    labels[0, 2:8, 2:8] = 1
    cell = labels[0] == 1
    # one cell found twice, as both classes: the leaderboard keeps both, the cells point one
    preds = [InstanceSet.from_dense(np.zeros((2, 4)), [0.9, 0.8], [1, 2], np.asarray([cell, cell]))]
    table = scoreboard([labels], {0: preds}, preds, POINTS, CLASSES, 100, "faster").tables["per_class"]
    by_point = table.set_index("thresholds").loc[["leaderboard", "cells"]]
    assert by_point["count_ratio"].tolist() == [2.0, 1.0]


def test_load_predictions_keeps_the_folds_and_the_names_order(tmp_path):
    def one(score):
        return InstanceSet.from_dense(np.zeros((1, 4)), [score], [1], np.ones((1, 4, 4), bool))

    for folder, score in [("f0", 0.1), ("f2", 0.2), ("ens", 0.3)]:
        save_instance_sets(tmp_path / folder, {"x": one(score), "y": one(score + 0.5)})
    folds, ensemble = load_predictions({0: tmp_path / "f0", 2: tmp_path / "f2"}, tmp_path / "ens", ["y", "x"])
    assert list(folds) == [0, 2] and len(ensemble) == 2
    assert [float(p.scores[0]) for p in folds[2]] == pytest.approx([0.7, 0.2])
    for _ in range(2):  # read from disk again on every pass
        assert [float(p.scores[0]) for p in ensemble] == pytest.approx([0.8, 0.3])
    (tmp_path / "ens" / "x.npz").unlink()
    with pytest.raises(FileNotFoundError, match="no predictions for x"):
        list(ensemble)


def test_scoreboard_takes_prepared_or_streamed_ground_truth():
    from cellseg.scoring.metrics import sartorius_per_image
    from cellseg.scoring.truth import prepare_ground_truth

    labels = np.zeros((2, 16, 16), np.int32)
    labels[0, 2:8, 2:8] = 1
    labels[0, 9:12, 1:4] = 3
    labels[1, 9:14, 9:14] = 1
    masks = np.asarray([labels[0] == 1, labels[1] == 1, np.roll(labels[0] == 3, 1, axis=1)])
    preds = [InstanceSet.from_dense(np.zeros((3, 4)), [0.9, 0.8, 0.3], [1, 2, 1], masks)]
    thresholds = POINTS
    gt = prepare_ground_truth(iter([labels]), CLASSES)
    kinds = ("per_class", "agnostic")
    expected = scoreboard(gt, {0: preds}, preds, thresholds, CLASSES, 100, "faster", kinds=kinds)
    for truth, evaluator in [([labels], "faster"), (iter([labels]), "faster"), (iter([labels]), "streaming")]:
        board = scoreboard(truth, {0: preds}, preds, thresholds, CLASSES, 100, evaluator, kinds=kinds)
        for kind in kinds:
            pd.testing.assert_frame_equal(board.tables[kind], expected.tables[kind])
            pd.testing.assert_frame_equal(board.curves[kind], expected.curves[kind])
        pd.testing.assert_frame_equal(board.per_image, expected.per_image)
    assert "AP50@100_a" in expected.tables["per_class"] and "AP50@100_a" not in expected.tables["agnostic"]
    with pytest.raises(ValueError, match="unknown scoreboard kinds"):
        scoreboard(gt, {0: preds}, preds, thresholds, CLASSES, 100, "faster", kinds=("agnostic", "perclass"))
    with pytest.raises(ValueError):  # one more image of labels than of predictions
        scoreboard([labels, labels], {0: preds}, preds, thresholds, CLASSES, 100, "streaming")
    per_image = expected.per_image  # the tuned ensemble's
    assert list(per_image.columns) == ["sartorius", "n_true", "n_predicted"]
    assert per_image["n_true"].tolist() == [3] and per_image["n_predicted"].tolist() == [3]
    assert per_image["sartorius"].tolist() == pytest.approx(sartorius_per_image(gt, preds).tolist())
    assert 0 < per_image["sartorius"].iloc[0] < 1
