"""Numba-JIT twins of ``numpy_ref``: same signatures, same results, loops compiled and run in parallel.

Importing this module requires numba; ``minarn.kernels`` only imports it when numba is installed.
The outer loop over the batch (or batch x rows) is a ``prange``; every iteration writes a disjoint part of
the output, so no two threads touch the same element.
"""

from __future__ import annotations

import ctypes
import os
import site
import sys
import warnings
from pathlib import Path

import numba
import numpy as np
from numba import prange

from minarn.kernels import winograd
from minarn.kernels.numpy_ref import ACTIVATION_KINDS
from minarn.kernels.scratch import workspace

NAME = "numba"

# Conv2D picks Winograd's algorithm where its sizes qualify: these tile transforms are one pass over memory.
WINOGRAD = True

# Threads: numba's OpenMP layer lets its idle threads spin, and so do OpenBLAS' threads after a matrix product.
# A training step alternates between the two many times, so on a small machine the two pools steal each other's
# cores (measured on 2 cores: 11 img/s with OpenMP, 37 with workqueue). TBB's and workqueue's threads sleep while
# idle; TBB starts a parallel kernel in ~2 us, workqueue in ~110 us, and a step calls ~90 of them (a training step
# at batch 40 took 0.8 of workqueue's time with TBB: benchmarks/RESULTS.md, session 14). So minarn asks numba for
# TBB first, then workqueue, never OpenMP; only when the user has not picked a layer (NUMBA_THREADING_LAYER) or an
# order (NUMBA_THREADING_LAYER_PRIORITY). numba.config sets its options at import through globals(), which mypy
# cannot see: hence the ignores.
PREFERRED_LAYERS = ["tbb", "workqueue", "omp"]


def _preload_tbb() -> bool:
    """Load TBB's library so that numba finds it; True when it is loaded.

    ``pip install tbb`` puts ``libtbb.so.12`` into ``<environment>/lib``, where the dynamic loader does not look,
    so numba's own load by the bare name fails in a virtual environment. Loaded once by its full path (global
    symbols), a later load by the bare name finds it in the process."""
    name = {"linux": "libtbb.so.12", "darwin": "libtbb.12.dylib", "win32": "tbb12.dll"}.get(sys.platform)
    if name is None:
        return False
    folder = "Library/bin" if sys.platform == "win32" else "lib"
    prefixes = dict.fromkeys([sys.prefix, sys.exec_prefix, sys.base_prefix, site.getuserbase()])
    for candidate in [name, *(str(Path(p) / folder / name) for p in prefixes)]:
        try:
            ctypes.CDLL(candidate, mode=ctypes.RTLD_GLOBAL)
            return True
        except OSError:
            continue
    return False


_preload_tbb()  # also for a user's NUMBA_THREADING_LAYER=tbb
if (
    numba.config.THREADING_LAYER == "default"  # type: ignore[attr-defined]
    and "NUMBA_THREADING_LAYER" not in os.environ
    and "NUMBA_THREADING_LAYER_PRIORITY" not in os.environ
):
    numba.config.THREADING_LAYER_PRIORITY = PREFERRED_LAYERS  # type: ignore[attr-defined]


def _started_threading_layer() -> str | None:
    """The threading layer numba already runs in this process, or None before its first parallel kernel."""
    try:
        return str(numba.threading_layer())
    except ValueError:
        return None


# The choice above only counts if no parallel numba code ran before this module loaded (the layer starts once).
if (_layer := _started_threading_layer()) == "omp" and "NUMBA_THREADING_LAYER" not in os.environ:
    warnings.warn(f"numba's threading layer {_layer!r} was started before minarn's Numba kernels loaded: its idle "
                  "threads spin against OpenBLAS' (a training step of ARN-CNN measured ~2.4x slower that way on 2 "
                  "cores). Load minarn's kernels first (minarn.kernels.get_backend() before other numba code) or set "
                  "NUMBA_THREADING_LAYER=tbb (after pip install tbb) or NUMBA_THREADING_LAYER=workqueue.",
                  RuntimeWarning, stacklevel=2)

_jit = numba.njit(parallel=True, cache=True, nogil=True)


@_jit
def _maxpool_forward(x, pool, stride, out, argmax):  # pragma: no cover - compiled
    # channels innermost: each window position is one contiguous, vectorizable pass over C
    N, OH, OW, C = out.shape
    for r in prange(N * OH):
        n = r // OH
        p = r % OH
        for q in range(OW):
            for c in range(C):
                out[n, p, q, c] = x[n, p * stride, q * stride, c]
                argmax[n, p, q, c] = 0
            for i in range(pool):
                for j in range(pool):
                    if i == 0 and j == 0:
                        continue
                    k = i * pool + j
                    for c in range(C):
                        v = x[n, p * stride + i, q * stride + j, c]
                        if v > out[n, p, q, c]:  # strict: ties keep the first maximum, as in numpy_ref
                            out[n, p, q, c] = v
                            argmax[n, p, q, c] = k


@_jit
def _maxpool2_forward(x, out, argmax):  # pragma: no cover - compiled
    # pool 2, stride 2 (every pooling of ARN-CNN): the four values of a window are compared in registers, with
    # the same strict ">" as _maxpool_forward (ties keep the first maximum, NaN never replaces a maximum)
    N, OH, OW, C = out.shape
    for r in prange(N * OH):
        n = r // OH
        p = r % OH
        for q in range(OW):
            for c in range(C):
                best = x[n, 2 * p, 2 * q, c]
                k = np.int8(0)
                v = x[n, 2 * p, 2 * q + 1, c]
                if v > best:
                    best, k = v, np.int8(1)
                v = x[n, 2 * p + 1, 2 * q, c]
                if v > best:
                    best, k = v, np.int8(2)
                v = x[n, 2 * p + 1, 2 * q + 1, c]
                if v > best:
                    best, k = v, np.int8(3)
                out[n, p, q, c] = best
                argmax[n, p, q, c] = k


