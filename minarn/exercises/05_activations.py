"""Exercises of lesson 5: ReLU, sigmoid and GELU (paper Eq. 1-2), forward and backward.

Fill in the six functions below (``lessons/05_activations.py`` explains every step), then grade them with
``python -m minarn.exercises check 05_activations.py``. Every function works element-wise on a float64 array of
any shape, returns a NEW array and leaves its inputs unchanged. A backward function gets the upstream gradient
dout (same shape as x) and the forward's input x, and returns dx = dout * f'(x).
"""

import math

import numpy as np
from scipy.special import erf  # erf(x) = 2 / sqrt(pi) * integral_0^x exp(-t^2) dt, element-wise


def relu_forward(x):
    """ReLU(x) = max(x, 0).  Shapes: x (any) -> out (same)."""
    raise NotImplementedError("relu_forward: write this function (see lesson 05)")


def relu_backward(dout, x):
    """dx = dout * ReLU'(x): 1 where x > 0, 0 where x < 0, and 0 AT the kink x = 0 (as minarn and Keras).

    Shapes: dout, x (same) -> dx (same). Do not write into dout.
    """
    raise NotImplementedError("relu_backward: write this function (see lesson 05)")


def sigmoid_forward(x):
    """sigmoid(x) = 1 / (1 + exp(-x)) in (0, 1), without overflow, also at x = -1000 and x = +1000.

    Shapes: x (any) -> s (same).
    Hint: exp(-x) overflows for x << 0 (and exp(x) / (1 + exp(x)) gives inf / inf = nan for x >> 0). With
      z = exp(-|x|), which is in (0, 1], sigmoid(x) = 1 / (1 + z) for x >= 0 and z / (1 + z) for x < 0.
    """
    raise NotImplementedError("sigmoid_forward: write this function (see lesson 05)")


def sigmoid_backward(dout, x):
    """dx = dout * sigmoid'(x), with sigmoid'(x) = s * (1 - s), s = sigmoid(x) (at most 1/4, at x = 0).

    Shapes: dout, x (same) -> dx (same). Must work at x = +-1000 too (there the derivative is 0).
    """
    raise NotImplementedError("sigmoid_backward: write this function (see lesson 05)")


def gelu_forward(x):
    """GELU(x) = x * Phi(x), Phi(x) = 0.5 * (1 + erf(x / sqrt(2))), the standard normal CDF (paper Eq. 1-2).

    The EXACT form, as the paper states and minarn implements; not the tanh approximation
    0.5 x (1 + tanh(sqrt(2 / pi) (x + 0.044715 x^3))), which differs by up to 4.7e-4.
    Shapes: x (any) -> out (same).
    """
    raise NotImplementedError("gelu_forward: write this function (see lesson 05)")


def gelu_backward(dout, x):
    """dx = dout * GELU'(x), GELU'(x) = Phi(x) + x * phi(x), phi(x) = exp(-x^2 / 2) / sqrt(2 pi) (the normal pdf).

    (Product rule on x * Phi(x): Phi' = phi.)  Shapes: dout, x (same) -> dx (same).
    """
    raise NotImplementedError("gelu_backward: write this function (see lesson 05)")
