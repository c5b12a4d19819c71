"""Figures for the report: per-class AP and PR curve at the leaderboard point, score table, best
and worst validation images at the cells point."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).resolve().parents[1] / "src"))

import json

import pandas as pd

from cellseg.common.instances import load_instance_sets
from cellseg.data.dataset import load_sample
from cellseg.inference.operating_points import apply_point, read_thresholds
from cellseg.outputs.report import (
    best_and_worst,
    plot_class_ap,
    plot_overlay,
    plot_pr_curve,
    plot_scores_table,
    training_warnings,
)
from cellseg.workflow.joblog import job_logging

with job_logging(snakemake.log[0]) as log:
    p = snakemake.params
    scores = pd.read_csv(snakemake.input.scores, sep="\t")
    tuned_row = scores[(scores["model"] == "ensemble") & (scores["thresholds"] == "leaderboard")]
    plot_class_ap(tuned_row.iloc[0].to_dict(), p.classes, snakemake.output.per_class)
    plot_pr_curve(pd.read_csv(snakemake.input.pr_curve, sep="\t"), snakemake.output.pr_curve)
    summaries = {fold: json.loads(Path(path).read_text()) for fold, path in zip(p.folds, snakemake.input.summaries)}
    warnings = training_warnings(summaries)
    for warning in warnings:
        log.warning("%s", warning)
    plot_scores_table(scores, p.classes, snakemake.output.table, notes=warnings)
    per_image = pd.read_csv(snakemake.input.per_image, sep="\t", dtype={"image_id": str})
    best, worst = best_and_worst(per_image.set_index("image_id")["sartorius"], 1)
    cells = read_thresholds(snakemake.input.thresholds)["cells"]  # what a person sees: one cell per pixel
    for image_id, path, title in [(best[0], snakemake.output.best, "best"),
                                  ((worst or best)[0], snakemake.output.worst, "worst")]:
        sample = load_sample(p.source, image_id)
        instances = load_instance_sets(snakemake.input.ensemble, [image_id])[image_id]
        plot_overlay(sample.image, sample.labels, apply_point(instances, cells),
                     p.classes, path, title=f"{title}: {image_id}")
