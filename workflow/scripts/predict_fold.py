"""Predict one fold's model on the validation or test images (tiled, with TTA)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parents[1] / "src"))

import torch

from cellseg.dataset import index_dataset, load_sample, load_test_image
from cellseg.joblog import job_logging
from cellseg.predict import load_model_for_inference, predict_images
from cellseg.split import read_split, validation_ids
from cellseg.train import select_device

with job_logging(snakemake.log[0]) as log:
    p = snakemake.params
    torch.set_num_threads(snakemake.threads)
    if snakemake.wildcards.subset == "val":
        ids = validation_ids(read_split(snakemake.input.split))
        images = ((i, load_sample(p.source, i).image) for i in ids)
    else:
        tests = index_dataset(p.source).test_images
        images = ((t.name, load_test_image(p.source, t)) for t in tests)
    device = select_device()
    model = load_model_for_inference(
        snakemake.input.weights, p.train, len(p.classes), device, tile_size=p.train_tile_size
    )
    out = Path(snakemake.output[0])
    out.mkdir(parents=True, exist_ok=True)
    found = predict_images(
        model, images, tile_size=p.tile_size, overlap=p.overlap, tta=p.tta,
        device=device, batch_size=p.batch_size,
    )
    for name, instances in found:
        instances.save(out / f"{name}.npz")
        log.info("%s: %d instances", name, len(instances))
