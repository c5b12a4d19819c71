import matplotlib.image as mpimg
import numpy as np
import pandas as pd
import pytest

from cellseg.instances import InstanceSet
from cellseg.metrics import evaluate_predictions
from cellseg.report import (
    CLASS_COLOURS,
    GT_COLOUR,
    SUMMARY_METRICS,
    best_and_worst,
    plot_class_ap,
    plot_overlay,
    plot_pr_curve,
    plot_scores_table,
    plot_table,
)

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


def test_overlay_has_the_image_size_and_draws_contours(case, tmp_path):
    image, labels, preds = case
    plot_overlay(image, labels, preds, CLASSES, tmp_path / "o.png", title="img1 0.80")
    pixels = mpimg.imread(tmp_path / "o.png")[..., :3]
    assert pixels.shape[:2] == (200, 300)
    np.testing.assert_allclose(pixels[100, 40], GT_COLOUR, atol=0.01)  # ground truth only
    np.testing.assert_allclose(pixels[104, 40], CLASS_COLOURS[0], atol=0.01)  # prediction, class a
    np.testing.assert_allclose(pixels[150, 240], CLASS_COLOURS[1], atol=0.01)  # class b on top
    np.testing.assert_allclose(pixels[120, 40], 40 / 255, atol=0.01)  # inside: untouched


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
    scores = pd.DataFrame([{"model": "ensemble", "thresholds": t, **metrics} for t in ("default", "tuned")])
    plot_scores_table(scores, CLASSES, tmp_path / "scores.png")
    rows = len(SUMMARY_METRICS) + 2 * len(CLASSES)  # + per-class AP50@100 and PQ
    assert png_shape(tmp_path / "scores.png") == (round(100 * (0.3 * (rows + 1) + 0.2)), 600)


def test_best_and_worst_never_overlap():
    scores = pd.Series({"a": 0.9, "b": 0.1, "c": np.nan, "d": 0.5})
    assert best_and_worst(scores, 1) == (["a"], ["b"])
    assert best_and_worst(scores, 5) == (["a", "d"], ["b"])


def test_small_images_are_enlarged_by_an_integer_factor(tmp_path):
    image = np.zeros((40, 90, 3), np.uint8)
    labels = np.zeros((1, 40, 90), np.int32)
    labels[0, 10:20, 10:30] = 1
    plot_overlay(image, labels, InstanceSet.empty((40, 90)), ["class1"], tmp_path / "small.png")
    assert png_shape(tmp_path / "small.png") == (40 * 3, 90 * 3)
