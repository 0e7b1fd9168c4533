"""Readable pure-NumPy kernels: the reference every fast path is tested against.

All tensors are channels-last. The column order of ``im2col`` is ``(i, j, c)`` (kernel row, kernel column,
input channel), the order of ``kernel.reshape(kh * kw * C, F)`` for a Keras kernel ``(kh, kw, C, F)``.
"""

from __future__ import annotations

import numpy as np

from minarn.kernels.winograd import A_T, B_T

NAME = "numpy"

# Whether Conv2D should pick Winograd's algorithm where its sizes qualify, and from how many output positions per
# image on: the NumPy tile transforms below (a strided copy and one Kronecker-matrix product each) beat im2col on
# ARN-CNN's 31x31 maps (conv2d_5, conv2d_6: the training step at batch 40 in 0.88 of im2col's time, at 256 in
# 0.92), not on the 15x15 and 7x7 ones (conv2d_10 1.35x and conv2d_13 1.08x im2col's time; benchmarks/RESULTS.md,
# session 14). Conv2D takes the larger of this and its own ``WINOGRAD_MIN_OUTPUT``.
WINOGRAD = True
WINOGRAD_MIN_OUTPUT = 900


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

    def window(i: int, j: int) -> np.ndarray:  # the (i, j)-th value of every window, (N, OH, OW, C)
        return x[:, i : i + stride * OH : stride, j : j + stride * OW : stride, :]

    out = window(0, 0).copy()
    argmax = np.zeros((N, OH, OW, C), dtype=np.int8)
    better = np.empty(out.shape, dtype=bool)
    for i in range(pool):
        for j in range(pool):
            if i == j == 0:
                continue
            np.greater(window(i, j), out, out=better)  # strict: an equal later value does not steal the gradient
            # The window positions k = i * pool + j grow through the loops, so a new winner's k is the largest yet.
            np.maximum(argmax, better * np.int8(i * pool + j), out=argmax)
            # out = window where better, else out, without a masked copy (slow on a random mask): fmax ignores a
            # NaN in the window, maximum keeps a NaN already in out (a NaN never replaces a maximum, nor is replaced)
            np.maximum(out, np.fmax(window(i, j), out), out=out)
    return out, argmax


def maxpool_backward(
    dout: np.ndarray, argmax: np.ndarray, x_shape: tuple[int, int, int, int], pool: int, stride: int
) -> np.ndarray:
    """Route each output gradient to the one input that won its window (see ``maxpool_forward``).

    Shapes: dout, argmax (N, OH, OW, C) -> dx (N, H, W, C). Overlapping windows (stride < pool) add up.
    """
    N, OH, OW, C = dout.shape
    dx = np.zeros(x_shape, dtype=dout.dtype)
    finite = np.isfinite(dout).all()  # then dout * [won] is exact (else inf * 0 or NaN * 0 would give NaN)
    for i in range(pool):
        for j in range(pool):
            won = argmax == i * pool + j
            routed = dout * won if finite else np.where(won, dout, 0)  # (where is slow on a random mask)
            dx[:, i : i + stride * OH : stride, j : j + stride * OW : stride, :] += routed
    return dx


# ----------------------------------------------------------------------------------------------------------
# Kernels of the fast layer paths (Conv2D, AttentionModule, BatchNormalization). Each one is a few NumPy
# lines; ``numba_jit`` has twins that do the same in one or two fused, parallel passes over memory.
# Rows are positions (n, h, w) of a channels-last map viewed as (rows, C); ``kind`` names an activation.

ACTIVATION_KINDS = ("linear", "relu", "sigmoid")


def im2col_padded(
    x: np.ndarray, kh: int, kw: int, stride: int, pads: tuple[tuple[int, int], tuple[int, int]],
    out: np.ndarray | None = None,
) -> np.ndarray:
    """``im2col`` of ``x`` zero-padded by ``pads = ((top, bottom), (left, right))``, optionally into ``out``.

    Shapes: x (N, H, W, C) -> cols (N * OH * OW, kh * kw * C) with OH = (H + top + bottom - kh) // stride + 1.
    Same result as ``im2col(np.pad(x, ...), kh, kw, stride)``; ``out`` (a reused buffer) saves the allocation.
    """
    (top, bottom), (left, right) = pads
    if top or bottom or left or right:
        x = np.pad(x, ((0, 0), (top, bottom), (left, right), (0, 0)))
    N, H, W, C = x.shape
    OH = (H - kh) // stride + 1
    OW = (W - kw) // stride + 1
    if out is None:
        out = np.empty((N * OH * OW, kh * kw * C), dtype=x.dtype)
    cols = out.reshape(N, OH, OW, kh, kw, C)
    for i in range(kh):
        for j in range(kw):
            cols[:, :, :, i, j, :] = x[:, i : i + stride * OH : stride, j : j + stride * OW : stride, :]
    return out


