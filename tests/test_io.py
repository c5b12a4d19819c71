"""Reading real-file variants of images and masks, bad files, and atomic writes."""

import os
import stat

import numpy as np
import pytest
import tifffile

from cellseg.common.errors import DataError
from cellseg.common.files import atomic_path, save_npz_atomic, write_tiff
from cellseg.common.images import read_image, read_mask, read_tiff_header, relabel_consecutive, to_rgb8


def _rgba(height, width, seed=0):
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (height, width, 4), dtype=np.uint8)
    image[..., 3] = 255
    return image


def _write_rgba_lzw(path, image):
    """Write as the reference files are: RGBA uint8, LZW, horizontal predictor."""
    tifffile.imwrite(
        path,
        image,
        photometric="rgb",
        extrasamples=("unassalpha",),
        compression="lzw",
        predictor=True,
    )


@pytest.mark.parametrize("shape", [(33, 86), (2500, 1987)])
def test_rgba_lzw_predictor_is_read_as_rgb(tmp_path, shape):
    image = _rgba(*shape)
    path = tmp_path / "image.tif"
    _write_rgba_lzw(path, image)
    with tifffile.TiffFile(path) as tif:
        assert (tif.pages[0].compression, tif.pages[0].predictor) == (5, 2)
    rgb = read_image(path)
    assert rgb.shape == (*shape, 3) and rgb.dtype == np.uint8
    np.testing.assert_array_equal(rgb, image[..., :3])


def test_rgb_grayscale_and_channel_first(tmp_path):
    rgb = _rgba(20, 30)[..., :3]
    tifffile.imwrite(tmp_path / "rgb.tif", rgb, photometric="rgb")
    np.testing.assert_array_equal(read_image(tmp_path / "rgb.tif"), rgb)
    tifffile.imwrite(tmp_path / "grey.tif", rgb[..., 0])
    np.testing.assert_array_equal(
        read_image(tmp_path / "grey.tif"), np.repeat(rgb[..., :1], 3, axis=2)
    )
    for channels in (3, 4):
        planar = np.moveaxis(_rgba(20, 30)[..., :channels], -1, 0)
        tifffile.imwrite(
            tmp_path / "planar.tif", planar, photometric="rgb", planarconfig="separate"
        )
        np.testing.assert_array_equal(
            read_image(tmp_path / "planar.tif"), np.moveaxis(planar[:3], 0, -1)
        )


def test_a_16bit_copy_of_an_8bit_image_reads_the_same(tmp_path):
    rgb = _rgba(20, 30)[..., :3]
    for name, image, kwargs in [("rgb", rgb, {"photometric": "rgb"}), ("grey", rgb[..., 0], {})]:
        tifffile.imwrite(tmp_path / f"{name}8.tif", image, **kwargs)
        tifffile.imwrite(tmp_path / f"{name}16.tif", image.astype(np.uint16) * 257, compression="zlib", **kwargs)
        eight, sixteen = read_image(tmp_path / f"{name}8.tif"), read_image(tmp_path / f"{name}16.tif")
        assert sixteen.dtype == np.uint8 and sixteen.shape == (20, 30, 3)
        np.testing.assert_array_equal(sixteen, eight)


def test_every_8bit_value_round_trips_through_x257():
    values = np.arange(256, dtype=np.uint16)
    out = to_rgb8((values * 257).reshape(16, 16, 1), "x.tif")
    np.testing.assert_array_equal(out, np.repeat(values.reshape(16, 16, 1), 3, axis=2))


def test_12bit_data_in_a_16bit_file_comes_out_dark(tmp_path):
    """Documented: 16-bit files are scaled by their 16-bit depth, whatever range they use."""
    image = np.arange(4096, dtype=np.uint16).reshape(64, 64)
    tifffile.imwrite(tmp_path / "12bit.tif", image)
    out = read_image(tmp_path / "12bit.tif")[..., 0]
    assert out.min() == 0 and out.max() == 16
    np.testing.assert_array_equal(out, np.rint(image / 65535 * 255))


