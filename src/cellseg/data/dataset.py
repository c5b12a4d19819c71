"""Listing, validating and loading a dataset in any of its input formats, into one `Sample` form.

Format 1 (`format: reference`), the reference layout::

    DATA/train/<id>/image.tif            RGBA uint8 (any form `io.read_image` accepts)
    DATA/train/<id>/<class name>.tif     instance ids of that class; absent = no instance
    DATA/test_release/<name>.tif
    DATA/test_image_name_to_ids.json     [{"file_name", "id", "height", "width"}, ...]

Format 2 (`format: coco`, the LIVECell layout): a COCO instance JSON with polygon or RLE
(compressed or not) segmentations plus an image folder; an optional test JSON (COCO with
`images`, or a plain list like the id map) lists the test images.

Format 3 (`format: geojson`, `cellseg.data.geojson_source`): a folder of images, each with the
QuPath GeoJSON of its cells and of the regions that were annotated. Format 4 (`format:
labels`, `cellseg.data.labels_source`): a folder of images, each with an instance label image as
`segment` writes it. Neither has a test set of its own (`test_path` can name one).

The test set may come from another dataset: `source["test_path"]` names a folder in the
reference layout whose `test_release/` and id map are the test images instead (see
`index_test_set`).

`index_dataset` and `check_headers` run while Snakemake builds its DAG: they list files and
read TIFF headers but no pixels, and every problem they can see without pixels raises one
`DataError` naming the file or folder. `load_sample` and `load_test_image` read pixels and
check what only pixels can show (mask values, NaN).
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pycocotools import mask as mask_utils

from cellseg.common.errors import DataError
from cellseg.common.images import (
    TiffHeader,
    check_pixel_dtype,
    paint_order,
    read_image,
    read_mask,
    read_tiff_header,
    relabel_consecutive,
)
from cellseg.data.geojson_source import check_geojson, geojson_files, index_geojson, load_geojson
from cellseg.data.labels_source import check_labels, index_labels, labels_files, load_labels

ID_MAP = "test_image_name_to_ids.json"
TIFF_SUFFIXES = (".tif", ".tiff")
HeaderReader = Callable[[os.PathLike], TiffHeader]  # read_tiff_header, or a HeaderCache's read
# Snakemake wildcards cannot carry braces: an id holding one would end in a bare WildcardError.
_WILDCARD_BREAKERS = "{}"


@dataclass(frozen=True)
class Sample:
    """One training image and its labels.

    `image` is `(H, W, 3) uint8` RGB; `labels` is `(C, H, W) int32`, `labels[c]` the instance
    label image of class `c + 1` (0 = background, instances 1..n). `valid` is `(H, W)` bool,
    the area that was annotated (a pixel outside it is unknown, not background), or None when
    the whole image was: only the geojson format's regions set it.
    """

    image_id: str
    image: np.ndarray
    labels: np.ndarray
    valid: np.ndarray | None = None


@dataclass(frozen=True)
class TestImage:
    """A test image as the submission names it: `id` is the integer image id of the id map."""

    __test__ = False  # not a pytest test class despite its name

    file_name: str
    id: int
    height: int
    width: int
    path: Path

    @property
    def name(self) -> str:
        """The file name without `.tif`: the image's name in file paths and `gt_dir`."""
        return Path(self.file_name).stem


@dataclass(frozen=True)
class DatasetIndex:
    """Training image ids (sorted) and test images (sorted by id) of one dataset."""

    train_ids: list[str]
    test_images: list[TestImage]


def index_dataset(source: dict) -> DatasetIndex:
    """List and validate the dataset that `source` (the resolved `data:` config) names."""
    return DatasetIndex(index_training_set(source), index_test_set(source))


def index_training_set(source: dict) -> list[str]:
    """The training image ids (sorted), their folders, files or records validated."""
    kind = _format(source)
    if kind in ("geojson", "labels"):
        ids = index_geojson(source) if kind == "geojson" else index_labels(source)
        for image_id in ids:
            _check_name(training_image_path(source, image_id), image_id)
        return ids
    return _index_reference(source) if kind == "reference" else _index_coco(source)


