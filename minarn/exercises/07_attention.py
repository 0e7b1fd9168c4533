"""Lesson 07 exercises: the attention module of the paper (Fig. 3), forward and backward.

Fill in the two functions, then grade them:  python -m minarn.exercises check 07_attention.py
Lesson: lessons/07_attention.py (sections 1 and 2).
"""

import numpy as np
from scipy.special import expit  # expit(z) = 1 / (1 + exp(-z)), without overflow for large |z|


def attention_forward(x, w1, b1, w2, b2):
    """The attention module's output: out = x * w, w = sigmoid(ReLU(x @ w1 + b1) @ w2 + b2)  (paper Fig. 3).

    x: (N, H, W, C) feature map (channels last).
    w1, w2: (C, C), the two 1x1 convolutions' kernels as matrices over channels (a (1, 1, C, C) kernel
        reshaped); row = input channel, column = output channel, so a 1x1 convolution is `x @ w1 + b1`.
    b1, b2: (C,) biases.
    Returns out (N, H, W, C): every pixel and channel of x multiplied by its weight w in (0, 1).

    Steps: a = ReLU(x @ w1 + b1)  (conv_a);  w = sigmoid(a @ w2 + b2)  (conv_b, the mask);  out = x * w.
    Hint: `@` on an (N, H, W, C) array multiplies the last axis, i.e. mixes channels at every pixel.
    """
    raise NotImplementedError("attention_forward: write this function (see lesson 07)")


def attention_backward(dout, x, w1, b1, w2, b2):
    """Gradients of the attention module: returns (dx, dw1, db1, dw2, db2).

    dout: (N, H, W, C), the upstream gradient dL/dout; x, w1, b1, w2, b2 as in attention_forward.
    Returns dx (N, H, W, C), dw1 (C, C), db1 (C,), dw2 (C, C), db2 (C,).

    Recompute the forward's intermediates first: z1 = x @ w1 + b1, a = ReLU(z1), w = sigmoid(a @ w2 + b2).
    x is used TWICE (in the product x * w and as the input of conv_a), so its gradient is the SUM of two paths
    (fan-out):
        dx_direct = dout * w                          (through out = x * w, holding w fixed)
        dz2 = dout * x * w (1 - w)                    (into w, then through the sigmoid)
        dz1 = (dz2 @ w2^T) * [z1 > 0]                 (through conv_b, then the ReLU)
        dx = dx_direct + dz1 @ w1^T                   (through conv_a)
    The kernels' gradients sum over every pixel of every image: dw2 = a^T dz2 and dw1 = x^T dz1 with the
    pixels as rows (reshape to (N*H*W, C)); db2, db1 = dz2, dz1 summed over N, H and W.
    """
    raise NotImplementedError("attention_backward: write this function (see lesson 07)")
