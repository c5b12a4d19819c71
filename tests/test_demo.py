"""The demo dataset: deterministic, real-file quirks, read back like real data."""

import json

import numpy as np
import pytest
import tifffile

from cellseg.common.errors import ConfigError
from cellseg.data.dataset import index_dataset, load_ground_truth, load_sample, load_test_image
from cellseg.data.demo import demo_ids, write_demo_dataset
from cellseg.workflow.configuration import resolve_config


def _files(root):
    return {p.relative_to(root): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_demo_ids():
    assert demo_ids(2, 1) == (["demo_train_000", "demo_train_001"], ["demo_test_000"])


def test_same_seed_gives_identical_files(demo_dir, tmp_path):
    write_demo_dataset(tmp_path / "again", seed=0, n_train=4, n_test=2)
    assert _files(tmp_path / "again") == _files(demo_dir)
    write_demo_dataset(tmp_path / "other", seed=1, n_train=4, n_test=2)
    assert _files(tmp_path / "other") != _files(demo_dir)


def test_files_have_the_real_quirks(demo_dir):
    with tifffile.TiffFile(demo_dir / "train" / "demo_train_001" / "image.tif") as tif:
        page = tif.pages[0]
        assert (page.shape, page.dtype, page.compression, page.predictor) == (
            (256, 256, 4),
            np.uint8,
            5,
            2,
        )
    mask = tifffile.imread(demo_dir / "train" / "demo_train_001" / "class2.tif")
    ids = np.unique(mask)[1:]
    assert mask.dtype == np.float64 and ids.max() > len(ids)  # ids skip
    id_map = json.loads((demo_dir / "test_image_name_to_ids.json").read_text())
    assert [e["file_name"] for e in id_map] == ["demo_test_000.tif", "demo_test_001.tif"]
    assert all(isinstance(e["id"], int) for e in id_map)


def test_read_back_like_real_data(demo_dir, demo_source):
    index = index_dataset(demo_source)
    assert index.train_ids == demo_ids(4, 2)[0]
    samples = [load_sample(demo_source, image_id) for image_id in index.train_ids]
    sizes = [s.image.shape[:2] for s in samples]
    assert sizes[0] == (40, 90) and sizes[1] == (256, 256)  # smaller and larger than a 128 px tile
    assert not (demo_dir / "train" / "demo_train_002" / "class4.tif").exists()
    assert not samples[2].labels[3].any()  # an image lacking a class
    for sample in samples:
        counts = [int(plane.max()) for plane in sample.labels]
        assert 5 <= sum(counts) <= 40
        areas = np.concatenate([np.bincount(plane.ravel())[1:] for plane in sample.labels])
        assert areas.min() >= 30
    big = samples[1].labels > 0
    assert any(
        (big[a] & big[b]).any() for a in range(4) for b in range(a + 1, 4)
    )  # classes overlap
    touching = any(
        ((plane[:, 1:] != plane[:, :-1]) & (plane[:, 1:] > 0) & (plane[:, :-1] > 0)).any()
        | ((plane[1:] != plane[:-1]) & (plane[1:] > 0) & (plane[:-1] > 0)).any()
        for sample in samples
        for plane in sample.labels
    )
    assert touching  # two instances of one class share an edge


def test_classes_differ_in_colour_and_size(demo_source):
    sample = load_sample(demo_source, "demo_train_001")
    means = np.array([sample.image[plane > 0].mean(axis=0) for plane in sample.labels])
    assert np.linalg.norm(means[:, None] - means[None], axis=-1)[np.triu_indices(4, 1)].min() > 30
    areas = [np.bincount(plane.ravel())[1:].mean() for plane in sample.labels]
    assert areas[0] > areas[2] > areas[1]  # class1 large, class3 medium, class2 small


def test_test_images_and_ground_truth(demo_dir, demo_source):
    for test_image in index_dataset(demo_source).test_images:
        image = load_test_image(test_image)
        truth = load_ground_truth(
            demo_dir / "test_gt", test_image.file_name, demo_source["classes"]
        )
        assert truth.shape == (4, *image.shape[:2]) and truth.any()


def test_more_classes_than_the_demo_draws_fail_before_the_dag():
    with pytest.raises(ConfigError, match="classes: the demo dataset draws up to 4 classes"):
        resolve_config({"classes": ["class1", "class2", "class3", "class4", "class5"]})