def index_test_set(source: dict) -> list[TestImage]:
    """The test images (sorted by id): those of the reference-layout folder
    `source["test_path"]` when given, else the dataset's own (`path`'s in the reference
    layout, `test_json`'s in the COCO layout; none without it, nor in the geojson and labels
    layouts)."""
    if source.get("test_path"):
        return _index_reference_test(Path(source["test_path"]))
    if _format(source) == "reference":
        return _index_reference_test(Path(source["path"]))
    return _index_coco_test(source) if _format(source) == "coco" else []


def training_image_path(source: dict, image_id: str) -> Path:
    """The image file of training image `image_id`."""
    kind = _format(source)
    if kind == "reference":
        return Path(source["path"]) / "train" / image_id / "image.tif"
    if kind == "geojson":
        return geojson_files(source, image_id)[0]
    if kind == "labels":
        return labels_files(source, image_id)[0]
    return Path(source["image_dir"]) / _parse_coco(source).images[image_id]["file_name"]


def training_files(source: dict, image_id: str) -> list[str]:
    """The files training image `image_id` is read from (the COCO layout: its JSON and image
    folder), sorted: the inputs of the rules that read it."""
    kind = _format(source)
    if kind == "reference":
        return sorted(str(path) for path in (Path(source["path"]) / "train" / image_id).glob("*.tif"))
    if kind == "geojson":
        return sorted(map(str, geojson_files(source, image_id)))
    if kind == "labels":
        return sorted(str(path) for path in labels_files(source, image_id) if path is not None)
    return [source["train_json"], source["image_dir"]]


def load_sample(source: dict, image_id: str) -> Sample:
    """Read training image `image_id` and its labels, checking that every mask fits the image."""
    kind = _format(source)
    if kind == "reference":
        return _load_reference_sample(source, image_id)
    if kind == "geojson":
        return Sample(image_id, *load_geojson(source, image_id))
    if kind == "labels":
        return Sample(image_id, *load_labels(source, image_id))
    return _load_coco_sample(source, image_id)


def check_headers(source: dict, index: DatasetIndex, read_header: HeaderReader = read_tiff_header) -> None:
    """Check from TIFF headers alone (no pixels decoded) what reading the pixels would find
    only inside a job: unreadable or truncated files, stacks of planes, 2 channels without
    alpha, a mask of another size than its image or of more than one channel, a test image of
    another size than its listing, test ground truth of another size than its test image; in
    the geojson and labels layouts also what their annotation files say without pixels
    (`check_geojson` parses every GeoJSON, `check_labels`). Meant for DAG time (about 0.3 ms
    per TIFF header; `read_header` may be a `HeaderCache`'s `read`, which skips unchanged
    files); `DataError` names the file."""
    classes = source["classes"]
    kind = _format(source)
    if kind == "geojson":
        check_geojson(source, index.train_ids, read_header)
    elif kind == "labels":
        check_labels(source, index.train_ids, read_header)
    elif kind == "reference":
        train = Path(source["path"]) / "train"
        for image_id in index.train_ids:
            header = read_header(train / image_id / "image.tif")
            check_pixel_dtype(header.dtype, train / image_id / "image.tif")
            _check_mask_headers(train / image_id, classes, (header.height, header.width), read_header)
    else:
        coco = _parse_coco(source)
        for image_id in index.train_ids:
            record = coco.images[image_id]
            path = Path(source["image_dir"]) / record["file_name"]
            header = read_header(path)
            check_pixel_dtype(header.dtype, path)
            _check_size(path, header, (record["height"], record["width"]), source["train_json"])
    check_test_headers(source, index.test_images, read_header)


def check_test_headers(
    source: dict, test_images: list[TestImage], read_header: HeaderReader = read_tiff_header
) -> None:
    """`check_headers` for the test images of `source` (`index_test_set`) and their ground
    truth (`source["test_gt"]`, class files `source["classes"]`)."""
    if source.get("test_path") or _format(source) == "reference":
        listing = Path(source.get("test_path") or source["path"]) / ID_MAP
    else:
        listing = source.get("test_json")
    for test in test_images:
        header = read_header(test.path)
        check_pixel_dtype(header.dtype, test.path)
        _check_size(test.path, header, (test.height, test.width), listing)
        folder = Path(source["test_gt"]) / test.name if source.get("test_gt") else None
        if folder and folder.is_dir():
            _check_test_class_files(folder, source["classes"])
            _check_mask_headers(folder, source["classes"], (test.height, test.width), read_header)


