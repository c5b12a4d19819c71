"""Write the leaderboard submission: test predictions at the leaderboard point as COCO RLE,
validated, zipped."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).resolve().parents[1] / "src"))

from cellseg.common.instances import load_instance_sets
from cellseg.data.dataset import index_test_set
from cellseg.inference.operating_points import at_point, read_point
from cellseg.outputs.submission import build_submission, id_map_entries, write_submission
from cellseg.workflow.joblog import job_logging

with job_logging(snakemake.log[0]) as log:
    p = snakemake.params
    tests = index_test_set(p.source)
    sets = load_instance_sets(snakemake.input.ensemble, [t.name for t in tests])
    tuned = at_point(sets.values(), read_point(snakemake.input.thresholds))
    preds = {t.file_name: instances for t, instances in zip(tests, tuned)}
    id_map = id_map_entries(tests)
    results = build_submission(preds, id_map, p.classes)
    write_submission(results, snakemake.output.json, snakemake.output.zip, id_map, p.classes)
    log.info("%d instances on %d test images", len(results), len(tests))
