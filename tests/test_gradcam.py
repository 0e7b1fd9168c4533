"""Grad-CAM (minarn.gradcam): the class-score gradient against a numeric derivative, the map, the guards."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from minarn.gradcam import (
    cam_from_maps,
    class_score_gradient,
    gradcam,
    head_logits,
    overlay,
    score_gradient_from_features,
    upsample,
)
from minarn.gradcheck import rel_error
from minarn.model import ARNCNN


@pytest.fixture(scope="module")
def model64() -> ARNCNN:
    return ARNCNN(seed=3, dtype=np.float64)


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return np.random.default_rng(0).random((2, 64, 64, 1))


@pytest.fixture(scope="module")
def feats(model64: ARNCNN, images: np.ndarray) -> np.ndarray:
    """conv2d_22's map of ``images`` (one float64 forward pass, shared: the conv part is the slow bit)."""
    return model64.features(images, training=False)


def test_head_from_features_equals_model_logits(model64: ARNCNN, images: np.ndarray, feats: np.ndarray) -> None:
    assert feats.shape == (2, 5, 5, 125) and feats.min() >= 0  # conv2d_22's post-ReLU map
    logits = model64.logits(images, training=False)
    np.testing.assert_allclose(head_logits(model64, feats), logits, rtol=1e-12)
    # the full path (features + head + backward) agrees with the split one
    A, dA, full_logits, _ = class_score_gradient(model64, images, 2)
    np.testing.assert_allclose(A, feats, rtol=1e-12)
    np.testing.assert_allclose(full_logits, logits, rtol=1e-12)
    np.testing.assert_allclose(dA, score_gradient_from_features(model64, feats, 2)[0], rtol=1e-12)


@pytest.mark.parametrize("pick", ["top", "other"])
def test_class_score_gradient_matches_numeric_derivative(model64: ARNCNN, feats: np.ndarray, pick: str) -> None:
    """d logit_c / dA from backward_head equals central differences of the head, entry by entry (all 3125)."""
    A = feats[:1]
    top = int(head_logits(model64, A).argmax())
    c = top if pick == "top" else (top + 3) % 6
    dA, logits, classes = score_gradient_from_features(model64, A, None if pick == "top" else c)
    assert int(classes[0]) == c and int(logits[0].argmax()) == top
    a = A[0].ravel()
    eps = 1e-6
    bumps = np.eye(a.size) * eps  # one perturbed copy of A per entry, evaluated as one batch
    plus = head_logits(model64, (a + bumps).reshape(-1, *A.shape[1:]))[:, c]
    minus = head_logits(model64, (a - bumps).reshape(-1, *A.shape[1:]))[:, c]
    numeric = ((plus - minus) / (2 * eps)).reshape(A.shape[1:])
    assert np.abs(dA[0]).max() > 0
    assert rel_error(dA[0], numeric) < 1e-6


def test_batch_gradient_is_per_image(model64: ARNCNN, feats: np.ndarray) -> None:
    dA_batch, _, classes = score_gradient_from_features(model64, feats, np.array([1, 4]))
    for n in range(2):
        dA_one, _, _ = score_gradient_from_features(model64, feats[n : n + 1], int(classes[n]))
        np.testing.assert_allclose(dA_batch[n], dA_one[0], rtol=1e-10, atol=1e-14)


def test_dropout_is_off(model64: ARNCNN, feats: np.ndarray) -> None:
    """Grad-CAM runs the head in inference mode: the same map twice, despite dropout 0.45."""
    assert model64.dropout.rate > 0
    first = score_gradient_from_features(model64, feats)
    second = score_gradient_from_features(model64, feats)
    np.testing.assert_array_equal(first[0], second[0])
    np.testing.assert_array_equal(first[2], first[1].argmax(axis=1))


def test_cam_formula_against_loops() -> None:
    rng = np.random.default_rng(1)
    A = np.maximum(rng.standard_normal((2, 5, 5, 7)), 0)
    dA = rng.standard_normal((2, 5, 5, 7))
    cam = cam_from_maps(A, dA)
    for n in range(2):
        alpha = [dA[n, :, :, k].mean() for k in range(7)]
        raw = np.maximum(sum(alpha[k] * A[n, :, :, k] for k in range(7)), 0)
        np.testing.assert_allclose(cam[n], raw / raw.max())
        assert cam[n].max() == pytest.approx(1.0) and cam[n].min() >= 0


def test_all_zero_cam_is_guarded() -> None:
    """No position votes for the class (all weighted sums <= 0): zeros, not 0/0 = NaN, and no warning."""
    rng = np.random.default_rng(2)
    A = np.abs(rng.standard_normal((1, 5, 5, 4)))
    dA = -np.abs(rng.standard_normal((1, 5, 5, 4)))
    with warnings.catch_warnings(), np.errstate(all="raise"):
        warnings.simplefilter("error")
        cam = cam_from_maps(A, dA)
        assert np.array_equal(cam, np.zeros((1, 5, 5)))
        heat = upsample(cam[0], (64, 64))
    assert np.array_equal(heat, np.zeros((64, 64), np.float32))
    assert np.array_equal(cam_from_maps(np.zeros((1, 5, 5, 4)), dA), np.zeros((1, 5, 5)))


def test_upsample_keeps_range_and_constants() -> None:
    cam = np.random.default_rng(3).random((5, 5))
    up = upsample(cam, (64, 64))
    assert up.shape == (64, 64) and up.dtype == np.float32
    assert cam.min() - 1e-6 <= up.min() and up.max() <= cam.max() + 1e-6
    np.testing.assert_allclose(upsample(np.full((5, 5), 0.25), (64, 48)), 0.25, rtol=1e-6)
    # pixel centres aligned: the top-left output block repeats the corner value
    np.testing.assert_allclose(up[0, 0], cam[0, 0], rtol=1e-6)


def test_overlay_blends_jet_over_gray() -> None:
    img = np.arange(64 * 64, dtype=np.float64).reshape(64, 64) / (64 * 64)
    heat = np.zeros((64, 64))
    out = overlay((img * 255).astype(np.uint8)[..., None], heat, alpha=0.0)
    assert out.shape == (64, 64, 3) and 0 <= out.min() and out.max() <= 1
    np.testing.assert_allclose(out[..., 0], np.floor(img * 255) / 255)
    red = overlay(np.zeros((64, 64)), np.ones((64, 64)), alpha=0.4)  # jet(1) is dark red
    assert red[..., 0].mean() > 0.15 and red[..., 2].mean() < 0.05
    with pytest.raises(ValueError, match="same"):
        overlay(np.zeros((64, 64)), np.zeros((5, 5)))


def test_gradcam_end_to_end_uint8() -> None:
    model = ARNCNN(seed=0)
    imgs = np.random.default_rng(4).integers(0, 256, (3, 64, 64, 1), dtype=np.uint8)
    res = gradcam(model, imgs, class_index=2)
    np.testing.assert_allclose(res.probs, model.predict(imgs), rtol=1e-5)
    assert res.cam.shape == (3, 5, 5) and res.heatmap.shape == (3, 64, 64)
    assert np.all(res.classes == 2) and res.weights.shape == (3, 125)
    assert np.all((res.heatmap >= 0) & (res.heatmap <= 1)) and not np.isnan(res.heatmap).any()
    assert res.overlays(imgs).shape == (3, 64, 64, 3)
    top = gradcam(model, imgs[:1])
    assert top.classes[0] == res.probs[0].argmax()
    with pytest.raises(ValueError, match="class_index"):
        gradcam(model, imgs[:1], class_index=6)
