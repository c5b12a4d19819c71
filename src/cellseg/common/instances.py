"""Predicted instances of one image, with soft masks stored compactly.

A dense `(N, H, W)` float mask stack of a 2000 px image with 300 cells takes GBs; keeping each
mask's probabilities only inside its own integer window, quantised to uint8, takes a few MB and
still lets later stages (ensemble, threshold tuning, submission) re-threshold masks without
running the network again.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

PROB_SCALE = 255.0


@dataclass
class InstanceSet:
    """Instances of one image.

    image_size: (H, W) of the image.
    boxes: (N, 4) float32 xyxy in pixels.
    scores: (N,) float32 detection scores.
    classes: (N,) int64 category ids, 1-based.
    windows: (N, 4) int32 integer windows x0, y0, x1, y1 (exclusive ends), inside the image,
        where each mask's probabilities live; outside its window a mask is 0.
    probs: N uint8 arrays of shape (y1 - y0, x1 - x0): mask probability × 255, rounded.
    class_scores: None, or (N, C) float32: for a cell of the `cells` operating point, the best
        score of each class among the candidates that were merged into it (its own class's
        is its score), kept as a measurement when each cell is given one class.
    """

    image_size: tuple[int, int]
    boxes: np.ndarray
    scores: np.ndarray
    classes: np.ndarray
    windows: np.ndarray
    probs: list[np.ndarray]
    class_scores: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.scores)

    @classmethod
    def empty(cls, image_size: tuple[int, int]) -> InstanceSet:
        return cls(
            image_size=(int(image_size[0]), int(image_size[1])),
            boxes=np.zeros((0, 4), np.float32),
            scores=np.zeros(0, np.float32),
            classes=np.zeros(0, np.int64),
            windows=np.zeros((0, 4), np.int32),
            probs=[],
        )

    @classmethod
    def from_dense(
        cls,
        boxes: np.ndarray,
        scores: np.ndarray,
        classes: np.ndarray,
        masks: np.ndarray,
    ) -> InstanceSet:
        """Build from dense masks `(N, H, W)` of probabilities in [0, 1] (float) or bool."""
        masks = np.asarray(masks)
        n, height, width = masks.shape
        windows = np.tile(np.array([0, 0, width, height]), (n, 1))
        return cls.from_windows((height, width), boxes, scores, classes, windows, list(masks))

    @classmethod
    def from_windows(
        cls,
        image_size: tuple[int, int],
        boxes: np.ndarray,
        scores: np.ndarray,
        classes: np.ndarray,
        windows: np.ndarray,
        crops: list[np.ndarray],
    ) -> InstanceSet:
        """Build from masks given only inside windows x0, y0, x1, y1 (inside the image): `crops[i]`
        `(y1 - y0, x1 - x0)` of probabilities in [0, 1] (float) or bool, 0 outside the window.

        Each window shrinks to the bounding rectangle of its crop's non-zero pixels after
        quantisation; an all-zero mask keeps a 1×1 window at its box's top-left corner.
        """
        height, width = image_size
        n = len(crops)
        out_windows = np.zeros((n, 4), np.int32)
        probs = []
        for i, ((x0, y0, _, _), crop) in enumerate(zip(np.asarray(windows).tolist(), crops)):
            quantised = _quantise(np.asarray(crop))
            rect = bounding_rect(quantised > 0)
            if rect:
                left, top, right, bottom = rect
                probs.append(np.ascontiguousarray(quantised[top:bottom, left:right]))
                out_windows[i] = (x0 + left, y0 + top, x0 + right, y0 + bottom)
            else:
                x = int(np.clip(np.floor(boxes[i][0]), 0, width - 1))
                y = int(np.clip(np.floor(boxes[i][1]), 0, height - 1))
                probs.append(np.zeros((1, 1), np.uint8))
                out_windows[i] = (x, y, x + 1, y + 1)
        return cls(
            image_size=(int(height), int(width)),
            boxes=np.asarray(boxes, np.float32).reshape(-1, 4),
            scores=np.asarray(scores, np.float32).reshape(-1),
            classes=np.asarray(classes, np.int64).reshape(-1),
            windows=out_windows,
            probs=probs,
        )

    def paste(self, i: int) -> np.ndarray:
        """Mask `i` as a dense (H, W) float32 probability image."""
        out = np.zeros(self.image_size, np.float32)
        x0, y0, x1, y1 = self.windows[i]
        out[y0:y1, x0:x1] = self.probs[i] / PROB_SCALE
        return out

    def binary_mask(self, i: int, threshold: float) -> np.ndarray:
        """Mask `i` as a dense (H, W) bool image: probability >= threshold."""
        out = np.zeros(self.image_size, bool)
        x0, y0, x1, y1 = self.windows[i]
        out[y0:y1, x0:x1] = self.probs[i] >= quantised_threshold(threshold)
        return out

    def binary_masks(self, threshold: float) -> np.ndarray:
        """All masks as a dense (N, H, W) bool stack; mind the memory on large images."""
        out = np.zeros((len(self), *self.image_size), bool)
        level = quantised_threshold(threshold)
        for i, (x0, y0, x1, y1) in enumerate(self.windows):
            out[i, y0:y1, x0:x1] = self.probs[i] >= level
        return out

    def select(self, index) -> InstanceSet:
        """A subset by boolean mask or integer index array, in that order."""
        index = np.arange(len(self))[index]
        return InstanceSet(
            image_size=self.image_size,
            boxes=self.boxes[index],
            scores=self.scores[index],
            classes=self.classes[index],
            windows=self.windows[index],
            probs=[self.probs[i] for i in index],
            class_scores=None if self.class_scores is None else self.class_scores[index],
        )

    @classmethod
    def concatenate(cls, parts: list[InstanceSet]) -> InstanceSet:
        """Instances of several sets of the same image, one after the other."""
        if not parts:
            raise ValueError("nothing to concatenate")
        sizes = {p.image_size for p in parts}
        if len(sizes) != 1:
            raise ValueError(f"instance sets of different image sizes: {sorted(sizes)}")
        return cls(
            image_size=parts[0].image_size,
            boxes=np.concatenate([p.boxes for p in parts]),
            scores=np.concatenate([p.scores for p in parts]),
            classes=np.concatenate([p.classes for p in parts]),
            windows=np.concatenate([p.windows for p in parts]),
            probs=[m for p in parts for m in p.probs],
            class_scores=_concatenate_class_scores(parts),
        )

    def save(self, path: str | Path) -> None:
        """Write as a compressed .npz (probabilities flattened into one array)."""
        flat = np.concatenate([m.ravel() for m in self.probs]) if self.probs else np.zeros(0, np.uint8)
        np.savez_compressed(
            path,
            image_size=np.asarray(self.image_size, np.int64),
            boxes=self.boxes,
            scores=self.scores,
            classes=self.classes,
            windows=self.windows,
            probs=flat,
            **({} if self.class_scores is None else {"class_scores": self.class_scores}),
        )

    @classmethod
    def load(cls, path: str | Path) -> InstanceSet:
        with np.load(path) as data:
            windows = data["windows"].astype(np.int32)
            flat = data["probs"]
            areas = (windows[:, 3] - windows[:, 1]) * (windows[:, 2] - windows[:, 0])
            ends = np.cumsum(areas)
            probs = [
                flat[end - area : end].reshape(w[3] - w[1], w[2] - w[0])
                for w, area, end in zip(windows, areas, ends)
            ]
            return cls(
                image_size=tuple(int(v) for v in data["image_size"]),
                boxes=data["boxes"].astype(np.float32),
                scores=data["scores"].astype(np.float32),
                classes=data["classes"].astype(np.int64),
                windows=windows,
                probs=probs,
                class_scores=data["class_scores"].astype(np.float32) if "class_scores" in data else None,
            )

    def window_mask(self, i: int) -> np.ndarray:
        """Mask `i`'s pixels with a non-zero probability, inside its window: (h, w) bool."""
        return self.probs[i] > 0


