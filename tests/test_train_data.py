import numpy as np
import pandas as pd
import pytest
import torch

from cellseg.data.augment import build_augment
from cellseg.data.target_maps import compute_maps
from cellseg.data.tiles import make_tiles, save_tiles
from cellseg.training.data import (
    EpochSampler,
    TileDataset,
    class_instance_counts,
    fold_image_ids,
    make_loader,
    repeat_factors,
    start_epoch,
    training_tiles,
)

CLASSES = ["disk", "square"]


def synthetic_image(seed: int, size: int = 96):
    """Red disks (class 1, radius 6) and blue squares (class 2, side 9) on a dark, noisy background.

    Cells sit on a jittered 24 px grid, one per cell, class drawn at random. Returns image
    `(S, S, 3) uint8` and labels `(2, S, S) int32`.
    """
    rng = np.random.default_rng(seed)
    image = rng.normal(30, 8, (size, size, 3))
    labels = np.zeros((2, size, size), np.int32)
    yy, xx = np.mgrid[:size, :size]
    for gy in range(12, size, 24):
        for gx in range(12, size, 24):
            if rng.random() < 0.15:
                continue
            cy, cx = gy + rng.integers(-3, 4), gx + rng.integers(-3, 4)
            if rng.random() < 0.5:
                mask, c, colour = (yy - cy) ** 2 + (xx - cx) ** 2 <= 36, 0, (200, 60, 60)
            else:
                mask, c, colour = (abs(yy - cy) <= 4) & (abs(xx - cx) <= 4), 1, (50, 70, 210)
            labels[c][mask] = labels[c].max() + 1
            image[mask] = colour
    return np.clip(image, 0, 255).astype(np.uint8), labels


def write_tiles(folder, image_ids, size=96, tile=64):
    """Tiles files (`{id}.npz`, `{id}.tsv`) of synthetic images; returns the TSV paths and samples."""
    tsvs, samples = [], {}
    for i, image_id in enumerate(image_ids):
        image, labels = synthetic_image(i, size)
        maps = compute_maps(labels, sigma=2.0, width=1)
        tiles, index = make_tiles(
            image, labels, maps["center"], maps["boundary"], tile, 16, False, 4,
            image_id=image_id, class_names=CLASSES,
        )
        save_tiles(folder / f"{image_id}.npz", folder / f"{image_id}.tsv", tiles, index)
        tsvs.append(folder / f"{image_id}.tsv")
        samples[image_id] = (image, labels)
    return tsvs, samples


