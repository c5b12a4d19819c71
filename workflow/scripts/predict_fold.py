"""Predict one fold's model on the validation or test images (tiled, with TTA): the first step
of the one inference path (cellseg.inference.fold_ensemble), with the settings segment runs it with."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).resolve().parents[1] / "src"))

import torch

from cellseg.common.device import pin_gpus, select_device
from cellseg.common.pixel_size import network_scale
from cellseg.common.progress import Progress
from cellseg.data.dataset import index_test_set, load_sample, load_test_image
from cellseg.data.image_reader import image_mpp
from cellseg.data.split import read_split, validation_ids
from cellseg.data.stain import load_normaliser
from cellseg.inference.predict import load_model_for_inference, predict_image, predict_settings
from cellseg.workflow.allocator import release_freed_memory
from cellseg.workflow.joblog import job_logging

with job_logging(snakemake.log[0]) as log:
    pin_gpus(snakemake.resources.get("gpu", 0))  # before torch initialises CUDA
    release_freed_memory()
    p = snakemake.params
    torch.set_num_threads(snakemake.threads)
    normalise = load_normaliser(snakemake.input.stain)
    if snakemake.wildcards.subset == "val":
        ids = validation_ids(read_split(snakemake.input.split))
        images = ((i, normalise(load_sample(p.source, i).image, i), 1.0) for i in ids)  # the training pixels
    else:
        tests = index_test_set(p.source)
        ids = [t.name for t in tests]
        scales = {t.name: network_scale(image_mpp(t.path), p.mpp) for t in tests}
        resampled = {name: scale for name, scale in scales.items() if scale != 1.0}
        if resampled:
            log.info("%d test images resampled to the training %g µm/px, e.g. %s", len(resampled), p.mpp, next(iter(resampled)))
        images = ((t.name, normalise(load_test_image(t), t.name), scales[t.name]) for t in tests)
    device = select_device()
    model = load_model_for_inference(
        snakemake.input.weights, p.train, len(p.classes), device, tile_size=p.train_tile_size,
        backend=p.backend,
    )
    settings = predict_settings(p.predict, device)
    out = Path(snakemake.output[0])
    out.mkdir(parents=True, exist_ok=True)
    found = (
        (name, predict_image(model, image, device=device, scale=scale, **settings)) for name, image, scale in images
    )
    progress = Progress(log, len(ids), every=len(ids) // 50, label="image", unit="images")
    for done, (name, instances) in enumerate(found, 1):
        instances.save(out / f"{name}.npz")
        progress.update(done, f"{name}: {len(instances)} instances")
