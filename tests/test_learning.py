"""The learning test: a small demo run (tests/configs/tiny.yaml + learning.yaml) must reach a
held-out mask AP50 floor, and the ensemble at the leaderboard point must not fall below the
best single fold in AP.

The other end-to-end tests check files, schemas and job sets; a model that predicts nothing
passes them. CPU training is deterministic on one machine (same code and config, byte-identical
scores), so the floors sit 0.1 below the lowest value measured across machines. When a
change moves the scores on purpose, measure again (the test prints the figures) and update
MEASURED in the same commit.
"""

from __future__ import annotations

import time
from pathlib import Path

import pandas as pd
import pytest
from workflow_helpers import copy_repo, snakemake

LEARNING_CONFIG = Path("tests") / "configs" / "learning.yaml"

# Mask AP50 on images no model trained on, with learning.yaml: each fold and the ensemble at the
# leaderboard point on the validation set (scores.tsv), and the same ensemble on the test set
# (test_scores.tsv). Random init with lr 0 scores ~0. CPU training repeats to every digit on one
# machine, but not across machines: the same code and pinned packages gave the first figure on
# the machines of 2026-11 and the second on a machine of 2026-12-04 (whose CPU takes other
# floating-point paths). The floor sits MARGIN below the lower one.
MEASURED_AP50 = {
    ("scores", "fold 0", "default"): (0.429, 0.469),
    ("scores", "fold 1", "default"): (0.236, 0.299),
    ("scores", "ensemble", "leaderboard"): (0.515, 0.370),
    ("test_scores", "ensemble", "leaderboard"): (0.684, 0.372),
}
MARGIN = 0.1
# The ensemble at the leaderboard point against the best single fold, on both tables, for AP:
# the metric the point is tuned for (measured leads on the machines of 2026-11: +0.016
# validation, +0.037 test; on that of 2026-12-04: +0.018 validation, -0.015 test). AP50 is not
# compared: it ranked the ensemble first on one machine and last on the other. PQ and F1 are
# the cells point's business: the leaderboard point keeps every low-score detection.
ENSEMBLE_TOLERANCE = 0.02
ENSEMBLE_METRICS = ("AP",)
# Each fold's training loss in its last epoch against its first (measured: 0.28 and 0.37).
LOSS_RATIO_MAX = 0.6


@pytest.fixture(scope="module")
def learned_run(tmp_path_factory) -> Path:
    """The learning config's whole pipeline, run once (about 100 s of CPU per core on 2 cores)."""
    base = tmp_path_factory.mktemp("learning_run")
    repo = copy_repo(base / "repo")
    workdir = base / "work"
    start = time.monotonic()
    snakemake(workdir, repo=repo, configs=[repo / LEARNING_CONFIG])
    print(f"learning run: {time.monotonic() - start:.0f} s")
    return workdir


def read_scores(workdir: Path, table: str) -> pd.DataFrame:
    """`results/evaluate/<table>.tsv` indexed by (model, thresholds)."""
    path = workdir / "results" / "evaluate" / f"{table}.tsv"
    return pd.read_csv(path, sep="\t").set_index(["model", "thresholds"])


def ap50_below_floor(workdir: Path) -> list[str]:
    """One line per measured AP50 that fell more than MARGIN below its measured value."""
    failures = []
    for (table, model, thresholds), measured in MEASURED_AP50.items():
        value = read_scores(workdir, table).loc[(model, thresholds), "AP50"]
        floor = min(measured) - MARGIN
        print(f"{table} {model} {thresholds}: AP50 {value:.3f} (measured {measured})")
        if value < floor:
            failures.append(
                f"{table}: {model} ({thresholds}) mask AP50 {value:.3f} < floor {floor:.3f} (measured {measured})"
            )
    return failures


def ensemble_below_best_fold(workdir: Path) -> list[str]:
    """One line per table and metric where the tuned ensemble trails the best fold by more
    than ENSEMBLE_TOLERANCE."""
    failures = []
    for table in ("scores", "test_scores"):
        scores = read_scores(workdir, table)
        folds = scores[scores.index.get_level_values("model").str.startswith("fold ")]
        for metric in ENSEMBLE_METRICS:
            best, tuned = folds[metric].max(), scores.loc[("ensemble", "leaderboard"), metric]
            print(f"{table} {metric}: tuned ensemble {tuned:.3f}, best fold {best:.3f}")
            if tuned < best - ENSEMBLE_TOLERANCE:
                failures.append(f"{table}: tuned ensemble {metric} {tuned:.3f} < best fold {best:.3f} - {ENSEMBLE_TOLERANCE}")
    return failures


def loss_not_falling(workdir: Path) -> list[str]:
    """One line per fold whose last-epoch training loss is above LOSS_RATIO_MAX of its first."""
    failures = []
    for history_csv in sorted((workdir / "results" / "train").glob("fold*/history.csv")):
        loss = pd.read_csv(history_csv)["loss"]
        ratio = loss.iloc[-1] / loss.iloc[0]
        print(f"{history_csv.parent.name}: loss {loss.iloc[0]:.3f} -> {loss.iloc[-1]:.3f} ({ratio:.2f})")
        if not ratio <= LOSS_RATIO_MAX:
            failures.append(
                f"{history_csv.parent.name}: loss {loss.iloc[0]:.3f} -> {loss.iloc[-1]:.3f}, "
                f"ratio {ratio:.2f} > {LOSS_RATIO_MAX}"
            )
    return failures


@pytest.mark.slow
def test_the_model_learns(learned_run):
    """Every check runs, so one failure shows all the figures that moved."""
    failures = loss_not_falling(learned_run) + ap50_below_floor(learned_run)
    failures += ensemble_below_best_fold(learned_run)
    assert not failures, "\n".join(failures)
