"""Fit the dataset's stain target (stain.method) on stain.reference or a typical training image."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).resolve().parents[1] / "src"))

from cellseg.data.dataset import load_sample
from cellseg.data.image_reader import open_image
from cellseg.data.stain import fit_dataset_target, fit_target
from cellseg.workflow.joblog import job_logging

with job_logging(snakemake.log[0]) as log:
    p = snakemake.params
    if p.reference:
        reader = open_image(p.reference)
        try:
            target = fit_target(reader.read(0, reader.size[0], 0, reader.size[1]), p.method, p.reference)
        finally:
            reader.close()
    else:
        target = fit_dataset_target(p.image_ids, lambda image_id: load_sample(p.source, image_id).image, p.method)
    target.write(snakemake.output[0])
    log.info("%s stain target fitted on %s", p.method, target.reference)
