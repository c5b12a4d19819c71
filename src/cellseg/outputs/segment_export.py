"""What `cellseg.inference.segment` found, in the forms other tools read: QuPath GeoJSON, a per-cell
table, an overlay picture, and a summary over images.

Coordinates: the table uses array indices (pixel (row r, column c) is at x = c, y = r, as
`np.nonzero(labels[k] == id)` gives them); the GeoJSON uses image coordinates in which pixel
(r, c) covers [c, c + 1) x [r, r + 1), as QuPath does, so a pixel's centre is at (c + 0.5,
r + 0.5). Polygons are traced by `cellseg.common.polygons.mask_polygons` so that a pixel's centre
lies inside its cell's polygon exactly when the pixel belongs to the cell; the `geojson` source
(`cellseg.data.geojson_source`) reads them back as the same cells.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import tifffile
from matplotlib import colormaps
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage

from cellseg.common.files import atomic_path
from cellseg.common.instances import InstanceSet
from cellseg.common.polygons import mask_geometry
from cellseg.inference.segment import cell_labels

LEGEND_FONT = 14  # px


def class_colours(n_classes: int) -> list[tuple[int, int, int]]:
    """One (r, g, b) 0-255 colour per class, from matplotlib's tab10."""
    return [tuple(int(round(255 * v)) for v in colormaps["tab10"](k % 10)[:3]) for k in range(n_classes)]


def cell_table(cells: InstanceSet, class_names: list[str]) -> pd.DataFrame:
    """One row per cell of `segment_image`'s binary, disjoint `cells`: `id` (1..N, as the
    GeoJSON's), `class_id`, `class`, `label` (its value in the class's plane of labels.tif),
    `score`, per class `score_<class>` (the best score of that class among the candidates
    merged into the cell: how sure the ensemble is of the class it chose), `area_px`,
    `centroid_x`, `centroid_y` (array indices), `bbox_x0`, `bbox_y0`, `bbox_x1`, `bbox_y1`
    (exclusive ends). The segment job adds each cell's mean colours
    (`cellseg.outputs.cell_writers.MEAN_COLUMNS`)."""
    masks = [cells.window_mask(i) for i in range(len(cells))]
    area = np.array([m.sum() for m in masks], np.int64)
    cx, cy = np.zeros(len(cells)), np.zeros(len(cells))
    for i, mask in enumerate(masks):
        rows, cols = np.nonzero(mask)
        cx[i], cy[i] = cols.mean() + cells.windows[i, 0], rows.mean() + cells.windows[i, 1]
    class_scores = cells.class_scores if cells.class_scores is not None else np.zeros((len(cells), len(class_names)))
    table = pd.DataFrame({
        "id": np.arange(1, len(cells) + 1),
        "class_id": cells.classes,
        "class": [class_names[c - 1] for c in cells.classes],
        "label": cell_labels(cells),
        "score": cells.scores.round(4),
        **{f"score_{name}": class_scores[:, k].round(4) for k, name in enumerate(class_names)},
        "area_px": area,
        "centroid_x": cx.round(2),
        "centroid_y": cy.round(2),
        **{f"bbox_{k}": cells.windows[:, i] for i, k in enumerate(("x0", "y0", "x1", "y1"))},
    })
    return table


def geojson(cells: InstanceSet, table: pd.DataFrame, class_names: list[str]) -> dict:
    """A FeatureCollection QuPath imports as detections (`geojson_features`), whole in memory."""
    return {"type": "FeatureCollection", "features": list(geojson_features(cells, table, class_names))}


def geojson_features(cells: InstanceSet, table: pd.DataFrame, class_names: list[str]) -> Iterator[dict]:
    """Per cell a Feature: a Polygon (MultiPolygon when its mask is in pieces) with
    `objectType: detection`, `classification: {name, color}` and `measurements` {score,
    score_<class> per class, area_px}; `id` and `label` as in `table` (from `cell_table`). One at a time, so that a
    slide's hundreds of thousands of cells are never all held as Python lists."""
    colours = class_colours(len(class_names))
    names = table["class"].tolist()
    class_scores = table[[f"score_{name}" for name in class_names]].to_numpy()
    for i, row in enumerate(table.itertuples(index=False)):
        x0, y0 = cells.windows[i, :2].tolist()
        geometry = mask_geometry(cells.window_mask(i), x0, y0)
        yield {
            "type": "Feature",
            "id": int(row.id),
            "geometry": geometry,
            "properties": {
                "objectType": "detection",
                "classification": {"name": names[i], "color": list(colours[row.class_id - 1])},
                "measurements": {
                    "score": float(row.score),
                    **{f"score_{name}": float(v) for name, v in zip(class_names, class_scores[i])},
                    "area_px": int(row.area_px),
                },
                "label": int(row.label),
            },
        }


