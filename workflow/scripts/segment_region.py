"""Predict one region of a new image with every fold, the ensemble and the `cells` operating point."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).resolve().parents[1] / "src"))

import torch

from cellseg.common.device import pin_gpus, select_device
from cellseg.data.stain import load_normaliser
from cellseg.inference.fold_ensemble import load_fold_ensemble
from cellseg.inference.operating_points import read_point
from cellseg.outputs.segment_regions import segment_region
from cellseg.workflow.allocator import release_freed_memory
from cellseg.workflow.joblog import job_logging

with job_logging(snakemake.log[0]) as log:
    pin_gpus(snakemake.resources.get("gpu", 0))  # before torch initialises CUDA
    release_freed_memory()
    p = snakemake.params
    torch.set_num_threads(snakemake.threads)
    ensemble = load_fold_ensemble(
        dict(zip(p.folds, snakemake.input.weights)), p.train, len(p.classes), p.train_tile_size, p.predict,
        p.ensemble, snakemake.input.calibration[0] if snakemake.input.calibration else None, select_device(),
        mpp=p.mpp,
        backend=p.backend,
    )
    found = segment_region(
        snakemake.input.image,
        snakemake.output[0],
        int(snakemake.wildcards.region),
        ensemble,
        read_point(snakemake.input.thresholds),
        p.region_blocks,
        block=p.block_size,
        margin=p.margin,
        default_mpp=p.image_mpp,
        tissue=p.tissue,
        normalise=load_normaliser(snakemake.input.stain),
    )
    log.info("%s region %s: %d cells found", snakemake.input.image, snakemake.wildcards.region, found)
