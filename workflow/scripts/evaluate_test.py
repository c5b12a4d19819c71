"""Score each fold, the ensemble and the tuned ensemble on the test set's held-out ground truth."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).resolve().parents[1] / "src"))

from cellseg.dataset import index_dataset, load_ground_truth
from cellseg.evaluation import load_predictions, read_thresholds, scoreboard
from cellseg.io import atomic_path
from cellseg.joblog import job_logging

with job_logging(snakemake.log[0]) as log:
    p = snakemake.params
    tests = index_dataset(p.source).test_images
    names = [t.name for t in tests]
    labels = [load_ground_truth(p.source["test_gt"], t.name, p.classes, (t.height, t.width)) for t in tests]
    folds, ensemble = load_predictions(dict(zip(p.folds, snakemake.input.folds)), snakemake.input.ensemble, names)
    scores, _ = scoreboard(
        labels, folds, ensemble, read_thresholds(snakemake.input.thresholds), p.classes, p.max_dets, p.evaluator
    )
    log.info("test scores (%d images):\n%s", len(names), scores.to_string())
    with atomic_path(snakemake.output[0]) as tmp:
        scores.to_csv(tmp, sep="\t", index=False)
