"""Inference of one trained model on whole images: tiles, test-time augmentation, seam merging.

The model resizes every input by one factor (`cellseg.model.mask_rcnn.build_model`), so cells appear at
the training magnification whatever the tile size; inference cuts overlapping tiles
(`cellseg.data.tiles.tile_origins`: step S − overlap, the last tile flush with the image end; an
image that fits one tile is predicted whole) and stitches their instances into one image:

1. Within each tile, an instance whose mask (at probability 0.5) touches a tile edge that is
   not an image edge is dropped when its visible part lies inside the neighbouring tile across
   that edge (it starts after that tile's first pixel / ends before its last one): that tile
   sees it whole. This assumes cells are narrower than the overlap; then every cell is whole,
   and away from inner edges, in at least one tile.
2. Instances of the same class from two tiles whose masks (at 0.5) have IoU >= 0.5 within the
   two tiles' common area are one cell (seen twice in the overlap, or cut pieces of a cell
   wider than the overlap); they merge into one: union of the soft masks (pixelwise max),
   union of the boxes, highest score. Cells that merely touch have IoU 0 and stay apart.

Test-time augmentation runs the same on flipped / rotated copies of the image, maps the
instances back and fuses the views with `cellseg.inference.ensemble.fuse_instance_sets` (WBF, scores and
masks averaged). Soft masks and raw scores are kept; the only score threshold is the model's
own `box_score_thresh`.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch
from scipy import sparse
from scipy.sparse.csgraph import connected_components

from cellseg.common.device import amp_forced_on_cpu, autocast, resolve_amp
from cellseg.common.errors import DataError
from cellseg.common.instances import InstanceSet, bounding_rect, quantised_threshold
from cellseg.common.iou import rect_intersection, rects_meet, rects_meeting
from cellseg.common.pixel_size import instances_on_image, resampled_image
from cellseg.data.tiles import tile_origins
from cellseg.inference.ensemble import fuse_instance_sets
from cellseg.model.mask_rcnn import build_model

TTA_OPS = ("hflip", "vflip", "rot90")
SEAM_MASK_THRESHOLD = 0.5  # binarises masks for the seam decisions only; the soft masks are kept
SEAM_IOU = 0.5


def load_model_for_inference(
    weights_path: str | os.PathLike, cfg: dict, num_classes: int, device: torch.device, tile_size: int = 0,
    backend: str = "torch",
) -> torch.nn.Module:  # fmt: skip
    """The model `build_model(cfg, num_classes)` with the state dict at `weights_path`, on
    `device`, in eval mode. `tile_size`: the training tiles' side, so that images are seen at
    the training magnification (see `build_model`); no pretrained weights are fetched.
    `backend` (`predict.backend`): `torch`; `onnxruntime`: the model exported
    (`cellseg.model.onnx_export`) and run by ONNX Runtime on the CPU with torch's thread count, with the
    same `detect`; `onnxruntime-int8`: `weights_path` is then the fold's quantised ONNX file
    (`cellseg.model.onnx_quantise`), run the same way. Raises `DataError` naming the file when the
    weights do not fit."""
    if backend == "onnxruntime-int8":
        from cellseg.inference.onnx_backend import OnnxModel

        return OnnxModel(weights_path, threads=torch.get_num_threads())
    model = build_model(cfg, num_classes, tile_size=tile_size, pretrained=False)
    state = torch.load(weights_path, map_location="cpu", weights_only=True)
    try:
        model.load_state_dict(state)
    except RuntimeError as error:
        raise DataError(f"{weights_path}: weights do not fit the model built from the train config: {error}") from None
    if backend == "onnxruntime":
        from cellseg.inference.onnx_backend import OnnxModel
        from cellseg.model.onnx_export import onnx_bytes

        return OnnxModel(onnx_bytes(model.eval()), threads=torch.get_num_threads())
    return model.to(device).eval()


def predict_settings(predict: dict, device: torch.device) -> dict:
    """The keyword arguments of `predict_image` from the workflow's predict settings (tile_size,
    overlap, tta, tta_fusion, batch_size, amp as configured), with amp resolved for `device`:
    what the predict stage and segment both run with."""
    return {**predict, "amp": resolve_amp(device, predict.get("amp") or "none", on_cpu=amp_forced_on_cpu())}


def tta_views(tta: Iterable[str]) -> list[tuple[str, ...]]:
    """Every combination of the listed ops, applied in the order of `TTA_OPS`, identity first.

    `[hflip, rot90]` gives `()`, `("rot90",)`, `("hflip",)`, `("hflip", "rot90")`.
    """
    ops = [op for op in TTA_OPS if op in tta]
    return [tuple(op for op, on in zip(ops, bits) if on) for bits in itertools.product((False, True), repeat=len(ops))]


@torch.inference_mode()
def predict_image(
    model,
    image: np.ndarray,
    tile_size: int,
    overlap: int,
    tta: Iterable[str],
    device: torch.device,
    batch_size: int = 4,
    tta_fusion: dict | None = None,
    amp: str = "none",
    scale: float = 1.0,
) -> InstanceSet:
    """Instances of `model` (eval mode; its `detect` as `CellMaskRCNN.detect`) in one image.

    image: (H, W, 3) uint8 RGB. tile_size: S, 0 = always the whole image, unpadded; an image
    that fits one tile is predicted whole. tta: ops of `TTA_OPS`, all their
    combinations are run (`tta_views`). tta_fusion: keyword arguments of `fuse_instance_sets`
    for the views (not `weights`: views weigh the same). amp: none, bf16 or fp16, resolved for
    the device (`cellseg.common.device.resolve_amp`); the model's `detect` runs under that autocast.
    scale: network pixels per image pixel (`cellseg.common.pixel_size.network_scale`); the image is
    resampled by it first and the instances mapped back. Returns an `InstanceSet` of size (H, W).
    """
    fusion = dict(tta_fusion or {})
    if "weights" in fusion:
        raise ValueError("tta_fusion: TTA views are weighted equally, drop 'weights'")
    view = image if scale == 1.0 else resampled_image(image, scale)
    found = fuse_instance_sets(predict_views(model, view, tile_size, overlap, tta, device, batch_size, amp), **fusion)
    return found if scale == 1.0 else instances_on_image(found, image.shape[:2])


@torch.inference_mode()
def predict_views(
    model, image: np.ndarray, tile_size: int, overlap: int, tta: Iterable[str], device: torch.device,
    batch_size: int = 4, amp: str = "none",
) -> list[InstanceSet]:  # fmt: skip
    """The instances of each TTA view (`tta_views` order, identity first), mapped back into the
    image's frame and not yet fused (arguments as `predict_image`)."""
    views = []
    for ops in tta_views(tta):
        view = image
        for op in ops:
            view = _FORWARD[op](view)
        found = predict_tiled(model, np.ascontiguousarray(view), tile_size, overlap, device, batch_size, amp)
        for op in reversed(ops):
            found = _BACKWARD[op](found)
        views.append(found)
    return views


