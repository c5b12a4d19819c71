"""Per-image cell counts, tissue area, densities per class and job costs over the segmented images."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).resolve().parents[1] / "src"))

from cellseg.common.files import atomic_path
from cellseg.outputs.cohort_summary import cohort_table
from cellseg.workflow.joblog import job_logging

with job_logging(snakemake.log[0]) as log:
    p = snakemake.params
    folders = {Path(f).parent.name: Path(f).parent for f in snakemake.input.outputs if f.endswith("labels.tif")}
    table = cohort_table(folders, p.classes, p.benchmarks)
    with atomic_path(snakemake.output[0]) as tmp:
        table.to_csv(tmp, index=False)
    log.info("%d images summarised", len(table))
