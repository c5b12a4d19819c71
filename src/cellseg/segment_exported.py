"""Segment images with one exported fold, with only numpy, onnxruntime and tifffile installed.

    python -m cellseg.segment_exported --model results/export/fold0.onnx IMAGE.tif [...] --out DIR

For a machine without torch (or the pipeline): the model file of `export_fold` (or its INT8
version of `quantise_fold`, `fold<k>.int8.onnx`) and the fold's JSON card beside it
(`cellseg.model.onnx_export.model_card`) hold everything needed. Per image, in
`DIR/<image name>/`: `labels.tif` ((C, H, W) uint32, plane c = class c + 1, instances 1..n, as
`segment` writes it), `cells.geojson` (QuPath detections, pixel-edge outlines: pixel (r, c)
covers [c, c + 1) x [r, r + 1)) and `cells.csv` (one row per cell).

What it runs, and how it differs from `snakemake segment`: one fold, no TTA and no fold
ensemble; tiles of the card's size and overlap, each cell taken from the tile whose core
(the tile up to the middle of each overlap) holds its box centre, so cells narrower than half
the overlap are seen whole once; then the card's `cells` operating point: per-class score and
mask thresholds, mask NMS across classes, and pixels claimed twice given to the higher
score. TIFF input only (any of tifffile's codecs; 8- or 16-bit or float in [0, 1]; grey, RGB
or RGBA), taken to be at the training pixel size. Imports no torch.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import numpy as np
import tifffile

from cellseg.inference.onnx_backend import OnnxModel

LABEL_TILE = 512


def read_rgb8(path: str | Path) -> np.ndarray:
    """A TIFF as (H, W, 3) uint8 RGB, decoded as `cellseg.common.images.to_rgb8` does (by dtype range)."""
    pixels = tifffile.imread(path)
    if pixels.ndim == 3 and pixels.shape[0] in (1, 3, 4) and pixels.shape[-1] not in (1, 3, 4):
        pixels = np.moveaxis(pixels, 0, -1)
    if pixels.ndim == 2:
        pixels = pixels[..., None]
    if pixels.ndim != 3 or pixels.shape[-1] not in (1, 2, 3, 4):
        raise ValueError(f"{path}: expected a grey, RGB or RGBA image, got shape {pixels.shape}")
    if pixels.dtype == np.uint16:
        pixels = np.rint(pixels * (255 / 65535))
    elif pixels.dtype.kind == "f":
        if not (np.nanmin(pixels) >= 0 and np.nanmax(pixels) <= 1):
            raise ValueError(f"{path}: float pixels outside [0, 1]")
        pixels = np.rint(pixels * 255)
    elif pixels.dtype != np.uint8:
        raise ValueError(f"{path}: unsupported pixel type {pixels.dtype}")
    colour = pixels[..., :3] if pixels.shape[-1] >= 3 else np.repeat(pixels[..., :1], 3, axis=-1)
    return np.ascontiguousarray(colour.astype(np.uint8))


def tile_cores(length: int, size: int, overlap: int) -> list[tuple[int, int, int]]:
    """Along one axis: (tile start, core start, core end) per tile; tiles step `size -
    overlap`, the last flush with the end (one tile when `length <= size` or `size` is 0);
    cores split each overlap in the middle."""
    if size <= 0 or length <= size:
        return [(0, 0, length)]
    starts = [*range(0, length - size, size - overlap), length - size]
    cuts = [0, *((start + previous + size) // 2 for previous, start in zip(starts, starts[1:])), length]
    return [(start, cuts[k], cuts[k + 1]) for k, start in enumerate(starts)]


def detect_tiled(model: OnnxModel, image: np.ndarray, size: int, overlap: int) -> dict:
    """Detections of `image` (H, W, 3) uint8 in image coordinates, each from the tile whose core
    holds its box centre: `boxes`, `scores`, `labels`, `windows` arrays and `crops` list."""
    height, width = image.shape[:2]
    parts = []
    for ty, cy0, cy1 in tile_cores(height, size, overlap):
        for tx, cx0, cx1 in tile_cores(width, size, overlap):
            crop = image[ty : ty + (size or height), tx : tx + (size or width)]
            found = model.detect([np.ascontiguousarray(crop.transpose(2, 0, 1), np.float32) / np.float32(255)])[0]
            centre_x = (found["boxes"][:, 0] + found["boxes"][:, 2]) / 2 + tx
            centre_y = (found["boxes"][:, 1] + found["boxes"][:, 3]) / 2 + ty
            own = np.flatnonzero((centre_x >= cx0) & (centre_x < cx1) & (centre_y >= cy0) & (centre_y < cy1))
            parts.append({
                "scores": found["scores"][own], "labels": found["labels"][own],
                "windows": found["windows"][own] + [tx, ty, tx, ty], "crops": [found["crops"][i] for i in own],
            })  # fmt: skip
    return {
        key: np.concatenate([part[key] for part in parts]) for key in ("scores", "labels", "windows")
    } | {"crops": [crop for part in parts for crop in part["crops"]]}


def cells_point(found: dict, point: dict) -> list[tuple[int, float, np.ndarray, np.ndarray]]:
    """The `cells` operating point (module doc): (class id, score, window, binary mask) per
    cell, best score first; masks disjoint, cells without pixels dropped."""
    candidates = []
    for score, label, window, crop in zip(found["scores"], found["labels"], found["windows"], found["crops"]):
        key = str(int(label))
        if score < point["score_thresholds"].get(key, 0.0):
            continue
        # The pipeline binarises its stored uint8 probabilities (x 255, rounded) the same way.
        level = int(np.ceil(point["mask_thresholds"].get(key, 0.5) * 255 - 1e-9))
        mask = np.rint(crop * 255) >= level
        if mask.any():
            candidates.append((int(label), float(score), window.astype(np.int64), mask))
    candidates.sort(key=lambda cell: -cell[1])
    kept = _mask_nms(candidates, point["nms_threshold"])
    return _exclusive(kept)


def _overlap(a, b) -> tuple[int, int, int, int] | None:
    x0, y0, x1, y1 = max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])
    return (x0, y0, x1, y1) if x0 < x1 and y0 < y1 else None


def _common(a, b, region) -> tuple[np.ndarray, np.ndarray]:
    """The parts of cells `a` and `b` (class, score, window, mask) inside `region`."""
    x0, y0, x1, y1 = region
    return tuple(m[y0 - w[1] : y1 - w[1], x0 - w[0] : x1 - w[0]] for _, _, w, m in (a, b))


def _mask_nms(cells: list, threshold: float) -> list:
    """Greedy mask NMS across classes over `cells` sorted by score: a cell whose mask IoU with a
    kept one exceeds `threshold` is dropped (>= 1 keeps all)."""
    if threshold >= 1:
        return cells
    kept = []
    for cell in cells:
        area = cell[3].sum()
        for other in kept:
            region = _overlap(cell[2], other[2])
            if region is None:
                continue
            mine, theirs = _common(cell, other, region)
            shared = np.count_nonzero(mine & theirs)
            if shared and shared / (area + other[3].sum() - shared) > threshold:
                break
        else:
            kept.append(cell)
    return kept


def _exclusive(cells: list) -> list:
    """Pixels claimed by several cells go to the higher score (the earlier one); windows shrink
    to what is left; cells left without a pixel are dropped."""
    out = []
    for k, cell in enumerate(cells):
        mask = cell[3].copy()
        for other in cells[:k]:
            region = _overlap(cell[2], other[2])
            if region is not None:
                x0, y0, x1, y1 = region
                mine = mask[y0 - cell[2][1] : y1 - cell[2][1], x0 - cell[2][0] : x1 - cell[2][0]]
                mine &= ~other[3][y0 - other[2][1] : y1 - other[2][1], x0 - other[2][0] : x1 - other[2][0]]
        rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
        if len(rows):
            window = np.array([cell[2][0] + cols[0], cell[2][1] + rows[0], cell[2][0] + cols[-1] + 1, cell[2][1] + rows[-1] + 1])
            out.append((cell[0], cell[1], window, mask[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]))
    return out


def cell_labels(cells: list) -> list[int]:
    """Each cell's value in its class's plane: 1..n per class in the cells' order."""
    counts: dict[int, int] = {}
    labels = []
    for class_id, *_ in cells:
        counts[class_id] = counts.get(class_id, 0) + 1
        labels.append(counts[class_id])
    return labels


