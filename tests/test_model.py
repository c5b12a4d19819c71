import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from torchvision.models.detection import maskrcnn_resnet50_fpn, maskrcnn_resnet50_fpn_v2
from torchvision.models.detection.roi_heads import maskrcnn_loss, project_masks_on_boxes

from cellseg.common.errors import ConfigError
from cellseg.model.mask_rcnn import IMAGENET_MEAN, IMAGENET_STD, aux_map_targets, build_model, paste_windows
from cellseg.model.roi_heads import mask_losses
from cellseg.model.weights import download_weights, torchvision_weights
from cellseg.workflow.configuration import resolve_config, resolve_train_config

SIZE = 96


def config(**overrides):
    """The demo preset (resnet18, random init) with small RPN / ROI budgets for speed."""
    base = {
        "min_size": 128,
        "rpn_pre_nms_top_n_train": 200,
        "rpn_post_nms_top_n_train": 100,
        "rpn_pre_nms_top_n_test": 200,
    }
    return resolve_train_config({**base, **overrides})


def sample(size=SIZE, seed=0):
    """An image with 3 rectangular cells of classes 1, 2, 3 and matching center / boundary maps."""
    gen = torch.Generator().manual_seed(seed)
    image = torch.rand(3, size, size, generator=gen) * 0.2
    rects = [(10, 10, 30, 30), (50, 40, 80, 60), (20, 70, 40, 90)]  # x1, y1, x2, y2
    masks = torch.zeros(3, size, size, dtype=torch.uint8)
    boundary = torch.zeros(size, size)
    center = torch.zeros(size, size)
    for k, (x1, y1, x2, y2) in enumerate(rects):
        masks[k, y1:y2, x1:x2] = 1
        image[:, y1:y2, x1:x2] += 0.6
        boundary[y1:y2, x1:x2] = 1
        boundary[y1 + 1 : y2 - 1, x1 + 1 : x2 - 1] = 0
        center[(y1 + y2) // 2, (x1 + x2) // 2] = 1
    target = {
        "boxes": torch.tensor(rects, dtype=torch.float32),
        "labels": torch.tensor([1, 2, 3]),
        "masks": masks,
        "center": center,
        "boundary": boundary,
    }
    return image, target


@pytest.fixture(scope="module")
def aux_model():
    torch.manual_seed(0)
    return build_model(config(aux_heads=True, dice_loss_weight=0.5, box_detections_per_img=7), num_classes=3)


@pytest.mark.parametrize("backbone", ["resnet18", "resnet34", "resnet50", "resnet101", "resnet50_v2"])
def test_builds_each_backbone_from_config(backbone):
    cfg = config(backbone=backbone, aspect_ratios=[0.5, 1.0, 2.0, 4.0], mask_roi_size=7, box_detections_per_img=9)
    model = build_model(cfg, num_classes=4)
    assert model.roi_heads.box_predictor.cls_score.out_features == 5
    assert model.roi_heads.mask_predictor.mask_fcn_logits.out_channels == 5
    assert model.rpn.anchor_generator.sizes == ((8,), (16,), (32,), (64,), (128,))
    assert model.rpn.head.cls_logits.out_channels == 4  # anchors per location
    assert model.roi_heads.mask_roi_pool.output_size == (7, 7)
    assert model.roi_heads.detections_per_img == 9 and model.rpn._post_nms_top_n["training"] == 100
    assert model.weights_description == "random initialisation"


@pytest.mark.parametrize(
    "backbone, reference", [("resnet50", maskrcnn_resnet50_fpn), ("resnet50_v2", maskrcnn_resnet50_fpn_v2)]
)
def test_parameter_names_match_torchvision_for_coco_weights(backbone, reference):
    ours = build_model(config(backbone=backbone, fpn_channels=256), num_classes=90).state_dict()
    theirs = reference(weights=None, weights_backbone=None, num_classes=91).state_dict()
    assert {k: v.shape for k, v in theirs.items()} == {k: v.shape for k, v in ours.items()}


def test_train_forward_gives_finite_losses_and_trains_the_aux_heads(aux_model):
    aux_model.train()
    aux_model.zero_grad()
    image, target = sample()
    losses = aux_model([image], [target])
    expected = {"loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg", "loss_mask"}
    assert set(losses) == expected | {"loss_mask_dice", "loss_center", "loss_boundary"}
    assert all(math.isfinite(v.item()) for v in losses.values())
    sum(losses.values()).backward()
    for name, param in aux_model.aux_head.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name
    assert aux_model.backbone.fpn.layer_blocks[0][0].weight.grad.abs().sum() > 0


@pytest.mark.parametrize("backbone", ["resnet18", "resnet50_v2"])
def test_fpn_channels_set_the_width_of_the_fpn_and_every_head(backbone):
    torch.manual_seed(0)
    model = build_model(config(backbone=backbone, fpn_channels=32), num_classes=3)
    assert model.backbone.out_channels == 32
    assert all(block[0].out_channels == 32 for block in model.backbone.fpn.layer_blocks)
    assert model.rpn.head.conv[0][0].in_channels == 32
    first_box_layer = next(m for m in model.roi_heads.box_head.modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d)))
    assert first_box_layer.weight.shape[1] in (32, 32 * 7 * 7)
    assert model.roi_heads.mask_head[0][0].in_channels == 32
    assert model.roi_heads.mask_predictor.conv5_mask.in_channels == 32
    model.train()
    image, target = sample()
    losses = model([image], [target])
    assert all(math.isfinite(v.item()) for v in losses.values())
    sum(losses.values()).backward()
    assert model.backbone.fpn.layer_blocks[0][0].weight.grad.abs().sum() > 0
    assert model.backbone.body.layer1[0].conv1.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("box_head", ["standard", "cascade"])
