"""Kernel backends: the NumPy reference against loop definitions, the Numba twins against the reference on
hypothesis-drawn shapes (skipped cleanly without numba), and the backend selection (env var, use_backend,
context manager)."""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys
from dataclasses import dataclass

import numpy as np
import pytest
from hypothesis import assume, example, given
from hypothesis import strategies as st
from strategies import SEEDS

from minarn import kernels
from minarn.kernels import numpy_ref

NUMBA = pytest.param(
    "numba", marks=pytest.mark.skipif(not kernels.numba_available(), reason="numba is not installed")
)
fast_backends = pytest.mark.parametrize("fast", [NUMBA])


@dataclass(frozen=True)
class KernelCase:
    n: int
    h: int
    w: int
    c: int
    kh: int
    kw: int
    stride: int
    dtype: str = "float64"

    @property
    def x_shape(self) -> tuple[int, int, int, int]:
        return (self.n, self.h, self.w, self.c)

    @property
    def out_hw(self) -> tuple[int, int]:
        return (self.h - self.kh) // self.stride + 1, (self.w - self.kw) // self.stride + 1

    @property
    def cols_shape(self) -> tuple[int, int]:
        oh, ow = self.out_hw
        return (self.n * oh * ow, self.kh * self.kw * self.c)


@st.composite
def kernel_cases(draw, square: bool = False) -> KernelCase:
    """N 1-3, H and W 1-9, C 1-3, window 1-3 (square for pooling), stride 1-3 (gaps when stride > window)."""
    kh = draw(st.integers(1, 3))
    kw = kh if square else draw(st.integers(1, 3))
    h, w = draw(st.integers(1, 9)), draw(st.integers(1, 9))
    assume(h >= kh and w >= kw)
    return KernelCase(
        n=draw(st.integers(1, 3)),
        h=h,
        w=w,
        c=draw(st.integers(1, 3)),
        kh=kh,
        kw=kw,
        stride=draw(st.integers(1, 3)),
        dtype=draw(st.sampled_from(["float64", "float32"])),
    )


def draw_values(rng: np.random.Generator, shape, dtype: str, integers: bool) -> np.ndarray:
    """Small integers (exact sums in any order, many max-pool ties) or floats in [-3, 3]."""
    if integers:
        return rng.integers(-3, 4, size=shape).astype(dtype)
    return rng.uniform(-3, 3, size=shape).astype(dtype)


def im2col_loops(x: np.ndarray, kh: int, kw: int, stride: int) -> np.ndarray:
    """Definition: cols[(n, p, q), (i, j, c)] = x[n, p*stride + i, q*stride + j, c]."""
    N, H, W, C = x.shape
    OH, OW = (H - kh) // stride + 1, (W - kw) // stride + 1
    cols = np.empty((N * OH * OW, kh * kw * C), x.dtype)
    for n in range(N):
        for p in range(OH):
            for q in range(OW):
                row = (n * OH + p) * OW + q
                for i in range(kh):
                    for j in range(kw):
                        for c in range(C):
                            cols[row, (i * kw + j) * C + c] = x[n, p * stride + i, q * stride + j, c]
    return cols


# -- NumPy reference against the definitions ------------------------------------------------------------
@given(case=kernel_cases(), seed=SEEDS)
@example(case=KernelCase(n=1, h=5, w=4, c=2, kh=3, kw=2, stride=2), seed=0)
def test_numpy_im2col_matches_definition_and_col2im_is_its_adjoint(case, seed):
    rng = np.random.default_rng(seed)
    x = draw_values(rng, case.x_shape, case.dtype, integers=False)
    cols = numpy_ref.im2col(x, case.kh, case.kw, case.stride)
    assert cols.shape == case.cols_shape and cols.dtype == x.dtype
    np.testing.assert_array_equal(cols, im2col_loops(x, case.kh, case.kw, case.stride))
    # <im2col(x), y> == <x, col2im(y)>: col2im scatters with +=, exactly what backward needs.
    y = rng.standard_normal(case.cols_shape)
    x64 = x.astype(np.float64)
    lhs = float(np.sum(numpy_ref.im2col(x64, case.kh, case.kw, case.stride) * y))
    rhs = float(np.sum(x64 * numpy_ref.col2im(y, case.x_shape, case.kh, case.kw, case.stride)))
    assert lhs == pytest.approx(rhs, rel=1e-10, abs=1e-10)