def test_float_0_1_is_scaled_by_255_and_rounded(tmp_path):
    image = np.random.default_rng(0).random((20, 30, 3)).astype(np.float32)
    image[0, :3] = [[0, 0, 0], [1, 1, 1], [0.5, 0.5, 0.5]]
    tifffile.imwrite(tmp_path / "f.tif", image, photometric="rgb")
    out = read_image(tmp_path / "f.tif")
    assert out.dtype == np.uint8 and out[0, 0, 0] == 0 and out[0, 1, 0] == 255
    np.testing.assert_array_equal(out, np.rint(image.astype(np.float64) * 255))


@pytest.mark.parametrize(
    "value, message",
    [(1.5, r"values 0 to 1\.5, outside 0-1; scale them to 0-1"), (-0.25, "outside 0-1"),
     (np.nan, "NaN or infinite"), (np.inf, "NaN or infinite")],
)
def test_float_outside_0_1_is_rejected_naming_the_file(tmp_path, value, message):
    image = np.zeros((8, 9), np.float32)
    image[2, 3] = value
    tifffile.imwrite(tmp_path / "bad.tif", image)
    with pytest.raises(DataError, match=rf"bad.tif: float image holds .*{message}"):
        read_image(tmp_path / "bad.tif")


@pytest.mark.parametrize("dtype", [np.int8, np.int16, np.int32, np.uint32])
def test_other_dtypes_are_rejected_naming_the_file(tmp_path, dtype):
    tifffile.imwrite(tmp_path / "int.tif", np.zeros((8, 9), dtype))
    with pytest.raises(DataError, match=rf"int.tif: unsupported dtype {np.dtype(dtype)}; expected uint8, uint16 or float"):
        read_image(tmp_path / "int.tif")


def test_float64_mask_with_skipping_ids(tmp_path):
    mask = np.zeros((30, 40))
    mask[2:8, 2:8], mask[10:20, 5:9], mask[25:29, 30:39] = 20, 3, 7
    tifffile.imwrite(tmp_path / "class1.tif", mask, compression="zlib")
    labels = read_mask(tmp_path / "class1.tif")
    assert labels.dtype == np.int32 and labels.shape == (30, 40)
    expected = np.zeros((30, 40), np.int32)
    expected[2:8, 2:8], expected[10:20, 5:9], expected[25:29, 30:39] = 3, 1, 2  # id order kept
    np.testing.assert_array_equal(labels, expected)


def test_mask_with_300_cells(tmp_path):
    mask = np.zeros((340, 300))
    ids = 5 * np.arange(1, 341) + 2  # skipping ids: max 1702 for 340 cells
    for k, cell_id in enumerate(ids):
        y, x = divmod(k, 20)
        mask[y * 20 + 2 : y * 20 + 17, x * 15 + 1 : x * 15 + 14] = cell_id
    tifffile.imwrite(tmp_path / "m.tif", mask, compression="zlib")
    labels = read_mask(tmp_path / "m.tif")
    assert labels.max() == 340
    assert (np.bincount(labels.ravel())[1:] == 15 * 13).all()


@pytest.mark.parametrize("big_id", [12, 2**40])  # a lookup table; a sort for ids far above the pixel count
def test_relabel_consecutive_keeps_id_order_and_zero(big_id):
    with_background = np.array([[0, 5, 5], [big_id, 0, 3]], np.int64)
    without_background = np.array([[4, 5, 5], [big_id, 4, 3]], np.int64)
    for labels, expected in [(with_background, [[0, 2, 2], [3, 0, 1]]), (without_background, [[2, 3, 3], [4, 2, 1]])]:
        relabelled = relabel_consecutive(labels)
        assert relabelled.dtype == np.int32
        np.testing.assert_array_equal(relabelled, expected)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int32])
def test_integer_masks(tmp_path, dtype):
    mask = np.zeros((10, 12), dtype)
    mask[1:4, 1:4], mask[6:9, 6:11] = 9, 4
    tifffile.imwrite(tmp_path / "m.tif", mask)
    labels = read_mask(tmp_path / "m.tif")
    assert (
        labels.dtype == np.int32 and labels[2, 2] == 2 and labels[7, 7] == 1 and labels.max() == 2
    )


