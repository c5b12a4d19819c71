"""Aperio ImageScope XML annotations, as MoNuSeg and MoNuSAC 2020 ship them, and their
rasterisation into instance planes.

The structure relied on (MoNuSeg's and MoNuSAC's files, and the MoNuSAC organisers' reader)::

    <Annotations>
      <Annotation Id="1" ...>
        <Attributes><Attribute Name="Epithelial" Id="0" Value=""/></Attributes>
        <Regions>
          <RegionAttributeHeaders>...</RegionAttributeHeaders>
          <Region Id="1" ...>
            <Attributes/>
            <Vertices><Vertex X="12.5" Y="40.25" Z="0"/>...</Vertices>
          </Region>
          ...

An Annotation groups the outlines of one class (MoNuSAC: its Attribute's Name is the cell
type; MoNuSeg: one Annotation whose name is not used); each Region outlines one nucleus, its
vertices in pixels of the full-resolution image, x to the right and y down.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from xml.etree import ElementTree

import numpy as np
from matplotlib.path import Path as Polygon

from cellseg.common.errors import DataError


@dataclass(frozen=True)
class Region:
    """One outline: `label` is its Annotation's Attribute Name ('' without one), `vertices`
    `(K, 2)` float64 (x, y) pixel coordinates."""

    label: str
    vertices: np.ndarray


def read_regions(path: str | os.PathLike) -> list[Region]:
    """Every Region of an ImageScope XML file, in file order; `DataError` naming the file for
    XML that does not parse, a root other than `<Annotations>`, or a vertex without numbers."""
    path = Path(path)
    try:
        root = ElementTree.parse(path).getroot()
    except (ElementTree.ParseError, OSError) as err:
        raise DataError(f"{path}: cannot read as XML ({type(err).__name__}: {err})") from err
    if root.tag != "Annotations":
        raise DataError(f"{path}: root element is <{root.tag}>; expected an ImageScope <Annotations> file")
    regions = []
    for annotation in root.iterfind("Annotation"):
        attribute = annotation.find("Attributes/Attribute")
        label = (attribute.get("Name") or "").strip() if attribute is not None else ""
        for region in annotation.iterfind("Regions/Region"):
            try:
                xy = [(float(v.get("X")), float(v.get("Y"))) for v in region.iterfind("Vertices/Vertex")]
            except (TypeError, ValueError) as err:
                raise DataError(f"{path}: region {region.get('Id')} has a vertex without numeric X and Y") from err
            regions.append(Region(label, np.array(xy, np.float64).reshape(-1, 2)))
    return regions


def rasterise(polygons: list[np.ndarray], shape: tuple[int, int]) -> np.ndarray:
    """Fill `polygons` (each `(K, 2)` (x, y)) into an `(H, W) int32` plane: polygon i fills
    id i + 1, and a later polygon overwrites an earlier one where they overlap.

    A pixel belongs to a polygon when its centre lies inside it, pixel centres at integer
    coordinates: the pixel at row r, column c is the point (x = c, y = r), as
    `skimage.draw.polygon(Y, X)` in the MoNuSAC organisers' reader takes it. A centre exactly
    on an edge may fall either way (matplotlib's `Path.contains_points`). Polygons of fewer
    than 3 vertices, and the parts of polygons outside the image, fill nothing.
    """
    height, width = shape
    plane = np.zeros(shape, np.int32)
    for number, xy in enumerate(polygons, 1):
        if len(xy) < 3:
            continue
        c0, r0 = np.maximum(np.ceil(xy.min(axis=0)).astype(int), 0)
        c1, r1 = np.minimum(np.floor(xy.max(axis=0)).astype(int), (width - 1, height - 1))
        if c0 > c1 or r0 > r1:
            continue
        rows, cols = np.mgrid[r0 : r1 + 1, c0 : c1 + 1]
        centres = np.column_stack([cols.ravel(), rows.ravel()])
        inside = Polygon(xy).contains_points(centres).reshape(rows.shape)
        plane[r0 : r1 + 1, c0 : c1 + 1][inside] = number
    return plane
