"""minarn.bn_statistics: batch norm's moving statistics recomputed at the current weights."""

from __future__ import annotations

import numpy as np
import pytest

import minarn
from minarn.bn_statistics import (
    batchnorm_layers,
    moving_statistics,
    recompute_batchnorm_statistics,
    set_moving_statistics,
)


def small_model(seed: int = 0) -> minarn.ARNCNN:
    return minarn.ARNCNN(num_classes=3, input_shape=(32, 32, 1), seed=seed, dtype=np.float64)


def images(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, 32, 32, 1), dtype=np.uint8)


def test_one_batch_makes_inference_equal_training_mode():
    """With the statistics of exactly this batch, inference mode computes what training mode computes."""
    model, x = small_model(), images(7, 1)
    recompute_batchnorm_statistics(model, x, batch_size=7)
    inference = model.features(model._prepare(x), training=False)
    training = model.features(model._prepare(x), training=True)
    np.testing.assert_allclose(inference, training, rtol=1e-9, atol=1e-9)
    untouched = small_model()  # the initial moving statistics (0, 1) give something else
    assert not np.allclose(untouched.features(untouched._prepare(x), training=False), training, atol=1e-3)


def test_several_batches_average_the_batch_statistics():
    model, x = small_model(), images(10, 2)
    expected: dict[str, list[np.ndarray]] = {bn.name: [np.zeros(bn.channels), np.zeros(bn.channels)]
                                             for bn in batchnorm_layers(model)}
    probe = small_model()
    for part in (x[:4], x[4:8], x[8:]):  # batches of 4, 4 and 2: weighted by their size
        probe.features(probe._prepare(part), training=True)
        for bn in batchnorm_layers(probe):
            # the forward pass above moved the moving statistics by 0.01 * batch value: read the batch value
            # back from the layer's input instead
            x2 = bn._cache[0]
            expected[bn.name][0] += len(part) * x2.mean(axis=0)
            expected[bn.name][1] += len(part) * x2.var(axis=0)
    recompute_batchnorm_statistics(model, x, batch_size=4)
    got = moving_statistics(model)
    for name, (mean_sum, var_sum) in expected.items():
        np.testing.assert_allclose(got[name][0], mean_sum / 10, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(got[name][1], var_sum / 10, rtol=1e-10, atol=1e-12)


def test_only_the_moving_statistics_change_and_can_be_put_back():
    model = small_model()
    before = model.state_dict()
    momenta = [bn.momentum for bn in batchnorm_layers(model)]
    old = recompute_batchnorm_statistics(model, images(6, 3), batch_size=3)
    after = model.state_dict()
    changed = {k for k in before if not np.array_equal(before[k], after[k])}
    assert changed == {f"{bn.name}/{s}" for bn in batchnorm_layers(model) for s in ("moving_mean", "moving_variance")}
    assert [bn.momentum for bn in batchnorm_layers(model)] == momenta
    set_moving_statistics(model, old)
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(v, before[k], err_msg=k)


def test_a_failure_midway_leaves_the_model_as_it_was(monkeypatch):
    model = small_model()
    before = model.state_dict()
    calls = []

    def failing_features(x, training=False):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("boom")
        return original(x, training)

    original = model.features
    monkeypatch.setattr(model, "features", failing_features)
    with pytest.raises(RuntimeError, match="boom"):
        recompute_batchnorm_statistics(model, images(6, 4), batch_size=3)
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(v, before[k], err_msg=k)
    assert all(bn.momentum == 0.99 for bn in batchnorm_layers(model))


@pytest.mark.parametrize("shape", [(0, 32, 32, 1), (5, 32, 32)])
def test_bad_images(shape):
    with pytest.raises(ValueError, match=r"recompute_batchnorm_statistics: expected images of shape \(N, H, W, C\)"):
        recompute_batchnorm_statistics(small_model(), np.zeros(shape, np.uint8))


def test_bad_batch_size_and_missing_layer():
    model = small_model()
    with pytest.raises(ValueError, match="batch_size must be >= 1, got 0"):
        recompute_batchnorm_statistics(model, images(2, 5), batch_size=0)
    with pytest.raises(KeyError, match="no statistics for layer 'batch_normalization_1'"):
        set_moving_statistics(model, {"batch_normalization": moving_statistics(model)["batch_normalization"]})
