"""thresholds.json: both tuned operating points, with their cross-checks, in one file."""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).resolve().parents[1] / "src"))

from cellseg.common.files import atomic_path
from cellseg.workflow.joblog import job_logging

with job_logging(snakemake.log[0]) as log:
    points = {name: json.loads(Path(path).read_text()) for name, path in snakemake.input.items()}
    for name, point in points.items():
        check = point["cross_check"]
        log.info("%s: %s %.4f in-sample, %.4f held out", name, point["metric"], point["score"], check["held_out"])
    with atomic_path(snakemake.output[0]) as tmp:
        tmp.write_text(json.dumps(points, indent=1) + "\n")
