import numpy as np
import pytest
import torch

from cellseg.common.errors import ConfigError, DataError
from cellseg.common.instances import InstanceSet
from cellseg.inference.predict import load_model_for_inference, predict_image, tta_views
from cellseg.model.mask_rcnn import build_model
from cellseg.workflow.configuration import resolve_config, resolve_train_config

CPU = torch.device("cpu")
PROB = 204  # the oracle's mask probability 0.8, quantised


class Oracle:
    """A perfect segmenter of drawn images: channel 0 = instance id (0 = background), channel 1
    = class, channel 2 = score × 255. It sees exactly what lies in the tile it is given, and
    records the input sizes. Masks have probability 0.8, but 1.0 for cells touching the tile's
    edge (cut cells), so that any part of a cut cell that stitching keeps shows in the result."""

    def __init__(self):
        self.sizes = []

    def eval(self):
        return self

    def train(self):
        return self

    def detect(self, images):
        """`CellMaskRCNN.detect`'s interface; every mask's window is the whole tile."""
        results = []
        for image in images:
            out = self.segment(image)
            height, width = image.shape[1:]
            results.append({
                "boxes": out["boxes"].numpy(), "scores": out["scores"].numpy(), "labels": out["labels"].numpy(),
                "windows": np.tile([0, 0, width, height], (len(out["boxes"]), 1)),
                "crops": list(out["masks"][:, 0].numpy()),
            })
        return results

    def segment(self, image):
        self.sizes.append(tuple(image.shape[1:]))
        pixels = (image * 255).round().long()
        masks = [pixels[0] == i for i in pixels[0].unique().tolist() if i]
        boxes = [[m.any(0).nonzero().min(), m.any(1).nonzero().min(), m.any(0).nonzero().max() + 1,
                  m.any(1).nonzero().max() + 1] for m in masks]
        return {
            "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
            "labels": torch.tensor([pixels[1][m][0] for m in masks], dtype=torch.int64),
            "scores": torch.tensor([pixels[2][m][0] / 255 for m in masks], dtype=torch.float32),
            "masks": torch.stack([m * (1.0 if touches_edge(m) else 0.8) for m in masks] or
                                 [torch.zeros(image.shape[1:])])[: len(masks), None],
        }


def touches_edge(mask):
    return bool(mask[0].any() or mask[-1].any() or mask[:, 0].any() or mask[:, -1].any())


def draw(height, width, cells):
    """An image for the `Oracle` and its label image: cells are (x0, y0, x1, y1, class) rectangles."""
    image = np.zeros((height, width, 3), np.uint8)
    for i, (x0, y0, x1, y1, c) in enumerate(cells, 1):
        image[y0:y1, x0:x1] = (i, c, 100 + i)
    return image, image[..., 0].astype(np.int32)


def assert_found_each_cell_once_and_whole(found: InstanceSet, labels: np.ndarray, image: np.ndarray, cut=()):
    """Each cell exactly once, with its mask, box, class and score; `cut`: ids of cells that no
    tile sees whole (their mask probability is the oracle's 1.0 for cut cells)."""
    ids = np.unique(labels[labels > 0])
    assert len(found) == len(ids)
    masks = found.binary_masks(0.5)
    for i in ids:
        matches = [k for k in range(len(found)) if np.array_equal(masks[k], labels == i)]
        assert len(matches) == 1, f"cell {i} found {len(matches)} times whole"
        k = matches[0]
        assert found.classes[k] == image[labels == i][0, 1]
        assert found.scores[k] == pytest.approx((100 + i) / 255, abs=1e-6)
        rows, cols = np.nonzero(labels == i)
        np.testing.assert_allclose(found.boxes[k], [cols.min(), rows.min(), cols.max() + 1, rows.max() + 1], atol=1e-3)
        np.testing.assert_array_equal(found.paste(k)[labels == i] * 255, 255 if i in cut else PROB)


# Tiles of 60 px with overlap 24 on a 50 x 96 image: x origins 0 and 36, the overlap is x in [36, 60).
SEAM_CELLS = [
    (50, 2, 66, 12, 1),  # crosses the seam x = 60 (end of tile 0): whole only in tile 1
    (28, 14, 44, 24, 2),  # crosses the seam x = 36 (start of tile 1): whole only in tile 0
    (40, 26, 50, 34, 1),  # inside the overlap: whole in both tiles
    (38, 36, 47, 46, 1),  # two touching cells inside the overlap
    (47, 36, 58, 46, 1),
    (26, 12, 66, 14, 2),  # wider than the overlap: cut in both tiles, stitched from the pieces
    (5, 30, 15, 40, 2),  # away from the seams
    (80, 30, 90, 48, 1),
]


@pytest.mark.parametrize("tta", [[], ["hflip"], ["hflip", "vflip", "rot90"]])
def test_cells_across_and_inside_seams_come_out_once_and_whole(tta):
    image, labels = draw(50, 96, SEAM_CELLS)
    oracle = Oracle()
    found = predict_image(oracle, image, tile_size=60, overlap=24, tta=tta, device=CPU, batch_size=3)
    assert found.image_size == (50, 96)
    assert_found_each_cell_once_and_whole(found, labels, image, cut=[6])
    # cropped, not padded: 50 px high tiles (the image's height), 50x60 or 60x50 after rot90
    assert set(oracle.sizes) <= {(50, 60), (60, 50)}
    assert len(oracle.sizes) == 2 * len(tta_views(tta))


def test_cell_at_a_four_tile_corner_and_a_flush_last_tile():
    cells = [(50, 50, 66, 66, 1), (30, 30, 40, 40, 2), (85, 2, 99, 12, 1), (2, 88, 12, 99, 2)]
    image, labels = draw(100, 100, cells)  # origins 0, 36, 40: the last tile flush with the end
    oracle = Oracle()
    found = predict_image(oracle, image, tile_size=60, overlap=24, tta=["rot90"], device=CPU)
    assert_found_each_cell_once_and_whole(found, labels, image)
    assert len(oracle.sizes) == 2 * 9


