"""Winograd F(2x2, 3x3) and F(4x4, 3x3): the tile transforms against their matrix definitions, every backend
against the NumPy reference, the whole algorithm against im2col convolution (forward and both gradients), and
Conv2D's choice of it (gradient-checked when forced on small layers)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from strategies import BACKENDS, GRAD_TOL, SEEDS, check_layer_on

import minarn
from minarn import data, kernels
from minarn.kernels import numpy_ref, winograd
from minarn.layers import Conv2D, conv

backends = pytest.mark.parametrize("backend", BACKENDS)
no_workspace = lambda shape, dtype, slot: np.empty(shape, dtype)  # a fresh array per call
variants = pytest.mark.parametrize("variant", [winograd.F2, winograd.F4], ids=["F2", "F4"])


def tile_windows_by_loops(x, top, left, th, tw, m):
    """d[n, a, b] = the s x s window (s = m + 2) at rows m a - top.., columns m b - left.. (zeros outside):
    (N, TH, TW, s, s, C)."""
    N, H, W, C = x.shape
    s = m + 2
    d = np.zeros((N, th, tw, s, s, C), dtype=x.dtype)
    for a in range(th):
        for b in range(tw):
            for i in range(s):
                for j in range(s):
                    h, w = m * a + i - top, m * b + j - left
                    if 0 <= h < H and 0 <= w < W:
                        d[:, a, b, i, j] = x[:, h, w]
    return d


@variants
@given(seed=SEEDS, n=st.integers(1, 2), h=st.integers(1, 9), w=st.integers(1, 9), c=st.integers(1, 3),
       top=st.integers(0, 2), left=st.integers(0, 2))
def test_reference_transforms_match_the_matrix_definitions(variant, seed, n, h, w, c, top, left):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, h, w, c))
    m, s = variant.m, variant.s
    th, tw = winograd.tiles(h, w, m)
    d = tile_windows_by_loops(x, top, left, th, tw, m)
    v = numpy_ref.winograd_input(x, top, left, th, tw, variant.b_t)
    want_v = np.einsum("xu,ntbuvc,yv->xyntbc", variant.b_t, d, variant.b_t).reshape(s * s, -1, c)
    np.testing.assert_allclose(v, want_v, atol=1e-12)

    mm = rng.standard_normal((s * s, n * th * tw, c))
    y = numpy_ref.winograd_output(mm, (n, h, w, c), th, tw, variant.a_t)
    mt = mm.reshape(s, s, n, th, tw, c)
    for a in range(th):
        for b in range(tw):
            tile = np.einsum("xu,uvnc,yv->nxyc", variant.a_t, mt[:, :, :, a, b], variant.a_t)
            rows, cols = min(m, h - m * a), min(m, w - m * b)
            np.testing.assert_allclose(y[:, m * a : m * a + rows, m * b : m * b + cols], tile[:, :rows, :cols],
                                       atol=1e-12)

    # The output transform's adjoint: <winograd_output(m), dz> == <m, winograd_output_adjoint(dz)>
    dz = rng.standard_normal(y.shape)
    dm = numpy_ref.winograd_output_adjoint(dz, th, tw, variant.a_t)
    np.testing.assert_allclose(np.vdot(y, dz), np.vdot(mm, dm), rtol=1e-10, atol=1e-10)


@variants
def test_filter_transform_and_its_adjoint(variant):
    rng = np.random.default_rng(0)
    s = variant.s
    g = rng.standard_normal((3, 3, 2, 5))
    u = winograd.filter_transform(g, variant)
    assert u.shape == (s * s, 2, 5)
    np.testing.assert_allclose(u.reshape(s, s, 2, 5)[:, :, 1, 3], variant.g @ g[:, :, 1, 3] @ variant.g.T)
    du = rng.standard_normal(u.shape)
    np.testing.assert_allclose(np.vdot(u, du), np.vdot(g, winograd.filter_transform_adjoint(du, variant)),
                               rtol=1e-12)


@variants
def test_the_variants_compute_a_1d_convolution(variant):
    """A^T [(G g) * (B^T d)] is the valid correlation of an (m + 2)-window d with the 3-tap g."""
    rng = np.random.default_rng(variant.m)
    d, g = rng.standard_normal(variant.s), rng.standard_normal(3)
    np.testing.assert_allclose(variant.a_t @ ((variant.g @ g) * (variant.b_t @ d)), np.correlate(d, g, "valid"),
                               rtol=1e-12, atol=1e-12)


@variants
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("shape", [(2, 7, 6, 3, 1, 1), (1, 9, 8, 5, 0, 0), (3, 4, 5, 2, 2, 0), (1, 1, 1, 1, 1, 1),
                                   (2, 11, 10, 9, 1, 2)])
@backends
def test_backends_match_the_reference(backend, shape, dtype, variant):
    n, h, w, c, top, left = shape
    rng = np.random.default_rng(1)
    x = rng.standard_normal((n, h, w, c)).astype(dtype)
    th, tw = winograd.tiles(h, w, variant.m)
    k = variant.s**2
    m = rng.standard_normal((k, n * th * tw, c)).astype(dtype)
    b_t, a_t = variant.b_t.astype(dtype), variant.a_t.astype(dtype)
    tol = {"rtol": 1e-5, "atol": 1e-5} if dtype == "float32" else {"rtol": 1e-12, "atol": 1e-12}
    with kernels.backend(backend) as K:
        garbage = np.full((k, n * th * tw, c), np.nan, dtype=dtype)  # a reused buffer: must be overwritten
        v = K.winograd_input(x, top, left, th, tw, b_t, out=garbage)
        y = K.winograd_output(m, (n, h, w, c), th, tw, a_t)
        dm = K.winograd_output_adjoint(x, th, tw, a_t, out=np.full_like(garbage, np.nan))
        bias = rng.standard_normal(c).astype(dtype)
        fused = {kind: K.winograd_output(m, (n, h, w, c), th, tw, a_t, bias, kind, out=np.full_like(x, np.nan))
                 for kind in numpy_ref.ACTIVATION_KINDS}  # bias + activation with the transform, into a buffer
    assert v is garbage and v.dtype == y.dtype == dm.dtype == np.dtype(dtype)
    np.testing.assert_allclose(v, numpy_ref.winograd_input(x, top, left, th, tw, b_t), **tol)
    np.testing.assert_allclose(y, numpy_ref.winograd_output(m, (n, h, w, c), th, tw, a_t), **tol)
    pre = numpy_ref.winograd_output(m, (n, h, w, c), th, tw, a_t).astype(np.float64) + bias
    for kind, act in {"linear": pre, "relu": np.maximum(pre, 0), "sigmoid": 1 / (1 + np.exp(-pre))}.items():
        assert fused[kind].dtype == np.dtype(dtype)
        np.testing.assert_allclose(fused[kind], act, **tol)
    np.testing.assert_allclose(dm, numpy_ref.winograd_output_adjoint(x, th, tw, a_t), **tol)


def test_numba_backend_names_the_variants_it_has():
    pytest.importorskip("numba")
    with kernels.backend("numba") as K, pytest.raises(ValueError, match=r"F\(2x2, 3x3\) and F\(4x4, 3x3\) only"):
        K.winograd_input(np.zeros((1, 4, 4, 1)), 0, 0, 1, 1, 2 * winograd.B_T)


@pytest.mark.parametrize("backend", BACKENDS)
def test_f4_float32_error_stays_a_few_millionths_of_the_output_scale(backend):
    """F(4x4, 3x3) on conv2d_6's shape in float32, against float64 im2col: within 2e-5 of the output's largest
    magnitude (measured ~4e-6; F(2x2, 3x3) and im2col ~5e-7)."""
    rng = np.random.default_rng(5)
    x = rng.uniform(0, 1, (2, 31, 31, 64))
    kernel = rng.standard_normal((3, 3, 64, 64)) * np.sqrt(2 / 576)
    layer = Conv2D(64, 64, 3, padding="same", use_bias=False, dtype=np.float64)
    layer.params["kernel"][...] = kernel
    with kernels.backend("numpy"):
        truth = layer.forward(x)
    with kernels.backend(backend) as K:
        z = winograd.forward(K, x.astype(np.float32), kernel.astype(np.float32), ((1, 1), (1, 1)), (31, 31),
                             no_workspace, winograd.F4)
    assert z.dtype == np.float32
    assert np.abs(z - truth).max() / np.abs(truth).max() < 2e-5


@variants
@backends
@given(seed=SEEDS, n=st.integers(1, 3), h=st.integers(3, 11), w=st.integers(3, 11), c=st.integers(1, 4),
       f=st.integers(1, 4), padding=st.sampled_from(["valid", "same"]))
@example(seed=0, n=2, h=7, w=6, c=3, f=2, padding="same")
@example(seed=0, n=1, h=3, w=3, c=1, f=1, padding="valid")
def test_winograd_equals_im2col_convolution(variant, backend, seed, n, h, w, c, f, padding):
    """Forward and both gradients of the same convolution, by Winograd and by im2col (float64)."""
    rng = np.random.default_rng(seed)
    layer = Conv2D(c, f, 3, padding=padding, use_bias=False, seed=seed % 1000, dtype=np.float64)
    x = rng.standard_normal((n, h, w, c))
    with kernels.backend("numpy"):  # the numpy backend never picks Winograd: this is the im2col result
        z = layer.forward(x, training=True)
        dz = rng.standard_normal(z.shape)
        dx = layer.backward(dz)
    pads = layer._pads(h, w)
    with kernels.backend(backend) as K:
        z_w = winograd.forward(K, x, layer.params["kernel"], pads, z.shape[1:3], no_workspace, variant)
        dkernel, dx_w = winograd.backward(K, x, layer.params["kernel"], dz, pads, no_workspace, variant=variant)
        dkernel_only, none = winograd.backward(K, x, layer.params["kernel"], dz, pads, no_workspace, input_grad=False,
                                               variant=variant)
    np.testing.assert_allclose(z_w, z, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(dx_w, dx, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(dkernel, layer.grads["kernel"], rtol=1e-10, atol=1e-10)
    assert none is None
    np.testing.assert_array_equal(dkernel_only, dkernel)


@pytest.fixture
def winograd_everywhere(monkeypatch):
    """Conv2D picks Winograd for every 3x3 stride-1 layer, on every backend."""
    monkeypatch.setattr(conv, "WINOGRAD_MIN_CHANNELS", 1)
    monkeypatch.setattr(conv, "WINOGRAD_MIN_OUTPUT", 1)
    monkeypatch.setattr(numpy_ref, "WINOGRAD_MIN_OUTPUT", 1)
    calls = []
    original = winograd.forward
    monkeypatch.setattr(winograd, "forward", lambda *a, **k: calls.append(1) or original(*a, **k))
    return calls


@backends
@pytest.mark.parametrize("activation", ["sigmoid", "gelu", None])
@pytest.mark.parametrize("padding", ["valid", "same"])
@pytest.mark.parametrize("filters", [2, 5])
def test_conv2d_through_winograd_passes_the_gradient_check(backend, activation, padding, filters,
                                                           winograd_everywhere, monkeypatch):
    """2 -> 2 channels: Winograd forward and backward; 2 -> 5 (more than twice as many output as input
    channels): Winograd forward, im2col backward (the rule of ``Conv2D._is_winograd``); either way the gradients
    are those of the forward pass that ran."""
    backward_calls = []
    original = winograd.backward
    monkeypatch.setattr(winograd, "backward", lambda *a, **k: backward_calls.append(1) or original(*a, **k))
    rng = np.random.default_rng(3)
    layer = Conv2D(2, filters, 3, padding=padding, activation=activation, seed=4, dtype=np.float64)
    layer.params["bias"][...] = rng.uniform(-1, 1, filters)
    x = rng.standard_normal((2, 5, 4, 2))
    errors = check_layer_on(backend, layer, x, rng)
    assert winograd_everywhere, "the layer did not take the Winograd path"
    assert bool(backward_calls) == (filters <= 4), "the backward pass took the wrong path"
    assert set(errors) == {"x", "kernel", "bias"}
    assert max(errors.values()) < GRAD_TOL, errors


def test_the_rule_picks_the_layers_where_winograd_measured_faster():
    """Forward: conv2d_6, conv2d_10, conv2d_13 (3x3, >= 32 input channels, >= 100 output positions) and conv2d_5 by
    size, whose training forward pass ARNCNN keeps on im2col (``winograd_forward``, see the next test) but whose
    inference runs Winograd too; backward: conv2d_5,
    conv2d_6, conv2d_10, not conv2d_13 (256 output channels from 64: more than ``WINOGRAD_MAX_WIDENING`` times); the
    first layer (one channel) never; the NumPy backend (slower transforms) only on the 31x31 maps: conv2d_5 and
    conv2d_6."""
    model = minarn.ARNCNN(seed=0)
    model.forward(np.zeros((1, 64, 64, 1), np.float32))
    fast = type("Backend", (), {"WINOGRAD": True})
    convs = [layer for layer in model.layers if isinstance(layer, Conv2D)]
    forward = [layer.name for layer in convs if layer._is_winograd(fast, layer._cache[0].shape)]
    backward = [layer.name for layer in convs if layer._is_winograd(fast, layer._cache[0].shape, backward=True)]
    inference = [layer.name for layer in convs if layer._is_winograd(fast, layer._cache[0].shape, training=False)]
    assert forward == ["conv2d_6", "conv2d_10", "conv2d_13"]
    assert inference == ["conv2d_5", "conv2d_6", "conv2d_10", "conv2d_13"]  # no ReLU derivative to keep exact
    assert backward == ["conv2d_5", "conv2d_6", "conv2d_10"]
    conv5 = model.get_layer("conv2d_5")
    assert conv5 is model.block.conv1 and not conv5.winograd_forward
    conv5.winograd_forward = True
    assert conv5._is_winograd(fast, conv5._cache[0].shape)
    assert conv.WINOGRAD_VARIANT is winograd.F4
    conv5.winograd_forward = False
    assert [layer.name for layer in convs if layer._is_winograd(numpy_ref, layer._cache[0].shape)] == ["conv2d_6"]
    assert [layer.name for layer in convs if layer._is_winograd(numpy_ref, layer._cache[0].shape, training=False)] \
        == ["conv2d_5", "conv2d_6"]
    assert [layer.name for layer in convs if layer._is_winograd(numpy_ref, layer._cache[0].shape, backward=True)] \
        == ["conv2d_5", "conv2d_6"]


@pytest.mark.skipif(not kernels.numba_available(), reason="numba not installed")
def test_on_real_images_the_network_gradients_of_both_backends_agree():
    """MedNIST's black background makes conv2d_5's input exactly 0 over whole regions at initialization: there
    Winograd's round-off (+-1e-8 for an exact 0) flipped the ReLU's derivative and moved 30 % of conv2d_5's bias
    gradient. With conv2d_5's forward pass on im2col (its gradients on Winograd), every gradient of a float32 step
    agrees across the backends (the worst tensors are small biases whose sums cancel: 1e-2 relative), and all of
    them together to 1e-4."""
    splits = data.split_dataset(data.load_mednist())
    x = data.scale_images(splits.train.images[:8])
    y = data.one_hot(splits.train.labels[:8], 6)
    runs = {}
    for backend in ("numpy", "numba"):
        model = minarn.ARNCNN(seed=0)
        model.dropout.set_generator(np.random.default_rng(1))
        with kernels.backend(backend):
            loss, grads = model.loss_and_grads(x, y)
        runs[backend] = loss, {k: g.copy() for k, g in grads.items()}
    (loss_ref, ref), (loss, got) = runs["numpy"], runs["numba"]
    assert abs(loss - loss_ref) <= 1e-6 * abs(loss_ref)
    errors = {k: float(np.linalg.norm(got[k] - ref[k]) / np.linalg.norm(ref[k])) for k in ref}
    assert max(errors.values()) < 1e-2, sorted(errors.items(), key=lambda kv: kv[1])[-3:]
    overall = np.sqrt(sum(np.sum((got[k] - ref[k]) ** 2.0) for k in ref) / sum(np.sum(ref[k] ** 2.0) for k in ref))
    assert overall < 1e-4
