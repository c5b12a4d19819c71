"""COCO mask AP accumulated image by image, so that scoring a set holds per detection only its
score and match flags, never every image's masks.

pycocotools and faster-coco-eval evaluate a whole set at once: every image's ground truth,
detections and IoU matrices stay in memory until they accumulate, so the tune and evaluate
jobs grew with the number of images. pycocotools' per-image step (`evaluateImg`) could be run
image by image, but it is a Python loop over detections x ground truth x IoU thresholds, far
slower than faster-coco-eval on dense images (docs/benchmarks.md), and faster-coco-eval's
per-image results are not readable from Python. So `CocoAccumulator` does both steps itself, as
pycocotools defines them (its precision array is equal to pycocotools', tested):
`add_image` matches one image's detections per class and area range (greedy in score order,
ground truth outside the area range ignored), `precision` accumulates over the images.
Ground truth is never a crowd region here, so crowd matching is left out.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from cellseg.common.iou import rle_areas, rle_ious

IOU_THRESHOLDS = np.linspace(0.5, 0.95, 10)
RECALL_THRESHOLDS = np.linspace(0.0, 1.0, 101)
# pycocotools' area ranges (all, small, medium, large) in pixels, bounds inclusive.
AREA_RANGES = [(0, 1e10), (0, 32**2), (32**2, 96**2), (96**2, 1e10)]
# A class's per-image arrays are merged into one once this many are held.
_MERGE_EVERY = 256


class CocoAccumulator:
    """COCO's precision array, (iou 10, recall 101, class, area 4, maxDets) float, built one
    image at a time; -1 marks a class or area range without ground truth, as in pycocotools.

    max_dets: pycocotools' `params.maxDets`, sorted as pycocotools sorts them; each image's
    detections of a class beyond the largest are dropped, as pycocotools does.
    """

    def __init__(self, n_classes: int, max_dets: Sequence[int]):
        self.max_dets = sorted(max_dets)
        self._detections = [_Detections() for _ in range(n_classes)]
        self._n_truth = np.zeros((n_classes, len(AREA_RANGES)), np.int64)

    def add_image(
        self,
        truth_rles: list[dict],
        truth_classes: np.ndarray,
        rles: list[dict],
        classes: np.ndarray,
        scores: np.ndarray,
    ) -> None:
        """Match one image's detections (COCO RLEs, 1-based classes, scores) to its ground
        truth (RLEs, 1-based classes)."""
        truth_classes, classes, scores = (np.asarray(x).reshape(-1) for x in (truth_classes, classes, scores))
        truth_areas = rle_areas(truth_rles)
        areas = rle_areas(rles)
        for k in range(self._n_truth.shape[0]):
            truth = np.flatnonzero(truth_classes == k + 1)
            found = np.flatnonzero(classes == k + 1)
            found = found[np.argsort(-scores[found], kind="mergesort")][: self.max_dets[-1]]
            ious = rle_ious([rles[i] for i in found], [truth_rles[i] for i in truth])
            flags = np.zeros((len(found), len(AREA_RANGES), 2, len(IOU_THRESHOLDS)), bool)
            for a, area_range in enumerate(AREA_RANGES):
                truth_ignored = ~_inside(truth_areas[truth], area_range)
                self._n_truth[k, a] += np.count_nonzero(~truth_ignored)
                if len(found):
                    matched, ignored = _match(ious, truth_ignored)
                    ignored |= ~matched & ~_inside(areas[found], area_range)[None, :]
                    flags[:, a, 0], flags[:, a, 1] = matched.T, ignored.T
            if len(found):
                self._detections[k].add(scores[found], flags)

    def precision(self) -> np.ndarray:
        """pycocotools' `eval["precision"]` of the images added so far."""
        n_classes, n_areas = self._n_truth.shape
        shape = (len(IOU_THRESHOLDS), len(RECALL_THRESHOLDS), n_classes, n_areas, len(self.max_dets))
        precision = -np.ones(shape)
        for k, detections in enumerate(self._detections):
            scores, rank, packed = detections.merged()
            for a in range(n_areas):
                if not self._n_truth[k, a]:
                    continue
                flags = _unpacked(packed[:, a])  # (detections, matched / ignored, IoU threshold)
                for m, max_det in enumerate(self.max_dets):
                    kept = np.flatnonzero(rank < max_det)
                    index = kept[np.argsort(-scores[kept], kind="mergesort")]
                    precision[:, :, k, a, m] = _interpolated_precision(
                        flags[index, 0].T, flags[index, 1].T, self._n_truth[k, a]
                    )
        return precision


