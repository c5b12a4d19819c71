"""GPU acceptance check: the numbers a session with a GPU measures once, printed as one table.

Every setting comes from `recipe: gpu` (`cellseg.workflow.configuration`, then its train preset), as the
workflow resolves it, so that the first GPU it meets measures what users run.

1. Training images/s of the recipe's model (R50-FPN), tiles, batch and multiscale sizes, in
   bf16 and in fp16 (GradScaler); inference images/s on its prediction tiles and batch
   (`CellMaskRCNN.detect` under autocast, in its precision); peak CUDA memory of each
   (`torch.cuda.max_memory_allocated`, reserved too).
2. Resume identity: a short `train_fold` run in bf16 with channels_last, preempted by SIGTERM
   (a checkpoint at the next step, `Preempted`), resumed, against an uninterrupted run; the
   largest weight difference must stay within `RESUME_TOLERANCE` (cuDNN is not bit-exact).
3. Optional (`--monuseg PATH`): the pipeline with `recipe: gpu` trains fold 0 of MoNuSeg for
   `MONUSEG_STEPS` steps; its held-out AP50 must reach `MONUSEG_AP50`.

`--cpu-smoke` runs the same code paths at toy size on the CPU (AMP forced on): the recipe with
smaller tiles, batches, backbone and sampling set over it (`SMOKE`), resolved the same way, so
that the script's own bugs show before a GPU is lent; `tests/test_gpu_acceptance.py` runs it.
Run through `benchmarks/gpu_check.sh` (docs/benchmarks.md, On GPUs).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_throughput import peak_memory_mib, synthetic_tile, timed_rate  # noqa: E402

from cellseg.common.device import autocast  # noqa: E402
from cellseg.data.target_maps import compute_maps  # noqa: E402
from cellseg.data.tiles import make_tiles, save_tiles  # noqa: E402
from cellseg.model.mask_rcnn import build_model  # noqa: E402
from cellseg.training.data import training_tiles  # noqa: E402
from cellseg.training.train import Preempted, TrainOutputs, _Training, train_fold  # noqa: E402
from cellseg.workflow.configuration import (
    check_training_scale,  # noqa: E402
    resolve_recipe,  # noqa: E402
    resolve_train_config,  # noqa: E402
)

RESUME_TOLERANCE = 1e-2  # max |weight difference| after kill + resume on a GPU (cuDNN atomics)
MONUSEG_STEPS = 600
MONUSEG_AP50 = 0.4  # not calibrated yet: the demo preset (resnet18) reached 0.46 in 192 CPU steps
TARGETS = {"train bf16": 60.0, "train fp16": 60.0, "infer bf16": 100.0}  # images/s on an H100
# What --cpu-smoke sets over the recipe: toy tiles and batches, multiscale sizes around its
# tiles as the recipe's are around 512 px, and the demo preset's widths and sampling (the CPU's
# fp16 backward is so slow that the gpu preset's would outlast the test's time limit).
SMOKE = {
    "tiles": {"size": 64, "overlap": 16},
    "predict": {"tile_size": 64, "overlap": 16, "batch_size": 2},
    "train": {
        "backbone": "resnet18", "fpn_channels": 128, "mask_roi_size": 7, "rpn_batch_size_per_image": 128,
        "rpn_post_nms_top_n_train": 300, "box_batch_size_per_image": 32, "batch_size": 2,
        "multiscale_sizes": [56, 64, 72],
    },
}  # fmt: skip


def recipe_settings(smoke: bool) -> tuple[dict, dict]:
    """The config of `recipe: gpu` (with `SMOKE` over it for the CPU) and its train config,
    resolved as the workflow resolves them. Random init: GPU hosts here are offline."""
    user = {"recipe": "gpu", "train": {"weights": "none"}}
    if smoke:
        user = {**user, **SMOKE, "train": {**user["train"], **SMOKE["train"]}}
    config = resolve_recipe(user)
    cfg = resolve_train_config(config["train"], predict_tile_size=config["predict"]["tile_size"])
    check_training_scale(cfg, config["tiles"]["size"])
    return config, cfg


def throughput(device, config: dict, cfg: dict, steps: int) -> list[dict]:
    """Rows of training (bf16, fp16) and inference (the recipe's precision) images/s and peak memory."""
    rng = np.random.default_rng(0)
    size, batch = config["tiles"]["size"], cfg["batch_size"]
    tiles = [synthetic_tile(rng, size) for _ in range(batch)]
    images = [image.to(device) for image, _ in tiles]
    targets = [{k: v.to(device) for k, v in target.items()} for _, target in tiles]
    predict = config["predict"]
    predict_tiles = [synthetic_tile(rng, predict["tile_size"])[0].to(device) for _ in range(predict["batch_size"])]
    infer_amp = predict.get("amp") or cfg["amp"]  # null = train.amp, as the workflow
    rows = []
    for amp in ("bf16", "fp16"):
        torch.manual_seed(0)
        model = build_model(cfg, 4, tile_size=size).to(device).to(memory_format=torch.channels_last).train()
        optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
        scaler = torch.amp.GradScaler(device.type, enabled=amp == "fp16")

        def step():
            with autocast(device, amp):
                loss = sum(model(images, targets).values())
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()

        step()  # warmup (cuDNN autotuning, allocator)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        rate = timed_rate(step, steps, batch, device)
        rows.append({"check": f"train {amp}", "images_per_s": rate, "peak_mem_mib": peak_memory_mib(device)})
    model.eval()
    model.roi_heads.detections_per_img = 30  # about a trained model's detections per tile (train_throughput)

    def infer():
        with autocast(device, infer_amp):
            model.detect(predict_tiles)

    infer()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    rate = timed_rate(infer, steps, len(predict_tiles), device)
    rows.append({"check": f"infer {infer_amp}", "images_per_s": rate, "peak_mem_mib": peak_memory_mib(device)})
    if device.type == "cuda":
        rows.append({"check": "cuda memory", "note": f"reserved {torch.cuda.max_memory_reserved(device) / 2**20:.0f} MiB"})
    return rows


def _write_tiles(folder: Path, n_images: int, size: int) -> list[Path]:
    """Tiles of `n_images` synthetic images of `size` px (4 classes of ellipses), as the pipeline writes."""
    rng = np.random.default_rng(1)
    tsvs = []
    for i in range(n_images):
        image, target = synthetic_tile(rng, size)
        labels = np.zeros((4, size, size), np.int32)
        for k, (mask, label) in enumerate(zip(target["masks"].numpy(), target["labels"].tolist()), 1):
            labels[label - 1][mask.astype(bool) & (labels[label - 1] == 0)] = k
        maps = compute_maps(labels, sigma=2.0, width=1)
        rgb = (image.permute(1, 2, 0).numpy() * 255).astype(np.uint8)
        tiles, index = make_tiles(rgb, labels, maps["center"], maps["boundary"], size, 0, False, 4,
                                  image_id=f"img{i}", class_names=[f"class{c}" for c in range(1, 5)])
        save_tiles(folder / f"img{i}.npz", folder / f"img{i}.tsv", tiles, index)
        tsvs.append(folder / f"img{i}.tsv")
    return tsvs


def resume_identity(device, config: dict, on_cpu: bool, steps: int) -> dict:
    """Max |weight difference| between an uninterrupted run and one preempted (SIGTERM) and resumed."""
    size = config["tiles"]["size"]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        ids = [f"img{i}" for i in range(4)]
        tiles = training_tiles(_write_tiles(tmp, 4, size), ids)
        cfg = resolve_train_config({
            **config["train"], "amp": "bf16", "channels_last": True,
            "batch_size": 2, "epochs": steps // 2, "min_steps": 0, "warmup_steps": 1, "checkpoint_every_steps": 1000,
            "multiscale_sizes": [], "min_size": size, "val_every_epochs": 1000,
        })  # fmt: skip
        classes = [f"class{c}" for c in range(1, 5)]

        def run(out: Path):
            return train_fold(tiles, [], cfg, classes, TrainOutputs.in_folder(out), tile_size=size,
                              device=str(device), amp_on_cpu=on_cpu)

        run(tmp / "whole")
        original = _Training._optimizer_step

        def signal_at_half(self):
            original(self)
            if self.state["step"] == steps // 2:
                os.kill(os.getpid(), signal.SIGTERM)

        _Training._optimizer_step = signal_at_half
        try:
            run(tmp / "cut")
            preempted = False
        except Preempted:
            preempted = True
        finally:
            _Training._optimizer_step = original
        summary = run(tmp / "cut")
        a = torch.load(tmp / "whole" / "model_last.pt", weights_only=True)
        b = torch.load(tmp / "cut" / "model_last.pt", weights_only=True)
        diff = max(float((a[k].float() - b[k].float()).abs().max()) for k in a if a[k].is_floating_point())
    ok = preempted and summary["resumed_from_step"] == steps // 2 and diff <= RESUME_TOLERANCE
    return {"check": "resume after SIGTERM (bf16, channels_last)", "max_weight_diff": diff, "ok": ok,
            "note": f"resumed from step {summary['resumed_from_step']} of {steps}, tolerance {RESUME_TOLERANCE}"}


def monuseg(path: Path, cores: int, dry_run: bool) -> dict:
    """Fold 0 of MoNuSeg with `recipe: gpu` for MONUSEG_STEPS steps through the pipeline."""
    work = Path(tempfile.mkdtemp(prefix="gpu_check_"))
    overrides = {
        "recipe": "gpu", "data": {"source": "reference", "path": str(path.resolve())}, "classes": ["class1"],
        "split": {"folds": 2},
        "train": {"epochs": 1, "min_steps": MONUSEG_STEPS, "warmup_steps": 100,
                  "val_every_epochs": 1, "early_stopping_patience": 0, "weights": "none"},  # the GPU host is offline
    }  # fmt: skip
    (work / "monuseg.json").write_text(json.dumps(overrides))
    root = Path(__file__).resolve().parents[1]
    target = "results/train/fold0/train_summary.json"
    command = [sys.executable, "-m", "snakemake", target, "-s", str(root / "Snakefile"), "-d", str(work),
               "--cores", str(cores), "--configfile", str(root / "config.yaml"), str(work / "monuseg.json")]
    done = subprocess.run(command + (["-n"] if dry_run else []), capture_output=True, text=True)
    if done.returncode != 0:
        return {"check": "MoNuSeg gpu recipe", "ok": False, "note": " ".join((done.stdout + done.stderr).split()[-40:])}
    if dry_run:
        return {"check": "MoNuSeg gpu recipe (dry run)", "ok": True, "note": "DAG builds"}
    summary = json.loads((work / target).read_text())
    ap50 = max(r for r in _history_ap50(work / "results/train/fold0/history.csv"))
    return {"check": f"MoNuSeg gpu recipe, {summary['steps']} steps", "val_AP50": ap50, "ok": ap50 >= MONUSEG_AP50,
            "note": f"needs >= {MONUSEG_AP50}; {summary['wall_time_s']:.0f} s"}


def _history_ap50(path: Path) -> list[float]:
    import pandas as pd

    return [v for v in pd.read_csv(path)["val_AP50"] if not math.isnan(v)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu-smoke", action="store_true", help="toy sizes on the CPU, AMP forced on")
    parser.add_argument("--monuseg", type=Path, default=None, help="MoNuSeg in the reference layout")
    parser.add_argument("--cores", type=int, default=os.cpu_count())
    args = parser.parse_args()
    smoke = args.cpu_smoke
    if not smoke and not torch.cuda.is_available():
        print("no CUDA device: run with --cpu-smoke, or on a machine with a GPU", file=sys.stderr)
        return 2
    device = torch.device("cpu" if smoke else "cuda")
    if smoke:
        torch.set_num_threads(1)
    else:
        torch.backends.cudnn.benchmark = True
    config, cfg = recipe_settings(smoke)
    rows = throughput(device, config, cfg, 1 if smoke else 20)
    for row in rows:
        if row["check"] in TARGETS and not smoke:
            row["ok"] = row["images_per_s"] >= TARGETS[row["check"]]
            row["note"] = f"target >= {TARGETS[row['check']]:.0f} img/s"
    rows.append(resume_identity(device, config, smoke, 4 if smoke else 40))
    if args.monuseg:
        rows.append(monuseg(args.monuseg, args.cores, dry_run=smoke))
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU (smoke)"
    print(f"\n| check ({name}, torch {torch.__version__}) | images/s | peak MiB | result | note |")
    print("| --- | --- | --- | --- | --- |")
    for row in rows:
        rate = f"{row['images_per_s']:.1f}" if "images_per_s" in row else ""
        mem = f"{row['peak_mem_mib']:.0f}" if "peak_mem_mib" in row else ""
        result = "" if "ok" not in row else ("ok" if row["ok"] else "FAIL")
        extra = [f"max diff {row['max_weight_diff']:.2g}"] if "max_weight_diff" in row else []
        extra += [f"AP50 {row['val_AP50']:.3f}"] if "val_AP50" in row else []
        print(f"| {row['check']} | {rate} | {mem} | {result} | {'; '.join(extra + [str(row.get('note', ''))])} |")
    return 0 if all(row.get("ok", True) for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
