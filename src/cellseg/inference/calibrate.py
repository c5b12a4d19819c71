"""Per-fold score calibration before the folds are fused.

Folds trained on different images can be confident to different degrees: on images unlike
their training data one fold may still find the cells but score them all low. Weighted boxes
fusion then lets that fold's detections lose every cluster they join, and its scores drag the
fused scores down. Mapping each fold's scores through a monotone function fitted on that
fold's validation predictions puts the folds on one scale without changing the order of
detections within a fold:

- `quantile`: the fold's score quantiles onto the quantiles of all folds' scores pooled (an
  under-confident fold is lifted to the others' distribution);
- `rank`: each score onto its quantile within the fold (every fold uniform on [0, 1]).

A map is piecewise linear through knots at `N_KNOTS` quantile levels, anchored at (0, 0) and
(1, 1) so that scores outside the validation range (test images) keep their order.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np

from cellseg.common.files import atomic_path
from cellseg.common.instances import InstanceSet

METHODS = ("none", "quantile", "rank")
N_KNOTS = 101


def fit_calibration(fold_scores: dict[int, np.ndarray], method: str) -> dict[int, dict]:
    """The score map of each fold, `{fold: {"x": knots in, "y": knots out}}` (float lists, x
    strictly increasing, y non-decreasing, both from 0 to 1); `{}` for `none`.

    fold_scores: every detection score of each fold on the validation images, in [0, 1].
    A fold without detections keeps the identity map.
    """
    if method not in METHODS:
        raise ValueError(f"unknown calibration {method!r}; choose one of {METHODS}")
    if method == "none":
        return {}
    levels = np.linspace(0.0, 1.0, N_KNOTS)
    pooled = np.concatenate([np.asarray(s, np.float64) for s in fold_scores.values()])
    maps = {}
    for fold, scores in fold_scores.items():
        scores = np.asarray(scores, np.float64)
        if not len(scores) or not len(pooled):
            maps[fold] = {"x": [0.0, 1.0], "y": [0.0, 1.0]}
            continue
        target = np.quantile(pooled, levels) if method == "quantile" else levels
        maps[fold] = _knots(np.quantile(scores, levels), target)
    return maps


def _knots(x: np.ndarray, y: np.ndarray) -> dict:
    """Knots through (0, 0), the (x, y) pairs and (1, 1), with repeated x dropped (the first of
    a run kept: where a fold's scores tie, one output value) so that x strictly increases."""
    x = np.concatenate([[0.0], np.clip(x, 0.0, 1.0), [1.0]])
    y = np.concatenate([[0.0], np.clip(y, 0.0, 1.0), [1.0]])
    keep = np.concatenate([[True], np.diff(x) > 0])
    return {"x": x[keep].tolist(), "y": y[keep].tolist()}


def calibrate_scores(scores: np.ndarray, score_map: dict | None) -> np.ndarray:
    """`scores` (N,) through a fold's map (`fit_calibration`), float32; unchanged without one."""
    if not score_map:
        return np.asarray(scores, np.float32)
    return np.interp(np.asarray(scores, np.float64), score_map["x"], score_map["y"]).astype(np.float32)


def calibrate_set(instances: InstanceSet, score_map: dict | None) -> InstanceSet:
    """The same instances with calibrated scores (the order by score is unchanged)."""
    if not score_map:
        return instances
    return dataclasses.replace(instances, scores=calibrate_scores(instances.scores, score_map))


def write_calibration(path: str | Path, method: str, maps: dict[int, dict]) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps({"method": method, "folds": {str(k): v for k, v in maps.items()}}, indent=1))


def read_calibration(path: str | Path | None) -> dict[int, dict]:
    """`{fold: map}` from `write_calibration`'s file; `{}` (no calibration) without a file."""
    if not path:
        return {}
    return {int(k): v for k, v in json.loads(Path(path).read_text())["folds"].items()}
