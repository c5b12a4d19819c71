import logging
import re
from pathlib import Path

import numpy as np
import pytest

from cellseg.common.errors import DataError
from cellseg.common.images import read_image
from cellseg.data.stain import (
    StainNormaliser,
    StainTarget,
    fit_dataset_target,
    fit_target,
    lab_stats,
    load_normaliser,
)

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
# Macenko's reference H&E vectors (columns H, E; RGB optical density).
HE = np.array([[0.5626, 0.2159], [0.7201, 0.8012], [0.4062, 0.5581]])


def rendered(seed: int, haematoxylin: float = 1.0, eosin: float = 0.6, size: int = 64) -> np.ndarray:
    """An H&E-like (size, size, 3) uint8 image: random stain concentrations rendered with `HE`."""
    rng = np.random.default_rng(seed)
    concentrations = rng.gamma(2.0, [[haematoxylin / 2], [eosin / 2]], size=(2, size * size))
    pixels = 240 * np.exp(-(HE @ concentrations))
    return np.clip(pixels.T.reshape(size, size, 3), 0, 255).astype(np.uint8)


def optical_density(image: np.ndarray) -> np.ndarray:
    return -np.log((image.reshape(-1, 3).astype(np.float64) + 1) / 256)


def density_stats(image: np.ndarray) -> np.ndarray:
    """Mean and standard deviation of each channel's optical density: stain colour and amount."""
    od = optical_density(image)
    return np.concatenate([od.mean(axis=0), od.std(axis=0)])


def stain_colour(image: np.ndarray) -> np.ndarray:
    """Mean and spread of the stained pixels' optical-density directions: the stains' colour
    whatever their amount (which also depends on how many nuclei an image holds)."""
    od = optical_density(image)
    norm = np.linalg.norm(od, axis=1)
    direction = od[norm > 0.3] / norm[norm > 0.3, None]
    return np.concatenate([direction.mean(axis=0), direction.std(axis=0)])


@pytest.mark.skipif(not (DATA / "consep").is_dir() or not (DATA / "monuseg").is_dir(), reason="real data not present")
@pytest.mark.parametrize("method", ["macenko", "reinhard"])
@pytest.mark.parametrize("swap", [False, True], ids=["monuseg-to-consep", "consep-to-monuseg"])
def test_a_real_image_moves_toward_the_other_datasets_colours(method, swap):
    """A 256 px MoNuSeg crop normalised toward a CoNSeP patch, and the reverse: its colour
    statistics move toward the target's. Reinhard matches LAB means and spreads exactly;
    Macenko matches stain colours and the 99th-percentile amounts, so the mean amount, which
    follows the image's content, moves less."""
    monuseg = read_image(DATA / "monuseg" / "train" / "TCGA-21-5784-01Z-00-DX1" / "image.tif")[:256, :256]
    consep = read_image(DATA / "consep" / "train" / "train_10_000" / "image.tif")
    image, reference = (consep, monuseg) if swap else (monuseg, consep)
    out = StainNormaliser(fit_target(reference, method, "reference"))(image, "image")
    assert out.shape == image.shape and out.dtype == np.uint8
    limits = {stain_colour: 0.5, density_stats: 0.75, **({lab_stats: 0.1} if method == "reinhard" else {})}
    for stats, limit in limits.items():
        before = np.linalg.norm(stats(image) - stats(reference))
        after = np.linalg.norm(stats(out) - stats(reference))
        assert after < limit * before, (stats.__name__, before, after)


def test_target_round_trips_through_json(tmp_path):
    target = fit_target(rendered(0), "macenko", "ref.tif")
    target.write(tmp_path / "reference.json")
    assert StainTarget.read(tmp_path / "reference.json") == target
    normalise = load_normaliser(str(tmp_path / "reference.json"))
    np.testing.assert_array_equal(normalise(rendered(1)), StainNormaliser(target)(rendered(1)))


def test_no_target_leaves_images_unchanged():
    image = rendered(1)
    assert load_normaliser([])(image, "x") is image  # a rule's empty input: stain.method none


def test_normalising_toward_an_images_own_target_keeps_it_close():
    image = rendered(3)
    out = StainNormaliser(fit_target(image, "macenko", "self"))(image)
    assert np.abs(out.astype(int) - image).mean() < 3


@pytest.mark.parametrize("method", ["macenko", "reinhard"])
def test_blank_reference_fails_naming_the_file(method):
    white = np.full((64, 64, 3), 255, np.uint8)
    with pytest.raises(DataError, match=r"^white\.png: cannot fit a stain reference: no colour contrast"):
        fit_target(white, method, "white.png")


def test_background_only_reference_fails_for_macenko_only():
    """Pale noise has colour contrast (Reinhard fits) but almost no stained pixels."""
    pale = np.random.default_rng(0).integers(200, 256, size=(64, 64, 3)).astype(np.uint8)
    assert fit_target(pale, "reinhard", "pale.tif").method == "reinhard"
    with pytest.raises(DataError, match=r"^pale\.tif: cannot fit a Macenko stain reference: \d+ stained pixels"):
        fit_target(pale, "macenko", "pale.tif")


def test_a_reference_whose_stains_cannot_be_separated_fails_naming_the_file(monkeypatch):
    def singular(*args, **kwargs):
        raise np.linalg.LinAlgError("Eigenvalues did not converge")

    monkeypatch.setattr("cellseg.data.stain.NumpyMacenkoNormalizer.fit", singular)
    with pytest.raises(DataError, match=r"^odd\.tif: cannot fit a Macenko stain reference: no two stains found$"):
        fit_target(rendered(0), "macenko", "odd.tif")


def test_macenko_falls_back_on_background_tiles(caplog):
    normalise = StainNormaliser(fit_target(rendered(0), "macenko", "ref"))
    pale = np.random.default_rng(0).integers(200, 256, size=(64, 64, 3)).astype(np.uint8)
    white = np.full((64, 64, 3), 255, np.uint8)
    with caplog.at_level(logging.INFO, logger="cellseg.data.stain"):
        assert not np.array_equal(normalise(pale, "pale"), pale)
        assert normalise(white, "white") is white
    assert re.search(r"pale: \d+ stained pixels, too few for Macenko; Reinhard used", caplog.text)
    assert "white: no colour contrast" in caplog.text and "left unnormalised" in caplog.text


def test_dataset_target_is_the_most_typical_fittable_image(caplog):
    """Of images stained ever more heavily the middle one is the most typical. Too small to fit
    Macenko on (fewer stained pixels than it needs), it is skipped for the next most typical;
    no fittable image at all is an error."""
    images = {f"img{k}": rendered(k, haematoxylin=0.5 + 0.3 * k) for k in range(5)}
    assert fit_dataset_target(sorted(images), images.get, "macenko").reference == "img2"
    images["img2"] = rendered(2, haematoxylin=1.1, size=24)
    with caplog.at_level(logging.INFO, logger="cellseg.data.stain"):
        assert fit_dataset_target(sorted(images), images.get, "macenko").reference in {"img1", "img3"}
    assert "skipped as stain reference: img2: cannot fit a Macenko stain reference" in caplog.text
    white = np.full((64, 64, 3), 255, np.uint8)
    with pytest.raises(DataError, match="no training image can be fitted as a macenko stain reference; set stain.reference"):
        fit_dataset_target(["a", "b"], lambda image_id: white, "macenko")
