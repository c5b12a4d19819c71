"""The validation scoreboard: each fold alone, the ensemble, and the ensemble after tuning.

One table, so the user sees what ensembling and threshold tuning bought. Raw predictions are
scored with the default thresholds (every detection, masks at 0.5, no NMS); the tuned row
applies the thresholds the tune stage chose on the same images (its cross-check column says
how much of that gain survives on images the thresholds were not tuned on).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from cellseg.instances import InstanceSet, StoredSets
from cellseg.metrics import GroundTruth, SetScorer, binarise, iter_truth
from cellseg.postprocess import apply_thresholds

# The scoreboard's two tables: classes as they are, or every class merged into one.
KINDS = ("per_class", "agnostic")


def read_thresholds(path: str | Path) -> dict:
    """The tune stage's JSON, with per-class score and mask thresholds keyed by int class id
    again (JSON keys are strings)."""
    thresholds = json.loads(Path(path).read_text())
    for key in ("score_thresholds", "mask_thresholds"):
        thresholds[key] = {int(k): float(v) for k, v in thresholds[key].items()}
    return thresholds


def load_predictions(
    fold_folders: dict[int, str | Path], ensemble_folder: str | Path, names: list[str]
) -> tuple[dict[int, StoredSets], StoredSets]:
    """Each fold's and the ensemble's predictions of the images `names`, as `scoreboard` takes
    them. `fold_folders`: `{fold: its predict folder}`."""
    folds = {fold: StoredSets(folder, names) for fold, folder in fold_folders.items()}
    return folds, StoredSets(ensemble_folder, names)


def tuned(instances: InstanceSet, thresholds: dict) -> InstanceSet:
    """One image's predictions after the tuned per-class score and mask thresholds and the NMS
    threshold (masks binarised)."""
    return apply_thresholds(
        instances, thresholds["score_thresholds"], thresholds["mask_thresholds"], thresholds["nms_threshold"]
    )


def apply_tuned(preds: Iterable[InstanceSet], thresholds: dict) -> list[InstanceSet]:
    """`tuned` of every image's predictions."""
    return [tuned(p, thresholds) for p in preds]


@dataclass(frozen=True)
class Scoreboard:
    """What `scoreboard` scores. tables, curves: per kind (`KINDS`) the scores table (one row
    per model) and the tuned ensemble's PR curve. per_image: the tuned ensemble's Sartorius
    score and instance counts per image, in the images' order (`SetScorer.per_image`), for
    picking the best and worst images."""

    tables: dict[str, pd.DataFrame]
    curves: dict[str, pd.DataFrame]
    per_image: pd.DataFrame


def scoreboard(
    labels_list: Iterable[np.ndarray] | GroundTruth,
    fold_preds: dict[int, Iterable[InstanceSet]],
    ensemble_preds: Iterable[InstanceSet],
    thresholds: dict,
    class_names: list[str],
    max_dets: int,
    evaluator: str,
    kinds: tuple[str, ...] = ("per_class",),
) -> Scoreboard:
    """Scores of each fold, the ensemble and the tuned ensemble, per kind (`per_class`,
    `agnostic`: every class merged into one on both sides, no per-class columns, so the
    labels' classes need not be the model's). A table has one row per model: `model`,
    `thresholds`, then the columns of `cellseg.metrics.evaluate_predictions` (COCO AP keys incl.
    `AP50@100` and per class `AP50@100_<name>`, `sartorius`, F1, `PQ`/`SQ`/`DQ`/`PQ_<name>`,
    `AJI`/`AJI_<name>`).

    One pass over the images scores every model and kind: each image's ground truth is encoded
    once, and each model's predictions of it are binarised, scored and dropped, so that
    (with the `streaming` evaluator) the job holds no image's masks but the current one's.
    labels_list: (C, H, W) ground truth per image, in the predictions' order (a generator is
    read once), or their `GroundTruth`; `class_names` are its C classes. fold_preds,
    ensemble_preds: per image `InstanceSet`s, lists or `StoredSets` (the ensemble's are
    iterated twice at once: raw and tuned). thresholds: the tune stage's choice
    (`score_thresholds` and `mask_thresholds` by 1-based class id, `nms_threshold`).
    """
    unknown = set(kinds) - set(KINDS)
    if unknown or not kinds:
        raise ValueError(f"unknown scoreboard kinds {sorted(unknown) or kinds}; choose from {KINDS}")
    models = [(f"fold {k}", "default", preds) for k, preds in sorted(fold_preds.items())]
    models += [("ensemble", "default", ensemble_preds)]
    models += [("ensemble", "tuned", (tuned(p, thresholds) for p in ensemble_preds))]
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
            metrics, curves[kind] = by_kind[kind].result()  # the last curve: the tuned ensemble's
            rows.append({"model": model, "thresholds": thresholds_used, **metrics})
        tables[kind] = pd.DataFrame(rows)
    return Scoreboard(tables, curves, scorers[-1][kinds[0]].per_image())
