"""The ablation runner (benchmarks/ablation.py) end to end at toy size, across datasets: the
tiny demo trained once, tested on another demo-like dataset of one class, two variants (the
second takes the trained folds from the output cache), class-agnostic table."""

from __future__ import annotations

import subprocess
import sys

import pandas as pd
import pytest
import yaml
from workflow_helpers import REPO, TINY_CONFIG, write_config


@pytest.mark.slow
def test_cross_dataset_runner_reports_class_agnostic_scores_per_fold(tmp_path):
    from cellseg.data.demo import write_demo_dataset

    other = tmp_path / "other"
    write_demo_dataset(other, seed=1, n_train=2, n_test=2, min_size=40, max_size=80, n_classes=1)
    cross = write_config(tmp_path / "cross.yaml", {
        "demo": {"n_train": 6, "n_test": 1},
        "data": {"test_path": str(other), "test_gt": str(other / "test_gt"), "test_classes": ["class1"]},
        "train": {"aux_heads": False, "min_steps": 2},
        "predict": {"tta": []},
    })  # fmt: skip
    variants = write_config(tmp_path / "variants.yaml", {"baseline": {}, "calibrated": {"ensemble": {"calibrate": "quantile"}}})
    out = tmp_path / "ablation"
    command = [
        sys.executable, str(REPO / "benchmarks" / "ablation.py"), "--config", str(REPO / TINY_CONFIG), str(cross),
        "--variants", str(variants), "--class-agnostic", "--out", str(out), "--cores", "2",
    ]  # fmt: skip
    proc = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]

    table = pd.read_csv(out / "results.tsv", sep="\t")
    assert list(table["variant"]) == ["baseline", "calibrated"]
    for column in ("test ensemble AP50@100", "test tuned AP50@100", "test tuned AP", "fold spread AP50@100"):
        assert table[column].between(0, 1).all(), column
    assert table["test folds AP50@100"].str.count(" / ").eq(1).all()  # two folds
    # Same trained folds (from the cache): the same fold scores; only the ensemble may differ.
    assert table.loc[0, "test folds AP"] == table.loc[1, "test folds AP"]
    log = (out / "calibrated" / "snakemake.log").read_text()
    assert "calibrate_folds" in log and "from cache" in log
    assert yaml.safe_load((out / "calibrated" / "variant.yaml").read_text())["ensemble"]["calibrate"] == "quantile"
    assert "fold spread AP50@100" in (out / "table.md").read_text()
