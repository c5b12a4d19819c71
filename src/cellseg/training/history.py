"""What a training run writes for its user: the per-epoch table, the curve, the summary.

Progress lines come from `cellseg.common.progress`. The table, curve and summary are written
atomically; the curve uses matplotlib's Agg canvas directly, so no display or global backend
is involved.
"""

from __future__ import annotations

import json
import os

import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from cellseg.common.files import atomic_path

VAL_KEYS = ("AP", "AP50", "AP75")


def write_history(path: str | os.PathLike, rows: list[dict]) -> pd.DataFrame:
    """The per-epoch table as CSV: `epoch` (1-based), `step` (optimizer steps so far), `loss`
    and each `loss_*` component (epoch means), `lr`, `val_AP`, `val_AP50`, `val_AP75` (empty
    when not validated that epoch), `images_per_s` (training only), `peak_gpu_mem_mb` (empty
    on CPU).
    """
    table = pd.DataFrame(rows)
    with atomic_path(path) as tmp:
        table.to_csv(tmp, index=False)
    return table


def plot_curve(path: str | os.PathLike, rows: list[dict]) -> None:
    """Training losses (left) and validation AP / AP50 / AP75 (right) against epoch, as PNG."""
    table = pd.DataFrame(rows)
    figure = Figure(figsize=(10, 4), layout="constrained")
    FigureCanvasAgg(figure)
    losses, scores = figure.subplots(1, 2)
    epochs = table["epoch"] if len(table) else []
    for column in [c for c in table.columns if c == "loss" or c.startswith("loss_")]:
        losses.plot(epochs, table[column], marker=".", label=column, linewidth=2 if column == "loss" else 1)
    losses.set(xlabel="epoch", ylabel="mean training loss", title="training loss")
    for key in VAL_KEYS:
        column = f"val_{key}"
        if column in table and table[column].notna().any():
            validated = table[table[column].notna()]
            scores.plot(validated["epoch"], validated[column], marker="o", label=key)
    scores.set(xlabel="epoch", ylabel="mask AP", title="validation (held-out images)", ylim=(0, 1))
    for axes in (losses, scores):
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        if axes.get_legend_handles_labels()[0]:
            axes.legend(fontsize="small")
        axes.grid(alpha=0.3)
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=100)


def write_summary(path: str | os.PathLike, summary: dict) -> None:
    """`train_summary.json`: the run's facts (weights, device, steps, timing, best epoch), indented."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(summary, indent=2, default=str) + "\n")