def write_labels(path: Path, cells: list, labels: list[int], n_classes: int, size: tuple[int, int]) -> None:
    """labels.tif: (C, H, W) uint32, tiled, zlib, as `cellseg.inference.segment.write_labels`."""
    planes = np.zeros((n_classes, *size), np.uint32)
    for (class_id, _, (x0, y0, x1, y1), mask), label in zip(cells, labels):
        planes[class_id - 1, y0:y1, x0:x1][mask] = label
    tifffile.imwrite(path, planes, tile=(LABEL_TILE, LABEL_TILE), compression="zlib", photometric="minisblack")


def outline(mask: np.ndarray, x0: int, y0: int) -> dict:
    """GeoJSON geometry of a binary mask whose pixel (0, 0) is image pixel (x0, y0): the rings of
    its pixel edges (outer rings with their holes; a MultiPolygon when it is in pieces that
    touch at most at corners)."""
    rings = [ring + [x0, y0] for ring in _rings(mask)]
    areas = [_signed_area(ring) for ring in rings]
    outers = [ring for ring, area in zip(rings, areas) if area > 0]
    polygons = [[outer] for outer in outers]
    for ring, area in zip(rings, areas):
        if area < 0:
            inside = [k for k, outer in enumerate(outers) if _contains(outer, ring[0] + 0.25)] or [0]
            polygons[inside[0]].append(ring)
    coords = [[ring.tolist() for ring in polygon] for polygon in polygons]
    return {"type": "Polygon", "coordinates": coords[0]} if len(coords) == 1 else {"type": "MultiPolygon", "coordinates": coords}


