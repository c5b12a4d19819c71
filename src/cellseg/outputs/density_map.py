"""A segmented image at a glance, for the cohort: its tissue, how much of it, and where its cells
are dense.

density.png is the tissue copy (`cellseg.data.tissue.low_resolution`) in grey, the cells per mm²
of tissue (per 1000 px² without a pixel size) over it in colour, smoothed over `SMOOTH_UM`, and
the tissue's outline. tissue.json holds the tissue's area for the summary. Both come from
cells.csv, read in chunks, so memory stays flat for a slide's millions of cells.
"""

from __future__ import annotations

import json
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from scipy import ndimage

from cellseg.common.files import atomic_path

SMOOTH_UM = 100.0  # µm, the Gaussian sigma the density is smoothed over
SMOOTH_PX = 2.0  # copy px, the sigma without a pixel size
CHUNK = 200_000  # cells.csv rows read at a time


def cell_counts(csv_path: str | os.PathLike, shape: tuple[int, int], step: float) -> np.ndarray:
    """(h, w) float64: the cells of cells.csv whose centroid falls in each px of a copy of
    `shape`, `step` image px per copy px."""
    counts = np.zeros(shape, np.float64)
    for chunk in pd.read_csv(csv_path, usecols=["centroid_x", "centroid_y"], chunksize=CHUNK):
        rows = np.minimum((chunk["centroid_y"].to_numpy() / step).astype(np.int64), shape[0] - 1)
        cols = np.minimum((chunk["centroid_x"].to_numpy() / step).astype(np.int64), shape[1] - 1)
        np.add.at(counts, (rows, cols), 1)
    return counts


def tissue_area(mask: np.ndarray, step: float, mpp: float | None) -> dict:
    """{tissue_fraction, tissue_mm2 (None without a pixel size)} of a tissue `mask` of `step`
    image px per px at `mpp` µm per image px."""
    mm2 = float(mask.sum()) * (step * mpp / 1000) ** 2 if mpp else None
    return {"tissue_fraction": round(float(mask.mean()), 4), "tissue_mm2": None if mm2 is None else round(mm2, 6)}


def write_tissue_json(path: str | os.PathLike, mask: np.ndarray, step: float, mpp: float | None) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps({**tissue_area(mask, step, mpp), "mpp": mpp}, indent=1))


def write_density_picture(path: str | os.PathLike, image: np.ndarray, mask: np.ndarray, counts: np.ndarray,
                          step: float, mpp: float | None) -> None:
    """density.png (module doc) of the copy `image` (h, w, 3) uint8, its tissue `mask` and the
    cells per copy px `counts`, `step` image px per copy px, `mpp` µm per image px or None."""
    px_um = step * mpp if mpp else None
    sigma = SMOOTH_UM / px_um if px_um else SMOOTH_PX
    # per area of tissue: divided by the smoothed tissue fraction, floored so that the tissue's
    # edge does not blow up
    smooth = ndimage.gaussian_filter(counts, sigma) / np.maximum(ndimage.gaussian_filter(mask.astype(float), sigma), 0.25)
    density, unit = (smooth / (px_um / 1000) ** 2, "cells / mm² of tissue") if px_um else (smooth / step**2 * 1000, "cells / 1000 px²")
    height, width = mask.shape
    fig, ax = plt.subplots(figsize=(width / 100 + 1.6, height / 100 + 0.4), dpi=100)
    ax.imshow(image.mean(2), cmap="gray", vmin=0, vmax=255, interpolation="nearest")
    top = float(np.percentile(density[mask], 99)) if mask.any() else 0.0
    shown = ax.imshow(np.ma.masked_where(~mask, density), cmap="magma", alpha=0.7, interpolation="nearest",
                      vmin=0, vmax=top or None)
    ax.contour(mask, levels=[0.5], colors="lime", linewidths=0.8)
    fig.colorbar(shown, ax=ax, fraction=0.04, label=unit)
    ax.set_axis_off()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", bbox_inches="tight")
    plt.close(fig)
