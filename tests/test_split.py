import numpy as np
import pandas as pd
import pytest

from cellseg.common.errors import ConfigError
from cellseg.data.split import count_instances, make_split


def unbalanced_table(n_images=60, seed=0):
    """Images with a common class, a mid class and a class present in a quarter of the images."""
    rng = np.random.default_rng(seed)
    return pd.DataFrame({
        "image_id": [f"img{i:03d}" for i in range(n_images)],
        "height": 256,
        "width": 256,
        "n_common": rng.poisson(200, n_images),
        "n_mid": rng.poisson(30, n_images) * (rng.random(n_images) < 0.6),
        "n_rare": rng.poisson(20, n_images) * (rng.random(n_images) < 0.25),
    })


def fold_imbalance(table, fold, n_folds):
    """Mean over classes of the largest relative deviation of a fold's count from its share.

    A fold's share of a class is the class total times the fold's fraction of the images.
    """
    cols = ["n_common", "n_mid", "n_rare"]
    train, fold = table[fold >= 0], fold[fold >= 0]
    per_fold = np.stack([train[fold == k][cols].sum().to_numpy() for k in range(n_folds)])
    share = np.bincount(fold, minlength=n_folds)[:, None] / len(fold)
    ideal = per_fold.sum(axis=0) * share
    return float(np.mean(np.abs(per_fold - ideal).max(axis=0) / ideal))


def test_every_image_in_exactly_one_place():
    table = unbalanced_table()
    split = make_split(table, val_fraction=0.2, n_folds=5, seed=1)
    assert list(split["image_id"]) == sorted(table["image_id"])
    assert set(split.columns) >= set(table.columns) | {"subset", "fold"}
    val = split["subset"] == "val"
    assert val.sum() == 12
    assert (split.loc[val, "fold"] == -1).all()
    assert set(split.loc[~val, "fold"]) == set(range(5))
    assert split.loc[~val, "fold"].value_counts().tolist() == [10, 10, 10, 9, 9]


def test_deterministic_and_independent_of_row_order():
    table = unbalanced_table()
    a = make_split(table, 0.2, 5, seed=3)
    b = make_split(table.sample(frac=1.0, random_state=7), 0.2, 5, seed=3)
    pd.testing.assert_frame_equal(a, b)
    c = make_split(table, 0.2, 5, seed=4)
    assert not a["fold"].equals(c["fold"])


def test_folds_balanced_better_than_random():
    table = unbalanced_table()
    split = make_split(table, 0.2, 5, seed=0)
    fold = split["fold"].to_numpy()
    stratified = fold_imbalance(split, fold, 5)
    rng = np.random.default_rng(0)
    random = np.mean([fold_imbalance(split, rng.permutation(fold), 5) for _ in range(50)])
    assert stratified < 0.15
    assert stratified < random / 3


def test_small_table_keeps_one_val_image():
    table = unbalanced_table(n_images=4)
    split = make_split(table, val_fraction=0.01, n_folds=3, seed=0)
    assert (split["subset"] == "val").sum() == 1
    assert sorted(split["fold"]) == [-1, 0, 1, 2]


def test_too_few_images_for_folds():
    with pytest.raises(ConfigError, match="split.folds"):
        make_split(unbalanced_table(n_images=4), val_fraction=0.25, n_folds=4, seed=0)


def test_count_instances():
    labels = np.zeros((2, 5, 5), np.int32)
    labels[0, :2, :2] = 1
    labels[0, 3:, 3:] = 3
    assert count_instances(labels) == [2, 0]


def test_instance_count_table_reads_the_demo(demo_source):
    from cellseg.data.dataset import index_dataset, load_sample
    from cellseg.data.split import instance_count_table

    ids = index_dataset(demo_source).train_ids
    table = instance_count_table(demo_source, ids)
    assert table["image_id"].tolist() == ids
    first = load_sample(demo_source, ids[0])
    assert (table.loc[0, "height"], table.loc[0, "width"]) == first.image.shape[:2]
    assert table.loc[0, "n_class1"] == len(np.unique(first.labels[0])) - 1


def grouped_table(n_groups=12, per_group=4, seed=0):
    """Patches `slide<g>_<p>` of `n_groups` slides, with slide-dependent class counts."""
    rng = np.random.default_rng(seed)
    ids = [f"slide{g:02d}_{p}" for g in range(n_groups) for p in range(per_group)]
    return pd.DataFrame({
        "image_id": ids,
        "height": 64,
        "width": 64,
        "n_common": rng.poisson(50, len(ids)),
        "n_rare": np.repeat(rng.random(n_groups) < 0.3, per_group) * rng.poisson(5, len(ids)),
    })


def test_group_by_keeps_each_group_in_one_fold_or_the_validation_set():
    table = grouped_table()
    split = make_split(table, val_fraction=0.25, n_folds=3, seed=0, group_by=r"^(slide\d+)_")
    assert split["group"].tolist() == [i.split("_")[0] for i in split["image_id"]]
    # every group sits in exactly one place: one (subset, fold) pair per group
    places = split.groupby("group")[["subset", "fold"]].nunique()
    assert (places == 1).all().all()
    assert split.loc[split["subset"] == "val", "group"].nunique() == 3  # round(0.25 * 12) groups
    assert split.loc[split["subset"] == "train"].groupby("fold")["group"].nunique().tolist() == [3, 3, 3]


def test_without_group_by_every_image_is_its_own_group():
    table = unbalanced_table()
    split = make_split(table, 0.2, 5, seed=1)
    assert split["group"].tolist() == split["image_id"].tolist()


@pytest.mark.parametrize(
    ("group_by", "message"),
    [
        (r"^(lung\d+)_", "does not match 48 of 48 image ids, e.g. slide00_0"),
        (r"^slide\d+_", "has no capture group"),
        (r"^(slide", "not a valid regex"),
    ],
)
def test_bad_group_by_names_the_key(group_by, message):
    with pytest.raises(ConfigError, match="split.group_by") as error:
        make_split(grouped_table(), 0.25, 3, seed=0, group_by=group_by)
    assert message in str(error.value)


def test_too_few_groups_for_the_folds_names_split_folds():
    with pytest.raises(ConfigError, match="split.folds = 3 needs at least 3 non-validation groups"):
        make_split(grouped_table(n_groups=3), 0.25, 3, seed=0, group_by=r"^(slide\d+)_")