def write_table(path: str | os.PathLike, table: pd.DataFrame) -> None:
    with atomic_path(path) as tmp:
        table.to_csv(tmp, index=False)


def write_overlay(path: str | os.PathLike, image: np.ndarray, counts, class_names: list[str]) -> None:
    """overlay.png: the thumbnail `image` (h, w, 3) uint8 with the cells' outlines drawn in
    (`draw_outlines`), pixel for pixel, and a legend with the `counts` per class to its right.
    Pillow rather than matplotlib, whose image resampling in floating point made the overlay a
    slide's peak memory."""
    colours = class_colours(len(class_names))
    font = ImageFont.load_default(size=LEGEND_FONT)
    entries = [f"{name} ({counts[k]})" for k, name in enumerate(class_names)]
    row = LEGEND_FONT + 8
    height, width = image.shape[:2]
    legend_width = 56 + int(max(font.getlength(entry) for entry in entries))
    canvas = Image.new("RGB", (width + legend_width, max(height, row * (len(entries) + 1))), "white")
    canvas.paste(Image.fromarray(image), (0, 0))
    draw = ImageDraw.Draw(canvas)
    for k, entry in enumerate(entries):
        y = row // 2 + row * k
        draw.line([(width + 10, y + row // 2), (width + 40, y + row // 2)], fill=colours[k], width=3)
        draw.text((width + 48, y), entry, fill="black", font=font)
    with atomic_path(path) as tmp:
        # zlib level 1: the overlay is a preview, and level 6 took longer than the drawing
        canvas.save(tmp, format="png", compress_level=1)


def draw_outlines(image: np.ndarray, cells: InstanceSet, colours: list[tuple[int, int, int]], step: float) -> None:
    """Paint each cell's edge pixels (mask minus its erosion) in its class's colour into
    `image`, the picture subsampled by `step` (image px per picture px). Pixels rather than
    vector outlines, so that memory stays flat for a slide's hundreds of thousands of cells."""
    height, width = image.shape[:2]
    for i, ((x0, y0), class_id) in enumerate(zip(cells.windows[:, :2].tolist(), cells.classes.tolist())):
        mask = cells.window_mask(i)
        ys, xs = np.nonzero(mask & ~ndimage.binary_erosion(mask))
        rows = np.minimum(((ys + y0) / step).astype(np.int64), height - 1)
        cols = np.minimum(((xs + x0) / step).astype(np.int64), width - 1)
        image[rows, cols] = colours[class_id - 1]


def summary_table(folders: dict[str, str | os.PathLike], class_names: list[str]) -> pd.DataFrame:
    """One row per image (`{name: results/segment/<name> folder}`): `image`, `height`,
    `width`, `megapixels`, then per class `n_<class>` and `per_mpx_<class>` (cells per
    million pixels), from each folder's cells.csv and labels.tif header."""
    rows = []
    for name, folder in folders.items():
        with tifffile.TiffFile(Path(folder) / "labels.tif") as tif:
            height, width = tif.series[0].shape[-2:]  # OME drops the class axis of one class
        table = pd.read_csv(Path(folder) / "cells.csv", usecols=["class_id"])
        mpx = height * width / 1e6
        row = {"image": name, "height": height, "width": width, "megapixels": round(mpx, 4)}
        for k, class_name in enumerate(class_names, 1):
            n = int((table["class_id"] == k).sum())
            row[f"n_{class_name}"] = n
            row[f"per_mpx_{class_name}"] = round(n / mpx, 2)
        rows.append(row)
    return pd.DataFrame(rows)


