"""The validation scoreboard: each fold alone, the ensemble, and the ensemble after tuning.

One table, so the user sees what ensembling and threshold tuning bought. Raw predictions are
scored with the default thresholds (every detection, masks at 0.5, no NMS); the tuned row
applies the thresholds the tune stage chose on the same images (its cross-check column says
how much of that gain survives on images the thresholds were not tuned on).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from cellseg.instances import InstanceSet, load_instance_sets
from cellseg.metrics import GroundTruth, as_ground_truth, evaluate_predictions, sartorius_per_image
from cellseg.postprocess import apply_thresholds


def read_thresholds(path: str | Path) -> dict:
    """The tune stage's JSON, with per-class score and mask thresholds keyed by int class id
    again (JSON keys are strings)."""
    thresholds = json.loads(Path(path).read_text())
    for key in ("score_thresholds", "mask_thresholds"):
        thresholds[key] = {int(k): float(v) for k, v in thresholds[key].items()}
    return thresholds


def load_predictions(
    fold_folders: dict[int, str | Path], ensemble_folder: str | Path, names: list[str]
) -> tuple[dict[int, list[InstanceSet]], list[InstanceSet]]:
    """Each fold's and the ensemble's `InstanceSet`s of the images `names`, in that order, as
    `scoreboard` takes them. `fold_folders`: `{fold: its predict folder}`."""
    folds = {fold: list(load_instance_sets(folder, names).values()) for fold, folder in fold_folders.items()}
    return folds, list(load_instance_sets(ensemble_folder, names).values())


def apply_tuned(preds: list[InstanceSet], thresholds: dict) -> list[InstanceSet]:
    """Predictions after the tuned per-class score and mask thresholds and the NMS threshold
    (masks binarised)."""
    return [
        apply_thresholds(
            p,
            thresholds["score_thresholds"],
            thresholds["mask_thresholds"],
            thresholds["nms_threshold"],
        )
        for p in preds
    ]


def scoreboard(
    labels_list: list[np.ndarray] | GroundTruth,
    fold_preds: dict[int, list[InstanceSet]],
    ensemble_preds: list[InstanceSet],
    thresholds: dict,
    class_names: list[str],
    max_dets: int,
    evaluator: str,
    class_agnostic: bool = False,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Scores table (one row per model: `model`, `thresholds`, then the columns of
    `cellseg.metrics.evaluate_predictions`: COCO AP keys incl. `AP50@100` and per class
    `AP50@100_<name>`, `sartorius`, F1, `PQ`/`SQ`/`DQ`/`PQ_<name>`, `AJI`/`AJI_<name>`) and the
    tuned ensemble's PR curve.

    labels_list: (C, H, W) ground truth per image, in the predictions' order, or their
    `GroundTruth` (`prepare_ground_truth`, which reads them one at a time); `class_names` are
    its C classes. thresholds: the tune stage's choice (`score_thresholds` and
    `mask_thresholds` by 1-based class id, `nms_threshold`). class_agnostic: every class
    merged into one on both sides, no per-class columns; the labels' classes then need not
    be the model's.
    """
    rows, curves = [], []
    gt = as_ground_truth(labels_list, class_names)  # converted once for every model
    tuned = apply_tuned(ensemble_preds, thresholds)
    models = [(f"fold {k}", "default", preds) for k, preds in sorted(fold_preds.items())]
    models += [("ensemble", "default", ensemble_preds), ("ensemble", "tuned", tuned)]
    for model, thresholds_used, preds in models:
        metrics, curve = evaluate_predictions(
            gt, preds, class_names, max_dets=max_dets, evaluator=evaluator, class_agnostic=class_agnostic
        )
        rows.append({"model": model, "thresholds": thresholds_used, **metrics})
        curves.append(curve)
    return pd.DataFrame(rows), curves[-1]  # the last model is the tuned ensemble


def per_image_scores(
    image_ids: list[str], labels_list: list[np.ndarray] | GroundTruth, preds: list[InstanceSet], class_names
) -> pd.DataFrame:
    """Sartorius score and instance counts per image, for picking the best and worst images;
    `labels_list` as `scoreboard` takes it."""
    gt = as_ground_truth(labels_list, class_names)
    return pd.DataFrame(
        {
            "image_id": image_ids,
            "sartorius": sartorius_per_image(gt, preds),
            "n_true": [len(classes) for classes in gt.classes],
            "n_predicted": [len(p) for p in preds],
        }
    )
