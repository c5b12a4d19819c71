"""summary.csv over a cohort: per image what `segment_export.summary_table` counts, the tissue's
area and the cells per mm² of it, and what its jobs cost (Snakemake's benchmark files), so that
a cohort's slides can be compared and the next cohort's cluster time estimated."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd

from cellseg.outputs.segment_export import summary_table


def job_costs(benchmarks: list[str | os.PathLike]) -> dict:
    """{jobs, job_s (wall seconds summed over the jobs), peak_rss_mb (the largest max_rss)} of
    Snakemake benchmark files (tab-separated, columns `s` and `max_rss` in MB)."""
    runs = [pd.read_csv(path, sep="\t").iloc[-1] for path in benchmarks]
    rss = pd.to_numeric(pd.Series([run["max_rss"] for run in runs], dtype=object), errors="coerce")  # "-" when unmeasured
    return {
        "jobs": len(runs),
        "job_s": round(float(sum(float(run["s"]) for run in runs)), 1),
        "peak_rss_mb": round(float(rss.max()), 1) if rss.notna().any() else None,
    }


def cohort_table(folders: dict[str, str | os.PathLike], class_names: list[str],
                 benchmarks: dict[str, list[str | os.PathLike]]) -> pd.DataFrame:
    """`summary_table` of `folders` {name: results/segment/<name>} with, per image, `tissue_mm2`
    (from its tissue.json; empty without a pixel size), `per_mm2_<class>` (cells per mm² of
    tissue) and `job_costs` of its `benchmarks` {name: benchmark files of its jobs}."""
    table = summary_table(folders, class_names)
    extra = []
    for name, folder in folders.items():
        tissue = json.loads((Path(folder) / "tissue.json").read_text())
        area = tissue["tissue_mm2"]
        row = {"tissue_fraction": tissue["tissue_fraction"], "tissue_mm2": area}
        for class_name in class_names:
            n = table.loc[table["image"] == name, f"n_{class_name}"].iloc[0]
            row[f"per_mm2_{class_name}"] = round(n / area, 1) if area else None
        extra.append({**row, **job_costs(benchmarks.get(name, []))})
    return pd.concat([table, pd.DataFrame(extra)], axis=1)
