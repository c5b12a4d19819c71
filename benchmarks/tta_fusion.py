"""Which fusion of the test-time-augmentation views scores best? (`predict.tta_fusion`)

Issue 10 asks for the default of `predict.tta_fusion` to be chosen by measurement. For each
fold model of a finished workdir, this predicts every labelled image once per TTA view
(`--tta`, default hflip: 2 views), then fuses the same views under each setting and scores
the fused instances, untuned (mask threshold 0.5, no score threshold), against the ground
truth: mask AP and class-averaged AP50 at 100 detections per image (the leaderboard's
number). The identity view alone is the no-TTA baseline. Run from the repository root:

    .venv/bin/python benchmarks/tta_fusion.py --workdir WORKDIR [--config FILE ...] \\
        [--images test|val] [--folds 0 1] [--tta hflip] [--limit N]

The workdir's config is `config.yaml`, then `WORKDIR/variant.yaml` if it exists (a workdir of
`benchmarks/ablation.py`), then each `--config` file; the demo dataset is read from the
workdir's `results/demo`.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import yaml
from snakemake.utils import validate

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from ablation import merge  # noqa: E402

from cellseg.common.images import read_image  # noqa: E402
from cellseg.data.dataset import index_dataset, load_ground_truth, load_sample  # noqa: E402
from cellseg.inference.ensemble import fuse_instance_sets  # noqa: E402
from cellseg.inference.predict import load_model_for_inference, predict_views  # noqa: E402
from cellseg.scoring.metrics import evaluate_predictions  # noqa: E402
from cellseg.workflow.configuration import (
    resolve_recipe,  # noqa: E402
    resolve_train_config,  # noqa: E402
)

BASE = {"iou_thr": 0.55, "skip_box_thr": 0.0}
SETTINGS = {
    "no TTA (identity view)": None,
    "avg, absent_as_zero false": {**BASE, "conf_type": "avg", "absent_as_zero": False},
    "avg, absent_as_zero true": {**BASE, "conf_type": "avg", "absent_as_zero": True},
    "max, absent_as_zero false": {**BASE, "conf_type": "max", "absent_as_zero": False},
    "avg, iou_thr 0.7, absent_as_zero false": {**BASE, "iou_thr": 0.7, "conf_type": "avg", "absent_as_zero": False},
}


def workdir_config(workdir: Path, extra: list[Path]) -> dict:
    """The validated config (schema defaults and the recipe filled in) the workdir ran with."""
    config = yaml.safe_load((ROOT / "config.yaml").read_text())
    for path in [workdir / "variant.yaml", *extra]:
        if path.exists():
            config = merge(config, yaml.safe_load(path.read_text()) or {})
    validate(config, str(ROOT / "workflow" / "schemas" / "config.schema.yaml"))
    return resolve_recipe(config)


def labelled_images(config: dict, workdir: Path, subset: str, limit: int | None):
    """(names, images, ground-truth label stacks) of the test set (with `data.test_gt`) or the
    validation images of the workdir's split."""
    classes = config["classes"]
    data = dict(config["data"])
    if data.pop("source") == "demo":
        data = {"path": str(workdir / "results" / "demo"), "test_gt": str(workdir / "results" / "demo" / "test_gt")}
    source = {"format": "reference", "classes": classes, **data}
    if subset == "test":
        tests = index_dataset(source).test_images[:limit]
        labels = [load_ground_truth(source["test_gt"], t.name, classes, (t.height, t.width)) for t in tests]
        return [t.name for t in tests], [read_image(t.path) for t in tests], labels
    split = pd.read_csv(workdir / "results" / "split" / "split.tsv", sep="\t")
    ids = list(split.loc[split["subset"] == "val", "image_id"])[:limit]
    samples = [load_sample(source, image_id) for image_id in ids]
    return ids, [s.image for s in samples], [s.labels for s in samples]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--config", type=Path, nargs="*", default=[])
    parser.add_argument("--images", choices=["test", "val"], default="test")
    parser.add_argument("--folds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--tta", nargs="+", default=["hflip"])
    parser.add_argument("--limit", type=int, default=None, help="first N images only")
    args = parser.parse_args()

    config = workdir_config(args.workdir, args.config)
    classes = config["classes"]
    cfg = resolve_train_config(config["train"])
    names, images, labels = labelled_images(config, args.workdir, args.images, args.limit)
    predict = config["predict"]
    torch.set_num_threads(1)
    print(f"{args.workdir}: {len(names)} {args.images} images, folds {args.folds}, TTA {args.tta}")
    scores = {name: [] for name in SETTINGS}
    for fold in args.folds:
        weights = args.workdir / "results" / "train" / f"fold{fold}" / "model_best.pt"
        model = load_model_for_inference(weights, cfg, len(classes), torch.device("cpu"), config["tiles"]["size"])
        start = time.perf_counter()
        views = [
            predict_views(model, image, predict["tile_size"], predict["overlap"], args.tta, torch.device("cpu"))
            for image in images
        ]
        print(f"(fold {fold}: {time.perf_counter() - start:.0f} s to predict)", flush=True)
        for name, fusion in SETTINGS.items():
            preds = [v[0] if fusion is None else fuse_instance_sets(v, **fusion) for v in views]
            metrics, _ = evaluate_predictions(labels, preds, classes, max_dets=100)
            scores[name].append((metrics["AP"], metrics["AP50@100"]))
    print("\n| fusion of the views | AP, mean of folds | AP50@100, mean of folds | AP50@100 per fold |")
    print("| --- | --- | --- | --- |")
    for name, rows in scores.items():
        ap, ap50 = np.mean(rows, axis=0)
        per_fold = " / ".join(f"{r[1]:.3f}" for r in rows)
        print(f"| {name} | {ap:.3f} | {ap50:.3f} | {per_fold} |")


if __name__ == "__main__":
    main()