def test_detect_windows_equal_torchvisions_pasted_masks(box_head):
    """`detect` keeps each mask inside its window: there it equals torchvision's full-size
    pasted mask, and that mask is zero outside it; boxes, scores and labels are the same."""
    torch.manual_seed(0)
    model = build_model(config(fpn_channels=32, box_detections_per_img=50, box_head=box_head), num_classes=3).eval()
    images = [sample(seed=1)[0], sample(seed=2)[0][:, :, :60]]
    with torch.no_grad():
        dense = model(images)
    windowed = model.detect(images)
    for full, out, image in zip(dense, windowed, images):
        assert len(out["scores"]) == len(full["scores"]) > 0
        np.testing.assert_array_equal(out["boxes"], full["boxes"].numpy())
        np.testing.assert_array_equal(out["scores"], full["scores"].numpy())
        np.testing.assert_array_equal(out["labels"], full["labels"].numpy())
        for mask, (x0, y0, x1, y1), crop in zip(full["masks"][:, 0].numpy(), out["windows"], out["crops"]):
            assert 0 <= x0 <= x1 <= image.shape[2] and 0 <= y0 <= y1 <= image.shape[1]
            pasted = np.zeros_like(mask)
            pasted[y0:y1, x0:x1] = crop
            np.testing.assert_allclose(pasted, mask, rtol=0, atol=1e-5)  # batched paste: float rounding


def test_plain_model_has_only_torchvision_losses():
    torch.manual_seed(0)
    model = build_model(config(), num_classes=3)
    image, target = sample()
    del target["center"], target["boundary"]
    assert set(model([image], [target])) == {
        "loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg", "loss_mask"
    }  # fmt: skip


def test_aux_losses_need_the_maps(aux_model):
    image, target = sample()
    del target["boundary"]
    with pytest.raises(ValueError, match="boundary"):
        aux_model.train()([image], [target])


