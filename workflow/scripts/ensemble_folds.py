"""Fuse the folds' predictions of each image (weighted boxes fusion + mask averaging)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).resolve().parents[1] / "src"))

from cellseg.ensemble import fuse_instance_sets
from cellseg.instances import load_instance_sets, save_instance_sets
from cellseg.joblog import job_logging

with job_logging(snakemake.log[0]) as log:
    p = snakemake.params
    folds = [load_instance_sets(folder) for folder in snakemake.input]
    fused = {
        name: fuse_instance_sets(
            [fold[name] for fold in folds],
            weights=p.weights,
            iou_thr=p.iou_thr,
            skip_box_thr=p.skip_box_thr,
            conf_type=p.conf_type,
            absent_as_zero=p.absent_as_zero,
        )
        for name in folds[0]
    }
    save_instance_sets(snakemake.output[0], fused)
    log.info("fused %d folds on %d images", len(folds), len(fused))