def predict_tiled(
    model, image: np.ndarray, tile_size: int, overlap: int, device: torch.device, batch_size: int, amp: str = "none"
) -> InstanceSet:
    """One view: the model on each tile of `image` (H, W, 3) uint8, seams merged (module doc)."""
    height, width = image.shape[:2]
    tiles, padded = _tiles(height, width, tile_size, overlap)
    pixels = torch.from_numpy(image).to(device).permute(2, 0, 1)
    parts, extents, tile_of = [], [], []
    for start in range(0, len(tiles), batch_size):
        batch = tiles[start : start + batch_size]
        inputs = [_padded_crop(pixels, tile, padded) for tile in batch]
        with autocast(device, amp):
            outputs = model.detect(inputs)
        for k, (tile, output) in enumerate(zip(batch, outputs), start):
            found, extent = _tile_instances(output, tile, (height, width))
            keep = ~_cut_by_seam(extent, tile)
            parts.append(found.select(keep))
            extents.append(extent[keep])
            tile_of.append(np.full(int(keep.sum()), k))
    found = InstanceSet.concatenate(parts)
    return _merge_duplicates(found, np.concatenate(extents), np.concatenate(tile_of), tiles)


@dataclass(frozen=True)
class _Tile:
    """A tile's valid (unpadded) extent in the image, and for each side with a neighbouring tile
    the neighbour's far limit: `left` = the left neighbour's end x, `right` = the right
    neighbour's start x, `top` / `bottom` likewise in y; None at an image edge."""

    x0: int
    y0: int
    x1: int
    y1: int
    left: int | None
    right: int | None
    top: int | None
    bottom: int | None


