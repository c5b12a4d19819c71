"""The full demo against the figures stored in tests/expected/ (`make check-demo`, about 8 min
on 2 cores; skipped without `--run-demo`), and the demo table of docs/accuracy.md against those
figures.

Run the check whenever an accuracy-relevant change lands. When the change moves the figures
on purpose, store the new ones in the same commit (`python tests/demo_figures.py WORKDIR`)
and paste the table it prints into docs/accuracy.md (section "The demo").
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from demo_figures import TABLES, differences, docs_table, read_table, stored_tables
from workflow_helpers import REPO, snakemake


def test_accuracy_page_demo_table_equals_stored_figures():
    page = (REPO / "docs" / "accuracy.md").read_text()
    table = docs_table(stored_tables())
    assert table in page, f"docs/accuracy.md's demo table differs from tests/expected; it should read:\n{table}"


@pytest.mark.demo
def test_full_demo_matches_stored_figures(tmp_path):
    """The demo with config.yaml alone (no test overrides) in a fresh workdir, or in
    CELLSEG_DEMO_WORKDIR (kept; a finished one only re-runs what changed)."""
    workdir = Path(os.environ.get("CELLSEG_DEMO_WORKDIR") or tmp_path / "work")
    cores = int(os.environ.get("CELLSEG_DEMO_CORES") or 2)
    snakemake(workdir, tiny=False, cores=cores, timeout=4 * 3600)
    lines = []
    for name, stored in TABLES.items():
        actual = read_table(workdir / "results" / "evaluate" / f"{name}.tsv")
        lines += [f"{name}: {line}" for line in differences(actual, read_table(stored))]
    assert not lines, "the demo's figures moved from tests/expected:\n" + "\n".join(lines)
