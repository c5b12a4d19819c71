"""cellseg.common.polygons: QuPath's pixel convention in both directions."""

import numpy as np
import pytest
from shapely.geometry import Polygon, shape

from cellseg.common.polygons import mask_geometry, polygon_mask


def _dense(result, size):
    out = np.zeros(size, bool)
    if result is not None:
        (x0, y0, x1, y1), mask = result
        out[y0:y1, x0:x1] = mask
    return out


@pytest.mark.parametrize("shift, pixels", [(0.0, [1, 2]), (0.4, [1, 2]), (0.6, [2, 3])])
def test_a_pixel_is_inside_when_its_centre_is(shift, pixels):
    # The square [1, 3] x [1, 3] moved by `shift`: its centres are those of pixels 1 and 2 until
    # the edge passes 1.5, the centre of pixel 1.
    a, b = 1 + shift, 3 + shift
    dense = _dense(polygon_mask(Polygon([(a, a), (b, a), (b, b), (a, b)]), (6, 6)), (6, 6))
    expected = np.zeros((6, 6), bool)
    expected[np.ix_(pixels, pixels)] = True
    assert np.array_equal(dense, expected)


def test_holes_are_holes_and_parts_beyond_the_image_are_cut_off():
    ring = Polygon([(-0.5, -0.5), (6, -0.5), (6, 6), (-0.5, 6)], [[(2, 2), (4, 2), (4, 4), (2, 4)]])
    (x0, y0, x1, y1), mask = polygon_mask(ring, (5, 5))
    assert (x0, y0, x1, y1) == (0, 0, 5, 5)
    expected = np.ones((5, 5), bool)
    expected[2:4, 2:4] = False
    assert np.array_equal(mask, expected)
    assert polygon_mask(Polygon([(1.6, 1.6), (2.4, 1.6), (2.4, 2.4)]), (5, 5)) is None  # between centres
    assert polygon_mask(Polygon([(7, 7), (9, 7), (9, 9)]), (5, 5)) is None  # outside


def test_traced_masks_read_back_exactly_down_to_single_pixels():
    rng = np.random.default_rng(0)
    for _ in range(500):
        h, w = rng.integers(1, 8, 2)
        mask = rng.random((h, w)) < 0.5
        if not mask.any():
            continue
        geometry = shape(mask_geometry(mask, 3, 5))
        assert geometry.is_valid
        expected = np.zeros((20, 20), bool)
        expected[5 : 5 + h, 3 : 3 + w] = mask
        assert np.array_equal(_dense(polygon_mask(geometry, (20, 20)), (20, 20)), expected)
