"""Figures for the Snakemake report: prediction overlays, per-class AP, PR curve, score table.

Overlays show ground truth and prediction side by side at the image's own resolution (one
figure pixel per image pixel, or an integer multiple for small images) so single cell contours
stay readable, with the title and legend in bands of their own; charts have a fixed size
(`CHART_SIZE` inches at `DPI`).
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402
from scipy import ndimage  # noqa: E402

from cellseg.common.instances import InstanceSet, quantised_threshold  # noqa: E402

DPI = 100
CHART_SIZE = (6.0, 4.0)
MIN_OVERLAY_SIDE, MAX_OVERLAY_SIDE = 256, 1024
HEADER_PX, MARGIN_PX, LEGEND_ROW_PX, LEGEND_ENTRY_PX = 48, 10, 22, 110
FONT_SIZE = 10
NOTE_LINE_INCHES, NOTE_LINE_CHARS = 0.18, 140
CLASS_COLOURS = plt.get_cmap("tab10").colors
# The scoreboard's columns shown in the score table, before the per-class AP50@100 and PQ.
SUMMARY_METRICS = ("AP", "AP50@100", "PQ", "SQ", "DQ", "bPQ", "mPQ", "AJI", "F1", "sartorius", "count_ratio")


def plot_overlay(
    image: np.ndarray,
    labels: np.ndarray,
    instances: InstanceSet,
    class_names: list[str],
    path: str | Path,
    mask_threshold: float = 0.5,
    title: str = "",
) -> None:
    """Ground truth (labels (C, H, W), 0 = background) and predicted instances side by side on
    the image (H, W, 3) uint8, as contours in their class's colour; title above and legend
    below the panels, never over them. Small images are enlarged by `overlay_zoom`."""
    zoom = overlay_zoom(image.shape[:2])
    base = (image.astype(np.float32) / 255).repeat(zoom, axis=0).repeat(zoom, axis=1)
    truth, predicted = base.copy(), base.copy()
    for c, plane in enumerate(labels):
        _draw(truth, _zoomed(plane, zoom), _colour(c + 1), zoom)
    level = quantised_threshold(mask_threshold)
    for (x0, y0, x1, y1), probs, class_id in zip(instances.windows, instances.probs, instances.classes):
        window = predicted[y0 * zoom : y1 * zoom, x0 * zoom : x1 * zoom]
        _draw(window, _zoomed((probs >= level).astype(np.int32), zoom), _colour(class_id), zoom)
    _panels_figure([(truth, "ground truth"), (predicted, "prediction")], class_names, title, path)


def overlay_zoom(shape: tuple[int, int]) -> int:
    """Integer enlargement of an (H, W) image: its short side to at least `MIN_OVERLAY_SIDE` px,
    its long side to at most `MAX_OVERLAY_SIDE` px (the long side wins); 1 for large images."""
    wanted = -(-MIN_OVERLAY_SIDE // min(shape))
    return max(1, min(wanted, MAX_OVERLAY_SIDE // max(shape)))


def _panels_figure(panels: list[tuple[np.ndarray, str]], class_names: list[str], title: str, path) -> None:
    """Images (h, w, 3) float side by side at one figure pixel per image pixel, with a header
    band (title, panel names) and a footer band (the class legend) of their own."""
    height, width = panels[0][0].shape[:2]
    columns = max(1, min(len(class_names), (len(panels) * width) // LEGEND_ENTRY_PX))
    footer = LEGEND_ROW_PX * -(-len(class_names) // columns) + MARGIN_PX
    fig_w = len(panels) * width + (len(panels) + 1) * MARGIN_PX
    fig_h = HEADER_PX + height + footer
    fig = plt.figure(figsize=(fig_w / DPI, fig_h / DPI), dpi=DPI)
    for k, (pixels, name) in enumerate(panels):
        left = MARGIN_PX + k * (width + MARGIN_PX)
        ax = fig.add_axes((left / fig_w, footer / fig_h, width / fig_w, height / fig_h))
        ax.imshow(pixels, interpolation="nearest")
        ax.set_axis_off()
        ax.set_title(name, fontsize=FONT_SIZE, pad=4)
    if title:
        fig.suptitle(title, y=1 - 4 / fig_h, va="top", fontsize=FONT_SIZE + 1, wrap=True)
    handles = [Patch(color=_colour(k + 1), label=name) for k, name in enumerate(class_names)]
    fig.legend(handles=handles, loc="lower center", ncol=columns, fontsize=FONT_SIZE, frameon=False)
    _save(fig, path)


def _zoomed(labels: np.ndarray, zoom: int) -> np.ndarray:
    return labels.repeat(zoom, axis=0).repeat(zoom, axis=1)


def _draw(canvas: np.ndarray, labels: np.ndarray, colour, zoom: int) -> None:
    """Paint the contours of `labels` (h, w) int onto `canvas` (h, w, 3) in place, a little
    thicker on enlarged images so that they stay visible."""
    edges = _label_edges(labels)
    if zoom >= 3:
        edges = ndimage.binary_dilation(edges, iterations=zoom // 3) & (labels > 0)
    canvas[edges] = colour


def _colour(class_id: int):
    return CLASS_COLOURS[(class_id - 1) % len(CLASS_COLOURS)]


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
    """Precision against recall (`cellseg.scoring.metrics.pr_curve` columns), IoU 0.5 and 0.5:0.95."""
    fig, ax = plt.subplots(figsize=CHART_SIZE, dpi=DPI)
    ax.plot(curve["recall"], curve["precision_iou50"], label="IoU 0.50")
    ax.plot(curve["recall"], curve["precision_iou50_95"], label="IoU 0.50:0.95 (mean)")
    ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02))
    ax.legend()
    _save(fig, path)


def plot_table(table: pd.DataFrame, path: str | Path, digits: int = 3, notes: list[str] = ()) -> None:
    """A table figure of `table` (numbers rounded to `digits`), e.g. the evaluation metrics,
    with `notes` (warnings the reader must see) in red below it, wrapped to the width."""
    text = table.map(lambda v: f"{v:.{digits}f}" if isinstance(v, float) else str(v))
    notes = [line for note in notes for line in textwrap.wrap(note, NOTE_LINE_CHARS)]
    notes_height = NOTE_LINE_INCHES * len(notes)
    fig, ax = plt.subplots(figsize=(CHART_SIZE[0], 0.3 * (len(table) + 1) + 0.2 + notes_height), dpi=DPI)
    fig.subplots_adjust(bottom=notes_height / fig.get_figheight())
    for k, note in enumerate(notes):
        fig.text(0.01, (notes_height - NOTE_LINE_INCHES * (k + 0.7)) / fig.get_figheight(), note,
                 color="firebrick", fontsize=6)
    ax.set_axis_off()
    shown = ax.table(cellText=text.values, colLabels=list(table.columns), loc="center")
    shown.auto_set_font_size(False)
    shown.set_fontsize(8)
    shown.auto_set_column_width(range(len(table.columns)))  # long names stay inside their cells
    _save(fig, path)


def plot_scores_table(scores: pd.DataFrame, class_names: list[str], path: str | Path, notes: list[str] = ()) -> None:
    """The scoreboard (`cellseg.scoring.scoreboard.scoreboard`'s table) as a table figure: one row per
    metric (`SUMMARY_METRICS`, then per class `AP50@100_<name>` and `PQ_<name>`), one column
    per model (a row at an operating point named `<model> <point>`); `notes` below it (see
    `training_warnings`)."""
    metrics = [*SUMMARY_METRICS, *(f"AP50@100_{n}" for n in class_names), *(f"PQ_{n}" for n in class_names)]
    table = scores[metrics].T.reset_index(drop=True)
    table.columns = [m if t == "default" else f"{m} {t}" for m, t in zip(scores["model"], scores["thresholds"])]
    table.insert(0, "metric", metrics)
    plot_table(table, path, notes=notes)


def training_warnings(summaries: dict[int, dict]) -> list[str]:
    """`fold k: <warning>` for every warning in the folds' `train_summary.json` (`{fold: summary}`),
    so that scores of a model trained too briefly are not read as if it had trained."""
    return [f"fold {fold}: {warning}" for fold, summary in sorted(summaries.items()) for warning in summary.get("warnings", [])]


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
