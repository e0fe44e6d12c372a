"""Run-folder plots: PNG files of the documented size that show the data they were given."""
import warnings

import numpy as np
import pytest
from matplotlib import colormaps, colors
from PIL import Image

from egmf.pipeline.plots import (
    EXPERT_COLOURS, plot_confusion_matrix, plot_expert_gates, plot_learning_curves, plot_regression)


def read_png(path) -> np.ndarray:
    with Image.open(path) as image:
        assert image.format == "PNG"
        return np.asarray(image.convert("RGB")).astype(int)  # (H, W, 3)


def pixels_near(image: np.ndarray, colour, tolerance: int = 3) -> int:
    target = np.round(np.asarray(colors.to_rgb(colour)) * 255)
    return int((np.abs(image - target).max(axis=-1) <= tolerance).sum())


def test_learning_curves(tmp_path):
    history = [{"epoch": 1, "train_loss": 2.0, "dev": {"Weighted_F1": 0.40}},
               {"epoch": 2, "train_loss": 1.2, "dev_loss": 1.4, "dev": {"Weighted_F1": 0.55}},
               {"epoch": 3, "train_loss": 0.9, "dev_loss": 1.5, "dev": {"Weighted_F1": None}}]
    path = plot_learning_curves(history, tmp_path / "run" / "curves.png", metric="dev/Weighted_F1")
    image = read_png(path)
    assert image.shape == (400, 1000, 3)
    assert image.std() > 10  # something was drawn
    with pytest.raises(ValueError, match="history is empty"):
        plot_learning_curves([], tmp_path / "empty.png", metric="dev/MAE")


def test_confusion_matrix_is_normalised_per_true_class(tmp_path):
    # Per true class: neutral 0.9 / 0.1, joy 0.5 / 0.5. Normalised by column or not at all, no cell would be 0.5.
    path = plot_confusion_matrix([[90, 10], [1, 1]], ["neutral", "joy"], tmp_path / "confusion.png")
    image = read_png(path)
    assert image.shape == (500, 500, 3)
    blues = colormaps["Blues"]
    half, dark, light = pixels_near(image, blues(0.5)), pixels_near(image, blues(0.9)), pixels_near(image, blues(0.1))
    assert dark > 5000 and light > 5000  # one cell each
    assert half == pytest.approx(2 * dark, rel=0.2)  # two cells at 0.5


def test_confusion_matrix_size_grows_with_classes_and_survives_chinese_names(tmp_path):
    names = ["愤怒", "厌恶", "恐惧", "高兴", "平静", "悲伤", "惊奇"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no missing-glyph warnings, whatever fonts this machine has
        path = plot_confusion_matrix(np.eye(7, dtype=int) * 3, names, tmp_path / "cherma.png")
    assert read_png(path).shape == (710, 710, 3)  # 1.5 + 0.8 * 7 inches at 100 dpi
    with pytest.raises(ValueError, match=r"expected \(3, 3\)"):
        plot_confusion_matrix(np.eye(2), ["a", "b", "c"], tmp_path / "bad.png")


def test_expert_gates_show_the_weights_of_each_class(tmp_path):
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, size=30)
    local_only = np.tile([1.0, 0.0, 0.0], (30, 1))  # (N, 3)
    path = plot_expert_gates(local_only, labels, ["neutral", "joy", "anger"], tmp_path / "gates.png")
    image = read_png(path)
    assert image.shape == (450, 600, 3)
    local, semantic, global_ = (pixels_near(image, c) for c in EXPERT_COLOURS)
    assert local > 20 * max(semantic, global_)  # only the legend shows the other two experts


def test_regression_scatter(tmp_path):
    rng = np.random.default_rng(0)
    truth = rng.uniform(-3, 3, size=50)
    path = plot_regression(truth, truth + rng.normal(0, 0.3, size=50), tmp_path / "scatter.png", (-3.0, 3.0))
    image = read_png(path)
    assert image.shape == (600, 600, 3)
    bluish = int((image[..., 2] - image[..., 0] > 40).sum())  # translucent blue points over white
    assert bluish > 300
    with pytest.raises(ValueError, match="50 true scores but 3 predictions"):
        plot_regression(truth, [0.0, 1.0, 2.0], tmp_path / "bad.png", (-3.0, 3.0))
