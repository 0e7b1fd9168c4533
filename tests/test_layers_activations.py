"""Activations: gradients of every entry of ACTIVATIONS, values against scalar formulas (math module),
sigmoid symmetry and range, GELU's erf form and known values, softmax normalisation, stability for |x| ~ 1000."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from hypothesis import example, given
from strategies import GRAD_TOL, SEEDS, away_from_zero, random_dout, small_shapes, uniform

from minarn.gradcheck import check_layer
from minarn.layers import ACTIVATIONS, GELU, Linear, ReLU, Sigmoid, Softmax, get_activation
from minarn.layers.activations import SELU_ALPHA, SELU_SCALE

# Scalar formulas written independently of the layers (math module, one value at a time).
SCALAR = {
    "linear": lambda v: v,
    "relu": lambda v: max(v, 0.0),
    "sigmoid": lambda v: 1.0 / (1.0 + math.exp(-v)),
    "tanh": math.tanh,
    "gelu": lambda v: 0.5 * v * (1.0 + math.erf(v / math.sqrt(2.0))),
    "elu": lambda v: v if v > 0 else math.expm1(v),
    "selu": lambda v: SELU_SCALE * (v if v > 0 else SELU_ALPHA * math.expm1(v)),
    "swish": lambda v: v / (1.0 + math.exp(-v)),
    "silu": lambda v: v / (1.0 + math.exp(-v)),
}


def strict(fn):
    """Call ``fn`` with every warning and every floating-point overflow / invalid / divide turned into an error."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with np.errstate(over="raise", invalid="raise", divide="raise"):
            return fn()


def test_every_activation_has_a_scalar_formula_or_is_softmax():
    assert set(ACTIVATIONS) == set(SCALAR) | {"softmax"}


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
@given(shape=small_shapes(), seed=SEEDS)
@example(shape=(1, 1), seed=0)
def test_activation_gradient(name, shape, seed):
    rng = np.random.default_rng(seed)
    x = away_from_zero(uniform(rng, shape))  # relu and selu have a kink at 0
    layer = get_activation(name)
    errors = check_layer(layer, x, rng)
    assert set(errors) == {"x"}
    assert errors["x"] < GRAD_TOL, errors


@pytest.mark.parametrize("name", sorted(SCALAR))
@given(shape=small_shapes(), seed=SEEDS)
@example(shape=(2, 3), seed=1)
def test_elementwise_forward_matches_scalar_formula(name, shape, seed):
    x = uniform(np.random.default_rng(seed), shape)
    out = get_activation(name).forward(x)
    expected = np.vectorize(SCALAR[name], otypes=[np.float64])(x)
    assert out.shape == x.shape
    np.testing.assert_allclose(out, expected, rtol=1e-12, atol=1e-15)


# -- sigmoid ---------------------------------------------------------------------------------------------
@given(shape=small_shapes(), seed=SEEDS)
@example(shape=(3,), seed=0)
def test_sigmoid_symmetry_and_range(shape, seed):
    x = uniform(np.random.default_rng(seed), shape, bound=20.0)
    s = Sigmoid().forward(x)
    np.testing.assert_allclose(Sigmoid().forward(-x), 1.0 - s, rtol=0, atol=1e-15)
    assert np.all((s > 0) & (s < 1))


def test_sigmoid_stable_for_large_inputs():
    x = np.array([-1000.0, -745.0, -50.0, 0.0, 50.0, 745.0, 1000.0])
    layer = Sigmoid()
    s = strict(lambda: layer.forward(x))
    dx = strict(lambda: layer.backward(np.ones_like(x)))
    assert np.all(np.isfinite(s)) and np.all(np.isfinite(dx))
    assert s[0] == pytest.approx(0.0, abs=1e-300) and s[-1] == 1.0 and s[3] == 0.5
    assert np.all((s >= 0) & (s <= 1)) and np.all(np.diff(s) >= 0)
    s32 = strict(lambda: Sigmoid().forward(x.astype(np.float32)))
    assert s32.dtype == np.float32 and np.all(np.isfinite(s32))


# -- GELU ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("x", "expected"),
    [
        (0.0, 0.0),
        (1.0, 0.8413447460685429),
        (-1.0, -0.15865525393145707),
        (2.0, 1.9544997361036416),
        (-3.0, -0.004049694094890284),
        (0.5, 0.34573123063700656),
    ],
)
def test_gelu_known_values(x, expected):
    assert GELU().forward(np.array([x]))[0] == pytest.approx(expected, rel=1e-12, abs=1e-15)