@_jit
def _maxpool_backward(dout, argmax, pool, stride, dx):  # pragma: no cover - compiled
    N, OH, OW, C = dout.shape
    for n in prange(N):
        for p in range(OH):
            for q in range(OW):
                for c in range(C):
                    w = argmax[n, p, q, c]
                    dx[n, p * stride + w // pool, q * stride + w % pool, c] += dout[n, p, q, c]


@_jit
def _maxpool_backward_tiled(dout, argmax, pool, dx):  # pragma: no cover - compiled
    # windows tile the input (stride == pool): every covered input is written once, the winner gets dout
    N, OH, OW, C = dout.shape
    zero = dx.dtype.type(0)
    for r in prange(N * OH):
        n = r // OH
        p = r % OH
        for q in range(OW):
            for i in range(pool):
                for j in range(pool):
                    k = i * pool + j
                    for c in range(C):
                        g = dout[n, p, q, c]
                        dx[n, p * pool + i, q * pool + j, c] = g if argmax[n, p, q, c] == k else zero


_NO_PADS = ((0, 0), (0, 0))


def im2col(x: np.ndarray, kh: int, kw: int, stride: int) -> np.ndarray:
    """See ``numpy_ref.im2col``: ``im2col_padded`` with no padding."""
    return im2col_padded(x, kh, kw, stride, _NO_PADS)


def col2im(cols: np.ndarray, x_shape: tuple[int, int, int, int], kh: int, kw: int, stride: int) -> np.ndarray:
    """See ``numpy_ref.col2im``: ``col2im_padded`` with no padding."""
    return col2im_padded(cols, x_shape, kh, kw, stride, _NO_PADS)


def maxpool_forward(x: np.ndarray, pool: int, stride: int) -> tuple[np.ndarray, np.ndarray]:
    """See ``numpy_ref.maxpool_forward``."""
    N, H, W, C = x.shape
    OH = (H - pool) // stride + 1
    OW = (W - pool) // stride + 1
    out = np.empty((N, OH, OW, C), dtype=x.dtype)
    argmax = np.empty((N, OH, OW, C), dtype=np.int8)
    if pool == stride == 2:
        _maxpool2_forward(np.ascontiguousarray(x), out, argmax)
    else:
        _maxpool_forward(np.ascontiguousarray(x), pool, stride, out, argmax)
    return out, argmax


def maxpool_backward(
    dout: np.ndarray, argmax: np.ndarray, x_shape: tuple[int, int, int, int], pool: int, stride: int
) -> np.ndarray:
    """See ``numpy_ref.maxpool_backward``."""
    dout, argmax = np.ascontiguousarray(dout), np.ascontiguousarray(argmax)
    if stride != pool:
        dx = np.zeros(x_shape, dtype=dout.dtype)
        _maxpool_backward(dout, argmax, pool, stride, dx)
        return dx
    N, OH, OW, C = dout.shape
    dx = np.empty(x_shape, dtype=dout.dtype)
    dx[:, OH * pool :] = 0  # the last row / column a "valid" pool dropped
    dx[:, : OH * pool, OW * pool :] = 0
    _maxpool_backward_tiled(dout, argmax, pool, dx)
    return dx


# ----------------------------------------------------------------------------------------------------------
# Fast-path kernels (see the NumPy twins in numpy_ref for the math). Arrays are (rows, C) views of
# channels-last maps; each kernel is one fused pass, parallel over blocks of rows.

# The activation ``kind`` as the integer code the compiled loops test (numba folds the module constants in).
_KIND = {kind: code for code, kind in enumerate(ACTIVATION_KINDS)}
_RELU, _SIGMOID = _KIND["relu"], _KIND["sigmoid"]
_ROWS_PER_TASK = 256  # rows of a (rows, C) array one prange iteration handles


# exp(v) = 2^n exp(r), v = n ln2 + r (|r| <= ln2 / 2): ln2 in two parts (Cody and Waite) so that r is exact in
# float32, and exp(r) by the degree-6 polynomial of Cephes' expf (S. L. Moshier, Cephes Math Library)
_LOG2E = np.float32(1.4426950408889634)
_LN2_HI, _LN2_LO = np.float32(0.693359375), np.float32(-2.12194440e-4)
_EXPF_POLY = tuple(np.float32(c) for c in (1.9875691500e-4, 1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2,
                                           1.6666665459e-1, 5.0000001201e-1))
_EXPF_MIN = np.float32(-87.33654)  # log(2^-126): below it exp(v) is no normal float32


@numba.njit(inline="always")
def _exp_nonpositive_f32(v):  # pragma: no cover - compiled
    # exp(v) for a float32 v <= 0, within 1 ulp (NumPy's exp: 2), in plain arithmetic that vectorizes (numba's
    # exp is one scalar libm call per value): n = round(v log2 e), r = v - n ln2, exp(r) by the polynomial,
    # times 2^n made from its exponent bits. 0 below _EXPF_MIN; NaN stays NaN.
    small = v < _EXPF_MIN
    v = max(v, _EXPF_MIN)
    n = np.float32(np.floor(v * _LOG2E + np.float32(0.5)))
    r = (v - n * _LN2_HI) - n * _LN2_LO
    c0, c1, c2, c3, c4, c5 = _EXPF_POLY
    p = ((((c0 * r + c1) * r + c2) * r + c3) * r + c4) * r + c5
    p = p * r * r + r + np.float32(1)
    two_n = np.int32((np.int32(n) + np.int32(127)) << np.int32(23)).view(np.float32)
    return np.float32(0) if small else p * two_n


@numba.njit(inline="always")
def _sigmoid_given_exp(v, e, one):  # pragma: no cover - compiled
    # sigmoid(v) given e = exp(-|v|): 1 / (1 + e) for v >= 0, e / (1 + e) below (stable for any v)
    q = one / (one + e)
    return q if v >= 0 else e * q


@numba.njit(inline="always", fastmath=True)
def _sigmoid(v, one):  # pragma: no cover - compiled
    # stable for any v (exp of a non-positive number only); branch-free so the loop vectorizes
    return _sigmoid_given_exp(v, np.exp(-abs(v)), one)


@numba.njit(inline="always")
def _activate(v, kind, zero, one):  # pragma: no cover - compiled
    # act(v) for the activation code ``kind`` (linear: v itself)
    if kind == _RELU:
        return max(v, zero)
    if kind == _SIGMOID:
        return _sigmoid(v, one)
    return v


@numba.njit(inline="always")
def _activation_grad(g, out, kind, zero):  # pragma: no cover - compiled
    # dz from the upstream gradient g and the activation's output: ReLU' = [out > 0], sigmoid' = out (1 - out)
    if kind == _RELU:
        return g if out > zero else zero
    if kind == _SIGMOID:
        return g * out * (1 - out)
    return g


@numba.njit(inline="always")
def _task_rows(t, rows):  # pragma: no cover - compiled
    # the rows [lo, hi) of task t when rows are handed out _ROWS_PER_TASK at a time (tasks: _tasks(rows))
    return t * _ROWS_PER_TASK, min(rows, (t + 1) * _ROWS_PER_TASK)


@numba.njit(inline="always")
def _tasks(rows):  # pragma: no cover - compiled
    return (rows + _ROWS_PER_TASK - 1) // _ROWS_PER_TASK


@numba.njit(inline="always")
def _chunk_rows(t, rows, chunks):  # pragma: no cover - compiled
    # the rows [lo, hi) of chunk t when rows are cut into ``chunks`` nearly equal chunks
    return t * rows // chunks, (t + 1) * rows // chunks


@_jit
def _im2col_padded(x, kh, kw, stride, top, left, OH, OW, cols):  # pragma: no cover - compiled
    N, H, W, C = x.shape
    zero = x.dtype.type(0)
    for r in prange(N * OH):
        n = r // OH
        p = r % OH
        for q in range(OW):
            row = (n * OH + p) * OW + q
            for i in range(kh):
                h = p * stride + i - top
                for j in range(kw):
                    w = q * stride + j - left
                    k0 = (i * kw + j) * C
                    if 0 <= h < H and 0 <= w < W:
                        for c in range(C):
                            cols[row, k0 + c] = x[n, h, w, c]
                    else:
                        for c in range(C):
                            cols[row, k0 + c] = zero


@numba.njit(inline="always")
def _taps_inside(p, stride, pad, k, size):  # pragma: no cover - compiled
    # the taps i in [lo, hi) of a k-wide window at output position p whose input index p*stride + i - pad
    # lies in [0, size): the padding's taps are skipped without a test per tap
    start = p * stride - pad
    return max(0, -start), min(k, size - start)


@_jit
def _col2im_padded(cols, kh, kw, stride, top, left, OH, OW, dx):  # pragma: no cover - compiled
    N, H, W, C = dx.shape
    for n in prange(N):  # one image per thread: overlapping patches of one image never race
        for p in range(OH):
            i0, i1 = _taps_inside(p, stride, top, kh, H)
            for q in range(OW):
                j0, j1 = _taps_inside(q, stride, left, kw, W)
                row = (n * OH + p) * OW + q
                for i in range(i0, i1):
                    h = p * stride + i - top
                    for j in range(j0, j1):
                        w = q * stride + j - left
                        k0 = (i * kw + j) * C
                        for c in range(C):
                            dx[n, h, w, c] += cols[row, k0 + c]


@_jit
def _shallow_conv_forward(x, w, bias, has_bias, kind, stride, top, left, out):  # pragma: no cover - compiled
    # out[n, p, q, :] = act(bias + sum over the patch of x * w): a direct loop over the kh x kw x C patch
    N, H, W, C = x.shape
    _, OH, OW, F = out.shape
    kh, kw = w.shape[0], w.shape[1]
    zero, one = out.dtype.type(0), out.dtype.type(1)
    for r in prange(N * OH):
        n = r // OH
        p = r % OH
        i0, i1 = _taps_inside(p, stride, top, kh, H)
        acc = np.empty(F, dtype=out.dtype)
        for q in range(OW):
            j0, j1 = _taps_inside(q, stride, left, kw, W)
            for f in range(F):
                acc[f] = bias[f] if has_bias else zero
            for i in range(i0, i1):
                h = p * stride + i - top
                for j in range(j0, j1):
                    v = q * stride + j - left
                    for c in range(C):
                        xv = x[n, h, v, c]
                        for f in range(F):
                            acc[f] += xv * w[i, j, c, f]
            for f in range(F):
                out[n, p, q, f] = _activate(acc[f], kind, zero, one)


@numba.njit(inline="always")
def _taps3x3(b, x0, x1, x2, x3, x4, x5, x6, x7, x8, w, f):  # pragma: no cover - compiled
    # b + the 3x3 patch (x0..x8, row by row) times filter f of a one-channel kernel w (3, 3, 1, F), in the
    # order _shallow_conv_forward adds them (so the two kernels agree bit for bit)
    return (b + x0 * w[0, 0, 0, f] + x1 * w[0, 1, 0, f] + x2 * w[0, 2, 0, f] + x3 * w[1, 0, 0, f]
            + x4 * w[1, 1, 0, f] + x5 * w[1, 2, 0, f] + x6 * w[2, 0, 0, f] + x7 * w[2, 1, 0, f] + x8 * w[2, 2, 0, f])


@_jit
def _conv3x3_one_channel_forward(x, w, bias, kind, out):  # pragma: no cover - compiled
    # the shallow convolution for a 3x3 kernel on one input channel, stride 1, no padding (ARN-CNN's first
    # layer on grayscale images): the patch sits in nine registers and each activation has its own loop over
    # the filters, so that loop vectorizes (a branch inside it would not)
    N, _, _, _ = x.shape
    _, OH, OW, F = out.shape
    zero, one = out.dtype.type(0), out.dtype.type(1)
    for r in prange(N * OH):
        n = r // OH
        p = r % OH
        for q in range(OW):
            x0, x1, x2 = x[n, p, q, 0], x[n, p, q + 1, 0], x[n, p, q + 2, 0]
            x3, x4, x5 = x[n, p + 1, q, 0], x[n, p + 1, q + 1, 0], x[n, p + 1, q + 2, 0]
            x6, x7, x8 = x[n, p + 2, q, 0], x[n, p + 2, q + 1, 0], x[n, p + 2, q + 2, 0]
            if kind == _RELU:
                for f in range(F):
                    out[n, p, q, f] = max(_taps3x3(bias[f], x0, x1, x2, x3, x4, x5, x6, x7, x8, w, f), zero)
            elif kind == _SIGMOID:
                for f in range(F):
                    out[n, p, q, f] = _sigmoid(_taps3x3(bias[f], x0, x1, x2, x3, x4, x5, x6, x7, x8, w, f), one)
            else:
                for f in range(F):
                    out[n, p, q, f] = _taps3x3(bias[f], x0, x1, x2, x3, x4, x5, x6, x7, x8, w, f)


@_jit
def _shallow_conv_weight_grad(x, dz, kh, kw, stride, top, left, partial):  # pragma: no cover - compiled
    # partial[t] (kh*kw*C + 1, F), float64: over chunk t of output rows, sums of patch value * dz; the last
    # row sums dz (the bias gradient). Accumulated in float32 along one output row, then added in float64.
    N, H, W, C = x.shape
    _, OH, OW, F = dz.shape
    chunks = partial.shape[0]
    K = kh * kw * C
    rows = N * OH
    for t in prange(chunks):
        acc = np.zeros((K + 1, F), dtype=dz.dtype)
        lo, hi = _chunk_rows(t, rows, chunks)
        for r in range(lo, hi):
            n = r // OH
            p = r % OH
            i0, i1 = _taps_inside(p, stride, top, kh, H)
            acc[:] = 0
            for q in range(OW):
                j0, j1 = _taps_inside(q, stride, left, kw, W)
                for i in range(i0, i1):
                    h = p * stride + i - top
                    for j in range(j0, j1):
                        v = q * stride + j - left
                        for c in range(C):
                            xv = x[n, h, v, c]
                            k = (i * kw + j) * C + c
                            for f in range(F):
                                acc[k, f] += xv * dz[n, p, q, f]
                for f in range(F):
                    acc[K, f] += dz[n, p, q, f]
            for k in range(K + 1):
                for f in range(F):
                    partial[t, k, f] += acc[k, f]


@_jit
def _conv3x3_one_channel_weight_grad(x, dz, partial):  # pragma: no cover - compiled
    # _shallow_conv_weight_grad for _conv3x3_one_channel_forward's case (3x3, one channel, stride 1, no
    # padding), the patch in nine registers: partial[t] (10, F) as there, rows 0-8 the taps, row 9 the sums of dz
    _, OH, OW, F = dz.shape
    chunks = partial.shape[0]
    rows = dz.shape[0] * OH
    for t in prange(chunks):
        acc = np.zeros((10, F), dtype=dz.dtype)
        lo, hi = _chunk_rows(t, rows, chunks)
        for r in range(lo, hi):
            n = r // OH
            p = r % OH
            acc[:] = 0
            for q in range(OW):
                x0, x1, x2 = x[n, p, q, 0], x[n, p, q + 1, 0], x[n, p, q + 2, 0]
                x3, x4, x5 = x[n, p + 1, q, 0], x[n, p + 1, q + 1, 0], x[n, p + 1, q + 2, 0]
                x6, x7, x8 = x[n, p + 2, q, 0], x[n, p + 2, q + 1, 0], x[n, p + 2, q + 2, 0]
                for f in range(F):
                    g = dz[n, p, q, f]
                    acc[0, f] += x0 * g
                    acc[1, f] += x1 * g
                    acc[2, f] += x2 * g
                    acc[3, f] += x3 * g
                    acc[4, f] += x4 * g
                    acc[5, f] += x5 * g
                    acc[6, f] += x6 * g
                    acc[7, f] += x7 * g
                    acc[8, f] += x8 * g
                    acc[9, f] += g
            for k in range(10):
                for f in range(F):
                    partial[t, k, f] += acc[k, f]


# Winograd tile transforms (see numpy_ref and minarn.kernels.winograd), for F(2x2, 3x3) and F(4x4, 3x3). Each
# 1-D transform is one inline function, the variant's matrix written out; a 2-D transform applies it along the
# rows, then along the columns. The channel loop is innermost so that it vectorizes.
@numba.njit(inline="always")
def _bt4(a0, a1, a2, a3):  # pragma: no cover - compiled
    return a0 - a2, a1 + a2, a2 - a1, a1 - a3  # B^T a


@numba.njit(inline="always")
def _at4(a0, a1, a2, a3):  # pragma: no cover - compiled
    return a0 + a1 + a2, a1 - a2 - a3  # A^T a


@numba.njit(inline="always")
def _a2(a0, a1):  # pragma: no cover - compiled
    return a0, a0 + a1, a0 - a1, -a1  # A a


@_jit
def _winograd_input(x, top, left, th, tw, v):  # pragma: no cover - compiled
    N, H, W, C = x.shape
    zero = x.dtype.type(0)
    for r in prange(N * th):
        n = r // th
        a = r % th
        d = np.empty((4, 4, C), dtype=x.dtype)
        for b in range(tw):
            t = r * tw + b
            for i in range(4):
                h = 2 * a + i - top
                for j in range(4):
                    w = 2 * b + j - left
                    if 0 <= h < H and 0 <= w < W:
                        for c in range(C):
                            d[i, j, c] = x[n, h, w, c]
                    else:
                        for c in range(C):
                            d[i, j, c] = zero
            for c in range(C):
                # B^T along the rows of the window (one column j at a time) ...
                r00, r10, r20, r30 = _bt4(d[0, 0, c], d[1, 0, c], d[2, 0, c], d[3, 0, c])
                r01, r11, r21, r31 = _bt4(d[0, 1, c], d[1, 1, c], d[2, 1, c], d[3, 1, c])
                r02, r12, r22, r32 = _bt4(d[0, 2, c], d[1, 2, c], d[2, 2, c], d[3, 2, c])
                r03, r13, r23, r33 = _bt4(d[0, 3, c], d[1, 3, c], d[2, 3, c], d[3, 3, c])
                # ... then B along the columns (one row at a time): V = B^T d B
                v[0, t, c], v[1, t, c], v[2, t, c], v[3, t, c] = _bt4(r00, r01, r02, r03)
                v[4, t, c], v[5, t, c], v[6, t, c], v[7, t, c] = _bt4(r10, r11, r12, r13)
                v[8, t, c], v[9, t, c], v[10, t, c], v[11, t, c] = _bt4(r20, r21, r22, r23)
                v[12, t, c], v[13, t, c], v[14, t, c], v[15, t, c] = _bt4(r30, r31, r32, r33)


@_jit
def _winograd_output(m, th, tw, out):  # pragma: no cover - compiled
    N, OH, OW, F = out.shape
    for r in prange(N * th):
        n = r // th
        a = r % th
        for b in range(tw):
            t = r * tw + b
            p, q = 2 * a, 2 * b
            for f in range(F):
                s00, s10 = _at4(m[0, t, f], m[4, t, f], m[8, t, f], m[12, t, f])
                s01, s11 = _at4(m[1, t, f], m[5, t, f], m[9, t, f], m[13, t, f])
                s02, s12 = _at4(m[2, t, f], m[6, t, f], m[10, t, f], m[14, t, f])
                s03, s13 = _at4(m[3, t, f], m[7, t, f], m[11, t, f], m[15, t, f])
                y00, y01 = _at4(s00, s01, s02, s03)
                y10, y11 = _at4(s10, s11, s12, s13)
                out[n, p, q, f] = y00
                if q + 1 < OW:
                    out[n, p, q + 1, f] = y01
                if p + 1 < OH:
                    out[n, p + 1, q, f] = y10
                    if q + 1 < OW:
                        out[n, p + 1, q + 1, f] = y11


@_jit
def _winograd_output_adjoint(dz, th, tw, dm):  # pragma: no cover - compiled
    N, OH, OW, F = dz.shape
    zero = dz.dtype.type(0)
    for r in prange(N * th):
        n = r // th
        a = r % th
        for b in range(tw):
            t = r * tw + b
            p, q = 2 * a, 2 * b
            right, down = q + 1 < OW, p + 1 < OH
            for f in range(F):
                y00 = dz[n, p, q, f]
                y01 = dz[n, p, q + 1, f] if right else zero
                y10 = dz[n, p + 1, q, f] if down else zero
                y11 = dz[n, p + 1, q + 1, f] if right and down else zero
                c00, c10, c20, c30 = _a2(y00, y10)  # A along the rows ...
                c01, c11, c21, c31 = _a2(y01, y11)
                dm[0, t, f], dm[1, t, f], dm[2, t, f], dm[3, t, f] = _a2(c00, c01)  # ... A^T along the columns
                dm[4, t, f], dm[5, t, f], dm[6, t, f], dm[7, t, f] = _a2(c10, c11)
                dm[8, t, f], dm[9, t, f], dm[10, t, f], dm[11, t, f] = _a2(c20, c21)
                dm[12, t, f], dm[13, t, f], dm[14, t, f], dm[15, t, f] = _a2(c30, c31)


_2, _4, _5, _8 = np.float32(2), np.float32(4), np.float32(5), np.float32(8)  # exact; keep float32 in float32


@numba.njit(inline="always")
def _bt6(a0, a1, a2, a3, a4, a5):  # pragma: no cover - compiled
    return (_4 * a0 - _5 * a2 + a4, a3 + a4 - _4 * (a1 + a2), _4 * (a1 - a2) - a3 + a4,
            _2 * (a3 - a1) + a4 - a2, _2 * (a1 - a3) + a4 - a2, _4 * a1 - _5 * a3 + a5)  # B^T a, F(4x4, 3x3)


@numba.njit(inline="always")
def _at6(a0, a1, a2, a3, a4, a5):  # pragma: no cover - compiled
    p, q = a1 + a2, a1 - a2
    r, w = a3 + a4, a3 - a4
    return a0 + p + r, q + _2 * w, p + _4 * r, q + _8 * w + a5  # A^T a


@numba.njit(inline="always")
def _a4(y0, y1, y2, y3):  # pragma: no cover - compiled
    e, o = y0 + _4 * y2, _2 * y1 + _8 * y3
    return y0, y0 + y1 + y2 + y3, y0 - y1 + y2 - y3, e + o, e - o, y3  # A y


# The F(4x4, 3x3) kernels handle one row of tiles per prange iteration in two steps, so that V, M and dM (s^2
# rows of tiles, each its own stretch of memory) are written or read six rows at a time, each along the whole
# row of tiles, rather than all 36 at once for every tile (36 streams at once measured 1.2-1.6x slower on
# conv2d_6's shape: benchmarks/RESULTS.md, session 13).
@_jit
def _winograd_input6(x, top, left, th, tw, v):  # pragma: no cover - compiled
    N, H, W, C = x.shape
    zero = x.dtype.type(0)
    for r in prange(N * th):
        n = r // th
        a = r % th
        d = np.empty((tw, 6, 6, C), dtype=x.dtype)  # the row's windows, then B^T along their rows in place
        h0 = 4 * a - top
        rows_inside = h0 >= 0 and h0 + 5 < H
        for b in range(tw):
            w0 = 4 * b - left
            if rows_inside and w0 >= 0 and w0 + 5 < W:  # the whole window inside the image: B^T straight from x
                for j in range(6):
                    for c in range(C):
                        d[b, 0, j, c], d[b, 1, j, c], d[b, 2, j, c], d[b, 3, j, c], d[b, 4, j, c], d[b, 5, j, c] = _bt6(
                            x[n, h0, w0 + j, c], x[n, h0 + 1, w0 + j, c], x[n, h0 + 2, w0 + j, c],
                            x[n, h0 + 3, w0 + j, c], x[n, h0 + 4, w0 + j, c], x[n, h0 + 5, w0 + j, c])
                continue
            for i in range(6):  # a window over the edge: copied with its zeros first
                h = h0 + i
                for j in range(6):
                    w = w0 + j
                    if 0 <= h < H and 0 <= w < W:
                        for c in range(C):
                            d[b, i, j, c] = x[n, h, w, c]
                    else:
                        for c in range(C):
                            d[b, i, j, c] = zero
            for j in range(6):
                for c in range(C):
                    d[b, 0, j, c], d[b, 1, j, c], d[b, 2, j, c], d[b, 3, j, c], d[b, 4, j, c], d[b, 5, j, c] = _bt6(
                        d[b, 0, j, c], d[b, 1, j, c], d[b, 2, j, c], d[b, 3, j, c], d[b, 4, j, c], d[b, 5, j, c])
        for i in range(6):  # B along the columns: V = B^T d B, rows 6i .. 6i + 5 of V for every tile of the row
            k = 6 * i
            for b in range(tw):
                t = r * tw + b
                for c in range(C):
                    v[k, t, c], v[k + 1, t, c], v[k + 2, t, c], v[k + 3, t, c], v[k + 4, t, c], v[k + 5, t, c] = _bt6(
                        d[b, i, 0, c], d[b, i, 1, c], d[b, i, 2, c], d[b, i, 3, c], d[b, i, 4, c], d[b, i, 5, c])


@_jit
def _winograd_output6(m, th, tw, bias, has_bias, kind, out):  # pragma: no cover - compiled
    # out = act(A^T M A + bias), the bias and activation (linear or ReLU) applied as each value is stored
    N, OH, OW, F = out.shape
    zero, one = out.dtype.type(0), out.dtype.type(1)
    for r in prange(N * th):
        n = r // th
        a = r % th
        e = np.empty((tw, 4, 6, F), dtype=m.dtype)  # A^T along the rows of each tile's 6x6 grid
        b0 = np.zeros(F, dtype=m.dtype)  # the bias, or zeros (one add per value either way)
        if has_bias:
            for f in range(F):
                b0[f] = bias[f]
        for j in range(6):  # column j of every grid of the row: rows j, 6 + j, ..., 30 + j of M
            for b in range(tw):
                t = r * tw + b
                for f in range(F):
                    e[b, 0, j, f], e[b, 1, j, f], e[b, 2, j, f], e[b, 3, j, f] = _at6(
                        m[j, t, f], m[6 + j, t, f], m[12 + j, t, f], m[18 + j, t, f], m[24 + j, t, f], m[30 + j, t, f])
        for b in range(tw):
            for i in range(4):  # ... then A along its columns, cropped to the output
                p = 4 * a + i
                if p >= OH:
                    break
                q = 4 * b
                if q + 3 < OW:
                    for f in range(F):
                        y0, y1, y2, y3 = _at6(e[b, i, 0, f], e[b, i, 1, f], e[b, i, 2, f], e[b, i, 3, f],
                                              e[b, i, 4, f], e[b, i, 5, f])
                        out[n, p, q, f] = _activate(y0 + b0[f], kind, zero, one)
                        out[n, p, q + 1, f] = _activate(y1 + b0[f], kind, zero, one)
                        out[n, p, q + 2, f] = _activate(y2 + b0[f], kind, zero, one)
                        out[n, p, q + 3, f] = _activate(y3 + b0[f], kind, zero, one)
                else:
                    for f in range(F):
                        y = _at6(e[b, i, 0, f], e[b, i, 1, f], e[b, i, 2, f], e[b, i, 3, f], e[b, i, 4, f],
                                 e[b, i, 5, f])
                        for j in range(OW - q):
                            out[n, p, q + j, f] = _activate(y[j] + b0[f], kind, zero, one)


@_jit
def _winograd_output_adjoint6(dz, th, tw, dm):  # pragma: no cover - compiled
    N, OH, OW, F = dz.shape
    zero = dz.dtype.type(0)
    for r in prange(N * th):
        n = r // th
        a = r % th
        y = np.empty((4, 4, F), dtype=dz.dtype)  # one tile of dY (zero beyond the output)
        e = np.empty((tw, 6, 4, F), dtype=dz.dtype)  # A along the rows of each tile of the row
        for b in range(tw):
            for i in range(4):
                p = 4 * a + i
                for j in range(4):
                    q = 4 * b + j
                    if p < OH and q < OW:
                        for f in range(F):
                            y[i, j, f] = dz[n, p, q, f]
                    else:
                        for f in range(F):
                            y[i, j, f] = zero
            for j in range(4):
                for f in range(F):
                    e[b, 0, j, f], e[b, 1, j, f], e[b, 2, j, f], e[b, 3, j, f], e[b, 4, j, f], e[b, 5, j, f] = _a4(
                        y[0, j, f], y[1, j, f], y[2, j, f], y[3, j, f])
        for u in range(6):  # ... then A^T along its columns: dM = A dY A^T, rows 6u .. 6u + 5 for every tile
            k = 6 * u
            for b in range(tw):
                t = r * tw + b
                for f in range(F):
                    dm[k, t, f], dm[k + 1, t, f], dm[k + 2, t, f], dm[k + 3, t, f], dm[k + 4, t, f], dm[k + 5, t, f] = (
                        _a4(e[b, u, 0, f], e[b, u, 1, f], e[b, u, 2, f], e[b, u, 3, f]))


@_jit
def _bias_activation(z, bias, has_bias, kind):  # pragma: no cover - compiled
    M, C = z.shape
    zero, one = z.dtype.type(0), z.dtype.type(1)
    for t in prange(_tasks(M)):
        lo, hi = _task_rows(t, M)
        for r in range(lo, hi):
            for c in range(C):
                z[r, c] = _activate(z[r, c] + bias[c] if has_bias else z[r, c], kind, zero, one)


@_jit
def _bias_neg_abs(z, bias, has_bias, e):  # pragma: no cover - compiled
    # z += bias in place; e = -|z| (the argument of the sigmoid's one exponential)
    M, C = z.shape
    for t in prange(_tasks(M)):
        lo, hi = _task_rows(t, M)
        for r in range(lo, hi):
            for c in range(C):
                v = z[r, c] + bias[c] if has_bias else z[r, c]
                z[r, c] = v
                e[r, c] = -abs(v)


@_jit
def _sigmoid_from_exp(z, e):  # pragma: no cover - compiled
    # z = sigmoid(z) given e = exp(-|z|)
    M, C = z.shape
    one = z.dtype.type(1)
    for t in prange(_tasks(M)):
        lo, hi = _task_rows(t, M)
        for r in range(lo, hi):
            for c in range(C):
                z[r, c] = _sigmoid_given_exp(z[r, c], e[r, c], one)


@_jit
def _activation_backward(dout, out, kind, dz):  # pragma: no cover - compiled
    M, C = dz.shape
    zero = dz.dtype.type(0)
    for t in prange(_tasks(M)):
        lo, hi = _task_rows(t, M)
        for r in range(lo, hi):
            for c in range(C):
                dz[r, c] = _activation_grad(dout[r, c], out[r, c], kind, zero)


@_jit
def _activation_backward_sum(dout, out, kind, dz, partial):  # pragma: no cover - compiled
    # dz as in _activation_backward; partial[t] (float64) sums dz over the rows of chunk t
    M, C = dz.shape
    chunks = partial.shape[0]
    zero = dz.dtype.type(0)
    for t in prange(chunks):
        s = np.zeros(C)
        lo, hi = _chunk_rows(t, M, chunks)
        for r in range(lo, hi):
            for c in range(C):
                g = _activation_grad(dout[r, c], out[r, c], kind, zero)
                dz[r, c] = g
                s[c] += g
        partial[t, :] = s


# fused multiply-adds and a reciprocal-multiply allowed, NaN and inf kept (no "nnan"/"ninf"): the float32 sigmoid
_jit_f32 = numba.njit(parallel=True, cache=True, nogil=True, fastmath={"contract", "arcp", "nsz", "afn"})


@_jit_f32
def _bias_sigmoid_f32(z, bias):  # pragma: no cover - compiled
    # float32, one pass: z = sigmoid(z + bias), exp by _exp_nonpositive_f32
    M, C = z.shape
    one = np.float32(1)
    for t in prange(_tasks(M)):
        lo, hi = _task_rows(t, M)
        for r in range(lo, hi):
            for c in range(C):
                v = z[r, c] + bias[c]
                z[r, c] = _sigmoid_given_exp(v, _exp_nonpositive_f32(-abs(v)), one)


@_jit_f32
def _bias_sigmoid_gate_f32(z, bias, x, out):  # pragma: no cover - compiled
    # float32, one pass: z = w = sigmoid(z + bias) as _bias_sigmoid_f32, and out = x * w
    M, C = z.shape
    one = np.float32(1)
    for t in prange(_tasks(M)):
        lo, hi = _task_rows(t, M)
        for r in range(lo, hi):
            for c in range(C):
                v = z[r, c] + bias[c]
                w = _sigmoid_given_exp(v, _exp_nonpositive_f32(-abs(v)), one)
                z[r, c] = w
                out[r, c] = x[r, c] * w


@_jit
def _sigmoid_gate_from_exp(z, e, x, out):  # pragma: no cover - compiled
    # z = w = sigmoid(z) given e = exp(-|z|), and out = x * w in the same pass
    M, C = z.shape
    one = z.dtype.type(1)
    for t in prange(_tasks(M)):
        lo, hi = _task_rows(t, M)
        for r in range(lo, hi):
            for c in range(C):
                w = _sigmoid_given_exp(z[r, c], e[r, c], one)
                z[r, c] = w
                out[r, c] = x[r, c] * w


@_jit
def _attention_backward_mask_sum(dout, x, w, dx, dzb, partial):  # pragma: no cover - compiled
    # dx = dout * w, dzb = dout * x * w * (1 - w); partial[t] (float64) sums dzb over the rows of chunk t
    M, C = dout.shape
    chunks = partial.shape[0]
    for t in prange(chunks):
        s = np.zeros(C)
        lo, hi = _chunk_rows(t, M, chunks)
        for r in range(lo, hi):
            for c in range(C):
                g, wv = dout[r, c], w[r, c]
                dx[r, c] = g * wv
                d = g * x[r, c] * wv * (1 - wv)
                dzb[r, c] = d
                s[c] += d
        partial[t, :] = s


@_jit
def _channel_sums(x, shift, partial):  # pragma: no cover - compiled
    # partial[t] holds sums of (x - shift) and (x - shift)^2 (float64) over the rows of chunk t
    M, C = x.shape
    chunks = partial.shape[0]
    for t in prange(chunks):
        s = np.zeros(C)
        s2 = np.zeros(C)
        lo, hi = _chunk_rows(t, M, chunks)
        for r in range(lo, hi):
            for c in range(C):
                v = np.float64(x[r, c]) - shift[c]
                s[c] += v
                s2[c] += v * v
        partial[t, 0, :] = s
        partial[t, 1, :] = s2


@_jit
def _normalize(x, mean, scale, beta, out):  # pragma: no cover - compiled
    # out = (x - mean) * scale + beta, scale = gamma * inv_std (exactly beta where x == mean)
    M, C = x.shape
    for t in prange(_tasks(M)):
        lo, hi = _task_rows(t, M)
        for r in range(lo, hi):
            for c in range(C):
                out[r, c] = (x[r, c] - mean[c]) * scale[c] + beta[c]


@_jit
def _bn_backward_sums(dout, x, mean, inv_std, partial):  # pragma: no cover - compiled
    # partial[t] holds sums of dout and dout * x_hat (float64) over the rows of chunk t
    M, C = x.shape
    chunks = partial.shape[0]
    for t in prange(chunks):
        s = np.zeros(C)
        s2 = np.zeros(C)
        lo, hi = _chunk_rows(t, M, chunks)
        for r in range(lo, hi):
            for c in range(C):
                g = np.float64(dout[r, c])
                s[c] += g
                s2[c] += g * ((np.float64(x[r, c]) - mean[c]) * inv_std[c])
        partial[t, 0, :] = s
        partial[t, 1, :] = s2


@_jit
def _bn_backward_dx(dout, x, mean, inv_std, a, b, c0, dx):  # pragma: no cover - compiled
    # dx = a * (dout - b - x_hat * c0), per channel a = gamma * inv_std, b = dbeta / m, c0 = dgamma / m
    M, C = x.shape
    for t in prange(_tasks(M)):
        lo, hi = _task_rows(t, M)
        for r in range(lo, hi):
            for c in range(C):
                x_hat = (x[r, c] - mean[c]) * inv_std[c]
                dx[r, c] = a[c] * (dout[r, c] - b[c] - x_hat * c0[c])


def _chunks(rows: int) -> int:
    return max(1, min(numba.get_num_threads() * 4, rows // 64))


def im2col_padded(x, kh, kw, stride, pads, out=None):
    """See ``numpy_ref.im2col_padded``."""
    (top, bottom), (left, right) = pads
    N, H, W, C = x.shape
    OH = (H + top + bottom - kh) // stride + 1
    OW = (W + left + right - kw) // stride + 1
    if out is None:
        out = np.empty((N * OH * OW, kh * kw * C), dtype=x.dtype)
    _im2col_padded(np.ascontiguousarray(x), kh, kw, stride, top, left, OH, OW, out)
    return out


def col2im_padded(cols, x_shape, kh, kw, stride, pads):
    """See ``numpy_ref.col2im_padded``."""
    (top, bottom), (left, right) = pads
    N, H, W, C = x_shape
    OH = (H + top + bottom - kh) // stride + 1
    OW = (W + left + right - kw) // stride + 1
    dx = np.zeros(x_shape, dtype=cols.dtype)
    _col2im_padded(np.ascontiguousarray(cols), kh, kw, stride, top, left, OH, OW, dx)
    return dx


def shallow_conv_forward(x, kernel, bias, stride, pads, kind):
    """See ``numpy_ref.shallow_conv_forward``."""
    (top, bottom), (left, right) = pads
    N, H, W, _ = x.shape
    kh, kw, _, F = kernel.shape
    OH = (H + top + bottom - kh) // stride + 1
    OW = (W + left + right - kw) // stride + 1
    out = np.empty((N, OH, OW, F), dtype=x.dtype)
    has_bias = bias is not None
    b = bias.astype(x.dtype) if has_bias else np.zeros(F, dtype=x.dtype)
    if kernel.shape[:3] == (3, 3, 1) and stride == 1 and pads == ((0, 0), (0, 0)):
        _conv3x3_one_channel_forward(np.ascontiguousarray(x), np.ascontiguousarray(kernel, dtype=x.dtype), b,
                                     _KIND[kind], out)
        return out
    _shallow_conv_forward(np.ascontiguousarray(x), np.ascontiguousarray(kernel, dtype=x.dtype), b, has_bias,
                          _KIND[kind], stride, top, left, out)
    return out


def _weight_grad_chunks(dz):
    # chunks of the N * OH output rows whose partial sums shallow_conv_weight_grad adds (4 per thread)
    return max(1, min(numba.get_num_threads() * 4, dz.shape[0] * dz.shape[1]))


def shallow_conv_weight_grad(x, dz, kh, kw, stride, pads):
    """See ``numpy_ref.shallow_conv_weight_grad``."""
    (top, _), (left, _) = pads
    C, F = x.shape[-1], dz.shape[-1]
    partial = np.zeros((_weight_grad_chunks(dz), kh * kw * C + 1, F))
    if (kh, kw, C, stride) == (3, 3, 1, 1) and pads == ((0, 0), (0, 0)):
        _conv3x3_one_channel_weight_grad(np.ascontiguousarray(x), np.ascontiguousarray(dz), partial)
    else:
        _shallow_conv_weight_grad(np.ascontiguousarray(x), np.ascontiguousarray(dz), kh, kw, stride, top, left,
                                  partial)
    total = partial.sum(axis=0).astype(dz.dtype)
    return total[:-1].reshape(kh, kw, C, F), total[-1].copy()


def _winograd_variant(matrix, known):
    """Which of F(2x2, 3x3) (4) and F(4x4, 3x3) (6) a B^T or A^T belongs to: its window side s."""
    for s, candidate in known.items():
        if matrix is None and s == 4 or matrix is not None and np.array_equal(matrix, candidate):
            return s
    raise ValueError("numba backend: Winograd tile transforms exist for F(2x2, 3x3) and F(4x4, 3x3) only (winograd.F2,"
                     f" winograd.F4), not for the matrix {np.asarray(matrix).tolist()}; use the numpy backend")


def winograd_input(x, top, left, th, tw, b_t=None, out=None):
    """See ``numpy_ref.winograd_input``."""
    N, _, _, C = x.shape
    s = _winograd_variant(b_t, {4: winograd.B_T, 6: winograd.B_T4})
    if out is None:
        out = np.empty((s * s, N * th * tw, C), dtype=x.dtype)
    (_winograd_input if s == 4 else _winograd_input6)(np.ascontiguousarray(x), top, left, th, tw, out)
    return out


def winograd_output(m, out_shape, th, tw, a_t=None, bias=None, kind="linear", out=None):
    """See ``numpy_ref.winograd_output``. F(4x4, 3x3) adds the bias and applies a linear or ReLU activation as it
    stores each value (no pass of its own); F(2x2, 3x3) and the sigmoid run ``bias_activation`` afterwards."""
    s = _winograd_variant(a_t, {4: winograd.A_T, 6: winograd.A_T4})
    if out is None:
        out = np.empty(out_shape, dtype=m.dtype)
    m = np.ascontiguousarray(m)
    if s == 6 and kind != "sigmoid":
        has_bias = bias is not None
        _winograd_output6(m, th, tw, np.ascontiguousarray(bias, dtype=m.dtype) if has_bias else m[0, 0], has_bias,
                          _KIND[kind], out)
        return out
    if s == 4:
        _winograd_output(m, th, tw, out)
    else:  # the sigmoid: the transform alone, then bias_activation's own sigmoid
        _winograd_output6(m, th, tw, m[0, 0], False, _KIND["linear"], out)
    if bias is not None or kind != "linear":
        bias_activation(out.reshape(-1, out_shape[-1]), bias, kind)
    return out


def winograd_output_adjoint(dz, th, tw, a_t=None, out=None):
    """See ``numpy_ref.winograd_output_adjoint``."""
    N, _, _, F = dz.shape
    s = _winograd_variant(a_t, {4: winograd.A_T, 6: winograd.A_T4})
    if out is None:
        out = np.empty((s * s, N * th * tw, F), dtype=dz.dtype)
    (_winograd_output_adjoint if s == 4 else _winograd_output_adjoint6)(np.ascontiguousarray(dz), th, tw, out)
    return out


def _bias_or_zeros(bias, z):
    # the float32 kernels always add a bias (a branch per value would keep the loop from vectorizing)
    return np.zeros(z.shape[1], z.dtype) if bias is None else np.ascontiguousarray(bias, dtype=z.dtype)


def bias_activation(z, bias, kind):
    """See ``numpy_ref.bias_activation``. The sigmoid in float32 is one pass with a polynomial exp that
    vectorizes (``_exp_nonpositive_f32``); in float64 (gradient checks) its exponentials come from NumPy's
    ``np.exp`` (numba compiles ``exp`` to one scalar call per value): a pass that adds the bias and writes
    -|z|, ``np.exp`` in place, and a pass that forms 1 / (1 + e) or e / (1 + e) by the sign of z."""
    has_bias = bias is not None
    if kind != "sigmoid":
        _bias_activation(z, bias if has_bias else z[0], has_bias, _KIND[kind])
        return z
    if z.dtype == np.float32:
        _bias_sigmoid_f32(z, _bias_or_zeros(bias, z))
        return z
    e = workspace(z.shape, z.dtype, slot=2)
    _bias_neg_abs(z, bias if has_bias else z[0], has_bias, e)
    np.exp(e, out=e)
    _sigmoid_from_exp(z, e)
    return z


def activation_backward(dout, out, kind):
    """See ``numpy_ref.activation_backward``."""
    dz = np.empty_like(dout)
    _activation_backward(np.ascontiguousarray(dout), np.ascontiguousarray(out), _KIND[kind], dz)
    return dz


def activation_backward_and_sum(dout, out, kind):
    """See ``numpy_ref.activation_backward_and_sum``."""
    dz = np.empty_like(dout)
    partial = np.zeros((_chunks(dz.shape[0]), dz.shape[1]))
    _activation_backward_sum(np.ascontiguousarray(dout), np.ascontiguousarray(out), _KIND[kind], dz, partial)
    return dz, partial.sum(axis=0).astype(dz.dtype)


def sigmoid_gate(z, bias, x):
    """See ``numpy_ref.sigmoid_gate``. As ``bias_activation``'s sigmoid, with the product x * w formed in the
    pass that writes w (float32: that one pass does it all)."""
    has_bias = bias is not None
    x = np.ascontiguousarray(x)
    if z.dtype == np.float32 and x.dtype == np.float32:
        out = np.empty_like(z)
        _bias_sigmoid_gate_f32(z, _bias_or_zeros(bias, z), x, out)
        return out
    e = workspace(z.shape, z.dtype, slot=2)
    _bias_neg_abs(z, bias if has_bias else z[0], has_bias, e)
    np.exp(e, out=e)
    out = np.empty_like(z)
    _sigmoid_gate_from_exp(z, e, x, out)
    return out


def attention_backward_mask_and_sum(dout, x, w):
    """See ``numpy_ref.attention_backward_mask_and_sum``."""
    dx, dzb = np.empty_like(dout), np.empty_like(dout)
    partial = np.zeros((_chunks(dout.shape[0]), dout.shape[1]))
    _attention_backward_mask_sum(np.ascontiguousarray(dout), np.ascontiguousarray(x), np.ascontiguousarray(w), dx,
                                 dzb, partial)
    return dx, dzb, partial.sum(axis=0).astype(dzb.dtype)


def channel_moments(x):
    """See ``numpy_ref.channel_moments``. One pass, float64 sums of values shifted by the first row."""
    x = np.ascontiguousarray(x)
    M, C = x.shape
    shift = x[0].astype(np.float64)
    partial = np.zeros((_chunks(M), 2, C))
    _channel_sums(x, shift, partial)
    s, s2 = partial.sum(axis=0)
    d = s / M
    return (shift + d).astype(x.dtype), np.maximum(s2 / M - d * d, 0).astype(x.dtype)


def batchnorm_apply(x, mean, inv_std, gamma, beta):
    """See ``numpy_ref.batchnorm_apply`` (computed as (x - mean) * (gamma * inv_std) + beta)."""
    dt = x.dtype
    out = np.empty_like(x)
    _normalize(np.ascontiguousarray(x), mean.astype(dt), (gamma * inv_std).astype(dt), beta.astype(dt), out)
    return out


def batchnorm_backward(dout, x, mean, inv_std, gamma):
    """See ``numpy_ref.batchnorm_backward``."""
    dout, x = np.ascontiguousarray(dout), np.ascontiguousarray(x)
    M, C = x.shape
    mean64, inv64 = mean.astype(np.float64), inv_std.astype(np.float64)
    partial = np.zeros((_chunks(M), 2, C))
    _bn_backward_sums(dout, x, mean64, inv64, partial)
    dbeta, dgamma = partial.sum(axis=0)
    dt = dout.dtype
    dx = np.empty_like(dout)
    _bn_backward_dx(dout, x, mean.astype(dt), inv_std.astype(dt), (gamma * inv_std).astype(dt),
                    (dbeta / M).astype(dt), (dgamma / M).astype(dt), dx)
    return dx, dgamma.astype(dt), dbeta.astype(dt)
