"""Score each fold, the ensemble and the ensemble at each operating point on the test set's
held-out ground truth: class-agnostically, and per class unless that ground truth names other
classes than the model's (a test set taken from another dataset)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).resolve().parents[1] / "src"))

from cellseg.common.files import atomic_path
from cellseg.data.dataset import index_test_set, load_ground_truth
from cellseg.inference.operating_points import read_thresholds
from cellseg.scoring.scoreboard import load_predictions, scoreboard
from cellseg.workflow.allocator import release_freed_memory
from cellseg.workflow.joblog import job_logging

with job_logging(snakemake.log[0]) as log:
    release_freed_memory()
    p = snakemake.params
    tests = index_test_set(p.source)
    names = [t.name for t in tests]
    test_classes = p.source["classes"]
    labels = (load_ground_truth(p.source["test_gt"], t.name, test_classes, (t.height, t.width)) for t in tests)
    folds, ensemble = load_predictions(dict(zip(p.folds, snakemake.input.folds)), snakemake.input.ensemble, names)
    points = read_thresholds(snakemake.input.thresholds)
    if "scores" not in snakemake.output.keys():
        log.info("class-agnostic scores only: the test set's classes %s are not the model's %s", test_classes, p.classes)
    kinds = {"agnostic": "agnostic", "scores": "per_class"}  # output name: scoreboard kind
    names_out = list(snakemake.output.keys())  # agnostic, and scores (per class) when the classes match
    board = scoreboard(labels, folds, ensemble, points, test_classes, p.max_dets, p.evaluator,
                        kinds=tuple(kinds[name] for name in names_out))  # fmt: skip
    for name in names_out:
        scores = board.tables[kinds[name]]
        log.info("test scores, %s (%d images):\n%s", name, len(names), scores.to_string())
        with atomic_path(getattr(snakemake.output, name)) as tmp:
            scores.to_csv(tmp, sep="\t", index=False)
