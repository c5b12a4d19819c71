"""Predicted instances in COCO's terms: masks binarised once and kept as RLEs, and the detection
list that pycocotools and faster-coco-eval take (the whole-set back ends; docs/design.md,
"Three COCO AP back ends").
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np

from cellseg.common.instances import InstanceSet, quantised_threshold
from cellseg.scoring.truth import encode_window


def instance_rles(instances: InstanceSet, mask_threshold: float) -> list[dict]:
    """COCO RLE of each binarised mask (probability >= threshold)."""
    level = quantised_threshold(mask_threshold)
    return [
        encode_window(probs >= level, x0, y0, instances.image_size)
        for (x0, y0, _, _), probs in zip(instances.windows, instances.probs)
    ]


@dataclass(frozen=True)
class Binarised:
    """One image's predictions as the metrics see them: each binarised mask as a COCO RLE,
    its 1-based class and its score; a few bytes per boundary run, not a mask."""

    rles: list[dict]
    classes: np.ndarray
    scores: np.ndarray

    def select(self, keep: np.ndarray) -> Binarised:
        """The instances where the bool array `keep` is true, in order."""
        index = np.flatnonzero(keep)
        return Binarised([self.rles[i] for i in index], self.classes[index], self.scores[index])


def binarise(instances: InstanceSet | Binarised, mask_threshold: float) -> Binarised:
    """`instances` with every mask binarised at `mask_threshold` and encoded (a `Binarised`
    passes through as it is)."""
    if isinstance(instances, Binarised):
        return instances
    return Binarised(instance_rles(instances, mask_threshold), instances.classes, instances.scores.astype(float))


def binarised_all(preds: Iterable[InstanceSet | Binarised], mask_threshold: float) -> Iterator[Binarised]:
    return (binarise(p, mask_threshold) for p in preds)


def predictions_to_coco(preds: Iterable[InstanceSet | Binarised], mask_threshold: float) -> list[dict]:
    """COCO result dicts; image ids are 1..len(preds) in order."""
    results = []
    for image_id, found in enumerate(binarised_all(preds, mask_threshold), start=1):
        for rle, score, class_id in zip(found.rles, found.scores, found.classes):
            results.append(
                {"image_id": image_id, "category_id": int(class_id), "segmentation": rle, "score": float(score)}
            )
    return results