def _tiles(height: int, width: int, size: int, overlap: int) -> tuple[list[_Tile], tuple[int, int]]:
    """The tiles of an image, row by row, and the (h, w) every tile is cropped to.

    Tiles are flush with the image's end, so all have one size: `size`, or the image's side
    where it is smaller (not padded: the model sees every image at the training magnification,
    whatever its size, see `cellseg.model.mask_rcnn.build_model`)."""
    if size == 0:
        return [_Tile(0, 0, width, height, None, None, None, None)], (height, width)
    ys, xs = tile_origins(height, size, overlap), tile_origins(width, size, overlap)
    tiles = []
    for iy, ix in itertools.product(range(len(ys)), range(len(xs))):
        y0, x0 = ys[iy], xs[ix]
        tiles.append(_Tile(
            x0, y0, min(x0 + size, width), min(y0 + size, height),
            left=xs[ix - 1] + size if ix > 0 else None,
            right=xs[ix + 1] if ix + 1 < len(xs) else None,
            top=ys[iy - 1] + size if iy > 0 else None,
            bottom=ys[iy + 1] if iy + 1 < len(ys) else None,
        ))
    return tiles, (min(size, height), min(size, width))


def _padded_crop(pixels: torch.Tensor, tile: _Tile, padded: tuple[int, int]) -> torch.Tensor:
    """The tile of `pixels` (3, H, W) uint8 as (3, h, w) float32 in [0, 1], zero-padded to `padded`."""
    out = torch.zeros((3, *padded), dtype=torch.float32, device=pixels.device)
    out[:, : tile.y1 - tile.y0, : tile.x1 - tile.x0] = pixels[:, tile.y0 : tile.y1, tile.x0 : tile.x1] / 255.0
    return out


def _tile_instances(output: dict, tile: _Tile, image_size: tuple[int, int]) -> tuple[InstanceSet, np.ndarray]:
    """One tile's detections in image coordinates, and their (N, 4) int64 mask extents.

    output: `CellMaskRCNN.detect`'s dict for the padded tile. Masks are cut to the valid extent;
    a detection starting in the padding is dropped. Windows cover the non-zero (quantised)
    probabilities, extents the pixels >= `SEAM_MASK_THRESHOLD` (the window when there are
    none), both x0, y0, x1, y1.
    """
    h, w = tile.y1 - tile.y0, tile.x1 - tile.x0
    boxes = output["boxes"]
    inside = np.flatnonzero((boxes[:, 0] < w) & (boxes[:, 1] < h))
    windows = np.minimum(output["windows"][inside], [w, h, w, h])
    crops = [output["crops"][i][: y1 - y0, : x1 - x0] for i, (x0, y0, x1, y1) in zip(inside, windows.tolist())]
    found = InstanceSet.from_windows(
        (h, w), np.clip(boxes[inside], 0, [w, h, w, h]), output["scores"][inside], output["labels"][inside],
        windows, crops,
    )
    extents = _mask_extents(found, quantised_threshold(SEAM_MASK_THRESHOLD))
    shift = np.array([tile.x0, tile.y0, tile.x0, tile.y0])
    found.image_size = image_size
    found.boxes += shift.astype(np.float32)
    found.windows += shift.astype(np.int32)
    return found, extents + shift


