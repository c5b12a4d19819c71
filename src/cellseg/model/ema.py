"""Exponential moving average of the model weights, on torch's `AveragedModel`.

The decay ramps up as `min(decay, (1 + n) / (10 + n))` over the first updates n, so that on a
short schedule the average is not dominated by the randomly initialised weights of the first
steps. Buffers are averaged too (integer ones, such as BatchNorm's batch counter, are copied),
so the averaged model is a complete model to validate and save.
"""

from __future__ import annotations

import torch
from torch.optim.swa_utils import AveragedModel


def ema_decay_at(decay: float, n_averaged: int) -> float:
    """The decay of update number `n_averaged` (1 = the first update after the copy)."""
    return min(decay, (1.0 + n_averaged) / (10.0 + n_averaged))


def make_ema(model: torch.nn.Module, decay: float) -> AveragedModel:
    """An EMA of `model` (a copy of it now); call `.update_parameters(model)` after each optimizer
    step. Its `state_dict` (the averaged `module.*` plus `n_averaged`) resumes it exactly.
    """

    def update(averaged: list[torch.Tensor], current: list[torch.Tensor], n_averaged: torch.Tensor) -> None:
        weight = 1.0 - ema_decay_at(decay, int(n_averaged))
        for avg, cur in zip(averaged, current):
            if avg.is_floating_point():
                avg.lerp_(cur, weight)
            else:
                avg.copy_(cur)

    return AveragedModel(model, multi_avg_fn=update, use_buffers=True)
