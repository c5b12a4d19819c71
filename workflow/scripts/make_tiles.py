"""Overlapping training tiles of each training image of one shard, with their index table."""

import contextlib
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).resolve().parents[1] / "src"))

import numpy as np

from cellseg.data.dataset import load_sample
from cellseg.data.stain import load_normaliser
from cellseg.data.target_maps import open_maps_shard
from cellseg.data.tiles import make_tiles, save_tiles_shard
from cellseg.workflow.joblog import job_logging

with job_logging(snakemake.log[0]) as log, contextlib.ExitStack() as stack:
    p = snakemake.params
    normalise = load_normaliser(snakemake.input.stain)
    maps_of = stack.enter_context(open_maps_shard(snakemake.input.maps)) if p.with_maps else None

    def tiles():
        for image_id in p.image_ids:
            sample = load_sample(p.source, image_id)
            image = normalise(sample.image, sample.image_id)
            if maps_of:
                maps = maps_of(image_id)
            else:  # no aux heads: nothing reads the maps, so the tiles carry empty ones
                maps = {"center": np.zeros(image.shape[:2], np.float16), "boundary": np.zeros(image.shape[:2], np.uint8)}
            yield make_tiles(
                image, sample.labels, maps["center"], maps["boundary"],
                p.size, p.overlap, p.skip_empty, p.min_instance_area,
                image_id=sample.image_id, class_names=p.source["classes"], valid=sample.valid,
            )  # fmt: skip

    n = save_tiles_shard(snakemake.output.tiles, snakemake.output.index, tiles())
    log.info("%d tiles from %d images (shard %s)", n, len(p.image_ids), snakemake.wildcards.shard)
