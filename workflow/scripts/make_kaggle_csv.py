"""Write the submission's instances as a Kaggle-style CSV (`submission.kaggle_csv` pixel order)."""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).resolve().parents[1] / "src"))

from cellseg.dataset import index_test_set
from cellseg.joblog import job_logging
from cellseg.kaggle_csv import write_kaggle_csv

with job_logging(snakemake.log[0]) as log:
    p = snakemake.params
    names_by_id = {t.id: t.name for t in index_test_set(p.source)}
    results = json.loads(Path(snakemake.input.json).read_text())
    rows = write_kaggle_csv(results, names_by_id, snakemake.output[0], p.pixel_order)
    log.info("%d rows (%s) for %d test images", rows, p.pixel_order, len(names_by_id))