def _mask_extents(found: InstanceSet, level: int) -> np.ndarray:
    """(N, 4) int64 bounding rectangles x0, y0, x1, y1 of each mask's pixels >= `level`; the
    mask's window where there are none."""
    extents = found.windows.astype(np.int64)
    for i, probs in enumerate(found.probs):
        rect = bounding_rect(probs >= level)
        if rect:
            extents[i] = np.add(rect, np.tile(found.windows[i, :2], 2))
    return extents


def _cut_by_seam(extents: np.ndarray, tile: _Tile) -> np.ndarray:
    """(N,) bool: the instance touches an inner edge of `tile` and the tile across it sees it whole.

    extents: (N, 4) int64 x0, y0, x1, y1 of the masks in image coordinates.
    """
    x0, y0, x1, y1 = extents.T
    cut = np.zeros(len(extents), bool)
    if tile.left is not None:
        cut |= (x0 == tile.x0) & (x1 < tile.left)
    if tile.right is not None:
        cut |= (x1 == tile.x1) & (x0 > tile.right)
    if tile.top is not None:
        cut |= (y0 == tile.y0) & (y1 < tile.top)
    if tile.bottom is not None:
        cut |= (y1 == tile.y1) & (y0 > tile.bottom)
    return cut


def _merge_duplicates(found: InstanceSet, extents: np.ndarray, tile_of: np.ndarray, tiles: list[_Tile]) -> InstanceSet:
    """Merge the instances of different tiles that are one cell (step 2 of the module doc).

    extents: (N, 4) mask extents at `SEAM_MASK_THRESHOLD`; tile_of: (N,) tile index of each.
    """
    pairs = []
    for a, b in _overlapping_pairs(np.array([_rect(tile) for tile in tiles]).reshape(-1, 4)):
        common = rect_intersection(_rect(tiles[a]), _rect(tiles[b]))
        ia = np.flatnonzero((tile_of == a) & rects_meeting(extents, common))
        ib = np.flatnonzero((tile_of == b) & rects_meeting(extents, common))
        # Masks whose extents share no pixel have IoU 0: only the rest are compared.
        candidates = rects_meet(extents[ia], extents[ib]) & (found.classes[ia][:, None] == found.classes[ib][None])
        for i, j in zip(*(index[k].tolist() for index, k in zip((ia, ib), np.nonzero(candidates)))):
            if _iou_within(found, i, j, common) >= SEAM_IOU:
                pairs.append((i, j))
    if not pairs:
        return found
    i, j = np.array(pairs).T
    graph = sparse.coo_matrix((np.ones(len(i)), (i, j)), shape=(len(found), len(found)))
    n_groups, group = connected_components(graph, directed=False)
    return InstanceSet.concatenate([_union(found, np.flatnonzero(group == g)) for g in range(n_groups)])


def _overlapping_pairs(rects: np.ndarray) -> list[tuple[int, int]]:
    """(a, b), a < b, of the x0, y0, x1, y1 rectangles `rects` (N, 4) that share a pixel."""
    meet = np.triu(rects_meet(rects, rects), k=1)
    return list(zip(*(index.tolist() for index in np.nonzero(meet))))


def _rect(tile: _Tile) -> tuple[int, int, int, int]:
    return tile.x0, tile.y0, tile.x1, tile.y1


