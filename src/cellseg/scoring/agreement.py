"""How closely two backends' instances of one image agree: the check that an exported model
(`cellseg.model.onnx_export`) reproduces the torch model."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cellseg.common.instances import InstanceSet, quantised_threshold


@dataclass(frozen=True)
class Agreement:
    """matched: instances of `a` with a partner in `b` (same class, mask IoU >= the threshold,
    one partner each); n_a, n_b: the counts; max_score_diff: the largest |score difference| of
    a matched pair (0 without pairs)."""

    matched: int
    n_a: int
    n_b: int
    max_score_diff: float

    @property
    def fraction(self) -> float:
        """Matched share of the larger set (1 when both are empty)."""
        return self.matched / max(self.n_a, self.n_b) if max(self.n_a, self.n_b) else 1.0


def agreement(a: InstanceSet, b: InstanceSet, iou: float = 0.95, mask_threshold: float = 0.5) -> Agreement:
    """Match the instances of `a` and `b` (one image) greedily by mask IoU (masks at
    `mask_threshold`), within each class, best pairs first."""
    level = quantised_threshold(mask_threshold)
    pairs = []
    for class_id in np.intersect1d(a.classes, b.classes).tolist():
        ia, ib = np.flatnonzero(a.classes == class_id), np.flatnonzero(b.classes == class_id)
        wa, wb = a.windows[ia], b.windows[ib]
        meet = (
            (wa[:, None, 0] < wb[None, :, 2]) & (wa[:, None, 2] > wb[None, :, 0])
            & (wa[:, None, 1] < wb[None, :, 3]) & (wa[:, None, 3] > wb[None, :, 1])
        )  # fmt: skip
        for i, j in zip(*np.nonzero(meet)):
            value = _mask_iou(a, int(ia[i]), b, int(ib[j]), level)
            if value >= iou:
                pairs.append((value, int(ia[i]), int(ib[j])))
    used_a, used_b, diffs = set(), set(), []
    for _, i, j in sorted(pairs, reverse=True):
        if i not in used_a and j not in used_b:
            used_a.add(i)
            used_b.add(j)
            diffs.append(abs(float(a.scores[i]) - float(b.scores[j])))
    return Agreement(len(diffs), len(a), len(b), max(diffs, default=0.0))


def _mask_iou(a: InstanceSet, i: int, b: InstanceSet, j: int, level: int) -> float:
    """IoU of mask i of `a` and mask j of `b` at the quantised `level`, over their windows' union."""
    x0, y0 = np.minimum(a.windows[i, :2], b.windows[j, :2])
    x1, y1 = np.maximum(a.windows[i, 2:], b.windows[j, 2:])
    masks = []
    for found, k in ((a, i), (b, j)):
        canvas = np.zeros((y1 - y0, x1 - x0), bool)
        wx0, wy0, wx1, wy1 = found.windows[k]
        canvas[wy0 - y0 : wy1 - y0, wx0 - x0 : wx1 - x0] = found.probs[k] >= level
        masks.append(canvas)
    union = np.count_nonzero(masks[0] | masks[1])
    return np.count_nonzero(masks[0] & masks[1]) / union if union else 1.0
