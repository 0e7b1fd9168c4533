"""The fast-path kernels (padded im2col/col2im, fused bias + activation, attention mask backward, batch norm):
the NumPy reference against plain formulas, every available backend against the reference (float32 and
float64), and the layers' fast paths against the plain layer-by-layer math. No timings here: speed claims
live in ``benchmarks/``."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import special

from minarn import kernels
from minarn.kernels import numpy_ref
from minarn.layers import BatchNormalization, Conv2D, get_activation
from minarn.layers.attention import AttentionModule

BACKENDS = ["numpy"] + [
    pytest.param("numba", marks=pytest.mark.skipif(not kernels.numba_available(), reason="numba is not installed"))
]
DTYPES = ["float32", "float64"]
TOL = {"float32": dict(rtol=2e-5, atol=2e-5), "float64": dict(rtol=1e-11, atol=1e-11)}
# (N, H, W, C, kh, kw, stride, pads)
CONV_CASES = [
    (2, 5, 6, 3, 3, 3, 1, ((1, 1), (1, 1))),
    (1, 7, 4, 1, 3, 2, 2, ((0, 1), (1, 0))),
    (3, 4, 4, 2, 1, 1, 1, ((0, 0), (0, 0))),
    (2, 6, 5, 4, 2, 3, 3, ((2, 0), (0, 2))),
    (2, 6, 7, 1, 3, 3, 1, ((0, 0), (0, 0))),  # ARN-CNN's first layer: numba's own 3x3 one-channel kernel
]


def rng_array(shape, dtype, seed=0, low=-2.0, high=2.0):
    return np.random.default_rng(seed).uniform(low, high, size=shape).astype(dtype)


@pytest.mark.parametrize("case", CONV_CASES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", BACKENDS)
def test_im2col_col2im_padded_match_pad_then_unfold(name, dtype, case):
    N, H, W, C, kh, kw, s, pads = case
    x = rng_array((N, H, W, C), dtype, seed=1)
    xp = np.pad(x, ((0, 0), *pads, (0, 0)))
    expected = numpy_ref.im2col(xp, kh, kw, s)
    with kernels.backend(name) as K:
        out = np.full(expected.shape, np.nan, dtype=dtype)  # a reused buffer with garbage in it
        got = K.im2col_padded(x, kh, kw, s, pads, out=out)
        assert got is out
        np.testing.assert_array_equal(got, expected)
        np.testing.assert_array_equal(K.im2col_padded(x, kh, kw, s, pads), expected)
        cols = rng_array(expected.shape, dtype, seed=2)
        dx = K.col2im_padded(cols, x.shape, kh, kw, s, pads)
        top, left = pads[0][0], pads[1][0]
        ref = numpy_ref.col2im(cols, xp.shape, kh, kw, s)[:, top : top + H, left : left + W, :]
        assert dx.shape == x.shape and dx.dtype == x.dtype and dx.flags.c_contiguous
        np.testing.assert_allclose(dx, ref, **TOL[dtype])
        # adjoint: <im2col(x), cols> == <x, col2im(cols)>
        np.testing.assert_allclose(np.vdot(got, cols), np.vdot(x, dx), rtol=1e-4 if dtype == "float32" else 1e-10)


@pytest.mark.parametrize("case", CONV_CASES)
@pytest.mark.parametrize("kind", numpy_ref.ACTIVATION_KINDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", BACKENDS)
def test_shallow_conv_kernels_match_the_definition(name, dtype, kind, case):
    """Direct short-patch convolution: forward = act(cols @ kernel + bias) (cols from zero padding), weight
    gradient = cols^T @ dz, bias gradient = sum of dz; with and without a bias."""
    N, H, W, C, kh, kw, s, pads = case
    x = rng_array((N, H, W, C), dtype, seed=1)
    F = 5
    kernel = rng_array((kh, kw, C, F), dtype, seed=2)
    bias = rng_array((F,), dtype, seed=3)
    cols = numpy_ref.im2col(np.pad(x, ((0, 0), *pads, (0, 0))), kh, kw, s).astype(np.float64)
    z = cols @ kernel.reshape(-1, F).astype(np.float64)
    act = {"linear": lambda v: v, "relu": lambda v: np.maximum(v, 0), "sigmoid": special.expit}[kind]
    OH = (H + sum(pads[0]) - kh) // s + 1
    OW = (W + sum(pads[1]) - kw) // s + 1
    dz = rng_array((N, OH, OW, F), dtype, seed=4)
    with kernels.backend(name) as K:
        for b in (bias, None):
            got = K.shallow_conv_forward(x, kernel, b, s, pads, kind)
            want = act(z + (0 if b is None else b)).reshape(N, OH, OW, F)
            assert got.dtype == x.dtype and got.shape == want.shape
            np.testing.assert_allclose(got, want, **TOL[dtype])
        dkernel, dbias = K.shallow_conv_weight_grad(x, dz, kh, kw, s, pads)
    assert dkernel.dtype == x.dtype and dbias.dtype == x.dtype
    np.testing.assert_allclose(dkernel, (cols.T @ dz.reshape(-1, F)).reshape(kh, kw, C, F), **TOL[dtype])
    np.testing.assert_allclose(dbias, dz.reshape(-1, F).sum(axis=0, dtype=np.float64), **TOL[dtype])


@pytest.mark.parametrize("kind", numpy_ref.ACTIVATION_KINDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", BACKENDS)
@pytest.mark.parametrize("with_bias", [True, False])
def test_bias_activation_and_backward(name, dtype, kind, with_bias):
    with kernels.backend(name) as K:
        z = rng_array((300, 7), dtype, seed=3, low=-40, high=40)  # sigmoid far into both tails
        bias = rng_array((7,), dtype, seed=4) if with_bias else None
        pre = z + bias if with_bias else z.copy()
        expected = {"linear": pre, "relu": np.maximum(pre, 0), "sigmoid": special.expit(pre)}[kind]
        out = K.bias_activation(z, bias, kind)
        assert out is z and out.dtype == np.dtype(dtype)
        np.testing.assert_allclose(out, expected, **TOL[dtype])
        dout = rng_array(z.shape, dtype, seed=5)
        keep = dout.copy()
        dz = K.activation_backward(dout, out, kind)
        slope = {"linear": np.ones_like(pre), "relu": (pre > 0).astype(dtype),
                 "sigmoid": special.expit(pre) * (1 - special.expit(pre))}[kind]  # the derivative, from its formula
        np.testing.assert_allclose(dz, dout * slope, **TOL[dtype])
        np.testing.assert_array_equal(dout, keep)  # never written into
        assert dz.dtype == np.dtype(dtype)
        dz2, sums = K.activation_backward_and_sum(dout, out, kind)  # the same dz, and its column sums
        np.testing.assert_array_equal(dz2, dz)
        assert sums.shape == (7,) and sums.dtype == np.dtype(dtype)
        np.testing.assert_allclose(sums, dz.astype(np.float64).sum(axis=0), **TOL[dtype])


@pytest.mark.parametrize("name", BACKENDS)
def test_relu_backward_keeps_nan_and_inf_where_the_relu_passed_only(name):
    # the reference multiplies dout by [out > 0] when dout is finite; a NaN or inf where the ReLU was off must
    # still give exactly 0 there (NaN * 0 and inf * 0 are NaN), as ReLU's derivative says
    out = np.array([[0.0, 1.0, 0.0, 2.0]], dtype=np.float32)
    dout = np.array([[np.nan, np.nan, np.inf, -np.inf]], dtype=np.float32)
    with kernels.backend(name) as K:
        dz = K.activation_backward(dout, out, "relu")
    np.testing.assert_array_equal(dz, [[0.0, np.nan, 0.0, -np.inf]])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", BACKENDS)
def test_attention_backward_mask_and_sum(name, dtype):
    with kernels.backend(name) as K:
        dout, x = rng_array((500, 5), dtype, seed=6), rng_array((500, 5), dtype, seed=7)
        w = special.expit(rng_array((500, 5), dtype, seed=8))
        dx, dzb, dbias = K.attention_backward_mask_and_sum(dout, x, w)
        np.testing.assert_allclose(dx, dout * w, **TOL[dtype])
        np.testing.assert_allclose(dzb, dout * x * w * (1 - w), **TOL[dtype])
        np.testing.assert_allclose(dbias, (dout * x * w * (1 - w)).astype(np.float64).sum(axis=0), **TOL[dtype])
        assert dx.dtype == dzb.dtype == dbias.dtype == np.dtype(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", BACKENDS)
@pytest.mark.parametrize("offset", [0.0, 100.0])  # a large common offset: the one-pass variance stays exact
def test_batchnorm_kernels(name, dtype, offset):
    with kernels.backend(name) as K:
        x = rng_array((1000, 6), dtype, seed=9) + np.asarray(offset, dtype)
        mean, var = K.channel_moments(x)
        x64 = x.astype(np.float64)
        tol = dict(rtol=1e-5, atol=1e-4) if dtype == "float32" else TOL[dtype]
        np.testing.assert_allclose(mean, x64.mean(0), **tol)
        np.testing.assert_allclose(var, x64.var(0), **tol)
        assert mean.dtype == var.dtype == np.dtype(dtype)
        inv_std = (1 / np.sqrt(var + np.asarray(1e-3, dtype))).astype(dtype)
        gamma, beta = rng_array((6,), dtype, seed=10), rng_array((6,), dtype, seed=11)
        x_hat = (x - mean) * inv_std
        np.testing.assert_allclose(K.batchnorm_apply(x, mean, inv_std, gamma, beta), gamma * x_hat + beta, **tol)
        dout = rng_array(x.shape, dtype, seed=12)
        dx, dgamma, dbeta = K.batchnorm_backward(dout, x, mean, inv_std, gamma)
        g = dout * gamma
        ref = (g - g.mean(0) - x_hat * (g * x_hat).mean(0)) * inv_std
        np.testing.assert_allclose(dx, ref, **tol)
        np.testing.assert_allclose(dgamma, (dout * x_hat).sum(0),
                                   **(dict(rtol=1e-4, atol=1e-3) if dtype == "float32" else tol))
        np.testing.assert_allclose(dbeta, dout.sum(0), **(dict(rtol=1e-4, atol=1e-3) if dtype == "float32" else tol))
        assert dx.dtype == np.dtype(dtype)


# -- the layers' fast paths against the plain math ------------------------------------------------------


def plain_conv(layer: Conv2D, x: np.ndarray, dout: np.ndarray):
    """Conv2D written out the plain way: np.pad, im2col, matmul, bias, activation layer; explicit backward."""
    (kh, kw), s = layer.kernel_size, layer.strides
    pads = layer._pads(x.shape[1], x.shape[2])
    xp = np.pad(x, ((0, 0), *pads, (0, 0)))
    cols = numpy_ref.im2col(xp, kh, kw, s)
    k2 = layer.params["kernel"].astype(x.dtype).reshape(-1, layer.filters)
    z = cols @ k2 + layer.params["bias"].astype(x.dtype)
    act = get_activation(layer.activation_name)
    out = act.forward(z.reshape(dout.shape))
    dz = act.backward(dout).reshape(-1, layer.filters)
    dxp = numpy_ref.col2im(dz @ k2.T, xp.shape, kh, kw, s)
    top, left = pads[0][0], pads[1][0]
    dx = dxp[:, top : top + x.shape[1], left : left + x.shape[2], :]
    return out, dx, (cols.T @ dz).reshape(layer.params["kernel"].shape), dz.sum(0)


@pytest.mark.parametrize("activation", ["relu", "sigmoid", None, "gelu"])
@pytest.mark.parametrize("padding,k,stride", [("same", 3, 1), ("valid", 3, 1), ("valid", 1, 1), ("same", 2, 2)])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", BACKENDS)
def test_conv_fast_path_matches_plain(name, dtype, activation, padding, k, stride):
    with kernels.backend(name):
        layer = Conv2D(3, 4, k, strides=stride, padding=padding, activation=activation, seed=1, dtype=dtype)
        layer.params["bias"][:] = rng_array((4,), dtype, seed=13)
        x = rng_array((2, 6, 5, 3), dtype, seed=14)
        out = layer.forward(x, training=True)
        dout = rng_array(out.shape, dtype, seed=15)
        keep = dout.copy()
        dx = layer.backward(dout)
        ref_out, ref_dx, ref_dk, ref_db = plain_conv(layer, x, dout)
        for got, ref in ((out, ref_out), (dx, ref_dx), (layer.grads["kernel"], ref_dk), (layer.grads["bias"], ref_db)):
            assert got.dtype == np.dtype(dtype)
            np.testing.assert_allclose(got, ref, **TOL[dtype])
        np.testing.assert_array_equal(dout, keep)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", BACKENDS)
def test_attention_fast_backward_matches_layer_by_layer(name, dtype):
    with kernels.backend(name):
        att = AttentionModule(5, ("a", "b", "m"), (1, 2), dtype)
        x = rng_array((2, 4, 3, 5), dtype, seed=16)
        out = att.forward(x, training=True)
        dout = rng_array(out.shape, dtype, seed=17)
        keep = dout.copy()
        dx = att.backward(dout)
        fast = {k: att.conv_a.grads[k].copy() for k in ("kernel", "bias")}
        fast.update({"b" + k: att.conv_b.grads[k].copy() for k in ("kernel", "bias")})
        att.forward(x, training=True)  # the plain path: product, conv_b, conv_a, then the fan-out sum
        dx_direct, dw = att.multiply.backward(dout)
        ref_dx = dx_direct + att.conv_a.backward(att.conv_b.backward(dw))
        np.testing.assert_allclose(dx, ref_dx, **TOL[dtype])
        for k in ("kernel", "bias"):
            np.testing.assert_allclose(fast[k], att.conv_a.grads[k], **TOL[dtype])
            np.testing.assert_allclose(fast["b" + k], att.conv_b.grads[k], **TOL[dtype])
        np.testing.assert_array_equal(dout, keep)
        assert dx.dtype == np.dtype(dtype)


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", BACKENDS)
def test_batchnorm_layer_matches_plain(name, dtype, training):
    with kernels.backend(name):
        bn = BatchNormalization(3, dtype=dtype)
        bn.params["gamma"][:] = rng_array((3,), dtype, seed=18)
        bn.params["beta"][:] = rng_array((3,), dtype, seed=19)
        bn.state["moving_mean"][:] = rng_array((3,), dtype, seed=20)
        x = rng_array((4, 3, 2, 3), dtype, seed=21)
        out = bn.forward(x, training=training)
        axes = (0, 1, 2)
        mean = x.mean(axes) if training else bn.state["moving_mean"]
        var = x.var(axes) if training else bn.state["moving_variance"]
        inv_std = 1 / np.sqrt(var + np.asarray(1e-3, dtype))
        x_hat = (x - mean) * inv_std
        tol = dict(rtol=1e-4, atol=1e-5) if dtype == "float32" else TOL[dtype]
        np.testing.assert_allclose(out, bn.params["gamma"] * x_hat + bn.params["beta"], **tol)
        dout = rng_array(x.shape, dtype, seed=22)
        dx = bn.backward(dout)
        g = dout * bn.params["gamma"]
        ref = (g - g.mean(axes) - x_hat * (g * x_hat).mean(axes)) * inv_std if training else g * inv_std
        np.testing.assert_allclose(dx, ref, **tol)
        np.testing.assert_allclose(bn.grads["gamma"], (dout * x_hat).sum(axes), **tol)
        np.testing.assert_allclose(bn.grads["beta"], dout.sum(axes), **tol)
        assert out.dtype == dx.dtype == np.dtype(dtype)


def test_workspace_is_reused_and_grows():
    a = kernels.workspace((4, 5), np.float32, slot=7)
    b = kernels.workspace((2, 3), np.float32, slot=7)
    assert np.shares_memory(a, b)
    c = kernels.workspace((50, 50), np.float32, slot=7)
    assert c.shape == (50, 50) and c.dtype == np.float32
    assert kernels.workspace((3,), np.float64, slot=7).dtype == np.float64


@pytest.mark.skipif(not kernels.numba_available(), reason="numba is not installed")
def test_float32_exp_of_the_fused_sigmoid_is_within_one_ulp():
    """The Numba backend's float32 sigmoid uses its own polynomial exp (it vectorizes; numba's exp does not):
    within 1 ulp of the exactly rounded exp on [log(2^-126), 0], 0 below, exp(0) = 1, NaN stays NaN."""
    import numba

    from minarn.kernels import numba_jit

    @numba.njit
    def exp_all(v, out):
        for i in range(v.shape[0]):
            out[i] = numba_jit._exp_nonpositive_f32(v[i])

    lowest = np.float32(np.log(np.float64(2.0) ** -126))
    v = np.concatenate([np.linspace(lowest, 0, 400_001, dtype=np.float32), -np.logspace(-30, 0, 1001, dtype=np.float32),
                        np.array([0.0, -0.0, -1e-45, lowest], np.float32)])
    got = np.empty_like(v)
    exp_all(v, got)
    exact = np.exp(v.astype(np.float64)).astype(np.float32)
    normal = exact >= np.finfo(np.float32).tiny
    ulps = np.abs(got.view(np.int32).astype(np.int64) - exact.view(np.int32).astype(np.int64))
    assert normal.sum() > 400_000 and ulps[normal].max() <= 1
    assert got[v == 0].tolist() == [1.0] * int((v == 0).sum())
    beyond = np.array([-87.5, -100.0, -1e30, -np.inf, np.nan], np.float32)
    out = np.empty_like(beyond)
    exp_all(beyond, out)
    assert out[:4].tolist() == [0.0] * 4 and np.isnan(out[4])


@pytest.mark.skipif(not kernels.numba_available(), reason="numba is not installed")
@pytest.mark.parametrize("kind", numpy_ref.ACTIVATION_KINDS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_one_channel_3x3_kernels_are_the_general_short_patch_loops_bit_for_bit(dtype, kind):
    from minarn.kernels import numba_jit

    x = rng_array((3, 9, 8, 1), dtype, seed=5)
    kernel, bias = rng_array((3, 3, 1, 11), dtype, seed=6), rng_array((11,), dtype, seed=7)
    got = numba_jit.shallow_conv_forward(x, kernel, bias, 1, ((0, 0), (0, 0)), kind)
    general = np.empty_like(got)
    numba_jit._shallow_conv_forward(x, kernel, bias, True, numba_jit._KIND[kind], 1, 0, 0, general)
    np.testing.assert_array_equal(got, general)
    dz = rng_array(got.shape, dtype, seed=8)
    dkernel, dbias = numba_jit.shallow_conv_weight_grad(x, dz, 3, 3, 1, ((0, 0), (0, 0)))
    partial = np.zeros((numba_jit._weight_grad_chunks(dz), 10, 11))  # the same partial sums
    numba_jit._shallow_conv_weight_grad(x, dz, 3, 3, 1, 0, 0, partial)
    general_sums = partial.sum(axis=0).astype(dtype)
    np.testing.assert_array_equal(dkernel, general_sums[:-1].reshape(3, 3, 1, 11))
    np.testing.assert_array_equal(dbias, general_sums[-1])