@pytest.mark.parametrize("bad_value", [2.5, -3.0, np.nan])
def test_bad_mask_values(tmp_path, bad_value):
    mask = np.zeros((10, 12))
    mask[3, 3] = bad_value
    tifffile.imwrite(tmp_path / "bad_mask.tif", mask)
    with pytest.raises(DataError, match="bad_mask.tif"):
        read_mask(tmp_path / "bad_mask.tif")


@pytest.mark.parametrize(
    "keep",
    [lambda n: n // 2, lambda n: n - 3, lambda n: 16, lambda n: 0],
    ids=["half", "tail", "header", "empty"],
)
def test_truncated_lzw_image(tmp_path, keep):
    full = tmp_path / "full.tif"
    _write_rgba_lzw(full, _rgba(200, 300))
    data = full.read_bytes()
    cut = tmp_path / "cut.tif"
    cut.write_bytes(data[: keep(len(data))])
    with pytest.raises(DataError, match="cut.tif"):
        read_image(cut)


def test_not_a_tiff_and_missing(tmp_path):
    (tmp_path / "text.tif").write_text("this is not a TIFF file")
    with pytest.raises(DataError, match="text.tif.*not a TIFF"):
        read_image(tmp_path / "text.tif")
    with pytest.raises(DataError, match="absent.tif: file not found"):
        read_mask(tmp_path / "absent.tif")


def test_atomic_path_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "sub" / "out.npz"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"partial")
            raise RuntimeError("writer failed")
    assert list((tmp_path / "sub").iterdir()) == []
    save_npz_atomic(target, a=np.arange(3), b=np.ones((2, 2), np.float16))
    assert [p.name for p in target.parent.iterdir()] == ["out.npz"]
    with np.load(target) as data:
        np.testing.assert_array_equal(data["a"], np.arange(3))
        assert data["b"].dtype == np.float16


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_atomic_writes_get_the_mode_the_umask_allows(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        save_npz_atomic(tmp_path / "a.npz", a=np.arange(3))
        write_tiff(tmp_path / "b.tif", np.zeros((4, 4), np.uint8))
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.npz").stat().st_mode) == mode
    assert stat.S_IMODE((tmp_path / "b.tif").stat().st_mode) == mode


def test_write_tiff_round_trip_is_byte_identical(tmp_path):
    image = _rgba(17, 23)
    write_tiff(tmp_path / "a.tif", image, compression="lzw", predictor=True)
    write_tiff(tmp_path / "b.tif", image, compression="lzw", predictor=True)
    assert (tmp_path / "a.tif").read_bytes() == (tmp_path / "b.tif").read_bytes()
    np.testing.assert_array_equal(read_image(tmp_path / "a.tif"), image[..., :3])


def test_two_channels_are_grey_plus_alpha_only_when_declared(tmp_path):
    grey_alpha = np.stack([np.arange(48, dtype=np.uint8).reshape(6, 8), np.full((6, 8), 255, np.uint8)], -1)
    tifffile.imwrite(tmp_path / "ga.tif", grey_alpha, extrasamples=("unassalpha",))
    np.testing.assert_array_equal(read_image(tmp_path / "ga.tif"), np.repeat(grey_alpha[..., :1], 3, axis=2))
    assert read_tiff_header(tmp_path / "ga.tif").alpha
    tifffile.imwrite(tmp_path / "two.tif", grey_alpha, photometric="minisblack", planarconfig="contig")
    for read in (read_image, read_tiff_header):
        with pytest.raises(DataError, match=r"two.tif: 2 channels that are not grey \+ alpha"):
            read(tmp_path / "two.tif")


def test_a_stack_of_planes_is_rejected_not_cut_to_its_first(tmp_path):
    tifffile.imwrite(tmp_path / "stack.tif", np.zeros((2, 6, 8), np.uint8))  # 2 pages
    for read in (read_image, read_mask, read_tiff_header):
        with pytest.raises(DataError, match="stack.tif: holds a stack of 2 planes"):
            read(tmp_path / "stack.tif")


def test_header_gives_size_channels_and_dtype_without_decoding(tmp_path):
    tifffile.imwrite(tmp_path / "x.tif", _rgba(20, 30), photometric="rgb", extrasamples=("unassalpha",))
    header = read_tiff_header(tmp_path / "x.tif")
    assert (header.height, header.width, header.channels, header.dtype, header.alpha) == (20, 30, 4, np.uint8, True)
