"""A CPU proxy of the gpu recipe: what a GPU run executes, at toy size, before a GPU is lent.

`recipe: gpu` runs through the workflow with its real code paths: R50-FPN with ImageNet
backbone weights read from a local file, the recipe's tile size and multiscale sizes scaled
down together (same 0.875-1.125 jitter around the tile), bf16 autocast and channels_last
forced on the CPU (`CELLSEG_AMP_ON_CPU=1`), copy-paste, and data-loader workers from the job's
CPUs. Only sizes and step counts are shrunk; one fold trains and predicts its validation images.
"""

import json

import pytest
import torch
import torchvision
from workflow_helpers import snakemake, write_config

from cellseg.workflow.configuration import recipe_values

TILE = 128  # the recipe's 512 px tiles and 448-576 sizes, scaled by 1/4 together


@pytest.mark.slow
def test_gpu_recipe_trains_and_predicts_at_one_magnification_on_the_cpu(tmp_path):
    weights = tmp_path / "resnet50_imagenet.pth"
    torch.save(torchvision.models.resnet50(weights=None).state_dict(), weights)
    scale = TILE / recipe_values()["tiles.size"]["gpu"]
    toy = {
        "recipe": "gpu",
        "split": {"train_folds": [0]},
        "tiles": {"size": TILE, "overlap": 32},
        "predict": {"tile_size": TILE, "overlap": 32, "tta": [], "batch_size": 2},
        "train": {
            "preset": None,  # the recipe's: gpu
            "weights_path": str(weights),
            "multiscale_sizes": [round(size * scale) for size in (448, 512, 576)],
            "epochs": 1, "min_steps": 2, "batch_size": 2, "val_every_epochs": 1,
            "rpn_post_nms_top_n_train": 200, "box_batch_size_per_image": 64, "box_detections_per_img": 100,
            "aux_heads": False, "min_size": None, "lr_batch": None,
        },
        "resources": {"train": {"cpus_per_task": None}},  # the recipe's, not the tiny preset's 1
    }  # fmt: skip
    workdir = tmp_path / "work"
    snakemake(
        workdir, "results/predict/fold0/val", configs=[write_config(tmp_path / "gpu.yaml", toy)],
        env={"CELLSEG_AMP_ON_CPU": "1"}, timeout=600,
    )  # fmt: skip
    summary = json.loads((workdir / "results/train/fold0/train_summary.json").read_text())
    assert summary["amp"] == "bf16"
    assert str(weights) in summary["weights"] and "ImageNet" in summary["weights"]
    assert summary["data_loader_workers"] == 1  # the recipe's 8 CPUs, scaled down to --cores 2
    assert summary["lr_rule"] == "0.02 x 2/16"
    # The model's own transform: training jitters around the tile's scale, prediction is at it.
    assert summary["resize"] == {"train": [0.875, 1.0, 1.125], "predict": 1.0}
    assert "model resnet50" in (workdir / "logs/train/fold0.log").read_text()
    predictions = list((workdir / "results/predict/fold0/val").glob("*.npz"))
    assert predictions
