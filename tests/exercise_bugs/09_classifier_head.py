"""Planted bugs for lesson 09's exercises: each must fail its grader with a message that points at it."""

import numpy as np

BUGS = []  # (function name, short description, buggy function, substring the failure message must contain)


def dense_forward_no_bias(x, W, b):
    return x @ W


BUGS.append(("dense_forward", "forgets the bias", dense_forward_no_bias, "the bias is missing"))


def dense_backward_dx_no_transpose(dout, x, W):
    return dout @ W, x.T @ dout, dout.sum(axis=0)


BUGS.append(("dense_backward", "dx = dout @ W (a missing transpose)", dense_backward_dx_no_transpose,
             "transpose"))


def dense_backward_dw_transposed(dout, x, W):
    return dout @ W.T, dout.T @ x, dout.sum(axis=0)


BUGS.append(("dense_backward", "dW = dout^T x (transposed)", dense_backward_dw_transposed, "dW is transposed"))


def dense_backward_db_not_summed(dout, x, W):
    return dout @ W.T, x.T @ dout, dout


BUGS.append(("dense_backward", "db = dout, not summed over the batch", dense_backward_db_not_summed,
             "db is not summed over the batch"))


def dense_backward_db_mean(dout, x, W):
    return dout @ W.T, x.T @ dout, dout.mean(axis=0)


BUGS.append(("dense_backward", "db = the mean of dout instead of the sum", dense_backward_db_mean, "not the mean"))


def dropout_forward_no_rescale(x, rate, u):
    mask = (u >= rate).astype(float)
    return x * mask, mask


BUGS.append(("dropout_forward", "no 1 / (1 - rate) rescaling", dropout_forward_no_rescale, "not rescaled"))


def dropout_forward_keeps_u_below_rate(x, rate, u):
    mask = (u < rate) / (1 - rate)
    return x * mask, mask


BUGS.append(("dropout_forward", "keeps u < rate instead of u >= rate", dropout_forward_keeps_u_below_rate,
             "DROPPED with probability rate"))


def dropout_backward_fresh_mask(dout, mask):
    keep = np.random.default_rng().random(dout.shape) >= 0.45  # a new mask: not the forward's
    return dout * keep / 0.55


BUGS.append(("dropout_backward", "draws a fresh mask in backward", dropout_backward_fresh_mask,
             "same mask as the forward pass"))


def dropout_backward_unscaled(dout, mask):
    return dout * (mask != 0)


BUGS.append(("dropout_backward", "passes dout where kept, without the 1 / (1 - rate) scale",
             dropout_backward_unscaled, "already holds the 1 / (1 - rate) scale"))