class _Detections:
    """One class's detections in image order: score, rank within its image (by score), and per
    area range whether matched and whether ignored at each IoU threshold, packed eight flags to
    a byte (24 bytes a detection in all)."""

    def __init__(self):
        self._parts: list[tuple[np.ndarray, ...]] = []

    def add(self, scores: np.ndarray, flags: np.ndarray) -> None:
        """flags: (detections, area range, matched / ignored, IoU threshold) bool."""
        packed = np.packbits(flags.reshape(*flags.shape[:2], -1), axis=2)
        self._parts.append((scores, np.arange(len(scores), dtype=np.int32), packed))
        if len(self._parts) >= _MERGE_EVERY:
            self._parts = [self.merged()]

    def merged(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Scores, ranks and the (detections, area range, bytes) packed flags."""
        if not self._parts:
            flag_bytes = -(-2 * len(IOU_THRESHOLDS) // 8)
            return np.zeros(0), np.zeros(0, np.int32), np.zeros((0, len(AREA_RANGES), flag_bytes), np.uint8)
        return tuple(np.concatenate(part) for part in zip(*self._parts))


def _unpacked(packed: np.ndarray) -> np.ndarray:
    """(detections, 2, IoU threshold) bool flags of one area range from `_Detections`' bytes."""
    bits = np.unpackbits(packed, axis=1, count=2 * len(IOU_THRESHOLDS))
    return bits.view(bool).reshape(len(packed), 2, len(IOU_THRESHOLDS))


def _match(ious: np.ndarray, truth_ignored: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """pycocotools' greedy matching of one image and class at every IoU threshold.

    ious: (detections in score order, ground truth). Each detection in turn takes the free
    ground-truth instance of highest IoU at or above the threshold, one that is not ignored
    if any qualifies (ties: the later instance, as pycocotools). Returns (T, D) bool arrays:
    matched, and matched to an ignored instance."""
    thresholds = np.minimum(IOU_THRESHOLDS, 1 - 1e-10)
    matched = np.zeros((ious.shape[0], len(thresholds)), bool)
    ignored = np.zeros_like(matched)
    taken = np.zeros((ious.shape[1], len(thresholds)), bool)
    rows, cols = np.nonzero(ious >= thresholds[0])
    found, first = np.unique(rows, return_index=True)
    for d, candidates in zip(found, np.split(cols, first[1:])):
        if len(candidates) == 1:  # the usual case: one instance overlaps the detection enough
            g = candidates[0]
            hit = (ious[d, g] >= thresholds) & ~taken[g]
            chosen = np.full(len(thresholds), g)
        else:
            values = ious[d, candidates][:, None]
            free = ~taken[candidates] & (values >= thresholds)  # (candidates, T)
            preferred = free & ~truth_ignored[candidates][:, None]
            pool = np.where(preferred.any(axis=0), preferred, free)
            last_best = len(candidates) - 1 - np.argmax(np.where(pool, values, -1.0)[::-1], axis=0)
            hit, chosen = pool.any(axis=0), candidates[last_best]
        matched[d] = hit
        ignored[d] = hit & truth_ignored[chosen]
        taken[chosen[hit], np.flatnonzero(hit)] = True
    return matched.T, ignored.T


def _interpolated_precision(matched: np.ndarray, ignored: np.ndarray, n_truth: int) -> np.ndarray:
    """(T, recall thresholds) precision of detections in score order, interpolated as
    pycocotools does (the running maximum from the high-recall end, read at each recall
    threshold; 0 beyond the highest recall reached). One IoU threshold at a time, so that the
    float arrays are per detection, not per detection and threshold."""
    result = np.zeros((len(IOU_THRESHOLDS), len(RECALL_THRESHOLDS)))
    for t in range(len(IOU_THRESHOLDS)):
        tp = np.cumsum(matched[t] & ~ignored[t], dtype=float)
        fp = np.cumsum(~matched[t] & ~ignored[t], dtype=float)
        recall = tp / n_truth
        precision = np.maximum.accumulate((tp / (fp + tp + np.spacing(1)))[::-1])[::-1]
        index = np.searchsorted(recall, RECALL_THRESHOLDS, side="left")
        reached = index < len(precision)
        result[t, reached] = precision[index[reached]]
    return result


def _inside(areas: np.ndarray, area_range: tuple[float, float]) -> np.ndarray:
    low, high = area_range
    return (areas >= low) & (areas <= high)
