"""Fuse the folds' predictions of each image (weighted boxes fusion + mask averaging), each
fold's scores calibrated first when a calibration is given."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).resolve().parents[1] / "src"))

from cellseg.inference.calibrate import read_calibration
from cellseg.inference.ensemble import fuse_fold_folders
from cellseg.workflow.allocator import release_freed_memory
from cellseg.workflow.joblog import job_logging

with job_logging(snakemake.log[0]) as log:
    release_freed_memory()
    p = snakemake.params
    maps = read_calibration(snakemake.input.calibration[0] if snakemake.input.calibration else None)
    fused = fuse_fold_folders(
        dict(zip(p.folds, snakemake.input.folds)),
        snakemake.output[0],
        maps,
        **p.fusion,
    )
    log.info("fused %d folds on %d images%s", len(p.folds), fused, ", scores calibrated" if maps else "")
