"""The fused paths of issue 20 against the readable per-layer path they replace: the attention module's fused
forward (``kernels.sigmoid_gate``) and backward (``kernels.attention_backward_mask_and_sum``), on every backend,
property-based over shapes, float32 and float64; and the run-time allocator setting (``minarn.allocator``).
No timings here: the measured effect is in benchmarks/RESULTS.md ("Session 8")."""

from __future__ import annotations

import platform

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from scipy import special
from strategies import BACKENDS, SEEDS

from minarn import allocator, kernels
from minarn.kernels import numpy_ref
from minarn.layers import Conv2D, ConvReLUPool, MaxPooling2D, Multiply, get_activation
from minarn.layers.attention import AttentionModule
from minarn.layers.residual import ResidualBlock

DTYPES = st.sampled_from(["float32", "float64"])
# float32 round-off of a few chained products and 1x1 convolutions (C <= 12 terms); float64 to 1e-12
TOL = {"float32": dict(rtol=1e-4, atol=1e-5), "float64": dict(rtol=1e-11, atol=1e-12)}


def values(rng: np.random.Generator, shape: tuple[int, ...], dtype: str, bound: float = 3.0) -> np.ndarray:
    return rng.uniform(-bound, bound, size=shape).astype(dtype)


# -- the kernels ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", BACKENDS)
@given(rows=st.integers(1, 600), channels=st.integers(1, 20), bias=st.booleans(), dtype=DTYPES, seed=SEEDS)
def test_sigmoid_gate_is_mask_then_product(name, rows, channels, bias, dtype, seed):
    rng = np.random.default_rng(seed)
    z = values(rng, (rows, channels), dtype, bound=100.0)  # far into both tails, past float32 exp's underflow
    b = values(rng, (channels,), dtype) if bias else None
    x = values(rng, (rows, channels), dtype)
    pre = (z + b if bias else z).astype(np.float64)
    w_ref = special.expit(pre)
    with kernels.backend(name) as K:
        z_work = z.copy()
        out = K.sigmoid_gate(z_work, b, x)
    assert out.dtype == z.dtype and out.shape == z.shape
    np.testing.assert_allclose(z_work, w_ref, **TOL[dtype])  # z became the mask, in place
    np.testing.assert_allclose(out, x * w_ref, **TOL[dtype])
    # the same numbers as the two kernels it replaces, on the reference
    z_ref = z.copy()
    w = numpy_ref.bias_activation(z_ref, b, "sigmoid")
    np.testing.assert_allclose(out, x * w, **TOL[dtype])


@pytest.mark.parametrize("name", BACKENDS)
@given(rows=st.integers(1, 600), channels=st.integers(1, 20), dtype=DTYPES, seed=SEEDS)
def test_attention_backward_mask_and_sum_matches_product_and_sigmoid_rules(name, rows, channels, dtype, seed):
    rng = np.random.default_rng(seed)
    dout, x = values(rng, (rows, channels), dtype), values(rng, (rows, channels), dtype)
    w = special.expit(values(rng, (rows, channels), dtype)).astype(dtype)
    keep = dout.copy(), x.copy(), w.copy()
    with kernels.backend(name) as K:
        dx, dzb, dbias = K.attention_backward_mask_and_sum(dout, x, w)
    # the readable layers it replaces: Multiply's backward, then the sigmoid's from the pre-activation
    multiply, sigmoid = Multiply(), get_activation("sigmoid")
    pre = np.log(w) - np.log1p(-w)  # sigmoid(pre) = w
    multiply.forward((x, sigmoid.forward(pre)))
    dx_sep, dw = multiply.backward(dout)
    dzb_sep = sigmoid.backward(dw)
    np.testing.assert_allclose(dx, dout * w, **TOL[dtype])
    np.testing.assert_allclose(dzb, dout * x * w * (1 - w), **TOL[dtype])
    np.testing.assert_allclose(dx, dx_sep, **TOL[dtype])
    np.testing.assert_allclose(dzb, dzb_sep, **TOL[dtype])
    assert dbias.shape == (channels,) and dbias.dtype == np.dtype(dtype)
    np.testing.assert_allclose(dbias, dzb.astype(np.float64).sum(axis=0), **TOL[dtype])
    for before, after in zip(keep, (dout, x, w)):
        np.testing.assert_array_equal(before, after)  # inputs never written into


# -- the attention module: fused against layer by layer -------------------------------------------------------
def attention_pass(att: AttentionModule, x: np.ndarray, dout: np.ndarray, fused: bool):
    """Forward and backward on one path: (out, mask, dx, {sublayer/weight: grad})."""
    att.fused = fused
    out = att.forward(x, training=True).copy()
    mask = att.weights.copy()
    dx = att.backward(dout)
    grads = {f"{layer.name}/{k}": g.copy() for layer in (att.conv_a, att.conv_b) for k, g in layer.grads.items()}
    return out, mask, dx, grads


