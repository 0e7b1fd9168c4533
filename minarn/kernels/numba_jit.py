"""Numba-JIT twins of ``numpy_ref``: same signatures, same results, loops compiled and run in parallel.

Importing this module requires numba; ``minarn.kernels`` only imports it when numba is installed.
The outer loop over the batch (or batch x rows) is a ``prange``; every iteration writes a disjoint part of
the output, so no two threads touch the same element.
"""

from __future__ import annotations

import numba
import numpy as np
from numba import prange

NAME = "numba"

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
