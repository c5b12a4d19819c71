"""What a training run tells its user: progress lines, the per-epoch table, the curve, the summary.

The job's log is a file, so progress is a line every few steps (step/total, loss, it/s, ETA)
rather than a terminal bar. The table, curve and summary are written atomically; the curve
uses matplotlib's Agg canvas directly, so no display or global backend is involved.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time

import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from cellseg.io import atomic_path

VAL_KEYS = ("AP", "AP50", "AP75")


class Progress:
    """Logs `step/total loss it/s ETA` every `every` optimizer steps, timed from this run's start."""

    def __init__(self, log: logging.Logger, total: int, start_step: int, every: int):
        self.log, self.total, self.start_step, self.every = log, total, start_step, max(1, every)
        self.started = time.perf_counter()

    def update(self, step: int, loss: float, lr: float) -> None:
        if step % self.every and step != self.total:
            return
        done = step - self.start_step
        rate = done / max(time.perf_counter() - self.started, 1e-9)
        eta = (self.total - step) / rate if rate > 0 else math.inf
        self.log.info(
            "step %d/%d  loss %.4f  lr %.3g  %.2f it/s  ETA %s", step, self.total, loss, lr, rate, _duration(eta)
        )


def _duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"


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