def test_col2im_adds_overlapping_patches():
    # 1x3 input, 1x2 windows at stride 1: the middle pixel is in both patches and receives both values.
    cols = np.array([[1.0, 2.0], [10.0, 20.0]])
    dx = numpy_ref.col2im(cols, (1, 1, 3, 1), 1, 2, 1)
    np.testing.assert_array_equal(dx.ravel(), [1.0, 12.0, 20.0])


# -- Numba against NumPy ---------------------------------------------------------------------------------
@fast_backends
@given(case=kernel_cases(), seed=SEEDS, integers=st.booleans())
@example(case=KernelCase(n=2, h=7, w=5, c=3, kh=3, kw=3, stride=2, dtype="float32"), seed=0, integers=False)
def test_im2col_parity(fast, case, seed, integers):
    x = draw_values(np.random.default_rng(seed), case.x_shape, case.dtype, integers)
    with kernels.backend(fast) as module:
        cols = module.im2col(x, case.kh, case.kw, case.stride)
    expected = numpy_ref.im2col(x, case.kh, case.kw, case.stride)
    assert cols.dtype == expected.dtype and cols.shape == expected.shape
    np.testing.assert_array_equal(cols, expected)  # a pure copy: bit-identical


@fast_backends
@given(case=kernel_cases(), seed=SEEDS, integers=st.booleans())
@example(case=KernelCase(n=1, h=4, w=4, c=1, kh=3, kw=3, stride=1), seed=0, integers=True)
def test_col2im_parity(fast, case, seed, integers):
    cols = draw_values(np.random.default_rng(seed), case.cols_shape, case.dtype, integers)
    with kernels.backend(fast) as module:
        dx = module.col2im(cols, case.x_shape, case.kh, case.kw, case.stride)
    expected = numpy_ref.col2im(cols, case.x_shape, case.kh, case.kw, case.stride)
    assert dx.dtype == expected.dtype and dx.shape == expected.shape
    if integers:  # exact in any summation order
        np.testing.assert_array_equal(dx, expected)
    else:  # overlapping patches are summed in another order
        tol = 1e-5 if case.dtype == "float32" else 1e-12
        np.testing.assert_allclose(dx, expected, rtol=tol, atol=tol)


@fast_backends
@given(case=kernel_cases(square=True), seed=SEEDS, integers=st.booleans())
@example(case=KernelCase(n=1, h=3, w=5, c=2, kh=2, kw=2, stride=1), seed=0, integers=True)
@example(case=KernelCase(n=2, h=5, w=4, c=3, kh=2, kw=2, stride=2), seed=1, integers=True)  # the 2x2 kernel
def test_maxpool_forward_parity(fast, case, seed, integers):
    x = draw_values(np.random.default_rng(seed), case.x_shape, case.dtype, integers)
    with kernels.backend(fast) as module:
        out, argmax = module.maxpool_forward(x, case.kh, case.stride)
    expected_out, expected_argmax = numpy_ref.maxpool_forward(x, case.kh, case.stride)
    assert out.dtype == x.dtype and argmax.dtype == expected_argmax.dtype == np.int8
    np.testing.assert_array_equal(out, expected_out)
    np.testing.assert_array_equal(argmax, expected_argmax)  # same winner, ties included


