"""Cascade box head (Cai & Vasconcelos, Cascade R-CNN) on torchvision's RoI heads.

Three box stages trained at IoU thresholds 0.5 / 0.6 / 0.7. Each stage classifies and regresses
the boxes the stage before it refined, so the later stages learn on better-placed boxes than
the RPN's proposals and are trained to place them more tightly. Regression is class-agnostic
(one box per RoI, as in the paper): the next stage needs one box per RoI to start from. At
inference the stages' class probabilities are averaged and the last stage's boxes kept; the
mask head runs on those final boxes and is trained, as the standard head's, on the first
stage's positive RoIs.

State-dict keys: stage 1 keeps torchvision's names (`roi_heads.box_head`,
`roi_heads.box_predictor` with `cls_score` and a 4-wide `bbox_pred`), so COCO box-head weights
fit it; stages 2 and 3 are `roi_heads.refine.0` and `roi_heads.refine.1` (`head`, `predictor`).
"""

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.detection._utils import BoxCoder, Matcher
from torchvision.ops import boxes as box_ops

from cellseg.model.roi_heads import CellRoIHeads

STAGE_IOUS = (0.5, 0.6, 0.7)
STAGE_LOSS_WEIGHTS = (1.0, 0.5, 0.25)
# Each stage's deltas shrink as its input boxes improve; the paper's per-stage normalisation
# (target std 0.1/0.2, halved and thirded) keeps every stage's regression targets near unit size.
STAGE_BOX_WEIGHTS = ((10.0, 10.0, 5.0, 5.0), (20.0, 20.0, 10.0, 10.0), (30.0, 30.0, 15.0, 15.0))


class CascadePredictor(nn.Module):
    """Class logits `(N, C + 1)` and one class-agnostic box delta `(N, 4)` per RoI.

    The layer names are those of torchvision's `FastRCNNPredictor`.
    """

    def __init__(self, in_channels: int, num_classes: int):
        super().__init__()
        self.cls_score = nn.Linear(in_channels, num_classes)
        self.bbox_pred = nn.Linear(in_channels, 4)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = x.flatten(1)
        return self.cls_score(x), self.bbox_pred(x)


class RefineStage(nn.Module):
    """A later stage's box head and predictor (`roi_heads.refine.<k>.head` / `.predictor`)."""

    def __init__(self, head: nn.Module, predictor: CascadePredictor):
        super().__init__()
        self.head = head
        self.predictor = predictor


