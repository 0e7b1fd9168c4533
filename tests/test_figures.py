"""Figures (minarn.figures): every function writes a valid PNG of sensible size; matplotlib stays lazy."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from run_fixture import assert_png

from minarn import figures
from minarn.data import MEDNIST_CLASSES
from minarn.gradcam import gradcam
from minarn.model import ARNCNN

NAMES = list(MEDNIST_CLASSES)


@pytest.fixture(scope="module")
def sample() -> tuple[np.ndarray, np.ndarray]:
    """Two real MedNIST images per class from the shipped sample (no cache, no split)."""
    from PIL import Image

    from minarn.data import sample_path

    images, labels = [], []
    for k, name in enumerate(NAMES):
        for f in sorted((sample_path() / name).iterdir())[:2]:
            with Image.open(f) as img:
                images.append(np.asarray(img.convert("L"), dtype=np.uint8)[..., None])
            labels.append(k)
    return np.stack(images), np.array(labels)


def _history(epochs: int, scale: float = 1.0) -> list[dict]:
    return [{"epoch": i, "loss": scale * 5 / i, "accuracy": 1 - 0.5 / i, "val_loss": scale * 6 / i,
             "val_accuracy": 1 - 0.6 / i, "lr": 1e-3 * 0.5 ** max(0, i - 4), "next_lr": 1e-3, "monitor": "val_loss",
             "improvement": 1.0, "duration": 1.0}
            for i in range(1, epochs + 1)]


def test_import_minarn_does_not_import_matplotlib() -> None:
    code = ("import sys, minarn, minarn.figures, minarn.gradcam, minarn.evaluate, minarn.predict; "
            "assert 'matplotlib' not in sys.modules, 'matplotlib imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_activation_functions(tmp_path: Path) -> None:
    assert_png(figures.activation_functions(tmp_path / "fig4.png"))


def test_sample_images_and_label_frequency(tmp_path: Path, sample: tuple[np.ndarray, np.ndarray]) -> None:
    images, labels = sample
    assert_png(figures.sample_images(images, labels, NAMES, tmp_path / "fig5.png", per_class=2))
    counts = {"train": [9000, 8058, 9000, 9000, 9000, 9000], "valid": [600, 537, 600, 600, 600, 600],
              "test": [400, 359, 400, 400, 400, 400]}
    assert_png(figures.label_frequency(counts, NAMES, tmp_path / "fig6.png"))


def test_learning_curves_and_read_history(tmp_path: Path) -> None:
    import csv

    rows = _history(6)
    path = tmp_path / "history.csv"
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    back = figures.read_history(path)
    assert back[2]["epoch"] == 3 and back[2]["loss"] == pytest.approx(5 / 3) and back[2]["monitor"] == "val_loss"
    assert_png(figures.learning_curves(back, tmp_path / "fig7.png", best_epoch=5, title="synthetic"))
    with pytest.raises(ValueError, match="empty"):
        figures.learning_curves([], tmp_path / "none.png")


def test_dense_activation_losses(tmp_path: Path) -> None:
    runs = [("gelu", _history(8)), ("relu", _history(5, 1.3)), ("swish", _history(3, 0.9))]
    assert_png(figures.dense_activation_losses(runs, tmp_path / "fig10.png"))


def test_loss_per_epoch(tmp_path: Path) -> None:
    runs = [("123", _history(8)), ("7", _history(5, 1.3))]
    assert_png(figures.loss_per_epoch(runs, tmp_path / "seeds.png", "seed", "Loss per epoch by seed"))
    with pytest.raises(ValueError, match="no runs"):
        figures.loss_per_epoch([], tmp_path / "none.png", "seed", "nothing")


def test_confusion_and_reliability(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(6), 20)
    logits = rng.standard_normal((120, 6)) + 2.5 * np.eye(6)[y]
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    assert (probs.argmax(axis=1) != y).any()  # some errors to draw
    assert_png(figures.confusion_and_confidence(y, probs, NAMES, tmp_path / "fig8.png"))
    assert_png(figures.reliability_diagram(y, probs, tmp_path / "rel.png"))


def test_gradcam_and_attention(tmp_path: Path, sample: tuple[np.ndarray, np.ndarray]) -> None:
    images, labels = sample
    model = ARNCNN(seed=0)
    res = gradcam(model, images[::2])
    assert_png(figures.gradcam_grid(images[::2], res, NAMES, tmp_path / "fig9.png", y_true=labels[::2]))
    assert_png(figures.attention_illustration(model, images[:4:2], tmp_path / "fig3.png", labels[:4:2], NAMES))
    assert_png(figures.attention_illustration(model, images[:1], tmp_path / "fig3c.png", channel=5),
               min_size=(300, 150))
    with pytest.raises(ValueError, match="no attention"):
        figures.attention_illustration(ARNCNN(seed=0, attention=False), images[:1], tmp_path / "x.png")


def test_gradcam_title_states_the_map_size_used(sample: tuple[np.ndarray, np.ndarray]) -> None:
    images, _ = sample
    res64 = gradcam(ARNCNN(seed=0), images[:1])
    title = figures.gradcam_title(res64, images[:1])
    assert title.startswith("Fig. 9 - Grad-CAM (5x5 map of conv2d_22, upsampled to 64x64)")
    small = images[:1, 8:56, 8:56]  # a 48x48 crop for a 48x48 model: conv2d_22's map is 3x3 there
    res48 = gradcam(ARNCNN(seed=0, input_shape=(48, 48, 1)), small)
    assert "3x3 map of conv2d_22, upsampled to 48x48" in figures.gradcam_title(res48, small)
    custom = figures.gradcam_title(res48, small, "Two classes")
    assert custom == "Two classes\n(Grad-CAM: 3x3 map of conv2d_22, upsampled to 48x48)"
