from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import ndimage

from cellseg.data.augment import SWITCHES, augment_tile, build_augment, enabled_switches
from cellseg.data.dataset import load_sample
from cellseg.training.data import instances_from_labels

GEOMETRIC = ("hflip", "vflip", "rot90", "scale_shift", "elastic")
EXACT = ("hflip", "vflip", "rot90")  # no resampling: pixels only move


def painted_tile(size=64):
    """Labels whose pixels are painted into the image: red = 60 x class-1 id, green = 60 x class-2 id.

    Class 1: squares ids 1, 2 and an L (id 3); class 2: one square (id 1) overlapping class-1 id 2.
    `center` marks class 1's foreground, `boundary` class 2's.
    """
    labels = np.zeros((2, size, size), np.int32)
    labels[0, 6:18, 8:22] = 1
    labels[0, 30:44, 34:50] = 2
    labels[0, 46:58, 6:12] = 3
    labels[0, 52:58, 12:24] = 3
    labels[1, 36:52, 40:56] = 1
    image = np.zeros((size, size, 3), np.uint8)
    image[..., 0] = labels[0] * 60
    image[..., 1] = labels[1] * 60
    return image, labels, (labels[0] > 0).astype(np.float16), (labels[1] > 0).astype(np.uint8)


def assert_painted(out, c, instance):
    """The augmented mask lies on the pixels painted with its id (the resampled image blurs edges).

    Class `c`'s foreground and the painted foreground differ only within 1 px of the mask's
    edge, and the instance's pixels carry its own paint (median), not a neighbour's.
    """
    paint = out["image"][..., c].astype(int)
    foreground, painted = out["labels"][c] > 0, paint >= 30
    edge = ndimage.binary_dilation(foreground) & ~ndimage.binary_erosion(foreground)
    assert not ((foreground ^ painted) & ~edge).any()
    assert abs(np.median(paint[out["labels"][c] == instance]) - 60 * instance) < 10


@pytest.mark.parametrize("switch", GEOMETRIC)
def test_geometry_moves_masks_maps_and_image_together(switch):
    image, labels, center, boundary = painted_tile()
    transform = build_augment("none", {switch: True})
    changed = 0
    for seed in range(8):
        out = augment_tile(transform, image, labels, center, boundary, seed=seed)
        assert out["image"].shape == image.shape and out["labels"].shape == labels.shape
        changed += not np.array_equal(out["labels"], labels)
        np.testing.assert_array_equal(out["center"] > 0.5, out["labels"][0] > 0)
        np.testing.assert_array_equal(out["boundary"] > 0.5, out["labels"][1] > 0)
        for c in range(2):
            for instance in np.unique(out["labels"][c][out["labels"][c] > 0]):
                if switch in EXACT:
                    np.testing.assert_array_equal(
                        out["labels"][c] == instance, out["image"][..., c] == 60 * instance
                    )
                else:
                    assert_painted(out, c, instance)
        target = instances_from_labels(out["labels"])
        for mask, box in zip(target["masks"].numpy().astype(bool), target["boxes"].numpy().astype(int)):
            x1, y1, x2, y2 = box
            assert mask[y1:y2, x1:x2].sum() == mask.sum()  # box encloses the mask ...
            assert mask[y1].any() and mask[y2 - 1].any() and mask[:, x1].any() and mask[:, x2 - 1].any()
    assert changed >= 2  # each switch fires with probability 0.5


@pytest.mark.parametrize("switch", ["color", "stain"])
def test_colour_changes_image_only(switch):
    image, labels, center, boundary = painted_tile()
    image = image + 40  # non-black background, for the stain transform
    transform = build_augment("none", {switch: True})
    outs = [augment_tile(transform, image, labels, center, boundary, seed=s) for s in range(8)]
    assert any(not np.array_equal(o["image"], image) for o in outs)
    for out in outs:
        np.testing.assert_array_equal(out["labels"], labels)
        np.testing.assert_array_equal(out["center"], center.astype(np.float32))


