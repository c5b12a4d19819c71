"""The one inference path: trained fold models and an image in, final instances out.

    predict_folds          each fold on the image: tiles, seams merged, TTA views fused
                           (`cellseg.inference.predict.predict_image`)
    -> fuse_folds          each fold's scores calibrated, then WBF (`cellseg.inference.ensemble`)
    -> apply_point         an operating point's thresholds and overlap rules
                           (`cellseg.inference.operating_points`)

The workflow runs these steps as stages over a data set (predict_fold, ensemble_folds, then
tune / evaluate / submission); `segment` runs them at once on each block of a new image
(`infer`). Both call the same functions with the same settings, so an image of the
validation set segments into exactly the instances the workflow scores for it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch

from cellseg.common.instances import InstanceSet
from cellseg.common.pixel_size import network_scale
from cellseg.inference.calibrate import read_calibration
from cellseg.inference.ensemble import fuse_folds
from cellseg.inference.operating_points import apply_point
from cellseg.inference.predict import load_model_for_inference, predict_image, predict_settings


@dataclass(frozen=True)
class FoldEnsemble:
    """The trained folds and how they are run.

    models: one model per fold, in eval mode on `device`, in `folds` order. maps: each fold's
    score calibration map (None = scores as predicted). predict: keyword arguments of
    `predict_image` (tile_size, overlap, tta, tta_fusion, batch_size, amp resolved for the
    device). fusion: keyword arguments of `fuse_instance_sets` (weights, iou_thr, ...).
    """

    models: list[torch.nn.Module]
    maps: list[dict | None]
    device: torch.device
    predict: dict
    fusion: dict
    mpp: float | None = None


def load_fold_ensemble(
    weights: dict[int, str | os.PathLike],
    train_cfg: dict,
    n_classes: int,
    train_tile_size: int,
    predict: dict,
    fusion: dict,
    calibration: str | os.PathLike | None,
    device: torch.device,
    mpp: float | None = None,
    backend: str = "torch",
) -> FoldEnsemble:
    """The folds' models (`{fold: model_best.pt}`) with the workflow's settings: `predict`
    as the predict_fold rule's (amp as in config, resolved here for the device), `fusion`
    as the ensemble_folds rule's, `calibration` its calibration.json (None: none), `mpp` the
    training pixel size, `backend` the one that runs the network (`predict.backend`)."""
    maps = read_calibration(calibration)
    models = [
        load_model_for_inference(path, train_cfg, n_classes, device, tile_size=train_tile_size, backend=backend)
        for path in weights.values()
    ]
    maps_in_order = [maps.get(fold) for fold in weights]
    return FoldEnsemble(models, maps_in_order, device, predict_settings(predict, device), dict(fusion), mpp)


def predict_folds(ensemble: FoldEnsemble, pixels: np.ndarray, mpp: float | None = None) -> list[InstanceSet]:
    """Each fold's instances in `pixels` (H, W, 3) uint8 of `mpp` µm per pixel (None = the
    training pixel size), as the predict_fold stage finds them."""
    scale = network_scale(mpp, ensemble.mpp)
    return [
        predict_image(model, pixels, device=ensemble.device, scale=scale, **ensemble.predict)
        for model in ensemble.models
    ]


def infer(ensemble: FoldEnsemble, pixels: np.ndarray, point: dict, mpp: float | None = None) -> InstanceSet:
    """The final instances of `pixels` (H, W, 3) uint8 of `mpp` µm per pixel at the operating
    point `point` (`cellseg.inference.operating_points.read_point`): binary masks, of size (H, W)."""
    return apply_point(fuse_folds(predict_folds(ensemble, pixels, mpp), ensemble.maps, **ensemble.fusion), point)
