"""Tune one operating point (per-class score and mask thresholds, the NMS threshold) on the
validation set's ensembled predictions, with its cross-check."""

import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).resolve().parents[1] / "src"))

from cellseg.common.files import atomic_path
from cellseg.common.instances import StoredSets
from cellseg.data.dataset import load_sample
from cellseg.data.split import read_split, validation_ids
from cellseg.scoring.truth import spool_ground_truth
from cellseg.scoring.tune import cross_check, tune_thresholds
from cellseg.workflow.allocator import release_freed_memory
from cellseg.workflow.joblog import job_logging

with job_logging(snakemake.log[0]) as log:
    release_freed_memory()
    p = snakemake.params
    point = snakemake.wildcards.point
    ids = validation_ids(read_split(snakemake.input.split))
    preds = StoredSets(snakemake.input.ensemble, ids)  # read from disk on every pass
    options = {"metric": p.settings["metric"], "max_dets": p.max_dets, "evaluator": p.evaluator, "point": point}
    with tempfile.TemporaryDirectory(prefix="cellseg_truth_") as spool_dir:
        # encoded once, one image at a time, then read back from disk on every pass (docs/scale.md)
        truth = spool_ground_truth((load_sample(p.source, image_id).labels for image_id in ids), p.classes, spool_dir)
        best, trials = tune_thresholds(truth, preds, p.classes, p.settings["search"], **options)
        best["cross_check"] = cross_check(truth, preds, p.classes, p.settings["search"], **options)
    log.info("%s point tuned on %d images: %s", point, len(ids), best)
    with atomic_path(snakemake.output.thresholds) as tmp:
        tmp.write_text(json.dumps(best, indent=1) + "\n")
    with atomic_path(snakemake.output.trials) as tmp:
        trials.to_csv(tmp, sep="\t", index=False)
