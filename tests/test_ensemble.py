import numpy as np
import pytest
from ensemble_boxes import weighted_boxes_fusion

from cellseg.common.instances import InstanceSet
from cellseg.inference.ensemble import fuse_instance_sets

SIZE = (40, 60)  # (H, W)


def one_set(boxes, scores, classes, value=200):
    """Instances whose masks fill their (integer) boxes with probability `value` / 255."""
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    windows = boxes.astype(np.int32)
    probs = [np.full((y1 - y0, x1 - x0), value, np.uint8) for x0, y0, x1, y1 in windows]
    return InstanceSet(SIZE, boxes, np.asarray(scores, np.float32), np.asarray(classes, np.int64), windows, probs)


def test_equal_boxes_of_two_folds_fuse_with_the_average_mask():
    a = one_set([[10, 10, 20, 20]], [0.9], [1], value=200)
    b = one_set([[10, 10, 20, 20]], [0.7], [1], value=100)
    fused = fuse_instance_sets([a, b])
    assert len(fused) == 1
    np.testing.assert_allclose(fused.boxes[0], [10, 10, 20, 20], atol=1e-4)
    assert fused.scores[0] == pytest.approx(0.8)
    assert fused.classes[0] == 1
    np.testing.assert_array_equal(fused.windows[0], [10, 10, 20, 20])
    np.testing.assert_array_equal(fused.probs[0], 150)


def test_mask_window_is_the_union_and_absent_folds_count_as_zero():
    a = one_set([[10, 10, 20, 20], [40, 5, 50, 15]], [0.9, 0.6], [1, 1], value=200)
    b = one_set([[11, 10, 21, 20]], [0.9], [1], value=100)
    fused = fuse_instance_sets([a, b], absent_as_zero=True)
    assert len(fused) == 2
    pair, alone = np.argsort(-fused.scores)
    np.testing.assert_array_equal(fused.windows[pair], [10, 10, 21, 20])
    np.testing.assert_array_equal(fused.paste(pair)[15, [10, 15, 20]] * 255, [100, 150, 50])
    np.testing.assert_array_equal(fused.probs[alone], 100)  # found by one of two folds: halved
    assert fused.scores[alone] == pytest.approx(0.3)  # ensemble_boxes' 'avg': 0.6 * 1 / 2
    members_only = fuse_instance_sets([a, b], absent_as_zero=False)
    np.testing.assert_array_equal(members_only.probs[np.argmin(members_only.scores)], 200)


def test_disjoint_boxes_and_other_classes_stay_apart():
    a = one_set([[0, 0, 10, 10], [30, 20, 40, 30]], [0.9, 0.8], [1, 2])
    b = one_set([[30, 20, 40, 30], [0, 0, 10, 10]], [0.8, 0.9], [1, 2])
    fused = fuse_instance_sets([a, b])
    assert len(fused) == 4
    assert sorted(fused.classes.tolist()) == [1, 1, 2, 2]


def test_one_set_passes_through_unchanged():
    a = one_set([[0, 0, 10, 10], [1, 1, 9, 9]], [0.9, 0.8], [1, 1])
    assert fuse_instance_sets([a]) is a


def test_all_empty_and_bad_arguments():
    assert len(fuse_instance_sets([InstanceSet.empty(SIZE)] * 3)) == 0
    a = one_set([[0, 0, 10, 10]], [0.9], [1])
    with pytest.raises(ValueError, match="weights"):
        fuse_instance_sets([a, a], weights=[1.0])
    with pytest.raises(ValueError, match="conf_type"):
        fuse_instance_sets([a, a], conf_type="median")


def random_folds(rng, n_folds, n_cells):
    """Jittered copies of the same cells (some missing), as folds of one model would predict."""
    centre = rng.uniform(5, 55, (n_cells, 2)) * [1, SIZE[0] / SIZE[1]]
    radius = rng.uniform(2, 6, n_cells)
    classes = rng.integers(1, 3, n_cells)
    sets = []
    for _ in range(n_folds):
        keep = rng.random(n_cells) < 0.85
        c = centre[keep] + rng.normal(0, 0.8, (keep.sum(), 2))
        r = radius[keep, None] * rng.uniform(0.8, 1.2, (keep.sum(), 1))
        boxes = np.clip(np.c_[c - r, c + r], 0, [SIZE[1], SIZE[0], SIZE[1], SIZE[0]]).astype(np.float32)
        windows = np.c_[np.floor(boxes[:, :2]), np.maximum(np.ceil(boxes[:, 2:]), np.floor(boxes[:, :2]) + 1)]
        windows = windows.astype(np.int32)
        probs = [rng.integers(0, 256, (y1 - y0, x1 - x0), dtype=np.uint8) for x0, y0, x1, y1 in windows]
        scores = rng.choice([0.3, 0.5, 0.9], keep.sum()).astype(np.float32)  # ties, as ensemble_boxes sees them
        sets.append(InstanceSet(SIZE, boxes, scores, classes[keep], windows, probs))
    return sets


