"""Inference with windowed masks (`CellMaskRCNN.detect`) against torchvision's full-size masks.

torchvision's eval output pastes every detection's mask into a tile-sized float image; the
pipeline then cuts each mask back to its window. `detect` pastes each mask only into its
window. Both paths run the same random-init model on the same tiles with the detection cap
held at `--cells` per tile (a random model's scores pass any threshold, so every tile reaches
the cap, as a dense real image does) and end in the same `InstanceSet`s; the script checks
that they are equal and prints seconds per tile of each.

It then times the mask paste alone on the same detections: `paste_windows` (one batched matmul
per window-size group) against `paste_windows_loop`, the per-detection `interpolate` loop it
replaced, and reports their largest difference and the masks' IoU at 0.5.

    PYTHONPATH=src python benchmarks/inference_masks.py --tile-size 512 --cells 400
"""

import argparse
import time

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.models.detection.roi_heads import expand_boxes, expand_masks
from torchvision.models.detection.transform import resize_boxes

from cellseg.common.instances import InstanceSet
from cellseg.model.mask_rcnn import build_model, paste_windows
from cellseg.workflow.configuration import resolve_train_config


def paste_windows_loop(masks, boxes, image_size):
    """`cellseg.model.mask_rcnn.paste_windows` before issue 12: one `interpolate` per detection."""
    height, width = image_size
    masks, scale = expand_masks(masks, padding=1)
    boxes = expand_boxes(boxes, scale).to(torch.int64).tolist()
    windows, crops = np.zeros((len(boxes), 4), np.int64), []
    for i, (mask, (bx0, by0, bx1, by1)) in enumerate(zip(masks[:, 0], boxes)):
        size = (max(by1 - by0 + 1, 1), max(bx1 - bx0 + 1, 1))
        resized = F.interpolate(mask[None, None].float(), size=size, mode="bilinear", align_corners=False)[0, 0]
        x0, y0, x1, y1 = max(bx0, 0), max(by0, 0), min(bx1 + 1, width), min(by1 + 1, height)
        x1, y1 = max(x1, x0), max(y1, y0)
        windows[i] = (x0, y0, x1, y1)
        crops.append(resized[y0 - by0 : y1 - by0, x0 - bx0 : x1 - bx0].reshape(-1))
    if not crops:
        return windows, []
    shapes = [(y1 - y0, x1 - x0) for x0, y0, x1, y1 in windows.tolist()]
    pieces = np.split(torch.cat(crops).cpu().numpy(), np.cumsum([h * w for h, w in shapes])[:-1])
    return windows, [piece.reshape(shape) for piece, shape in zip(pieces, shapes)]


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a >= 0.5, b >= 0.5
    union = np.count_nonzero(a | b)
    return np.count_nonzero(a & b) / union if union else 1.0


def raw_detections(model, images) -> list[tuple[torch.Tensor, torch.Tensor, tuple[int, int]]]:
    """Per image: the mask head's (N, 1, M, M) probabilities, boxes in the image, image size."""
    image_list, _ = model.transform(images)
    features = model.backbone(image_list.tensors)
    proposals, _ = model.rpn(image_list, features)
    detections, _ = model.roi_heads(features, proposals, image_list.image_sizes)
    return [
        (d["masks"], resize_boxes(d["boxes"], resized, tuple(image.shape[-2:])), tuple(image.shape[-2:]))
        for d, resized, image in zip(detections, image_list.image_sizes, images)
    ]


def compare_paste(model, images, repeats: int) -> dict:
    """Seconds per tile of both pastes (median of `repeats`), max |difference|, min mask IoU."""
    with torch.inference_mode():
        raw = raw_detections(model, images)
    times = {}
    for name, paste in (("loop", paste_windows_loop), ("batched", paste_windows)):
        runs = []
        for _ in range(repeats):
            start = time.perf_counter()
            results = [paste(*args) for args in raw]
            runs.append(time.perf_counter() - start)
        times[name] = (float(np.median(runs)) / len(images), results)
    diff, iou = 0.0, 1.0
    for (wa, ca), (wb, cb) in zip(times["loop"][1], times["batched"][1]):
        assert (wa == wb).all()
        for a, b in zip(ca, cb):
            diff = max(diff, float(np.abs(a - b).max(initial=0)))
            iou = min(iou, mask_iou(a, b))
    return {"loop_s": times["loop"][0], "batched_s": times["batched"][0], "max_diff": diff, "min_iou": iou}


def dense_path(model, images) -> list[InstanceSet]:
    """torchvision's output, then each full-size mask cut to its window."""
    outputs = model(images)
    return [
        InstanceSet.from_dense(
            out["boxes"].cpu().numpy(), out["scores"].cpu().numpy(), out["labels"].cpu().numpy(),
            out["masks"][:, 0].cpu().numpy(),
        )
        for out in outputs
    ]


def windowed_path(model, images) -> list[InstanceSet]:
    return [
        InstanceSet.from_windows(
            tuple(image.shape[-2:]), out["boxes"], out["scores"], out["labels"], out["windows"], out["crops"]
        )
        for image, out in zip(images, model.detect(images))
    ]


def seconds_per_tile(path, model, images, repeats: int) -> tuple[float, list[InstanceSet]]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        with torch.inference_mode():
            result = path(model, images)
        times.append(time.perf_counter() - start)
    return float(np.median(times)) / len(images), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tile-size", type=int, default=512)
    parser.add_argument("--cells", type=int, default=400, help="detections per tile")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--paste-only", action="store_true", help="time only the two mask pastes")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    cfg = resolve_train_config({"preset": "demo", "box_detections_per_img": args.cells, "box_score_thresh": 0.0})
    torch.manual_seed(0)
    model = build_model(cfg, 4, tile_size=args.tile_size).to(args.device).eval()
    images = [torch.rand(3, args.tile_size, args.tile_size, device=args.device) for _ in range(args.batch)]
    paste = compare_paste(model, images, args.repeats)
    print(
        f"mask paste, {args.cells} detections per {args.tile_size} px tile: loop {paste['loop_s'] * 1e3:.1f} ms, "
        f"batched {paste['batched_s'] * 1e3:.1f} ms per tile -> {paste['loop_s'] / paste['batched_s']:.2f}x; "
        f"max |difference| {paste['max_diff']:.2g}, min IoU at 0.5 {paste['min_iou']:.4f}"
    )
    if args.paste_only:
        return
    dense_s, dense = seconds_per_tile(dense_path, model, images, args.repeats)
    windowed_s, windowed = seconds_per_tile(windowed_path, model, images, args.repeats)
    for a, b in zip(dense, windowed):
        assert len(a) == len(b) and (a.windows == b.windows).all()
        # uint8-quantised probabilities: the batched paste's float rounding may move one level
        assert all(np.abs(p.astype(int) - q).max() <= 1 for p, q in zip(a.probs, b.probs))
    n = np.mean([len(s) for s in dense])
    print(f"{args.device}, {args.tile_size} px tiles, {n:.0f} detections each, {args.threads} threads; equal InstanceSets (to 1/255)")
    print(f"full-size masks (torchvision): {dense_s:.2f} s/tile")
    print(f"windowed masks (detect):       {windowed_s:.2f} s/tile  ->  {dense_s / windowed_s:.1f}x")


if __name__ == "__main__":
    main()