class CascadeRoIHeads(CellRoIHeads):
    """`CellRoIHeads` with three box stages (module doc); the same mask head, losses and outputs.

    `box_head` and `box_predictor` (a `CascadePredictor`) are stage 1; `refine_heads` are the
    box heads of stages 2 and 3, each given a fresh predictor shaped like stage 1's. Losses:
    the standard head's (`loss_classifier` and `loss_box_reg` are stage 1's) plus
    `loss_classifier_stage<k>` and `loss_box_reg_stage<k>` for k = 2, 3, each weighted by
    `STAGE_LOSS_WEIGHTS`.
    """

    def __init__(self, *, refine_heads: list[nn.Module], **kwargs):
        super().__init__(**kwargs)
        if len(refine_heads) != len(STAGE_IOUS) - 1:
            raise ValueError(f"a cascade of {len(STAGE_IOUS)} stages needs {len(STAGE_IOUS) - 1} refine heads")
        cls_score = self.box_predictor.cls_score
        self.refine = nn.ModuleList(
            RefineStage(head, CascadePredictor(cls_score.in_features, cls_score.out_features)) for head in refine_heads
        )
        self.matchers = [Matcher(iou, iou, allow_low_quality_matches=False) for iou in STAGE_IOUS]
        self.coders = [BoxCoder(weights) for weights in STAGE_BOX_WEIGHTS]
        # Stage 1 samples its RoIs with torchvision's machinery, at stage 1's threshold and scale.
        self.proposal_matcher, self.box_coder = self.matchers[0], self.coders[0]

    def forward(self, features, proposals, image_shapes, targets=None):
        if not self.training:
            return self._detect(features, proposals, image_shapes), {}
        proposals, matched_idxs, labels, regression_targets = self.select_training_samples(proposals, targets)
        stage_labels = torch.cat(labels)
        positive_targets = torch.cat(regression_targets)[stage_labels > 0]
        losses = {}
        boxes = proposals
        for stage, weight in enumerate(STAGE_LOSS_WEIGHTS):
            if stage:
                boxes = self._refine(stage - 1, deltas.detach(), boxes, image_shapes)
                stage_labels, positive_targets = self._relabel(stage, boxes, targets)
            class_logits, deltas = self._stage(stage, features, boxes, image_shapes)
            loss_classifier, loss_box_reg = self._stage_losses(class_logits, deltas, stage_labels, positive_targets)
            suffix = f"_stage{stage + 1}" if stage else ""
            losses[f"loss_classifier{suffix}"] = weight * loss_classifier
            losses[f"loss_box_reg{suffix}"] = weight * loss_box_reg
        losses.update(self._mask_loss_terms(features, proposals, image_shapes, targets, labels, matched_idxs))
        return [], losses

    def _stage(self, stage: int, features, boxes: list[torch.Tensor], image_shapes):
        """Class logits `(N, C + 1)` and deltas `(N, 4)` of stage `stage` (0-based) for `boxes`."""
        if stage == 0:
            head, predictor = self.box_head, self.box_predictor
        else:
            head, predictor = self.refine[stage - 1].head, self.refine[stage - 1].predictor
        return predictor(head(self.box_roi_pool(features, boxes, image_shapes)))

    def _refine(self, stage: int, deltas: torch.Tensor, boxes: list[torch.Tensor], image_shapes) -> list[torch.Tensor]:
        """Per image, `boxes` moved by stage `stage`'s `deltas`, clipped to the image (xyxy)."""
        # In float32: under autocast the deltas are half precision, and decoding converts the
        # boxes to their dtype (bf16 would move a box at x = 500 by 2 px).
        decoded = self.coders[stage].decode_single(deltas.float(), torch.cat(boxes).float())
        parts = decoded.split([len(b) for b in boxes])
        return [box_ops.clip_boxes_to_image(b, shape) for b, shape in zip(parts, image_shapes)]

    def _relabel(self, stage: int, boxes: list[torch.Tensor], targets: list[dict]):
        """Labels `(N,)` int64 of the refined `boxes` of all images at stage `stage`'s IoU
        (0 = background), and the regression targets `(P, 4)` of the positives, in order."""
        labels, positive_targets = [], []
        for image_boxes, target in zip(boxes, targets):
            gt_boxes = target["boxes"].to(image_boxes.dtype)
            if gt_boxes.numel() == 0:
                labels.append(torch.zeros(len(image_boxes), dtype=torch.int64, device=image_boxes.device))
                continue
            matched = self.matchers[stage](box_ops.box_iou(gt_boxes, image_boxes))
            image_labels = torch.where(matched >= 0, target["labels"][matched.clamp(min=0)], 0)
            positive = image_labels > 0
            labels.append(image_labels)
            positive_targets.append(self.coders[stage].encode_single(gt_boxes[matched[positive]], image_boxes[positive]))
        empty = boxes[0].new_zeros((0, 4))
        return torch.cat(labels), torch.cat(positive_targets) if positive_targets else empty

    def _stage_losses(self, class_logits, deltas, labels: torch.Tensor, positive_targets: torch.Tensor):
        """Cross-entropy (weighted by `class_weights` when set) over all RoIs, and torchvision's
        smooth-L1 box loss of the positives summed and divided by the number of RoIs."""
        loss_classifier = F.cross_entropy(class_logits, labels, weight=self.class_weights)
        loss_box_reg = F.smooth_l1_loss(deltas[labels > 0], positive_targets, beta=1 / 9, reduction="sum")
        return loss_classifier, loss_box_reg / labels.numel()

    def _detect(self, features, proposals, image_shapes) -> list[dict]:
        boxes, probs = proposals, 0
        for stage in range(len(STAGE_IOUS)):
            class_logits, deltas = self._stage(stage, features, boxes, image_shapes)
            probs = probs + F.softmax(class_logits.float(), -1)
            boxes = self._refine(stage, deltas, boxes, image_shapes)
        scores = (probs / len(STAGE_IOUS)).split([len(b) for b in boxes])
        selected = [self._select(image_scores, image_boxes) for image_scores, image_boxes in zip(scores, boxes)]
        final_boxes, final_scores, final_labels = (list(part) for part in zip(*selected))
        return self._with_masks(features, final_boxes, final_scores, final_labels, image_shapes)

    def _select(self, scores: torch.Tensor, boxes: torch.Tensor):
        """One image's detections from RoI class probabilities `(N, C + 1)` and boxes `(N, 4)`:
        as torchvision's `postprocess_detections`, every (RoI, foreground class) pair above
        `score_thresh` is a candidate, NMS runs per class, the best `detections_per_img` stay."""
        n_rois, n_classes = scores.shape
        labels = torch.arange(1, n_classes, device=scores.device).repeat(n_rois)
        scores = scores[:, 1:].reshape(-1)
        boxes = boxes.repeat_interleave(n_classes - 1, dim=0)
        keep = torch.where(scores > self.score_thresh)[0]
        boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
        keep = box_ops.remove_small_boxes(boxes, min_size=1e-2)
        boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
        keep = box_ops.batched_nms(boxes, scores, labels, self.nms_thresh)[: self.detections_per_img]
        return boxes[keep], scores[keep], labels[keep]
