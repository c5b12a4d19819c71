"""Training tiles as a torch Dataset, and a DataLoader whose order and augmentation can be replayed.

Every random choice of the input pipeline is a function of (seed, epoch, index): the sampler
shuffles each epoch with a generator seeded from (seed, epoch) and the dataset augments item
`index` of epoch `epoch` with a seed derived from all three. Nothing depends on global RNG
streams or on which worker loads what, so a run resumed at any step sees exactly the batches
an uninterrupted run would have seen, whatever `num_workers` is.

Tiles without instances are kept: torchvision's Mask R-CNN trains on empty targets (all
proposals become background), which teaches it that empty areas are empty.
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from cellseg.data.augment import augment_tile
from cellseg.data.copy_paste import CopyPaste
from cellseg.data.tiles import load_tile, read_index

MIN_INSTANCE_AREA = 4  # px; smaller remnants left by augmentation are dropped


def derived_seed(*keys: int) -> int:
    """A 32-bit seed that depends on every key (e.g. seed, epoch, index), well mixed."""
    return int(np.random.SeedSequence([int(k) & 0xFFFFFFFF for k in keys]).generate_state(1)[0])


def training_tiles(tsv_paths: Iterable[str | os.PathLike], image_ids: Iterable[str]) -> pd.DataFrame:
    """Tile index rows of `image_ids`, with an `npz` column: the tiles file beside each TSV.

    Rows are sorted by (`image_id`, `tile`), so the table does not depend on the order of paths.
    """
    wanted = set(image_ids)
    parts = []
    for path in tsv_paths:
        index = read_index([path])
        parts.append(index[index["image_id"].isin(wanted)].assign(npz=str(Path(path).with_suffix(".npz"))))
    table = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=["image_id", "tile", "npz"])
    missing = wanted - set(table["image_id"])
    if missing:
        raise ValueError(f"no tiles for training images {sorted(missing)[:5]}")
    return table.sort_values(["image_id", "tile"], kind="stable").reset_index(drop=True)


def fold_image_ids(split: pd.DataFrame, fold: int) -> tuple[list[str], list[str]]:
    """(training, held-out) image ids of `fold`, from `split.tsv`: the fold's model trains on the
    other folds' images and is validated on the fold's own (`split.folds` is at least 2, so that
    the validation set stays unseen until tuning).
    """
    train = split[split["subset"] == "train"]
    folds = sorted(set(train["fold"]))
    if fold not in folds or len(folds) < 2:
        raise ValueError(f"fold {fold}: the split must hold it and at least one other fold (folds: {folds})")
    own = train["fold"] == fold
    return sorted(train.loc[~own, "image_id"]), sorted(train.loc[own, "image_id"])


def repeat_factors(tiles: pd.DataFrame, class_names: Sequence[str], threshold: float) -> np.ndarray:
    """LVIS repeat factor of each tile (Gupta et al. 2019): `r = max(1, max_c sqrt(t / f_c))` over
    the classes c in the tile, where `f_c` is the fraction of training tiles that hold class c
    and `t` is `threshold`. Returns `(N,)` float64; a tile without instances gets 1.
    """
    present = tiles[[f"n_{name}" for name in class_names]].to_numpy() > 0
    frequency = present.mean(axis=0)
    per_class = np.maximum(1.0, np.sqrt(threshold / np.where(frequency > 0, frequency, np.inf)))
    return np.where(present, per_class, 1.0).max(axis=1, initial=1.0)


def class_instance_counts(tiles: pd.DataFrame, class_names: Sequence[str]) -> list[int]:
    """Instances per class over the training tiles, from the index's `n_<class name>` columns."""
    return [int(tiles[f"n_{name}"].sum()) for name in class_names]


def instances_from_labels(labels: np.ndarray, min_area: int = MIN_INSTANCE_AREA) -> dict[str, torch.Tensor]:
    """One target instance per label id of each class plane, with its box recomputed from the mask.

    `labels` `(C, H, W)` int, 0 = background. Returns `masks` `(N, H, W) uint8`, `labels` `(N,)`
    int64 (class index + 1) and `boxes` `(N, 4)` float32 xyxy (x2, y2 exclusive). Instances
    under `min_area` px are dropped.
    """
    height, width = labels.shape[1:]
    masks, classes, boxes = [], [], []
    for c, plane in enumerate(labels):
        areas = np.bincount(plane.ravel())
        for instance in np.flatnonzero(areas[1:] >= min_area) + 1:
            mask = plane == instance
            rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
            masks.append(mask)
            classes.append(c + 1)
            boxes.append([cols[0], rows[0], cols[-1] + 1, rows[-1] + 1])
    return {
        "masks": torch.from_numpy(np.array(masks, np.uint8).reshape(-1, height, width)),
        "labels": torch.tensor(classes, dtype=torch.int64),
        "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
    }


def image_to_tensor(image: np.ndarray) -> torch.Tensor:
    """`(H, W, 3) uint8` -> `(3, H, W) float32` in [0, 1], as the model takes it."""
    return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().div_(255.0)


