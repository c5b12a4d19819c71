"""Download the configured pretrained weights once, for compute nodes without internet."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).resolve().parents[1] / "src"))

from cellseg.model.weights import download_weights
from cellseg.workflow.joblog import job_logging

with job_logging(snakemake.log[0]) as log:
    source = download_weights(snakemake.params.train, snakemake.output[0])
    log.info("saved %s to %s", source, snakemake.output[0])
