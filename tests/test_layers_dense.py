"""Dense: gradients (input, kernel, bias), forward against loops, fused activations, initialisation."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import assume, example, given
from strategies import GRAD_TOL, SEEDS, SMOOTH_ACTIVATIONS, DenseCase, dense_cases, random_dout, uniform

from minarn.gradcheck import check_layer
from minarn.layers import ACTIVATIONS, Dense, get_activation


def dense_naive(x, kernel, bias):
    N, D = x.shape
    U = kernel.shape[1]
    out = np.zeros((N, U))
    for n in range(N):
        for u in range(U):
            out[n, u] = (0.0 if bias is None else bias[u]) + sum(x[n, d] * kernel[d, u] for d in range(D))
    return out


@given(case=dense_cases(activations=SMOOTH_ACTIVATIONS), seed=SEEDS)
@example(case=DenseCase(n=3, features=4, units=2, activation="softmax"), seed=0)
def test_dense_gradients(case, seed):
    rng = np.random.default_rng(seed)
    layer, x = case.build(rng)
    errors = check_layer(layer, x, rng)
    assert set(errors) == {"x", *layer.params}
    assert max(errors.values()) < GRAD_TOL, errors


@given(case=dense_cases(activations=("relu", "selu")), seed=SEEDS)
@example(case=DenseCase(n=2, features=3, units=3, activation="relu"), seed=1)
def test_dense_gradients_through_kinked_activation(case, seed):
    rng = np.random.default_rng(seed)
    layer, x = case.build(rng)
    z = dense_naive(x, layer.params["kernel"], layer.params.get("bias"))
    assume(np.abs(z).min() > 1e-3)  # no pre-activation within 1e-3 of the kink at 0
    errors = check_layer(layer, x, rng)
    assert max(errors.values()) < GRAD_TOL, errors


@given(case=dense_cases(), seed=SEEDS)
@example(case=DenseCase(n=1, features=1, units=1), seed=2)
def test_dense_forward_matches_loops(case, seed):
    rng = np.random.default_rng(seed)
    layer, x = case.build(rng)
    out = layer.forward(x)
    assert out.shape == (case.n, case.units)
    expected = dense_naive(x, layer.params["kernel"], layer.params.get("bias"))
    np.testing.assert_allclose(out, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("activation", [*ACTIVATIONS, None])
def test_fused_activation_equals_separate_activation(activation):
    rng = np.random.default_rng(3)
    fused = Dense(5, 4, activation=activation, seed=1, dtype=np.float64)
    plain = Dense(5, 4, activation=None, seed=1, dtype=np.float64)
    bias = rng.uniform(-1, 1, 4)
    fused.params["bias"][...] = bias
    plain.params["bias"][...] = bias
    act = get_activation(activation)
    x, dout = uniform(rng, (3, 5)), random_dout(rng, (3, 4))
    np.testing.assert_allclose(fused.forward(x), act.forward(plain.forward(x)), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(fused.backward(dout), plain.backward(act.backward(dout)), rtol=1e-12, atol=1e-12)
    for key in fused.grads:
        np.testing.assert_allclose(fused.grads[key], plain.grads[key], rtol=1e-12, atol=1e-12)


def test_activation_flag_changes_output():
    x = uniform(np.random.default_rng(4), (4, 6))
    outs = {a: Dense(6, 3, activation=a, seed=0).forward(x) for a in ("relu", "sigmoid", "gelu", "softmax", None)}
    names = list(outs)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            assert not np.allclose(outs[a], outs[b]), (a, b)
    assert ((outs["sigmoid"] > 0) & (outs["sigmoid"] < 1)).all()
    np.testing.assert_allclose(outs["softmax"].sum(axis=-1), 1.0, rtol=1e-6)


@pytest.mark.parametrize("activation", ["bogus", "leakyrelu", "soft_max"])
def test_unknown_activation_raises(activation):
    with pytest.raises(ValueError, match=activation):
        Dense(3, 2, activation=activation)


@pytest.mark.parametrize(("fan_in", "fan_out"), [(784, 10), (3, 2), (128, 128)])
def test_glorot_uniform_init(fan_in, fan_out):
    layer = Dense(fan_in, fan_out, seed=0)
    kernel = layer.params["kernel"]
    limit = np.sqrt(6.0 / (fan_in + fan_out))
    assert kernel.shape == (fan_in, fan_out) and kernel.dtype == np.float32
    assert np.abs(kernel).max() <= limit
    if kernel.size >= 100:
        assert np.abs(kernel).max() > 0.9 * limit
        assert abs(float(kernel.mean())) < 0.1 * limit
    np.testing.assert_array_equal(layer.params["bias"], np.zeros(fan_out))
    assert layer.params["bias"].dtype == np.float32


def test_init_seeded():
    a, b, c = Dense(10, 5, seed=3), Dense(10, 5, seed=3), Dense(10, 5, seed=4)
    np.testing.assert_array_equal(a.params["kernel"], b.params["kernel"])
    assert not np.array_equal(a.params["kernel"], c.params["kernel"])


def test_use_bias_false():
    rng = np.random.default_rng(5)
    layer = Dense(3, 2, use_bias=False, seed=0, dtype=np.float64)
    assert set(layer.params) == {"kernel"} and set(layer.grads) == {"kernel"}
    x = uniform(rng, (4, 3))
    np.testing.assert_allclose(layer.forward(x), x @ layer.params["kernel"], rtol=1e-12)
    errors = check_layer(layer, x, rng)
    assert set(errors) == {"x", "kernel"} and max(errors.values()) < GRAD_TOL


@pytest.mark.parametrize("kwargs", [{"units": 0}, {"in_features": 0}, {"units": 2.5}])
def test_bad_constructor_arguments(kwargs):
    with pytest.raises(ValueError):
        Dense(**{"in_features": 3, "units": 2, **kwargs})
