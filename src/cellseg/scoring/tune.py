"""Threshold search on the validation set, for each operating point (`cellseg.inference.operating_points`).

`leaderboard`: per-class score and mask thresholds and per-class mask NMS. The search is
bounded: a grid over one mask threshold for all classes x NMS thresholds with
all scores kept; then, at the best grid point, one coordinate pass over each class's mask
threshold, then one over each class's score threshold, i.e. |mask| x |nms| + C x (|mask| - 1)
+ C x (|score| - 1) evaluations. Score filtering commutes with per-class greedy NMS (a lower
score never affects a higher one), so the score pass only filters the cached post-processed
sets. The defaults (score 0, mask 0.5, NMS off) are always the first trial and are replaced
only by a strictly better score, so tuning never scores below them in-sample.

Every trial reads the predictions and the ground truth in one pass, image by image, and writes
its post-processed sets to a `Spool` on disk (the best trial's is kept for the score stage), so
that with predictions read from disk (`StoredSets`) and spooled ground truth
(`spool_ground_truth`) the search holds one image at a time, whatever the number of images.

`cells`: per-class score and mask thresholds and the NMS threshold across classes, for a
metric that counts every false positive (PQ, F1, ...). Score filtering no longer commutes with
the post-processing (a dropped cell frees the pixels and the candidates it suppressed), so
every trial post-processes the images anew: a grid over one score threshold for all classes x
NMS thresholds (masks at 0.5), then one coordinate pass over each class's mask threshold, then
one over each class's score threshold: |score| x |nms| + C x (|mask| - 1) + C x (|score| - 1)
evaluations, each streamed image by image.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from cellseg.common.instances import InstanceSet, StoredSets
from cellseg.common.spool import Spool
from cellseg.inference.operating_points import POINTS, apply_cells, apply_point, apply_thresholds, per_instance
from cellseg.scoring.coco_format import Binarised, binarise
from cellseg.scoring.metrics import DEFAULT_EVALUATOR, metric_value
from cellseg.scoring.truth import GroundTruth, as_ground_truth

# What a trial is scored with, unless the caller says otherwise.
SCORING = {"metric": "AP", "max_dets": 1000, "evaluator": DEFAULT_EVALUATOR}
DEFAULTS = {"score_threshold": 0.0, "mask_threshold": 0.5, "nms_threshold": 1.0}
TRIAL_COLUMNS = ["stage", "class", "score_threshold", "mask_threshold", "nms_threshold", "score"]


def tune_thresholds(
    labels_list: list[np.ndarray] | GroundTruth,
    preds: Sequence[InstanceSet],
    class_names: list[str],
    search: dict,
    point: str = "leaderboard",
    **scoring,
) -> tuple[dict, pd.DataFrame]:
    """Best thresholds of an operating point (`POINTS`) for `metric` (one of
    `cellseg.scoring.metrics.METRICS`) and every trial. `scoring`: `metric`, `max_dets` and
    `evaluator`, by default `SCORING`.

    search: {score_thresholds: [...], mask_thresholds: [...], nms_thresholds: [...]} (for
    `cells`, NMS across classes). Returns best = {point, score_thresholds: {class id (1-based):
    float}, mask_thresholds: {class id: float}, nms_threshold, metric, score} and trials (one
    row per evaluation: stage (grid, mask or score), class (a name, or `all` in the grid),
    score_threshold, mask_threshold (the class's, or all classes' in the grid), nms_threshold,
    score). labels_list: per image a (C, H, W) label stack, or their `GroundTruth`
    (`prepare_ground_truth`, or `spool_ground_truth` to keep it on disk), in `preds`' order.
    preds: a list, or `StoredSets` (read from disk on every pass).
    """
    if point not in POINTS:
        raise ValueError(f"unknown operating point {point!r}; choose one of {POINTS}")
    gt = as_ground_truth(labels_list, class_names)
    scoring = {**SCORING, **scoring}
    if point == "cells":
        return _tune_cells(gt, preds, class_names, search, scoring)
    score = _scorer(gt, **scoring)
    trials = []
    with tempfile.TemporaryDirectory(prefix="cellseg_tune_") as spool_dir:

        def spool(masks: dict[int, float] | float, nms_threshold: float) -> Spool:
            """Every image post-processed with one trial's thresholds, in a spool on disk."""
            return Spool(_post_processed(preds, 0.0, masks, nms_threshold), spool_dir)

        mask_threshold, nms_threshold, value, processed = _grid_stage(spool, search, score, trials)
        grid_best = _Best({k + 1: mask_threshold for k in range(len(class_names))}, value, processed)
        candidates = _with_default(search["mask_thresholds"], DEFAULTS["mask_threshold"])
        run = _Pass(class_names, nms_threshold, score, trials)
        masks_best = _mask_stage(spool, candidates, grid_best, run)
        candidates = _with_default(search["score_thresholds"], DEFAULTS["score_threshold"])[1:]
        thresholds, value = _score_stage(candidates, masks_best, run)
    best = {
        "point": "leaderboard",
        "score_thresholds": thresholds,
        "mask_thresholds": masks_best.masks,
        "nms_threshold": nms_threshold,
        "metric": scoring["metric"],
        "score": value,
    }
    return best, pd.DataFrame(trials, columns=TRIAL_COLUMNS)