def test_aux_targets_are_aligned_with_the_resized_images(aux_model):
    """Each map resized exactly as the transform resized its image, padding excluded."""
    gen = torch.Generator().manual_seed(1)
    images = [torch.rand(3, 64, 96, generator=gen), torch.rand(3, 80, 48, generator=gen)]
    targets = [{"center": im[0].clone(), "boundary": im[1].clone()} for im in images]
    image_list, _ = aux_model.eval().transform(images)
    padded = tuple(image_list.tensors.shape[-2:])
    assert image_list.image_sizes == [(128, 192), (213, 128)] and padded == (224, 192)
    maps, valid = aux_map_targets(targets, image_list.image_sizes, padded)
    mean = torch.tensor(IMAGENET_MEAN)[:2, None, None]
    std = torch.tensor(IMAGENET_STD)[:2, None, None]
    for i, (height, width) in enumerate(image_list.image_sizes):
        resized = image_list.tensors[i, :2, :height, :width] * std + mean
        torch.testing.assert_close(maps[i, :, :height, :width], resized, atol=1e-5, rtol=0)
        assert valid[i, 0, :height, :width].all() and valid[i].sum() == height * width
        assert not maps[i][:, ~valid[i, 0]].any()


def test_aux_losses_average_over_the_valid_pixels_only(aux_model):
    """With the head's output held at a constant c, loss_center = mean((c - map)²) over real pixels."""
    torch.manual_seed(0)
    model = build_model(config(aux_heads=True, center_loss_weight=2.0, min_size=96), num_classes=3).train()
    last = model.aux_head.body[-1]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.copy_(torch.tensor([0.0, 0.0]))
    small, small_target = sample(size=SIZE)
    small_target["center"] = torch.full((SIZE, SIZE), 0.25)
    small_target["boundary"] = torch.ones(SIZE, SIZE)
    big, big_target = sample(size=SIZE + 32)  # makes the batch padded around the small image
    big_target["center"] = torch.full((SIZE + 32, SIZE + 32), 0.75)
    big_target["boundary"] = torch.ones(SIZE + 32, SIZE + 32)
    losses = model([small, big], [small_target, big_target])
    n_small, n_big = SIZE**2, (SIZE + 32) ** 2
    expected = 2.0 * (n_small * 0.25**2 + n_big * 0.25**2) / (n_small + n_big)
    assert losses["loss_center"].item() == pytest.approx(expected, rel=1e-5)
    assert losses["loss_boundary"].item() == pytest.approx(math.log(2), rel=1e-5)  # BCE(logit 0, 1), no padding


def test_mask_bce_equals_torchvision_and_dice_uses_the_same_targets():
    masks = torch.zeros(2, 32, 32, dtype=torch.uint8)
    masks[0, 4:12, 4:20] = 1
    masks[1, 16:30, 10:26] = 1
    proposals = [torch.tensor([[2.0, 2.0, 22.0, 14.0], [8.0, 14.0, 28.0, 31.0], [9.0, 15.0, 27.0, 30.0]])]
    matched, labels = [torch.tensor([0, 1, 1])], [torch.tensor([2, 1])]
    logits = torch.randn(3, 3, 28, 28, generator=torch.Generator().manual_seed(0))
    bce, dice = mask_losses(logits, proposals, [masks], labels, matched)
    torch.testing.assert_close(bce, maskrcnn_loss(logits, proposals, [masks], labels, matched))
    assert 0 < dice.item() < 1
    targets = project_masks_on_boxes(masks, proposals[0], matched[0], 28)  # soft at the edges
    hard = torch.full((3, 3, 28, 28), -50.0)
    hard[torch.arange(3), labels[0][matched[0]]] = torch.where(targets > 0.5, 50.0, -50.0)
    inside = (targets > 0.5).float()
    expected = 1 - ((2 * (inside * targets).sum((1, 2)) + 1) / (inside.sum((1, 2)) + targets.sum((1, 2)) + 1)).mean()
    assert mask_losses(hard, proposals, [masks], labels, matched)[1].item() == pytest.approx(expected.item(), rel=1e-5)
    assert expected < 0.05


def test_class_weights_weight_the_classifier_loss():
    image, target = sample()
    del target["center"], target["boundary"]

    def classifier_loss(weights):
        torch.manual_seed(0)
        model = build_model(config(), num_classes=3, class_weights=weights).train()
        torch.manual_seed(1)  # the same RoI sampling for each model
        return model([image], [target])["loss_classifier"].item()

    plain = classifier_loss(None)
    assert classifier_loss(torch.ones(4)) == pytest.approx(plain, rel=1e-5)
    assert classifier_loss(torch.tensor([1.0, 5.0, 5.0, 5.0])) != pytest.approx(plain, rel=1e-3)
    with pytest.raises(ValueError, match="class_weights"):
        build_model(config(), num_classes=3, class_weights=torch.ones(3))


