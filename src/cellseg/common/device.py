"""The torch device and precision a job runs with, shared by training and inference so that
neither imports the other; and, on a workstation, which GPU each concurrent job gets."""

from __future__ import annotations

import fcntl
import logging
import os
import tempfile
import time
from pathlib import Path

import torch

from cellseg.common.errors import ConfigError

log = logging.getLogger(__name__)

AMP_DTYPES = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}
GPU_LOCK_DIR = Path(tempfile.gettempdir()) / "cellseg-gpu-slots"
_held_locks: list = []  # open lock files: a claimed GPU stays claimed until the process ends


def select_device(requested: str = "auto") -> torch.device:
    """`auto`: CUDA when available, else CPU with a warning in the log; or a torch device name."""
    if requested != "auto":
        return torch.device(requested)
    if torch.cuda.is_available():
        return torch.device("cuda")
    log.warning("no CUDA device: running on CPU, which is slow; AMP and channels_last are off (`resolve_amp`)")
    return torch.device("cpu")


def amp_forced_on_cpu() -> bool:
    """Whether the environment asks for `amp` and `channels_last` on the CPU as well
    (`CELLSEG_AMP_ON_CPU=1`): how a CPU proxy of a GPU run executes its precision paths."""
    return os.environ.get("CELLSEG_AMP_ON_CPU") == "1"


def resolve_amp(device: torch.device, amp: str, on_cpu: bool = False) -> str:
    """The precision a job runs in: `amp` (none, bf16, fp16) on CUDA; on the CPU "none" unless
    `on_cpu`, because CPU autocast is slower than fp32 for most ops (tests force it, to run
    every precision path without a GPU). Raises ConfigError for bf16 on a GPU without it."""
    if device.type == "cpu" and not on_cpu:
        return "none"
    if device.type == "cuda" and amp == "bf16" and not torch.cuda.is_bf16_supported():
        raise ConfigError(
            f"train.amp: bf16, but {torch.cuda.get_device_name(device)} has no bf16 support; set amp: fp16"
        )
    return amp


def autocast(device: torch.device, amp: str):
    """`torch.autocast` for `amp` (from `resolve_amp`); a no-op context for "none"."""
    return torch.autocast(device.type, dtype=AMP_DTYPES[amp], enabled=amp != "none")


def count_gpus() -> int:
    """NVIDIA GPUs on this machine, read from the driver's /proc entries (not from torch, whose
    CUDA initialisation would fix the visible devices before a job could pin one)."""
    gpus = Path("/proc/driver/nvidia/gpus")
    return len(list(gpus.iterdir())) if gpus.is_dir() else 0


def claim_gpus(count: int, available: int, lock_dir: Path = GPU_LOCK_DIR, wait_s: float = 3600.0) -> list[int]:
    """Claim `count` of the GPUs 0..available-1 that no other process on this machine holds,
    through an exclusive lock file per GPU in `lock_dir`; the locks are released when this
    process ends, however it ends (the kernel drops them). Waits, polling every 2 s, while fewer
    are free (another Snakemake run on the same machine); raises TimeoutError after `wait_s`."""
    lock_dir.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + wait_s
    while True:
        claimed = []
        for gpu in range(available):
            handle = open(lock_dir / f"gpu{gpu}.lock", "a")
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.close()
                continue
            claimed.append((gpu, handle))
            if len(claimed) == count:
                _held_locks.extend(handle for _, handle in claimed)
                return [gpu for gpu, _ in claimed]
        for _, handle in claimed:
            handle.close()
        if time.monotonic() > deadline:
            raise TimeoutError(f"no {count} free GPU(s) of {available} after {wait_s:.0f} s (locks in {lock_dir})")
        time.sleep(2.0)


def pin_gpus(count: int, lock_dir: Path = GPU_LOCK_DIR) -> str | None:
    """Give this job `count` GPUs of its own on a multi-GPU workstation, by setting
    CUDA_VISIBLE_DEVICES before torch initialises CUDA; the device string set, or None when
    nothing was pinned: no GPU wanted or present, or CUDA_VISIBLE_DEVICES already set (SLURM
    sets it for the GPUs it allocated; a user may set it by hand)."""
    available = count_gpus()
    if count <= 0 or available == 0 or "CUDA_VISIBLE_DEVICES" in os.environ:
        return None
    devices = ",".join(map(str, claim_gpus(min(count, available), available, lock_dir)))
    os.environ["CUDA_VISIBLE_DEVICES"] = devices
    log.info("pinned to GPU %s of %d (CUDA_VISIBLE_DEVICES)", devices, available)
    return devices