def _concatenate_class_scores(parts: list[InstanceSet]) -> np.ndarray | None:
    """The parts' class scores one after the other; None unless every non-empty part has them."""
    parts = [p for p in parts if len(p)]
    if not parts or any(p.class_scores is None for p in parts):
        return None
    return np.concatenate([p.class_scores for p in parts])


def bounding_rect(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """x0, y0, x1, y1 (exclusive ends) of a 2-D bool mask's True pixels; None when it has none."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if not len(rows):
        return None
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def _quantise(masks: np.ndarray) -> np.ndarray:
    if masks.dtype == bool:
        return masks.astype(np.uint8) * np.uint8(PROB_SCALE)
    return np.rint(np.clip(masks, 0.0, 1.0) * PROB_SCALE).astype(np.uint8)


def quantised_threshold(threshold: float) -> int:
    """The threshold quantised like the probabilities, so `p >= t` holds at stored precision;
    at least 1, so that a mask never covers pixels it gave zero probability."""
    return max(1, int(np.rint(threshold * PROB_SCALE)))


def save_instance_sets(folder: str | Path, sets: dict[str, InstanceSet]) -> None:
    """Write one `<name>.npz` per image into `folder` (created), the layout of the predict and
    ensemble stages' output folders."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for name, instances in sets.items():
        instances.save(folder / f"{name}.npz")


def load_instance_sets(folder: str | Path, names: list[str] | None = None) -> dict[str, InstanceSet]:
    """Read `<name>.npz` files of `folder`: the given names (each must exist) or all, sorted."""
    return dict(iter_instance_sets(folder, names))


def iter_instance_sets(folder: str | Path, names: list[str] | None = None) -> Iterator[tuple[str, InstanceSet]]:
    """`(name, set)` of `load_instance_sets`, read one file at a time, so that a stage over
    thousands of images holds one image's set; every file is checked to exist first."""
    folder = Path(folder)
    names = instance_set_names(folder) if names is None else list(names)
    missing = [name for name in names if not (folder / f"{name}.npz").is_file()]
    if missing:
        raise FileNotFoundError(f"{folder}: no predictions for {', '.join(missing)}")
    for name in names:
        yield name, InstanceSet.load(folder / f"{name}.npz")


def instance_set_names(folder: str | Path) -> list[str]:
    """Names of the `<name>.npz` files of `folder`, sorted."""
    return sorted(path.stem for path in Path(folder).glob("*.npz"))


class StoredSets:
    """The `InstanceSet`s of the images `names` (in that order) in a predict folder, read from
    disk one at a time on each pass over them, so that scoring thousands of images never holds
    a model's predictions of all of them."""

    def __init__(self, folder: str | Path, names: list[str]):
        self.folder, self.names = Path(folder), list(names)

    def __len__(self) -> int:
        return len(self.names)

    def __iter__(self) -> Iterator[InstanceSet]:
        return (instances for _, instances in iter_instance_sets(self.folder, self.names))

    def subset(self, index) -> StoredSets:
        """The images at positions `index`, in that order, still read from disk."""
        return StoredSets(self.folder, [self.names[int(i)] for i in index])
