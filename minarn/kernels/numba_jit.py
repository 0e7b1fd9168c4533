"""Numba-JIT twins of ``numpy_ref``: same signatures, same results, loops compiled and run in parallel.

Importing this module requires numba; ``minarn.kernels`` only imports it when numba is installed.
The outer loop over the batch (or batch x rows) is a ``prange``; every iteration writes a disjoint part of
the output, so no two threads touch the same element.
"""

from __future__ import annotations

import os

import numba
import numpy as np
from numba import prange

NAME = "numba"

# Threads: numba's default OpenMP layer lets its idle threads spin, and so do OpenBLAS' threads after a matrix
# product. A training step alternates between the two many times, so on a small machine the two pools steal
# each other's cores (measured on 2 cores: 11 img/s with OpenMP, 37 with workqueue). The workqueue layer's
# threads sleep while idle. Only chosen when the user has not picked a layer (NUMBA_THREADING_LAYER).
if numba.config.THREADING_LAYER == "default" and "NUMBA_THREADING_LAYER" not in os.environ:
    numba.config.THREADING_LAYER = "workqueue"

_jit = numba.njit(parallel=True, cache=True, nogil=True)


@_jit
def _im2col(x, kh, kw, stride, cols):  # pragma: no cover - compiled
    N, H, W, C = x.shape
    OH = (H - kh) // stride + 1
    OW = (W - kw) // stride + 1
    for r in prange(N * OH):
        n = r // OH
        p = r % OH
        for q in range(OW):
            row = (n * OH + p) * OW + q
            k = 0
            for i in range(kh):
                for j in range(kw):
                    for c in range(C):
                        cols[row, k] = x[n, p * stride + i, q * stride + j, c]
                        k += 1


@_jit
def _col2im(cols, N, H, W, C, kh, kw, stride, dx):  # pragma: no cover - compiled
    OH = (H - kh) // stride + 1
    OW = (W - kw) // stride + 1
    for n in prange(N):  # one image per thread: overlapping patches of one image never race
        for p in range(OH):
            for q in range(OW):
                row = (n * OH + p) * OW + q
                k = 0
                for i in range(kh):
                    for j in range(kw):
                        for c in range(C):
                            dx[n, p * stride + i, q * stride + j, c] += cols[row, k]
                            k += 1


@_jit
def _maxpool_forward(x, pool, stride, out, argmax):  # pragma: no cover - compiled
    N, OH, OW, C = out.shape
    for r in prange(N * OH):
        n = r // OH
        p = r % OH
        for q in range(OW):
            for c in range(C):
                best = x[n, p * stride, q * stride, c]
                where = 0
                for i in range(pool):
                    for j in range(pool):
                        v = x[n, p * stride + i, q * stride + j, c]
                        if v > best:  # strict: ties keep the first maximum, as in numpy_ref
                            best = v
                            where = i * pool + j
                out[n, p, q, c] = best
                argmax[n, p, q, c] = where


