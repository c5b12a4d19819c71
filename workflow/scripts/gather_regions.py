"""Join one image's regions into its label image, GeoJSON, cell table, overlay and tissue picture."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).resolve().parents[1] / "src"))

from cellseg.outputs.segment_regions import gather_regions
from cellseg.workflow.joblog import job_logging

with job_logging(snakemake.log[0]) as log:
    p = snakemake.params
    counts = gather_regions(
        snakemake.input.image,
        list(snakemake.input.regions),
        dict(snakemake.output.items()),
        p.classes,
        p.mpp,
        p.region_blocks,
        p.overlay_size,
        block=p.block_size,
        margin=p.margin,
        default_mpp=p.image_mpp,
        tissue=p.tissue,
    )
    log.info("%s: %d cells", snakemake.input.image, sum(counts.values()))