@pytest.fixture(scope="module")
def tiles(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiles")
    tsvs, _ = write_tiles(folder, ["b", "a", "c"])
    return training_tiles(tsvs, ["a", "b"])


def test_training_tiles_keeps_the_requested_images(tiles):
    assert list(tiles["image_id"].unique()) == ["a", "b"]
    assert len(tiles) == 8  # 2 x 2 tiles of 64 px with overlap 16 per 96 px image
    assert all(path.endswith(f"{i}.npz") for path, i in zip(tiles["npz"], tiles["image_id"]))
    assert class_instance_counts(tiles, CLASSES) == [
        int(tiles["n_disk"].sum()), int(tiles["n_square"].sum())
    ]
    with pytest.raises(ValueError, match="zz"):
        training_tiles([tiles["npz"][0].replace(".npz", ".tsv")], ["a", "zz"])


def test_items_hold_one_instance_per_label(tiles):
    dataset = TileDataset(tiles, transform=None, seed=0)
    image, target = dataset[(0, 3)]
    with np.load(tiles["npz"][3]) as npz:
        labels = npz[f"labels_{tiles['tile'][3]}"]
        pixels = npz[f"image_{tiles['tile'][3]}"]
    assert image.shape == (3, 64, 64) and image.dtype == torch.float32
    assert torch.equal(image, torch.from_numpy(pixels).permute(2, 0, 1) / 255.0)
    assert sorted(target["labels"].tolist()) == sorted([1] * labels[0].max() + [2] * labels[1].max())
    for mask, label in zip(target["masks"].numpy(), target["labels"].tolist()):
        assert len(np.unique(labels[label - 1][mask > 0])) == 1
    assert target["center"].shape == target["boundary"].shape == (64, 64)
    assert target["center"].dtype == torch.float32


def test_augmentation_depends_only_on_seed_epoch_and_index(tiles):
    dataset = TileDataset(tiles, transform=build_augment("strong"), seed=0)
    a, b = dataset[(1, 2)], dataset[(1, 2)]
    dataset[(0, 5)]
    c = dataset[(1, 2)]
    assert torch.equal(a[0], b[0]) and torch.equal(a[0], c[0])
    assert torch.equal(a[1]["masks"], c[1]["masks"])
    assert any(not torch.equal(dataset[(e, 2)][0], a[0]) for e in range(2, 6))


def batches(loader, epoch, skip=0):
    start_epoch(loader, epoch, skip)
    return [(images, [t["boxes"] for t in targets]) for images, targets in loader]


def test_loader_order_replays_after_a_skip_and_across_worker_counts(tiles):
    dataset = TileDataset(tiles, transform=build_augment("basic"), seed=0)
    full = batches(make_loader(dataset, 3, 0, seed=0), epoch=1)
    assert [len(images) for images, _ in full] == [3, 3, 2]
    resumed = batches(make_loader(dataset, 3, 0, seed=0), epoch=1, skip=1)
    threaded = batches(make_loader(TileDataset(tiles, build_augment("basic"), seed=0), 3, 1, seed=0), epoch=1)
    for (ia, ba), (ib, bb) in zip(full[1:], resumed):
        assert all(torch.equal(x, y) for x, y in zip(ia + ba, ib + bb))
    for (ia, ba), (ib, bb) in zip(full, threaded):
        assert all(torch.equal(x, y) for x, y in zip(ia + ba, ib + bb))
    other_epoch = batches(make_loader(dataset, 3, 0, seed=0), epoch=2)
    assert not all(torch.equal(x, y) for x, y in zip(full[0][0], other_epoch[0][0]))


def test_empty_tiles_are_kept(tmp_path):
    image = np.zeros((64, 64, 3), np.uint8)
    labels = np.zeros((2, 64, 64), np.int32)
    maps = compute_maps(labels, sigma=2.0, width=1)
    tiles, index = make_tiles(image, labels, maps["center"], maps["boundary"], 64, 16, False, 4,
                              image_id="e", class_names=CLASSES)
    save_tiles(tmp_path / "e.npz", tmp_path / "e.tsv", tiles, index)
    table = training_tiles([tmp_path / "e.tsv"], ["e"])
    _, target = TileDataset(table, None, seed=0)[(0, 0)]
    assert target["boxes"].shape == (0, 4) and target["masks"].shape == (0, 64, 64)


def test_fold_ids_hold_out_the_fold():
    split = pd.DataFrame(
        {"image_id": ["a", "b", "c", "d"], "subset": ["val", "train", "train", "train"], "fold": [-1, 0, 1, 0]}
    )
    assert fold_image_ids(split, 0) == (["c"], ["b", "d"])
    with pytest.raises(ValueError, match="at least one other fold"):
        fold_image_ids(split.assign(fold=[-1, 0, 0, 0]), 0)


def test_repeat_factors_follow_the_rarest_class_of_each_tile():
    # 10 tiles: class a in all, class b in 1 (f = 0.1), class c in 4 (f = 0.4), one tile empty.
    index = pd.DataFrame({
        "n_a": [3] * 9 + [0],
        "n_b": [1] + [0] * 9,
        "n_c": [0, 2, 2, 2, 2, 0, 0, 0, 0, 0],
    })
    r = repeat_factors(index, ["a", "b", "c"], threshold=0.4)
    # tile 0: max(sqrt(0.4/0.9) -> 1, sqrt(0.4/0.1) = 2) = 2; tiles 1-4: sqrt(0.4/0.4) = 1.
    assert r.tolist() == pytest.approx([2.0] + [1.0] * 9)
    r = repeat_factors(index, ["a", "b", "c"], threshold=0.9)
    assert r.tolist() == pytest.approx([3.0] + [1.5] * 4 + [1.0] * 5)


def test_repeat_sampling_keeps_the_epoch_length_and_repeats_on_average():
    repeat = np.array([3.0, 1.5, 1.5, 1.0, 1.0, 1.2])
    sampler = EpochSampler(len(repeat), seed=0, repeat=repeat)
    counts = np.zeros(len(repeat))
    for epoch in range(400):
        sampler.set_epoch(epoch)
        keys = list(sampler)
        assert len(keys) == len(sampler) == 9  # round(9.2)
        assert all(e == epoch for e, _ in keys)
        counts += np.bincount([i for _, i in keys], minlength=len(repeat))
    per_epoch = counts / 400
    assert per_epoch[0] == 3.0 and per_epoch[3] == per_epoch[4] == 1.0  # whole factors: exact
    assert per_epoch[1:3].sum() + per_epoch[5] == pytest.approx(4.0)  # 9 - 3 - 2 drawn among fractions
    assert per_epoch[1] == pytest.approx(1.45, abs=0.1) and per_epoch[5] == pytest.approx(1.1, abs=0.1)
    sampler.set_epoch(7)
    first = list(sampler)
    sampler.set_epoch(7, skip=4)
    assert list(sampler) == first[4:]


def test_copy_paste_pastes_rare_instances_deterministically(tiles):
    dataset = TileDataset(tiles, transform=None, seed=0, copy_paste=1.0, class_names=CLASSES)
    plain = TileDataset(tiles, transform=None, seed=0)
    changed = 0
    for index in range(len(tiles)):
        a, b = dataset[(0, index)], dataset[(0, index)]
        assert torch.equal(a[0], b[0]) and torch.equal(a[1]["masks"], b[1]["masks"])
        original = plain[(0, index)]
        if not torch.equal(a[0], original[0]):
            changed += 1
            # every target still has one instance per label, with a box around its mask
            for mask, box in zip(a[1]["masks"], a[1]["boxes"]):
                ys, xs = torch.nonzero(mask, as_tuple=True)
                assert box.tolist() == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
    assert changed >= len(tiles) // 2
