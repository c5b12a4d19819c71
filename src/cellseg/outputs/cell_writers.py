"""One segmented image's outputs, written as its cells are finalised (`cellseg.inference.cell_stream`).

Each batch of final cells is mapped to level 0 (`cellseg.data.slide.cells_at_level0`), numbered on
from the last batch (`id` over the image, `label` per class), appended to cells.csv and
cells.geojson, drawn into the overlay's thumbnail and spooled for labels.tif, which is painted
at the end (`cellseg.common.label_pyramid`). Nothing held grows with the number of cells but the
spool's index (about 30 bytes a cell).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from contextlib import ExitStack
from pathlib import Path

import numpy as np
import pandas as pd

from cellseg.common.files import atomic_path
from cellseg.common.instances import InstanceSet
from cellseg.common.label_pyramid import LabelSpool, spool_cells, write_label_pyramid
from cellseg.data.slide import cells_at_level0
from cellseg.outputs.segment_export import cell_table, class_colours, draw_outlines, geojson_features, write_overlay

MEAN_COLUMNS = ("mean_r", "mean_g", "mean_b", "mean_od")


def numbered_table(cells: InstanceSet, class_names: list[str], counts: np.ndarray, means: np.ndarray) -> pd.DataFrame:
    """`cell_table` of a batch numbered on after `counts` (cells so far per class id, index 0
    unused), with the batch's mean colours (N, 4) as `MEAN_COLUMNS`."""
    table = cell_table(cells, class_names)
    table["id"] += int(counts.sum())
    table["label"] += counts[table["class_id"].to_numpy()].astype(np.uint32)
    for k, column in enumerate(MEAN_COLUMNS):
        table[column] = means[:, k].round(3)
    return table


def write_outputs(
    outputs: dict,
    batches: Iterable[tuple[InstanceSet, np.ndarray]],
    class_names: list[str],
    overview: tuple[np.ndarray, float],
    level0: tuple[tuple[int, int], tuple[float, float]],
    mpp: float | None = None,
) -> dict[str, int]:
    """Write `outputs` {labels, geojson, csv, overlay: path} from `batches` of (final cells at
    the working level, their (N, 4) mean colours). `overview`: the thumbnail (h, w, 3) uint8
    and level-0 px per thumbnail px; `level0`: level 0's (H, W) and the working level's
    (dy, dx) downsample; `mpp`: level 0's µm/px for labels.tif. Returns cells per class name."""
    size, downsample = level0
    image, step = overview
    colours = class_colours(len(class_names))
    counts = np.zeros(len(class_names) + 1, np.int64)
    with ExitStack() as stack:
        spool = stack.enter_context(LabelSpool(Path(outputs["labels"]).parent))
        table_out = stack.enter_context(open(stack.enter_context(atomic_path(outputs["csv"])), "w"))
        features_out = stack.enter_context(open(stack.enter_context(atomic_path(outputs["geojson"])), "w"))
        numbered_table(InstanceSet.empty(size), class_names, counts, np.zeros((0, 4))).to_csv(table_out, index=False)
        features_out.write('{"type":"FeatureCollection","features":[')
        for cells, means in batches:
            cells = cells_at_level0(cells, downsample, size)
            table = numbered_table(cells, class_names, counts, means)
            table.to_csv(table_out, index=False, header=False)
            for feature in geojson_features(cells, table, class_names):
                features_out.write(("," if feature["id"] > 1 else "") + json.dumps(feature, separators=(",", ":")))
            spool_cells(spool, cells, table["label"].to_numpy())
            draw_outlines(image, cells, colours, step)
            np.add.at(counts, cells.classes, 1)
        features_out.write("]}")
        write_label_pyramid(outputs["labels"], spool, len(class_names), size, mpp)
    write_overlay(outputs["overlay"], image, counts[1:], class_names)
    return {name: int(counts[k]) for k, name in enumerate(class_names, 1)}