def _check_test_class_files(folder: Path, classes: list[str]) -> None:
    """A class file of the test ground truth that `classes` does not name would be left out of
    the scores silently (a test set from another dataset with other classes, say)."""
    for path in sorted(folder.glob("*.tif")):
        if path.stem not in classes and path.name != "image.tif":
            raise DataError(
                f"{path}: class file not among the test set's classes {classes}; set data.test_classes "
                "to the class names of the test ground truth"
            )


def _check_size(path: Path, header, size: tuple[int, int], listing) -> None:
    if (header.height, header.width) != tuple(size):
        raise DataError(
            f"{path}: image is {header.height}x{header.width} (HxW) but {listing} says {size[0]}x{size[1]}"
        )


def _check_mask_headers(folder: Path, classes: list[str], size: tuple[int, int], read_header: HeaderReader) -> None:
    for name in classes:
        path = folder / f"{name}.tif"
        if not path.is_file():
            continue
        header = read_header(path)
        if header.channels != 1:
            raise DataError(f"{path}: mask has {header.channels} channels; expected one plane of instance ids")
        if (header.height, header.width) != tuple(size):
            raise DataError(
                f"{path}: mask shape {(header.height, header.width)} differs from image shape {tuple(size)}"
            )


FORMATS = ("reference", "coco", "geojson", "labels")


def _format(source: dict) -> str:
    kind = source.get("format")
    if kind not in FORMATS:
        raise DataError(f"data.format is {kind!r}; expected one of {', '.join(FORMATS)}")
    return kind


def load_test_image(test_image: TestImage) -> np.ndarray:
    """Read a test image as `(H, W, 3) uint8`; `DataError` when its size differs from the listing.

    `test_image.path` says where the file is in either format.
    """
    image = read_image(test_image.path)
    if image.shape[:2] != (test_image.height, test_image.width):
        raise DataError(
            f"{test_image.path}: image is {image.shape[0]}x{image.shape[1]} (HxW) but the test "
            f"listing says {test_image.height}x{test_image.width}"
        )
    return image


def load_ground_truth(
    gt_dir: str | os.PathLike, image_name: str, classes: list[str], image_size: tuple[int, int] | None = None
) -> np.ndarray:
    """Read held-out test labels `gt_dir/<image_name>/<class>.tif` as `(C, H, W) int32`.

    `image_name` is the test file name with or without `.tif`. An absent class file is an
    all-zero plane, and so, given `image_size`, is every plane of an absent folder (datasets
    such as CoNSeP write no folder for an image without cells). `image_size`: the test image's
    (H, W), which every class file must have; without it, one class file (or an `image.tif`
    beside them) gives the size.
    """
    folder = Path(gt_dir) / image_name.removesuffix(".tif")
    if not folder.is_dir():
        if image_size is not None:
            return np.zeros((len(classes), *image_size), np.int32)
        raise DataError(f"{folder}: ground-truth folder not found")
    planes = _read_class_masks(folder, classes)
    if image_size is not None:
        shape = tuple(image_size)
    elif planes:
        shape = next(iter(planes.values())).shape
    elif (folder / "image.tif").is_file():
        shape = read_image(folder / "image.tif").shape[:2]
    else:
        raise DataError(f"{folder}: no ground-truth file for any of the classes {classes}")
    return _stack_planes(folder, planes, classes, shape)


def _read_class_masks(folder: Path, classes: list[str]) -> dict[str, np.ndarray]:
    """`{class name: (H, W) int32 mask}` of the class files present in `folder` (`<name>.tif`)."""
    return {name: read_mask(folder / f"{name}.tif") for name in classes if (folder / f"{name}.tif").is_file()}


def _stack_planes(
    folder: Path, planes: dict[str, np.ndarray], classes: list[str], shape
) -> np.ndarray:
    """Stack per-class label planes into `(C, H, W) int32`, zeros for absent classes."""
    labels = np.zeros((len(classes), *shape), np.int32)
    for c, name in enumerate(classes):
        if name not in planes:
            continue
        if planes[name].shape != tuple(shape):
            raise DataError(
                f"{folder / f'{name}.tif'}: mask shape {planes[name].shape} differs from image "
                f"shape {tuple(shape)}"
            )
        labels[c] = planes[name]
    return labels


