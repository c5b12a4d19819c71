import numpy as np
import pandas as pd
import pytest

from cellseg.data.target_maps import compute_maps
from cellseg.data.tiles import load_tile, make_tiles, read_index, save_tiles, save_tiles_shard, tile_origins

CLASSES = ["a", "b"]


def toy_image(height=50, width=70, seed=0):
    """Random image and two classes of random rectangles (overlapping across classes)."""
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    labels = np.zeros((2, height, width), np.int32)
    for c in range(2):
        for i in range(1, 9):
            y, x = rng.integers(0, height - 4), rng.integers(0, width - 4)
            h, w = rng.integers(3, 15, size=2)
            labels[c, y : y + h, x : x + w] = i
        _, inverse = np.unique(labels[c], return_inverse=True)  # some may be covered entirely
        labels[c] = inverse.reshape(height, width)
    maps = compute_maps(labels, sigma=2.0, width=1)
    return image, labels, maps["center"], maps["boundary"]


def tiles_of(image, labels, center, boundary, size, overlap=0, skip_empty=False, min_area=0, valid=None):
    return make_tiles(
        image, labels, center, boundary, size, overlap, skip_empty, min_area,
        image_id="img", class_names=CLASSES, valid=valid,
    )


@pytest.mark.parametrize("length,size,overlap,expected", [
    (10, 4, 1, [0, 3, 6]), (10, 4, 2, [0, 2, 4, 6]), (8, 4, 0, [0, 4]), (4, 4, 3, [0]), (3, 4, 1, [0]),
])
def test_tile_origins(length, size, overlap, expected):
    assert tile_origins(length, size, overlap) == expected


def test_tile_origins_cover_with_overlap():
    for length in range(1, 60):
        origins = tile_origins(length, 16, 5)
        covered = np.zeros(length, bool)
        for o in origins:
            covered[o : o + 16] = True
        assert covered.all() and origins[-1] == max(0, length - 16)
        assert all(16 - (b - a) >= 5 for a, b in zip(origins, origins[1:]))


def test_tile_origins_bad_overlap():
    """A programming error here: the configuration checks tiles.overlap before any job runs
    (tests/test_configuration.py::test_values_that_no_job_checks_again_fail_before_the_dag)."""
    with pytest.raises(ValueError, match="overlap 16"):
        tile_origins(100, 16, 16)


def test_tiles_reassemble_to_the_image():
    image, labels, center, boundary = toy_image()
    tiles, index = tiles_of(image, labels, center, boundary, size=24, overlap=5)
    assert len(tiles) == len(index) == 3 * 4
    assert list(index["tile"]) == list(range(12))
    covered = np.zeros(center.shape, bool)
    for tile, row in zip(tiles, index.itertuples()):
        window = (slice(row.y0, row.y0 + row.height), slice(row.x0, row.x0 + row.width))
        covered[window] = True
        assert tile["image"].shape == (24, 24, 3) and tile["labels"].shape == (2, 24, 24)
        np.testing.assert_array_equal(tile["image"][: row.height, : row.width], image[window])
        np.testing.assert_array_equal(tile["center"][: row.height, : row.width], center[window])
        np.testing.assert_array_equal(tile["boundary"][: row.height, : row.width], boundary[window])
        for c in range(2):
            part, orig = tile["labels"][c, : row.height, : row.width], labels[c][window]
            np.testing.assert_array_equal(part > 0, orig > 0)
            pairs = set(zip(part[orig > 0], orig[orig > 0]))
            assert len(pairs) == len({p for p, _ in pairs}) == len({o for _, o in pairs})
            assert {p for p, _ in pairs} == set(range(1, part.max() + 1))
        assert row.n_instances == row.n_a + row.n_b == sum(int(p.max()) for p in tile["labels"])
    assert covered.all()


