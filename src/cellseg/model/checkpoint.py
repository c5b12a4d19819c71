"""Resume checkpoints: plain dicts of tensors and plain values, written atomically.

A checkpoint loads with `torch.load(weights_only=True)`, which refuses anything that could run
code while unpickling; so every state is stored as tensors, numbers, strings, bools, None and
lists/tuples/dicts of those (RNG states included, converted from their numpy / Python forms).
A fingerprint of the config and the inputs travels with it, so a run whose config or data
changed starts over instead of resuming someone else's training.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import random
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch

from cellseg.common.errors import DataError
from cellseg.common.files import atomic_path, file_sha256

_PLAIN = (int, float, str, bool, type(None), torch.Tensor)


def rng_state() -> dict:
    """The states of Python's `random`, numpy's global RNG, torch's CPU RNG and (if any) CUDA RNGs."""
    version, mt, gauss_next = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "python": {"version": version, "mt": torch.tensor(mt, dtype=torch.int64), "gauss_next": gauss_next},
        "numpy": {
            "kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos), "has_gauss": int(has_gauss), "cached_gaussian": float(cached),
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict) -> None:
    """Restore what `rng_state` returned; CUDA states only for the GPUs visible now."""
    py = state["python"]
    random.setstate((py["version"], tuple(py["mt"].tolist()), py["gauss_next"]))
    npy = state["numpy"]
    np.random.set_state(
        (npy["kind"], npy["keys"].numpy().astype(np.uint32), npy["pos"], npy["has_gauss"], npy["cached_gaussian"])
    )
    torch.set_rng_state(state["torch"])
    # A run may resume with fewer (or no) visible GPUs than it saved, e.g. pinned to one GPU
    # after running on a node with four: restore the devices that exist, drop the rest.
    visible = torch.cuda.device_count() if state["cuda"] and torch.cuda.is_available() else 0
    for index, cuda_state in enumerate(state["cuda"][:visible]):
        torch.cuda.set_rng_state(cuda_state, index)


def _check_plain(value, where: str) -> None:
    """Raise TypeError naming the first entry of `value` that `weights_only` loading would refuse."""
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, (str, int)):
                raise TypeError(f"checkpoint key {where}[{key!r}] is a {type(key).__name__}")
            _check_plain(item, f"{where}[{key!r}]")
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _check_plain(item, f"{where}[{i}]")
    elif not isinstance(value, _PLAIN):
        raise TypeError(f"checkpoint entry {where} is a {type(value).__name__}, not a tensor or plain value")


def save_checkpoint(path: str | os.PathLike, state: dict) -> None:
    """Write `state` (tensors and plain values only, checked first) to `path` atomically."""
    _check_plain(state, "state")
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path: str | os.PathLike) -> dict:
    """Read a checkpoint with `weights_only=True`; `DataError` naming the file when it holds
    anything but tensors and plain values (e.g. a pickled object) or cannot be read.
    """
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise DataError(
            f"{path}: refused to load: it holds objects other than tensors and plain values "
            f"(unsafe to unpickle). Delete it to start over. Detail: {str(err).splitlines()[0]}"
        ) from err
    except (RuntimeError, EOFError, ValueError, OSError) as err:
        raise DataError(f"{path}: cannot read as a checkpoint ({type(err).__name__}: {err})") from err
    if not isinstance(state, dict):
        raise DataError(f"{path}: a checkpoint must hold a dict, found {type(state).__name__}")
    return state


def fingerprint(config: dict, files: Iterable[str | os.PathLike] = (), arrays: Iterable[np.ndarray] = ()) -> str:
    """SHA-256 over `config` (JSON, sorted keys), the contents of `files` and the bytes of `arrays`.

    Files are named by their base name only, so moving the results folder keeps the fingerprint.
    """
    digest = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode())
    for path in files:
        digest.update(f"{Path(path).name}:{file_sha256(path)}".encode())
    for array in arrays:
        array = np.ascontiguousarray(array)
        digest.update(f"{array.dtype}{array.shape}".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()
