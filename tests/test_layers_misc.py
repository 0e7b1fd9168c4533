"""Dropout, Flatten, Multiply/Add, and the layer contract checked on every layer and block: shape errors naming
the layer, backward before forward, dtype (float32 in -> float32 out, grads in the parameters' dtype), dout never
modified, repeated backward overwriting (not accumulating) the gradients."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from strategies import BACKENDS, GRAD_TOL, SEEDS, away_from_zero, random_dout, small_shapes, uniform

from minarn import distributed, kernels
from minarn.gradcheck import check_layer, numeric_grad, rel_error
from minarn.layers import (
    ACTIVATIONS,
    Add,
    AttentionModule,
    BatchNormalization,
    Conv2D,
    Dense,
    Dropout,
    Flatten,
    Layer,
    MaxPooling2D,
    Multiply,
    ResidualBlock,
    get_activation,
)
from minarn.model import _KerasNames


# -- the contract, on every layer ------------------------------------------------------------------------
@dataclass(frozen=True)
class Spec:
    id: str
    make: Callable[[Any], Layer]  # param dtype -> layer
    shape: tuple[int, ...]
    training: bool = True
    uses_backend: bool = False  # Conv2D and MaxPooling2D run the kernels: test them on every backend


SPECS = [
    Spec("conv2d-valid", lambda dt: Conv2D(3, 4, 3, seed=0, dtype=dt), (2, 7, 6, 3), uses_backend=True),
    Spec(
        "conv2d-same-s2-gelu",
        lambda dt: Conv2D(3, 4, (3, 2), strides=2, padding="same", activation="gelu", seed=0, dtype=dt),
        (2, 7, 6, 3),
        uses_backend=True,
    ),
    Spec(
        "conv2d-1x1-relu",
        lambda dt: Conv2D(3, 2, 1, activation="relu", seed=0, dtype=dt),
        (2, 5, 4, 3),
        uses_backend=True,
    ),
    Spec(
        "conv2d-nobias-softmax",
        lambda dt: Conv2D(2, 3, 2, activation="softmax", use_bias=False, seed=0, dtype=dt),
        (1, 4, 5, 2),
        uses_backend=True,
    ),
    Spec("dense-softmax", lambda dt: Dense(5, 3, activation="softmax", seed=0, dtype=dt), (4, 5)),
    Spec("dense-sigmoid", lambda dt: Dense(5, 2, activation="sigmoid", seed=0, dtype=dt), (3, 5)),
    Spec("bn-training-rank4", lambda dt: BatchNormalization(3, dtype=dt), (2, 4, 3, 3)),
    Spec("bn-inference-rank2", lambda dt: BatchNormalization(3, dtype=dt), (4, 3), training=False),
    Spec("maxpool-2", lambda dt: MaxPooling2D(2), (2, 5, 5, 3), uses_backend=True),
    Spec("maxpool-3-stride1", lambda dt: MaxPooling2D(3, strides=1), (1, 5, 4, 2), uses_backend=True),
    Spec("dropout-training", lambda dt: Dropout(0.4, seed=0), (3, 4, 4, 2)),
    Spec("dropout-inference", lambda dt: Dropout(0.4, seed=0), (3, 4), training=False),
    Spec("flatten", lambda dt: Flatten(), (2, 3, 4, 2)),
    *[Spec(f"act-{name}", lambda dt, name=name: get_activation(name), (3, 4)) for name in ACTIVATIONS],
    Spec("attention-module", lambda dt: AttentionModule(3, ("conv2d_1", "conv2d_2", "multiply"), (0, 1), dt),
         (2, 4, 3, 3), uses_backend=True),
    Spec("residual-block-skip", lambda dt: ResidualBlock(2, 3, _KerasNames(), itertools.count(1).__next__, dtype=dt),
         (2, 5, 4, 2), uses_backend=True),
    Spec("residual-block-no-attention-identity",
         lambda dt: ResidualBlock(3, 3, _KerasNames(), itertools.count(1).__next__, attention=False, dtype=dt),
         (2, 4, 4, 3), training=False, uses_backend=True),
]

CASES = [
    pytest.param(spec, backend, id=f"{spec.id}-{backend}")
    for spec in SPECS
    for backend in (BACKENDS if spec.uses_backend else ["numpy"])
]


def make_input(spec: Spec, dtype, seed: int = 0) -> np.ndarray:
    return uniform(np.random.default_rng(seed), spec.shape, dtype)


@pytest.mark.parametrize(("spec", "backend"), CASES)
@pytest.mark.parametrize("param_dtype", [np.float32, np.float64])
@pytest.mark.parametrize("x_dtype", [np.float32, np.float64])
def test_output_and_dx_keep_input_dtype_grads_keep_param_dtype(spec, backend, x_dtype, param_dtype):
    layer = spec.make(param_dtype)
    x = make_input(spec, x_dtype)
    with kernels.backend(backend):
        out = layer.forward(x, training=spec.training)
        dx = layer.backward(random_dout(np.random.default_rng(1), out.shape, x_dtype))
    assert out.dtype == x_dtype, out.dtype
    assert dx.dtype == x_dtype and dx.shape == x.shape
    assert set(layer.grads) == set(layer.params)
    for key, p in layer.params.items():
        assert p.dtype == param_dtype
        assert layer.grads[key].dtype == param_dtype and layer.grads[key].shape == p.shape
    for value in layer.state.values():
        assert value.dtype == param_dtype


@pytest.mark.parametrize(("spec", "backend"), CASES)
def test_float32_forward_and_backward_close_to_float64(spec, backend):
    results = {}
    for dtype in (np.float32, np.float64):
        layer = spec.make(np.float64)
        x = make_input(spec, dtype)
        with kernels.backend(backend):
            out = layer.forward(x, training=spec.training)
            dx = layer.backward(random_dout(np.random.default_rng(1), out.shape, dtype))
        results[dtype] = (out, dx, {k: g.copy() for k, g in layer.grads.items()})
    (out32, dx32, g32), (out64, dx64, g64) = results[np.float32], results[np.float64]
    np.testing.assert_allclose(out32, out64, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(dx32, dx64, rtol=1e-3, atol=1e-3)
    for key in g64:
        np.testing.assert_allclose(g32[key], g64[key], rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize(("spec", "backend"), CASES)
def test_backward_modifies_neither_dout_nor_input(spec, backend):
    layer = spec.make(np.float64)
    x = make_input(spec, np.float64)
    x_before = x.copy()
    with kernels.backend(backend):
        out = layer.forward(x, training=spec.training)
        out_before = out.copy()
        dout = random_dout(np.random.default_rng(2), out.shape)
        dout_before = dout.copy()
        dx = layer.backward(dout)
        np.testing.assert_array_equal(dout, dout_before)
        np.testing.assert_array_equal(x, x_before)
        np.testing.assert_array_equal(out, out_before)
        dx_before = dx.copy()
        dx[...] = 123.0  # a caller scribbling on dx must not reach the layer's cache
        dx2 = layer.backward(dout_before.copy())
    np.testing.assert_array_equal(dx2, dx_before)


@pytest.mark.parametrize(("spec", "backend"), CASES)
def test_repeated_backward_overwrites_grads(spec, backend):
    layer = spec.make(np.float64)
    x = make_input(spec, np.float64)
    with kernels.backend(backend):
        out = layer.forward(x, training=spec.training)
        dout = random_dout(np.random.default_rng(3), out.shape)
        dx1 = layer.backward(dout)
        g1 = {k: g.copy() for k, g in layer.grads.items()}
        dx2 = layer.backward(dout)
        g2 = {k: g.copy() for k, g in layer.grads.items()}
        dx3 = layer.backward(2 * dout)
        g3 = {k: g.copy() for k, g in layer.grads.items()}
    np.testing.assert_array_equal(dx1, dx2)
    np.testing.assert_allclose(dx3, 2 * dx1, rtol=1e-12, atol=1e-300)
    for key, first in g1.items():
        np.testing.assert_array_equal(g2[key], first)  # not doubled
        np.testing.assert_allclose(g3[key], 2 * first, rtol=1e-12, atol=1e-300)  # not stale


@pytest.mark.parametrize(("spec", "backend"), CASES)
def test_backward_before_forward_raises(spec, backend):
    layer = spec.make(np.float32)
    with kernels.backend(backend), pytest.raises(RuntimeError, match="forward"):
        layer.backward(np.zeros(spec.shape, np.float32))


@pytest.mark.parametrize(("spec", "backend"), CASES)
def test_wrong_dout_shape_raises(spec, backend):
    layer = spec.make(np.float32)
    x = make_input(spec, np.float32)
    with kernels.backend(backend):
        out = layer.forward(x, training=spec.training)
        with pytest.raises(ValueError, match=layer.name):
            layer.backward(np.zeros(out.shape[:-1] + (out.shape[-1] + 1,), np.float32))


@pytest.mark.parametrize(("spec", "backend"), CASES)
def test_integer_input_raises_type_error(spec, backend):
    layer = spec.make(np.float32)
    with kernels.backend(backend), pytest.raises(TypeError):
        layer.forward(np.ones(spec.shape, dtype=np.int64), training=spec.training)


@pytest.mark.parametrize(
    ("make", "shape", "expected"),
    [
        (lambda: Conv2D(3, 4, 3, name="conv2d_7"), (2, 5, 5), "(N, ?, ?, 3)"),
        (lambda: Conv2D(3, 4, 3, name="conv2d_7"), (2, 5, 5, 2), "(N, ?, ?, 3)"),
        (lambda: Conv2D(3, 4, 3, name="conv2d_7"), (2, 1, 5, 5, 3), "(N, ?, ?, 3)"),
        (lambda: Dense(4, 2, name="dense_3"), (2, 5), "(N, 4)"),
        (lambda: Dense(4, 2, name="dense_3"), (2, 2, 4), "(N, 4)"),
        (lambda: BatchNormalization(3, name="batch_normalization_2"), (2, 4), "(N, 3)"),
        (lambda: BatchNormalization(3, name="batch_normalization_2"), (2, 5, 5, 4), "(N, ?, ?, 3)"),
        (lambda: BatchNormalization(3, name="batch_normalization_2"), (6,), "(N, 3)"),
        (lambda: MaxPooling2D(2, name="max_pooling2d_1"), (2, 5, 5), "(N, ?, ?, C)"),
        (lambda: MaxPooling2D(2, name="max_pooling2d_1"), (5, 5), "(N, ?, ?, C)"),
        (lambda: Flatten(name="flatten_4"), (5,), "(N, C)"),
    ],
)
@pytest.mark.parametrize("backend", BACKENDS)
def test_shape_errors_name_layer_expected_and_got(make, shape, expected, backend):
    layer = make()
    got = "(" + ", ".join(str(s) for s in shape)
    with kernels.backend(backend), pytest.raises(ValueError) as info:
        layer.forward(np.zeros(shape, np.float32))
    message = str(info.value)
    assert layer.name in message and expected in message and got in message, message
    if not isinstance(layer, Flatten):  # the symbolic check gives the same message, batch printed as None
        with pytest.raises(ValueError, match=layer.name) as info:
            layer.compute_output_shape((None, *shape[1:]))
        assert expected in str(info.value) and "(None" in str(info.value)


def test_default_names_follow_keras():
    assert Conv2D(1, 1, 1).name == "conv2d"
    assert MaxPooling2D().name == "max_pooling2d"
    assert BatchNormalization(1).name == "batch_normalization"
    assert Dense(1, 1).name == "dense" and Dropout(0.1).name == "dropout" and Flatten().name == "flatten"
    assert Dense(1, 1, name="dense_5").name == "dense_5"


# -- Dropout ---------------------------------------------------------------------------------------------
@given(shape=small_shapes(), rate=st.sampled_from([0.0, 0.1, 0.5, 0.9]), seed=SEEDS)
@example(shape=(1,), rate=0.5, seed=0)
def test_dropout_is_identity_in_inference(shape, rate, seed):
    rng = np.random.default_rng(seed)
    x, dout = uniform(rng, shape), random_dout(rng, shape)
    layer = Dropout(rate, seed=seed)
    np.testing.assert_array_equal(layer.forward(x, training=False), x)
    np.testing.assert_array_equal(layer.backward(dout), dout)


def test_dropout_rate_zero_is_identity_in_training():
    x = uniform(np.random.default_rng(0), (4, 5))
    layer = Dropout(0.0, seed=0)
    np.testing.assert_array_equal(layer.forward(x, training=True), x)
    dout = random_dout(np.random.default_rng(1), (4, 5))
    np.testing.assert_array_equal(layer.backward(dout), dout)


@pytest.mark.parametrize("rate", [0.1, 0.3, 0.5, 0.8])
def test_dropout_inverted_scaling_keeps_the_mean(rate):
    x = np.ones((400, 500))
    out = Dropout(rate, seed=1).forward(x, training=True)
    kept = out != 0
    np.testing.assert_allclose(out[kept], 1.0 / (1.0 - rate), rtol=1e-12)  # survivors scaled up
    assert abs(1.0 - kept.mean() - rate) < 0.01  # about `rate` of the elements dropped
    assert abs(out.mean() - 1.0) < 0.02  # expected value unchanged


def test_dropout_seeded_masks():
    x = uniform(np.random.default_rng(0), (8, 9))
    a, b, c = Dropout(0.5, seed=7), Dropout(0.5, seed=7), Dropout(0.5, seed=8)
    first_a, first_b, first_c = (layer.forward(x, training=True) for layer in (a, b, c))
    np.testing.assert_array_equal(first_a, first_b)  # same seed -> same mask
    assert not np.array_equal(first_a, first_c)  # different seed -> different mask
    assert not np.array_equal(a.forward(x, training=True), first_a)  # each training forward draws anew


def test_dropout_set_generator_draws_the_next_masks_from_it():
    x = uniform(np.random.default_rng(0), (8, 9))
    layer, fresh = Dropout(0.5, seed=1), Dropout(0.5, seed=7)
    layer.forward(x, training=True)  # moves the layer's own generator on
    layer.set_generator(np.random.default_rng(7))
    np.testing.assert_array_equal(layer.forward(x, training=True), fresh.forward(x, training=True))
    with pytest.raises(TypeError, match="dropout.*numpy.random.Generator.*int"):
        layer.set_generator(7)


def test_dropout_set_generator_takes_a_rank_s_rows_of_the_batch_generator():
    """Data-parallel training hands each rank a generator that draws the whole batch and keeps its rows."""
    x = uniform(np.random.default_rng(0), (6, 5))
    full, ranked = Dropout(0.5), Dropout(0.5)
    full.set_generator(np.random.default_rng(3))
    ranked.set_generator(distributed.RowsOf(np.random.default_rng(3), distributed.shard(6, 1, 2)))
    np.testing.assert_array_equal(ranked.forward(x[3:], training=True), full.forward(x, training=True)[3:])


def test_dropout_backward_uses_the_forward_mask():
    rng = np.random.default_rng(2)
    x = away_from_zero(uniform(rng, (6, 7)), margin=0.05)
    layer = Dropout(0.5, seed=3)
    out = layer.forward(x, training=True)
    dout = random_dout(rng, x.shape)
    np.testing.assert_allclose(layer.backward(dout), dout * (out / x), rtol=1e-12)


@given(shape=small_shapes(), rate=st.sampled_from([0.2, 0.5]), seed=SEEDS)
@example(shape=(2, 3), rate=0.5, seed=1)
def test_dropout_gradient_with_fixed_mask(shape, rate, seed):
    rng = np.random.default_rng(seed)
    layer = Dropout(rate, seed=seed)
    forward = layer.forward

    def forward_with_fixed_mask(x, training=False):
        layer.set_generator(np.random.default_rng(seed))  # the same mask on every call
        return forward(x, training)

    layer.forward = forward_with_fixed_mask
    errors = check_layer(layer, uniform(rng, shape), rng)
    assert errors["x"] < GRAD_TOL, errors


@pytest.mark.parametrize("rate", [1.0, -0.1, 1.5])
def test_dropout_bad_rate(rate):
    with pytest.raises(ValueError, match="rate"):
        Dropout(rate)


# -- Flatten ---------------------------------------------------------------------------------------------
def test_flatten_is_channels_last_row_major():
    x = np.arange(2 * 2 * 3 * 4, dtype=np.float64).reshape(2, 2, 3, 4)
    layer = Flatten()
    out = layer.forward(x)
    assert out.shape == (2, 24)
    np.testing.assert_array_equal(out[0], np.arange(24))
    assert out[1, 5] == x[1, 0, 1, 1]  # (h, w, c) order, as Keras' channels-last Flatten
    assert layer.compute_output_shape((None, 4, 4, 8)) == (None, 128)
    np.testing.assert_array_equal(layer.backward(out), x)


@given(shape=small_shapes(min_dims=2, max_dims=5), seed=SEEDS)
@example(shape=(1, 1), seed=0)
def test_flatten_gradient(shape, seed):
    rng = np.random.default_rng(seed)
    errors = check_layer(Flatten(), uniform(rng, shape), rng)
    assert errors["x"] < GRAD_TOL


# -- Multiply / Add --------------------------------------------------------------------------------------
def merge_grad_errors(layer, a, b, rng):
    out = layer.forward((a, b), training=True)
    dout = random_dout(rng, out.shape)
    da, db = layer.backward(dout)

    def run():
        return layer.forward((a, b), training=True)

    return rel_error(da, numeric_grad(run, a, dout)), rel_error(db, numeric_grad(run, b, dout))


@pytest.mark.parametrize("cls", [Multiply, Add])
@given(shape=small_shapes(max_dims=4, max_side=4), seed=SEEDS)
@example(shape=(2, 3, 3, 1), seed=0)
def test_merge_gradients(cls, shape, seed):
    rng = np.random.default_rng(seed)
    a, b = uniform(rng, shape), uniform(rng, shape)
    err_a, err_b = merge_grad_errors(cls(), a, b, rng)
    assert err_a < GRAD_TOL and err_b < GRAD_TOL, (err_a, err_b)


def test_multiply_forward_backward_values():
    a = np.array([[1.0, -2.0], [3.0, 0.5]])
    b = np.array([[4.0, 5.0], [-1.0, 2.0]])
    dout = np.array([[1.0, 2.0], [3.0, 4.0]])
    layer = Multiply()
    np.testing.assert_array_equal(layer.forward((a, b)), a * b)
    da, db = layer.backward(dout)
    np.testing.assert_array_equal(da, dout * b)
    np.testing.assert_array_equal(db, dout * a)


def test_add_forward_backward_values():
    a, b = np.ones((2, 3)), np.arange(6.0).reshape(2, 3)
    dout = random_dout(np.random.default_rng(0), (2, 3))
    layer = Add()
    np.testing.assert_array_equal(layer.forward([a, b]), a + b)
    da, db = layer.backward(dout)
    np.testing.assert_array_equal(da, dout)
    np.testing.assert_array_equal(db, dout)
    da += 1.0  # the two gradients are independent arrays, and not dout itself
    np.testing.assert_array_equal(db, dout)


@pytest.mark.parametrize("cls", [Multiply, Add])
def test_merge_errors_and_dtype(cls):
    layer = cls(name="merge_1")
    a32 = np.ones((2, 3), np.float32)
    with pytest.raises(ValueError, match=r"merge_1.*\(2, 3\).*\(2, 4\)"):
        layer.forward((a32, np.ones((2, 4), np.float32)))
    with pytest.raises(ValueError, match="merge_1"):
        layer.forward((a32, np.ones((1, 3), np.float32)))  # no broadcasting
    with pytest.raises(ValueError, match="pair"):
        layer.forward((a32,))
    with pytest.raises(ValueError):
        layer.compute_output_shape(((None, 3), (None, 4)))
    assert layer.compute_output_shape(((None, 3), (None, 3))) == (None, 3)
    with pytest.raises(RuntimeError, match="forward"):
        cls().backward(a32)
    out = layer.forward((a32, 2 * a32))
    da, db = layer.backward(np.ones_like(out))
    assert out.dtype == da.dtype == db.dtype == np.float32
    with pytest.raises(ValueError, match="merge_1"):
        layer.backward(np.ones((3, 2), np.float32))
