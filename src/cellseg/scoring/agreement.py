"""How closely two backends' instances of one image agree: the check that an exported model
(`cellseg.model.onnx_export`) reproduces the torch model."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cellseg.common.instances import InstanceSet, quantised_threshold
from cellseg.common.iou import mask_iou, rects_meet


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
        for i, j in zip(*np.nonzero(rects_meet(a.windows[ia], b.windows[ib]))):
            value = mask_iou(a.windows[ia[i]], a.probs[ia[i]] >= level, b.windows[ib[j]], b.probs[ib[j]] >= level, empty=1.0)
            if value >= iou:
                pairs.append((value, int(ia[i]), int(ib[j])))
    used_a, used_b, diffs = set(), set(), []
    for _, i, j in sorted(pairs, reverse=True):
        if i not in used_a and j not in used_b:
            used_a.add(i)
            used_b.add(j)
            diffs.append(abs(float(a.scores[i]) - float(b.scores[j])))
    return Agreement(len(diffs), len(a), len(b), max(diffs, default=0.0))
