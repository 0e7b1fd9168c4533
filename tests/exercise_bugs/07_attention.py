"""Planted bugs for lesson 07's exercises: each must fail its grader with a message that points at it."""

import numpy as np
from scipy.special import expit

BUGS = []  # (function name, short description, buggy function, substring the failure message must contain)


def attention_forward_no_relu(x, w1, b1, w2, b2):
    return x * expit((x @ w1 + b1) @ w2 + b2)


BUGS.append(("attention_forward", "no ReLU after conv_a", attention_forward_no_relu, "ReLU"))


def attention_forward_returns_mask(x, w1, b1, w2, b2):
    return expit(np.maximum(x @ w1 + b1, 0) @ w2 + b2)


BUGS.append(("attention_forward", "returns the mask w, not x * w", attention_forward_returns_mask, "x * w"))


def _backward(dout, x, w1, b1, w2, b2, direct=True, mask=True, sigmoid_derivative=None):
    c = x.shape[-1]
    z1 = x @ w1 + b1
    a = np.maximum(z1, 0)
    w = expit(a @ w2 + b2)
    dz2 = dout * x * (w * (1 - w) if sigmoid_derivative is None else sigmoid_derivative(w))
    dz1 = (dz2 @ w2.T) * (z1 > 0)
    dx = (dout * w if direct else 0) + (dz1 @ w1.T if mask else 0)
    return (dx, x.reshape(-1, c).T @ dz1.reshape(-1, c), dz1.reshape(-1, c).sum(0),
            a.reshape(-1, c).T @ dz2.reshape(-1, c), dz2.reshape(-1, c).sum(0))


def attention_backward_direct_only(dout, x, w1, b1, w2, b2):
    return _backward(dout, x, w1, b1, w2, b2, mask=False)


BUGS.append(("attention_backward", "dx = dout * w only (forgets the path through the mask)",
             attention_backward_direct_only, "add the path through the mask"))


def attention_backward_mask_only(dout, x, w1, b1, w2, b2):
    return _backward(dout, x, w1, b1, w2, b2, direct=False)


BUGS.append(("attention_backward", "dx = the mask path only (forgets dout * w)", attention_backward_mask_only,
             "add dout * w"))


def attention_backward_sigmoid_derivative_w(dout, x, w1, b1, w2, b2):
    return _backward(dout, x, w1, b1, w2, b2, sigmoid_derivative=lambda w: w)


BUGS.append(("attention_backward", "sigmoid's derivative taken as w instead of w (1 - w)",
             attention_backward_sigmoid_derivative_w, "w (1 - w)"))


def attention_backward_dw_transposed(dout, x, w1, b1, w2, b2):
    dx, dw1, db1, dw2, db2 = _backward(dout, x, w1, b1, w2, b2)
    return dx, dw1, db1, dw2.T, db2


BUGS.append(("attention_backward", "dw2 = dz2^T a (transposed)", attention_backward_dw_transposed,
             "dw2 is transposed"))
