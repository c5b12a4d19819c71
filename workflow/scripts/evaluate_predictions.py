"""Score each fold, the ensemble and the ensemble at each operating point on the validation
set, per class and class-agnostically."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).resolve().parents[1] / "src"))

from cellseg.common.files import atomic_path
from cellseg.data.dataset import load_sample
from cellseg.data.split import read_split, validation_ids
from cellseg.inference.operating_points import read_thresholds
from cellseg.scoring.scoreboard import KINDS, load_predictions, scoreboard
from cellseg.workflow.allocator import release_freed_memory
from cellseg.workflow.joblog import job_logging

with job_logging(snakemake.log[0]) as log:
    release_freed_memory()
    p = snakemake.params
    ids = validation_ids(read_split(snakemake.input.split))
    labels = (load_sample(p.source, image_id).labels for image_id in ids)  # read once, one at a time
    folds, ensemble = load_predictions(dict(zip(p.folds, snakemake.input.folds)), snakemake.input.ensemble, ids)
    points = read_thresholds(snakemake.input.thresholds)
    board = scoreboard(labels, folds, ensemble, points, p.classes, p.max_dets, p.evaluator, kinds=KINDS)
    scores, agnostic, curve = board.tables["per_class"], board.tables["agnostic"], board.curves["per_class"]
    per_image = board.per_image
    per_image.insert(0, "image_id", ids)
    log.info("validation scores:\n%s", scores.to_string())
    for table, path in [(scores, snakemake.output.scores), (agnostic, snakemake.output.agnostic),
                        (per_image, snakemake.output.per_image), (curve, snakemake.output.pr_curve)]:
        with atomic_path(path) as tmp:
            table.to_csv(tmp, sep="\t", index=False)
