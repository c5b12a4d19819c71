"""Segment one new image with every fold, the ensemble and the tuned thresholds."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).resolve().parents[1] / "src"))

import torch

from cellseg.evaluation import read_thresholds
from cellseg.joblog import job_logging
from cellseg.memory import release_freed_memory
from cellseg.predict import load_model_for_inference
from cellseg.segment_export import segment_file
from cellseg.stain import load_normaliser
from cellseg.train import select_device

with job_logging(snakemake.log[0]) as log:
    release_freed_memory()
    p = snakemake.params
    torch.set_num_threads(snakemake.threads)
    device = select_device()
    models = [
        load_model_for_inference(path, p.train, len(p.classes), device, tile_size=p.train_tile_size)
        for path in snakemake.input.weights
    ]
    table = segment_file(
        snakemake.input.image,
        dict(snakemake.output.items()),
        models,
        p.classes,
        p.overlay_size,
        predict=p.predict,
        ensemble=p.ensemble,
        thresholds=read_thresholds(snakemake.input.thresholds),
        device=device,
        block=p.block_size,
        margin=p.margin,
        normalise=load_normaliser(snakemake.input.stain),
    )
    log.info("%s: %d cells", snakemake.input.image, len(table))
