"""cellseg.outputs.cohort_summary: per image the tissue's area, cells per mm² of it, and its jobs'
cost from Snakemake benchmark files."""

import json

import numpy as np
import pandas as pd
import pytest
import tifffile

from cellseg.outputs.cohort_summary import cohort_table, job_costs

BENCHMARK = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n{s}\t0:00:01\t{rss}\t1\t1\t1\t0\t0\t0\t1\n"


def test_job_costs_sum_the_time_and_take_the_largest_memory(tmp_path):
    files = []
    for k, (s, rss) in enumerate([(10.5, 800.0), (20.25, 1200.5), (3.0, "-")]):
        files.append(tmp_path / f"{k}.tsv")
        files[-1].write_text(BENCHMARK.format(s=s, rss=rss))
    assert job_costs(files) == {"jobs": 3, "job_s": 33.8, "peak_rss_mb": 1200.5}
    assert job_costs([]) == {"jobs": 0, "job_s": 0.0, "peak_rss_mb": None}


@pytest.mark.parametrize("mm2", [0.5, None])
def test_cells_per_mm2_of_tissue(tmp_path, mm2):
    folder = tmp_path / "slide"
    folder.mkdir()
    tifffile.imwrite(folder / "labels.tif", np.zeros((2, 1000, 500), np.uint32))
    pd.DataFrame({"class_id": [1, 1, 2]}).to_csv(folder / "cells.csv", index=False)
    (folder / "tissue.json").write_text(json.dumps({"tissue_fraction": 0.25, "tissue_mm2": mm2, "mpp": 0.5 if mm2 else None}))
    (tmp_path / "r0.tsv").write_text(BENCHMARK.format(s=5, rss=100))
    row = cohort_table({"slide": folder}, ["tumour", "immune"], {"slide": [tmp_path / "r0.tsv"]}).iloc[0].to_dict()
    assert row["n_tumour"] == 2 and row["tissue_fraction"] == 0.25 and row["jobs"] == 1 and row["job_s"] == 5.0
    if mm2:
        assert (row["tissue_mm2"], row["per_mm2_tumour"], row["per_mm2_immune"]) == (0.5, 4.0, 2.0)
    else:
        assert pd.isna(row["tissue_mm2"]) and pd.isna(row["per_mm2_tumour"])
