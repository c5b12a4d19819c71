"""Cell masks as polygons and polygons as cell masks, in QuPath's pixel convention.

Coordinates are image coordinates in which pixel (row r, column c) covers [c, c + 1) x
[r, r + 1), as in QuPath, so its centre is at (c + 0.5, r + 0.5). A pixel belongs to a polygon
when its centre lies inside it (a centre exactly on an edge is outside). `mask_polygons` traces
the contour of a mask at level 0.5 (contourpy's marching squares), which passes between the
centres of the mask's pixels and of their neighbours, so `polygon_mask` of the traced polygons
gives the mask back: GeoJSON written by `segment` reads back as the cells it came from.
"""

from __future__ import annotations

import math

import contourpy
import numpy as np
import shapely
from shapely.geometry.base import BaseGeometry

from cellseg.common.instances import bounding_rect

# Pixel centres tested at once by `polygon_mask`: bounds its memory on a slide-sized region.
_CENTRES_PER_BAND = 1 << 22


def mask_polygons(mask: np.ndarray, x0: float = 0.0, y0: float = 0.0) -> list[list[np.ndarray]]:
    """Polygons of a 2-D bool mask: one list per connected piece, its outer ring first, then
    its holes; rings are closed (K, 2) float64 x, y arrays in image coordinates (module doc),
    the mask's pixel (0, 0) being at x0, y0."""
    padded = np.pad(mask, 1).astype(np.float64)
    points, offsets = contourpy.contour_generator(z=padded, fill_type=contourpy.FillType.OuterOffset).filled(0.5, 2.0)
    shift = np.array([x0 - 0.5, y0 - 0.5])  # padded index c -> pixel c - 1, whose centre is at c - 0.5
    return [
        [_oriented(pts[a:b] + shift, hole=k > 0) for k, (a, b) in enumerate(zip(offs[:-1], offs[1:]))]
        for pts, offs in zip(points, offsets)
    ]


def _oriented(ring: np.ndarray, hole: bool) -> np.ndarray:
    """The ring with a positive shoelace area as an outer ring, negative as a hole (RFC 7946's
    right-hand rule read with y pointing up)."""
    x, y = ring[:, 0], ring[:, 1]
    area = np.dot(x[:-1], y[1:]) - np.dot(x[1:], y[:-1])
    return ring[::-1] if (area < 0) != hole else ring


def mask_geometry(mask: np.ndarray, x0: float = 0.0, y0: float = 0.0) -> dict:
    """A GeoJSON geometry of a non-empty 2-D bool mask (`mask_polygons`): a Polygon, or a
    MultiPolygon when the mask is in pieces; coordinates rounded to 1/1000 px."""
    pieces = [[np.round(ring, 3).tolist() for ring in piece] for piece in mask_polygons(mask, x0, y0)]
    if len(pieces) == 1:
        return {"type": "Polygon", "coordinates": pieces[0]}
    return {"type": "MultiPolygon", "coordinates": pieces}


def polygon_mask(
    geometry: BaseGeometry, size: tuple[int, int]
) -> tuple[tuple[int, int, int, int], np.ndarray] | None:
    """The pixels of an (H, W) = `size` image whose centres lie inside a shapely `geometry`
    (holes are outside; parts beyond the image are cut off): the window x0, y0, x1, y1
    (exclusive ends, inside the image) around them and its `(y1 - y0, x1 - x0)` bool mask;
    None when no pixel centre lies inside."""
    height, width = size
    min_x, min_y, max_x, max_y = geometry.bounds
    if geometry.is_empty or not all(map(math.isfinite, (min_x, min_y, max_x, max_y))):
        return None
    x0, y0 = max(0, math.floor(min_x)), max(0, math.floor(min_y))
    x1, y1 = min(width, math.ceil(max_x)), min(height, math.ceil(max_y))
    if x0 >= x1 or y0 >= y1:
        return None
    shapely.prepare(geometry)
    mask = np.zeros((y1 - y0, x1 - x0), bool)
    xs = np.arange(x0, x1) + 0.5
    rows = max(1, _CENTRES_PER_BAND // len(xs))
    for top in range(y0, y1, rows):
        ys = np.arange(top, min(top + rows, y1)) + 0.5
        mask[top - y0 : top - y0 + len(ys)] = shapely.contains_xy(geometry, xs[None, :], ys[:, None])
    rect = bounding_rect(mask)
    if rect is None:
        return None
    left, top, right, bottom = rect
    return (x0 + left, y0 + top, x0 + right, y0 + bottom), mask[top:bottom, left:right]
