"""MaxPooling2D: gradients by central differences (distinct values, so no near-ties), forward and backward
against loop implementations, "valid" sizes (odd last row dropped), the first-maximum tie rule. Every test
runs on every available kernel backend."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import example, given
from strategies import BACKENDS, GRAD_TOL, SEEDS, PoolCase, check_layer_on, pool_cases, random_dout

from minarn import kernels
from minarn.layers import MaxPooling2D

backends = pytest.mark.parametrize("backend", BACKENDS)


def maxpool_naive(x: np.ndarray, pool: int, stride: int, dout: np.ndarray | None = None):
    """Loop oracle. Returns out, and dx when dout is given: each dout goes to the first maximum of its
    window in row-major order (top-left first); overlapping windows add."""
    N, H, W, C = x.shape
    OH, OW = (H - pool) // stride + 1, (W - pool) // stride + 1
    out = np.empty((N, OH, OW, C), x.dtype)
    dx = np.zeros(x.shape, np.float64)
    for n in range(N):
        for p in range(OH):
            for q in range(OW):
                for c in range(C):
                    best, where = None, None
                    for i in range(pool):
                        for j in range(pool):
                            v = x[n, p * stride + i, q * stride + j, c]
                            if best is None or v > best:
                                best, where = v, (p * stride + i, q * stride + j)
                    out[n, p, q, c] = best
                    if dout is not None:
                        dx[n, where[0], where[1], c] += dout[n, p, q, c]
    return out, dx


@backends
@given(case=pool_cases(), seed=SEEDS)
@example(case=PoolCase(n=1, h=5, w=4, c=2, pool=3, stride=1), seed=0)  # overlapping windows, odd rows
def test_maxpool_gradient(backend, case, seed):
    rng = np.random.default_rng(seed)
    layer, x = case.build(rng)
    errors = check_layer_on(backend, layer, x, rng)
    assert set(errors) == {"x"}
    assert errors["x"] < GRAD_TOL, errors


@backends
@given(case=pool_cases(), seed=SEEDS)
@example(case=PoolCase(n=1, h=3, w=3, c=1, pool=2, stride=1), seed=5)
def test_maxpool_forward_backward_match_loops_with_ties(backend, case, seed):
    # Small integers make ties common: the tie rule is checked together with the values.
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 3, size=(case.n, case.h, case.w, case.c)).astype(np.float64)
    layer = MaxPooling2D(case.pool, case.stride)
    stride = case.pool if case.stride is None else case.stride
    dout = random_dout(rng, case.out_shape)
    with kernels.backend(backend):
        out = layer.forward(x)
        dx = layer.backward(dout)
    out_expected, dx_expected = maxpool_naive(x, case.pool, stride, dout)
    assert out.shape == case.out_shape
    np.testing.assert_array_equal(out, out_expected)
    np.testing.assert_allclose(dx, dx_expected, rtol=1e-12, atol=1e-12)


@backends
@given(case=pool_cases(), seed=SEEDS)
@example(case=PoolCase(n=2, h=7, w=7, c=1, pool=2), seed=0)
def test_maxpool_float32(backend, case, seed):
    rng = np.random.default_rng(seed)
    layer, x = case.build(rng, dtype=np.float32)
    with kernels.backend(backend):
        out = layer.forward(x)
        dx = layer.backward(random_dout(rng, out.shape, np.float32))
    assert out.dtype == np.float32 and dx.dtype == np.float32
    stride = case.pool if case.stride is None else case.stride
    np.testing.assert_array_equal(out, maxpool_naive(x, case.pool, stride)[0])


@backends
@pytest.mark.parametrize(("size", "out"), [(31, 15), (11, 5), (64, 32), (2, 1), (3, 1)])
def test_valid_pooling_drops_odd_last_row(backend, size, out):
    layer = MaxPooling2D(2)
    assert layer.compute_output_shape((None, size, size, 4)) == (None, out, out, 4)
    x = np.random.default_rng(0).permutation(size * size * 2).reshape(1, size, size, 2).astype(np.float64)
    with kernels.backend(backend):
        y = layer.forward(x)
        dx = layer.backward(np.ones_like(y))
    assert y.shape == (1, out, out, 2)
    if size % 2:  # the last row and column never win a window
        assert not dx[:, -1].any() and not dx[:, :, -1].any()
    assert dx.sum() == y.size  # every output sends its gradient to exactly one input


@backends
def test_ties_go_to_first_maximum_in_row_major_order(backend):
    layer = MaxPooling2D(2)
    x = np.ones((1, 4, 4, 1))  # every window is one big tie
    x[0, 2, 3, 0] = x[0, 3, 2, 0] = 5.0  # bottom-right window: tie between (0, 1) and (1, 0) inside the window
    dout = np.arange(1.0, 5.0).reshape(1, 2, 2, 1)
    with kernels.backend(backend):
        y = layer.forward(x)
        dx = layer.backward(dout)
    np.testing.assert_array_equal(y[0, :, :, 0], [[1, 1], [1, 5]])
    expected = np.zeros((4, 4))
    expected[0, 0], expected[0, 2], expected[2, 0] = 1, 2, 3  # top-left of each all-equal window
    expected[2, 3] = 4  # (0, 1) comes before (1, 0) in row-major order
    np.testing.assert_array_equal(dx[0, :, :, 0], expected)


@backends
def test_overlapping_windows_add_gradients(backend):
    # 3x3 input, 2x2 windows at stride 1: the centre is the maximum of all four windows.
    x = np.zeros((1, 3, 3, 1))
    x[0, 1, 1, 0] = 1.0
    dout = np.array([1.0, 2.0, 3.0, 4.0]).reshape(1, 2, 2, 1)
    with kernels.backend(backend):
        layer = MaxPooling2D(2, strides=1)
        layer.forward(x)
        dx = layer.backward(dout)
    expected = np.zeros((1, 3, 3, 1))
    expected[0, 1, 1, 0] = 10.0
    np.testing.assert_array_equal(dx, expected)


@backends
def test_channels_pool_independently(backend):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 4, 6, 3))
    with kernels.backend(backend):
        full = MaxPooling2D(2).forward(x)
        per_channel = [MaxPooling2D(2).forward(x[..., c : c + 1]) for c in range(3)]
    np.testing.assert_array_equal(full, np.concatenate(per_channel, axis=-1))


def test_default_stride_is_pool_size():
    assert MaxPooling2D(3).strides == 3
    assert MaxPooling2D(3, strides=1).strides == 1
    assert MaxPooling2D().pool_size == 2 and MaxPooling2D().params == {}


@pytest.mark.parametrize("kwargs", [{"pool_size": 0}, {"pool_size": 12}, {"strides": 0}, {"pool_size": 2.5}])
def test_bad_constructor_arguments(kwargs):
    with pytest.raises(ValueError):
        MaxPooling2D(**kwargs)


@backends
def test_input_smaller_than_window_raises(backend):
    layer = MaxPooling2D(3, name="max_pooling2d_9")
    with kernels.backend(backend), pytest.raises(ValueError, match="max_pooling2d_9"):
        layer.forward(np.zeros((1, 2, 5, 1)))