# ---------------------------------------------------------------- format 1: reference layout


def _index_reference(source: dict) -> list[str]:
    root = Path(source["path"])
    if not root.is_dir():
        raise DataError(f"{root}: data folder not found")
    if not any(root.iterdir()):
        raise DataError(f"{root}: data folder is empty")
    train = root / "train"
    if not train.is_dir():
        raise DataError(f"{train}: training folder not found (expected train/<id>/image.tif)")
    folders = sorted(p for p in train.iterdir() if p.is_dir())
    for folder in folders:
        # Hidden folders (.ipynb_checkpoints) are skipped, unless they hold an image.
        if folder.name.startswith(".") and (folder / "image.tif").exists():
            raise DataError(f"{folder}: a hidden (dot-named) image folder is skipped; rename it or move it out of train/")
    ids = [p.name for p in folders if not p.name.startswith(".")]
    if not ids:
        raise DataError(f"{train}: no image folders (expected train/<id>/image.tif)")
    allowed = {"image.tif"} | {f"{name}.tif" for name in source["classes"]}
    n_masks = 0
    for image_id in ids:
        folder = train / image_id
        _check_name(folder, image_id)
        if not (folder / "image.tif").is_file():
            raise DataError(f"{folder}: image.tif not found{_near_miss(folder, 'image.tif')}")
        for path in sorted(folder.iterdir()):
            if path.suffix.lower() not in TIFF_SUFFIXES or path.name in allowed:
                continue
            hint = next((f"; rename it to {name} (names are case-sensitive)" for name in sorted(allowed)
                         if _same_tiff_name(path.name, name)), "")
            raise DataError(
                f"{path}: unexpected file{hint}; an image folder holds image.tif and one file per "
                f"configured class ({', '.join(sorted(allowed - {'image.tif'}))})"
            )
        n_masks += sum((folder / name).is_file() for name in allowed - {"image.tif"})
    if not n_masks:
        raise DataError(
            f"{train}: no image folder holds a mask file ({', '.join(sorted(allowed - {'image.tif'}))}); "
            "check classes: in config against the file names"
        )
    return ids


def _same_tiff_name(name: str, expected: str) -> bool:
    """Whether `name` is `expected` (`<stem>.tif`) but for case or a `.tiff` suffix."""
    stem, suffix = os.path.splitext(name)
    return suffix.lower() in TIFF_SUFFIXES and stem.lower() == Path(expected).stem.lower()


def _near_miss(folder: Path, expected: str) -> str:
    """A hint naming a file in `folder` that is `expected` but for case or suffix, or ''."""
    if not folder.is_dir():
        return ""
    for path in sorted(folder.iterdir()):
        if _same_tiff_name(path.name, expected):
            return f"; found {path.name}: rename it to {expected} (names are case-sensitive)"
    return ""


def _check_name(where: Path, name: str) -> None:
    """`DataError` for an image id or test name that Snakemake's wildcards cannot carry."""
    if any(c in name for c in _WILDCARD_BREAKERS):
        raise DataError(f"{where}: the name {name!r} holds {{ or }}, which Snakemake file patterns cannot carry; rename it")


def _index_reference_test(root: Path) -> list[TestImage]:
    id_map = root / ID_MAP
    if not id_map.is_file():
        raise DataError(f"{id_map}: test id map not found")
    folder = root / "test_release"
    images = _parse_test_listing(id_map, _read_json(id_map), folder)
    listed = {t.file_name for t in images}
    present = sorted(p.name for p in folder.glob("*.tif")) if folder.is_dir() else []
    for name in present:
        if name not in listed:
            raise DataError(f"{folder / name}: test image is not listed in {id_map}")
    return images


def _load_reference_sample(source: dict, image_id: str) -> Sample:
    folder = Path(source["path"]) / "train" / image_id
    if not folder.is_dir():
        raise DataError(f"{folder}: image folder not found")
    image = read_image(folder / "image.tif")
    classes = source["classes"]
    planes = _read_class_masks(folder, classes)
    return Sample(image_id, image, _stack_planes(folder, planes, classes, image.shape[:2]))


