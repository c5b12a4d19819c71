"""Format 3 (`format: geojson`): images and the cells drawn on them in QuPath, as GeoJSON.

    DATA/<id>.tif | .tiff | .png | .jpg | .jpeg    the image, read as `segment` reads images
    DATA/<id>.geojson (or <id>.json)               its objects, as QuPath exports them

A file holds a FeatureCollection, a single Feature, or a list of Features. Each feature is a
Polygon or MultiPolygon (holes are holes) in image pixel coordinates, with its class in
`properties.classification.name` (or `properties.classification` as a string), mapped to
`classes:` by name. Detections, annotations and cells are read alike (`properties.objectType`,
`object_type` in older QuPath); a QuPath cell object is its nucleus (`nucleusGeometry`) when it
has one, else its cell outline: QuPath draws the cell by expanding the nucleus by a fixed
distance, so the nucleus is the outline that was seen, and the datasets this pipeline trains
on outline nuclei.

Regions: a feature whose class matches the glob `region_class` (`data.geojson_region_class`,
default `Region*`) is not a cell but marks an area that was annotated in full; the image's
valid area is the union of its regions, or the whole image without any. Training tiles are cut
inside it only (`cellseg.data.tiles.make_tiles`).

Pixels follow QuPath's convention (`cellseg.common.polygons`): a pixel belongs to a cell when its
centre lies inside the polygon. Within one class a pixel two cells claim goes to the smaller
(`io.paint_order`, as for COCO); a cell that covers no pixel centre is left out.

`check_geojson` runs while the DAG is built and parses every file: a bad feature raises one
`DataError` naming the file and the feature's index (0-based, in file order). A
self-intersecting polygon is repaired by shapely's `make_valid` (a bow-tie becomes two
triangles) with a logged warning; one with no area left is an error. Coordinates may lie up to
`TOLERANCE` px outside the image (cut off there); farther out is an error.
"""

from __future__ import annotations

import fnmatch
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import shapely
from shapely.errors import GEOSException
from shapely.geometry import shape
from shapely.geometry.base import BaseGeometry

from cellseg.common.errors import DataError
from cellseg.common.images import paint_order, read_tiff_header, relabel_consecutive
from cellseg.common.polygons import polygon_mask
from cellseg.data.image_folder import annotation_files, folder_images, image_size, read_image_file

SUFFIXES = (".geojson", ".json")
TOLERANCE = 1.0  # px a coordinate may lie outside the image (QuPath's rounding at the border)
DEFAULT_REGION_CLASS = "Region*"
_POLYGONS = ("Polygon", "MultiPolygon")

log = logging.getLogger("cellseg.data.dataset")


@dataclass(frozen=True)
class Annotations:
    """One GeoJSON file's cells, `(class index 0-based, shapely geometry)` in file order, and
    its regions (shapely geometries; none = the whole image was annotated)."""

    cells: list[tuple[int, BaseGeometry]]
    regions: list[BaseGeometry]


def index_geojson(source: dict) -> list[str]:
    """The image ids (sorted), every image paired with its GeoJSON file."""
    images = folder_images(source["path"])
    annotation_files(Path(source["path"]), images, SUFFIXES, "GeoJSON")
    return sorted(images)


def geojson_files(source: dict, image_id: str) -> tuple[Path, Path]:
    """The image file and the GeoJSON file of image `image_id` (paired by `index_geojson`)."""
    images = folder_images(source["path"])
    if image_id not in images:
        raise DataError(f"{source['path']}: no image named {image_id}")
    candidates = [Path(source["path"]) / f"{image_id}{suffix}" for suffix in SUFFIXES]
    return images[image_id], next((p for p in candidates if p.is_file()), candidates[0])


def check_geojson(source: dict, image_ids: list[str], read_header=read_tiff_header) -> None:
    """Check every image's header and parse its GeoJSON against the image's size and
    `source["classes"]` (module doc); `DataError` for the first problem, or when no file holds
    a cell at all."""
    n_cells = 0
    for image_id in image_ids:
        image, path = geojson_files(source, image_id)
        size = image_size(image, read_header)
        n_cells += len(_annotations(source, path, size).cells)
    if image_ids and not n_cells:
        raise DataError(
            f"{source['path']}: no GeoJSON file holds a cell of the classes {source['classes']}; "
            "check classes: in config against the class names in QuPath"
        )


