"""The lr rule: `train.lr` is stated for `train.lr_batch` tiles, a fold scales it to its batch."""

import pytest

from cellseg.training.lr_rule import effective_lr, lr_rule
from cellseg.workflow.configuration import resolve_train_config


@pytest.mark.parametrize(
    "user, lr, rule",
    [
        ({}, 1e-3, "0.001 x 4/4"),  # the demo preset states lr at its own batch: unchanged
        ({"preset": "gpu"}, 0.01, "0.02 x 8/16"),  # 0.02 for 16 images, at batch 8
        ({"preset": "gpu", "batch_size": 16}, 0.02, "0.02 x 16/16"),
        ({"preset": "gpu", "grad_accum_steps": 2}, 0.02, "0.02 x 16/16"),  # accumulation doubles it
        ({"preset": "gpu", "batch_size": 2, "lr": 0.04}, 0.005, "0.04 x 2/16"),
    ],
)
def test_lr_is_linear_in_the_total_batch(user, lr, rule):
    cfg = resolve_train_config(user)
    assert effective_lr(cfg) == pytest.approx(lr, rel=1e-12) and lr_rule(cfg) == rule