class TileDataset(Dataset):
    """Training tiles addressed by `(epoch, index)` keys (see `EpochSampler`).

    `tiles` has one row per tile with `npz` (tiles file) and `tile` (k). `transform` is an
    augmentation pipeline from `cellseg.data.augment.build_augment` or None. Make one dataset per
    use: a validation dataset is never this object with its transform switched off.
    `copy_paste`: the probability that a tile gets instances of another tile pasted in
    (`cellseg.data.copy_paste`, before the transform); `class_names` name the index's `n_<class>`
    columns, from which it picks rare-class donors.
    Items are `(image (3, S, S) float32 in [0, 1], target)`, target as Mask R-CNN takes it plus
    `center` and `boundary` `(S, S) float32`.
    """

    def __init__(
        self, tiles: pd.DataFrame, transform, seed: int, copy_paste: float = 0.0, class_names: Sequence[str] = ()
    ):
        self.paths = tiles["npz"].astype(str).tolist()
        self.ks = tiles["tile"].astype(int).tolist()
        self.transform = transform
        self.seed = seed
        self.copy_paste = CopyPaste(tiles, class_names, copy_paste, self._load) if copy_paste > 0 else None
        self._open_files: dict[str, np.lib.npyio.NpzFile] = {}
        self._opened_by = os.getpid()

    def _load(self, index: int) -> dict[str, np.ndarray]:
        return load_tile(self._open(self.paths[index]), self.ks[index])

    def _open(self, path: str) -> np.lib.npyio.NpzFile:
        """The tiles file at `path`, kept open in this process: a shard's npz holds thousands of
        members, and reading its zip directory again for every tile costs far more than the
        tile. A forked DataLoader worker opens its own (a shared file offset would mix reads)."""
        if self._opened_by != os.getpid():
            self._open_files, self._opened_by = {}, os.getpid()
        if path not in self._open_files:
            self._open_files[path] = np.load(path)
        return self._open_files[path]

    def __getstate__(self) -> dict:
        """Pickled (spawned DataLoader workers) without the open files."""
        return {**self.__dict__, "_open_files": {}}

    def __len__(self) -> int:
        return len(self.ks)

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        epoch, index = key
        tile = self._load(index)
        if self.copy_paste is not None:
            tile = self.copy_paste(tile, np.random.default_rng(derived_seed(self.seed, epoch, index, 1)))
        if self.transform is not None:
            tile = augment_tile(self.transform, **tile, seed=derived_seed(self.seed, epoch, index))
        target = instances_from_labels(tile["labels"])
        target["center"] = torch.from_numpy(tile["center"].astype(np.float32))
        target["boundary"] = torch.from_numpy(tile["boundary"].astype(np.float32))
        return image_to_tensor(tile["image"]), target


class EpochSampler(Sampler):
    """Yields `(epoch, index)` keys: a permutation seeded by (seed, epoch), minus `skip` leading items.

    With `repeat` (`(N,)` repeat factors, see `repeat_factors`), an epoch holds
    `round(sum(repeat))` items: each index `floor(r)` times, plus one more for indices drawn
    (without replacement, weighted by the fractional parts) from the same seeded generator, so
    that an index appears about `r` times per epoch and every epoch has the same length.
    """

    def __init__(self, n_items: int, seed: int, repeat: np.ndarray | None = None):
        self.n_items = n_items
        self.seed = seed
        self.epoch = 0
        self.skip = 0
        self.repeat = None if repeat is None else np.asarray(repeat, np.float64)
        self.epoch_length = n_items if repeat is None else int(round(self.repeat.sum()))

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        self.epoch, self.skip = epoch, skip

    def __iter__(self) -> Iterator[tuple[int, int]]:
        generator = torch.Generator().manual_seed(derived_seed(self.seed, self.epoch))
        if self.repeat is None:
            order = torch.randperm(self.n_items, generator=generator).tolist()
        else:
            base = np.floor(self.repeat)
            items = torch.from_numpy(np.repeat(np.arange(self.n_items), base.astype(np.int64)))
            extra = self.epoch_length - len(items)
            if extra > 0:
                fraction = torch.from_numpy(self.repeat - base)
                items = torch.cat([items, torch.multinomial(fraction, extra, replacement=False, generator=generator)])
            order = items[torch.randperm(len(items), generator=generator)].tolist()
        return iter([(self.epoch, i) for i in order[self.skip :]])

    def __len__(self) -> int:
        return self.epoch_length - self.skip


def collate(batch):
    """A batch as (list of images, list of targets): images of a batch may differ in size."""
    images, targets = zip(*batch)
    return list(images), list(targets)


def _seed_worker(worker_id: int) -> None:
    """Seed numpy and random in a worker from torch's per-worker seed (for any library that uses them)."""
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def make_loader(
    dataset: TileDataset, batch_size: int, num_workers: int, seed: int, repeat: np.ndarray | None = None
) -> DataLoader:
    """A shuffling DataLoader over `dataset` (each tile about `repeat[i]` times per epoch, see
    `EpochSampler`); call `start_epoch` before iterating each epoch."""
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=EpochSampler(len(dataset), seed, repeat),
        num_workers=num_workers,
        collate_fn=collate,
        worker_init_fn=_seed_worker,
        generator=torch.Generator().manual_seed(seed),
        persistent_workers=False,
    )


def start_epoch(loader: DataLoader, epoch: int, skip_batches: int = 0) -> None:
    """Set the epoch's order and worker seeds from (seed, epoch); skip batches already trained on."""
    sampler: EpochSampler = loader.sampler
    sampler.set_epoch(epoch, skip_batches * loader.batch_size)
    loader.generator.manual_seed(derived_seed(sampler.seed, epoch))