@fast_backends
@given(case=kernel_cases(square=True), seed=SEEDS, integers=st.booleans())
@example(case=KernelCase(n=1, h=5, w=5, c=1, kh=3, kw=3, stride=1), seed=0, integers=True)
def test_maxpool_backward_parity(fast, case, seed, integers):
    rng = np.random.default_rng(seed)
    x = draw_values(rng, case.x_shape, case.dtype, integers=True)  # ties
    _, argmax = numpy_ref.maxpool_forward(x, case.kh, case.stride)
    dout = draw_values(rng, argmax.shape, case.dtype, integers)
    with kernels.backend(fast) as module:
        dx = module.maxpool_backward(dout, argmax, case.x_shape, case.kh, case.stride)
    expected = numpy_ref.maxpool_backward(dout, argmax, case.x_shape, case.kh, case.stride)
    assert dx.dtype == expected.dtype and dx.shape == expected.shape
    if integers:
        np.testing.assert_array_equal(dx, expected)
    else:
        tol = 1e-5 if case.dtype == "float32" else 1e-12
        np.testing.assert_allclose(dx, expected, rtol=tol, atol=tol)


@fast_backends
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_maxpool_2x2_kernel_keeps_the_reference_winner_with_ties_and_nan(fast, dtype):
    # the fast backend's own kernel for pool 2 / stride 2 (ARN-CNN's every pooling): the first maximum wins a tie,
    # a NaN never replaces a maximum (but a NaN first in its window stays), odd sizes drop the last row/column
    x = np.random.default_rng(4).integers(-2, 3, size=(3, 7, 9, 5)).astype(dtype)
    x[0, 0, 1, 0] = x[1, 3, 2, 4] = x[2, 6, 8, 2] = np.nan
    x[0, 2, 2, 1] = np.nan  # first in its window
    with kernels.backend(fast) as module:
        out, argmax = module.maxpool_forward(x, 2, 2)
    ref_out, ref_argmax = numpy_ref.maxpool_forward(x, 2, 2)
    np.testing.assert_array_equal(out, ref_out)  # (NaN == NaN here)
    np.testing.assert_array_equal(argmax, ref_argmax)
    assert np.isnan(out[0, 1, 1, 1]) and (argmax > 0).any()


@fast_backends
@pytest.mark.parametrize(("pool", "stride"), [(2, 2), (3, 1)])
def test_maxpool_backward_sends_nan_and_inf_to_the_winner_only(fast, pool, stride):
    # the reference multiplies dout by each position's "won" mask when dout is finite; NaN and inf must not leak
    # into the losers of their window (NaN * 0 is NaN), on either backend
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 6, 7, 3))
    _, argmax = numpy_ref.maxpool_forward(x, pool, stride)
    dout = rng.standard_normal(argmax.shape)
    dout[0, 1, 1, 0], dout[1, 2, 0, 2] = np.nan, np.inf
    with kernels.backend(fast) as module:
        dx = module.maxpool_backward(dout, argmax, x.shape, pool, stride)
    expected = numpy_ref.maxpool_backward(dout, argmax, x.shape, pool, stride)
    np.testing.assert_allclose(dx, expected, rtol=1e-12, atol=1e-12)  # (overlapping windows: another sum order)
    assert np.isnan(expected).sum() == 1 and np.isinf(expected).sum() == 1


@fast_backends
def test_parity_on_non_contiguous_inputs(fast):
    rng = np.random.default_rng(3)
    base = rng.standard_normal((2, 9, 8, 6))
    x = base[:, ::-1, ::2, 1::2]  # reversed rows, every other column, a channel slice
    assert not x.flags.c_contiguous
    oh, ow = (x.shape[1] - 3) // 2 + 1, (x.shape[2] - 2) // 2 + 1
    cols = np.asfortranarray(rng.standard_normal((x.shape[0] * oh * ow, 3 * 2 * x.shape[3])))
    assert not cols.flags.c_contiguous
    with kernels.backend(fast) as module:
        np.testing.assert_array_equal(module.im2col(x, 3, 2, 2), numpy_ref.im2col(x, 3, 2, 2))
        np.testing.assert_allclose(
            module.col2im(cols, x.shape, 3, 2, 2), numpy_ref.col2im(cols, x.shape, 3, 2, 2), rtol=1e-12, atol=1e-12
        )
        out, argmax = module.maxpool_forward(x, 2, 2)
        ref_out, ref_argmax = numpy_ref.maxpool_forward(x, 2, 2)
        np.testing.assert_array_equal(out, ref_out)
        np.testing.assert_array_equal(argmax, ref_argmax)
        dout = rng.standard_normal(out.shape)[..., ::-1]
        dx = module.maxpool_backward(dout, argmax, x.shape, 2, 2)
        np.testing.assert_array_equal(dx, numpy_ref.maxpool_backward(dout, argmax, x.shape, 2, 2))