def col2im_padded(
    cols: np.ndarray, x_shape: tuple[int, int, int, int], kh: int, kw: int, stride: int,
    pads: tuple[tuple[int, int], tuple[int, int]],
) -> np.ndarray:
    """Adjoint of ``im2col_padded``: fold ``cols`` onto the padded grid (adding), then drop the padding.

    Shapes: cols (N * OH * OW, kh * kw * C) -> dx (N, H, W, C) = x_shape, a new contiguous array.
    """
    (top, bottom), (left, right) = pads
    N, H, W, C = x_shape
    dxp = col2im(cols, (N, H + top + bottom, W + left + right, C), kh, kw, stride)
    return np.ascontiguousarray(dxp[:, top : top + H, left : left + W, :])


def shallow_conv_forward(
    x: np.ndarray, kernel: np.ndarray, bias: np.ndarray | None, stride: int,
    pads: tuple[tuple[int, int], tuple[int, int]], kind: str,
) -> np.ndarray:
    """Convolution + bias + activation for a short patch (kh * kw * C small, e.g. the first layer's 3x3x1).

    Shapes: x (N, H, W, C), kernel (kh, kw, C, F) -> out (N, OH, OW, F), a new array. The reference is the
    general path (im2col, product, ``bias_activation``); ``numba_jit`` loops over the patch directly, because
    a product with a reduction of ~9 is all memory traffic for BLAS.
    """
    kh, kw, _, F = kernel.shape
    cols = im2col_padded(x, kh, kw, stride, pads)
    N, H, W, _ = x.shape
    OH = (H + sum(pads[0]) - kh) // stride + 1
    OW = (W + sum(pads[1]) - kw) // stride + 1
    return bias_activation(cols @ kernel.reshape(-1, F), bias, kind).reshape(N, OH, OW, F)


def shallow_conv_weight_grad(
    x: np.ndarray, dz: np.ndarray, kh: int, kw: int, stride: int, pads: tuple[tuple[int, int], tuple[int, int]]
) -> tuple[np.ndarray, np.ndarray]:
    """Weight and bias gradients of a short-patch convolution: (cols^T @ dz as (kh, kw, C, F), sum of dz (F,)).

    Shapes: x (N, H, W, C), dz (N, OH, OW, F). Sums run in float64 (see ``channel_moments``).
    """
    F = dz.shape[-1]
    dz = dz.reshape(-1, F)
    cols = im2col_padded(x, kh, kw, stride, pads)
    dkernel = (cols.T @ dz).reshape(kh, kw, x.shape[-1], F)
    return dkernel, dz.sum(axis=0, dtype=np.float64).astype(dz.dtype)


# Winograd F(m x m, 3x3) tile transforms (see ``minarn.kernels.winograd`` for the algorithm and the matrices B^T
# (s, s), A^T (m, s), s = m + 2; without them, F(2x2, 3x3)'s). Tile t = (n, a, b) covers outputs (ma..ma+m-1,
# mb..mb+m-1) and reads the s x s input window at rows ma - top.., columns mb - left.. (zeros outside the image).
# Tiles are numbered t = (n * TH + a) * TW + b.


def _tile_windows(xp: np.ndarray, th: int, tw: int, m: int) -> np.ndarray:
    """The (m+2) x (m+2) windows of a padded map, stride m, as a view (N, TH, TW, m+2, m+2, C)."""
    windows = np.lib.stride_tricks.sliding_window_view(xp, (m + 2, m + 2), axis=(1, 2))  # (N, ., ., C, s, s)
    return windows[:, : m * th : m, : m * tw : m].transpose(0, 1, 2, 4, 5, 3)


# The tile transforms as one matrix product each: B^T d B of an s x s tile d is (B^T kron B^T) @ vec(d), with
# vec(d) the tile's s^2 values row by row (and A^T M A likewise with A^T kron A^T). So every tile and channel of
# a layer goes through one (s^2, s^2) @ (s^2, tiles * channels) product, after one copy that puts each tile
# position's values side by side.