def test_eval_output_format_and_detections_per_image(aux_model):
    image, _ = sample()
    aux_model.roi_heads.score_thresh = 0.0  # a random model's scores are low; keep all to reach the cap
    with torch.no_grad():
        (out,) = aux_model.eval()([image])
    assert set(out) == {"boxes", "labels", "scores", "masks", "center", "boundary"}
    assert out["boxes"].shape == (7, 4) and out["scores"].shape == (7,)
    assert out["labels"].dtype == torch.int64 and set(out["labels"].tolist()) <= {1, 2, 3}
    assert out["masks"].shape == (7, 1, SIZE, SIZE) and 0 <= out["masks"].min() and out["masks"].max() <= 1
    assert out["center"].shape == (SIZE, SIZE) and out["boundary"].shape == (SIZE, SIZE)


def test_multiscale_training_sizes_and_eval_size():
    model = build_model(config(multiscale_sizes=[64, 160]), num_classes=1)
    image = torch.rand(3, 100, 100)
    torch.manual_seed(0)
    train_sizes = {tuple(model.train().transform([image])[0].image_sizes[0]) for _ in range(12)}
    assert train_sizes == {(64, 64), (160, 160)}
    assert model.eval().transform([image])[0].image_sizes == [(128, 128)]


@pytest.mark.parametrize("min_size, expected", [(64, [(200, 300), (40, 90)]), (128, [(400, 600), (80, 180)])])
def test_tile_size_fixes_one_magnification_for_every_image_size(min_size, expected):
    model = build_model(config(min_size=min_size, max_size=256), 2, tile_size=64).eval()
    batch, _ = model.transform([torch.rand(3, 200, 300), torch.rand(3, 40, 90)])
    assert batch.image_sizes == expected


def test_a_tiny_first_image_does_not_change_later_predictions():
    """torchvision infers RoIAlign scales from the first batch; ours are fixed."""
    image = sample()[0]
    fresh = build_model(config(min_size=None), 3).eval()  # native resolution: no resizing
    state = {k: v.clone() for k, v in fresh.state_dict().items()}
    warmed = build_model(config(min_size=None), 3).eval()
    warmed.load_state_dict(state)
    with torch.no_grad():
        warmed([torch.rand(3, 40, 90)])
        expected, got = fresh([image])[0], warmed([image])[0]
    for pool in (warmed.roi_heads.box_roi_pool, warmed.roi_heads.mask_roi_pool):
        assert pool.scales == [1 / 4, 1 / 8, 1 / 16, 1 / 32]
    for key in ("boxes", "scores", "masks"):
        assert torch.equal(expected[key], got[key])


def test_native_resolution_when_min_size_is_null():
    model = build_model(config(min_size=None), 2).eval()
    batch, _ = model.transform([torch.rand(3, 200, 300), torch.rand(3, 40, 90)])
    assert batch.image_sizes == [(200, 300), (40, 90)]
    with pytest.raises(ConfigError, match="train.multiscale_sizes"):  # before any job runs
        resolve_config({"tiles": {"size": 0}, "train": {"multiscale_sizes": [64, 96]}})


def test_pretrained_false_skips_the_weights(tmp_path):
    path = tmp_path / "missing.pth"
    model = build_model(config(weights="imagenet", weights_path=str(path)), 2, pretrained=False)
    assert "architecture only" in model.weights_description


def test_backbone_weights_from_local_file(tmp_path):
    resnet = torchvision.models.resnet18(weights=None)
    path = tmp_path / "resnet18.pt"
    torch.save(resnet.state_dict(), path)
    model = build_model(config(weights="imagenet", weights_path=str(path), trainable_backbone_layers=3), 2)
    body = model.backbone.body.state_dict()
    for name, value in resnet.state_dict().items():
        if not name.startswith("fc.") and "num_batches_tracked" not in name:
            torch.testing.assert_close(body[name], value, rtol=0, atol=0)
    assert str(path) in model.weights_description and "ImageNet" in model.weights_description
    assert not model.backbone.body.conv1.weight.requires_grad  # trainable_backbone_layers=3 freezes the stem
    assert model.backbone.body.layer4[0].conv1.weight.requires_grad