def test_small_image_is_padded():
    image, labels, center, boundary = toy_image(height=10, width=13)
    tiles, index = tiles_of(image, labels, center, boundary, size=16, overlap=4)
    assert len(tiles) == 1
    assert index.loc[0, ["y0", "x0", "height", "width"]].tolist() == [0, 0, 10, 13]
    tile = tiles[0]
    assert tile["image"].shape == (16, 16, 3) and tile["center"].dtype == np.float16
    np.testing.assert_array_equal(tile["image"][:10, :13], image)
    assert not tile["image"][10:].any() and not tile["image"][:, 13:].any()
    assert not tile["labels"][:, 10:].any() and not tile["boundary"][:, 13:].any()


def test_size_zero_is_the_whole_image():
    image, labels, center, boundary = toy_image(height=30, width=41)
    tiles, index = tiles_of(image, labels, center, boundary, size=0)
    assert len(tiles) == 1 and tiles[0]["image"].shape == (30, 41, 3)
    np.testing.assert_array_equal(tiles[0]["labels"], labels)


def test_slivers_are_dropped():
    image = np.zeros((20, 30, 3), np.uint8)
    labels = np.zeros((2, 20, 30), np.int32)
    labels[0, 5:8, 2:5] = 1  # 9 px, whole inside tile 0: kept although small
    labels[0, 5:10, 18:24] = 2  # 30 px, cut: 10 px in tile 0 (a sliver), 30 px in tile 1
    maps = compute_maps(labels, sigma=2.0, width=1)
    tiles, index = tiles_of(image, labels, maps["center"], maps["boundary"], size=20, overlap=10, min_area=15)
    assert index["x0"].tolist() == [0, 10]
    first, second = tiles[0]["labels"][0], tiles[1]["labels"][0]
    assert set(np.unique(first)) == {0, 1} and (first == 1).sum() == 9
    assert not first[:, 18:].any()
    assert set(np.unique(second)) == {0, 1} and (second == 1).sum() == 30
    assert index["n_a"].tolist() == [1, 1] and index["n_b"].tolist() == [0, 0]


def test_skip_empty_keeps_foreground_tiles_and_at_least_one():
    image = np.zeros((40, 40, 3), np.uint8)
    labels = np.zeros((2, 40, 40), np.int32)
    labels[1, 30:35, 30:35] = 1
    maps = compute_maps(labels, sigma=2.0, width=1)
    tiles, index = tiles_of(image, labels, maps["center"], maps["boundary"], size=20, skip_empty=True)
    assert index[["tile", "y0", "x0", "n_b"]].values.tolist() == [[0, 20, 20, 1]]
    tiles, index = tiles_of(image, np.zeros_like(labels), maps["center"], maps["boundary"], size=20, skip_empty=True)
    assert len(tiles) == 1 and index[["y0", "x0"]].values.tolist() == [[0, 0]]


def test_tiles_of_a_partly_annotated_image_lie_wholly_inside_its_regions():
    image, labels, center, boundary = toy_image(height=50, width=70)
    valid = np.zeros((50, 70), bool)
    valid[5:45, 10:60] = True  # a region larger than a tile
    valid[0:10, 62:70] = True  # a rectangle smaller than a tile: one padded tile
    yy, xx = np.mgrid[:50, :70]
    valid |= (yy - 47) ** 2 + (xx - 65) ** 2 <= 4  # a disc smaller than a tile: none
    tiles, index = tiles_of(image, labels, center, boundary, size=24, overlap=4, valid=valid)
    covered = np.zeros(valid.shape, bool)
    for tile, row in zip(tiles, index.itertuples()):
        window = (slice(row.y0, row.y0 + row.height), slice(row.x0, row.x0 + row.width))
        assert valid[window].all()
        covered[window] = True
        assert tile["image"].shape == (24, 24, 3)
        np.testing.assert_array_equal(tile["image"][: row.height, : row.width], image[window])
        assert not tile["image"][row.height :].any() and not tile["image"][:, row.width :].any()
    expected = np.zeros(valid.shape, bool)
    expected[5:45, 10:60] = expected[0:10, 62:70] = True
    np.testing.assert_array_equal(covered, expected)
    assert [0, 62, 10, 8] in index[["y0", "x0", "height", "width"]].values.tolist()


