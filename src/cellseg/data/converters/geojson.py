"""A dataset in the reference layout rewritten in the geojson layout (`cellseg.data.geojson_source`),
its labels as QuPath would export them: to check that training from GeoJSON annotations
learns what training from the label images does, on a public dataset converted first.

    SRC/train/<id>/image.tif + <class>.tif   ->   DEST/<id>.tif       the image, copied unchanged
                                                  DEST/<id>.geojson   one annotation per instance

Each instance becomes a Feature with `objectType: annotation` (editable in QuPath),
`classification: {name: <class>}` and its outline traced by `cellseg.common.polygons.mask_geometry`
(a MultiPolygon when it is in pieces), so it reads back as the same pixels. No region is
written, so every image counts as annotated in full, except an image without cells: it gets
one `Region` annotation covering it, as a person marks an area checked and found empty (a
GeoJSON without features is refused). The test set is not converted; it stays
readable from SRC (`data.test_path`). DEST is written all or nothing.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from scipy import ndimage

from cellseg.common.errors import DataError
from cellseg.common.images import read_mask, read_tiff_header
from cellseg.common.polygons import mask_geometry
from cellseg.data.converters.layout import staged


@dataclass
class GeojsonSummary:
    """Images written, the class names found (`classes.json`'s order when SRC has one, else
    sorted), and instances per class."""

    images: int = 0
    classes: list[str] = field(default_factory=list)
    instances: dict[str, int] = field(default_factory=dict)


def reference_to_geojson(src: str | os.PathLike, dest: str | os.PathLike) -> GeojsonSummary:
    """Write the training images of the reference-layout folder `src` to `dest` in the geojson
    layout (module doc). `DataError` naming the folder when `src` has no `train/<id>/image.tif`."""
    train = Path(src) / "train"
    folders = sorted(p for p in train.iterdir() if p.is_dir() and not p.name.startswith(".")) if train.is_dir() else []
    if not folders:
        raise DataError(f"{train}: no image folders (expected train/<id>/image.tif)")
    summary = GeojsonSummary(classes=_class_names(Path(src), folders))
    with staged(Path(dest)) as stage:
        for folder in folders:
            if not (folder / "image.tif").is_file():
                raise DataError(f"{folder}: image.tif not found")
            shutil.copyfile(folder / "image.tif", stage / f"{folder.name}.tif")
            features = []
            for name in summary.classes:
                if (folder / f"{name}.tif").is_file():
                    found = _features(read_mask(folder / f"{name}.tif"), name)
                    summary.instances[name] = summary.instances.get(name, 0) + len(found)
                    features += found
            if not features:
                features = [_whole_image_region(folder / "image.tif")]
            collection = {"type": "FeatureCollection", "features": features}
            (stage / f"{folder.name}.geojson").write_text(json.dumps(collection, separators=(",", ":")))
            summary.images += 1
    return summary


def _whole_image_region(image: Path) -> dict:
    """A `Region` annotation covering the whole image (read by the default
    `data.geojson_region_class`)."""
    header = read_tiff_header(image)
    width, height = header.width, header.height
    ring = [[0, 0], [width, 0], [width, height], [0, height], [0, 0]]
    return {
        "type": "Feature",
        "geometry": {"type": "Polygon", "coordinates": [ring]},
        "properties": {"objectType": "annotation", "classification": {"name": "Region"}},
    }


def _class_names(src: Path, folders: list[Path]) -> list[str]:
    names = {p.stem for folder in folders for p in folder.glob("*.tif") if p.name != "image.tif"}
    listed = src / "classes.json"
    order = list(json.loads(listed.read_text())) if listed.is_file() else []
    return [name for name in order if name in names] + sorted(names - set(order))


def _features(plane, name: str) -> list[dict]:
    """One annotation Feature per instance of a `(H, W)` plane of ids 1..n."""
    features = []
    for number, window in enumerate(ndimage.find_objects(plane), 1):
        if window is None:
            continue
        rows, cols = window
        mask = plane[window] == number
        features.append({
            "type": "Feature",
            "geometry": mask_geometry(mask, cols.start, rows.start),
            "properties": {"objectType": "annotation", "classification": {"name": name}},
        })
    return features
