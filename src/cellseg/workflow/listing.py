"""One file that stands in for many input files: their paths, mtimes and sizes.

The rules that read every training image (split, training, validation predictions, tuning,
evaluation, report) take this listing as their input instead of the images' files: with 20,000
files (10,000 images and their masks) Snakemake spends most of a dry run matching and checking
that many inputs of each such job. The listing is rewritten, while the DAG is built, only when
a file is added, removed or changed, so those rules re-run when they would have with the files.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from cellseg.common.files import atomic_path


def write_listing(path: str | os.PathLike, files: Iterable[str | os.PathLike]) -> bool:
    """Write `path` as one `file<TAB>mtime_ns<TAB>size` line per file (in the order given),
    unless it already holds exactly that; returns whether it was written."""
    lines = []
    for file in files:
        stat = os.stat(file)
        lines.append(f"{file}\t{stat.st_mtime_ns}\t{stat.st_size}\n")
    text = "".join(lines)
    path = Path(path)
    if path.is_file() and path.read_text() == text:
        return False
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return True
