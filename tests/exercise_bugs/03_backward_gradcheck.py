"""Planted bugs for lesson 03's exercises: each must fail its grader with a message that points at it."""

import numpy as np

from minarn.kernels.numpy_ref import col2im, im2col
from minarn.layers.conv import same_padding

BUGS = []  # (function name, short description, buggy function, substring the failure message must contain)


def col2im_assigns(dcols, x_shape, kh, kw, stride):
    N, H, W, C = x_shape
    OH, OW = (H - kh) // stride + 1, (W - kw) // stride + 1
    patches = dcols.reshape(N, OH, OW, kh, kw, C)
    dx = np.zeros(x_shape)
    for i in range(kh):
        for j in range(kw):
            dx[:, i : i + stride * OH : stride, j : j + stride * OW : stride, :] = patches[:, :, :, i, j, :]
    return dx


BUGS.append(("col2im", "= instead of +=", col2im_assigns, "+="))


def col2im_ignores_stride(dcols, x_shape, kh, kw, stride):
    N, H, W, C = x_shape
    OH, OW = (H - kh) // stride + 1, (W - kw) // stride + 1
    patches = dcols.reshape(N, OH, OW, kh, kw, C)
    dx = np.zeros(x_shape)
    for i in range(kh):
        for j in range(kw):
            dx[:, i : i + OH, j : j + OW, :] += patches[:, :, :, i, j, :]  # windows moved by 1, not by stride
    return dx


BUGS.append(("col2im", "patches placed at stride 1", col2im_ignores_stride, "p * stride + i"))


def _pads(x, kernel, stride, padding):
    kh, kw = kernel.shape[:2]
    if padding == "same":
        return same_padding(x.shape[1], kh, stride), same_padding(x.shape[2], kw, stride)
    return (0, 0), (0, 0)


def conv2d_backward_no_transpose(dout, x, kernel, stride=1, padding="valid"):
    kh, kw, C, F = kernel.shape
    (top, bottom), (left, right) = _pads(x, kernel, stride, padding)
    xp = np.pad(x, ((0, 0), (top, bottom), (left, right), (0, 0)))
    cols = im2col(xp, kh, kw, stride)
    dz = dout.reshape(-1, F)
    dkernel = (dz.T @ cols).reshape(kernel.shape)  # (F, kh*kw*C) reshaped as if it were (kh*kw*C, F)
    dx = col2im(dz @ kernel.reshape(-1, F).T, xp.shape, kh, kw, stride)
    return dx[:, top : top + x.shape[1], left : left + x.shape[2]], dkernel, dz.sum(axis=0)


BUGS.append(("conv2d_backward", "missing transpose in dkernel", conv2d_backward_no_transpose, "transpose"))


def conv2d_backward_no_crop(dout, x, kernel, stride=1, padding="valid"):
    kh, kw, C, F = kernel.shape
    (top, bottom), (left, right) = _pads(x, kernel, stride, padding)
    xp = np.pad(x, ((0, 0), (top, bottom), (left, right), (0, 0)))
    cols = im2col(xp, kh, kw, stride)
    dz = dout.reshape(-1, F)
    dx = col2im(dz @ kernel.reshape(-1, F).T, xp.shape, kh, kw, stride)  # the padding is never cropped off
    return dx, (cols.T @ dz).reshape(kernel.shape), dz.sum(axis=0)


BUGS.append(("conv2d_backward", "'same' padding not cropped from dx", conv2d_backward_no_crop, "crop"))


def conv2d_backward_mean_bias(dout, x, kernel, stride=1, padding="valid"):
    kh, kw, C, F = kernel.shape
    (top, bottom), (left, right) = _pads(x, kernel, stride, padding)
    xp = np.pad(x, ((0, 0), (top, bottom), (left, right), (0, 0)))
    cols = im2col(xp, kh, kw, stride)
    dz = dout.reshape(-1, F)
    dx = col2im(dz @ kernel.reshape(-1, F).T, xp.shape, kh, kw, stride)
    dbias = dz.mean(axis=0)  # a mean, not a sum
    return dx[:, top : top + x.shape[1], left : left + x.shape[2]], (cols.T @ dz).reshape(kernel.shape), dbias


BUGS.append(("conv2d_backward", "dbias as a mean", conv2d_backward_mean_bias, "summed over every image"))
