"""Ground truth as scoring holds it: each image's instances as COCO RLEs with their class ids,
encoded once from the label images and read back one image at a time (`Spool`), so that a
whole validation set is never in memory as masks.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
from pycocotools import mask as mask_utils
from scipy import ndimage

from cellseg.common.spool import Spool


class ImageTruth(NamedTuple):
    """One image's ground truth: its (H, W), its instances' COCO RLEs (all classes) and their
    1-based class ids."""

    size: tuple[int, int]
    rles: list[dict]
    classes: np.ndarray


@dataclass(frozen=True)
class GroundTruth:
    """Ground truth of a list of images, converted once for repeated scoring: per image an
    `ImageTruth`, its instances as COCO RLEs (a few bytes per boundary run rather than a mask
    per instance). `images` is a list, or a `Spool` on disk (`spool_ground_truth`), read anew
    on each pass.
    """

    images: Sequence[ImageTruth]
    class_names: list[str]

    def __len__(self) -> int:
        return len(self.images)

    def __iter__(self) -> Iterator[ImageTruth]:
        return iter(self.images)

    @functools.cached_property
    def coco(self) -> dict:
        """COCO dataset dict (image and annotation ids from 1, in order), for the whole-set
        evaluators."""
        images, annotations = [], []
        for image_id, ((height, width), rles, classes) in enumerate(self, 1):
            images.append({"id": image_id, "height": height, "width": width})
            for rle, class_id in zip(rles, classes):
                annotations.append(
                    {
                        "id": len(annotations) + 1,
                        "image_id": image_id,
                        "category_id": int(class_id),
                        "segmentation": rle,
                        "area": float(mask_utils.area(rle)),
                        "bbox": mask_utils.toBbox(rle).tolist(),
                        "iscrowd": 0,
                    }
                )
        return {"images": images, "annotations": annotations, "categories": _categories(self.class_names)}

    def subset(self, index) -> GroundTruth:
        """The images at positions `index`, in that order (a spool's in a new spool)."""
        if isinstance(self.images, Spool):
            return GroundTruth(self.images.subset(index), self.class_names)
        return GroundTruth([self.images[int(i)] for i in index], self.class_names)


def encode_window(mask: np.ndarray, x0: int, y0: int, image_size: tuple[int, int]) -> dict:
    """COCO RLE (counts as str) of an (h, w) bool crop placed at (x0, y0) in an image of
    `image_size` (H, W), computed from the crop alone: pasting each mask into a full image
    first costs more than the rest of an evaluation of dense images."""
    height, width = image_size
    xs, ys = np.nonzero(np.asarray(mask, bool).T)  # column-major order, as COCO RLE
    flat = (xs + x0) * height + ys + y0
    breaks = np.flatnonzero(np.diff(flat) != 1) + 1
    starts = flat[np.concatenate([[0], breaks])] if len(flat) else np.zeros(0, np.int64)
    ends = flat[np.concatenate([breaks - 1, [len(flat) - 1]])] + 1 if len(flat) else starts
    edges = np.column_stack([starts, ends]).ravel()
    counts = np.diff(np.concatenate([[0], edges, [height * width]]))
    rle = mask_utils.frPyObjects({"size": [height, width], "counts": counts.tolist()}, height, width)
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


def encode_truth(labels: np.ndarray) -> ImageTruth:
    """One image's ground truth from its (C, H, W) int label stack (0 = background)."""
    height, width = labels.shape[1:]
    rles, classes = [], []
    for class_index, plane in enumerate(labels):
        for instance, window in enumerate(ndimage.find_objects(plane), start=1):
            if window is not None:
                crop = plane[window] == instance
                rles.append(encode_window(crop, window[1].start, window[0].start, (height, width)))
                classes.append(class_index + 1)
    return ImageTruth((int(height), int(width)), rles, np.array(classes, np.int64))


def prepare_ground_truth(labels_list: Iterable[np.ndarray], class_names: list[str]) -> GroundTruth:
    """Convert label stacks (per image (C, H, W) int, 0 = background) for scoring, one at a
    time: `labels_list` may be a generator, so that a whole dataset's dense labels are never
    held at once."""
    return GroundTruth([encode_truth(labels) for labels in labels_list], list(class_names))


def spool_ground_truth(labels_list: Iterable[np.ndarray], class_names: list[str], directory: str | Path) -> GroundTruth:
    """`prepare_ground_truth` kept on disk (a `Spool` in `directory`): each pass over it reads
    one image's RLEs at a time, so that revisiting the set holds none of it."""
    return GroundTruth(Spool((encode_truth(labels) for labels in labels_list), directory), list(class_names))


def iter_truth(truth: Iterable[np.ndarray] | GroundTruth) -> Iterator[ImageTruth]:
    """Each image's ground truth in turn, from a `GroundTruth` or from label stacks encoded one
    at a time (a generator of them is read once, never held)."""
    return iter(truth) if isinstance(truth, GroundTruth) else (encode_truth(labels) for labels in truth)


def as_ground_truth(truth: Sequence[np.ndarray] | GroundTruth, class_names: list[str]) -> GroundTruth:
    """`truth` itself when it is a `GroundTruth` already, else `prepare_ground_truth` of its
    label stacks."""
    return truth if isinstance(truth, GroundTruth) else prepare_ground_truth(truth, class_names)


def ground_truth_to_coco(labels_list: Iterable[np.ndarray], class_names: list[str]) -> dict:
    """A COCO dataset dict from label stacks; image ids are 1..len(labels_list) in order.

    labels_list: per image a (C, H, W) int label stack, 0 = background.
    """
    return prepare_ground_truth(labels_list, class_names).coco


def _categories(class_names: list[str]) -> list[dict]:
    return [{"id": i + 1, "name": name} for i, name in enumerate(class_names)]
