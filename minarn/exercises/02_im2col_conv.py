"""Exercises of lesson 2: the convolution forward pass as im2col + one matrix product.

Fill in the three functions below (the lesson, ``lessons/02_im2col_conv.py``, explains every step), then grade
them with ``python -m minarn.exercises check 02_im2col_conv.py``. Work in float64; no loops over pixels are
needed (a loop over the kh * kw kernel offsets is fine). Everything is channels-last: x (N, H, W, C), kernel
(kh, kw, C, F) as in Keras.
"""

import math

import numpy as np


def same_padding(size, k, stride):
    """Keras' "same" padding along one axis: how many zeros go before and after an input of length ``size``.

    Args: size (int) input rows (or columns), k (int) kernel size, stride (int).
    Returns: (before, after), two ints.
    Math: "same" means ceil(size / stride) outputs. The last window then ends at (out - 1) * stride + k, so
    total = max((out - 1) * stride + k - size, 0) zeros are needed. Keras splits them as
    (total // 2, total - total // 2): an odd total puts the extra zero at the END (bottom / right).
    Example: same_padding(7, 3, 2) == (1, 1), same_padding(6, 3, 2) == (0, 1), same_padding(5, 3, 1) == (1, 1).
    """
    raise NotImplementedError("same_padding: write this function (see lesson 02)")


def im2col(x, kh, kw, stride):
    """Copy every kh x kw patch of x into one row of a matrix.

    Args: x (N, H, W, C) already padded; kh, kw kernel size; stride.
    Returns: cols (N * OH * OW, kh * kw * C), OH = (H - kh) // stride + 1, OW = (W - kw) // stride + 1.
    Math: cols[(n, p, q), (i, j, c)] = x[n, p * stride + i, q * stride + j, c]
      rows in (n, p, q) order (row index (n * OH + p) * OW + q), columns in (i, j, c) order (column index
      (i * kw + j) * C + c): the order of kernel.reshape(kh * kw * C, F), so that cols @ that is the convolution.
    Hints: one loop over the kh * kw offsets, each copying the strided slice
      x[:, i : i + stride * OH : stride, j : j + stride * OW : stride, :] into an array (N, OH, OW, kh, kw, C);
      or numpy.lib.stride_tricks.sliding_window_view (mind the order of the axes it returns).
    """
    raise NotImplementedError("im2col: write this function (see lesson 02)")


def conv2d_forward(x, kernel, bias, stride=1, padding="valid"):
    """The Conv2D forward pass (no activation): pad, im2col, one matrix product, bias.

    Args: x (N, H, W, C); kernel (kh, kw, C, F); bias (F,); stride (int); padding "valid" or "same".
    Returns: out (N, OH, OW, F).
      "valid": no padding, OH = (H - kh) // stride + 1.
      "same": first pad x with zeros, rows by same_padding(H, kh, stride) and columns by
      same_padding(W, kw, stride) (np.pad), so that OH = ceil(H / stride).
    Math: out[n, p, q, f] = bias[f] + sum_{i, j, c} x_pad[n, p*s + i, q*s + j, c] * kernel[i, j, c, f],
      computed as out = im2col(x_pad) @ kernel.reshape(kh * kw * C, F) + bias, reshaped to (N, OH, OW, F).
    Use your im2col and same_padding above.
    """
    raise NotImplementedError("conv2d_forward: write this function (see lesson 02)")
