"""Weighted boxes fusion (WBF) of several instance sets of one image, with their masks fused too.

Folds of the cross-validation (and TTA views in `cellseg.inference.predict`) each predict every cell once;
WBF clusters their boxes per class and averages each cluster. `ensemble_boxes` gives the fused
boxes but not which input boxes formed each cluster, which mask fusion needs, and on 5 × 300
boxes it alone takes longer than the whole fusion may (50 ms). So its clustering is replayed
here, step for step (same box order, same greedy matching on the running float32 cluster box,
same confidence formulas; `tests/test_ensemble.py` checks the fused boxes and scores against
`ensemble_boxes.weighted_boxes_fusion`), keeping each input box's cluster.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cellseg.common.instances import PROB_SCALE, InstanceSet, instance_set_names, iter_instance_sets
from cellseg.inference.calibrate import calibrate_set

CONF_TYPES = ("avg", "max", "box_and_model_avg", "absent_model_aware_avg")


def fuse_instance_sets(
    sets: list[InstanceSet],
    weights: list[float] | None = None,
    iou_thr: float = 0.55,
    skip_box_thr: float = 0.0,
    conf_type: str = "avg",
    absent_as_zero: bool = True,
) -> InstanceSet:
    """Fuse the instance sets of one image (one per fold or TTA view) into one.

    Boxes (xyxy pixels, normalised to [0, 1] by the image size) are clustered per class as
    `ensemble_boxes.weighted_boxes_fusion(weights, iou_thr, skip_box_thr, conf_type)` does:
    a fused box is the (score × weight)-weighted mean of its members, its score as
    `conf_type` says. Instances with score < `skip_box_thr` or a zero-area box are dropped. A
    fused mask is the weight-weighted mean over the sets of each set's mean member mask; a set
    without a member counts as an all-zero mask when `absent_as_zero`, else is left out. Its
    window is the union of its members' windows. Sorted by fused score, highest first.
    One set comes back unchanged (the same object).
    """
    if not sets:
        raise ValueError("fuse_instance_sets: no instance sets")
    if len(sets) == 1:
        return sets[0]
    if not 0.0 <= iou_thr <= 1.0:
        raise ValueError(f"iou_thr must be in [0, 1], got {iou_thr}")
    if conf_type not in CONF_TYPES:
        raise ValueError(f"conf_type must be one of {CONF_TYPES}, got {conf_type!r}")
    weights = np.ones(len(sets)) if weights is None else np.asarray(weights, np.float64)
    if weights.shape != (len(sets),):
        raise ValueError(f"{weights.size} weights for {len(sets)} instance sets")
    every = InstanceSet.concatenate(sets)
    model = np.repeat(np.arange(len(sets)), [len(s) for s in sets])
    height, width = every.image_size
    scale = np.array([width, height, width, height], np.float64)
    boxes = np.clip(every.boxes.astype(np.float64) / scale, 0.0, 1.0)
    boxes = np.concatenate([np.minimum(boxes[:, :2], boxes[:, 2:]), np.maximum(boxes[:, :2], boxes[:, 2:])], 1)
    weighted_scores = every.scores.astype(np.float64) * weights[model]
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    kept = np.flatnonzero((every.scores >= skip_box_thr) & (area != 0.0))
    if not len(kept):
        return InstanceSet.empty(every.image_size)

    members, cluster_of, cluster_boxes = [], [], []
    for label in np.unique(every.classes[kept]):
        index = kept[every.classes[kept] == label]
        index = index[np.argsort(weighted_scores[index])[::-1]]  # ensemble_boxes' order, ties included
        cluster, fused = _cluster(boxes[index], weighted_scores[index], iou_thr)
        members.append(index)
        cluster_of.append(cluster + sum(len(b) for b in cluster_boxes))
        cluster_boxes.append(fused)
    members, cluster_of = np.concatenate(members), np.concatenate(cluster_of)
    cluster_boxes = np.concatenate(cluster_boxes)
    scores = _cluster_scores(cluster_of, weighted_scores[members], model[members], weights, conf_type)
    order = np.argsort(-scores, kind="stable")
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    fused = InstanceSet(
        image_size=every.image_size,
        boxes=(cluster_boxes[order] * scale).astype(np.float32),
        scores=scores[order].astype(np.float32),
        classes=np.zeros(len(order), np.int64),
        windows=np.zeros((len(order), 4), np.int32),
        probs=[],
    )
    fused.classes[rank[cluster_of]] = every.classes[members]
    _fuse_masks(fused, every, members, rank[cluster_of], model[members], weights, absent_as_zero)
    return fused


def fuse_fold_folders(
    folders: dict[int, str | Path], out: str | Path, calibration: dict[int, dict] | None = None, **fusion
) -> int:
    """Fuse the predict folders of the folds (`{fold: folder}` of `<name>.npz` files) image by
    image into `out` (created), one `<name>.npz` per image of the first fold's folder, each
    fold's scores first mapped through its `calibration` map when given (`cellseg.inference.calibrate`).
    Reads and fuses one image at a time, so memory does not grow with the number of images.
    `fusion`: keyword arguments of `fuse_instance_sets`. Returns the number of images fused.
    `FileNotFoundError` names a fold's folder that lacks one of the first fold's images."""
    calibration = calibration or {}
    names = instance_set_names(next(iter(folders.values())))
    readers = [(instances for _, instances in iter_instance_sets(folder, names)) for folder in folders.values()]
    maps = [calibration.get(fold) for fold in folders]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for name, sets in zip(names, zip(*readers)):
        fuse_folds(list(sets), maps, **fusion).save(out / f"{name}.npz")
    return len(names)


def fuse_folds(sets: list[InstanceSet], maps: list[dict | None], **fusion) -> InstanceSet:
    """One image's fold predictions (`sets`, in fold order) fused: each fold's scores mapped
    through its calibration map (`maps`, None = as predicted), then `fuse_instance_sets(sets,
    **fusion)`. The fusion step of the one inference path (`cellseg.inference.fold_ensemble`)."""
    return fuse_instance_sets([calibrate_set(s, m) for s, m in zip(sets, maps, strict=True)], **fusion)


def _cluster(boxes: np.ndarray, weighted_scores: np.ndarray, iou_thr: float) -> tuple[np.ndarray, np.ndarray]:
    """Greedy WBF clustering of one class's boxes, as `ensemble_boxes` does it.

    boxes: (n, 4) float64 normalised xyxy, sorted by `weighted_scores` (n,) descending. Each box
    joins the cluster whose current fused box it overlaps most (the lowest id on ties), if that
    IoU > `iou_thr` >= 0, else starts a cluster; the fused box is the score-weighted mean of the
    members, accumulated in float32 as `ensemble_boxes.get_weighted_box` does (a one-member
    cluster keeps the box as is). A fused box lies inside its members' hull, so each cluster is
    listed in the grid cells of that hull and a box is compared only with the clusters listed
    in its own cells (plain floats: the same IEEE arithmetic as numpy's float64).
    Returns each box's cluster id (n,) int64 and the fused boxes (k, 4) float64.
    """
    extent = np.max(boxes[:, 2:] - boxes[:, :2], axis=1)
    inv_cell = 1.0 / max(2.0 * float(np.median(extent)), 0.01)
    margin = np.array([-_CELL_MARGIN, -_CELL_MARGIN, _CELL_MARGIN, _CELL_MARGIN])  # float32 rounding
    box_cells = np.floor((boxes + margin) * inv_cell).astype(np.int64).tolist()
    grid: dict[int, set[int]] = {}
    fused, area, total, conf, hull_cells = [], [], [], [], []
    cluster = np.empty(len(boxes), np.int64)
    for j, (box, score, cells) in enumerate(zip(boxes.tolist(), weighted_scores.tolist(), box_cells)):
        x1, y1, x2, y2 = box
        box_area = (x2 - x1) * (y2 - y1)
        candidates = set().union(*(grid.get(key, ()) for key in _keys(cells)))
        best, best_iou = -1, iou_thr
        for c in sorted(candidates):
            fx1, fy1, fx2, fy2 = fused[c]
            inter = max(min(fx2, x2) - max(fx1, x1), 0.0) * max(min(fy2, y2) - max(fy1, y1), 0.0)
            iou = inter / (area[c] + box_area - inter)
            if iou > best_iou:
                best, best_iou = c, iou
        if best < 0:
            best = len(fused)
            fused.append(box)
            area.append(box_area)
            total.append((score * np.array(box)).astype(np.float32))
            conf.append(score)
            hull_cells.append(None)
        else:
            total[best] = (total[best] + score * np.array(box)).astype(np.float32)
            conf[best] += score
            fused[best] = (total[best].astype(np.float64) / conf[best]).astype(np.float32).tolist()
            fx1, fy1, fx2, fy2 = fused[best]
            area[best] = (fx2 - fx1) * (fy2 - fy1)
            old = hull_cells[best]
            cells = [min(cells[0], old[0]), min(cells[1], old[1]), max(cells[2], old[2]), max(cells[3], old[3])]
        if cells != hull_cells[best]:
            hull_cells[best] = cells
            for key in _keys(cells):
                grid.setdefault(key, set()).add(best)
        cluster[j] = best
    return cluster, np.array(fused, np.float64).reshape(-1, 4)


_CELL_MARGIN = 1e-6


def _keys(cells: list[int]) -> list[int]:
    """Grid keys of the cell rectangle `cells` = [x first, y first, x last, y last] (inclusive)."""
    return [x * 65536 + y for x in range(cells[0], cells[2] + 1) for y in range(cells[1], cells[3] + 1)]


def _cluster_scores(
    cluster: np.ndarray, weighted_scores: np.ndarray, model: np.ndarray, weights: np.ndarray, conf_type: str
) -> np.ndarray:
    """Fused score (k,) float64 of each cluster, `ensemble_boxes`' formula for `conf_type`.

    cluster, weighted_scores (score × model weight), model: (m,) per member.
    """
    k = int(cluster.max()) + 1
    count = np.bincount(cluster, minlength=k)
    conf = np.bincount(cluster, weighted_scores, minlength=k)
    member_weight = np.bincount(cluster, weights[model], minlength=k)
    present = np.zeros((k, len(weights)), bool)
    present[cluster, model] = True
    if conf_type == "avg":
        return conf / count * np.minimum(len(weights), count) / weights.sum()
    if conf_type == "max":
        best = np.full(k, -np.inf)
        np.maximum.at(best, cluster, weighted_scores)
        return best / weights.max()
    if conf_type == "box_and_model_avg":
        return conf / member_weight * (present @ weights) / weights.sum()
    return conf / (member_weight + (~present) @ weights)  # absent_model_aware_avg


def _fuse_masks(
    fused: InstanceSet, every: InstanceSet, members: np.ndarray, target: np.ndarray,
    model: np.ndarray, weights: np.ndarray, absent_as_zero: bool,
) -> None:
    """Fill `fused.windows` and `fused.probs`: each target's weighted mean of its members' masks.

    members: (m,) indices into `every`; target: (m,) fused instance of each; model: (m,) set of
    each. Member i's coefficient is w[model] / (members of that model in the target) / the sum
    of the weights of all sets (`absent_as_zero`) or of the sets present in the target.
    """
    k = len(fused)
    pair = target * len(weights) + model
    per_model = np.bincount(pair, minlength=k * len(weights))[pair]
    present = np.zeros((k, len(weights)), bool)
    present[target, model] = True
    denominator = np.full(k, weights.sum()) if absent_as_zero else present @ weights
    coef = weights[model] / per_model / denominator[target]
    windows = every.windows[members]
    lo = np.full((k, 2), np.iinfo(np.int32).max)
    hi = np.zeros((k, 2), np.int64)
    np.minimum.at(lo, target, windows[:, :2])
    np.maximum.at(hi, target, windows[:, 2:])
    fused.windows[:] = np.concatenate([lo, hi], 1)
    sums = [np.zeros((y1 - y0, x1 - x0), np.float32) for x0, y0, x1, y1 in fused.windows.tolist()]
    relative = (windows - fused.windows[target][:, [0, 1, 0, 1]]).tolist()
    for i, t, c, (x0, y0, x1, y1) in zip(members.tolist(), target.tolist(), coef.astype(np.float32), relative):
        sums[t][y0:y1, x0:x1] += c * every.probs[i]
    fused.probs = [np.rint(np.clip(s, 0.0, PROB_SCALE)).astype(np.uint8) for s in sums]
