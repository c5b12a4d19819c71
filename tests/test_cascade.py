"""The cascade box head (`train.box_head: cascade`) on a tiny random model and hand-made boxes."""

import math
from types import SimpleNamespace

import pytest
import torch
from test_model import config, sample
from torchvision.models.detection._utils import BoxCoder
from torchvision.models.detection.roi_heads import RoIHeads
from torchvision.ops import boxes as box_ops

from cellseg.common.errors import DataError
from cellseg.inference.predict import load_model_for_inference
from cellseg.model import cascade
from cellseg.model.mask_rcnn import build_model

STAGE_LOSSES = {"loss_classifier_stage2", "loss_box_reg_stage2", "loss_classifier_stage3", "loss_box_reg_stage3"}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def cascade_model(seed=0, **overrides):
    torch.manual_seed(seed)
    return build_model(config(box_head="cascade", fpn_channels=32, **overrides), num_classes=3)


def plain_sample():
    image, target = sample()
    del target["center"], target["boundary"]
    return image, target


def test_each_stage_has_its_own_head_and_class_agnostic_boxes():
    model = cascade_model().eval()
    heads = model.roi_heads
    image, _ = plain_sample()
    image_list, _ = model.transform([image])
    features = model.backbone(image_list.tensors)
    boxes = [torch.tensor([[10.0, 10.0, 40.0, 40.0], [60.0, 50.0, 100.0, 90.0]])]
    with torch.no_grad():
        for stage in range(3):
            logits, deltas = heads._stage(stage, features, boxes, image_list.image_sizes)
            assert logits.shape == (2, 4) and deltas.shape == (2, 4)
    assert len(heads.refine) == 2 and heads.refine[0].head is not heads.box_head
    assert [m.high_threshold for m in heads.matchers] == [0.5, 0.6, 0.7]


def test_stage_losses_are_finite_weighted_and_train_every_stage(monkeypatch):
    model = cascade_model().train()
    image, target = plain_sample()

    def losses():
        torch.manual_seed(1)  # the same RoI sampling each time
        return model([image], [target])

    weighted = losses()
    assert set(weighted) == {"loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg", "loss_mask"} | STAGE_LOSSES
    assert all(math.isfinite(v.item()) for v in weighted.values())
    assert weighted["loss_box_reg_stage3"] > 0  # positives reach the last stage (GT boxes are proposals)
    sum(weighted.values()).backward()
    for stage in (model.roi_heads.box_predictor, *model.roi_heads.refine):
        for name, param in stage.named_parameters():
            assert param.grad is not None and param.grad.abs().sum() > 0, name
    monkeypatch.setattr(cascade, "STAGE_LOSS_WEIGHTS", (1.0, 1.0, 1.0))
    unweighted = losses()
    for name, weight in [("loss_classifier", 1.0), ("loss_box_reg_stage2", 0.5), ("loss_classifier_stage3", 0.25)]:
        assert weighted[name].item() == pytest.approx(weight * unweighted[name].item(), rel=1e-5), name


def test_refined_boxes_are_relabelled_at_each_stages_iou():
    """Boxes at IoU 1, 0.65, 0.55 and 0.2 with one cell: positive up to the stage whose
    threshold they reach, with the regression targets of that stage's scale."""
    heads = cascade_model().roi_heads
    boxes = [torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 6.5], [0.0, 0.0, 10.0, 5.5], [0.0, 0.0, 10.0, 2.0]])]
    target = {"boxes": torch.tensor([[0.0, 0.0, 10.0, 10.0]]), "labels": torch.tensor([2])}
    expected = {0: [2, 2, 2, 0], 1: [2, 2, 0, 0], 2: [2, 0, 0, 0]}
    for stage, labels in expected.items():
        got, targets = heads._relabel(stage, boxes, [target])
        assert got.tolist() == labels and targets.shape == (sum(1 for x in labels if x), 4)
    _, targets = heads._relabel(1, boxes, [target])
    dy, dh = 20 * (5.0 - 3.25) / 6.5, 10 * math.log(10 / 6.5)  # stage 2 scales by (20, 20, 10, 10)
    torch.testing.assert_close(targets[1], torch.tensor([0.0, dy, 0.0, dh]))
    empty = {"boxes": torch.zeros((0, 4)), "labels": torch.zeros(0, dtype=torch.int64)}
    labels, targets = heads._relabel(2, boxes, [empty])
    assert labels.tolist() == [0, 0, 0, 0] and targets.shape == (0, 4)


