"""Records written once to a file and read back on every pass, so that a job which revisits a
whole set many times (the tune stage's threshold search) holds one record at a time rather
than the set."""

from __future__ import annotations

import os
import pickle
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any


class Spool(Sequence):
    """Picklable records in a file of `directory`, in order: iterating reads them one at a time
    from disk, `spool[i]` reads one. The file lives until `delete` (or its directory goes)."""

    def __init__(self, records: Iterable[Any], directory: str | Path):
        handle, name = tempfile.mkstemp(suffix=".spool", dir=directory)
        self.path = Path(name)
        self._offsets: list[int] = []
        with os.fdopen(handle, "wb") as file:
            for record in records:
                self._offsets.append(file.tell())
                pickle.dump(record, file, protocol=pickle.HIGHEST_PROTOCOL)

    def __len__(self) -> int:
        return len(self._offsets)

    def __iter__(self) -> Iterator[Any]:
        with self.path.open("rb") as file:
            for _ in self._offsets:
                yield pickle.load(file)

    def __getitem__(self, index: int) -> Any:
        with self.path.open("rb") as file:
            file.seek(self._offsets[index])
            return pickle.load(file)

    def subset(self, index: Iterable[int]) -> Spool:
        """A new spool (next to this one) of the records at positions `index`, in that order."""
        return Spool((self[int(i)] for i in index), self.path.parent)

    def delete(self) -> None:
        self.path.unlink(missing_ok=True)
