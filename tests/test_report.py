import matplotlib.image as mpimg
import numpy as np
import pandas as pd
import pytest

from cellseg.common.instances import InstanceSet
from cellseg.outputs.report import (
    CLASS_COLOURS,
    HEADER_PX,
    MARGIN_PX,
    SUMMARY_METRICS,
    best_and_worst,
    overlay_zoom,
    plot_class_ap,
    plot_overlay,
    plot_pr_curve,
    plot_scores_table,
    plot_table,
    training_warnings,
)
from cellseg.scoring.metrics import evaluate_predictions

CLASSES = ["a", "b"]


@pytest.fixture(scope="module")
def case():
    labels = np.zeros((2, 200, 300), np.int32)
    labels[0, 100:140, 20:60] = 1
    labels[1, 150:190, 200:280] = 1
    masks = np.zeros((2, 200, 300), np.float32)
    masks[0, 104:140, 20:64] = 0.9
    masks[1, 150:190, 200:280] = 0.8
    preds = InstanceSet.from_dense(np.zeros((2, 4)), [0.9, 0.8], [1, 2], masks)
    image = np.full((200, 300, 3), 40, np.uint8)
    return image, labels, preds


def png_shape(path):
    assert path.stat().st_size > 0
    return mpimg.imread(path).shape[:2]


def panel_pixel(pixels, panel: int, y: int, x: int, zoom: int, width: int):
    """The first figure pixel of image pixel (y, x) in panel 0 (ground truth) or 1 (prediction)."""
    return pixels[HEADER_PX + y * zoom, MARGIN_PX + panel * (width * zoom + MARGIN_PX) + x * zoom]


def test_overlay_shows_truth_and_prediction_side_by_side_in_class_colours(case, tmp_path):
    image, labels, preds = case
    plot_overlay(image, labels, preds, CLASSES, tmp_path / "o.png", title="img1 0.80")
    pixels = mpimg.imread(tmp_path / "o.png")[..., :3]
    zoom = overlay_zoom((200, 300))
    assert zoom == 2 and pixels.shape[1] == 2 * 300 * zoom + 3 * MARGIN_PX
    at = lambda panel, y, x: panel_pixel(pixels, panel, y, x, zoom, 300)  # noqa: E731
    np.testing.assert_allclose(at(0, 100, 40), CLASS_COLOURS[0], atol=0.01)  # truth's top edge, class a
    np.testing.assert_allclose(at(1, 100, 40), 40 / 255, atol=0.01)  # the prediction starts lower
    np.testing.assert_allclose(at(1, 104, 40), CLASS_COLOURS[0], atol=0.01)
    np.testing.assert_allclose(at(0, 150, 240), CLASS_COLOURS[1], atol=0.01)  # class b in both
    np.testing.assert_allclose(at(1, 150, 240), CLASS_COLOURS[1], atol=0.01)
    np.testing.assert_allclose(at(0, 120, 40), 40 / 255, atol=0.01)  # inside: untouched


def test_charts_are_written_at_their_size(case, tmp_path):
    image, labels, preds = case
    metrics, curve = evaluate_predictions([labels], [preds], CLASSES)
    plot_class_ap(metrics, CLASSES, tmp_path / "ap.png")
    plot_pr_curve(curve, tmp_path / "pr.png")
    assert png_shape(tmp_path / "ap.png") == (400, 600)
    assert png_shape(tmp_path / "pr.png") == (400, 600)
    table = pd.DataFrame({"metric": list(metrics), "value": list(metrics.values())})
    plot_table(table, tmp_path / "sub" / "table.png")
    height, width = png_shape(tmp_path / "sub" / "table.png")
    assert width == 600 and height == round(100 * (0.3 * (len(table) + 1) + 0.2))


def test_scores_table_has_a_row_per_metric(case, tmp_path):
    image, labels, preds = case
    metrics, _ = evaluate_predictions([labels], [preds], CLASSES)
    scores = pd.DataFrame([{"model": "ensemble", "thresholds": t, **metrics} for t in ("default", "leaderboard", "cells")])
    plot_scores_table(scores, CLASSES, tmp_path / "scores.png")
    rows = len(SUMMARY_METRICS) + 2 * len(CLASSES)  # + per-class AP50@100 and PQ
    assert png_shape(tmp_path / "scores.png") == (round(100 * (0.3 * (rows + 1) + 0.2)), 600)


def test_training_warnings_reach_the_scores_table(case, tmp_path):
    image, labels, preds = case
    summaries = {1: {"warnings": ["few optimizer steps: 6"]}, 0: {"warnings": []}}
    notes = training_warnings(summaries)
    assert notes == ["fold 1: few optimizer steps: 6"]
    metrics, _ = evaluate_predictions([labels], [preds], CLASSES)
    scores = pd.DataFrame([{"model": "ensemble", "thresholds": "default", **metrics}])
    plot_scores_table(scores, CLASSES, tmp_path / "plain.png")
    plot_scores_table(scores, CLASSES, tmp_path / "noted.png", notes=notes)
    plain, noted = mpimg.imread(tmp_path / "plain.png"), mpimg.imread(tmp_path / "noted.png")[..., :3]
    assert noted.shape[0] == plain.shape[0] + 18  # one short note, one line
    red = (noted[..., 0] > 0.5) & (noted[..., 1] < 0.3) & (noted[..., 2] < 0.3)
    assert red[plain.shape[0] - 10 :].any()


def test_best_and_worst_never_overlap():
    scores = pd.Series({"a": 0.9, "b": 0.1, "c": np.nan, "d": 0.5})
    assert best_and_worst(scores, 1) == (["a"], ["b"])
    assert best_and_worst(scores, 5) == (["a", "d"], ["b"])


def test_small_image_is_enlarged_with_title_and_legend_outside_it(tmp_path):
    """A 40 x 90 image: enlarged 7x (short side >= 256 px), its panels hold image pixels only."""
    image = np.full((40, 90, 3), 60, np.uint8)
    labels = np.zeros((1, 40, 90), np.int32)
    labels[0, 10:20, 10:30] = 1
    plot_overlay(image, labels, InstanceSet.empty((40, 90)), ["class1"], tmp_path / "small.png", title="worst: x")
    pixels = mpimg.imread(tmp_path / "small.png")[..., :3]
    zoom = overlay_zoom((40, 90))
    assert zoom == 7
    panels = pixels[HEADER_PX : HEADER_PX + 40 * zoom, MARGIN_PX : MARGIN_PX + 90 * zoom]
    colours = {tuple(np.round(c.astype(float), 2).tolist()) for c in panels.reshape(-1, 3)}
    assert colours == {(0.24, 0.24, 0.24), tuple(np.round(CLASS_COLOURS[0], 2).tolist())}  # no text on the image
    assert (pixels[:HEADER_PX] < 0.5).any() and (pixels[HEADER_PX + 40 * zoom :] < 0.5).any()  # title, legend


def test_zoom_keeps_large_images_and_caps_the_long_side():
    assert overlay_zoom((1000, 1000)) == 1
    assert overlay_zoom((68, 500)) == 2  # 4x would make the long side 2000 px
