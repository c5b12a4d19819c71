"""Which instances of one image are the same cell, and which cell a pixel belongs to.

The one home of these decisions for final instances: mask NMS within a class or across
classes (`greedy_owners`), pixels shared by several cells given to the highest score
(`exclusive_pixels`), and the windows near a window (`WindowIndex`, `grid_buckets`). Masks are
binary (`InstanceSet` probabilities 0 or 255) and live in their windows; nothing here allocates
an array of the whole image, so it runs on a slide's cells.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from cellseg.common.instances import InstanceSet, bounding_rect
from cellseg.common.iou import instance_pixels, iou_matrix

GRID = 64  # px, buckets of the window index


class WindowIndex:
    """Instance windows bucketed on a `GRID` px grid: the instances whose windows may share a
    pixel with a window are found without comparing every pair."""

    def __init__(self):
        self._buckets: dict[tuple[int, int], list[int]] = defaultdict(list)

    def add(self, i: int, window) -> None:
        for key in grid_buckets(window):
            self._buckets[key].append(i)

    def candidates(self, window) -> set[int]:
        """Instances added whose windows share a grid bucket with `window` (x0, y0, x1, y1)."""
        return {j for key in grid_buckets(window) for j in self._buckets.get(key, ())}


def grid_buckets(window) -> list[tuple[int, int]]:
    """The `GRID` px cells that the window x0, y0, x1, y1 touches."""
    x0, y0, x1, y1 = (int(v) for v in window)
    return [(by, bx) for by in range(y0 // GRID, (y1 - 1) // GRID + 1) for bx in range(x0 // GRID, (x1 - 1) // GRID + 1)]


def greedy_owners(instances: InstanceSet, iou_threshold: float, class_agnostic: bool) -> np.ndarray:
    """Greedy mask NMS in descending score order (masks at 0.5; ties keep the earlier one):
    (N,) int64, for each instance the index of the kept instance that suppressed it (IoU above
    `iou_threshold` with it), or its own index when it is kept. `class_agnostic`: instances
    of any class suppress each other (one cell, one class); else only within a class.
    `iou_threshold` >= 1 keeps every instance."""
    owner = np.arange(len(instances))
    if iou_threshold >= 1 or len(instances) < 2:
        return owner
    iou = iou_matrix(*[instance_pixels(instances, 0.5)] * 2)
    if not class_agnostic:
        iou[instances.classes[:, None] != instances.classes[None, :]] = 0.0
    order = np.argsort(-instances.scores, kind="stable")
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    kept = np.zeros(len(instances), bool)
    for i in order.tolist():
        above = np.flatnonzero(kept & (iou[i] > iou_threshold))
        if len(above):
            owner[i] = above[np.argmin(rank[above])]  # the highest-scoring kept instance it overlaps
        else:
            kept[i] = True
    return owner


def merged_class_scores(instances: InstanceSet, owner: np.ndarray, n_classes: int) -> np.ndarray:
    """(N, C) float32: per instance, the best score of each class among the instances it owns
    (`greedy_owners`), itself included; rows of suppressed instances are zero. Class scores the
    instances already carry are merged in the same way."""
    out = np.zeros((len(instances), n_classes), np.float32)
    own = np.zeros((len(instances), n_classes), np.float32)
    own[np.arange(len(instances)), instances.classes - 1] = instances.scores
    if instances.class_scores is not None:
        own = np.maximum(own, instances.class_scores)
    np.maximum.at(out, owner, own)
    return out


def exclusive_pixels(instances: InstanceSet) -> InstanceSet:
    """Binary instances whose masks share no pixel, across classes: a pixel goes to the
    highest-scoring instance claiming it (the earlier one on a tie). Windows shrink to what is
    left; instances left without a pixel are dropped; the order is kept."""
    index = WindowIndex()
    masks = [instances.window_mask(i) for i in range(len(instances))]
    windows = instances.windows.copy()
    for i in np.argsort(-instances.scores, kind="stable").tolist():
        ax0, ay0, ax1, ay1 = windows[i].tolist()
        for j in index.candidates(windows[i]):
            bx0, by0, bx1, by1 = windows[j].tolist()
            x0, y0, x1, y1 = max(ax0, bx0), max(ay0, by0), min(ax1, bx1), min(ay1, by1)
            if x0 < x1 and y0 < y1:
                masks[i][y0 - ay0 : y1 - ay0, x0 - ax0 : x1 - ax0] &= ~masks[j][y0 - by0 : y1 - by0, x0 - bx0 : x1 - bx0]
        index.add(i, windows[i])
    keep = np.zeros(len(instances), bool)
    probs = list(instances.probs)
    for i, mask in enumerate(masks):
        rect = bounding_rect(mask)
        if rect:
            keep[i] = True
            probs[i] = np.where(mask[rect[1] : rect[3], rect[0] : rect[2]], np.uint8(255), np.uint8(0))
            windows[i] = np.add(windows[i, :2].tolist() * 2, rect)
    out = InstanceSet(
        instances.image_size, instances.boxes, instances.scores, instances.classes, windows, probs,
        instances.class_scores,
    )
    return out.select(keep)