def test_whole_image_when_tile_size_is_zero_or_the_image_fits():
    image, labels = draw(30, 50, [(2, 3, 10, 20, 1), (30, 5, 45, 9, 2)])
    for tile_size, size in [(0, (30, 50)), (64, (30, 50))]:
        oracle = Oracle()
        found = predict_image(oracle, image, tile_size=tile_size, overlap=8, tta=[], device=CPU)
        assert oracle.sizes == [size]
        assert_found_each_cell_once_and_whole(found, labels, image)


def test_tta_maps_asymmetric_shapes_back():
    """An L-shaped cell in a non-square image: every view must map back onto the same pixels."""
    image, labels = draw(30, 50, [(5, 3, 25, 8, 1)])
    image[8:20, 5:10] = image[3, 5]
    labels[8:20, 5:10] = 1
    found = predict_image(Oracle(), image, tile_size=0, overlap=0, tta=["hflip", "vflip", "rot90"], device=CPU)
    assert len(found) == 1
    np.testing.assert_array_equal(found.paste(0) * 255, np.where(labels == 1, PROB, 0))
    np.testing.assert_allclose(found.boxes[0], [5, 3, 25, 20], atol=1e-3)


def test_tta_views_and_bad_ops():
    assert tta_views([]) == [()]
    assert tta_views(["rot90", "hflip"]) == [(), ("rot90",), ("hflip",), ("hflip", "rot90")]
    with pytest.raises(ConfigError, match="predict.tta"):  # the schema's, before any job runs
        resolve_config({"predict": {"tta": ["rot180"]}})


def test_empty_image():
    found = predict_image(Oracle(), np.zeros((40, 70, 3), np.uint8), tile_size=32, overlap=8, tta=["vflip"], device=CPU)
    assert len(found) == 0 and found.image_size == (40, 70)


def small_untrained_model():
    """A 2-class Mask R-CNN with random weights (seed 0), narrow and capped so it runs fast."""
    cfg = resolve_train_config({
        "min_size": 48, "max_size": 48, "fpn_channels": 32, "box_detections_per_img": 10,
        "rpn_pre_nms_top_n_test": 40, "rpn_post_nms_top_n_test": 40,
    })  # fmt: skip
    torch.manual_seed(0)
    return build_model(cfg, num_classes=2).eval()


def test_real_mask_rcnn_plumbing():
    model = small_untrained_model()
    image = np.random.default_rng(0).integers(0, 256, (60, 80, 3), dtype=np.uint8)
    found = predict_image(model, image, tile_size=48, overlap=16, tta=["hflip"], device=CPU, batch_size=4)
    assert found.image_size == (60, 80) and len(found) > 0
    assert found.boxes.dtype == np.float32 and found.windows.dtype == np.int32
    assert set(found.classes.tolist()) <= {1, 2}
    assert ((found.scores > 0) & (found.scores <= 1)).all()
    assert (found.windows[:, :2] >= 0).all() and (found.windows[:, 2:] <= [80, 60]).all()
    assert (found.boxes[:, 2:] <= [80, 60]).all() and (found.boxes[:, :2] >= 0).all()
    for (x0, y0, x1, y1), p in zip(found.windows, found.probs):
        assert p.shape == (y1 - y0, x1 - x0) and p.dtype == np.uint8
    assert any(len(np.unique(p)) > 2 for p in found.probs)  # soft masks kept


def test_load_model_for_inference(tmp_path):
    cfg = resolve_train_config({"min_size": 32, "max_size": 32, "rpn_pre_nms_top_n_test": 50})
    torch.manual_seed(0)
    torch.save(build_model(cfg, num_classes=2).state_dict(), tmp_path / "model.pt")
    model = load_model_for_inference(tmp_path / "model.pt", cfg, 2, CPU)
    assert not model.training
    with pytest.raises(DataError, match="model.pt"):
        load_model_for_inference(tmp_path / "model.pt", cfg, 3, CPU)


@pytest.mark.parametrize("amp, feature_dtype", [("none", torch.float32), ("bf16", torch.bfloat16), ("fp16", torch.float16)])
def test_inference_autocast_runs_the_backbone_in_half_precision_only(amp, feature_dtype):
    """predict.amp: the backbone + FPN compute in half precision, the heads in fp32, so boxes
    keep fp32 coordinates; the instances come out as in fp32 (close count and scores)."""
    model = small_untrained_model()
    seen = {}

    def record(name, features):
        seen.setdefault(name, features["0"].dtype)  # returns None: the hooks change no output

    model.backbone.register_forward_hook(lambda m, inputs, out: record("backbone", out))
    model.roi_heads.register_forward_hook(lambda m, inputs, out: record("heads", inputs[0]))
    image = np.random.default_rng(0).integers(0, 256, (60, 80, 3), dtype=np.uint8)
    found = predict_image(model, image, tile_size=48, overlap=16, tta=[], device=CPU, amp=amp)
    assert seen == {"backbone": feature_dtype, "heads": torch.float32}
    fp32 = predict_image(model, image, tile_size=48, overlap=16, tta=[], device=CPU)
    # bf16's 8-bit mantissa may move one borderline detection of this random model across the
    # model's score threshold; the rest must agree
    assert found.boxes.dtype == np.float32 and len(fp32) > 20 and abs(len(found) - len(fp32)) <= 1
    k = min(len(found), len(fp32))
    assert np.abs(np.sort(found.scores)[::-1][:k] - np.sort(fp32.scores)[::-1][:k]).max() < 0.05