# -- backend selection -----------------------------------------------------------------------------------
@pytest.fixture
def fresh_selection(monkeypatch):
    """Forget the selected backend (restored after the test) and clear MINARN_BACKEND."""
    monkeypatch.setattr(kernels, "_active", None)
    monkeypatch.delenv(kernels.ENV_VAR, raising=False)
    return monkeypatch


def test_available_backends():
    names = kernels.available_backends()
    assert names[0] == "numpy"
    assert ("numba" in names) == kernels.numba_available()
    for name in names:
        assert kernels._load(name).NAME == name


@pytest.mark.parametrize("value", ["numpy", "NUMPY", " numpy "])
def test_env_var_selects_numpy(fresh_selection, value):
    fresh_selection.setenv(kernels.ENV_VAR, value)
    assert kernels.get_backend() is numpy_ref


@pytest.mark.parametrize("value", ["auto", ""])
def test_env_var_auto_prefers_numba(fresh_selection, value):
    fresh_selection.setenv(kernels.ENV_VAR, value)
    assert kernels.get_backend().NAME == ("numba" if kernels.numba_available() else "numpy")


def test_default_is_auto(fresh_selection):
    assert kernels.get_backend().NAME == ("numba" if kernels.numba_available() else "numpy")


def test_env_var_numba(fresh_selection):
    fresh_selection.setenv(kernels.ENV_VAR, "numba")
    if kernels.numba_available():
        assert kernels.get_backend().NAME == "numba"
    else:
        with pytest.raises(ImportError, match="numba"):
            kernels.get_backend()


def test_env_var_bogus_raises(fresh_selection):
    fresh_selection.setenv(kernels.ENV_VAR, "cuda")
    with pytest.raises(ValueError, match="cuda"):
        kernels.get_backend()


def test_without_numba_auto_falls_back_to_numpy(fresh_selection):
    fresh_selection.setattr(kernels, "numba_available", lambda: False)
    assert kernels.available_backends() == ["numpy"]
    assert kernels.get_backend() is numpy_ref
    with pytest.raises(ImportError, match="numba"):
        kernels.use_backend("numba")


