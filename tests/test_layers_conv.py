"""Conv2D: gradients (input, kernel, bias) by central differences, forward against a direct 6-loop
convolution, Keras "same" padding, fused activations, initialisation. Every test touching the layer runs on
every available kernel backend."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import assume, example, given
from strategies import (
    BACKENDS,
    GRAD_TOL,
    SEEDS,
    SMOOTH_ACTIVATIONS,
    ConvCase,
    check_layer_on,
    conv_cases,
    keras_out_and_pads,
    random_dout,
    uniform,
)

from minarn import kernels
from minarn.layers import ACTIVATIONS, Conv2D, get_activation
from minarn.layers.conv import conv_output_size, same_padding

backends = pytest.mark.parametrize("backend", BACKENDS)


def conv2d_naive(x: np.ndarray, kernel: np.ndarray, bias: np.ndarray | None, stride: int, padding: str) -> np.ndarray:
    """The oracle: six nested loops (batch, output row, output column, filter, kernel row, kernel column),
    a dot product over input channels, Keras padding (extra row/column at the end)."""
    N, H, W, _ = x.shape
    kh, kw, _, F = kernel.shape
    OH, pad_h = keras_out_and_pads(H, kh, stride, padding)
    OW, pad_w = keras_out_and_pads(W, kw, stride, padding)
    xp = np.pad(x.astype(np.float64), ((0, 0), pad_h, pad_w, (0, 0)))
    out = np.zeros((N, OH, OW, F))
    for n in range(N):
        for p in range(OH):
            for q in range(OW):
                for f in range(F):
                    acc = 0.0 if bias is None else float(bias[f])
                    for i in range(kh):
                        for j in range(kw):
                            acc += float(xp[n, p * stride + i, q * stride + j, :] @ kernel[i, j, :, f])
                    out[n, p, q, f] = acc
    return out


def randomise_kernel(layer: Conv2D, rng: np.random.Generator) -> None:
    layer.params["kernel"][...] = rng.uniform(-1, 1, size=layer.params["kernel"].shape)


# -- gradients -------------------------------------------------------------------------------------------
@backends
@given(case=conv_cases(activations=SMOOTH_ACTIVATIONS), seed=SEEDS)
@example(case=ConvCase(n=2, h=6, w=5, c=2, f=3, kh=3, kw=3, stride=2, padding="same", activation="gelu"), seed=0)
def test_conv2d_gradients(backend, case, seed):
    rng = np.random.default_rng(seed)
    layer, x = case.build(rng, dtype=np.float64)
    errors = check_layer_on(backend, layer, x, rng)
    assert set(errors) == {"x", *layer.params}
    assert max(errors.values()) < GRAD_TOL, errors


@backends
@given(case=conv_cases(activations=("relu", "selu")), seed=SEEDS)
@example(case=ConvCase(n=1, h=3, w=4, c=2, f=2, kh=1, kw=1, stride=1, padding="valid", activation="relu"), seed=1)
def test_conv2d_gradients_through_kinked_activation(backend, case, seed):
    rng = np.random.default_rng(seed)
    layer, x = case.build(rng, dtype=np.float64)
    z = conv2d_naive(x, layer.params["kernel"], layer.params.get("bias"), case.stride, case.padding)
    assume(np.abs(z).min() > 1e-3)  # no pre-activation within 1e-3 of the kink at 0
    errors = check_layer_on(backend, layer, x, rng)
    assert max(errors.values()) < GRAD_TOL, errors


# -- forward ---------------------------------------------------------------------------------------------
@backends
@given(case=conv_cases(), seed=SEEDS)
@example(case=ConvCase(n=1, h=1, w=5, c=1, f=2, kh=3, kw=2, stride=2, padding="same"), seed=0)
def test_conv2d_forward_matches_naive(backend, case, seed):
    rng = np.random.default_rng(seed)
    layer, x = case.build(rng, dtype=np.float64)
    randomise_kernel(layer, rng)
    with kernels.backend(backend):
        out = layer.forward(x)
    assert out.shape == case.out_shape
    expected = conv2d_naive(x, layer.params["kernel"], layer.params.get("bias"), case.stride, case.padding)
    np.testing.assert_allclose(out, expected, rtol=1e-12, atol=1e-12)


@backends
@given(case=conv_cases(activations=(None, "relu", "gelu")), seed=SEEDS)
@example(case=ConvCase(n=2, h=7, w=3, c=3, f=1, kh=2, kw=2, stride=1, padding="same", activation="relu"), seed=3)
def test_conv2d_float32_in_float32_out(backend, case, seed):
    rng = np.random.default_rng(seed)
    layer, x = case.build(rng, dtype=np.float32)
    with kernels.backend(backend):
        out = layer.forward(x)
        dx = layer.backward(random_dout(rng, out.shape, np.float32))
    assert out.dtype == np.float32 and dx.dtype == np.float32
    assert all(g.dtype == np.float32 for g in layer.grads.values())
    z = conv2d_naive(x, layer.params["kernel"], layer.params.get("bias"), case.stride, case.padding)
    expected = get_activation(case.activation).forward(z)
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4)


@backends
@pytest.mark.parametrize("padding", ["valid", "same"])
@pytest.mark.parametrize("stride", [1, 2])
def test_pointwise_kernel_matches_naive(backend, padding, stride):
    # 1x1 at stride 1 skips im2col (the input is already the column matrix); at stride 2 it does not.
    rng = np.random.default_rng(7)
    layer = Conv2D(3, 4, 1, strides=stride, padding=padding, seed=1, dtype=np.float64)
    layer.params["bias"][...] = rng.uniform(-1, 1, 4)
    x = uniform(rng, (2, 5, 3, 3))
    with kernels.backend(backend):
        out = layer.forward(x)
    errors = check_layer_on(backend, layer, x, rng)
    expected = conv2d_naive(x, layer.params["kernel"], layer.params["bias"], stride, padding)
    np.testing.assert_allclose(out, expected, rtol=1e-12, atol=1e-12)
    assert max(errors.values()) < GRAD_TOL, errors


# -- Keras "same" padding --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("size", "k", "stride", "out", "pads"),
    [
        (31, 3, 2, 16, (1, 1)),
        (64, 3, 2, 32, (0, 1)),  # odd total: the extra pixel goes at the end
        (32, 3, 1, 32, (1, 1)),
        (16, 3, 2, 8, (0, 1)),
        (7, 3, 2, 4, (1, 1)),
        (6, 2, 1, 6, (0, 1)),
        (5, 1, 2, 3, (0, 0)),
        (4, 1, 2, 2, (0, 0)),  # negative total is clamped to 0
        (1, 3, 1, 1, (1, 1)),  # kernel larger than the input
    ],
)
def test_same_padding_sizes(size, k, stride, out, pads):
    assert conv_output_size(size, k, stride, "same") == out
    assert same_padding(size, k, stride) == pads


@pytest.mark.parametrize(
    ("size", "k", "stride", "padding", "out"),
    [
        (31, 3, 2, "same", 16),
        (64, 3, 2, "same", 32),
        (31, 3, 1, "valid", 29),
        (31, 3, 2, "valid", 15),
        (32, 3, 2, "valid", 15),
    ],
)
def test_conv2d_output_shape(size, k, stride, padding, out):
    layer = Conv2D(3, 8, k, strides=stride, padding=padding)
    assert layer.compute_output_shape((None, size, size + 1, 3))[:2] == (None, out)
    assert layer.compute_output_shape((2, size, size, 3)) == (2, out, out, 8)


@backends
def test_same_padding_puts_the_extra_row_at_the_end(backend):
    # H = W = 6, k = 3, stride 2: total padding 1 per axis, which Keras puts at the bottom/right.
    rng = np.random.default_rng(0)
    layer = Conv2D(2, 3, 3, strides=2, padding="same", seed=0, dtype=np.float64)
    x = uniform(rng, (1, 6, 6, 2))
    with kernels.backend(backend):
        out = layer.forward(x)
    kernel, bias = layer.params["kernel"], layer.params["bias"]
    at_end = conv2d_naive(np.pad(x, ((0, 0), (0, 1), (0, 1), (0, 0))), kernel, bias, 2, "valid")
    at_start = conv2d_naive(np.pad(x, ((0, 0), (1, 0), (1, 0), (0, 0))), kernel, bias, 2, "valid")
    assert out.shape == (1, 3, 3, 3)
    np.testing.assert_allclose(out, at_end, rtol=1e-12, atol=1e-12)
    assert not np.allclose(out, at_start)


@backends
def test_same_padding_large_stride2_image(backend):
    # 31 -> 16 and 64 -> 32 on real forwards (the sizes of the paper's stride-2 blocks).
    rng = np.random.default_rng(1)
    for size, out in ((31, 16), (64, 32)):
        layer = Conv2D(1, 2, 3, strides=2, padding="same", seed=0, dtype=np.float64)
        x = uniform(rng, (1, size, size, 1))
        with kernels.backend(backend):
            y = layer.forward(x)
        assert y.shape == (1, out, out, 2)
        np.testing.assert_allclose(y, conv2d_naive(x, layer.params["kernel"], None, 2, "same"), rtol=1e-12, atol=1e-12)


# -- activations, bias, initialisation ------------------------------------------------------------------
@backends
@pytest.mark.parametrize("activation", [*ACTIVATIONS, None])
def test_fused_activation_equals_separate_activation(backend, activation):
    rng = np.random.default_rng(2)
    fused = Conv2D(2, 3, 3, padding="same", activation=activation, seed=4, dtype=np.float64)
    plain = Conv2D(2, 3, 3, padding="same", activation=None, seed=4, dtype=np.float64)
    bias = rng.uniform(-1, 1, 3)
    fused.params["bias"][...] = bias
    plain.params["bias"][...] = bias
    act = get_activation(activation)
    x = uniform(rng, (2, 4, 5, 2))
    dout = random_dout(rng, (2, 4, 5, 3))
    with kernels.backend(backend):
        out = fused.forward(x, training=True)
        expected = act.forward(plain.forward(x, training=True))
        dx = fused.backward(dout)
        dx_expected = plain.backward(act.backward(dout))
    np.testing.assert_allclose(out, expected, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(dx, dx_expected, rtol=1e-12, atol=1e-12)
    for key in fused.grads:
        np.testing.assert_allclose(fused.grads[key], plain.grads[key], rtol=1e-12, atol=1e-12)


def test_activation_flag_changes_output():
    x = uniform(np.random.default_rng(3), (1, 4, 4, 2))
    outs = {a: Conv2D(2, 3, 3, activation=a, seed=0).forward(x) for a in ("relu", "sigmoid", "gelu", "softmax", None)}
    names = list(outs)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            assert not np.allclose(outs[a], outs[b]), (a, b)
    assert (outs["relu"] >= 0).all()
    np.testing.assert_allclose(outs["softmax"].sum(axis=-1), 1.0, rtol=1e-6)


@pytest.mark.parametrize("activation", ["bogus", "leaky_relu", ""])
def test_unknown_activation_raises(activation):
    with pytest.raises(ValueError, match="activation"):
        Conv2D(3, 4, 3, activation=activation)


@backends
def test_use_bias_false(backend):
    rng = np.random.default_rng(4)
    layer = Conv2D(2, 3, 2, use_bias=False, seed=0, dtype=np.float64)
    assert set(layer.params) == {"kernel"} and set(layer.grads) == {"kernel"}
    x = uniform(rng, (1, 4, 3, 2))
    with kernels.backend(backend):
        out = layer.forward(x)
    errors = check_layer_on(backend, layer, x, rng)
    np.testing.assert_allclose(out, conv2d_naive(x, layer.params["kernel"], None, 1, "valid"), rtol=1e-12, atol=1e-12)
    assert set(errors) == {"x", "kernel"} and max(errors.values()) < GRAD_TOL


@pytest.mark.parametrize(("kh", "kw", "c", "f"), [(3, 3, 3, 32), (1, 1, 16, 8), (2, 3, 4, 5)])
def test_glorot_uniform_init(kh, kw, c, f):
    layer = Conv2D(c, f, (kh, kw), seed=0)
    kernel = layer.params["kernel"]
    limit = np.sqrt(6.0 / (kh * kw * c + kh * kw * f))  # Keras: fan_in = kh*kw*in, fan_out = kh*kw*filters
    assert kernel.shape == (kh, kw, c, f) and kernel.dtype == np.float32
    assert np.abs(kernel).max() <= limit
    assert np.abs(kernel).max() > 0.8 * limit  # fills the range, not a narrower one
    assert abs(float(kernel.mean())) < 0.25 * limit
    np.testing.assert_array_equal(layer.params["bias"], np.zeros(f, np.float32))
    assert layer.params["bias"].dtype == np.float32


def test_init_seeded():
    a, b, c = Conv2D(3, 4, 3, seed=1), Conv2D(3, 4, 3, seed=1), Conv2D(3, 4, 3, seed=2)
    np.testing.assert_array_equal(a.params["kernel"], b.params["kernel"])
    assert not np.array_equal(a.params["kernel"], c.params["kernel"])
    assert Conv2D(3, 4, 3, dtype=np.float64).params["kernel"].dtype == np.float64


@pytest.mark.parametrize(
    "kwargs",
    [
        {"padding": "full"},
        {"strides": 0},
        {"kernel_size": 0},
        {"filters": 0},
        {"in_channels": -1},
        {"strides": 1.5},
    ],
)
def test_bad_constructor_arguments(kwargs):
    args = {"in_channels": 3, "filters": 4, "kernel_size": 3, **kwargs}
    with pytest.raises(ValueError):
        Conv2D(**args)


@backends
def test_input_smaller_than_kernel_raises(backend):
    layer = Conv2D(1, 1, 3, name="conv2d_small")
    with kernels.backend(backend), pytest.raises(ValueError, match="conv2d_small"):
        layer.forward(np.zeros((1, 2, 5, 1), np.float32))


@backends
@pytest.mark.parametrize("activation", ["relu", "sigmoid", "gelu", None])
def test_backward_without_input_grad_gives_the_same_weight_grads(backend, activation):
    rng = np.random.default_rng(5)
    layer = Conv2D(2, 3, 3, padding="same", activation=activation, seed=1, dtype=np.float64)
    x = rng.standard_normal((2, 5, 6, 2))
    dout = rng.standard_normal((2, 5, 6, 3))
    with kernels.backend(backend):
        layer.forward(x, training=True)
        dx = layer.backward(dout)
        full = {k: g.copy() for k, g in layer.grads.items()}
        layer.forward(x, training=True)
        assert layer.backward(dout, input_grad=False) is None
    assert dx.shape == x.shape and np.abs(dx).max() > 0
    for k, g in full.items():
        np.testing.assert_array_equal(layer.grads[k], g, err_msg=k)


# -- blocks of images ------------------------------------------------------------------------------------
@backends
@pytest.mark.parametrize("path", ["im2col", "winograd"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_blocks_of_images_give_the_whole_batch_result(backend, path, dtype, monkeypatch):
    """im2col's columns and Winograd's V and M are built one block of images at a time (``image_blocks``):
    with blocks of one image (and of three) forward, every gradient and dx equal one block of the whole batch."""
    rng = np.random.default_rng(11)
    x = rng.uniform(-1, 1, size=(7, 9, 8, 4)).astype(dtype)
    layer = Conv2D(4, 4, 3, padding="same", activation="relu", dtype=dtype, seed=3)
    monkeypatch.setattr(Conv2D, "_is_winograd",
                        lambda self, K, shape, training=True, backward=False: path == "winograd")
    dout = rng.uniform(-1, 1, size=(7, 9, 8, 4)).astype(dtype)
    results = {}
    for label, block_bytes in (("whole", 1 << 40), ("single", 1), ("three", 3 * 9 * 8 * 36 * np.dtype(dtype).itemsize)):
        monkeypatch.setattr(kernels.scratch, "BLOCK_BYTES", block_bytes)
        if label == "single":
            assert kernels.image_blocks(7, 100) == [(i, i + 1) for i in range(7)]
        with kernels.backend(backend):
            out = layer.forward(x, training=True).copy()
            dx = layer.backward(dout)
        results[label] = (out, dx, {k: g.copy() for k, g in layer.grads.items()})
    eps = 1e-5 if dtype == np.float32 else 1e-12  # relative to each array's scale (F(4x4, 3x3): ~4e-6 in float32)

    def close(actual, desired, what):
        np.testing.assert_allclose(actual, desired, rtol=eps, atol=eps * np.abs(desired).max(), err_msg=what)

    whole = results["whole"]
    for label in ("single", "three"):
        out, dx, grads = results[label]
        close(out, whole[0], f"{label}: output")
        close(dx, whole[1], f"{label}: dx")
        for k in whole[2]:
            close(grads[k], whole[2][k], f"{label}: d{k}")
