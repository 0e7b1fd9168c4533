"""Lesson 10 exercises: softmax, categorical cross-entropy (paper Eq. 7) and its fused gradient (p - y) / N.

Fill in the three functions, then grade them:  python -m minarn.exercises check 10_softmax_ce.py
Lesson: lessons/10_softmax_ce.py (sections 1-3).
"""

import numpy as np


def softmax(z):
    """Class probabilities from scores: p[n, k] = exp(z[n, k] - m[n]) / sum_j exp(z[n, j] - m[n]).

    z: (N, K) scores (logits), one row per image. Returns p (N, K); every row sums to 1.
    m[n] = max_j z[n, j], the row's maximum: subtracting it changes nothing mathematically, but keeps exp from
    overflowing (exp(1000) = inf in float64). Hint: `keepdims=True` keeps (N, 1) shapes that broadcast.
    """
    raise NotImplementedError("softmax: write this function (see lesson 10)")


def cross_entropy(z, y):
    """Mean categorical cross-entropy (paper Eq. 7) of softmax(z) against the one-hot labels y: a float.

    z: (N, K) scores; y: (N, K) one-hot labels (y[n, k] = 1 for the true class k of image n).
    L = -(1/N) sum_n sum_k y[n, k] ln p[n, k],  p = softmax(z)  (the mean over the batch).
    Compute ln p as a log-softmax, ln p[n, k] = z[n, k] - m[n] - ln sum_j exp(z[n, j] - m[n]): taking the log of
    a probability that rounded to 0 gives -inf (scores of +-1000 must give a finite loss, here 2000).
    """
    raise NotImplementedError("cross_entropy: write this function (see lesson 10)")


def softmax_cross_entropy_backward(z, y):
    """dL/dz for L = cross_entropy(z, y): (p - y) / N with p = softmax(z); shape (N, K).

    Softmax and cross-entropy differentiated together: every row of p - y sums to 0; the true class is pushed
    up by 1 - p, every other class down by its own probability. The 1 / N comes from the mean over the batch.
    """
    raise NotImplementedError("softmax_cross_entropy_backward: write this function (see lesson 10)")
