"""Figures for the Snakemake report: prediction overlays, per-class AP, PR curve, score table.

Overlays are drawn at the image's own resolution (one figure pixel per image pixel, or an
integer multiple for small images) so single cell contours stay readable; charts have a fixed
size (`CHART_SIZE` inches at `DPI`).
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

from cellseg.instances import InstanceSet, quantised_threshold  # noqa: E402

DPI = 100
CHART_SIZE = (6.0, 4.0)
MIN_OVERLAY_SIDE = 256
GT_COLOUR = (1.0, 1.0, 1.0)
CLASS_COLOURS = plt.get_cmap("tab10").colors
# The scoreboard's columns shown in the score table, before the per-class AP50@100 and PQ.
SUMMARY_METRICS = ("AP", "AP50@100", "PQ", "SQ", "DQ", "AJI", "F1", "sartorius")


def plot_overlay(
    image: np.ndarray,
    labels: np.ndarray,
    instances: InstanceSet,
    class_names: list[str],
    path: str | Path,
    mask_threshold: float = 0.5,
    title: str = "",
) -> None:
    """Image (H, W, 3) uint8 with ground-truth contours (labels (C, H, W), 0 = background) in
    white and predicted contours in their class's colour; written as an H x W pixel PNG, or an
    integer multiple of it for images under `MIN_OVERLAY_SIDE` px so that they stay legible."""
    zoom = max(1, -(-MIN_OVERLAY_SIDE // max(image.shape[:2])))
    height, width = image.shape[0] * zoom, image.shape[1] * zoom
    overlay = image.astype(np.float32) / 255
    overlay[np.any([_label_edges(plane) for plane in labels], axis=0)] = GT_COLOUR
    level = quantised_threshold(mask_threshold)
    for (x0, y0, x1, y1), probs, class_id in zip(instances.windows, instances.probs, instances.classes):
        edges = _label_edges((probs >= level).astype(np.int32))
        overlay[y0:y1, x0:x1][edges] = CLASS_COLOURS[(class_id - 1) % len(CLASS_COLOURS)]
    fig = plt.figure(figsize=(width / DPI, height / DPI), dpi=DPI)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.imshow(overlay.repeat(zoom, axis=0).repeat(zoom, axis=1), interpolation="nearest")
    ax.set_axis_off()
    handles = [Patch(color=GT_COLOUR, label="ground truth")] + [
        Patch(color=CLASS_COLOURS[k % len(CLASS_COLOURS)], label=name) for k, name in enumerate(class_names)
    ]
    ax.legend(handles=handles, loc="upper right", fontsize=7, framealpha=0.6, title=title or None, title_fontsize=7)
    _save(fig, path)


def best_and_worst(per_image: pd.Series, count: int) -> tuple[list, list]:
    """Index labels of the `count` highest- and lowest-scoring images (NaN scores skipped),
    best first and worst first; an image is never in both lists."""
    ranked = per_image.dropna().sort_values(ascending=False, kind="stable")
    count = min(count, len(ranked) // 2 + len(ranked) % 2)
    best = list(ranked.index[:count])
    worst = [i for i in ranked.index[::-1][:count] if i not in best]
    return best, worst


def plot_class_ap(metrics: dict, class_names: list[str], path: str | Path) -> None:
    """Bars of per-class mask AP at max_dets (`AP_<name>`) and at 100 (`AP@100_<name>`)."""
    x = np.arange(len(class_names))
    fig, ax = plt.subplots(figsize=CHART_SIZE, dpi=DPI)
    for offset, key, label in [(-0.2, "AP_{}", "AP"), (0.2, "AP@100_{}", "AP @ 100 dets")]:
        ax.bar(x + offset, [metrics[key.format(name)] for name in class_names], width=0.4, label=label)
    ax.set_xticks(x, class_names)
    ax.set_ylim(0, 1)
    ax.set_ylabel("mask AP (IoU 0.50:0.95)")
    ax.axhline(metrics["AP"], color="grey", linestyle="--", linewidth=1, label=f"mean AP {metrics['AP']:.3f}")
    ax.legend(fontsize=8)
    _save(fig, path)


def plot_pr_curve(curve: pd.DataFrame, path: str | Path) -> None:
    """Precision against recall (`cellseg.metrics.pr_curve` columns), IoU 0.5 and 0.5:0.95."""
    fig, ax = plt.subplots(figsize=CHART_SIZE, dpi=DPI)
    ax.plot(curve["recall"], curve["precision_iou50"], label="IoU 0.50")
    ax.plot(curve["recall"], curve["precision_iou50_95"], label="IoU 0.50:0.95 (mean)")
    ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02))
    ax.legend()
    _save(fig, path)


def plot_table(table: pd.DataFrame, path: str | Path, digits: int = 3) -> None:
    """A table figure of `table` (numbers rounded to `digits`), e.g. the evaluation metrics."""
    text = table.map(lambda v: f"{v:.{digits}f}" if isinstance(v, float) else str(v))
    fig, ax = plt.subplots(figsize=(CHART_SIZE[0], 0.3 * (len(table) + 1) + 0.2), dpi=DPI)
    ax.set_axis_off()
    shown = ax.table(cellText=text.values, colLabels=list(table.columns), loc="center")
    shown.auto_set_font_size(False)
    shown.set_fontsize(8)
    shown.auto_set_column_width(range(len(table.columns)))  # long names stay inside their cells
    _save(fig, path)


def plot_scores_table(scores: pd.DataFrame, class_names: list[str], path: str | Path) -> None:
    """The scoreboard (`cellseg.evaluation.scoreboard`'s table) as a table figure: one row per
    metric (`SUMMARY_METRICS`, then per class `AP50@100_<name>` and `PQ_<name>`), one column
    per model (the tuned row named `<model> tuned`)."""
    metrics = [*SUMMARY_METRICS, *(f"AP50@100_{n}" for n in class_names), *(f"PQ_{n}" for n in class_names)]
    table = scores[metrics].T.reset_index(drop=True)
    table.columns = [m if t == "default" else f"{m} {t}" for m, t in zip(scores["model"], scores["thresholds"])]
    table.insert(0, "metric", metrics)
    plot_table(table, path)


def _label_edges(labels: np.ndarray) -> np.ndarray:
    """Bool image of labelled (> 0) pixels with a 4-neighbour of a different label (or the border)."""
    padded = np.pad(labels, 1)
    centre = padded[1:-1, 1:-1]
    differs = (
        (centre != padded[:-2, 1:-1])
        | (centre != padded[2:, 1:-1])
        | (centre != padded[1:-1, :-2])
        | (centre != padded[1:-1, 2:])
    )
    return differs & (centre > 0)


def _save(fig, path: str | Path) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
