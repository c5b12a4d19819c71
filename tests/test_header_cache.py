import os

import numpy as np
import pytest
import tifffile

from cellseg.common.errors import DataError
from cellseg.common.images import read_tiff_header
from cellseg.workflow.header_cache import HeaderCache


def test_unchanged_files_come_from_the_cache_changed_ones_are_read_again(tmp_path, monkeypatch):
    image = tmp_path / "image.tif"
    tifffile.imwrite(image, np.zeros((6, 9, 3), np.uint8))
    cache = HeaderCache(tmp_path / "cache" / "headers.json")
    assert cache.read(image) == read_tiff_header(image)
    cache.save()

    reads = []
    monkeypatch.setattr("cellseg.workflow.header_cache.read_tiff_header", lambda path: reads.append(path) or read_tiff_header(path))
    again = HeaderCache(tmp_path / "cache" / "headers.json")
    assert again.read(image) == read_tiff_header(image) and reads == []
    tifffile.imwrite(image, np.zeros((5, 4), np.uint16))
    os.utime(image, ns=(1, 1))  # another mtime, whatever the clock's resolution
    header = again.read(image)
    assert reads == [image] and (header.height, header.width, header.channels) == (5, 4, 1)
    assert header.dtype == np.uint16


def test_bad_and_missing_files_raise_every_time(tmp_path):
    broken = tmp_path / "broken.tif"
    broken.write_bytes(b"not a tiff")
    cache = HeaderCache(tmp_path / "headers.json")
    for path in (broken, tmp_path / "missing.tif"):
        for _ in range(2):
            with pytest.raises(DataError, match=path.name):
                cache.read(path)
    cache.save()
    assert not (tmp_path / "headers.json").exists()  # nothing was cached


def test_a_damaged_cache_file_is_ignored(tmp_path):
    (tmp_path / "headers.json").write_text("{not json")
    image = tmp_path / "image.tif"
    tifffile.imwrite(image, np.zeros((3, 3), np.uint8))
    assert HeaderCache(tmp_path / "headers.json").read(image).height == 3
