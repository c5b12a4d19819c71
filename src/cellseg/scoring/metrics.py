"""Scores of predicted instances against label images: COCO mask AP, the Sartorius metric, F1,
panoptic quality (PQ = DQ x SQ) pooled over the set as MoNuSAC scores it and averaged over
images as PanNuke does (bPQ, mPQ), the aggregated Jaccard index (AJI) and the counting error.

Dense cell images hold more cells than COCO's default 100 detections, so AP is computed with a
raised `max_dets` and also read off at 100, the value leaderboards typically report. All AP
values are read from the accumulated precision array rather than pycocotools' `stats`, whose
first entry is always taken at 100 detections whatever `maxDets` says.

Three COCO back ends give identical numbers (tested): `streaming` (`cellseg.scoring.coco_ap`, one
image's masks in memory at a time, the default), `faster` (faster-coco-eval) and `pycocotools`
(the reference); the last two hold the whole set's masks.

`SetScorer` computes every metric in one pass over the images, one image held at a time.
Ground truth is kept as COCO RLEs, and the Sartorius metric, F1, PQ and AJI match on RLE IoUs
image by image (pycocotools' `iou`, which also allows overlapping masks, as predictions and
instances of different classes have). The sparse pixel-membership matrices (`instance_pixels`:
row i marks the pixels of instance i, so `A @ B.T` counts every overlapping pair at once) serve
mask NMS.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterable, Iterator, Sequence

import numpy as np
import pandas as pd
from faster_coco_eval import COCO as FasterCOCO
from faster_coco_eval import COCOeval_faster
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from scipy.optimize import linear_sum_assignment

from cellseg.common.instances import InstanceSet
from cellseg.common.iou import image_overlaps, iou_from_counts
from cellseg.scoring.coco_ap import IOU_THRESHOLDS, CocoAccumulator
from cellseg.scoring.coco_format import Binarised, binarised_all, predictions_to_coco
from cellseg.scoring.truth import GroundTruth, ImageTruth, iter_truth, prepare_ground_truth

COCO_DEFAULT_MAX_DETS = 100
WHOLE_SET_EVALUATORS = ("faster", "pycocotools")
EVALUATORS = ("streaming", *WHOLE_SET_EVALUATORS)
DEFAULT_EVALUATOR = "streaming"
METRICS = ("AP", "AP50", "AP50@100", "sartorius", "F1", "PQ", "bPQ", "mPQ")
# The one class that class-agnostic scoring merges every class into.
AGNOSTIC_CLASS = "cell"


def run_cocoeval(gt: dict, results: list[dict], max_dets: int, evaluator: str = DEFAULT_EVALUATOR):
    """Evaluate, accumulate and summarise COCO mask results; returns the evaluator object.

    maxDets are [1, 100, max_dets]; `results` is not modified. `results` must not be empty.
    """
    if evaluator not in WHOLE_SET_EVALUATORS:
        raise ValueError(f"unknown whole-set COCO evaluator {evaluator!r}; choose one of {WHOLE_SET_EVALUATORS}")
    results = [dict(r) for r in results]
    with contextlib.redirect_stdout(io.StringIO()):
        if evaluator == "faster":
            coco_gt = FasterCOCO(gt, print_function=_silent)
            coco_eval = COCOeval_faster(coco_gt, coco_gt.loadRes(results), "segm", print_function=_silent)
        else:
            coco_gt = COCO()
            coco_gt.dataset = gt
            coco_gt.createIndex()
            coco_eval = COCOeval(coco_gt, coco_gt.loadRes(results), iouType="segm")
        coco_eval.params.maxDets = [1, COCO_DEFAULT_MAX_DETS, max_dets]
        coco_eval.evaluate()
        coco_eval.accumulate()
        coco_eval.summarize()
    return coco_eval


def coco_precision(
    gt: GroundTruth,
    preds: Sequence[InstanceSet | Binarised],
    mask_threshold: float = 0.5,
    max_dets: int = 1000,
    evaluator: str = DEFAULT_EVALUATOR,
) -> np.ndarray:
    """COCO's accumulated precision, (iou 10, recall 101, class, area 4, maxDets 3) float, with
    maxDets 1, 100 and `max_dets` (at least 100).

    -1 marks a class or area range without ground truth, as in pycocotools. `streaming`
    (`cellseg.scoring.coco_ap`) holds one image's masks at a time; `faster` and `pycocotools` hold the
    whole set's.
    """
    if evaluator not in EVALUATORS:
        raise ValueError(f"unknown COCO evaluator {evaluator!r}; choose one of {EVALUATORS}")
    max_dets_list = [1, COCO_DEFAULT_MAX_DETS, max_dets]
    if evaluator == "streaming":
        accumulator = CocoAccumulator(len(gt.class_names), max_dets_list)
        for truth, found in zip(gt, binarised_all(preds, mask_threshold)):
            accumulator.add_image(truth.rles, truth.classes, found.rles, found.classes, found.scores)
        return accumulator.precision()
    preds = list(binarised_all(preds, mask_threshold))  # a generator is read once, then scored twice if empty
    results = predictions_to_coco(preds, mask_threshold)
    if results:
        return run_cocoeval(gt.coco, results, max_dets, evaluator).eval["precision"]
    # pycocotools cannot load an empty result list; the accumulator scores it (0 where there is ground truth)
    return coco_precision(gt, preds, mask_threshold, max_dets, "streaming")


def metrics_from_precision(precision: np.ndarray, class_names: list[str]) -> dict:
    """AP, AP50, AP75, AP_small/medium/large at max_dets, AP and AP50 at 100 (`AP50@100`, the
    leaderboard's number), per-class AP at max_dets (`AP_<name>`) and at 100 (`AP@100_<name>`),
    per-class AP50 at 100 (`AP50@100_<name>`); NaN where there is no ground truth.
    """
    metrics = {
        "AP": _mean_valid(precision[:, :, :, 0, 2]),
        "AP50": _mean_valid(precision[0, :, :, 0, 2]),
        "AP75": _mean_valid(precision[5, :, :, 0, 2]),
        "AP_small": _mean_valid(precision[:, :, :, 1, 2]),
        "AP_medium": _mean_valid(precision[:, :, :, 2, 2]),
        "AP_large": _mean_valid(precision[:, :, :, 3, 2]),
        "AP@100": _mean_valid(precision[:, :, :, 0, 1]),
        "AP50@100": _mean_valid(precision[0, :, :, 0, 1]),
    }
    for k, name in enumerate(class_names):
        metrics[f"AP_{name}"] = _mean_valid(precision[:, :, k, 0, 2])
        metrics[f"AP@100_{name}"] = _mean_valid(precision[:, :, k, 0, 1])
        metrics[f"AP50@100_{name}"] = _mean_valid(precision[0, :, k, 0, 1])
    return metrics


def pr_curve(precision: np.ndarray) -> pd.DataFrame:
    """Precision against recall (0..1 in 101 steps) at IoU 0.5 and averaged over 0.5:0.95,
    averaged over the classes with ground truth (all areas, max_dets)."""
    curve = precision[:, :, :, 0, 2]  # (iou, recall, class)
    valid = (curve > -1).all(axis=(0, 1))
    curve = curve[:, :, valid]
    mean_50 = curve[0].mean(axis=1) if valid.any() else np.full(101, np.nan)
    mean_all = curve.mean(axis=(0, 2)) if valid.any() else np.full(101, np.nan)
    return pd.DataFrame(
        {"recall": np.linspace(0, 1, 101), "precision_iou50": mean_50, "precision_iou50_95": mean_all}
    )


def coco_mask_metrics(
    labels_list: list[np.ndarray],
    preds: list[InstanceSet],
    class_names: list[str],
    mask_threshold: float = 0.5,
    max_dets: int = 1000,
    evaluator: str = DEFAULT_EVALUATOR,
) -> dict:
    """COCO mask metrics of `preds` (one InstanceSet per label stack); see
    `metrics_from_precision` for the keys."""
    gt = prepare_ground_truth(labels_list, class_names)
    return metrics_from_precision(coco_precision(gt, preds, mask_threshold, max_dets, evaluator), class_names)


def sartorius_per_image(
    gt: GroundTruth,
    preds: Iterable[InstanceSet | Binarised],
    mask_threshold: float = 0.5,
) -> np.ndarray:
    """Per image (`preds` read once, in order), the mean over IoU thresholds 0.5:0.05:0.95 of
    TP / (TP + FP + FN).

    Class-agnostic, as in the Kaggle Sartorius competition (one cell type per image there):
    all ground-truth instances of all classes against all predicted instances, whatever their
    class or score (apply score thresholds first). A match needs IoU > t and is one-to-one.
    An image with neither ground truth nor predictions scores 1.
    """
    return np.array([_sartorius(iou_from_counts(*overlaps)) for _, _, overlaps in _image_pairs(gt, preds, mask_threshold)], float)


def sartorius_metric(gt: GroundTruth, preds: Sequence[InstanceSet | Binarised], mask_threshold: float = 0.5) -> float:
    """Mean over images of `sartorius_per_image`."""
    return float(np.mean(sartorius_per_image(gt, preds, mask_threshold)))


def f1_per_class(gt: GroundTruth, preds: Sequence[InstanceSet | Binarised], mask_threshold: float = 0.5) -> dict:
    """F1 at IoU >= 0.5 per class (`F1_<name>`, TP/FP/FN summed over images) and their mean
    over the classes present in ground truth or predictions (`F1`); NaN where neither is."""
    return _f1_metrics(_summed(gt, preds, mask_threshold, 3, _f1_counts), gt.class_names)


def panoptic_quality(gt: GroundTruth, preds: Sequence[InstanceSet | Binarised], mask_threshold: float = 0.5) -> dict:
    """Panoptic quality as MoNuSAC scores it: per class, TP/FP/FN and the matched IoUs are summed
    over all images, SQ = sum of matched IoUs / TP, DQ = TP / (TP + FP/2 + FN/2), PQ = DQ x SQ.

    A prediction matches a ground-truth instance of its own class at IoU > 0.5 (see
    `_matched_ious`); a prediction of the wrong class is a FN of the true class and a FP of its
    own. Returns `PQ_<name>` per class and `PQ`, `SQ`, `DQ`, each the mean of the per-class
    values (so `PQ` is not `SQ` x `DQ`). SQ of a class without a TP is 0. A class with neither
    ground truth nor predictions in the whole set is NaN and left out of the means; a class
    with predictions only scores 0.
    """
    return _pq_metrics(_summed(gt, preds, mask_threshold, 4, _pq_sums), gt.class_names)


def pannuke_quality(gt: GroundTruth, preds: Sequence[InstanceSet | Binarised], mask_threshold: float = 0.5) -> dict:
    """Panoptic quality as PanNuke scores it (Gamper et al. 2020; run.py of
    TissueImageAnalytics/PanNuke-metrics): PQ per image, then averaged over images, so that
    each image weighs the same however many cells it holds (`panoptic_quality` pools instead).

    Matching as in `panoptic_quality` (IoU > 0.5). `bPQ`: every class merged into one. Per
    class (`mPQ_<name>`): the mean over the images holding that class in their ground truth.
    `mPQ`: per image the mean over the classes in its ground truth, then the mean over images
    (PanNuke's order, so `mPQ` is not the mean of the `mPQ_<name>`). PanNuke's rule for empty
    images, followed here: an image (for bPQ) or a class in an image (for mPQ) without ground
    truth is left out whatever was predicted there (its false positives are never counted);
    one with ground truth but no predictions scores 0. NaN where nothing is left. PanNuke
    also averages per tissue type first; that is left to the caller (one scorer per tissue).
    """
    n_classes = len(gt.class_names)
    sums = np.zeros((2, n_classes + 2))
    for truth, found, overlaps in _image_pairs(gt, preds, mask_threshold):
        sums += _pannuke_sums(truth.classes, found.classes, iou_from_counts(*overlaps), n_classes)
    return _pannuke_metrics(sums, gt.class_names)


def count_errors(gt: GroundTruth, preds: Iterable[InstanceSet | Binarised]) -> dict:
    """How far the number of instances found is off, whatever their masks: per class
    `count_error_<name>` = sum over images of |found - true| / sum of true (NaN without true
    instances in the set), `count_error` their mean over the classes where defined, and
    `count_ratio` = all instances found / all true (NaN without any true; above 1 means the
    model over-counts). Over- and under-counting in different images cancel in the ratio, not
    in the error."""
    n_classes = len(gt.class_names)
    sums = np.zeros((3, n_classes))
    for truth, found in zip(gt, preds):
        sums += _count_sums(truth.classes, found.classes, n_classes)
    return _count_metrics(sums, gt.class_names)


def aggregated_jaccard(gt: GroundTruth, preds: Sequence[InstanceSet | Binarised], mask_threshold: float = 0.5) -> dict:
    """Aggregated Jaccard index (Kumar et al. 2017) per class over the set (`AJI_<name>`) and
    its mean over classes (`AJI`).

    Per class, summed over all images: each ground-truth instance adds its intersection and
    union with the prediction of its class of highest IoU (one prediction may be the best of
    several instances and is then counted in each union, as in the original); an instance no
    prediction touches adds its area to the union; so does every prediction that is no
    instance's best. AJI = total intersection / total union. A class with neither ground truth
    nor predictions is NaN and left out of the mean.
    """
    n_classes = len(gt.class_names)
    sums = np.zeros((2, n_classes))
    for truth, found, overlaps in _image_pairs(gt, preds, mask_threshold):
        sums += _aji_sums(truth.classes, found.classes, overlaps, n_classes)
    return _aji_metrics(sums, gt.class_names)


def metric_value(
    gt: GroundTruth,
    preds: list[InstanceSet],
    metric: str = "AP",
    mask_threshold: float = 0.5,
    max_dets: int = 1000,
    evaluator: str = DEFAULT_EVALUATOR,
) -> float:
    """One scalar score, for threshold tuning: `AP`, `AP50` (COCO at max_dets), `AP50@100` (COCO
    AP50 at 100 detections, the leaderboard's number), `sartorius`, `F1` or `PQ` (means over
    classes), or PanNuke's per-image `bPQ` or `mPQ` (`pannuke_quality`)."""
    if metric in ("AP", "AP50", "AP50@100"):
        precision = coco_precision(gt, preds, mask_threshold, max_dets, evaluator)
        return metrics_from_precision(precision, gt.class_names)[metric]
    if metric == "sartorius":
        return sartorius_metric(gt, preds, mask_threshold)
    if metric == "F1":
        return f1_per_class(gt, preds, mask_threshold)["F1"]
    if metric == "PQ":
        return panoptic_quality(gt, preds, mask_threshold)["PQ"]
    if metric in ("bPQ", "mPQ"):
        return pannuke_quality(gt, preds, mask_threshold)[metric]
    raise ValueError(f"unknown metric {metric!r}; choose one of {METRICS}")


class SetScorer:
    """Every metric of `evaluate_predictions`, accumulated one image at a time: with the
    `streaming` COCO evaluator it holds per image a score and a few counts, per detection its
    COCO match flags, and neither the masks nor the ground truth of the images already added
    (the whole-set evaluators keep every image's RLEs until `result`). The per-image means
    (bPQ, mPQ) and the counting error are running sums over images, a few numbers per class.

    class_agnostic: every class merged into one (`AGNOSTIC_CLASS`) on both sides as images are
    added, so that the labels may come from a dataset with another class list (a cell found
    with the wrong class counts as found; overlapping instances stay separate); the metrics
    then hold no per-class keys.
    """

    def __init__(
        self,
        class_names: list[str],
        max_dets: int = 1000,
        evaluator: str = DEFAULT_EVALUATOR,
        class_agnostic: bool = False,
    ):
        if evaluator not in EVALUATORS:
            raise ValueError(f"unknown COCO evaluator {evaluator!r}; choose one of {EVALUATORS}")
        self.class_agnostic = class_agnostic
        self.class_names = [AGNOSTIC_CLASS] if class_agnostic else list(class_names)
        self.max_dets, self.evaluator = max_dets, evaluator
        n_classes = len(self.class_names)
        self._coco = CocoAccumulator(n_classes, [1, COCO_DEFAULT_MAX_DETS, max_dets])
        self._whole_set: list[tuple[ImageTruth, Binarised]] = []
        self._per_image: list[tuple[float, int, int]] = []  # Sartorius score, instances true and found
        self._f1, self._pq, self._aji = np.zeros((3, n_classes)), np.zeros((4, n_classes)), np.zeros((2, n_classes))
        self._pannuke, self._counts = np.zeros((2, n_classes + 2)), np.zeros((3, n_classes))

    def add_image(self, truth: ImageTruth, found: Binarised) -> None:
        """Score one image's binarised predictions against its ground truth."""
        if self.class_agnostic:
            truth = truth._replace(classes=np.ones_like(truth.classes))
            found = Binarised(found.rles, np.ones_like(found.classes), found.scores)
        overlaps = image_overlaps(truth.rles, found.rles)
        iou, n_classes = iou_from_counts(*overlaps), len(self.class_names)
        self._per_image.append((_sartorius(iou), len(truth.rles), len(found.rles)))
        self._f1 += _f1_counts(truth.classes, found.classes, iou, n_classes)
        self._pq += _pq_sums(truth.classes, found.classes, iou, n_classes)
        self._aji += _aji_sums(truth.classes, found.classes, overlaps, n_classes)
        self._pannuke += _pannuke_sums(truth.classes, found.classes, iou, n_classes)
        self._counts += _count_sums(truth.classes, found.classes, n_classes)
        if self.evaluator in WHOLE_SET_EVALUATORS:
            self._whole_set.append((truth, found))
        else:
            self._coco.add_image(truth.rles, truth.classes, found.rles, found.classes, found.scores)

    def per_image(self) -> pd.DataFrame:
        """Per image added, in order: its Sartorius score (`sartorius_per_image`, whatever the
        classes), `n_true` ground-truth instances and `n_predicted` predictions."""
        return pd.DataFrame(self._per_image, columns=["sartorius", "n_true", "n_predicted"])

    def result(self) -> tuple[dict, pd.DataFrame]:
        """The metrics of the images added so far (see `evaluate_predictions`) and the PR curve."""
        if self.evaluator in WHOLE_SET_EVALUATORS:
            gt = GroundTruth([truth for truth, _ in self._whole_set], self.class_names)
            found = [f for _, f in self._whole_set]
            precision = coco_precision(gt, found, max_dets=self.max_dets, evaluator=self.evaluator)
        else:
            precision = self._coco.precision()
        metrics = metrics_from_precision(precision, self.class_names)
        metrics["sartorius"] = float(self.per_image()["sartorius"].mean())
        metrics.update(_f1_metrics(self._f1, self.class_names))
        metrics.update(_pq_metrics(self._pq, self.class_names))
        metrics.update(_aji_metrics(self._aji, self.class_names))
        metrics.update(_pannuke_metrics(self._pannuke, self.class_names))
        metrics.update(_count_metrics(self._counts, self.class_names))
        if self.class_agnostic:
            metrics = {key: value for key, value in metrics.items() if not key.endswith(f"_{AGNOSTIC_CLASS}")}
        return metrics, pr_curve(precision)


def evaluate_predictions(
    labels_list: Iterable[np.ndarray] | GroundTruth,
    preds: Iterable[InstanceSet | Binarised],
    class_names: list[str],
    mask_threshold: float = 0.5,
    max_dets: int = 1000,
    evaluator: str = DEFAULT_EVALUATOR,
    class_agnostic: bool = False,
) -> tuple[dict, pd.DataFrame]:
    """All metrics in one dict (COCO keys, `sartorius`, `F1`, `F1_<name>`, `PQ`, `SQ`, `DQ`,
    `PQ_<name>` pooled over the set, `AJI`, `AJI_<name>`, PanNuke's per-image means `bPQ`,
    `mPQ`, `mPQ_<name>` (`pannuke_quality`), `count_error`, `count_error_<name>`,
    `count_ratio` (`count_errors`)) and the PR curve, in one pass over the images
    (`SetScorer`). Class-agnostic scoring drops the `<name>` keys; its `mPQ` equals `bPQ`.

    class_agnostic: merge every class into one on both sides (see `SetScorer`). labels_list:
    per image a (C, H, W) label stack (a generator is read once), or their `GroundTruth`
    (prepared once for several calls); as many as `preds`.
    """
    scorer = SetScorer(class_names, max_dets, evaluator, class_agnostic)
    for truth, found in zip(iter_truth(labels_list), binarised_all(preds, mask_threshold), strict=True):
        scorer.add_image(truth, found)
    return scorer.result()


def _summed(gt: GroundTruth, preds, mask_threshold: float, rows: int, per_image) -> np.ndarray:
    """`per_image(truth classes, classes, IoU matrix, n_classes)`, (rows, C) per image, summed
    over the images."""
    n_classes = len(gt.class_names)
    sums = np.zeros((rows, n_classes))
    for truth, found, overlaps in _image_pairs(gt, preds, mask_threshold):
        sums += per_image(truth.classes, found.classes, iou_from_counts(*overlaps), n_classes)
    return sums


def _image_pairs(
    gt: GroundTruth, preds: Iterable[InstanceSet | Binarised], mask_threshold: float
) -> Iterator[tuple[ImageTruth, Binarised, tuple[np.ndarray, np.ndarray, np.ndarray]]]:
    """Each image's ground truth, binarised predictions and `image_overlaps`, in order."""
    for truth, found in zip(gt, binarised_all(preds, mask_threshold)):
        yield truth, found, image_overlaps(truth.rles, found.rles)


def _sartorius(iou: np.ndarray) -> float:
    """Mean over IoU thresholds of TP / (TP + FP + FN) of one image's (n_true, n_pred) IoUs."""
    n_true, n_pred = iou.shape
    per_threshold = []
    for t in IOU_THRESHOLDS:
        tp = _match_count(iou > t)
        total = n_true + n_pred - tp
        per_threshold.append(tp / total if total else 1.0)
    return float(np.mean(per_threshold))


def _f1_counts(truth_classes: np.ndarray, classes: np.ndarray, iou: np.ndarray, n_classes: int) -> np.ndarray:
    """One image's (3, C) counts per class: TP at IoU >= 0.5, ground-truth instances, predictions."""
    counts = np.zeros((3, n_classes))
    for k in range(n_classes):
        rows, cols = truth_classes == k + 1, classes == k + 1
        counts[:, k] = _match_count(iou[np.ix_(rows, cols)] >= 0.5), rows.sum(), cols.sum()
    return counts


def _f1_metrics(counts: np.ndarray, class_names: list[str]) -> dict:
    tp, n_true, n_pred = counts
    denominator = n_true + n_pred
    f1 = np.divide(2 * tp, denominator, out=np.full(len(class_names), np.nan), where=denominator > 0)
    metrics = {f"F1_{name}": float(v) for name, v in zip(class_names, f1)}
    metrics["F1"] = _class_mean(f1)
    return metrics


def _pq_sums(truth_classes: np.ndarray, classes: np.ndarray, iou: np.ndarray, n_classes: int) -> np.ndarray:
    """One image's (4, C) panoptic sums per class: TP, FP, FN and the TPs' summed IoU."""
    sums = np.zeros((4, n_classes))
    for k in range(n_classes):
        pairs = iou[np.ix_(truth_classes == k + 1, classes == k + 1)]
        matched = _matched_ious(pairs)
        sums[:, k] = len(matched), pairs.shape[1] - len(matched), pairs.shape[0] - len(matched), matched.sum()
    return sums


def _pq_metrics(sums: np.ndarray, class_names: list[str]) -> dict:
    tp, fp, fn, iou_sum = sums
    n_classes = len(class_names)
    present = tp + fp + fn > 0
    dq = np.divide(tp, tp + (fp + fn) / 2, out=np.full(n_classes, np.nan), where=present)
    sq = np.where(present, np.divide(iou_sum, tp, out=np.zeros(n_classes), where=tp > 0), np.nan)
    pq = dq * sq
    metrics = {"PQ": _class_mean(pq), "SQ": _class_mean(sq), "DQ": _class_mean(dq)}
    metrics.update({f"PQ_{name}": float(v) for name, v in zip(class_names, pq)})
    return metrics


def _image_pq(sums: np.ndarray) -> np.ndarray:
    """One image's (C,) PQ per class from its (4, C) `_pq_sums`: summed IoU / (TP + FP/2 +
    FN/2), which is DQ x SQ; NaN where the class has no ground truth in the image (PanNuke
    leaves it out, whatever was predicted)."""
    tp, fp, fn, iou_sum = sums
    return np.divide(iou_sum, tp + (fp + fn) / 2, out=np.full(len(tp), np.nan), where=tp + fn > 0)


def _pannuke_sums(truth_classes: np.ndarray, classes: np.ndarray, iou: np.ndarray, n_classes: int) -> np.ndarray:
    """One image's (2, C + 2) share of `pannuke_quality`: row 0 its PQ of each class, their
    mean and its binary PQ (all classes merged), 0 where undefined; row 1 1 where defined."""
    per_class = _image_pq(_pq_sums(truth_classes, classes, iou, n_classes))
    binary = _image_pq(_pq_sums(np.ones_like(truth_classes), np.ones_like(classes), iou, 1))
    values = np.concatenate([per_class, [_class_mean(per_class)], binary])
    defined = np.isfinite(values)
    return np.stack([np.where(defined, values, 0.0), defined])


def _pannuke_metrics(sums: np.ndarray, class_names: list[str]) -> dict:
    totals, images = sums
    means = np.divide(totals, images, out=np.full(len(totals), np.nan), where=images > 0)
    metrics = {"bPQ": float(means[-1]), "mPQ": float(means[-2])}
    metrics.update({f"mPQ_{name}": float(v) for name, v in zip(class_names, means[:-2])})
    return metrics


def _count_sums(truth_classes: np.ndarray, classes: np.ndarray, n_classes: int) -> np.ndarray:
    """One image's (3, C) instance counts per class: |found - true|, true, found."""
    ids = np.arange(1, n_classes + 1)
    n_true = (truth_classes[:, None] == ids).sum(axis=0)
    n_found = (classes[:, None] == ids).sum(axis=0)
    return np.stack([np.abs(n_found - n_true), n_true, n_found])


def _count_metrics(sums: np.ndarray, class_names: list[str]) -> dict:
    error, n_true, n_found = sums
    per_class = np.divide(error, n_true, out=np.full(len(class_names), np.nan), where=n_true > 0)
    metrics = {f"count_error_{name}": float(v) for name, v in zip(class_names, per_class)}
    metrics["count_error"] = _class_mean(per_class)
    metrics["count_ratio"] = float(n_found.sum() / n_true.sum()) if n_true.sum() else float("nan")
    return metrics


def _aji_sums(
    truth_classes: np.ndarray, classes: np.ndarray, overlaps: tuple[np.ndarray, ...], n_classes: int
) -> np.ndarray:
    """One image's (2, C) AJI intersection and union sums per class, from `image_overlaps`."""
    overlap, area_true, area_pred = overlaps
    sums = np.zeros((2, n_classes))
    for k in range(n_classes):
        rows, cols = truth_classes == k + 1, classes == k + 1
        sums[:, k] = _aji_class_sums(overlap[np.ix_(rows, cols)], area_true[rows], area_pred[cols])
    return sums


def _aji_metrics(sums: np.ndarray, class_names: list[str]) -> dict:
    intersection, union = sums
    aji = np.divide(intersection, union, out=np.full(len(class_names), np.nan), where=union > 0)
    metrics = {f"AJI_{name}": float(v) for name, v in zip(class_names, aji)}
    metrics["AJI"] = _class_mean(aji)
    return metrics


def _matched_ious(iou: np.ndarray) -> np.ndarray:
    """IoUs of the pairs matched at IoU > 0.5 in an (n_true, n_pred) IoU matrix of one class:
    each ground-truth instance's best prediction, when above 0.5.

    Ground-truth instances of one class do not overlap, so a prediction exceeds IoU 0.5 with at
    most one of them and this matching is one-to-one; when overlapping predictions (without
    NMS) both exceed 0.5 with one instance, the lower one stays unmatched, a FP. Merged classes
    (binary PQ, class-agnostic scoring) may overlap: a prediction above 0.5 with two instances
    is then matched one-to-one, of the largest IoU sum, rather than counted as two TPs.
    """
    candidates = iou > 0.5
    if (candidates.sum(axis=0) <= 1).all():
        best = iou.max(axis=1, initial=0.0)
        return best[best > 0.5]
    pairs = np.where(candidates, iou, 0.0)
    rows, cols = linear_sum_assignment(pairs, maximize=True)
    matched = pairs[rows, cols]
    return matched[matched > 0]


def _aji_class_sums(overlap: np.ndarray, area_true: np.ndarray, area_pred: np.ndarray) -> tuple[float, float]:
    """AJI's intersection and union sums of one class in one image, from the (n_true, n_pred)
    pixel overlaps and the (n_true,), (n_pred,) areas (see `aggregated_jaccard`)."""
    if not overlap.size:
        return 0.0, float(area_true.sum() + area_pred.sum())
    best = iou_from_counts(overlap, area_true, area_pred).argmax(axis=1)
    rows = np.flatnonzero(overlap[np.arange(len(best)), best] > 0)
    cols = best[rows]
    inter = overlap[rows, cols]
    union = (area_true[rows] + area_pred[cols] - inter).sum()
    unmatched = area_true.sum() - area_true[rows].sum() + area_pred.sum() - area_pred[np.unique(cols)].sum()
    return float(inter.sum()), float(union + unmatched)


def _match_count(candidates: np.ndarray) -> int:
    """Size of a maximum one-to-one matching in a bool (n_true, n_pred) candidate matrix."""
    rows = np.flatnonzero(candidates.any(axis=1))
    cols = np.flatnonzero(candidates.any(axis=0))
    if not len(rows):
        return 0
    sub = candidates[np.ix_(rows, cols)]
    r, c = linear_sum_assignment(sub, maximize=True)
    return int(sub[r, c].sum())


def _class_mean(values: np.ndarray) -> float:
    """Mean of per-class values over the classes where they are defined (not NaN), NaN if none."""
    return float(np.nanmean(values)) if np.isfinite(values).any() else float("nan")


def _mean_valid(values: np.ndarray) -> float:
    """Mean over entries pycocotools filled in (-1 marks 'no ground truth'), NaN if none."""
    valid = values[values > -1]
    return float(valid.mean()) if valid.size else float("nan")


def _silent(*args, **kwargs) -> None:
    """Swallows faster-coco-eval's progress messages."""