def test_full_model_weights_reinitialise_mismatched_predictors(tmp_path):
    torch.manual_seed(0)
    source = build_model(config(), num_classes=3).state_dict()
    path = tmp_path / "model.pt"
    torch.save(source, path)
    model = build_model(config(weights="imagenet", weights_path=str(path)), num_classes=2)
    loaded = model.state_dict()
    reset = [k for k in source if k.startswith(("roi_heads.box_predictor.", "roi_heads.mask_predictor.mask_fcn"))]
    assert len(reset) == 6
    for name, value in source.items():
        if name not in reset and name in loaded:
            torch.testing.assert_close(loaded[name], value, rtol=0, atol=0)
    assert all(loaded[k].shape != source[k].shape for k in reset)
    assert "roi_heads.box_predictor.cls_score" in model.weights_description


def test_wrong_weight_files_name_the_file(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("not weights")
    with pytest.raises(ConfigError, match="notes.txt"):
        build_model(config(weights="imagenet", weights_path=str(text)), 2)
    with pytest.raises(ConfigError, match="missing.pt"):
        build_model(config(weights="imagenet", weights_path=str(tmp_path / "missing.pt")), 2)
    other = tmp_path / "resnet34.pt"
    torch.save(torchvision.models.resnet34(weights=None).state_dict(), other)
    with pytest.raises(ConfigError, match="resnet34.pt.*another backbone"):
        build_model(config(weights="imagenet", weights_path=str(other)), 2)


def test_torchvision_weight_names():
    assert str(torchvision_weights(config(weights="imagenet"))) == "ResNet18_Weights.IMAGENET1K_V1"
    coco = config(backbone="resnet50_v2", weights="coco", fpn_channels=256)
    assert str(torchvision_weights(coco)) == "MaskRCNN_ResNet50_FPN_V2_Weights.COCO_V1"
    assert torchvision_weights(config()) is None
    with pytest.raises(ConfigError, match="train.weights"):
        download_weights(config(), "unused.pt")


def reference_paste():
    """The per-detection interpolate loop that `paste_windows` replaced (kept in the benchmark)."""
    path = Path(__file__).parents[1] / "benchmarks" / "inference_masks.py"
    spec = importlib.util.spec_from_file_location("inference_masks", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.paste_windows_loop


def test_batched_paste_equals_the_per_detection_loop():
    """Small, large, thin, sub-pixel boxes and boxes past every image edge (windows clipped or
    empty), in one call: windows equal, probabilities to float rounding, masks at 0.5 equal."""
    torch.manual_seed(0)
    boxes = torch.tensor([
        [10.0, 12.0, 30.0, 25.0], [0.0, 0.0, 96.0, 80.0], [40.2, 5.5, 41.0, 60.0], [-15.0, -8.0, 12.0, 9.0],
        [85.0, 70.0, 130.0, 95.0], [50.0, 50.0, 50.4, 50.3], [120.0, 90.0, 140.0, 99.0], [3.0, 60.0, 70.0, 66.0],
    ])
    masks = torch.rand(len(boxes), 1, 28, 28)
    windows, crops = paste_windows(masks, boxes, (80, 96))
    expected_windows, expected = reference_paste()(masks, boxes, (80, 96))
    np.testing.assert_array_equal(windows, expected_windows)
    assert (windows[:, 2:] - windows[:, :2] == 0).any(axis=1).sum() == 1  # the box outside the image
    for crop, want in zip(crops, expected):
        assert crop.shape == want.shape and crop.dtype == np.float32
        np.testing.assert_allclose(crop, want, rtol=0, atol=1e-5)
        np.testing.assert_array_equal(crop >= 0.5, want >= 0.5)
    assert paste_windows(masks[:0], boxes[:0], (80, 96))[1] == []