# ---------------------------------------------------------------- shared: JSON and test listings


def _read_json(path: Path):
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except (OSError, ValueError) as err:
        raise DataError(f"{path}: cannot read JSON ({err})") from err


def _parse_test_listing(listing: Path, entries, image_dir: Path) -> list[TestImage]:
    """Validate test entries `{file_name, id, height, width}`; each file must be in `image_dir`."""
    if not isinstance(entries, list):
        raise DataError(f"{listing}: expected a list of {{file_name, id, height, width}} entries")
    images, seen_ids, seen_names = [], set(), set()
    for entry in entries:
        try:
            file_name = str(entry["file_name"])
            image_id, height, width = (_integer(listing, entry, key) for key in ("id", "height", "width"))
        except (KeyError, TypeError) as err:
            raise DataError(
                f"{listing}: entry {entry!r} lacks file_name, id, height or width"
            ) from err
        _check_name(listing, Path(file_name).stem)
        if height <= 0 or width <= 0:
            raise DataError(f"{listing}: entry {entry!r} has a height or width below 1")
        if image_id in seen_ids or file_name in seen_names:
            raise DataError(
                f"{listing}: duplicate test image id {image_id} or file name {file_name!r}"
            )
        seen_ids.add(image_id)
        seen_names.add(file_name)
        path = image_dir / file_name
        if not path.is_file():
            raise DataError(f"{path}: test image listed in {listing} not found{_near_miss(image_dir, file_name)}")
        images.append(TestImage(file_name, image_id, height, width, path))
    return sorted(images, key=lambda t: t.id)


def _integer(listing: Path, entry: dict, key: str) -> int:
    """`entry[key]` as an int; `DataError` for a value such as 1.7 that int() would cut."""
    value = entry[key]
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise TypeError(key)
    try:
        number = float(value)
    except ValueError:
        raise DataError(f"{listing}: entry {entry!r}: {key} {value!r} is not an integer") from None
    if not number.is_integer():
        raise DataError(f"{listing}: entry {entry!r}: {key} {value!r} is not an integer")
    return int(number)


# ---------------------------------------------------------------- format 2: COCO layout


@dataclass(frozen=True)
class _Coco:
    """A parsed COCO training JSON: image records and annotations by image id string."""

    images: dict[str, dict]
    annotations: dict[str, list[dict]]
    class_of_category: dict[int, int]


def _index_coco(source: dict) -> list[str]:
    coco = _parse_coco(source)
    image_dir = Path(source["image_dir"])
    if not image_dir.is_dir():
        raise DataError(f"{image_dir}: image folder not found")
    for record in coco.images.values():
        if not (image_dir / record["file_name"]).is_file():
            missing = image_dir / record["file_name"]
            hint = _near_miss(missing.parent, missing.name)
            raise DataError(f"{missing}: image listed in {source['train_json']} not found{hint}")
    return sorted(coco.images)


def _index_coco_test(source: dict) -> list[TestImage]:
    """The images `test_json` lists (COCO with `images`, or a plain list like the id map)."""
    if not source.get("test_json"):
        return []
    listing = Path(source["test_json"])
    if not listing.is_file():
        raise DataError(f"{listing}: test JSON not found")
    entries = _read_json(listing)
    entries = entries.get("images") if isinstance(entries, dict) else entries
    test_dir = Path(source.get("test_image_dir") or source["image_dir"])
    return _parse_test_listing(listing, entries, test_dir)


def _parse_coco(source: dict) -> _Coco:
    """Parse and validate the training JSON, once per process and file version."""
    path = Path(source["train_json"])
    if not path.is_file():
        raise DataError(f"{path}: COCO JSON not found")
    return _parse_coco_file(str(path), path.stat().st_mtime_ns, tuple(source["classes"]))


@functools.lru_cache(maxsize=2)
def _parse_coco_file(json_path: str, mtime_ns: int, classes: tuple[str, ...]) -> _Coco:
    """Parse a COCO JSON (LIVECell's is large: cached); `mtime_ns` keys the cache only."""
    path = Path(json_path)
    data = _read_json(path)
    if not isinstance(data, dict) or not {"images", "annotations", "categories"} <= data.keys():
        raise DataError(f"{path}: not a COCO instance file (needs images, annotations, categories)")
    try:
        return _index_coco_records(path, data, list(classes))
    except (KeyError, TypeError, ValueError) as err:
        raise DataError(
            f"{path}: an image, annotation or category entry lacks or mistypes {err}"
        ) from err


