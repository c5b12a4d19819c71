"""Threshold search on the validation set: per-class score thresholds, mask threshold, mask NMS.

The search is bounded: a grid over mask x NMS thresholds with all scores kept, then one
coordinate pass over each class's score threshold at the best grid point, i.e.
|mask| x |nms| + C x (|score| - 1) evaluations. Score filtering commutes with per-class greedy
NMS (a lower score never affects a higher one), so the second stage only filters the cached
post-processed sets. The defaults (score 0, mask 0.5, NMS off) are always the first trial and
are replaced only by a strictly better score, so tuning never scores below them in-sample.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from cellseg.instances import InstanceSet
from cellseg.metrics import DEFAULT_EVALUATOR, GroundTruth, metric_value, prepare_ground_truth
from cellseg.postprocess import apply_thresholds, score_floor

DEFAULTS = {"score_threshold": 0.0, "mask_threshold": 0.5, "nms_threshold": 1.0}


def tune_thresholds(
    labels_list: list[np.ndarray],
    preds: list[InstanceSet],
    class_names: list[str],
    search: dict,
    metric: str = "AP",
    max_dets: int = 1000,
    evaluator: str = DEFAULT_EVALUATOR,
) -> tuple[dict, pd.DataFrame]:
    """Best thresholds for `metric` (`AP`, `AP50`, `sartorius`, `F1`) and every trial.

    search: {score_thresholds: [...], mask_thresholds: [...], nms_thresholds: [...]}.
    Returns best = {score_thresholds: {class id (1-based): float}, mask_threshold,
    nms_threshold, metric, score} and trials (one row per evaluation: stage, class,
    score_threshold, mask_threshold, nms_threshold, score).
    """
    gt = prepare_ground_truth(labels_list, class_names)
    score = _scorer(gt, metric, max_dets, evaluator)
    masks = _with_default(search["mask_thresholds"], DEFAULTS["mask_threshold"])
    nms = _with_default(search["nms_thresholds"], DEFAULTS["nms_threshold"])
    scores = _with_default(search["score_thresholds"], DEFAULTS["score_threshold"])[1:]

    trials, best_key, best_sets = [], None, None
    for mask_threshold, nms_threshold in [(m, n) for m in masks for n in nms]:
        processed = [apply_thresholds(p, 0.0, mask_threshold, nms_threshold) for p in preds]
        value = score(processed)
        trials.append(("grid", "all", 0.0, mask_threshold, nms_threshold, value))
        if best_key is None or _better(value, trials[best_key][-1]):
            best_key, best_sets = len(trials) - 1, processed
    _, _, _, mask_threshold, nms_threshold, best_value = trials[best_key]

    thresholds = {k + 1: 0.0 for k in range(len(class_names))}
    for class_id, name in zip(thresholds, class_names):
        for candidate in scores:
            trial = {**thresholds, class_id: candidate}
            value = score([p.select(p.scores >= score_floor(p.classes, trial)) for p in best_sets])
            trials.append(("score", name, candidate, mask_threshold, nms_threshold, value))
            if _better(value, best_value):
                thresholds, best_value = trial, value

    best = {
        "score_thresholds": thresholds,
        "mask_threshold": mask_threshold,
        "nms_threshold": nms_threshold,
        "metric": metric,
        "score": best_value,
    }
    columns = ["stage", "class", "score_threshold", "mask_threshold", "nms_threshold", "score"]
    return best, pd.DataFrame(trials, columns=columns)


def score_with(
    labels_list: list[np.ndarray],
    preds: list[InstanceSet],
    class_names: list[str],
    best: dict,
    metric: str = "AP",
    max_dets: int = 1000,
    evaluator: str = DEFAULT_EVALUATOR,
) -> float:
    """`metric` of `preds` after applying the thresholds in `best` (as `tune_thresholds` returns)."""
    processed = [
        apply_thresholds(p, best["score_thresholds"], best["mask_threshold"], best["nms_threshold"]) for p in preds
    ]
    gt = prepare_ground_truth(labels_list, class_names)
    return _scorer(gt, metric, max_dets, evaluator)(processed)


def cross_check(
    labels_list: list[np.ndarray],
    preds: list[InstanceSet],
    class_names: list[str],
    search: dict,
    metric: str = "AP",
    max_dets: int = 1000,
    evaluator: str = DEFAULT_EVALUATOR,
) -> dict:
    """How much of the tuned score is overfitting: tune on half A (even positions), score half B
    (odd positions) and swap. Returns `held_out` (mean of the two held-out scores, to set next
    to the in-sample `best["score"]`), `held_out_a`/`held_out_b` (score of a half with the
    thresholds tuned on the other), `tuned_a`/`tuned_b` (in-sample score of each half). A half
    of one image is tuned and scored like any other; with fewer than 2 images all are NaN.
    """
    halves = {"a": np.arange(0, len(preds), 2), "b": np.arange(1, len(preds), 2)}
    report = dict.fromkeys(["held_out", "held_out_a", "held_out_b", "tuned_a", "tuned_b"], float("nan"))
    if len(preds) < 2:
        return report
    options = {"metric": metric, "max_dets": max_dets, "evaluator": evaluator}
    for tuned, held_out in [("a", "b"), ("b", "a")]:
        labels_t, preds_t = [labels_list[i] for i in halves[tuned]], [preds[i] for i in halves[tuned]]
        labels_h, preds_h = [labels_list[i] for i in halves[held_out]], [preds[i] for i in halves[held_out]]
        best, _ = tune_thresholds(labels_t, preds_t, class_names, search, **options)
        report[f"tuned_{tuned}"] = best["score"]
        report[f"held_out_{held_out}"] = score_with(labels_h, preds_h, class_names, best, **options)
    report["held_out"] = (report["held_out_a"] + report["held_out_b"]) / 2
    return report


def _scorer(gt: GroundTruth, metric: str, max_dets: int, evaluator: str):
    """Metric of post-processed (already binarised) instance sets."""
    return lambda processed: metric_value(gt, processed, metric, 0.5, max_dets, evaluator)


def _with_default(values: list[float], default: float) -> list[float]:
    """Sorted unique candidates with the default first, so ties keep the default."""
    return [default] + sorted({float(v) for v in values} - {default})


def _better(value: float, best: float) -> bool:
    """Strictly better; NaN (metric undefined) never wins, anything beats a NaN best."""
    return bool(np.isfinite(value) and (not np.isfinite(best) or value > best))