def load_geojson(source: dict, image_id: str) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Image `image_id` `(H, W, 3) uint8`, its labels `(C, H, W) int32` (plane c = class
    c + 1, instances 1..n in file order) and its valid area `(H, W)` bool (None: no regions,
    the whole image)."""
    image_path, path = geojson_files(source, image_id)
    image = read_image_file(image_path)
    size = image.shape[:2]
    annotations = _annotations(source, path, size)
    labels = np.zeros((len(source["classes"]), *size), np.int32)
    for c in range(len(source["classes"])):
        masks = [polygon_mask(geometry, size) for k, geometry in annotations.cells if k == c]
        masks = [m for m in masks if m is not None]
        for number in paint_order([mask.sum() for _, mask in masks]):
            (x0, y0, x1, y1), mask = masks[number]
            labels[c, y0:y1, x0:x1][mask] = number + 1
        labels[c] = relabel_consecutive(labels[c])
    return image, labels, _valid_area(annotations.regions, size)


def _valid_area(regions: list[BaseGeometry], size: tuple[int, int]) -> np.ndarray | None:
    if not regions:
        return None
    valid = np.zeros(size, bool)
    inside = polygon_mask(shapely.union_all(regions), size)
    if inside is not None:
        (x0, y0, x1, y1), mask = inside
        valid[y0:y1, x0:x1] = mask
    return valid


def _annotations(source: dict, path: Path, size: tuple[int, int]) -> Annotations:
    region_class = source.get("geojson_region_class") or DEFAULT_REGION_CLASS
    return read_annotations(path, source["classes"], size, region_class)


def read_annotations(
    path: str | Path, classes: list[str], size: tuple[int, int], region_class: str = DEFAULT_REGION_CLASS
) -> Annotations:
    """Parse and check one GeoJSON file (module doc) for an image of (H, W) = `size`."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise DataError(f"{path}: cannot read as JSON ({err})") from err
    cells, regions = [], []
    for k, feature in enumerate(_features(path, data)):
        where = f"{path}: feature {k}"
        if not isinstance(feature, dict) or not isinstance(feature.get("properties") or {}, dict):
            raise DataError(f"{where}: not a GeoJSON Feature with properties")
        properties = feature.get("properties") or {}
        name = _class_name(properties)
        if name is None:
            raise DataError(
                f"{where}: has no classification; classify it as one of {classes} or as a region "
                f"(a class matching data.geojson_region_class {region_class!r})"
            )
        is_region = fnmatch.fnmatchcase(name, region_class)
        if not is_region and name not in classes:
            raise DataError(
                f"{where}: class {name!r} is not one of the classes {classes} nor a region "
                f"(data.geojson_region_class {region_class!r})"
            )
        key = "geometry"
        if not is_region and _object_type(properties) == "cell" and feature.get("nucleusGeometry"):
            key = "nucleusGeometry"
        geometry = _geometry(where, feature.get(key), key)
        _check_bounds(where, geometry, size)
        if is_region:
            regions.append(geometry)
        else:
            cells.append((classes.index(name), geometry))
    return Annotations(cells, regions)


def _features(path: Path, data) -> list:
    """The features of a FeatureCollection, a single Feature, or a list of features."""
    if isinstance(data, dict) and data.get("type") == "FeatureCollection":
        features = data.get("features")
    elif isinstance(data, dict) and data.get("type") == "Feature":
        features = [data]
    elif isinstance(data, list):
        features = data
    else:
        raise DataError(f"{path}: not GeoJSON objects: expected a FeatureCollection, a Feature or a list of features")
    if not isinstance(features, list) or not features:
        raise DataError(
            f"{path}: GeoJSON without features; export the image's objects from QuPath (a region "
            "alone marks an area without cells)"
        )
    return features


def _class_name(properties: dict) -> str | None:
    """`classification.name` (QuPath), the names of a derived class joined by ': ' as QuPath
    shows them, or `classification` as a plain string; None when unclassified."""
    value = properties.get("classification")
    if isinstance(value, dict):
        if isinstance(value.get("name"), str):
            return value["name"]
        names = value.get("names")
        return ": ".join(map(str, names)) if isinstance(names, list) and names else None
    return value if isinstance(value, str) and value else None


def _object_type(properties: dict) -> str | None:
    return properties.get("objectType") or properties.get("object_type")


def _geometry(where: str, value, key: str) -> BaseGeometry:
    """A valid shapely (Multi)Polygon of a GeoJSON geometry; repaired with a warning when
    self-intersecting, `DataError` when it cannot be read or has no area."""
    kind = value.get("type") if isinstance(value, dict) else None
    if kind not in _POLYGONS:
        raise DataError(f"{where}: {key} is {kind or 'missing'}; expected a Polygon or MultiPolygon")
    try:
        geometry = shape(value)
    except (ValueError, TypeError, AttributeError, IndexError, KeyError, GEOSException) as err:
        raise DataError(f"{where}: {kind} coordinates are not rings of x, y points ({err})") from None
    if geometry.is_valid and geometry.area > 0:
        return geometry
    reason = shapely.is_valid_reason(geometry)
    repaired = _polygonal(shapely.make_valid(geometry))
    if repaired.area <= 0:
        raise DataError(
            f"{where}: {kind} has no area ({reason}); a polygon needs 3 distinct points not on one "
            "line: redraw or delete it"
        )
    log.warning("%s: invalid %s (%s) repaired by shapely make_valid into %d polygon(s)",
                where, kind, reason, len(shapely.get_parts(repaired)))
    return repaired


def _polygonal(geometry: BaseGeometry) -> BaseGeometry:
    """The polygons of a geometry (make_valid may add lines or points where it cut)."""
    parts = [p for p in shapely.get_parts(geometry) if p.geom_type in _POLYGONS]
    return shapely.union_all(parts) if parts else shapely.Polygon()


def _check_bounds(where: str, geometry: BaseGeometry, size: tuple[int, int]) -> None:
    height, width = size
    x0, y0, x1, y1 = geometry.bounds
    if not all(np.isfinite([x0, y0, x1, y1])):
        raise DataError(f"{where}: coordinates are not finite numbers")
    if x0 < -TOLERANCE or y0 < -TOLERANCE or x1 > width + TOLERANCE or y1 > height + TOLERANCE:
        raise DataError(
            f"{where}: coordinates x {x0:g}..{x1:g}, y {y0:g}..{y1:g} reach beyond the {width} x {height} "
            f"(W x H) image by more than {TOLERANCE:g} px; is it the GeoJSON of another or a downsampled image?"
        )