def _iou_within(found: InstanceSet, i: int, j: int, region) -> float:
    """IoU of masks i and j (at `SEAM_MASK_THRESHOLD`) counting only the pixels in `region`."""
    level = quantised_threshold(SEAM_MASK_THRESHOLD)
    both = found.windows[[i, j]]
    region = rect_intersection(region, (*both[:, :2].min(0), *both[:, 2:].max(0)))
    crops = []
    for k in (i, j):
        x0, y0, x1, y1 = rect_intersection(found.windows[k], region) or (0, 0, 0, 0)
        wx, wy = found.windows[k, :2]
        crop = np.zeros((region[3] - region[1], region[2] - region[0]), bool)
        crop[y0 - region[1] : y1 - region[1], x0 - region[0] : x1 - region[0]] = (
            found.probs[k][y0 - wy : y1 - wy, x0 - wx : x1 - wx] >= level
        )
        crops.append(crop)
    union = np.count_nonzero(crops[0] | crops[1])
    return np.count_nonzero(crops[0] & crops[1]) / union if union else 0.0


def _union(found: InstanceSet, members: np.ndarray) -> InstanceSet:
    """One instance from `members` of `found`: max of the soft masks over the union window,
    union of the boxes, highest score, their (common) class."""
    if len(members) == 1:
        return found.select(members)
    windows = found.windows[members]
    window = np.r_[windows[:, :2].min(0), windows[:, 2:].max(0)]
    probs = np.zeros((window[3] - window[1], window[2] - window[0]), np.uint8)
    for k, (x0, y0, x1, y1) in zip(members.tolist(), (windows - window[[0, 1, 0, 1]]).tolist()):
        np.maximum(probs[y0:y1, x0:x1], found.probs[k], out=probs[y0:y1, x0:x1])
    boxes = found.boxes[members]
    return InstanceSet(
        image_size=found.image_size,
        boxes=np.r_[boxes[:, :2].min(0), boxes[:, 2:].max(0)][None].astype(np.float32),
        scores=found.scores[members].max(keepdims=True),
        classes=found.classes[members[:1]],
        windows=window[None].astype(np.int32),
        probs=[probs],
    )


def _hflip_back(found: InstanceSet) -> InstanceSet:
    """Instances found in the left-right mirrored image, in the image's own coordinates."""
    width = found.image_size[1]
    return InstanceSet(
        found.image_size, _mirror(found.boxes, [0, 2], width), found.scores, found.classes,
        _mirror(found.windows, [0, 2], width), [np.ascontiguousarray(p[:, ::-1]) for p in found.probs],
    )


def _vflip_back(found: InstanceSet) -> InstanceSet:
    """Instances found in the upside-down mirrored image, in the image's own coordinates."""
    height = found.image_size[0]
    return InstanceSet(
        found.image_size, _mirror(found.boxes, [1, 3], height), found.scores, found.classes,
        _mirror(found.windows, [1, 3], height), [np.ascontiguousarray(p[::-1]) for p in found.probs],
    )


def _mirror(rects: np.ndarray, axis: list[int], length: int) -> np.ndarray:
    """xyxy `rects` (N, 4) mirrored along the coordinate pair `axis` of an axis `length` long."""
    out = rects.copy()
    out[:, axis] = length - rects[:, axis[::-1]]
    return out


def _rot90_back(found: InstanceSet) -> InstanceSet:
    """Instances found in `np.rot90(image)` (90° counter-clockwise), in the image's coordinates.

    Pixel (row r, col c) of the rotated (W, H) image is pixel (c, W - 1 - r) of the (H, W) image,
    so x' ↦ y and y' ↦ W − x for coordinates.
    """
    width, height = found.image_size  # the rotated frame is (W, H)
    x0, y0, x1, y1 = found.boxes.T
    wx0, wy0, wx1, wy1 = found.windows.T
    return InstanceSet(
        (height, width),
        np.stack([width - y1, x0, width - y0, x1], 1).astype(np.float32),
        found.scores,
        found.classes,
        np.stack([width - wy1, wx0, width - wy0, wx1], 1).astype(np.int32),
        [np.ascontiguousarray(np.rot90(p, -1)) for p in found.probs],
    )


_FORWARD = {"hflip": lambda image: image[:, ::-1], "vflip": lambda image: image[::-1], "rot90": np.rot90}
_BACKWARD = {"hflip": _hflip_back, "vflip": _vflip_back, "rot90": _rot90_back}
