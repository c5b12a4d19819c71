"""The COCO-RLE submission: one result per predicted instance, validated before it is written.

Format (the reference task's): a JSON list of {image_id (int, from the id map), bbox [x, y, w, h]
(COCO xywh of the binary mask), score, category_id (1-based), segmentation {size [h, w],
counts (RLE string)}}, zipped alone as `test-results.json`. Instances with an empty binary mask
are left out (they have no box and could only count as false positives).
"""

from __future__ import annotations

import contextlib
import io
import json
import zipfile
from pathlib import Path

from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from cellseg.common.errors import DataError
from cellseg.common.files import atomic_path
from cellseg.common.instances import InstanceSet, quantised_threshold
from cellseg.scoring.truth import encode_window

ARCHIVE_MEMBER = "test-results.json"


def id_map_entries(tests) -> list[dict]:
    """The id map (`file_name`, `id`, `height`, `width` per image) of `cellseg.data.dataset.TestImage`s."""
    return [{"file_name": t.file_name, "id": t.id, "height": t.height, "width": t.width} for t in tests]


def build_submission(
    preds: dict[str, InstanceSet],
    id_map: list[dict],
    class_names: list[str],
    mask_threshold: float = 0.5,
) -> list[dict]:
    """Result dicts for every instance of every image in `id_map` ({file_name, id, height,
    width} per test image). Raises DataError when an image of the map has no prediction, a
    prediction names an image outside the map, or sizes or class ids disagree."""
    by_name = {entry["file_name"]: entry for entry in id_map}
    missing = sorted(by_name.keys() - preds.keys())
    extra = sorted(preds.keys() - by_name.keys())
    if missing or extra:
        raise DataError(f"predictions do not match the id map: missing {missing[:5]}, not in the map {extra[:5]}")
    results = []
    for file_name, instances in preds.items():
        entry = by_name[file_name]
        if tuple(instances.image_size) != (entry["height"], entry["width"]):
            raise DataError(
                f"{file_name}: predicted size {instances.image_size} but the id map says "
                f"{(entry['height'], entry['width'])}"
            )
        bad = sorted(set(instances.classes.tolist()) - set(range(1, len(class_names) + 1)))
        if bad:
            raise DataError(f"{file_name}: category ids {bad} outside 1..{len(class_names)}")
        level = quantised_threshold(mask_threshold)
        for (x0, y0, _, _), probs, score, class_id in zip(
            instances.windows, instances.probs, instances.scores, instances.classes
        ):
            binary = probs >= level
            if not binary.any():
                continue
            rle = encode_window(binary, x0, y0, instances.image_size)
            results.append(
                {
                    "image_id": int(entry["id"]),
                    "bbox": [float(v) for v in mask_utils.toBbox(rle)],
                    "score": float(score),
                    "category_id": int(class_id),
                    "segmentation": {"size": [int(v) for v in rle["size"]], "counts": rle["counts"]},
                }
            )
    return results


def validate_submission(results: list[dict], id_map: list[dict], class_names: list[str]) -> None:
    """Raise DataError unless every result names an image of the map and a known class, its RLE decodes to that
    image's size, and pycocotools' `loadRes` accepts the list against the map's images."""
    sizes = {int(entry["id"]): (int(entry["height"]), int(entry["width"])) for entry in id_map}
    for n, result in enumerate(results):
        image_id = result.get("image_id")
        if image_id not in sizes:
            raise DataError(f"result {n}: image_id {image_id!r} is not in the test id map")
        if result.get("category_id") not in range(1, len(class_names) + 1):
            raise DataError(f"result {n}: category_id {result.get('category_id')!r} outside 1..{len(class_names)}")
        try:
            decoded = mask_utils.decode(result["segmentation"]).shape
        except Exception as error:
            raise DataError(f"result {n} (image {image_id}): segmentation does not decode: {error}") from error
        if decoded != sizes[image_id]:
            raise DataError(f"result {n} (image {image_id}): mask is {decoded}, the image {sizes[image_id]}")
    coco = COCO()
    coco.dataset = {
        "images": [{"id": i, "height": h, "width": w} for i, (h, w) in sizes.items()],
        "annotations": [],
        "categories": [{"id": k + 1, "name": name} for k, name in enumerate(class_names)],
    }
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
        if results:
            try:
                coco.loadRes([dict(r) for r in results])
            except Exception as error:
                raise DataError(f"pycocotools cannot load the submission: {error!r}") from error


def write_submission(
    results: list[dict], json_path: str | Path, zip_path: str | Path, id_map: list[dict], class_names: list[str]
) -> None:
    """Validate, then write the JSON and a zip holding only it as `test-results.json`, each
    atomically; a failed validation writes nothing."""
    validate_submission(results, id_map, class_names)
    text = json.dumps(results)
    with atomic_path(json_path) as tmp:
        tmp.write_text(text)
    with atomic_path(zip_path) as tmp:
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as archive:
            archive.writestr(ARCHIVE_MEMBER, text)
