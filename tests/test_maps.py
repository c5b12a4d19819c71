import numpy as np
import pytest
from scipy import ndimage

from cellseg.data.target_maps import boundary_map, center_heatmap, compute_maps, open_maps_shard, save_maps_shard


def ring(shape, r0, r1, c0, c1, width=1):
    """Mask of the `width`-px inner ring of the box rows r0..r1, cols c0..c1 (inclusive)."""
    mask = np.zeros(shape, bool)
    mask[r0 : r1 + 1, c0 : c1 + 1] = True
    mask[r0 + width : r1 + 1 - width, c0 + width : c1 + 1 - width] = False
    return mask


def two_squares_and_an_l():
    """Class 1: 5x5 squares centred at (4, 4) and (12, 14); class 2: an L at (20, 2)."""
    labels = np.zeros((2, 30, 20), np.int32)
    labels[0, 2:7, 2:7] = 1
    labels[0, 10:15, 12:17] = 2
    labels[1, 20:26, 2:4] = 1  # the L's stem, 6x2
    labels[1, 24:26, 4:8] = 1  # its foot, 2x4: centre of mass (23.3, 3.7), outside the L
    return labels


def test_center_peaks_at_centres_of_mass():
    labels = two_squares_and_an_l()
    heat = center_heatmap(labels, sigma=2.0)
    assert heat.shape == (30, 20) and heat.dtype == np.float32
    assert heat.min() >= 0.0 and heat.max() == 1.0
    assert {tuple(p) for p in np.argwhere(heat == 1.0)} == {(4, 4), (12, 14), (23, 4)}
    assert labels[1, 23, 4] == 0  # the L's centre lies outside it
    assert heat[4, 5] == pytest.approx(np.exp(-1 / 8))
    assert heat[6, 6] == pytest.approx(np.exp(-8 / 8))
    local_max = heat == ndimage.maximum_filter(heat, size=3)
    assert {tuple(p) for p in np.argwhere(local_max & (heat > 0.5))} == {(4, 4), (12, 14), (23, 4)}


def test_center_is_max_over_gaussians_not_sum():
    labels = np.zeros((1, 9, 9), np.int32)
    labels[0, 4, 2] = 1
    labels[0, 4, 6] = 2
    heat = center_heatmap(labels, sigma=2.0)
    assert heat[4, 4] == pytest.approx(np.exp(-4 / 8))
    assert heat[4, 2] == heat[4, 6] == 1.0


def test_center_without_instances_is_zero():
    assert not center_heatmap(np.zeros((2, 6, 7), np.int32), sigma=3.0).any()


def test_boundary_between_touching_squares():
    labels = np.zeros((1, 8, 13), np.int32)
    labels[0, 1:6, 1:6] = 1
    labels[0, 1:6, 6:11] = 2
    expected = ring((8, 13), 1, 5, 1, 5) | ring((8, 13), 1, 5, 6, 10)
    border = boundary_map(labels, width=1)
    assert border.dtype == np.uint8 and set(np.unique(border)) == {0, 1}
    np.testing.assert_array_equal(border, expected)
    labels[labels == 2] = 1  # one cell: no border between the halves
    np.testing.assert_array_equal(boundary_map(labels, width=1), ring((8, 13), 1, 5, 1, 10))


def test_boundary_width_two():
    labels = np.zeros((1, 11, 11), np.int32)
    labels[0, 2:9, 2:9] = 1
    np.testing.assert_array_equal(boundary_map(labels, width=2), ring((11, 11), 2, 8, 2, 8, width=2))


def test_boundary_image_edge_is_not_a_border():
    labels = np.zeros((1, 10, 10), np.int32)
    labels[0, :5, :5] = 1
    expected = np.zeros((10, 10), bool)
    expected[4, :5] = expected[:5, 4] = True
    np.testing.assert_array_equal(boundary_map(labels, width=1), expected)


def test_boundary_ors_overlapping_classes():
    labels = np.zeros((2, 10, 10), np.int32)
    labels[0, 1:6, 1:6] = 1
    labels[1, 3:8, 3:8] = 1
    expected = ring((10, 10), 1, 5, 1, 5) | ring((10, 10), 3, 7, 3, 7)
    np.testing.assert_array_equal(boundary_map(labels, width=1), expected)


def test_compute_maps_dtypes():
    maps = compute_maps(two_squares_and_an_l(), sigma=2.0, width=1)
    assert maps["center"].dtype == np.float16 and maps["center"].shape == (30, 20)
    assert maps["center"].max() == 1.0
    assert maps["boundary"].dtype == np.uint8 and maps["boundary"].shape == (30, 20)


def test_maps_shard_round_trip(tmp_path):
    labels = np.zeros((1, 12, 10), np.int32)
    labels[0, 2:6, 2:6] = 1
    maps = {"a": compute_maps(labels, 1.0, 1), "b": compute_maps(labels[:, ::-1], 1.0, 1)}
    assert save_maps_shard(tmp_path / "s.npz", iter(maps.items())) == 2
    with open_maps_shard(tmp_path / "s.npz") as maps_of:
        for image_id in ("b", "a"):
            for key, array in maps[image_id].items():
                assert maps_of(image_id)[key].dtype == array.dtype
                np.testing.assert_array_equal(maps_of(image_id)[key], array)
