"""Can the predicted centre map improve detections? Rescoring by centre support, on a test set.

Issue 9 asks whether the aux heads' centre map earns its place at inference. For each fold model
of a finished workdir trained with `train.aux_heads: true`, this predicts every test image whole
(no TTA) with the centre map, and scores each detection's centre support `c` = the highest
predicted centre probability inside its mask (probability > 0.5). Detections are then rescored
`score * c ** gamma` for each `--gammas` value (0 = the model's own scores) and scored against
the test ground truth: class-averaged mask AP50 at 100 detections per image (the leaderboard's
number), the rare class's AP50@100 and PQ. Run from the repository root:

    .venv/bin/python benchmarks/center_rescoring.py --workdir ablation/consep/all \\
        [--folds 0 1] [--gammas 0 0.5 1 2] [--rare-class class1] [--limit N]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from cellseg.common.images import read_image  # noqa: E402
from cellseg.common.instances import InstanceSet  # noqa: E402
from cellseg.data.dataset import index_dataset, load_ground_truth  # noqa: E402
from cellseg.inference.predict import load_model_for_inference  # noqa: E402
from cellseg.scoring.metrics import evaluate_predictions  # noqa: E402
from cellseg.training.data import image_to_tensor  # noqa: E402
from cellseg.workflow.configuration import resolve_train_config  # noqa: E402


def centre_support(masks: np.ndarray, center: np.ndarray) -> np.ndarray:
    """`(N,)` highest centre probability inside each mask (`masks` `(N, H, W)` probabilities,
    `center` `(H, W)`); 0 for a mask without a pixel above 0.5."""
    inside = masks > 0.5
    return np.where(inside, center[None], 0.0).reshape(len(masks), -1).max(axis=1, initial=0.0)


def predict_with_support(model, image: np.ndarray) -> tuple[InstanceSet, np.ndarray]:
    """Detections of one whole image and their centre support."""
    with torch.inference_mode():
        out = model([image_to_tensor(image)])[0]
    masks = out["masks"][:, 0].numpy()
    found = InstanceSet.from_dense(out["boxes"].numpy(), out["scores"].numpy(), out["labels"].numpy(), masks)
    return found, centre_support(masks, out["center"].numpy())


def rescored(found: InstanceSet, support: np.ndarray, gamma: float) -> InstanceSet:
    if gamma == 0:
        return found
    return InstanceSet(
        image_size=found.image_size, boxes=found.boxes, scores=(found.scores * support**gamma).astype(np.float32),
        classes=found.classes, windows=found.windows, probs=found.probs,
    )  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--folds", type=int, nargs="+", default=[0])
    parser.add_argument("--gammas", type=float, nargs="+", default=[0.0, 0.5, 1.0, 2.0])
    parser.add_argument("--rare-class", default="class1")
    parser.add_argument("--limit", type=int, default=None, help="first N test images only")
    args = parser.parse_args()

    config = yaml.safe_load((args.workdir / "variant.yaml").read_text())
    cfg = resolve_train_config(config.get("train", {}))
    if not cfg["aux_heads"]:
        parser.error(f"{args.workdir}: trained without train.aux_heads; no centre map to use")
    classes = config["classes"]
    source = {"format": "reference", "classes": classes, **{k: v for k, v in config["data"].items() if k != "source"}}
    tests = index_dataset(source).test_images[: args.limit]
    labels = [load_ground_truth(source["test_gt"], t.name, classes, (t.height, t.width)) for t in tests]
    images = [read_image(t.path) for t in tests]
    torch.set_num_threads(1)
    print(f"{args.workdir}, {len(tests)} test images")
    print(f"| fold | gamma | AP50@100 | {args.rare_class} AP50@100 | PQ |")
    print("| --- | --- | --- | --- | --- |")
    for fold in args.folds:
        weights = args.workdir / "results" / "train" / f"fold{fold}" / "model_best.pt"
        model = load_model_for_inference(weights, cfg, len(classes), torch.device("cpu"), config["tiles"]["size"])
        start = time.perf_counter()
        predicted = [predict_with_support(model, image) for image in images]
        seconds = time.perf_counter() - start
        for gamma in args.gammas:
            preds = [rescored(found, support, gamma) for found, support in predicted]
            metrics, _ = evaluate_predictions(labels, preds, classes, max_dets=100)
            print(
                f"| {fold} | {gamma:g} | {metrics['AP50@100']:.3f} | "
                f"{metrics[f'AP50@100_{args.rare_class}']:.3f} | {metrics['PQ']:.3f} |",
                flush=True,
            )
        print(f"(fold {fold}: {seconds:.0f} s to predict)", flush=True)


if __name__ == "__main__":
    main()
