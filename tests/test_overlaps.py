import numpy as np
import pytest

from cellseg.common.instances import InstanceSet
from cellseg.common.iou import mask_iou
from cellseg.inference.ownership import WindowIndex, exclusive_pixels, greedy_owners, merged_class_scores


def squares(image_size, windows, scores, classes):
    """Binary instances, each filling its x0, y0, x1, y1 window."""
    windows = np.asarray(windows, np.int32)
    probs = [np.full((y1 - y0, x1 - x0), 255, np.uint8) for x0, y0, x1, y1 in windows.tolist()]
    return InstanceSet(image_size, windows.astype(np.float32), np.asarray(scores, np.float32),
                       np.asarray(classes, np.int64), windows, probs)  # fmt: skip


def test_exclusive_pixels_gives_shared_pixels_to_the_higher_score_across_classes():
    cells = squares((10, 10), [[0, 0, 4, 4], [2, 2, 6, 6], [0, 0, 4, 4], [2, 2, 4, 4]], [0.5, 0.9, 0.1, 0.3], [1, 1, 2, 1])
    out = exclusive_pixels(cells)
    assert out.scores.tolist() == pytest.approx([0.5, 0.9])  # the class-2 copy and the 2x2 cell lose every pixel
    first = out.binary_mask(0, 0.5)
    assert first.sum() == 12 and not first[2:4, 2:4].any()
    assert out.windows[0].tolist() == [0, 0, 4, 4] and out.binary_mask(1, 0.5).sum() == 16
    assert (out.binary_masks(0.5).sum(axis=0) <= 1).all()
    assert exclusive_pixels(out).windows.tolist() == out.windows.tolist()  # nothing left to resolve


def test_greedy_owners_within_a_class_or_across_classes_and_class_scores():
    cells = squares((12, 12), [[0, 0, 6, 6], [0, 0, 6, 5], [0, 1, 6, 6], [7, 7, 10, 10]], [0.9, 0.8, 0.6, 0.7], [1, 2, 1, 2])
    assert greedy_owners(cells, 0.5, class_agnostic=False).tolist() == [0, 1, 0, 3]
    owner = greedy_owners(cells, 0.5, class_agnostic=True)
    assert owner.tolist() == [0, 0, 0, 3]
    scores = merged_class_scores(cells, owner, 2)
    assert scores[0].tolist() == pytest.approx([0.9, 0.8]) and scores[3].tolist() == pytest.approx([0.0, 0.7])
    assert not scores[1].any() and not scores[2].any()
    assert (greedy_owners(cells, 1.0, class_agnostic=True) == np.arange(4)).all()


def test_window_index_and_iou():
    a = squares((200, 200), [[0, 0, 10, 10], [100, 100, 140, 110]], [0.5, 0.5], [1, 1])
    b = squares((200, 200), [[5, 0, 15, 10]], [0.5], [2])
    index = WindowIndex()
    for i, window in enumerate(a.windows):
        index.add(i, window)
    assert index.candidates(b.windows[0]) == {0}
    def iou(x, i, y, j):
        return mask_iou(x.windows[i], x.window_mask(i), y.windows[j], y.window_mask(j))

    assert iou(a, 0, b, 0) == 50 / 150 and iou(a, 1, b, 0) == 0.0
