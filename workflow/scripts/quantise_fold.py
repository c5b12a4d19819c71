"""One trained fold as a static INT8 ONNX model (cellseg.model.onnx_quantise), its activation
ranges calibrated on the fold's own training images, as predict_fold would see them."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).resolve().parents[1] / "src"))

import torch

from cellseg.common.files import atomic_path
from cellseg.data.dataset import load_sample
from cellseg.data.split import read_split
from cellseg.data.stain import load_normaliser
from cellseg.inference.predict import load_model_for_inference
from cellseg.model.onnx_export import onnx_bytes
from cellseg.model.onnx_quantise import calibration_ids, calibration_input, quantised_onnx
from cellseg.training.data import fold_image_ids
from cellseg.workflow.joblog import job_logging

with job_logging(snakemake.log[0]) as log:
    p = snakemake.params
    torch.set_num_threads(snakemake.threads)
    model = load_model_for_inference(
        snakemake.input.weights, p.train, len(p.classes), torch.device("cpu"), tile_size=p.train_tile_size
    )
    normalise = load_normaliser(snakemake.input.stain)
    ids = calibration_ids(fold_image_ids(read_split(snakemake.input.split), int(snakemake.wildcards.fold))[0])
    images = [calibration_input(normalise(load_sample(p.source, i).image, i), p.tile_size) for i in ids]
    log.info("calibrating on %d training images: %s", len(ids), ", ".join(ids))
    with atomic_path(snakemake.output[0]) as tmp:
        tmp.write_bytes(quantised_onnx(onnx_bytes(model), images))
    log.info("%s: %.1f MB", snakemake.output[0], Path(snakemake.output[0]).stat().st_size / 1e6)
