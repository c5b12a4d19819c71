"""Fit each fold's score calibration on its validation predictions (ensemble.calibrate)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).resolve().parents[1] / "src"))

import numpy as np

from cellseg.common.files import atomic_path
from cellseg.common.instances import iter_instance_sets
from cellseg.inference.calibrate import fit_calibration, write_calibration
from cellseg.workflow.joblog import job_logging

with job_logging(snakemake.log[0]) as log:
    p = snakemake.params
    scores = {}
    for fold, folder in zip(p.folds, snakemake.input):
        found = [instances.scores for _, instances in iter_instance_sets(folder)]  # one image's masks at a time
        scores[fold] = np.concatenate(found) if found else np.zeros(0)
        log.info("fold %d: %d validation detections, median score %.3f", fold, len(scores[fold]),
                 float(np.median(scores[fold])) if len(scores[fold]) else float("nan"))  # fmt: skip
    with atomic_path(snakemake.output[0]) as tmp:
        write_calibration(tmp, p.method, fit_calibration(scores, p.method))
