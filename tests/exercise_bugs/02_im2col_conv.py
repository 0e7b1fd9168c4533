"""Planted bugs for lesson 02's exercises: each must fail its grader with a message that points at it."""

import math

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

BUGS = []  # (function name, short description, buggy function, substring the failure message must contain)


def same_padding_extra_at_start(size, k, stride):
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + k - size, 0)
    return total - total // 2, total // 2  # the extra zero goes before: TensorFlow puts it after


BUGS.append(("same_padding", "odd total split with the extra zero first", same_padding_extra_at_start, "END"))


def same_padding_symmetric_k(size, k, stride):
    return (k - 1) // 2, (k - 1) // 2  # right for stride 1 and odd k only


BUGS.append(("same_padding", "(k - 1) // 2 on both sides, whatever the stride", same_padding_symmetric_k,
             "ceil(size / stride)"))


def im2col_channel_first_columns(x, kh, kw, stride):
    win = sliding_window_view(x, (kh, kw), axis=(1, 2))[:, ::stride, ::stride]  # (N, OH, OW, C, kh, kw)
    N, OH, OW = win.shape[:3]
    return win.reshape(N * OH * OW, -1)  # forgot the transpose: columns in (c, i, j) order


BUGS.append(("im2col", "columns in (c, i, j) order", im2col_channel_first_columns, "(i, j, c) order"))


def im2col_ignores_stride(x, kh, kw, stride):
    win = sliding_window_view(x, (kh, kw), axis=(1, 2))  # every window, whatever the stride
    N, OH, OW = win.shape[:3]
    return win.transpose(0, 1, 2, 4, 5, 3).reshape(N * OH * OW, -1)


BUGS.append(("im2col", "stride ignored", im2col_ignores_stride, "stride is ignored"))


def _im2col(x, kh, kw, stride):
    win = sliding_window_view(x, (kh, kw), axis=(1, 2))[:, ::stride, ::stride]
    N, OH, OW = win.shape[:3]
    return win.transpose(0, 1, 2, 4, 5, 3).reshape(N * OH * OW, -1)


def conv2d_forward_never_pads(x, kernel, bias, stride=1, padding="valid"):
    kh, kw, C, F = kernel.shape  # "same" accepted but never applied
    N, H, W, _ = x.shape
    OH, OW = (H - kh) // stride + 1, (W - kw) // stride + 1
    return (_im2col(x, kh, kw, stride) @ kernel.reshape(kh * kw * C, F) + bias).reshape(N, OH, OW, F)


BUGS.append(("conv2d_forward", "padding forgotten for 'same'", conv2d_forward_never_pads, "'same' was not applied"))


def conv2d_forward_kernel_transposed(x, kernel, bias, stride=1, padding="valid"):
    kh, kw, C, F = kernel.shape
    if padding == "same":
        pads = []
        for size, k in ((x.shape[1], kh), (x.shape[2], kw)):
            total = max((math.ceil(size / stride) - 1) * stride + k - size, 0)
            pads.append((total // 2, total - total // 2))
        x = np.pad(x, ((0, 0), pads[0], pads[1], (0, 0)))
    N, H, W, _ = x.shape
    OH, OW = (H - kh) // stride + 1, (W - kw) // stride + 1
    weights = kernel.transpose(2, 0, 1, 3).reshape(kh * kw * C, F)  # rows in (c, i, j) order: not im2col's
    return (_im2col(x, kh, kw, stride) @ weights + bias).reshape(N, OH, OW, F)


BUGS.append(("conv2d_forward", "kernel rows in (c, i, j) order", conv2d_forward_kernel_transposed, "kernel.reshape"))
