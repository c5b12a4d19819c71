import os

from cellseg.workflow.listing import write_listing


def test_listing_is_rewritten_only_when_a_file_changes(tmp_path):
    files = [tmp_path / "a.tif", tmp_path / "b.tif"]
    for file in files:
        file.write_bytes(b"x")
    listing = tmp_path / "out" / "listing.tsv"
    assert write_listing(listing, files)
    assert [line.split("\t")[0] for line in listing.read_text().splitlines()] == [str(f) for f in files]
    assert not write_listing(listing, files)  # unchanged: the file and its mtime stay

    os.utime(files[1], ns=(1, 1))
    assert write_listing(listing, files)
    files.append(tmp_path / "c.tif")
    files[-1].write_bytes(b"yy")
    assert write_listing(listing, files)
    assert listing.read_text().splitlines()[-1].endswith("\t2")
