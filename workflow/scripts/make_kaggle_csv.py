"""Write the test predictions at the cells point as a Kaggle-style CSV (`submission.kaggle_csv`
pixel order): one cell per pixel, as those metrics require."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).resolve().parents[1] / "src"))

from cellseg.common.instances import load_instance_sets
from cellseg.data.dataset import index_test_set
from cellseg.inference.operating_points import at_point, read_point
from cellseg.outputs.kaggle_csv import write_kaggle_csv
from cellseg.outputs.submission import build_submission, id_map_entries
from cellseg.workflow.joblog import job_logging

with job_logging(snakemake.log[0]) as log:
    p = snakemake.params
    tests = index_test_set(p.source)
    sets = load_instance_sets(snakemake.input.ensemble, [t.name for t in tests])
    cells = at_point(sets.values(), read_point(snakemake.input.thresholds))
    id_map = id_map_entries(tests)
    results = build_submission({t.file_name: found for t, found in zip(tests, cells)}, id_map, p.classes)
    rows = write_kaggle_csv(results, {t.id: t.name for t in tests}, snakemake.output[0], p.pixel_order)
    log.info("%d rows (%s) for %d test images, at the cells point", rows, p.pixel_order, len(tests))
