"""Planted bugs for lesson 05's exercises: each must fail its grader with a message that points at it."""

import math

import numpy as np
from scipy.special import erf

BUGS = []  # (function name, short description, buggy function, substring the failure message must contain)


def relu_forward_in_place(x):
    np.maximum(x, 0, out=x)  # overwrites the caller's array
    return x


BUGS.append(("relu_forward", "writes into its input", relu_forward_in_place, "in place"))


def relu_backward_kink_passes(dout, x):
    return dout * (x >= 0)  # derivative 1 at x = 0


BUGS.append(("relu_backward", "[x >= 0]: gradient 1 at the kink", relu_backward_kink_passes, "kink x = 0"))


def relu_backward_output_sign(dout, x):
    out = np.maximum(x, 0)
    return dout * (out >= 0)  # the output's sign, with >=: true everywhere


BUGS.append(("relu_backward", "mask [out >= 0] from the output", relu_backward_output_sign, "where x < 0"))


def relu_backward_writes_dout(dout, x):
    dout[x <= 0] = 0  # DLFS' Relu.backward: zeroes the caller's upstream gradient
    return dout


BUGS.append(("relu_backward", "zeroes dout in place", relu_backward_writes_dout, "in place"))


def sigmoid_forward_overflows(x):
    return np.exp(x) / (1 + np.exp(x))  # inf / inf = nan at x = 1000


BUGS.append(("sigmoid_forward", "exp(x) / (1 + exp(x))", sigmoid_forward_overflows, "exp overflows"))


def _sigmoid(x):
    z = np.exp(-np.abs(x))
    return np.where(x >= 0, 1 / (1 + z), z / (1 + z))


def sigmoid_backward_s_only(dout, x):
    return dout * _sigmoid(x)  # s instead of s (1 - s)


BUGS.append(("sigmoid_backward", "derivative s instead of s(1 - s)", sigmoid_backward_s_only, "s alone"))


def gelu_forward_tanh(x):
    return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))


BUGS.append(("gelu_forward", "the tanh approximation", gelu_forward_tanh, "tanh approximation"))


def gelu_forward_no_half(x):
    return x * (1 + erf(x / math.sqrt(2)))  # Phi without its factor 0.5


BUGS.append(("gelu_forward", "Phi without the 0.5", gelu_forward_no_half, "Phi(x) = 0.5 * (1 + erf"))


def gelu_backward_no_x_phi(dout, x):
    return dout * 0.5 * (1 + erf(x / math.sqrt(2)))  # Phi(x) only: the x * phi(x) term is missing


BUGS.append(("gelu_backward", "missing the x * phi(x) term", gelu_backward_no_x_phi, "missing the x * phi(x)"))