def test_same_seed_same_result():
    image, labels, center, boundary = painted_tile()
    transform = build_augment("strong")
    a = augment_tile(transform, image, labels, center, boundary, seed=3)
    augment_tile(transform, image, labels, center, boundary, seed=4)
    b = augment_tile(transform, image, labels, center, boundary, seed=3)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])


def test_presets_and_overrides():
    assert enabled_switches("none") == []
    assert enabled_switches("basic") == ["hflip", "vflip", "rot90"]
    assert enabled_switches("strong") == list(SWITCHES)
    assert enabled_switches("basic", {"vflip": False, "elastic": True}) == ["hflip", "rot90", "elastic"]
    assert build_augment("basic", {"hflip": False, "vflip": False, "rot90": False}) is None


def test_unknown_names_are_refused():
    with pytest.raises(ValueError, match="'heavy'"):
        build_augment("heavy")
    with pytest.raises(ValueError, match="'blur'"):
        build_augment("basic", {"blur": True})


def test_vanished_and_tiny_instances_are_dropped():
    labels = np.zeros((2, 16, 16), np.int32)
    labels[0, 2:5, 3:7] = 1  # 12 px
    labels[0, 10, 10:13] = 2  # 3 px: a remnant
    labels[1, 8:10, 1:3] = 2  # 4 px, id 1 absent
    target = instances_from_labels(labels)
    assert target["labels"].tolist() == [1, 2]
    assert target["boxes"].tolist() == [[3, 2, 7, 5], [1, 8, 3, 10]]
    assert target["masks"].dtype.is_floating_point is False and target["masks"].shape == (2, 16, 16)
    empty = instances_from_labels(np.zeros((2, 16, 16), np.int32))
    assert empty["boxes"].shape == (0, 4) and empty["masks"].shape == (0, 16, 16)


def test_the_schema_offers_exactly_the_pipelines_presets_and_switches():
    from cellseg.data import augment
    from cellseg.workflow.configuration import load_schema

    train = load_schema()["properties"]["train"]["properties"]
    assert set(train["augment_overrides"]["properties"]) == set(augment.SWITCHES)
    assert set(train["augment"]["enum"]) - {None} == set(augment.PRESETS)


CONSEP = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "consep"


def test_stain_jitter_off_adds_nothing():
    assert build_augment("none", stain_jitter=0.0) is None
    assert len(build_augment("basic", stain_jitter=0.1).transforms) == 4


@pytest.mark.skipif(not CONSEP.is_dir(), reason="real CoNSeP data not present")
def test_stain_jitter_recolours_a_real_tile_only():
    """HED jitter on a real H&E patch: colours change, by the same amount for the same seed,
    while labels, maps and the boxes drawn from them stay as they were."""
    source = {"format": "reference", "path": str(CONSEP), "classes": ["class1", "class2", "class3", "class4"]}
    sample = load_sample(source, "train_1_000")
    image, labels = sample.image[:128, :128], sample.labels[:, :128, :128]
    center, boundary = np.zeros((2, 128, 128), np.float32)
    transform = build_augment("none", stain_jitter=0.2)
    outs = [augment_tile(transform, image, labels, center, boundary, seed=s) for s in range(6)]
    changed = [o for o in outs if not np.array_equal(o["image"], image)]
    assert changed  # each tile is jittered with probability 0.5
    for out in changed:
        assert np.abs(out["image"].astype(int) - image).mean() > 1
    again = augment_tile(transform, image, labels, center, boundary, seed=0)
    np.testing.assert_array_equal(again["image"], outs[0]["image"])
    boxes = instances_from_labels(labels)["boxes"]
    for out in outs:
        np.testing.assert_array_equal(out["labels"], labels)
        np.testing.assert_array_equal(out["center"], center)
        assert torch.equal(instances_from_labels(out["labels"])["boxes"], boxes)
