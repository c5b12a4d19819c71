"""Overlap of rectangles and masks, and the IoU of masks: the one home of these computations,
used to merge seams, resolve overlaps, fuse folds and score against ground truth.

Rectangles are `x0, y0, x1, y1` pixel extents (end exclusive), as `InstanceSet.windows`.
"""

from __future__ import annotations

import numpy as np
from pycocotools import mask as mask_utils
from scipy import sparse

from cellseg.common.instances import InstanceSet, quantised_threshold


def rects_meet(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(len(a), len(b)) bool: which rectangles of `a` (N, 4) share a pixel with which of `b` (M, 4)."""
    return (
        (a[:, None, 0] < b[None, :, 2]) & (a[:, None, 2] > b[None, :, 0])
        & (a[:, None, 1] < b[None, :, 3]) & (a[:, None, 3] > b[None, :, 1])
    )  # fmt: skip


def rect_intersection(a, b) -> tuple[int, int, int, int] | None:
    """The common part of two rectangles, None when empty."""
    x0, y0, x1, y1 = max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])
    return (x0, y0, x1, y1) if x0 < x1 and y0 < y1 else None


def rects_meeting(rects: np.ndarray, rect) -> np.ndarray:
    """(N,) bool: which of `rects` (N, 4) share a pixel with `rect`."""
    return rects_meet(rects, np.asarray(rect)[None])[:, 0]


def window_overlap(a, b) -> tuple[tuple[slice, slice], tuple[slice, slice]] | None:
    """The (rows, columns) slices of windows `a` and `b` over their common pixels, or None."""
    common = rect_intersection(a, b)
    if common is None:
        return None
    x0, y0, x1, y1 = common
    return (
        (slice(y0 - a[1], y1 - a[1]), slice(x0 - a[0], x1 - a[0])),
        (slice(y0 - b[1], y1 - b[1]), slice(x0 - b[0], x1 - b[0])),
    )


def mask_iou(window_a, mask_a: np.ndarray, window_b, mask_b: np.ndarray, empty: float = 0.0) -> float:
    """IoU of two binary masks, each in its window of one image; `empty` when both are empty."""
    common = window_overlap(window_a, window_b)
    inter = 0 if common is None else np.count_nonzero(mask_a[common[0]] & mask_b[common[1]])
    union = np.count_nonzero(mask_a) + np.count_nonzero(mask_b) - inter
    return inter / union if union else empty


def instance_pixels(instances: InstanceSet, mask_threshold: float) -> sparse.csr_matrix:
    """Sparse (N, H*W) membership matrix of the binarised masks (probability >= threshold)."""
    width = instances.image_size[1]
    level = quantised_threshold(mask_threshold)
    columns = []
    for (x0, y0, _, _), probs in zip(instances.windows, instances.probs):
        ys, xs = np.nonzero(probs >= level)
        columns.append((ys + y0) * width + xs + x0)
    counts = np.array([len(c) for c in columns], np.int64)
    indptr = np.concatenate([[0], np.cumsum(counts)])
    indices = np.concatenate(columns) if columns else np.zeros(0, np.int64)
    shape = (len(instances), instances.image_size[0] * width)
    return sparse.csr_matrix((np.ones(len(indices), np.float32), indices, indptr), shape=shape)


def overlap_counts(a: sparse.csr_matrix, b: sparse.csr_matrix) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pixel counts of two membership matrices over the same pixels, float: the dense
    (n_a, n_b) intersection of every pair, the (n_a,) areas of `a` and the (n_b,) areas of `b`."""
    intersection = (a @ b.T).toarray()
    return intersection, np.asarray(a.sum(axis=1)).ravel(), np.asarray(b.sum(axis=1)).ravel()


def iou_matrix(a: sparse.csr_matrix, b: sparse.csr_matrix) -> np.ndarray:
    """Dense (n_a, n_b) mask IoU of two membership matrices over the same pixels."""
    return iou_from_counts(*overlap_counts(a, b))


def iou_from_counts(intersection: np.ndarray, area_a: np.ndarray, area_b: np.ndarray) -> np.ndarray:
    """(n_a, n_b) IoU from pixel counts (`overlap_counts`, `image_overlaps`); 0 where the union is empty."""
    union = area_a[:, None] + area_b[None, :] - intersection
    return np.divide(intersection, union, out=np.zeros_like(intersection), where=union > 0)


def rle_ious(rles: list[dict], truth_rles: list[dict]) -> np.ndarray:
    """(detections, ground truth) mask IoU of COCO RLEs, pycocotools' own computation."""
    if not rles or not truth_rles:
        return np.zeros((len(rles), len(truth_rles)))
    return np.asarray(mask_utils.iou(rles, truth_rles, [0] * len(truth_rles)), float)


def rle_areas(rles: list[dict]) -> np.ndarray:
    """Pixel count of each COCO RLE, float. One call per RLE: pycocotools 2.0.11's `area` of a
    list fails from 256 entries on (its count is typed uint8 under numpy 2)."""
    return np.array([mask_utils.area(rle) for rle in rles], float)


def image_overlaps(truth_rles: list[dict], rles: list[dict]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One image's pixel counts, float: the (n_true, n_pred) intersection of every ground-truth
    instance with every binarised prediction (both COCO RLEs), the (n_true,) and (n_pred,)
    areas. The intersection follows exactly from pycocotools' RLE IoU and the integer areas."""
    area_true, area_pred = rle_areas(truth_rles), rle_areas(rles)
    iou = rle_ious(rles, truth_rles).T
    intersection = np.rint(iou * (area_true[:, None] + area_pred[None, :]) / (1 + iou))
    return intersection, area_true, area_pred
