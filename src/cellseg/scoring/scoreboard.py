"""The validation scoreboard: each fold alone, the ensemble, and the ensemble at each tuned
operating point.

One table, so the user sees what ensembling and threshold tuning bought. Raw predictions are
scored with the default thresholds (every detection, masks at 0.5, no NMS); the `leaderboard`
row applies the thresholds tuned for the ranking metric (the COCO submission's), the `cells`
row those tuned for counting cells (segment's, the label images', the Kaggle CSV's), both
chosen by the tune stage on the same images (their cross-checks say how much of that gain
survives on images the thresholds were not tuned on).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd

from cellseg.common.instances import InstanceSet, StoredSets
from cellseg.inference.operating_points import POINTS, apply_point
from cellseg.scoring.coco_format import binarise
from cellseg.scoring.metrics import SetScorer
from cellseg.scoring.truth import GroundTruth, iter_truth

# The scoreboard's two tables: classes as they are, or every class merged into one.
KINDS = ("per_class", "agnostic")


def load_predictions(
    fold_folders: dict[int, str | Path], ensemble_folder: str | Path, names: list[str]
) -> tuple[dict[int, StoredSets], StoredSets]:
    """Each fold's and the ensemble's predictions of the images `names`, as `scoreboard` takes
    them. `fold_folders`: `{fold: its predict folder}`."""
    folds = {fold: StoredSets(folder, names) for fold, folder in fold_folders.items()}
    return folds, StoredSets(ensemble_folder, names)


@dataclass(frozen=True)
class Scoreboard:
    """What `scoreboard` scores. tables: per kind (`KINDS`) the scores table (one row per
    model). curves: per kind the PR curve at the leaderboard point. per_image: at the cells
    point, per image its Sartorius score and instance counts, in the images' order
    (`SetScorer.per_image`), for picking the best and worst images."""

    tables: dict[str, pd.DataFrame]
    curves: dict[str, pd.DataFrame]
    per_image: pd.DataFrame


def scoreboard(
    labels_list: Iterable[np.ndarray] | GroundTruth,
    fold_preds: dict[int, Iterable[InstanceSet]],
    ensemble_preds: Iterable[InstanceSet],
    points: dict[str, dict],
    class_names: list[str],
    max_dets: int,
    evaluator: str,
    kinds: tuple[str, ...] = ("per_class",),
) -> Scoreboard:
    """Scores of each fold, the ensemble and the ensemble at each operating point, per kind
    (`per_class`, `agnostic`: every class merged into one on both sides, no per-class
    columns, so the labels' classes need not be the model's). A table has one row per model:
    `model`, `thresholds` (default, leaderboard, cells), then the columns of
    `cellseg.scoring.metrics.evaluate_predictions`.

    One pass over the images scores every model and kind: each image's ground truth is encoded
    once, and each model's predictions of it are binarised, scored and dropped, so that
    (with the `streaming` evaluator) the job holds no image's masks but the current one's.
    labels_list: (C, H, W) ground truth per image, in the predictions' order (a generator is
    read once), or their `GroundTruth`; `class_names` are its C classes. fold_preds,
    ensemble_preds: per image `InstanceSet`s, lists or `StoredSets` (the ensemble's are
    iterated three times at once: raw and at each point). points: `read_thresholds`' result.
    """
    unknown = set(kinds) - set(KINDS)
    if unknown or not kinds:
        raise ValueError(f"unknown scoreboard kinds {sorted(unknown) or kinds}; choose from {KINDS}")
    models = [(f"fold {k}", "default", preds) for k, preds in sorted(fold_preds.items())]
    models += [("ensemble", "default", ensemble_preds)]
    models += [("ensemble", name, map(partial(apply_point, point=points[name]), ensemble_preds)) for name in POINTS]
    scorers = [
        {kind: SetScorer(class_names, max_dets, evaluator, class_agnostic=kind == "agnostic") for kind in kinds}
        for _ in models
    ]
    for truth, *image_preds in zip(iter_truth(labels_list), *(preds for *_, preds in models), strict=True):
        for by_kind, instances in zip(scorers, image_preds):
            found = binarise(instances, 0.5)  # one encoding for every kind
            for scorer in by_kind.values():
                scorer.add_image(truth, found)
    tables, curves = {}, {}
    for kind in kinds:
        rows = []
        for (model, thresholds_used, _), by_kind in zip(models, scorers):
            metrics, curve = by_kind[kind].result()
            if thresholds_used == "leaderboard":
                curves[kind] = curve
            rows.append({"model": model, "thresholds": thresholds_used, **metrics})
        tables[kind] = pd.DataFrame(rows)
    return Scoreboard(tables, curves, scorers[-1][kinds[0]].per_image())
