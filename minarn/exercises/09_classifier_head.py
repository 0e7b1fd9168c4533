"""Lesson 09 exercises: the classifier head's dense layer and inverted dropout, forward and backward.

Fill in the four functions, then grade them:  python -m minarn.exercises check 09_classifier_head.py
Lesson: lessons/09_classifier_head.py (sections 2 and 3).
"""

import numpy as np


def dense_forward(x, W, b):
    """The dense (fully connected) layer before its activation: z = x W + b.

    x: (N, in), one row per image; W: (in, out), the kernel; b: (out,), the bias.
    Returns z: (N, out).
    """
    raise NotImplementedError("dense_forward: write this function (see lesson 09)")


def dense_backward(dout, x, W):
    """Gradients of z = x W + b, given dout = dL/dz (N, out): returns the tuple (dx, dW, db).

    x: (N, in), the forward's input; W: (in, out).
    Returns dx (N, in), dW (in, out), db (out,):
        dx = dout W^T,   dW = x^T dout,   db = sum of dout over the batch (axis 0).
    Every weight W[i, o] multiplies x[n, i] for every image n, so its gradient sums over the batch; so does b's.
    Hint: check each result's shape against the parameter it belongs to.
    """
    raise NotImplementedError("dense_backward: write this function (see lesson 09)")


def dropout_forward(x, rate, u):
    """Inverted dropout in training mode: returns the tuple (out, mask).

    x: any shape; rate: the probability of dropping an element, 0 <= rate < 1; u: uniform random numbers in
    [0, 1), the shape of x (minarn's Dropout draws them as rng.random(x.shape)).
    mask = [u >= rate] / (1 - rate)   (an element is kept when u >= rate, i.e. with probability 1 - rate)
    out = x * mask
    The survivors are scaled by 1 / (1 - rate) so that every element keeps its expected value, E[out] = x:
    inference then needs no dropout and no rescaling.
    """
    raise NotImplementedError("dropout_forward: write this function (see lesson 09)")


def dropout_backward(dout, mask):
    """dL/dx of out = x * mask, given dout = dL/dout and the mask that dropout_forward returned.

    dout, mask: the same shape. Returns dx, that shape.
    The gradient flows through the same elements, with the same scale, as the forward pass did.
    """
    raise NotImplementedError("dropout_backward: write this function (see lesson 09)")