@_jit
def _maxpool_backward(dout, argmax, pool, stride, dx):  # pragma: no cover - compiled
    N, OH, OW, C = dout.shape
    for n in prange(N):
        for p in range(OH):
            for q in range(OW):
                for c in range(C):
                    w = argmax[n, p, q, c]
                    dx[n, p * stride + w // pool, q * stride + w % pool, c] += dout[n, p, q, c]


def im2col(x: np.ndarray, kh: int, kw: int, stride: int) -> np.ndarray:
    """See ``numpy_ref.im2col``."""
    N, H, W, C = x.shape
    OH = (H - kh) // stride + 1
    OW = (W - kw) // stride + 1
    cols = np.empty((N * OH * OW, kh * kw * C), dtype=x.dtype)
    _im2col(np.ascontiguousarray(x), kh, kw, stride, cols)
    return cols


def col2im(cols: np.ndarray, x_shape: tuple[int, int, int, int], kh: int, kw: int, stride: int) -> np.ndarray:
    """See ``numpy_ref.col2im``."""
    N, H, W, C = x_shape
    dx = np.zeros(x_shape, dtype=cols.dtype)
    _col2im(np.ascontiguousarray(cols), N, H, W, C, kh, kw, stride, dx)
    return dx


def maxpool_forward(x: np.ndarray, pool: int, stride: int) -> tuple[np.ndarray, np.ndarray]:
    """See ``numpy_ref.maxpool_forward``."""
    N, H, W, C = x.shape
    OH = (H - pool) // stride + 1
    OW = (W - pool) // stride + 1
    out = np.empty((N, OH, OW, C), dtype=x.dtype)
    argmax = np.empty((N, OH, OW, C), dtype=np.int8)
    _maxpool_forward(np.ascontiguousarray(x), pool, stride, out, argmax)
    return out, argmax


def maxpool_backward(
    dout: np.ndarray, argmax: np.ndarray, x_shape: tuple[int, int, int, int], pool: int, stride: int
) -> np.ndarray:
    """See ``numpy_ref.maxpool_backward``."""
    dx = np.zeros(x_shape, dtype=dout.dtype)
    _maxpool_backward(np.ascontiguousarray(dout), np.ascontiguousarray(argmax), pool, stride, dx)
    return dx


# ----------------------------------------------------------------------------------------------------------
# Fast-path kernels (see the NumPy twins in numpy_ref for the math). Arrays are (rows, C) views of
# channels-last maps; each kernel is one fused pass, parallel over blocks of rows.

ACTIVATION_KINDS = ("linear", "relu", "sigmoid")
_KIND = {"linear": 0, "relu": 1, "sigmoid": 2}
_ROWS_PER_TASK = 256  # rows of a (rows, C) array one prange iteration handles


@numba.njit(inline="always", fastmath=True)
def _sigmoid(v, one):  # pragma: no cover - compiled
    # stable for any v (exp of a non-positive number only); branch-free so the loop vectorizes
    e = np.exp(-abs(v))
    q = one / (one + e)
    return q if v >= 0 else e * q


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


@_jit
def _col2im_padded(cols, kh, kw, stride, top, left, OH, OW, dx):  # pragma: no cover - compiled
    N, H, W, C = dx.shape
    for n in prange(N):  # one image per thread: overlapping patches of one image never race
        for p in range(OH):
            for q in range(OW):
                row = (n * OH + p) * OW + q
                for i in range(kh):
                    h = p * stride + i - top
                    if h < 0 or h >= H:
                        continue
                    for j in range(kw):
                        w = q * stride + j - left
                        if w < 0 or w >= W:
                            continue
                        k0 = (i * kw + j) * C
                        for c in range(C):
                            dx[n, h, w, c] += cols[row, k0 + c]


@_jit
def _bias_activation(z, bias, has_bias, kind):  # pragma: no cover - compiled
    M, C = z.shape
    zero, one = z.dtype.type(0), z.dtype.type(1)
    tasks = (M + _ROWS_PER_TASK - 1) // _ROWS_PER_TASK
    for t in prange(tasks):
        for r in range(t * _ROWS_PER_TASK, min(M, (t + 1) * _ROWS_PER_TASK)):
            for c in range(C):
                v = z[r, c] + bias[c] if has_bias else z[r, c]
                if kind == 1:
                    v = max(v, zero)
                elif kind == 2:
                    v = _sigmoid(v, one)
                z[r, c] = v


@_jit
def _activation_backward(dout, out, kind, dz):  # pragma: no cover - compiled
    M, C = dz.shape
    zero = dz.dtype.type(0)
    tasks = (M + _ROWS_PER_TASK - 1) // _ROWS_PER_TASK
    for t in prange(tasks):
        for r in range(t * _ROWS_PER_TASK, min(M, (t + 1) * _ROWS_PER_TASK)):
            for c in range(C):
                g = dout[r, c]
                if kind == 1:
                    g = g if out[r, c] > zero else zero
                elif kind == 2:
                    g = g * out[r, c] * (1 - out[r, c])
                dz[r, c] = g


@_jit
def _attention_backward_mask(dout, x, w, dx, dzb):  # pragma: no cover - compiled
    M, C = dout.shape
    tasks = (M + _ROWS_PER_TASK - 1) // _ROWS_PER_TASK
    for t in prange(tasks):
        for r in range(t * _ROWS_PER_TASK, min(M, (t + 1) * _ROWS_PER_TASK)):
            for c in range(C):
                g, wv = dout[r, c], w[r, c]
                dx[r, c] = g * wv
                dzb[r, c] = g * x[r, c] * wv * (1 - wv)


@_jit
def _channel_sums(x, shift, partial):  # pragma: no cover - compiled
    # partial[t] holds sums of (x - shift) and (x - shift)^2 (float64) over the rows of chunk t
    M, C = x.shape
    chunks = partial.shape[0]
    for t in prange(chunks):
        s = np.zeros(C)
        s2 = np.zeros(C)
        for r in range(t * M // chunks, (t + 1) * M // chunks):
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
    tasks = (M + _ROWS_PER_TASK - 1) // _ROWS_PER_TASK
    for t in prange(tasks):
        for r in range(t * _ROWS_PER_TASK, min(M, (t + 1) * _ROWS_PER_TASK)):
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
        for r in range(t * M // chunks, (t + 1) * M // chunks):
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
    tasks = (M + _ROWS_PER_TASK - 1) // _ROWS_PER_TASK
    for t in prange(tasks):
        for r in range(t * _ROWS_PER_TASK, min(M, (t + 1) * _ROWS_PER_TASK)):
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


def bias_activation(z, bias, kind):
    """See ``numpy_ref.bias_activation``."""
    has_bias = bias is not None
    _bias_activation(z, bias if has_bias else z[0], has_bias, _KIND[kind])
    return z


def activation_backward(dout, out, kind):
    """See ``numpy_ref.activation_backward``."""
    dz = np.empty_like(dout)
    _activation_backward(np.ascontiguousarray(dout), np.ascontiguousarray(out), _KIND[kind], dz)
    return dz


def attention_backward_mask(dout, x, w):
    """See ``numpy_ref.attention_backward_mask``."""
    dx, dzb = np.empty_like(dout), np.empty_like(dout)
    _attention_backward_mask(np.ascontiguousarray(dout), np.ascontiguousarray(x), np.ascontiguousarray(w), dx, dzb)
    return dx, dzb


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
