"""The learning rate a fold trains at: `train.lr` is stated for `train.lr_batch` tiles per
optimizer step, and a fold scales it linearly to the batch it takes."""


def effective_lr(cfg: dict) -> float:
    """The peak learning rate a run trains at, linear in its total batch (Goyal et al. 2017):
    `lr` is stated for `lr_batch` tiles per optimizer step, and a fold (one GPU) takes
    `batch_size` x `grad_accum_steps`; the warmup (`warmup_steps`) ramps up to it. So a
    smaller batch, to fit a smaller GPU, keeps the step per tile and needs no new lr."""
    return cfg["lr"] * cfg["batch_size"] * cfg["grad_accum_steps"] / cfg["lr_batch"]


def lr_rule(cfg: dict) -> str:
    """`effective_lr` as a formula, e.g. `0.02 x 8/16`, for the log and train_summary.json."""
    return f"{cfg['lr']:g} x {cfg['batch_size'] * cfg['grad_accum_steps']}/{cfg['lr_batch']}"
