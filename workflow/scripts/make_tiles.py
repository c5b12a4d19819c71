"""Overlapping training tiles of one image, with their index table."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).resolve().parents[1] / "src"))

import numpy as np

from cellseg.dataset import load_sample
from cellseg.joblog import job_logging
from cellseg.stain import load_normaliser
from cellseg.tiles import make_tiles, save_tiles

with job_logging(snakemake.log[0]) as log:
    p = snakemake.params
    sample = load_sample(p.source, snakemake.wildcards.image)
    image = load_normaliser(snakemake.input.stain)(sample.image, sample.image_id)
    if p.with_maps:
        with np.load(snakemake.input.maps) as maps:
            center, boundary = maps["center"], maps["boundary"]
    else:  # no aux heads: nothing reads the maps, so the tiles carry empty ones
        center = np.zeros(image.shape[:2], np.float16)
        boundary = np.zeros(image.shape[:2], np.uint8)
    tiles, index = make_tiles(
        image,
        sample.labels,
        center,
        boundary,
        p.size,
        p.overlap,
        p.skip_empty,
        p.min_instance_area,
        image_id=sample.image_id,
        class_names=p.source["classes"],
    )
    save_tiles(snakemake.output.tiles, snakemake.output.index, tiles, index)
    log.info("%d tiles from %s", len(tiles), sample.image_id)