def test_an_image_without_a_tile_inside_its_regions_gives_none(tmp_path, caplog):
    image, labels, center, boundary = toy_image(height=50, width=70)
    valid = np.zeros((50, 70), bool)
    valid[10:20, 10:40] = True
    valid[20:30, 10:20] = True  # an L: its bounding box holds invalid pixels
    tiles, index = tiles_of(image, labels, center, boundary, size=24, valid=valid)
    assert tiles == [] and list(index.columns) == [
        "image_id", "tile", "y0", "x0", "height", "width", "n_instances", "n_a", "n_b"
    ]
    assert "img: no 24 px tile lies wholly inside its annotated regions" in caplog.text
    save_tiles(tmp_path / "t.npz", tmp_path / "t.tsv", tiles, index)
    assert read_index([tmp_path / "t.tsv"]).empty
    assert tiles_of(image, labels, center, boundary, size=0, valid=valid)[0] == []


def test_without_tiling_each_region_is_one_tile():
    image, labels, center, boundary = toy_image(height=50, width=70)
    valid = np.zeros((50, 70), bool)
    valid[10:20, 10:40] = valid[30:45, 5:20] = True
    tiles, index = tiles_of(image, labels, center, boundary, size=0, valid=valid)
    assert index[["y0", "x0", "height", "width"]].values.tolist() == [[10, 10, 10, 30], [30, 5, 15, 15]]
    np.testing.assert_array_equal(tiles[1]["image"], image[30:45, 5:20])


def test_save_load_round_trip(tmp_path):
    image, labels, center, boundary = toy_image()
    tiles, index = tiles_of(image, labels, center, boundary, size=32, overlap=8)
    save_tiles(tmp_path / "img.npz", tmp_path / "img.tsv", tiles, index)
    for k in (0, len(tiles) - 1):
        loaded = load_tile(tmp_path / "img.npz", k)
        for key, array in tiles[k].items():
            assert loaded[key].dtype == array.dtype
            np.testing.assert_array_equal(loaded[key], array)
    with np.load(tmp_path / "img.npz") as npz:
        assert len(npz.files) == 4 * len(tiles)
        np.testing.assert_array_equal(load_tile(npz, 1)["labels"], tiles[1]["labels"])
    index2 = index.assign(image_id="007")
    save_tiles(tmp_path / "b.npz", tmp_path / "b.tsv", tiles, index2)
    both = read_index([tmp_path / "img.tsv", tmp_path / "b.tsv"])
    pd.testing.assert_frame_equal(both, pd.concat([index, index2], ignore_index=True))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.npz", "b.tsv", "img.npz", "img.tsv"]


def test_shard_of_several_images_numbers_tiles_on(tmp_path):
    image, labels, center, boundary = toy_image()
    a = tiles_of(image, labels, center, boundary, size=32, overlap=8)
    b_tiles, b_index = tiles_of(image[::-1], labels[:, ::-1], center[::-1], boundary[::-1], size=24)
    b = (b_tiles, b_index.assign(image_id="b"))
    n = save_tiles_shard(tmp_path / "s.npz", tmp_path / "s.tsv", iter([a, b]))
    assert n == len(a[0]) + len(b_tiles)
    index = read_index([tmp_path / "s.tsv"])
    assert index["tile"].tolist() == list(range(n))
    expected = pd.concat([a[1], b[1]], ignore_index=True).drop(columns="tile")
    pd.testing.assert_frame_equal(index.drop(columns="tile"), expected)
    for row, tile in zip(index.itertuples(), [*a[0], *b_tiles]):
        loaded = load_tile(tmp_path / "s.npz", row.tile)
        for key, array in tile.items():
            assert loaded[key].dtype == array.dtype
            np.testing.assert_array_equal(loaded[key], array)