_STEPS = np.array([[1, 0], [0, 1], [-1, 0], [0, -1]])  # +x, +y, -x, -y (y down)


def _rings(mask: np.ndarray) -> list[np.ndarray]:
    """Closed vertex rings (k, 2) x, y of a mask's pixel edges, interior on the right of the way
    round (outer rings clockwise on screen, holes anticlockwise); at a vertex two pieces
    share, the right turn is taken, so pieces touching at a corner stay apart."""
    padded = np.pad(mask, 1)
    inner = padded[1:-1, 1:-1]
    edges = {}
    for direction, outside, (dx, dy) in (
        (0, ~padded[:-2, 1:-1], (0, 0)), (1, ~padded[1:-1, 2:], (1, 0)),
        (2, ~padded[2:, 1:-1], (1, 1)), (3, ~padded[1:-1, :-2], (0, 1)),
    ):  # fmt: skip
        rows, cols = np.nonzero(inner & outside)
        for x, y in zip((cols + dx).tolist(), (rows + dy).tolist()):
            edges[(x, y, direction)] = True
    rings = []
    while edges:
        x, y, direction = start = next(iter(edges))
        ring = [(x, y)]
        while True:
            del edges[(x, y, direction)]
            x, y = x + _STEPS[direction][0], y + _STEPS[direction][1]
            turns = ((direction + 1) % 4, direction, (direction + 3) % 4)
            direction = next(d for d in turns if (x, y, d) in edges or (x, y, d) == start)
            if (x, y, direction) == start:
                break
            if direction != _heading(ring, x, y):
                ring.append((x, y))
        ring.append(ring[0])
        rings.append(np.array(ring, np.int64))
    return rings


def _heading(ring: list, x: int, y: int) -> int:
    """The direction from the ring's last vertex to (x, y) (so that collinear vertices merge)."""
    dx, dy = np.sign(x - ring[-1][0]), np.sign(y - ring[-1][1])
    return {(1, 0): 0, (0, 1): 1, (-1, 0): 2, (0, -1): 3}.get((int(dx), int(dy)), -1)


def _signed_area(ring: np.ndarray) -> float:
    x, y = ring[:, 0].astype(np.float64), ring[:, 1].astype(np.float64)
    return float(np.sum(x[:-1] * y[1:] - x[1:] * y[:-1]) / 2)


