"""Timings of fold ensembling and COCO evaluation on synthetic dense images.

(a) WBF + mask fusion (`cellseg.inference.ensemble.fuse_instance_sets`) of 5 folds x 300 cells on a
    1000 x 1000 image; target <= 50 ms per image.
(b) COCO mask evaluation (`cellseg.scoring.metrics.coco_precision`, predictions' RLE encoding
    included) with each evaluator on the same predictions (10 images x 300 cells): the
    default `streaming`, `faster` (faster-coco-eval) and `pycocotools`; target: the default
    >= 2x faster than pycocotools, equal AP.

Run: PYTHONPATH=src .venv/bin/python benchmarks/ensemble_eval.py
"""

from __future__ import annotations

import time

import numpy as np

from cellseg.common.instances import PROB_SCALE, InstanceSet
from cellseg.inference.ensemble import fuse_instance_sets
from cellseg.scoring.metrics import DEFAULT_EVALUATOR, EVALUATORS, coco_precision, metrics_from_precision
from cellseg.scoring.truth import prepare_ground_truth

SIZE = 1000
CELLS = 300
FOLDS = 5
IMAGES = 10
REPEATS = 5


def cell_layout(rng: np.random.Generator) -> np.ndarray:
    """(CELLS, 5) centre y, x, radii ry, rx, angle of ellipses on a jittered grid."""
    side = int(np.ceil(np.sqrt(CELLS)))
    step = SIZE / side
    grid = (np.stack(np.divmod(np.arange(CELLS), side), axis=1) + 0.5) * step
    centres = grid + rng.uniform(-0.15, 0.15, (CELLS, 2)) * step
    radii = rng.uniform(8, 18, (CELLS, 2))
    return np.column_stack([centres, radii, rng.uniform(0, np.pi, CELLS)])


def ellipse_set(cells: np.ndarray, scores: np.ndarray) -> InstanceSet:
    """Soft elliptical masks (probability falling off across the rim) kept in their windows."""
    windows, probs, boxes = [], [], []
    for cy, cx, ry, rx, angle in cells:
        reach = max(ry, rx) + 2
        x0, y0 = int(max(cx - reach, 0)), int(max(cy - reach, 0))
        x1, y1 = int(min(cx + reach + 1, SIZE)), int(min(cy + reach + 1, SIZE))
        yy, xx = np.mgrid[y0:y1, x0:x1] + 0.5
        u = (xx - cx) * np.cos(angle) + (yy - cy) * np.sin(angle)
        v = -(xx - cx) * np.sin(angle) + (yy - cy) * np.cos(angle)
        distance = np.sqrt((u / rx) ** 2 + (v / ry) ** 2)
        probs.append(np.rint(np.clip(1.5 - distance, 0, 1) * PROB_SCALE).astype(np.uint8))
        windows.append((x0, y0, x1, y1))
        boxes.append((cx - reach, cy - reach, cx + reach, cy + reach))
    return InstanceSet(
        (SIZE, SIZE),
        np.clip(np.asarray(boxes, np.float32), 0, SIZE),
        np.asarray(scores, np.float32),
        np.ones(len(cells), np.int64),
        np.asarray(windows, np.int32),
        probs,
    )


def jitter(cells: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    noise = np.column_stack([rng.normal(0, 1.0, (len(cells), 2)), rng.normal(0, 0.7, (len(cells), 2)),
                             rng.normal(0, 0.05, len(cells))])
    return cells + noise


def labels_of(cells: np.ndarray) -> np.ndarray:
    """(1, SIZE, SIZE) label image of the ellipses binarised at 0.5 (later cells on top)."""
    instances = ellipse_set(cells, np.ones(len(cells)))
    labels = np.zeros((1, SIZE, SIZE), np.int32)
    for i, ((x0, y0, x1, y1), probs) in enumerate(zip(instances.windows, instances.probs), start=1):
        labels[0, y0:y1, x0:x1][probs >= 128] = i
    return labels


def bench_ensemble(rng: np.random.Generator) -> tuple[float, int]:
    cells = cell_layout(rng)
    folds = [ellipse_set(jitter(cells, rng), rng.uniform(0.5, 1, CELLS)) for _ in range(FOLDS)]
    fuse_instance_sets(folds)  # warm-up
    times = []
    for _ in range(REPEATS):
        start = time.perf_counter()
        fused = fuse_instance_sets(folds)
        times.append(time.perf_counter() - start)
    return float(np.median(times)), len(fused)


def bench_evaluation(rng: np.random.Generator) -> dict:
    labels_list, preds = [], []
    for _ in range(IMAGES):
        cells = cell_layout(rng)
        labels_list.append(labels_of(cells))
        preds.append(ellipse_set(jitter(cells, rng), rng.uniform(0.5, 1, CELLS)))
    gt = prepare_ground_truth(labels_list, ["cell"])
    assert gt.coco  # built once, outside the timings
    timings = {}
    for evaluator in EVALUATORS:
        start = time.perf_counter()
        precision = coco_precision(gt, preds, 0.5, 1000, evaluator)
        elapsed = time.perf_counter() - start
        timings[evaluator] = (elapsed, metrics_from_precision(precision, ["cell"])["AP"])
    return timings


def main() -> None:
    rng = np.random.default_rng(0)
    seconds, fused = bench_ensemble(rng)
    print("| benchmark | value | target |")
    print("| --- | --- | --- |")
    print(f"| WBF + mask fusion, {FOLDS} folds x {CELLS} cells, {SIZE}x{SIZE} ({fused} fused) "
          f"| {seconds * 1000:.1f} ms/image | <= 50 ms |")
    timings = bench_evaluation(rng)
    for evaluator, (elapsed, ap) in timings.items():
        print(f"| COCO mask eval `{evaluator}`, {IMAGES} images x {CELLS} cells | {elapsed:.2f} s, AP {ap:.6f} | |")
    for other in EVALUATORS[1:]:
        speedup = timings[other][0] / timings[DEFAULT_EVALUATOR][0]
        print(f"| `{DEFAULT_EVALUATOR}`: time of `{other}` / its own | {speedup:.2f}x | pycocotools: >= 2x, equal AP |")


if __name__ == "__main__":
    main()
