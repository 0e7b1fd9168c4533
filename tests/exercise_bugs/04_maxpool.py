"""Planted bugs for lesson 04's exercises: each must fail its grader with a message that points at it."""

import numpy as np

BUGS = []  # (function name, short description, buggy function, substring the failure message must contain)


def maxpool_forward_wrong_windows(x):
    N, H, W, C = x.shape
    OH, OW = H // 2, W // 2
    blocks = x[:, : 2 * OH, : 2 * OW].reshape(N, OH, OW, 2, 2, C)  # not the 2x2 windows: rows and columns mixed
    return blocks.max(axis=(3, 4))


BUGS.append(("maxpool_forward", "reshape to (N, OH, OW, 2, 2, C)", maxpool_forward_wrong_windows,
             "2 consecutive rows"))


def maxpool_forward_ceil(x):
    N, H, W, C = x.shape
    xp = np.pad(x, ((0, 0), (0, H % 2), (0, W % 2), (0, 0)), constant_values=-np.inf)  # keeps the odd last row
    OH, OW = xp.shape[1] // 2, xp.shape[2] // 2
    return xp.reshape(N, OH, 2, OW, 2, C).max(axis=(2, 4))


BUGS.append(("maxpool_forward", "ceil mode: the odd last row kept", maxpool_forward_ceil, "dropped"))


def _windows(x):
    N, H, W, C = x.shape
    OH, OW = H // 2, W // 2
    blocks = x[:, : 2 * OH, : 2 * OW].reshape(N, OH, 2, OW, 2, C)
    return blocks.transpose(0, 1, 3, 5, 2, 4).reshape(N, OH, OW, C, 4), OH, OW


def _scatter(winner, dout, x, OH, OW):
    N, _, _, C = x.shape
    routed = (winner * dout[..., None]).reshape(N, OH, OW, C, 2, 2).transpose(0, 1, 4, 2, 5, 3)
    dx = np.zeros_like(x)
    dx[:, : 2 * OH, : 2 * OW] = routed.reshape(N, 2 * OH, 2 * OW, C)
    return dx


def maxpool_backward_every_tied_max(dout, x):
    flat, OH, OW = _windows(x)
    winner = flat == flat.max(axis=-1, keepdims=True)  # a mask of every maximum: ties all get dout
    return _scatter(winner, dout, x, OH, OW)


BUGS.append(("maxpool_backward", "gradient to every tied maximum", maxpool_backward_every_tied_max, "exactly one"))


def maxpool_backward_last_max(dout, x):
    flat, OH, OW = _windows(x)
    last = 3 - np.argmax(flat[..., ::-1], axis=-1)  # the last maximum in row-major order
    return _scatter(np.eye(4)[last], dout, x, OH, OW)


BUGS.append(("maxpool_backward", "gradient to the last tied maximum", maxpool_backward_last_max, "not the last"))


def maxpool_backward_split(dout, x):
    flat, OH, OW = _windows(x)
    winner = flat == flat.max(axis=-1, keepdims=True)
    return _scatter(winner / winner.sum(axis=-1, keepdims=True), dout, x, OH, OW)  # cs231n's split on ties


BUGS.append(("maxpool_backward", "ties share the gradient", maxpool_backward_split, "FIRST maximum"))
