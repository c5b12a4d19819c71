"""Train one fold's Mask R-CNN on the other folds' tiles, validating on the fold's own images."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).resolve().parents[1] / "src"))

import dataclasses

import torch

from cellseg.common.device import amp_forced_on_cpu, pin_gpus
from cellseg.data.dataset import load_sample
from cellseg.data.split import read_split
from cellseg.data.stain import load_normaliser
from cellseg.training.data import fold_image_ids, training_tiles
from cellseg.training.train import TrainOutputs, train_fold
from cellseg.workflow.joblog import job_logging

with job_logging(snakemake.log[0]) as log:
    pin_gpus(snakemake.resources.get("gpu", 0))  # before torch initialises CUDA
    p = snakemake.params
    torch.set_num_threads(snakemake.threads)
    train_ids, held_out_ids = fold_image_ids(read_split(snakemake.input.split), int(snakemake.wildcards.fold))
    tiles = training_tiles([f for f in snakemake.input.tiles if f.endswith(".tsv")], train_ids)
    normalise = load_normaliser(snakemake.input.stain)
    held_out = [load_sample(p.source, image_id) for image_id in held_out_ids]
    held_out = [dataclasses.replace(s, image=normalise(s.image, s.image_id)) for s in held_out]
    outputs = TrainOutputs.in_folder(Path(snakemake.output.best).parent)
    log.info(
        "fold %s: %d training tiles, %d held-out images, %d torch threads",
        snakemake.wildcards.fold, len(tiles), len(held_out), torch.get_num_threads(),
    )
    train_fold(
        tiles,
        held_out,
        p.train,
        p.classes,
        outputs,
        tile_size=p.tile_size,
        val_overlap=p.val_overlap,
        num_workers=snakemake.threads - 1,
        amp_on_cpu=amp_forced_on_cpu(),
        mpp=p.mpp,
        init_weights=snakemake.input.init_from[0] if snakemake.input.init_from else None,
        architecture_keys=p.architecture,
    )
    # A finished run leaves no resume state: a later re-run (e.g. after a code change) starts over.
    outputs.checkpoint.unlink(missing_ok=True)
