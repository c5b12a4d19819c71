"""cellseg.inference.region_file and cellseg.outputs.segment_regions: an image predicted as regions, each
apart, and joined gives the outputs of one job, to the cell and its number."""

import json

import numpy as np
import pytest
import tifffile
from PIL import Image
from test_segment import Oracle, blob_image, fold_ensemble
from test_slide import CPU, FUSION, PREDICT, BrightBlobs, FoldEnsemble, discs, write_ome

from cellseg.inference.region_grid import region_count, region_of
from cellseg.outputs.segment_file import segment_file
from cellseg.outputs.segment_regions import gather_regions, segment_region

POINT = {"point": "cells", "score_thresholds": {1: 0.5}, "mask_thresholds": {1: 0.5}, "nms_threshold": 0.5}
FILES = {"labels": "labels.tif", "geojson": "cells.geojson", "csv": "cells.csv", "overlay": "overlay.png",
         "tissue": "tissue.png"}


def test_regions_number_whole_blocks_row_by_row():
    size = (150, 190)  # 4 x 4 blocks of 48 px
    assert region_count(size, 48, 2) == 4 and region_count(size, 48, 4) == 1 and region_count(size, 48, 1) == 16
    assert [region_of((y, 0, x, 0), 48, 2, size) for y in (0, 48, 96, 144) for x in (0, 96, 144)] == [
        0, 1, 1, 0, 1, 1, 2, 3, 3, 2, 3, 3]


def one_job_and_regions(tmp_path, path, ensemble, n_regions, region_blocks, **options):
    single = {k: tmp_path / "one" / f for k, f in FILES.items()}
    joined = {k: tmp_path / "joined" / f for k, f in FILES.items()}
    segment_file(path, single, ensemble, POINT, ["nucleus"], **options)
    regions = [tmp_path / "regions" / f"{r}.npz" for r in range(n_regions)]
    found = [segment_region(path, file, r, ensemble, POINT, region_blocks, **options) for r, file in enumerate(regions)]
    counts = gather_regions(path, regions, joined, ["nucleus"], ensemble.mpp, region_blocks, **options)
    return single, joined, found, counts


@pytest.mark.parametrize("tissue", [False, True])
def test_four_regions_give_the_cells_of_one_job(tmp_path, tissue):
    path = tmp_path / "blobs.tif"
    tifffile.imwrite(path, blob_image(), tile=(64, 64), photometric="rgb")
    ensemble = fold_ensemble([Oracle(colour=False), Oracle(colour=False, scale=0.9)])
    single, joined, found, counts = one_job_and_regions(
        tmp_path, path, ensemble, 4, 2, block=48, margin=20, tissue=tissue)
    assert all(n > 0 for n in found) and counts["nucleus"] >= 40
    assert np.array_equal(tifffile.imread(single["labels"]), tifffile.imread(joined["labels"]))
    for key in ("csv", "geojson"):
        assert single[key].read_text() == joined[key].read_text()


def test_a_slide_in_regions_gives_the_cells_of_one_job(tmp_path):
    """Working level 1 of 200 x 260 px: 100 x 130 in blocks of 32, regions of 2 x 2 blocks."""
    path = tmp_path / "slide.ome.tif"
    write_ome(path, discs()[1], 0.25)
    ensemble = FoldEnsemble([BrightBlobs(min_area=5)], [None], CPU, PREDICT, FUSION, mpp=0.5)
    single, joined, found, counts = one_job_and_regions(tmp_path, path, ensemble, 6, 2, block=32, margin=12)
    assert counts["nucleus"] >= 40 and sum(found) > counts["nucleus"]  # a seam's cells are found on both sides
    assert np.array_equal(tifffile.imread(single["labels"]), tifffile.imread(joined["labels"]))
    assert single["csv"].read_text() == joined["csv"].read_text()


def test_the_gather_draws_the_density_and_measures_the_tissue(tmp_path):
    """A level-0 µm/px of 0.25 and 4 x 4 level-0 px per copy px of the slide's tissue copy."""
    path = tmp_path / "slide.ome.tif"
    write_ome(path, discs()[1], 0.25)
    ensemble = FoldEnsemble([BrightBlobs(min_area=5)], [None], CPU, PREDICT, FUSION, mpp=0.5)
    outputs = {k: tmp_path / f for k, f in FILES.items()}
    outputs |= {"density": tmp_path / "density.png", "tissue_json": tmp_path / "tissue.json"}
    regions = [tmp_path / f"{r}.npz" for r in range(6)]
    for r, file in enumerate(regions):
        segment_region(path, file, r, ensemble, POINT, 2, block=32, margin=12)
    gather_regions(path, regions, outputs, ["nucleus"], 0.5, 2, block=32, margin=12)
    tissue = json.loads(outputs["tissue_json"].read_text())
    assert tissue == {"tissue_fraction": 1.0, "tissue_mm2": pytest.approx(200 * 260 * 0.25**2 / 1e6, abs=1e-6), "mpp": 0.25}
    assert Image.open(outputs["density"]).size[0] > 100
