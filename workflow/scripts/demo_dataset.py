"""Write the synthetic demo dataset (reference layout) into the rule's output folder."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).resolve().parents[1] / "src"))

from cellseg.data.demo import write_demo_dataset
from cellseg.workflow.joblog import job_logging

with job_logging(snakemake.log[0]) as log:
    p = snakemake.params
    write_demo_dataset(
        snakemake.output[0],
        seed=p.seed,
        n_train=p.n_train,
        n_test=p.n_test,
        min_size=p.min_size,
        max_size=p.max_size,
        n_classes=len(p.classes),
    )
    log.info("demo dataset written to %s", snakemake.output[0])
