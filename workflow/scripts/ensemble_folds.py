"""Fuse the folds' predictions of each image (weighted boxes fusion + mask averaging), each
fold's scores calibrated first when a calibration is given."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).resolve().parents[1] / "src"))

from cellseg.calibrate import calibrate_set, read_calibration
from cellseg.ensemble import fuse_instance_sets
from cellseg.instances import load_instance_sets, save_instance_sets
from cellseg.joblog import job_logging

with job_logging(snakemake.log[0]) as log:
    p = snakemake.params
    maps = read_calibration(snakemake.input.calibration[0] if snakemake.input.calibration else None)
    folds = [
        {name: calibrate_set(instances, maps.get(fold)) for name, instances in load_instance_sets(folder).items()}
        for fold, folder in zip(p.folds, snakemake.input.folds)
    ]
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
    log.info("fused %d folds on %d images%s", len(folds), len(fused), ", scores calibrated" if maps else "")
