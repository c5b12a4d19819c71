import numpy as np
import pytest

from cellseg.common.instances import InstanceSet


def two_instances() -> InstanceSet:
    masks = np.zeros((2, 20, 30), np.float32)
    masks[0, 2:6, 3:9] = 0.9
    masks[0, 6, 3:9] = 0.3
    masks[1, 10:18, 20:28] = 1.0
    boxes = np.array([[3, 2, 9, 7], [20, 10, 28, 18]], np.float32)
    return InstanceSet.from_dense(boxes, np.array([0.8, 0.6]), np.array([1, 2]), masks)


def test_windows_are_tight_and_paste_restores_masks():
    instances = two_instances()
    assert instances.windows.tolist() == [[3, 2, 9, 7], [20, 10, 28, 18]]
    pasted = instances.paste(0)
    assert pasted.shape == (20, 30)
    assert np.isclose(pasted[3, 4], 0.9, atol=1 / 255)
    assert pasted[:, 10:].max() == 0


def test_binary_mask_threshold_is_inclusive():
    instances = two_instances()
    assert instances.binary_mask(0, 0.3).sum() == 5 * 6
    assert instances.binary_mask(0, 0.5).sum() == 4 * 6
    assert (instances.binary_masks(0.5)[1] == (instances.paste(1) >= 0.5)).all()


def test_save_load_round_trip(tmp_path):
    instances = two_instances()
    instances.save(tmp_path / "x.npz")
    loaded = InstanceSet.load(tmp_path / "x.npz")
    assert loaded.image_size == (20, 30)
    np.testing.assert_array_equal(loaded.boxes, instances.boxes)
    np.testing.assert_array_equal(loaded.classes, instances.classes)
    for a, b in zip(loaded.probs, instances.probs):
        np.testing.assert_array_equal(a, b)


def test_empty_round_trip_and_select(tmp_path):
    empty = InstanceSet.empty((5, 6))
    empty.save(tmp_path / "e.npz")
    assert len(InstanceSet.load(tmp_path / "e.npz")) == 0
    picked = two_instances().select(np.array([False, True]))
    assert len(picked) == 1 and picked.classes.tolist() == [2]


def test_concatenate_rejects_other_sizes():
    with pytest.raises(ValueError, match="different image sizes"):
        InstanceSet.concatenate([two_instances(), InstanceSet.empty((5, 5))])
