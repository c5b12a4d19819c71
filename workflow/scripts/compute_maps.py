"""Center heatmap and boundary map of one training image."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).resolve().parents[1] / "src"))

from cellseg.dataset import load_sample
from cellseg.io import save_npz_atomic
from cellseg.joblog import job_logging
from cellseg.maps import compute_maps

with job_logging(snakemake.log[0]):
    p = snakemake.params
    sample = load_sample(p.source, snakemake.wildcards.image)
    maps = compute_maps(sample.labels, p.center_sigma, p.boundary_width)
    save_npz_atomic(snakemake.output[0], **maps)
