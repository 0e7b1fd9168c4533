"""Readable pure-NumPy kernels: the reference every fast path is tested against.

All tensors are channels-last. The column order of ``im2col`` is ``(i, j, c)`` (kernel row, kernel column,
input channel), the order of ``kernel.reshape(kh * kw * C, F)`` for a Keras kernel ``(kh, kw, C, F)``.
"""

from __future__ import annotations

import numpy as np

NAME = "numpy"


def im2col(x: np.ndarray, kh: int, kw: int, stride: int) -> np.ndarray:
    """Unfold every ``kh x kw`` patch of an (already padded) input into one row.

    Shapes: x (N, H, W, C) -> cols (N * OH * OW, kh * kw * C),
    with OH = (H - kh) // stride + 1 and OW = (W - kw) // stride + 1.
    Math: cols[(n, p, q), (i, j, c)] = x[n, p * stride + i, q * stride + j, c].
    The loop runs over the kh * kw kernel offsets only; each step copies one strided slice.
    """
    N, H, W, C = x.shape
    OH = (H - kh) // stride + 1
    OW = (W - kw) // stride + 1
    cols = np.empty((N, OH, OW, kh, kw, C), dtype=x.dtype)
    for i in range(kh):
        for j in range(kw):
            cols[:, :, :, i, j, :] = x[:, i : i + stride * OH : stride, j : j + stride * OW : stride, :]
    return cols.reshape(N * OH * OW, kh * kw * C)


def col2im(cols: np.ndarray, x_shape: tuple[int, int, int, int], kh: int, kw: int, stride: int) -> np.ndarray:
    """Fold columns back onto the input grid, *adding* where patches overlap (the adjoint of im2col).

    Shapes: cols (N * OH * OW, kh * kw * C) -> dx (N, H, W, C) with x_shape = (N, H, W, C).
    Math: dx[n, p * stride + i, q * stride + j, c] += cols[(n, p, q), (i, j, c)].
    """
    N, H, W, C = x_shape
    OH = (H - kh) // stride + 1
    OW = (W - kw) // stride + 1
    patches = cols.reshape(N, OH, OW, kh, kw, C)
    dx = np.zeros(x_shape, dtype=cols.dtype)
    for i in range(kh):
        for j in range(kw):
            dx[:, i : i + stride * OH : stride, j : j + stride * OW : stride, :] += patches[:, :, :, i, j, :]
    return dx


def maxpool_forward(x: np.ndarray, pool: int, stride: int) -> tuple[np.ndarray, np.ndarray]:
    """Max over each ``pool x pool`` window ("valid": windows that do not fit are dropped).

    Shapes: x (N, H, W, C) -> out (N, OH, OW, C), argmax (N, OH, OW, C) int8 with the winning
    position ``i * pool + j`` inside the window. Ties go to the first maximum in row-major order.
    """
    N, H, W, C = x.shape
    OH = (H - pool) // stride + 1
    OW = (W - pool) // stride + 1
    out = None
    argmax = np.zeros((N, OH, OW, C), dtype=np.int8)
    for i in range(pool):
        for j in range(pool):
            window = x[:, i : i + stride * OH : stride, j : j + stride * OW : stride, :]
            if out is None:
                out = window.copy()
                continue
            better = window > out  # strict: an equal later value does not steal the gradient
            out[better] = window[better]
            argmax[better] = i * pool + j
    assert out is not None
    return out, argmax


def maxpool_backward(
    dout: np.ndarray, argmax: np.ndarray, x_shape: tuple[int, int, int, int], pool: int, stride: int
) -> np.ndarray:
    """Route each output gradient to the one input that won its window (see ``maxpool_forward``).

    Shapes: dout, argmax (N, OH, OW, C) -> dx (N, H, W, C). Overlapping windows (stride < pool) add up.
    """
    N, OH, OW, C = dout.shape
    dx = np.zeros(x_shape, dtype=dout.dtype)
    for i in range(pool):
        for j in range(pool):
            routed = np.where(argmax == i * pool + j, dout, 0)
            dx[:, i : i + stride * OH : stride, j : j + stride * OW : stride, :] += routed
    return dx
