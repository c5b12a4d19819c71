"""The two operating points: read as the tune stage writes them, and applied to an image's
predicted instances.

- `leaderboard` (`apply_thresholds`): per-class score and mask thresholds and mask NMS within
  each class. Cells of different classes may overlap, and with score thresholds of 0 every
  candidate is kept, ranked: what COCO AP rewards.
- `cells` (`apply_cells`): per-class score and mask thresholds, then one class per cell and
  one cell per pixel: NMS across classes, and pixels still shared given to the higher score.
  What a person counts and measures, and what PQ and F1 reward.

The mask threshold is baked in: the returned masks are binary (stored probability 0 or 255),
so every later step (submission, evaluation, report) sees exactly the tuned binary masks
whatever threshold in (0, 1] it binarises at, and a default 0.5 elsewhere cannot undo tuning.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from cellseg.common.instances import PROB_SCALE, InstanceSet, quantised_threshold
from cellseg.inference.ownership import exclusive_pixels, greedy_owners, merged_class_scores

POINTS = ("leaderboard", "cells")


def apply_point(instances: InstanceSet, point: dict) -> InstanceSet:
    """One image's instances at a tuned operating point: `point` as the tune stage writes it
    (`read_point`), with a score threshold for each of the model's classes."""
    if point["point"] == "cells":
        n_classes = len(point["score_thresholds"])
        return apply_cells(
            instances, point["score_thresholds"], point["mask_thresholds"], point["nms_threshold"], n_classes
        )
    return apply_thresholds(instances, point["score_thresholds"], point["mask_thresholds"], point["nms_threshold"])


def apply_cells(
    instances: InstanceSet,
    score_thresholds: dict[int, float] | float,
    mask_thresholds: dict[int, float] | float,
    nms_threshold: float,
    n_classes: int,
) -> InstanceSet:
    """The `cells` point: score thresholds and mask binarisation as `apply_thresholds`, then
    mask NMS across classes (an instance whose mask has IoU above `nms_threshold` with a
    higher-scoring kept instance of any class is the same cell; >= 1 turns it off), then
    `exclusive_pixels`. Each cell keeps the best score of every class among the instances
    merged into it, as `class_scores` (N, n_classes). Applying it twice changes nothing."""
    instances = instances.select(instances.scores >= per_instance(instances.classes, score_thresholds, 0.0))
    instances = binarise(instances, per_instance(instances.classes, mask_thresholds, 0.5))
    owner = greedy_owners(instances, nms_threshold, class_agnostic=True)
    instances.class_scores = merged_class_scores(instances, owner, n_classes)
    return exclusive_pixels(instances.select(owner == np.arange(len(instances))))


def apply_thresholds(
    instances: InstanceSet,
    score_thresholds: dict[int, float] | float,
    mask_thresholds: dict[int, float] | float,
    nms_threshold: float,
) -> InstanceSet:
    """Keep instances with score >= their class's threshold, binarise masks at their class's
    mask threshold (instances whose binary mask is empty are dropped), then mask NMS within
    each class: an instance is suppressed when its binary mask IoU with a higher-scoring kept
    instance of the same class exceeds `nms_threshold` (>= 1 turns NMS off). Classes are kept
    apart because cells of different classes may legitimately overlap.

    score_thresholds: one float for all classes, or {class id (1-based): threshold}; a class
    missing from the dict keeps all its instances.
    mask_thresholds: one float for all classes, or {class id (1-based): threshold}; a class
    missing from the dict is binarised at 0.5.
    """
    instances = instances.select(instances.scores >= per_instance(instances.classes, score_thresholds, 0.0))
    instances = binarise(instances, per_instance(instances.classes, mask_thresholds, 0.5))
    if nms_threshold >= 1 or len(instances) < 2:
        return instances
    return instances.select(mask_nms(instances, nms_threshold))


def binarise(instances: InstanceSet, mask_thresholds: np.ndarray | float) -> InstanceSet:
    """Masks as 0/255 probabilities (>= the instance's threshold), windows unchanged; empty
    masks dropped. mask_thresholds: one float, or (N,) float, one per instance."""
    levels = [quantised_threshold(t) for t in np.broadcast_to(mask_thresholds, len(instances))]
    probs = [np.where(p >= level, np.uint8(PROB_SCALE), np.uint8(0)) for p, level in zip(instances.probs, levels)]
    binary = InstanceSet(
        instances.image_size, instances.boxes, instances.scores, instances.classes, instances.windows, probs,
        instances.class_scores,
    )
    return binary.select(np.array([p.any() for p in probs], bool))


def mask_nms(instances: InstanceSet, nms_threshold: float) -> np.ndarray:
    """Sorted indices of the instances greedy per-class mask NMS keeps (masks at 0.5)."""
    return np.flatnonzero(greedy_owners(instances, nms_threshold, class_agnostic=False) == np.arange(len(instances)))


def per_instance(classes: np.ndarray, thresholds: dict[int, float] | float, missing: float) -> np.ndarray:
    """(N,) float threshold of each instance from its 1-based class id in `classes` (N,):
    `thresholds` itself when a float, else its class's entry, or `missing` for a class not in
    the dict."""
    if not isinstance(thresholds, dict):
        return np.full(len(classes), float(thresholds))
    lookup = np.full(int(max([*thresholds, *classes, 0])) + 1, float(missing))
    for class_id, threshold in thresholds.items():
        lookup[int(class_id)] = threshold
    return lookup[classes]


def read_point(path: str | Path) -> dict:
    """One operating point as the tune stage writes it (results/tune/<point>.json), with its
    per-class score and mask thresholds keyed by int class id again (JSON keys are strings)."""
    return _int_keys(json.loads(Path(path).read_text()))


def read_thresholds(path: str | Path) -> dict[str, dict]:
    """thresholds.json: `{point name: point}` for every point of `POINTS` (`read_point`'s form)."""
    points = json.loads(Path(path).read_text())
    missing = [name for name in POINTS if name not in points]
    if missing:
        raise ValueError(f"{path}: no operating point {', '.join(missing)}; re-run the tune stage")
    return {name: _int_keys(points[name]) for name in POINTS}


def _int_keys(point: dict) -> dict:
    for key in ("score_thresholds", "mask_thresholds"):
        point[key] = {int(k): float(v) for k, v in point[key].items()}
    return point


def at_point(preds: Iterable[InstanceSet], point: dict) -> list[InstanceSet]:
    """Every image's predictions at the operating point `point` (`apply_point`)."""
    return [apply_point(p, point) for p in preds]