def _flat_output(out: np.ndarray | None, shape: tuple[int, int, int], dtype: np.dtype) -> np.ndarray:
    """``out`` (or a new array) of ``shape``, checked to be C-contiguous: its reshape to (s^2, -1) is a view that
    a product can write into."""
    if out is None:
        return np.empty(shape, dtype=dtype)
    if out.shape != shape or not out.flags.c_contiguous:
        raise ValueError(f"out: expected a C-contiguous array of shape {shape}, got shape {out.shape} "
                         f"({'contiguous' if out.flags.c_contiguous else 'not contiguous'})")
    return out


def winograd_input(
    x: np.ndarray, top: int, left: int, th: int, tw: int, b_t: np.ndarray | None = None,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """V = B^T d B for every tile and channel: x (N, H, W, C) -> V (s^2, N*TH*TW, C), optionally into ``out``."""
    b_t = (B_T if b_t is None else b_t).astype(x.dtype)  # in the data's precision, as the Numba kernels compute
    s = b_t.shape[0]
    m = s - 2
    N, H, W, C = x.shape
    xp = np.pad(x, ((0, 0), (top, m * th + 2 - H - top), (left, m * tw + 2 - W - left), (0, 0)))
    d = np.empty((s, s, N, th, tw, C), dtype=x.dtype)  # tile position (u, v) first: vec(d) is d.reshape(s^2, -1)
    d[...] = _tile_windows(xp, th, tw, m).transpose(3, 4, 0, 1, 2, 5)
    out = _flat_output(out, (s * s, N * th * tw, C), x.dtype)
    np.matmul(np.kron(b_t, b_t), d.reshape(s * s, -1), out=out.reshape(s * s, -1))
    return out


def winograd_output(m: np.ndarray, out_shape: tuple[int, int, int, int], th: int, tw: int,
                    a_t: np.ndarray | None = None, bias: np.ndarray | None = None, kind: str = "linear",
                    out: np.ndarray | None = None) -> np.ndarray:
    """z = act(Y + bias) with Y = A^T M A for every tile and filter, cropped to the output: M (s^2, T, F) -> z
    (N, OH, OW, F), optionally into ``out``; bias (F,) or None and ``kind`` as in ``bias_activation``."""
    a_t = (A_T if a_t is None else a_t).astype(m.dtype)
    tile, s = a_t.shape
    N, OH, OW, F = out_shape
    y = (np.kron(a_t, a_t) @ m.reshape(s * s, -1)).reshape(tile, tile, N, th, tw, F)  # (x, y, n, a, b, f)
    if out is None:
        out = np.empty(out_shape, dtype=m.dtype)
    out[...] = y.transpose(2, 3, 0, 4, 1, 5).reshape(N, tile * th, tile * tw, F)[:, :OH, :OW]
    bias_activation(out.reshape(-1, F), bias, kind)
    return out


def winograd_output_adjoint(dz: np.ndarray, th: int, tw: int, a_t: np.ndarray | None = None,
                            out: np.ndarray | None = None) -> np.ndarray:
    """dM = A dY A^T for every tile (dY zero beyond the output): dz (N, OH, OW, F) -> dM (s^2, T, F)."""
    a_t = (A_T if a_t is None else a_t).astype(dz.dtype)
    tile, s = a_t.shape
    N, OH, OW, F = dz.shape
    dy = np.zeros((N, tile * th, tile * tw, F), dtype=dz.dtype)
    dy[:, :OH, :OW] = dz
    tiles_first = dy.reshape(N, th, tile, tw, tile, F).transpose(2, 4, 0, 1, 3, 5)  # (x, y, n, a, b, f)
    out = _flat_output(out, (s * s, N * th * tw, F), dz.dtype)
    np.matmul(np.kron(a_t, a_t).T, tiles_first.reshape(tile * tile, -1), out=out.reshape(s * s, -1))
    return out


def bias_activation(z: np.ndarray, bias: np.ndarray | None, kind: str) -> np.ndarray:
    """In place: z = act(z + bias) for a (rows, C) array; ``kind`` is "linear", "relu" or "sigmoid".

    Returns z. Sigmoid is 1 / (1 + exp(-z)), as accurate as ``scipy.special.expit`` and ~4x faster on float32:
    where exp(-z) overflows (z below about -88 in float32) it is inf and the result is exactly 0, the limit.
    """
    if bias is not None:
        z += bias
    if kind == "relu":
        np.maximum(z, 0, out=z)
    elif kind == "sigmoid":
        with np.errstate(over="ignore"):
            np.exp(np.negative(z, out=z), out=z)
        z += 1
        np.reciprocal(z, out=z)
    return z


def activation_backward(dout: np.ndarray, out: np.ndarray, kind: str) -> np.ndarray:
    """dz from dout and the activation's *output* (enough for these three): a new array.

    relu: dout * [out > 0]; sigmoid: dout * out * (1 - out); linear: a copy of dout.
    """
    if kind == "relu":
        if np.isfinite(dout).all():  # dout * [out > 0] is then exact, and much faster than np.where's masked pick
            return dout * (out > 0)
        return np.where(out > 0, dout, 0).astype(dout.dtype, copy=False)  # (NaN or inf * 0 would give NaN)
    if kind == "sigmoid":
        return dout * out * (1 - out)
    return dout.copy()


def activation_backward_and_sum(dout: np.ndarray, out: np.ndarray, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """``activation_backward`` and the column sums of its result (the bias gradient), (rows, C) -> (dz, (C,)).
    The sums run in float64 (see ``channel_moments``)."""
    dz = activation_backward(dout, out, kind)
    return dz, dz.sum(axis=0, dtype=np.float64).astype(dz.dtype)


def sigmoid_gate(z: np.ndarray, bias: np.ndarray | None, x: np.ndarray) -> np.ndarray:
    """The attention module's mask and product (paper Fig. 3) for (rows, C) arrays: in place z = w =
    sigmoid(z + bias) (``bias_activation``), and out = x * w, a new array. Returns out."""
    w = bias_activation(z, bias, "sigmoid")
    return x * w


def attention_backward_mask_and_sum(
    dout: np.ndarray, x: np.ndarray, w: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Backward of out = x * w with w = sigmoid(zb), for (rows, C) arrays: (dx_direct, dzb, (C,)).

    dx_direct = dout * w (the product's gradient for x); dzb = dout * x * w * (1 - w) (through the sigmoid); and
    the column sums of dzb (the bias gradient of the convolution whose sigmoid made w), in float64 (see
    ``channel_moments``)."""
    dx_direct, dzb = dout * w, dout * x * w * (1 - w)
    return dx_direct, dzb, dzb.sum(axis=0, dtype=np.float64).astype(dzb.dtype)


def channel_moments(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and biased variance of a (rows, C) array (batch norm's batch statistics).

    The sums run in float64: NumPy adds along axis 0 row by row (pairwise summation only applies along the
    contiguous axis), and 38,440 same-signed float32 terms drift by ~1e-4 relative, enough to move every
    later activation by ~1e-5 (measured on ARN-CNN's batch_normalization_1)."""
    wide = x.astype(np.float64)  # (one float64 copy: faster than var(dtype=float64)'s own conversions)
    mean = wide.mean(axis=0)
    wide -= mean
    return mean.astype(x.dtype), np.square(wide, out=wide).mean(axis=0).astype(x.dtype)


def batchnorm_apply(
    x: np.ndarray, mean: np.ndarray, inv_std: np.ndarray, gamma: np.ndarray, beta: np.ndarray
) -> np.ndarray:
    """out = gamma * (x - mean) * inv_std + beta for a (rows, C) array: a new array."""
    return gamma * ((x - mean) * inv_std) + beta


def batchnorm_backward(
    dout: np.ndarray, x: np.ndarray, mean: np.ndarray, inv_std: np.ndarray, gamma: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Training-mode batch norm backward over (rows, C) arrays, x_hat recomputed from x.

    Returns (dx, dgamma, dbeta): dbeta = sum dout; dgamma = sum dout * x_hat;
    dx = gamma * inv_std * (dout - dbeta / m - x_hat * dgamma / m), m = rows
    (the same as (g - mean(g) - x_hat * mean(g * x_hat)) * inv_std with g = dout * gamma).
    """
    m = x.shape[0]
    x_hat = (x - mean) * inv_std
    dbeta = dout.sum(axis=0, dtype=np.float64).astype(dout.dtype)  # float64 sums: see channel_moments
    dgamma = (dout * x_hat).sum(axis=0, dtype=np.float64).astype(dout.dtype)
    dx = (gamma * inv_std) * (dout - dbeta / m - x_hat * (dgamma / m))
    return dx.astype(dout.dtype, copy=False), dgamma, dbeta