@pytest.mark.parametrize("name", BACKENDS)
@given(n=st.integers(1, 3), h=st.integers(1, 6), w=st.integers(1, 6), c=st.integers(1, 12), dtype=DTYPES,
       seed=SEEDS)
def test_fused_attention_matches_layer_by_layer(name, n, h, w, c, dtype, seed):
    rng = np.random.default_rng(seed)
    att = AttentionModule(c, ("conv_a", "conv_b", "multiply"), (int(rng.integers(1000)), int(rng.integers(1000))),
                          dtype)
    for layer in (att.conv_a, att.conv_b):  # non-zero biases, so the bias terms are exercised
        layer.params["bias"][:] = values(rng, (c,), dtype, bound=0.5)
    x = values(rng, (n, h, w, c), dtype)
    dout = values(rng, (n, h, w, c), dtype)
    keep_x, keep_dout = x.copy(), dout.copy()
    with kernels.backend(name):
        ref = attention_pass(att, x, dout, fused=False)
        got = attention_pass(att, x, dout, fused=True)
        # the two paths mix: a fused forward, then the per-layer backward (the caches are the same)
        att.fused = True
        att.forward(x, training=True)
        att.fused = False
        mixed_dx = att.backward(dout)
    out, mask, dx, grads = got
    np.testing.assert_allclose(out, ref[0], **TOL[dtype])
    np.testing.assert_allclose(mask, ref[1], **TOL[dtype])
    np.testing.assert_allclose(dx, ref[2], **TOL[dtype])
    np.testing.assert_allclose(mixed_dx, ref[2], **TOL[dtype])
    assert sorted(grads) == sorted(ref[3]) == ["conv_a/bias", "conv_a/kernel", "conv_b/bias", "conv_b/kernel"]
    for key, g in grads.items():
        assert g.dtype == np.dtype(dtype)
        np.testing.assert_allclose(g, ref[3][key], **TOL[dtype], err_msg=key)
    assert out.dtype == dx.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(x, keep_x)
    np.testing.assert_array_equal(dout, keep_dout)


# -- blocks with a fused path: the readable path, then the fused one ------------------------------------------
def readable_then_fused(name, block, x, dtype, seed, backward=None, after_forward=None):
    """[readable run, fused run] of ``block`` on backend ``name``, each (output, dx, grads), for the same ``x`` and
    the same dout (drawn from ``seed + 1``). ``backward(dout)`` replaces ``block.backward``; ``after_forward(fused)``
    runs between each forward and its backward."""
    runs = []
    with kernels.backend(name):
        for fused in (False, True):
            block.fused = fused
            out = block.forward(x, training=True).copy()
            if after_forward is not None:
                after_forward(fused)
            dout = values(np.random.default_rng(seed + 1), out.shape, dtype)
            dx = block.backward(dout) if backward is None else backward(dout)
            runs.append((out, dx, {k: g.copy() for k, g in block.grads.items()}))
    return runs


# -- the residual block: ReLU and pooling fused against layer by layer -----------------------------------------
@pytest.mark.parametrize("name", BACKENDS)
@given(n=st.integers(1, 3), h=st.integers(2, 7), w=st.integers(2, 7), c=st.integers(1, 5), f=st.integers(1, 6),
       attention=st.booleans(), residual=st.booleans(), dtype=DTYPES, seed=SEEDS)
def test_fused_relu_and_pooling_of_the_residual_block_match_layer_by_layer(name, n, h, w, c, f, attention, residual,
                                                                           dtype, seed):
    """Bit for bit: the fused step keeps no ReLU map, yet gives the readable path's output, dx and every gradient
    (ties at 0 in a window included: the ReLU makes many)."""
    rng = np.random.default_rng(seed)
    counter = iter(range(100))
    block = ResidualBlock(c, f, lambda base: f"{base}_{next(counter)}", lambda: int(rng.integers(1000)),
                          attention=attention, residual=residual, dtype=dtype)
    x = values(rng, (n, h, w, c), dtype)
    (out_ref, dx_ref, grads_ref), (out, dx, grads) = readable_then_fused(name, block, x, dtype, seed)
    np.testing.assert_array_equal(out, out_ref)
    np.testing.assert_array_equal(dx, dx_ref)
    assert sorted(grads) == sorted(grads_ref) and grads
    for key in grads:
        np.testing.assert_array_equal(grads[key], grads_ref[key], err_msg=key)


def test_the_fused_residual_block_keeps_no_relu_map():
    block = ResidualBlock(2, 3, lambda base: base, lambda: 0)
    block.forward(np.ones((1, 4, 4, 2), np.float32), training=True)
    assert block.relu._cache is None  # the readable path's ReLU would hold its (1, 4, 4, 3) output


