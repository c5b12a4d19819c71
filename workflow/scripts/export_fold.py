"""Export one trained fold as ONNX plus the JSON card that running it needs (cellseg.model.onnx_export)."""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).resolve().parents[1] / "src"))

import torch

from cellseg.inference.predict import load_model_for_inference
from cellseg.model.onnx_export import export_fold, model_card
from cellseg.workflow.joblog import job_logging

with job_logging(snakemake.log[0]) as log:
    p = snakemake.params
    torch.set_num_threads(snakemake.threads)
    model = load_model_for_inference(
        snakemake.input.weights, p.train, len(p.classes), torch.device("cpu"), tile_size=p.train_tile_size
    )
    points = json.loads(Path(snakemake.input.thresholds).read_text())
    card = model_card(p.classes, p.predict["tile_size"], p.predict["overlap"], p.mpp, points, p.train, p.stain)
    export_fold(model, snakemake.output.onnx, snakemake.output.card, card)
    log.info("%s: %.1f MB", snakemake.output.onnx, Path(snakemake.output.onnx).stat().st_size / 1e6)
