"""Exercises of lesson 4: 2x2 max-pooling, forward and backward, with the tie rule.

Fill in the two functions below (``lessons/04_maxpool.py`` explains every step), then grade them with
``python -m minarn.exercises check 04_maxpool.py``. Channels-last, float64; windows 2x2 with stride 2 ("valid",
as Keras' MaxPooling2D(2) and minarn.MaxPooling2D).
"""

import numpy as np


def maxpool_forward(x):
    """2x2 max-pooling with stride 2, "valid".

    Args: x (N, H, W, C).
    Returns: out (N, OH, OW, C) with OH = H // 2, OW = W // 2: an odd last row/column belongs to no window
      and is dropped (31 -> 15 in the paper's Fig. 2).
    Math: out[n, p, q, c] = max(x[n, 2p : 2p + 2, 2q : 2q + 2, c]).
    Hint: crop to x[:, : 2 * OH, : 2 * OW], reshape to (N, OH, 2, OW, 2, C) and take the max over axes (2, 4).
      (Reshaping to (N, OH, OW, 2, 2, C) gives the wrong windows.)
    """
    raise NotImplementedError("maxpool_forward: write this function (see lesson 04)")


def maxpool_backward(dout, x):
    """Backward pass of maxpool_forward: route each output's gradient to the maximum of its window.

    Args: dout (N, OH, OW, C) = dL/dout; x (N, H, W, C), the forward's input.
    Returns: dx (N, H, W, C).
    Math: dx[n, 2p + i, 2q + j, c] = dout[n, p, q, c] for the ONE winner (i, j) of window (p, q), else 0.
      The winner is the maximum of the window. Ties (several equal maxima): the FIRST in row-major order
      (top-left, top-right, bottom-left, bottom-right) takes all of dout, the others get 0 (as minarn.MaxPooling2D).
      The dropped last row/column (odd H or W) gets 0.
    Hint: lay the 4 values of each window out in row-major order, shape (N, OH, OW, C, 4); np.argmax returns
      the first of equal maxima; np.eye(4)[argmax] is its one-hot.
    """
    raise NotImplementedError("maxpool_backward: write this function (see lesson 04)")