def test_env_var_read_by_a_fresh_process():
    code = "from minarn import kernels; print(kernels.get_backend().NAME)"
    env = {**os.environ, kernels.ENV_VAR: "numpy"}
    result = subprocess.run(
        [sys.executable, "-c", code], check=False, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "numpy"


def test_use_backend(fresh_selection):
    assert kernels.use_backend("numpy") is numpy_ref
    assert kernels.get_backend() is numpy_ref
    fresh_selection.setenv(kernels.ENV_VAR, "bogus")  # an explicit choice wins over the env var
    assert kernels.get_backend() is numpy_ref


def test_use_backend_bogus_raises_and_keeps_selection(fresh_selection):
    kernels.use_backend("numpy")
    with pytest.raises(ValueError, match="bogus"):
        kernels.use_backend("bogus")
    assert kernels.get_backend() is numpy_ref


@pytest.mark.parametrize("name", kernels.available_backends())
def test_context_manager_restores_previous_backend(fresh_selection, name):
    other = "numba" if name == "numpy" and kernels.numba_available() else "numpy"
    kernels.use_backend(other)
    before = kernels.get_backend()
    with kernels.backend(name) as module:
        assert module.NAME == name and kernels.get_backend() is module
    assert kernels.get_backend() is before
    with pytest.raises(KeyError), kernels.backend(name):  # restored on an exception too
        raise KeyError("boom")
    assert kernels.get_backend() is before


def test_context_manager_restores_unselected_state(fresh_selection):
    with kernels.backend("numpy"):
        pass
    assert kernels._active is None  # the env var is still consulted later
    fresh_selection.setenv(kernels.ENV_VAR, "numpy")
    assert kernels.get_backend() is numpy_ref


def test_layers_follow_the_switch_at_once(fresh_selection):
    from minarn.layers import MaxPooling2D

    calls = []

    class Spy:
        NAME = "spy"

        @staticmethod
        def maxpool_forward(x, pool, stride):
            calls.append((pool, stride))
            return numpy_ref.maxpool_forward(x, pool, stride)

    fresh_selection.setattr(kernels, "_active", Spy)
    MaxPooling2D(2).forward(np.zeros((1, 4, 4, 1)))
    assert calls == [(2, 2)]


@pytest.mark.parametrize("name", kernels.available_backends())
def test_batchnorm_sums_keep_float32_accuracy_over_many_rows(name):
    """Batch norm's statistics over 38,440 same-signed float32 rows (conv2d_6's map at batch 40) stay within
    a few float32 ulps of the float64 truth: the sums must not drift row by row."""
    rng = np.random.default_rng(0)
    x = (rng.random((38_440, 8)) * 3 + 1).astype(np.float32)
    dout = (rng.random((38_440, 8)) + 0.5).astype(np.float32)
    x64 = x.astype(np.float64)
    with kernels.backend(name) as K:
        mean, var = K.channel_moments(x)
        inv_std = (1 / np.sqrt(var + 1e-3)).astype(np.float32)
        gamma = np.ones(8, np.float32)
        _, dgamma, dbeta = K.batchnorm_backward(dout, x, mean, inv_std, gamma)
    np.testing.assert_allclose(mean, x64.mean(axis=0), rtol=1e-6)
    np.testing.assert_allclose(var, x64.var(axis=0), rtol=1e-5)
    np.testing.assert_allclose(dbeta, dout.astype(np.float64).sum(axis=0), rtol=1e-6)
    x_hat = (x64 - mean.astype(np.float64)) * inv_std.astype(np.float64)
    np.testing.assert_allclose(dgamma, (dout * x_hat).sum(axis=0), rtol=1e-5, atol=1e-2)


@pytest.mark.parametrize("preset", [None, "20"])
def test_import_sets_the_openblas_spin_timeout_unless_the_user_did(preset):
    """minarn shortens OpenBLAS' busy-wait (set before NumPy loads OpenBLAS); a user's value wins."""
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_THREAD_TIMEOUT"}
    if preset is not None:
        env["OPENBLAS_THREAD_TIMEOUT"] = preset
    code = "import minarn, os; print(os.environ['OPENBLAS_THREAD_TIMEOUT'])"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert out.strip() == (preset or "8")


@pytest.mark.skipif(not kernels.numba_available(), reason="numba is not installed")
@pytest.mark.parametrize("first", ["other numba code", "minarn"])
def test_a_threading_layer_started_before_minarn_is_named_in_a_warning(first):
    """minarn asks numba for TBB, else workqueue, when its kernels load (TBB found where pip puts it); if other
    parallel numba code ran first, the layer is already fixed (OpenMP where TBB cannot be found and OpenMP is
    available), and then the warning says so and what to do."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("NUMBA_THREADING_LAYER")}
    code = f"""
import warnings, numba, numpy as np
if {first == "other numba code"!r}:
    @numba.njit(parallel=True)
    def bump(x):
        for i in numba.prange(x.size):
            x[i] += 1
    bump(np.zeros(4))
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    from minarn.kernels import numba_jit
    numba_jit.bias_activation(np.zeros((4, 2), np.float32), None, "relu")  # a parallel kernel runs
print(numba.threading_layer(), any("NUMBA_THREADING_LAYER=workqueue" in str(w.message) for w in caught))
"""
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    layer, warned = out.split()
    assert warned == str(layer == "omp")
    if first == "minarn":
        assert layer == ("tbb" if _tbb_installed() else "workqueue") and warned == "False"


def _tbb_installed() -> bool:
    """pip's tbb (the ``fast`` extra on x86-64) ships no importable module, only its libraries and metadata."""
    try:
        importlib.metadata.version("tbb")
        return True
    except importlib.metadata.PackageNotFoundError:
        return False
