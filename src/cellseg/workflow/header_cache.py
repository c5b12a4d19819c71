"""TIFF headers remembered between DAG builds, each under its file's mtime and size.

Every DAG build checks the header of every training image and mask (`dataset.check_headers`);
at 10,000 images that is 20,000 files opened and parsed each time, though most runs see the same
files as the run before. A file whose mtime or size changed is read again.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from cellseg.common.files import atomic_path
from cellseg.common.images import TiffHeader, read_tiff_header


class HeaderCache:
    """`read(path)` returns what `read_tiff_header(path)` would, from the cache file at `path`
    when the file is unchanged; `save()` writes the cache back if it grew. Only headers read
    without error are kept, so a bad file raises its `DataError` on every build."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        try:
            self.entries: dict[str, list] = json.loads(self.path.read_text())
        except (OSError, ValueError):  # no cache yet, or a damaged one: start over
            self.entries = {}
        self.changed = False

    def read(self, path: str | os.PathLike) -> TiffHeader:
        try:
            stat = os.stat(path)
        except OSError:
            return read_tiff_header(path)  # the DataError naming the missing file
        key, stamp = str(path), [stat.st_mtime_ns, stat.st_size]
        entry = self.entries.get(key)
        if entry and entry[:2] == stamp and len(entry) == 8:  # a cache of older code lacks the mpp
            height, width, channels, dtype, alpha, mpp = entry[2:]
            return TiffHeader(height, width, channels, np.dtype(dtype), alpha, mpp)
        header = read_tiff_header(path)
        self.entries[key] = [
            *stamp, header.height, header.width, header.channels, header.dtype.str, header.alpha, header.mpp
        ]
        self.changed = True
        return header

    def save(self) -> None:
        if self.changed:
            with atomic_path(self.path) as tmp:
                tmp.write_text(json.dumps(self.entries))
            self.changed = False