def _tune_cells(
    gt: GroundTruth, preds: Sequence[InstanceSet], class_names: list[str], search: dict, scoring: dict,
) -> tuple[dict, pd.DataFrame]:  # fmt: skip
    """The `cells` point's search (module doc); arguments and result as `tune_thresholds`."""
    score = _scorer(gt, **scoring)
    n_classes, ids = len(class_names), list(range(1, len(class_names) + 1))
    trials, best = [], None

    def trial(stage: str, name: str, scores: dict, masks: dict, nms: float, shown: tuple[float, float]) -> None:
        nonlocal best
        value = score(binarise(apply_cells(p, scores, masks, nms, n_classes), 0.5) for p in preds)
        trials.append((stage, name, *shown, nms, value))
        if best is None or _better(value, best[3]):
            best = (scores, masks, nms, value)

    default_mask = DEFAULTS["mask_threshold"]
    for score_threshold in sorted(set(search["score_thresholds"])):
        for nms in sorted(set(search["nms_thresholds"])):
            uniform = dict.fromkeys(ids, float(score_threshold))
            trial("grid", "all", uniform, dict.fromkeys(ids, default_mask), nms, (score_threshold, default_mask))
    for class_id, name in zip(ids, class_names):
        scores, masks, nms, _ = best
        for candidate in [c for c in _with_default(search["mask_thresholds"], default_mask) if c != masks[class_id]]:
            trial("mask", name, scores, {**masks, class_id: candidate}, nms, (scores[class_id], candidate))
    for class_id, name in zip(ids, class_names):
        scores, masks, nms, _ = best
        for candidate in [float(c) for c in sorted(set(search["score_thresholds"])) if c != scores[class_id]]:
            trial("score", name, {**scores, class_id: candidate}, masks, nms, (candidate, masks[class_id]))
    scores, masks, nms, value = best
    best = {"point": "cells", "score_thresholds": scores, "mask_thresholds": masks, "nms_threshold": nms,
            "metric": scoring["metric"], "score": value}  # fmt: skip
    return best, pd.DataFrame(trials, columns=TRIAL_COLUMNS)


@dataclass(frozen=True)
class _Best:
    """The best per-class mask thresholds so far ({class id: float}), their score, and the
    post-processed sets (masks binarised, NMS applied, every score kept) they give."""

    masks: dict[int, float]
    value: float
    processed: Spool


def _grid_stage(spool: Callable[..., Spool], search: dict, score: Callable, trials: list) -> tuple[float, float, float, Spool]:
    """Best (mask threshold, NMS threshold, score, post-processed sets) over the grid, one mask
    threshold for all classes and every score kept; the defaults come first. Appends its
    trials; deletes the spools of the trials it does not keep."""
    masks = _with_default(search["mask_thresholds"], DEFAULTS["mask_threshold"])
    nms = _with_default(search["nms_thresholds"], DEFAULTS["nms_threshold"])
    best = None
    for mask_threshold, nms_threshold in [(m, n) for m in masks for n in nms]:
        processed = spool(mask_threshold, nms_threshold)
        value = score(processed)
        trials.append(("grid", "all", 0.0, mask_threshold, nms_threshold, value))
        if best is None or _better(value, best[2]):
            if best is not None:
                best[3].delete()
            best = (mask_threshold, nms_threshold, value, processed)
        else:
            processed.delete()
    return best


@dataclass
class _Pass:
    """What the coordinate passes after the grid share: the classes, the grid's NMS threshold,
    the scorer and the trials table they append to."""

    class_names: list[str]
    nms_threshold: float
    score: Callable
    trials: list


def _mask_stage(spool: Callable[..., Spool], candidates: list[float], best: _Best, run: _Pass) -> _Best:
    """One coordinate pass over each class's mask threshold from `best`; appends its trials;
    deletes the spools of the trials it does not keep."""
    for class_id, name in zip(list(best.masks), run.class_names):
        for candidate in [c for c in candidates if c != best.masks[class_id]]:
            masks = {**best.masks, class_id: candidate}
            processed = spool(masks, run.nms_threshold)
            value = run.score(processed)
            run.trials.append(("mask", name, 0.0, candidate, run.nms_threshold, value))
            if _better(value, best.value):
                best.processed.delete()
                best = _Best(masks, value, processed)
            else:
                processed.delete()
    return best


