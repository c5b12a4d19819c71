"""Outputs written atomically (a failed or killed job leaves no file a later run would take for
finished), and content digests.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import tifffile


def file_sha256(path: str | os.PathLike) -> str:
    """The SHA-256 hex digest of a file's contents, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it to `path` only when the block succeeds.

    A failure (or an interrupted run) therefore never leaves a partial output that a later run
    would take for finished. The temporary name keeps `path`'s suffix, so writers that add or
    check extensions (`np.savez`, tifffile) behave. Parent folders are created. The file gets
    the mode a plain `open` would give it (0644 under umask 022), not mkstemp's private 0600,
    so collaborators on a shared cluster can read the outputs.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=path.suffix)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _umask() -> int:
    """The process's umask; reading it means setting it, so it is set straight back."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def save_npz_atomic(path: str | os.PathLike, **arrays: np.ndarray) -> None:
    """Write `arrays` to a compressed `.npz` at `path` atomically."""
    with atomic_path(path) as tmp:
        np.savez_compressed(tmp, **arrays)


# zlib level of the shard files: level 1 deflates much faster than numpy's default (6), for
# slightly larger files (measured in docs/scale.md).
NPZ_LEVEL = 1


@contextlib.contextmanager
def npz_writer(path: str | os.PathLike) -> Iterator[Callable[[str, np.ndarray], None]]:
    """Yield `add(name, array)`, which appends one array to a compressed `.npz` at `path`; the
    file appears atomically when the block succeeds. Unlike `save_npz_atomic`, the arrays need
    not all be in memory at once (a shard of many images' tiles). Readable by `np.load`."""
    with (
        atomic_path(path) as tmp,
        zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED, allowZip64=True, compresslevel=NPZ_LEVEL) as archive,
    ):

        def add(name: str, array: np.ndarray) -> None:
            with archive.open(f"{name}.npy", "w", force_zip64=True) as member:
                np.lib.format.write_array(member, np.asanyarray(array), allow_pickle=False)

        yield add


def write_tiff(
    path: str | os.PathLike,
    array: np.ndarray,
    compression: str | None = None,
    predictor: bool = False,
) -> None:
    """Write one image to a TIFF atomically; `(H, W, 3 or 4)` arrays are written as RGB(A).

    `compression` is a tifffile codec name ("lzw", "zlib", None); `predictor=True` adds the
    horizontal-differencing predictor. tifffile writes no timestamp, so equal arrays give
    byte-identical files.
    """
    rgb = array.ndim == 3 and array.shape[-1] in (3, 4)
    with atomic_path(path) as tmp:
        tifffile.imwrite(
            tmp,
            array,
            photometric="rgb" if rgb else "minisblack",
            extrasamples=("unassalpha",) if rgb and array.shape[-1] == 4 else None,
            compression=compression,
            predictor=predictor or None,
        )