def test_gelu_is_exact_erf_form_not_tanh_approximation():
    x = np.array([1.5])
    tanh_approx = 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))
    exact = GELU().forward(x)
    assert exact[0] == pytest.approx(SCALAR["gelu"](1.5), rel=1e-14)
    assert abs(exact[0] - tanh_approx[0]) > 1e-5


def test_gelu_backward_formula():
    # dx = dout * (Phi(x) + x * phi(x)), written with math.erf / math.exp.
    rng = np.random.default_rng(2)
    x, dout = uniform(rng, (4, 5)), random_dout(rng, (4, 5))
    layer = GELU()
    layer.forward(x)

    def slope(v: float) -> float:
        cdf = 0.5 * (1 + math.erf(v / math.sqrt(2)))
        pdf = math.exp(-v * v / 2) / math.sqrt(2 * math.pi)
        return cdf + v * pdf

    expected = dout * np.vectorize(slope)(x)
    np.testing.assert_allclose(layer.backward(dout), expected, rtol=1e-12, atol=1e-15)


def test_gelu_stable_for_large_inputs():
    x = np.array([-1000.0, -40.0, 40.0, 1000.0])
    layer = GELU()
    out = strict(lambda: layer.forward(x))
    dx = strict(lambda: layer.backward(np.ones_like(x)))
    np.testing.assert_allclose(out, [0.0, 0.0, 40.0, 1000.0], atol=1e-300)
    np.testing.assert_allclose(dx, [0.0, 0.0, 1.0, 1.0], atol=1e-300)


# -- softmax ---------------------------------------------------------------------------------------------
@given(shape=small_shapes(), seed=SEEDS)
@example(shape=(2, 1), seed=0)  # a single class: probability exactly 1, gradient exactly 0
def test_softmax_rows_sum_to_one_and_shift_invariant(shape, seed):
    rng = np.random.default_rng(seed)
    x = uniform(rng, shape)
    p = Softmax().forward(x)
    assert np.all(p > 0) and np.all(p <= 1)
    np.testing.assert_allclose(p.sum(axis=-1), 1.0, rtol=1e-12)
    np.testing.assert_allclose(Softmax().forward(x + 123.0), p, rtol=1e-9, atol=1e-15)
    expected = np.exp(x) / np.exp(x).sum(axis=-1, keepdims=True)
    np.testing.assert_allclose(p, expected, rtol=1e-12)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_softmax_stable_for_large_inputs(dtype):
    x = np.array([[1000.0, 999.0, 998.0], [-1000.0, -1001.0, -1000.0], [1000.0, -1000.0, 0.0]], dtype=dtype)
    layer = Softmax()
    p = strict(lambda: layer.forward(x))
    dx = strict(lambda: layer.backward(np.ones_like(x)))
    assert p.dtype == dtype and np.all(np.isfinite(p)) and np.all(np.isfinite(dx))
    np.testing.assert_allclose(p.sum(axis=-1), 1.0, rtol=1e-6)
    e = np.exp([0.0, -1.0, -2.0])
    np.testing.assert_allclose(p[0], e / e.sum(), rtol=1e-6)
    np.testing.assert_allclose(p[2], [1.0, 0.0, 0.0], atol=1e-30)


def test_softmax_is_over_the_last_axis():
    x = uniform(np.random.default_rng(3), (2, 3, 4))
    p = Softmax().forward(x)
    np.testing.assert_allclose(p.sum(axis=-1), np.ones((2, 3)), rtol=1e-12)
    assert not np.allclose(p.sum(axis=0), 1.0)


# -- ReLU, get_activation --------------------------------------------------------------------------------
def test_relu_gradient_at_zero_is_zero():
    layer = ReLU()
    out = layer.forward(np.array([-1.0, 0.0, 2.0]))
    np.testing.assert_array_equal(out, [0.0, 0.0, 2.0])
    np.testing.assert_array_equal(layer.backward(np.array([5.0, 5.0, 5.0])), [0.0, 0.0, 5.0])


def test_get_activation():
    assert isinstance(get_activation(None), Linear)
    assert isinstance(get_activation("relu"), ReLU) and isinstance(get_activation("ReLU"), ReLU)
    assert get_activation("gelu", layer_name="conv2d_activation").name == "conv2d_activation"
    assert get_activation("relu") is not get_activation("relu")  # a fresh layer each time (own cache)
    for name in ACTIVATIONS:
        assert isinstance(get_activation(name), ACTIVATIONS[name])
    with pytest.raises(ValueError, match="'bogus'"):
        get_activation("bogus")
