"""BatchNormalization: gradients in training and inference, normalised output, Keras' moving-statistics rule
(biased variance), inference with the moving statistics, initial values."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import example, given
from strategies import GRAD_TOL, SEEDS, BNCase, bn_cases, random_dout, uniform

from minarn.gradcheck import check_layer, numeric_grad, rel_error
from minarn.layers import BatchNormalization


def bn_reference(x, gamma, beta, mean, var, eps):
    mean, var = np.asarray(mean), np.asarray(var)
    return gamma * (x - mean) / np.sqrt(var + eps) + beta


@given(case=bn_cases(min_per_channel=3), seed=SEEDS)
@example(case=BNCase(shape=(3, 1, 1, 2), momentum=0.9), seed=0)  # conv-style, few values per channel
def test_bn_gradients_training(case, seed):
    rng = np.random.default_rng(seed)
    layer, x = case.build(rng)
    errors = check_layer(layer, x, rng, training=True)
    assert set(errors) == {"x", "gamma", "beta"}
    assert max(errors.values()) < GRAD_TOL, errors


@pytest.mark.parametrize("shape", [(1, 3), (2, 3), (1, 1, 1, 2), (2, 1, 1, 2), (1, 2, 1, 1)])
def test_bn_gradients_training_one_or_two_values_per_channel(shape):
    # With one value per channel x_hat = 0 whatever x is; with two, x_hat = +-sqrt(var / (var + eps)), about
    # +-1 whatever x is: dx is (nearly) 0 and a norm-relative error would only compare rounding noise.
    rng = np.random.default_rng(7)
    layer, x = BNCase(shape).build(rng)
    dout = random_dout(rng, shape)
    layer.forward(x, training=True)
    dx = layer.backward(dout)
    numeric = numeric_grad(lambda: layer.forward(x, training=True), x, dout)
    np.testing.assert_allclose(dx, numeric, rtol=0, atol=1e-7)
    if int(np.prod(shape[:-1])) == 1:
        np.testing.assert_array_equal(dx, 0.0)
    for key in ("gamma", "beta"):
        grad = layer.grads[key].copy()
        numeric = numeric_grad(lambda: layer.forward(x, training=True), layer.params[key], dout)
        assert rel_error(grad, numeric) < GRAD_TOL


@given(case=bn_cases(), seed=SEEDS)
@example(case=BNCase(shape=(1, 3)), seed=1)
def test_bn_gradients_inference(case, seed):
    rng = np.random.default_rng(seed)
    layer, x = case.build(rng)
    errors = check_layer(layer, x, rng, training=False)
    assert max(errors.values()) < GRAD_TOL, errors


@given(case=bn_cases(min_per_channel=2), seed=SEEDS)
@example(case=BNCase(shape=(2, 1)), seed=2)
def test_bn_training_output_is_normalised_per_channel(case, seed):
    rng = np.random.default_rng(seed)
    layer = BatchNormalization(case.channels, dtype=np.float64)
    layer.state["moving_mean"][...] = 5.0  # must not matter in training
    x = uniform(rng, case.shape) * rng.uniform(0.5, 3, case.channels) + rng.uniform(-2, 2, case.channels)
    out = layer.forward(x, training=True)
    axes = tuple(range(x.ndim - 1))
    var = x.var(axis=axes)
    np.testing.assert_allclose(out.mean(axis=axes), 0.0, atol=1e-10)
    # Biased variance, and epsilon inside the square root: var(out) = var / (var + eps), about 1.
    np.testing.assert_allclose(out.var(axis=axes), var / (var + layer.epsilon), rtol=1e-8)
    assert np.all(np.abs(out.var(axis=axes) - 1) < 0.01 + layer.epsilon / var)


@given(case=bn_cases(), seed=SEEDS)
@example(case=BNCase(shape=(3, 2, 2, 2)), seed=3)
def test_bn_training_forward_formula(case, seed):
    rng = np.random.default_rng(seed)
    layer, x = case.build(rng)
    out = layer.forward(x, training=True)
    axes = tuple(range(x.ndim - 1))
    p = layer.params
    expected = bn_reference(x, p["gamma"], p["beta"], x.mean(axis=axes), x.var(axis=axes), layer.epsilon)
    np.testing.assert_allclose(out, expected, rtol=1e-12, atol=1e-12)


def test_bn_conv_maps_normalise_over_batch_and_space():
    # Per channel over (N, H, W): the same as flattening to (N*H*W, C).
    rng = np.random.default_rng(4)
    x = uniform(rng, (3, 4, 5, 2))
    a, b = BatchNormalization(2, dtype=np.float64), BatchNormalization(2, dtype=np.float64)
    out4 = a.forward(x, training=True)
    out2 = b.forward(x.reshape(-1, 2), training=True)
    np.testing.assert_allclose(out4.reshape(-1, 2), out2, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(a.state["moving_variance"], b.state["moving_variance"], rtol=1e-12)
    dout = random_dout(rng, x.shape)
    dx4 = a.backward(dout)
    dx2 = b.backward(dout.reshape(-1, 2))
    np.testing.assert_allclose(dx4.reshape(-1, 2), dx2, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("momentum", [0.0, 0.5, 0.9, 0.99, 1.0])
def test_bn_moving_statistics_update_rule(momentum):
    rng = np.random.default_rng(5)
    layer = BatchNormalization(3, momentum=momentum, dtype=np.float64)
    mm, mv = np.zeros(3), np.ones(3)
    for _ in range(3):
        x = uniform(rng, (6, 2, 3)) * 2 + 1
        layer.forward(x, training=True)
        mean, var = x.mean(axis=(0, 1)), ((x - x.mean(axis=(0, 1))) ** 2).mean(axis=(0, 1))  # biased
        mm = momentum * mm + (1 - momentum) * mean
        mv = momentum * mv + (1 - momentum) * var
        np.testing.assert_allclose(layer.state["moving_mean"], mm, rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(layer.state["moving_variance"], mv, rtol=1e-12, atol=1e-14)
    if momentum < 1.0:  # the rule uses the biased variance, not the unbiased one
        assert not np.allclose(layer.state["moving_variance"], 1.0)


def test_bn_moving_variance_is_biased():
    layer = BatchNormalization(1, momentum=0.0, dtype=np.float64)
    layer.forward(np.array([[1.0], [3.0]]), training=True)
    assert layer.state["moving_mean"][0] == pytest.approx(2.0)
    assert layer.state["moving_variance"][0] == pytest.approx(1.0)  # unbiased would be 2.0


def test_bn_inference_uses_moving_statistics_and_does_not_update_them():
    rng = np.random.default_rng(6)
    layer = BatchNormalization(2, dtype=np.float64)
    layer.params["gamma"][...] = [1.5, -0.5]
    layer.params["beta"][...] = [0.1, 0.2]
    layer.state["moving_mean"][...] = [0.3, -1.0]
    layer.state["moving_variance"][...] = [2.0, 0.5]
    x = uniform(rng, (4, 3, 3, 2))
    out = layer.forward(x, training=False)
    expected = bn_reference(x, layer.params["gamma"], layer.params["beta"], [0.3, -1.0], [2.0, 0.5], layer.epsilon)
    np.testing.assert_allclose(out, expected, rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(layer.state["moving_mean"], [0.3, -1.0])
    np.testing.assert_array_equal(layer.state["moving_variance"], [2.0, 0.5])
    # training mode ignores the moving statistics: the flag changes the result
    assert not np.allclose(layer.forward(x, training=True), out)


def test_bn_initial_values_and_dtypes():
    layer = BatchNormalization(4)
    np.testing.assert_array_equal(layer.params["gamma"], np.ones(4))
    np.testing.assert_array_equal(layer.params["beta"], np.zeros(4))
    np.testing.assert_array_equal(layer.state["moving_mean"], np.zeros(4))
    np.testing.assert_array_equal(layer.state["moving_variance"], np.ones(4))
    assert set(layer.params) == {"gamma", "beta"} and set(layer.state) == {"moving_mean", "moving_variance"}
    assert all(a.dtype == np.float32 for a in (*layer.params.values(), *layer.state.values()))
    assert layer.momentum == 0.99 and layer.epsilon == 1e-3  # Keras defaults
    assert layer.count_params() == 16


@pytest.mark.parametrize("kwargs", [{"channels": 0}, {"momentum": 1.5}, {"momentum": -0.1}, {"epsilon": 0.0}])
def test_bn_bad_constructor_arguments(kwargs):
    with pytest.raises(ValueError):
        BatchNormalization(**{"channels": 3, **kwargs})