def _score_stage(candidates: list[float], best: _Best, run: _Pass) -> tuple[dict[int, float], float]:
    """One coordinate pass over each class's score threshold, filtering `best.processed`.
    Returns {class id: score threshold} and its score; appends its trials."""
    thresholds, value = dict.fromkeys(best.masks, DEFAULTS["score_threshold"]), best.value
    for class_id, name in zip(list(thresholds), run.class_names):
        for candidate in candidates:
            trial = {**thresholds, class_id: candidate}
            trial_value = run.score(p.select(p.scores >= per_instance(p.classes, trial, 0.0)) for p in best.processed)
            run.trials.append(("score", name, candidate, best.masks[class_id], run.nms_threshold, trial_value))
            if _better(trial_value, value):
                thresholds, value = trial, trial_value
    return thresholds, value


def score_with(
    labels_list: list[np.ndarray] | GroundTruth, preds: Iterable[InstanceSet], class_names: list[str], best: dict, **scoring
) -> float:
    """The metric (`scoring`, as `tune_thresholds`) of `preds` at the operating point `best`."""
    processed = (binarise(apply_point(p, best), 0.5) for p in preds)
    return _scorer(as_ground_truth(labels_list, class_names), **{**SCORING, **scoring})(processed)


def cross_check(
    labels_list: list[np.ndarray] | GroundTruth, preds: Sequence[InstanceSet], class_names: list[str], search: dict, **options
) -> dict:
    """How much of the tuned score of an operating point is overfitting (`options`: the keywords
    of `tune_thresholds`, the point among them): tune on half A
    (even positions), score half B (odd positions) and swap. Returns `held_out` (mean of the two held-out scores, to set next
    to the in-sample `best["score"]`), `held_out_a`/`held_out_b` (score of a half with the
    thresholds tuned on the other), `tuned_a`/`tuned_b` (in-sample score of each half). A half
    of one image is tuned and scored like any other; with fewer than 2 images all are NaN.
    """
    halves = {"a": np.arange(0, len(preds), 2), "b": np.arange(1, len(preds), 2)}
    report = dict.fromkeys(["held_out", "held_out_a", "held_out_b", "tuned_a", "tuned_b"], float("nan"))
    if len(preds) < 2:
        return report
    scoring = {key: value for key, value in options.items() if key != "point"}
    gt = as_ground_truth(labels_list, class_names)  # converted once, then split
    for tuned, held_out in [("a", "b"), ("b", "a")]:
        labels_t, preds_t = gt.subset(halves[tuned]), _subset(preds, halves[tuned])
        labels_h, preds_h = gt.subset(halves[held_out]), _subset(preds, halves[held_out])
        best, _ = tune_thresholds(labels_t, preds_t, class_names, search, **options)
        report[f"tuned_{tuned}"] = best["score"]
        report[f"held_out_{held_out}"] = score_with(labels_h, preds_h, class_names, best, **scoring)
    report["held_out"] = (report["held_out_a"] + report["held_out_b"]) / 2
    return report


def _post_processed(
    preds: Iterable[InstanceSet], scores: dict[int, float] | float, masks: dict[int, float] | float, nms_threshold: float
) -> Iterator[Binarised]:
    """`apply_thresholds` of each image in turn, as binarised RLEs: a trial's sets cost a few
    bytes per boundary run, and the score stage filters them without encoding the masks again."""
    return (binarise(apply_thresholds(p, scores, masks, nms_threshold), 0.5) for p in preds)


def _subset(preds: Sequence[InstanceSet], index: np.ndarray) -> Sequence[InstanceSet]:
    """The predictions at positions `index`: of `StoredSets` still read from disk."""
    return preds.subset(index) if isinstance(preds, StoredSets) else [preds[i] for i in index]


def _scorer(gt: GroundTruth, *, metric: str, max_dets: int, evaluator: str):
    """Metric of post-processed (already binarised) instance sets."""
    return lambda processed: metric_value(gt, processed, metric, 0.5, max_dets, evaluator)


def _with_default(values: list[float], default: float) -> list[float]:
    """Sorted unique candidates with the default first, so ties keep the default."""
    return [default] + sorted({float(v) for v in values} - {default})


def _better(value: float, best: float) -> bool:
    """Strictly better; NaN (metric undefined) never wins, anything beats a NaN best."""
    return bool(np.isfinite(value) and (not np.isfinite(best) or value > best))
