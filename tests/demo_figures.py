"""The full demo's stored figures (tests/expected/demo_*scores.tsv): compare a run with them,
render the demo table of docs/accuracy.md from them, and store a run's figures.

    python tests/demo_figures.py WORKDIR   # store WORKDIR's scores, print the docs table

Update the stored figures only on purpose, in the commit of the change that moves them, and
paste the printed table into docs/accuracy.md, section "The demo" (a test checks that they agree).
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pandas as pd

EXPECTED = Path(__file__).resolve().parent / "expected"
# results/evaluate/<table>.tsv of the full demo -> the stored copy.
TABLES = {"scores": EXPECTED / "demo_scores.tsv", "test_scores": EXPECTED / "demo_test_scores.tsv"}
# CPU runs repeat to every printed digit; the tolerance absorbs other BLAS/torch builds.
TOLERANCE = 0.005
# Columns of the docs table: (header, table, column of that table).
DOCS_COLUMNS = [
    ("val AP", "scores", "AP"),
    ("val AP50", "scores", "AP50"),
    ("val AP75", "scores", "AP75"),
    ("val PQ", "scores", "PQ"),
    ("val Sartorius", "scores", "sartorius"),
    ("val F1", "scores", "F1"),
    ("test AP", "test_scores", "AP"),
    ("test AP50", "test_scores", "AP50"),
    ("test PQ", "test_scores", "PQ"),
    ("test F1", "test_scores", "F1"),
    ("test count ratio", "test_scores", "count_ratio"),
]


def read_table(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, sep="\t")


def differences(actual: pd.DataFrame, expected: pd.DataFrame, tolerance: float = TOLERANCE) -> list[str]:
    """One line per row, column or value of `actual` that differs from `expected` (values by
    more than `tolerance`; NaN equals NaN)."""
    keys = ["model", "thresholds"]
    if list(actual[keys].itertuples(index=False)) != list(expected[keys].itertuples(index=False)):
        return [f"rows differ: {actual[keys].values.tolist()} != {expected[keys].values.tolist()}"]
    if list(actual.columns) != list(expected.columns):
        return [f"columns differ: {sorted(set(actual.columns) ^ set(expected.columns))}"]
    lines = []
    for column in actual.columns.drop(keys):
        for i, (a, e) in enumerate(zip(actual[column], expected[column])):
            if pd.isna(a) and pd.isna(e):
                continue
            if pd.isna(a) or pd.isna(e) or abs(a - e) > tolerance:
                model, thresholds = actual.loc[i, keys]
                lines.append(f"{model} ({thresholds}) {column}: {a:.4f}, stored {e:.4f}")
    return lines


def docs_table(tables: dict[str, pd.DataFrame]) -> str:
    """The demo table of docs/accuracy.md (markdown, 3 decimals) from the stored `tables`."""
    header = ["model", "thresholds"] + [name for name, _, _ in DOCS_COLUMNS]
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for i, (model, thresholds) in enumerate(tables["scores"][["model", "thresholds"]].itertuples(index=False)):
        name = "ensemble (WBF)" if model == "ensemble" else model
        values = [f"{tables[table].loc[i, column]:.3f}" for _, table, column in DOCS_COLUMNS]
        lines.append("| " + " | ".join([name, thresholds, *values]) + " |")
    return "\n".join(lines)


def stored_tables() -> dict[str, pd.DataFrame]:
    return {name: read_table(path) for name, path in TABLES.items()}


def store(workdir: Path) -> None:
    """Copy `workdir`'s score tables over the stored figures."""
    EXPECTED.mkdir(exist_ok=True)
    for name, path in TABLES.items():
        shutil.copyfile(workdir / "results" / "evaluate" / f"{name}.tsv", path)


if __name__ == "__main__":
    store(Path(sys.argv[1]))
    print(docs_table(stored_tables()))
