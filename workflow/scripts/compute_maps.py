"""Center heatmap and boundary map of each training image of one shard."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).resolve().parents[1] / "src"))

from cellseg.data.dataset import load_sample
from cellseg.data.target_maps import compute_maps, save_maps_shard
from cellseg.workflow.joblog import job_logging

with job_logging(snakemake.log[0]) as log:
    p = snakemake.params

    def maps():
        for image_id in p.image_ids:
            labels = load_sample(p.source, image_id).labels
            yield image_id, compute_maps(labels, p.center_sigma, p.boundary_width)

    n = save_maps_shard(snakemake.output[0], maps())
    log.info("maps of %d images (shard %s)", n, snakemake.wildcards.shard)
