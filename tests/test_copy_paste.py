import numpy as np
import pandas as pd

from cellseg.data.copy_paste import CopyPaste, paste_instances


def tile(labels, value):
    """A tile dict around `labels` `(C, H, W)`: an image filled with `value`, maps from labels."""
    labels = np.asarray(labels, np.int32)
    height, width = labels.shape[1:]
    return {
        "image": np.full((height, width, 3), value, np.uint8),
        "labels": labels,
        "center": (labels.sum(axis=0) > 0).astype(np.float32) * value / 255,
        "boundary": np.zeros((height, width), np.uint8) + (value == 200),
    }


def test_paste_covers_what_is_below_and_appends_ids():
    target_labels = np.zeros((2, 4, 6), np.int32)
    target_labels[0, 0:2, 0:3] = 1  # class 1 cell, will be half covered
    target_labels[1, 2:4, 4:6] = 1  # class 2 cell, untouched
    donor_labels = np.zeros((2, 4, 6), np.int32)
    donor_labels[0, 1:3, 1:3] = 5  # class 1 donor cell (id 5)
    donor_labels[1, 0:1, 5:6] = 2  # class 2 donor cell, not picked
    out = paste_instances(tile(target_labels, 10), tile(donor_labels, 200), [(0, 5)])
    expected_class1 = np.array([
        [1, 1, 1, 0, 0, 0],
        [1, 2, 2, 0, 0, 0],
        [0, 2, 2, 0, 0, 0],
        [0, 0, 0, 0, 0, 0],
    ])
    assert (out["labels"][0] == expected_class1).all()
    assert (out["labels"][1] == target_labels[1]).all()
    region = expected_class1 == 2
    assert (out["image"][region] == 200).all() and (out["image"][~region] == 10).all()
    assert (out["boundary"][region] == 1).all() and (out["boundary"][~region] == 0).all()
    assert (target_labels[0, 0:2, 0:3] == 1).all()  # the inputs are not modified


def test_donors_and_pastes_favour_the_rare_class():
    # 20 tiles of 8 px: all hold common class a; 2 also hold rare class b.
    tiles = []
    for i in range(20):
        labels = np.zeros((2, 8, 8), np.int32)
        labels[0, 0:3, 0:3] = 1
        if i < 2:
            labels[1, 4:7, 4:7] = 1
        tiles.append(tile(labels, 50 + i))
    index = pd.DataFrame({"n_a": [1] * 20, "n_b": [1, 1] + [0] * 18})
    paste = CopyPaste(index, ["a", "b"], probability=1.0, load_donor=lambda i: tiles[i])
    assert paste.rarity.tolist() == [1.0, np.sqrt(10)]  # sqrt(20 / 2)
    rare_pasted = sum(paste(tiles[10], np.random.default_rng(seed))["labels"][1].max() for seed in range(300))
    # a donor holds b with probability 2 * sqrt(10) / (2 * sqrt(10) + 18) = 0.26, and b is then
    # always pasted (0.25 * sqrt(10) > 1), against 2 / 20 = 0.1 for a uniform donor
    assert 0.18 < rare_pasted / 300 < 0.34
    a = np.random.default_rng(7)
    b = np.random.default_rng(7)
    assert all((paste(tiles[3], a)[k] == paste(tiles[3], b)[k]).all() for k in ("image", "labels"))
    never = CopyPaste(index, ["a", "b"], probability=0.0, load_donor=lambda i: tiles[i])
    assert never(tiles[3], np.random.default_rng(0)) is tiles[3]