def _contains(ring: np.ndarray, point: np.ndarray) -> bool:
    """Whether `point` (x, y) lies inside the closed ring (even-odd rule)."""
    (x0, y0), (x1, y1) = ring[:-1].T, ring[1:].T
    crosses = (y0 > point[1]) != (y1 > point[1])
    with np.errstate(divide="ignore", invalid="ignore"):
        at = x0 + (point[1] - y0) * (x1 - x0) / (y1 - y0)
    return bool(np.count_nonzero(crosses & (point[0] < at)) % 2)


def write_outputs(folder: Path, cells: list, class_names: list[str], size: tuple[int, int]) -> None:
    """labels.tif, cells.geojson and cells.csv of one image's cells (module doc)."""
    folder.mkdir(parents=True, exist_ok=True)
    labels = cell_labels(cells)
    write_labels(folder / "labels.tif", cells, labels, len(class_names), size)
    with open(folder / "cells.csv", "w", newline="") as out:
        table = csv.writer(out)
        table.writerow(["id", "class_id", "class", "label", "score", "area_px", "centroid_x", "centroid_y",
                        "bbox_x0", "bbox_y0", "bbox_x1", "bbox_y1"])  # fmt: skip
        for k, ((class_id, score, window, mask), label) in enumerate(zip(cells, labels), 1):
            rows, cols = np.nonzero(mask)
            table.writerow([
                k, class_id, class_names[class_id - 1], label, round(score, 4), len(rows),
                round(cols.mean() + window[0], 2), round(rows.mean() + window[1], 2), *window.tolist(),
            ])  # fmt: skip
    with open(folder / "cells.geojson", "w") as out:
        out.write('{"type":"FeatureCollection","features":[')
        for k, ((class_id, score, window, mask), label) in enumerate(zip(cells, labels), 1):
            feature = {
                "type": "Feature", "id": k, "geometry": outline(mask, int(window[0]), int(window[1])),
                "properties": {
                    "objectType": "detection", "classification": {"name": class_names[class_id - 1]},
                    "measurements": {"score": round(score, 4), "area_px": int(mask.sum())}, "label": label,
                },
            }  # fmt: skip
            out.write(("," if k > 1 else "") + json.dumps(feature, separators=(",", ":")))
        out.write("]}")


def segment(model: OnnxModel, card: dict, image: np.ndarray) -> list:
    """The cells of `image` (H, W, 3) uint8 at the card's `cells` point."""
    return cells_point(detect_tiled(model, image, card["tile_size"], card["overlap"]), card["points"]["cells"])


def card_path(model: str | Path) -> Path:
    """The JSON card beside an exported fold: `fold<k>.json` for `fold<k>.onnx` and for its INT8
    version `fold<k>.int8.onnx`."""
    model = Path(model)
    name = model.name.removesuffix(".onnx").removesuffix(".int8")
    return model.with_name(name + ".json")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m cellseg.segment_exported", description=__doc__.split("\n")[0])
    parser.add_argument("images", nargs="+", help="TIFF images")
    parser.add_argument("--model", required=True, help="an exported fold, results/export/fold<k>.onnx or fold<k>.int8.onnx")
    parser.add_argument("--card", help="its JSON (default: the fold's, beside the model: fold<k>.json)")
    parser.add_argument("--out", default="segmented", help="output folder, one subfolder per image")
    parser.add_argument("--threads", type=int, default=0, help="ONNX Runtime threads (0 = all cores)")
    args = parser.parse_args(argv)
    card = json.loads(Path(args.card or card_path(args.model)).read_text())
    if card.get("stain", "none") != "none":
        sys.exit(f"{args.model}: trained on stain-normalised images ({card['stain']}), which this runner does not do")
    model = OnnxModel(args.model, threads=args.threads)
    for path in args.images:
        image = read_rgb8(path)
        cells = segment(model, card, image)
        write_outputs(Path(args.out) / Path(path).stem, cells, card["classes"], image.shape[:2])
        print(f"{path}: {len(cells)} cells", flush=True)


if __name__ == "__main__":
    main()