def test_inference_equals_a_reference_forward():
    """Each stage run on the previous stage's decoded, clipped boxes; the stages' probabilities
    averaged; torchvision's per-class selection on the last boxes; the mask head on the result."""
    model = cascade_model(box_detections_per_img=40).eval()
    heads = model.roi_heads
    image, _ = plain_sample()
    with torch.no_grad():
        image_list, _ = model.transform([image])
        features = model.backbone(image_list.tensors)
        proposals, _ = model.rpn(image_list, features)
        (size,) = image_list.image_sizes
        (got,), _ = heads(features, proposals, image_list.image_sizes)
        boxes, probs = proposals[0], []
        stages = [(heads.box_head, heads.box_predictor)] + [(s.head, s.predictor) for s in heads.refine]
        for (head, predictor), weights in zip(stages, cascade.STAGE_BOX_WEIGHTS):
            logits, deltas = predictor(head(heads.box_roi_pool(features, [boxes], [size])))
            probs.append(logits.softmax(-1))
            boxes = box_ops.clip_boxes_to_image(BoxCoder(weights).decode_single(deltas, boxes), size)
        scores = torch.stack(probs).mean(0)
        select = SimpleNamespace(
            box_coder=BoxCoder((1.0, 1.0, 1.0, 1.0)),  # zero deltas: the boxes as they are
            score_thresh=heads.score_thresh, nms_thresh=heads.nms_thresh, detections_per_img=heads.detections_per_img,
        )  # fmt: skip
        n_classes = scores.shape[1]
        (ref_boxes,), (ref_scores,), (ref_labels,) = RoIHeads.postprocess_detections(
            select, scores.log(), torch.zeros(len(boxes), 4 * n_classes), [boxes], [size]
        )
        mask_logits = heads.mask_predictor(heads.mask_head(heads.mask_roi_pool(features, [ref_boxes], [size])))
        ref_masks = mask_logits.sigmoid()[torch.arange(len(ref_labels)), ref_labels][:, None]
    assert len(ref_scores) == 40
    torch.testing.assert_close(got["boxes"], ref_boxes, rtol=0, atol=1e-4)
    torch.testing.assert_close(got["scores"], ref_scores, rtol=1e-5, atol=1e-7)
    assert torch.equal(got["labels"], ref_labels)
    torch.testing.assert_close(got["masks"], ref_masks, rtol=0, atol=1e-5)


def test_state_dict_round_trip_and_stable_keys(tmp_path):
    """The standard head's keys all remain (stage 1 keeps them), the later stages add
    `roi_heads.refine.*`; saved weights load for inference and give the same detections."""
    model = cascade_model(box_detections_per_img=20).eval()
    torch.manual_seed(0)
    standard = build_model(config(fpn_channels=32, box_detections_per_img=20), num_classes=3).state_dict()
    state = model.state_dict()
    assert set(standard) <= set(state)
    assert all(key.startswith("roi_heads.refine.") for key in set(state) - set(standard))
    differ = {k for k in standard if standard[k].shape != state[k].shape}
    assert differ == {"roi_heads.box_predictor.bbox_pred.weight", "roi_heads.box_predictor.bbox_pred.bias"}
    path = tmp_path / "model.pt"
    torch.save(state, path)
    cfg = config(box_head="cascade", fpn_channels=32, box_detections_per_img=20)
    loaded = load_model_for_inference(path, cfg, 3, torch.device("cpu"))
    image, _ = plain_sample()
    (expected,), (got,) = model.detect([image]), loaded.detect([image])
    assert len(got["scores"]) == 20
    for key in ("boxes", "scores", "labels", "windows"):
        assert (got[key] == expected[key]).all(), key
    with pytest.raises(DataError, match="model.pt"):
        load_model_for_inference(path, config(fpn_channels=32), 3, torch.device("cpu"))


def test_full_model_weights_fill_stage_one_and_leave_the_later_stages_fresh(tmp_path):
    torch.manual_seed(0)
    source = build_model(config(fpn_channels=32), num_classes=3).state_dict()
    path = tmp_path / "model.pt"
    torch.save(source, path)
    model = cascade_model(weights="imagenet", weights_path=str(path))
    loaded = model.state_dict()
    for key in ("roi_heads.box_head.fc6.weight", "roi_heads.box_predictor.cls_score.weight"):
        assert torch.equal(loaded[key], source[key]), key
    assert "roi_heads.box_predictor.bbox_pred" in model.weights_description  # class-agnostic: 4 outputs
    assert not torch.equal(loaded["roi_heads.refine.0.head.fc6.weight"], source["roi_heads.box_head.fc6.weight"])


def test_a_short_cpu_run_lowers_the_loss():
    model = cascade_model().train()
    image, target = plain_sample()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    totals = []
    for _ in range(12):
        loss = sum(model([image], [target]).values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        totals.append(loss.item())
    assert sum(totals[-3:]) < 0.7 * sum(totals[:3]), totals
