"""Does a dataset read back from QuPath GeoJSON give the training samples of its label images?

Writes (unless `--geojson` exists) the reference-layout dataset `--data` as images + GeoJSON
(`python -m cellseg.data.converters geojson`), loads every training image through both sources
(`cellseg.data.dataset.load_sample`: what the tiles and the held-out validation are made of) and
compares them cell by cell: each reference cell is matched to the GeoJSON cell of its class
that covers most of it. Prints the images, cells, count and class mismatches, the lowest and
the 1st-percentile per-cell IoU, and the cells below `--min-iou`.

    .venv/bin/python benchmarks/geojson_equivalence.py --data ../shared/data/consep \\
        --geojson consep_geojson --classes class1 class2 class3 class4
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from cellseg.data.dataset import index_training_set, load_sample


def cell_ious(reference: np.ndarray, other: np.ndarray) -> tuple[list[float], int]:
    """Per reference cell (ids of one class plane), the IoU with the `other` cell that covers most
    of it; and the difference in cell counts."""
    ious = []
    for cell in np.unique(reference[reference > 0]):
        mask = reference == cell
        ids, counts = np.unique(other[mask], return_counts=True)
        counts[ids == 0] = 0
        if not counts.any():
            ious.append(0.0)
            continue
        match = other == ids[counts.argmax()]
        ious.append(float((mask & match).sum() / (mask | match).sum()))
    return ious, len(np.unique(other[other > 0])) - len(np.unique(reference[reference > 0]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="a dataset in the reference layout")
    parser.add_argument("--geojson", type=Path, required=True, help="its GeoJSON copy (written when missing)")
    parser.add_argument("--classes", nargs="+", required=True)
    parser.add_argument("--min-iou", type=float, default=0.95)
    args = parser.parse_args()
    if not args.geojson.exists():
        command = [sys.executable, "-m", "cellseg.data.converters", "geojson", str(args.data), str(args.geojson)]
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    reference = {"format": "reference", "path": str(args.data), "classes": args.classes}
    geojson = {"format": "geojson", "path": str(args.geojson), "classes": args.classes, "geojson_region_class": "Region*"}
    ids = index_training_set(reference)
    assert ids == index_training_set(geojson), "the two sources list other images"
    start = time.monotonic()
    ious, count_errors, pixel_errors = [], 0, 0
    for image_id in ids:
        a, b = load_sample(reference, image_id), load_sample(geojson, image_id)
        pixel_errors += int((a.image != b.image).any())
        for plane_a, plane_b in zip(a.labels, b.labels):  # one plane per class: classes compared too
            found, count = cell_ious(plane_a, plane_b)
            ious += found
            count_errors += abs(count)
    ious = np.array(ious)
    print(f"images: {len(ids)} ({pixel_errors} with other pixels), cells: {ious.size}, "
          f"count mismatches (per class): {count_errors}")
    print(f"per-cell IoU: min {ious.min():.3f}, 1st percentile {np.percentile(ious, 1):.3f}, "
          f"mean {ious.mean():.4f}; below {args.min_iou}: {(ious < args.min_iou).sum()}")
    print(f"{time.monotonic() - start:.0f} s")


if __name__ == "__main__":
    main()
