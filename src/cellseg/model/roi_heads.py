"""torchvision's box and mask heads with the losses cells need: class weights for rare
classes and a soft Dice term on the masks. The cascade (`cellseg.model.cascade`) builds on them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torchvision.models.detection.roi_heads import (
    RoIHeads,
    fastrcnn_loss,
    maskrcnn_inference,
    project_masks_on_boxes,
)


class CellRoIHeads(RoIHeads):
    """torchvision's box and mask heads (no keypoints) with class-weighted losses and Dice.

    Losses: `loss_classifier` (cross-entropy weighted by the non-persistent `class_weights`
    buffer when given), `loss_box_reg`, `loss_mask` (torchvision's BCE, per RoI weighted by
    its class's weight when `class_weights` is given) and, when
    `dice_loss_weight` > 0, `loss_mask_dice` = weight × (1 − soft Dice) on the same targets.
    """

    def __init__(self, *, class_weights: torch.Tensor | None, dice_loss_weight: float, **kwargs):
        super().__init__(**kwargs)
        self.register_buffer("class_weights", class_weights, persistent=False)
        self.dice_loss_weight = dice_loss_weight

    def forward(self, features, proposals, image_shapes, targets=None):
        if not self.training:
            return self._detect(features, proposals, image_shapes), {}
        proposals, matched_idxs, labels, regression_targets = self.select_training_samples(proposals, targets)
        box_features = self.box_head(self.box_roi_pool(features, proposals, image_shapes))
        class_logits, box_regression = self.box_predictor(box_features)
        loss_classifier, loss_box_reg = fastrcnn_loss(class_logits, box_regression, labels, regression_targets)
        if self.class_weights is not None:
            loss_classifier = F.cross_entropy(class_logits, torch.cat(labels), weight=self.class_weights)
        losses = {"loss_classifier": loss_classifier, "loss_box_reg": loss_box_reg}
        losses.update(self._mask_loss_terms(features, proposals, image_shapes, targets, labels, matched_idxs))
        return [], losses

    def _mask_loss_terms(self, features, proposals, image_shapes, targets, labels, matched_idxs) -> dict:
        """`loss_mask` (and `loss_mask_dice`) of the sampled RoIs with a foreground label."""
        positive = [torch.where(image_labels > 0)[0] for image_labels in labels]
        mask_proposals = [p[pos] for p, pos in zip(proposals, positive)]
        mask_logits = self._mask_logits(features, mask_proposals, image_shapes)
        loss_mask, dice = mask_losses(
            mask_logits,
            mask_proposals,
            [t["masks"] for t in targets],
            [t["labels"] for t in targets],
            [m[pos] for m, pos in zip(matched_idxs, positive)],
            self.class_weights,
        )
        losses = {"loss_mask": loss_mask}
        if self.dice_loss_weight > 0:
            losses["loss_mask_dice"] = self.dice_loss_weight * dice
        return losses

    def _mask_logits(self, features, boxes, image_shapes) -> torch.Tensor:
        return self.mask_predictor(self.mask_head(self.mask_roi_pool(features, boxes, image_shapes)))

    def _detect(self, features, proposals, image_shapes) -> list[dict]:
        box_features = self.box_head(self.box_roi_pool(features, proposals, image_shapes))
        class_logits, box_regression = self.box_predictor(box_features)
        boxes, scores, labels = self.postprocess_detections(class_logits, box_regression, proposals, image_shapes)
        return self._with_masks(features, boxes, scores, labels, image_shapes)

    def _with_masks(self, features, boxes, scores, labels, image_shapes) -> list[dict]:
        """Per image the detections (lists of per-image tensors) with their masks' probabilities."""
        mask_probs = maskrcnn_inference(self._mask_logits(features, boxes, image_shapes), labels)
        return [
            {"boxes": b, "labels": lab, "scores": s, "masks": m}
            for b, lab, s, m in zip(boxes, labels, scores, mask_probs)
        ]


def mask_losses(
    mask_logits, proposals, gt_masks, gt_labels, matched_idxs, class_weights: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(BCE, 1 − soft Dice) of each positive RoI's mask logits for its matched class.

    Targets are torchvision's (`project_masks_on_boxes`: the matched GT mask cropped to the
    proposal and resized to the logits' `M × M`), so without `class_weights` the BCE equals
    torchvision's `maskrcnn_loss`. Dice is per RoI. With `class_weights` `(C + 1,)` both are
    per-RoI means averaged with the weight of each RoI's class, else plain means. Both are 0
    (with a graph) without RoIs.
    """
    size = mask_logits.shape[-1]
    labels = torch.cat([lab[idx] for lab, idx in zip(gt_labels, matched_idxs)])
    targets = torch.cat([project_masks_on_boxes(m, p, i, size) for m, p, i in zip(gt_masks, proposals, matched_idxs)])
    if targets.numel() == 0:
        zero = mask_logits.sum() * 0
        return zero, zero
    logits = mask_logits[torch.arange(labels.shape[0], device=labels.device), labels].float()
    probs = logits.sigmoid().flatten(1)
    dice = (2 * (probs * targets.flatten(1)).sum(1) + 1) / (probs.sum(1) + targets.flatten(1).sum(1) + 1)
    if class_weights is None:
        return F.binary_cross_entropy_with_logits(logits, targets), 1 - dice.mean()
    weights = class_weights[labels]
    bce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none").flatten(1).mean(1)
    return (weights * bce).sum() / weights.sum(), 1 - (weights * dice).sum() / weights.sum()
