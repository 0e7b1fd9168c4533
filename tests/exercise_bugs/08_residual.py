"""Planted bugs for lesson 08's exercises: each must fail its grader with a message that points at it."""

import numpy as np

BUGS = []  # (function name, short description, buggy function, substring the failure message must contain)


def residual_forward_no_relu(x, f, skip=None):
    return f(x) + (x if skip is None else skip(x))


BUGS.append(("residual_forward", "no final ReLU", residual_forward_no_relu, "the final ReLU is missing"))


def residual_forward_relu_before_add(x, f, skip=None):
    return np.maximum(f(x), 0) + (x if skip is None else skip(x))


BUGS.append(("residual_forward", "ReLU(F(x)) + x instead of ReLU(F(x) + x)", residual_forward_relu_before_add,
             "the ReLU comes after the sum"))


def residual_forward_ignores_skip(x, f, skip=None):
    return np.maximum(f(x) + x, 0)


BUGS.append(("residual_forward", "adds x even when a skip function is given", residual_forward_ignores_skip,
             "skip(x), not x"))


def residual_backward_no_skip_gradient(dout, x, y, f_vjp, skip_vjp=None):
    return f_vjp(x, dout * (y > 0))


BUGS.append(("residual_backward", "drops the skip's gradient", residual_backward_no_skip_gradient,
             "the skip's gradient is missing"))


def residual_backward_no_relu_mask(dout, x, y, f_vjp, skip_vjp=None):
    return f_vjp(x, dout) + (dout if skip_vjp is None else skip_vjp(x, dout))


BUGS.append(("residual_backward", "drops the final ReLU's mask", residual_backward_no_relu_mask,
             "the final ReLU's mask is missing"))


def residual_backward_identity_always(dout, x, y, f_vjp, skip_vjp=None):
    g = dout * (y > 0)
    return f_vjp(x, g) + g


BUGS.append(("residual_backward", "adds g even when the skip is a projection", residual_backward_identity_always,
             "skip_vjp(x, g), not g"))