# -- the first stage: convolution + ReLU + pooling, fused against layer by layer --------------------------------
@pytest.mark.parametrize("name", BACKENDS)
@given(n=st.integers(1, 3), h=st.integers(4, 9), w=st.integers(4, 9), c=st.sampled_from([1, 3]), f=st.integers(1, 6),
       padding=st.sampled_from(["valid", "same"]), input_grad=st.booleans(), dtype=DTYPES, seed=SEEDS)
def test_fused_conv_relu_pool_matches_layer_by_layer(name, n, h, w, c, f, padding, input_grad, dtype, seed):
    """The fused block keeps no ReLU map, yet gives the readable path's output, dx and gradients: bit for bit for a
    one-channel input (ARN-CNN's first layer: the short-patch kernel sums the bias gradient itself), to round-off
    for three channels (there the readable path sums the bias gradient in the ReLU's backward pass)."""
    rng = np.random.default_rng(seed)
    conv = Conv2D(c, f, 3, padding=padding, activation="relu", seed=int(rng.integers(1000)), dtype=dtype)
    conv.params["bias"][...] = values(rng, (f,), dtype, bound=0.5)  # some windows all <= 0: ties at 0
    block = ConvReLUPool(conv, MaxPooling2D(2))
    x = values(rng, (n, h, w, c), dtype)

    def released(fused: bool) -> None:
        assert (conv._cache[2] is None) == fused  # the fused path released the (n, oh, ow, f) ReLU map

    (out_ref, dx_ref, grads_ref), (out, dx, grads) = readable_then_fused(
        name, block, x, dtype, seed, backward=lambda dout: block.backward(dout, input_grad), after_forward=released)
    close = np.testing.assert_array_equal if c == 1 else (
        lambda a, b, err_msg="": np.testing.assert_allclose(a, b, **TOL[dtype], err_msg=err_msg))
    np.testing.assert_array_equal(out, out_ref)
    assert (dx is None) == (dx_ref is None) == (not input_grad)
    if input_grad:
        close(dx, dx_ref)
    assert sorted(grads) == sorted(grads_ref) == [f"{conv.name}/bias", f"{conv.name}/kernel"]
    for key in grads:
        close(grads[key], grads_ref[key], err_msg=key)


def test_conv_relu_pool_refuses_another_activation_and_a_released_conv_refuses_backward():
    with pytest.raises(ValueError, match="conv_s.*must have a ReLU activation, got 'sigmoid'"):
        ConvReLUPool(Conv2D(1, 2, 3, activation="sigmoid", name="conv_s"), MaxPooling2D(2))
    conv = Conv2D(1, 2, 3, activation="relu", name="conv_r")
    out = conv.forward(np.ones((1, 4, 4, 1), np.float32), training=True)
    conv.release_output()
    with pytest.raises(RuntimeError, match="conv_r.*output was released"):
        conv.backward(np.ones_like(out))


def test_forward_preactivation_needs_a_fused_activation():
    with pytest.raises(ValueError, match="conv_g.*forward_preactivation needs a fusable activation"):
        Conv2D(4, 4, 1, activation="gelu", name="conv_g").forward_preactivation(np.zeros((1, 2, 2, 4), np.float32))


# -- the allocator setting ------------------------------------------------------------------------------------
@pytest.fixture
def fresh_allocator(monkeypatch):
    monkeypatch.setattr(allocator, "_applied", None)  # the setting is decided once per process


def test_allocator_opt_out_and_user_settings(fresh_allocator, monkeypatch):
    calls = []
    monkeypatch.setattr(allocator, "_mallopt", lambda *settings: calls.append(settings) or True)
    assert allocator.tune_glibc_malloc({"MINARN_MALLOC": "default"}) == "opted out"
    monkeypatch.setattr(allocator, "_applied", None)
    assert allocator.tune_glibc_malloc({"GLIBC_TUNABLES": "glibc.malloc.mmap_max=0"}) == "user settings"
    monkeypatch.setattr(allocator, "_applied", None)
    assert allocator.tune_glibc_malloc({"MALLOC_TRIM_THRESHOLD_": "1"}) == "user settings"
    assert calls == []
    monkeypatch.setattr(allocator, "_applied", None)
    assert allocator.tune_glibc_malloc({"GLIBC_TUNABLES": "glibc.cpu.x86_avx=0"}) == "tuned"
    assert calls == [((allocator.M_MMAP_MAX, 0), (allocator.M_TRIM_THRESHOLD, 2**31 - 1))]
    assert allocator.tune_glibc_malloc({"MINARN_MALLOC": "default"}) == "tuned"  # once per process
    assert len(calls) == 1


def test_allocator_bad_value_names_the_variable(fresh_allocator):
    with pytest.raises(ValueError, match="MINARN_MALLOC='jemalloc': expected one of tuned, default"):
        allocator.tune_glibc_malloc({"MINARN_MALLOC": "jemalloc"})


def test_allocator_real_call(fresh_allocator):
    got = allocator.tune_glibc_malloc({})
    expected = "tuned" if platform.system() == "Linux" and platform.libc_ver()[0] == "glibc" else "not glibc"
    assert got == expected
