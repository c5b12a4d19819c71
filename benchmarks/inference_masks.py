"""Inference with windowed masks (`CellMaskRCNN.detect`) against torchvision's full-size masks.

torchvision's eval output pastes every detection's mask into a tile-sized float image; the
pipeline then cuts each mask back to its window. `detect` pastes each mask only into its
window. Both paths run the same random-init model on the same tiles with the detection cap
held at `--cells` per tile (a random model's scores pass any threshold, so every tile reaches
the cap, as a dense real image does) and end in the same `InstanceSet`s; the script checks
that they are equal and prints seconds per tile of each.

    PYTHONPATH=src python benchmarks/inference_masks.py --tile-size 512 --cells 400
"""

import argparse
import time

import numpy as np
import torch

from cellseg.instances import InstanceSet
from cellseg.model import build_model
from cellseg.train_config import resolve_train_config


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
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    cfg = resolve_train_config({"preset": "demo", "box_detections_per_img": args.cells, "box_score_thresh": 0.0})
    torch.manual_seed(0)
    model = build_model(cfg, 4, tile_size=args.tile_size).to(args.device).eval()
    images = [torch.rand(3, args.tile_size, args.tile_size, device=args.device) for _ in range(args.batch)]
    dense_s, dense = seconds_per_tile(dense_path, model, images, args.repeats)
    windowed_s, windowed = seconds_per_tile(windowed_path, model, images, args.repeats)
    for a, b in zip(dense, windowed):
        assert len(a) == len(b) and (a.windows == b.windows).all()
        assert all((p == q).all() for p, q in zip(a.probs, b.probs))
    n = np.mean([len(s) for s in dense])
    print(f"{args.device}, {args.tile_size} px tiles, {n:.0f} detections each, {args.threads} threads; equal InstanceSets")
    print(f"full-size masks (torchvision): {dense_s:.2f} s/tile")
    print(f"windowed masks (detect):       {windowed_s:.2f} s/tile  ->  {dense_s / windowed_s:.1f}x")


if __name__ == "__main__":
    main()