def _index_coco_records(path: Path, data: dict, classes: list[str]) -> _Coco:
    """Check ids and references of a parsed COCO file and group its annotations by image."""
    class_of_category = _map_categories(path, data["categories"], classes)
    images, name_of_id = {}, {}
    for record in data["images"]:
        name = Path(record["file_name"]).stem
        _check_name(path, name)
        if name in images or record["id"] in name_of_id:
            raise DataError(
                f"{path}: duplicate image id {record['id']} or file name {record['file_name']!r}"
            )
        images[name] = {
            "file_name": record["file_name"],
            "height": int(record["height"]),
            "width": int(record["width"]),
        }
        name_of_id[record["id"]] = name
    if not images:
        raise DataError(f"{path}: lists no images")
    annotations = {name: [] for name in images}
    for ann in data["annotations"]:
        if ann["image_id"] not in name_of_id:
            raise DataError(
                f"{path}: annotation {ann.get('id')} refers to unknown image id {ann['image_id']}"
            )
        if ann["category_id"] not in class_of_category:
            raise DataError(
                f"{path}: annotation {ann.get('id')} has unknown category id {ann['category_id']}"
            )
        annotations[name_of_id[ann["image_id"]]].append(ann)
    if not any(not ann.get("iscrowd", 0) for anns in annotations.values() for ann in anns):
        raise DataError(f"{path}: holds no (non-crowd) annotation: nothing to train on")
    return _Coco(images, annotations, class_of_category)


def _map_categories(path: Path, categories: list[dict], classes: list[str]) -> dict[int, int]:
    """Map COCO category ids to 0-based class indices.

    By name when every category name is a configured class name; otherwise by ascending
    category id when there are as many categories as classes; otherwise `DataError`.
    """
    names = [c["name"] for c in categories]
    if all(name in classes for name in names):
        return {c["id"]: classes.index(c["name"]) for c in categories}
    if len(categories) == len(classes):
        return {cid: index for index, cid in enumerate(sorted(c["id"] for c in categories))}
    raise DataError(
        f"{path}: categories {names} match neither the configured class names {classes} nor "
        f"their number ({len(classes)})"
    )


def _to_rle(segmentation, height: int, width: int) -> dict:
    """A polygon list, uncompressed RLE or compressed RLE as one compressed RLE."""
    if isinstance(segmentation, list):
        return mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
    if isinstance(segmentation.get("counts"), list):
        return mask_utils.frPyObjects(segmentation, height, width)
    return segmentation


def _load_coco_sample(source: dict, image_id: str) -> Sample:
    """Read one COCO image; crowd annotations are skipped.

    Within one class, a pixel claimed by two instances goes to the smaller instance
    (`io.paint_order`), so that a small cell lying on a large one stays whole.
    """
    json_path = source["train_json"]
    coco = _parse_coco(source)
    if image_id not in coco.images:
        raise DataError(f"{json_path}: no image named {image_id}")
    record = coco.images[image_id]
    image_path = Path(source["image_dir"]) / record["file_name"]
    image = read_image(image_path)
    height, width = image.shape[:2]
    if (record["height"], record["width"]) != (height, width):
        raise DataError(
            f"{image_path}: image is {height}x{width} (HxW) but {json_path} says "
            f"{record['height']}x{record['width']}"
        )
    rles = [[] for _ in source["classes"]]
    for ann in coco.annotations[image_id]:
        if not ann.get("iscrowd", 0):
            rle = _to_rle(ann["segmentation"], height, width)
            rles[coco.class_of_category[ann["category_id"]]].append(rle)
    labels = np.zeros((len(rles), height, width), np.int32)
    for c, class_rles in enumerate(rles):
        if class_rles:
            # decoded one at a time: images may hold 1000s of cells
            for number in paint_order(mask_utils.area(class_rles)):
                labels[c][mask_utils.decode(class_rles[number]).astype(bool)] = number + 1
        labels[c] = relabel_consecutive(labels[c])
    return Sample(image_id, image, labels)