@pytest.mark.parametrize("conf_type", ["avg", "max", "box_and_model_avg", "absent_model_aware_avg"])
@pytest.mark.parametrize("seed", [0, 1])
def test_fused_boxes_and_scores_agree_with_ensemble_boxes(conf_type, seed):
    rng = np.random.default_rng(seed)
    sets = random_folds(rng, 4, 40)
    weights, iou_thr, skip = [1.0, 2.0, 1.0, 0.5], 0.5, 0.4
    fused = fuse_instance_sets(sets, weights, iou_thr, skip, conf_type)
    scale = np.array([SIZE[1], SIZE[0]] * 2, np.float64)
    boxes, scores, labels = weighted_boxes_fusion(
        [s.boxes.astype(np.float64) / scale for s in sets], [s.scores for s in sets], [s.classes for s in sets],
        weights=weights, iou_thr=iou_thr, skip_box_thr=skip, conf_type=conf_type,
    )
    ours = np.c_[fused.classes, fused.scores, fused.boxes / scale]
    theirs = np.c_[labels, scores, boxes]
    ours, theirs = (t[np.lexsort(np.round(t[:, [5, 4, 3, 2, 0]], 4).T)] for t in (ours, theirs))
    np.testing.assert_allclose(ours, theirs, atol=1e-6)


def test_fused_box_is_the_score_weighted_mean_of_its_members():
    """Membership read back off the fused masks: each input mask is one marker pixel of its own."""
    rng = np.random.default_rng(3)
    sets = random_folds(rng, 3, 30)
    weights = np.array([1.0, 2.0, 0.5])
    used, markers = set(), []
    for s in sets:
        for k, (x0, y0, x1, y1) in enumerate(s.windows):
            free = [(y, x) for y in range(y0, y1) for x in range(x0, x1) if (y, x) not in used]
            y, x = free[rng.integers(len(free))]
            used.add((y, x))
            markers.append((y, x))
            s.probs[k] = np.zeros_like(s.probs[k])
            s.probs[k][y - y0, x - x0] = 255
    fused = fuse_instance_sets(sets, weights=weights.tolist(), iou_thr=0.5)
    every = InstanceSet.concatenate(sets)
    weighted = every.scores * weights[np.repeat(np.arange(3), [len(s) for s in sets])]
    rows, cols = np.array(markers).T
    seen = np.zeros(len(every), int)
    for i in range(len(fused)):
        members = np.flatnonzero(fused.paste(i)[rows, cols] > 0)
        seen[members] += 1
        assert (every.classes[members] == fused.classes[i]).all()
        mean = (weighted[members, None] * every.boxes[members]).sum(0) / weighted[members].sum()
        np.testing.assert_allclose(fused.boxes[i], mean, atol=1e-3)
    np.testing.assert_array_equal(seen, 1)
    assert len(fused) < len(every)


def test_fold_folders_fuse_image_by_image_as_the_sets_do(tmp_path):
    from cellseg.common.instances import load_instance_sets, save_instance_sets
    from cellseg.inference.calibrate import calibrate_set
    from cellseg.inference.ensemble import fuse_fold_folders

    folds = {
        0: {"a": one_set([[10, 10, 20, 20]], [0.9], [1]), "b": one_set([[1, 1, 5, 5], [30, 5, 40, 15]], [0.4, 0.8], [1, 2])},
        3: {"a": one_set([[11, 10, 21, 20]], [0.6], [1], value=90), "b": InstanceSet.empty(SIZE)},
    }
    for fold, sets in folds.items():
        save_instance_sets(tmp_path / f"fold{fold}", sets)
    maps = {3: {"x": [0.0, 1.0], "y": [0.2, 1.0]}}
    options = {"weights": [1.0, 2.0], "iou_thr": 0.5, "absent_as_zero": False}
    assert fuse_fold_folders({k: tmp_path / f"fold{k}" for k in folds}, tmp_path / "out", maps, **options) == 2
    fused = load_instance_sets(tmp_path / "out")
    assert list(fused) == ["a", "b"]
    for name, got in fused.items():
        want = fuse_instance_sets([calibrate_set(folds[k][name], maps.get(k)) for k in folds], **options)
        for field in ("boxes", "scores", "classes", "windows"):
            np.testing.assert_array_equal(getattr(got, field), getattr(want, field))
        assert all(np.array_equal(g, w) for g, w in zip(got.probs, want.probs, strict=True))


def test_fold_folder_missing_an_image_is_named(tmp_path):
    from cellseg.common.instances import save_instance_sets
    from cellseg.inference.ensemble import fuse_fold_folders

    save_instance_sets(tmp_path / "fold0", {"a": InstanceSet.empty(SIZE), "b": InstanceSet.empty(SIZE)})
    save_instance_sets(tmp_path / "fold1", {"a": InstanceSet.empty(SIZE)})
    with pytest.raises(FileNotFoundError, match="fold1: no predictions for b"):
        fuse_fold_folders({0: tmp_path / "fold0", 1: tmp_path / "fold1"}, tmp_path / "out")
