"""The torch device a job runs on, shared by training and inference so that neither imports
the other."""

import logging

import torch

log = logging.getLogger(__name__)


def select_device(requested: str = "auto") -> torch.device:
    """`auto`: CUDA when available, else CPU with a warning in the log; or a torch device name."""
    if requested != "auto":
        return torch.device(requested)
    if torch.cuda.is_available():
        return torch.device("cuda")
    log.warning("no CUDA device: running on CPU, which is slow; AMP and channels_last are off")
    return torch.device("cpu")
