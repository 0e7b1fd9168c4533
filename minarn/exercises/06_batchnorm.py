"""Exercises of lesson 6: batch normalization per channel, training and inference, backward, moving averages.

Fill in the four functions below (``lessons/06_batchnorm.py`` explains every step), then grade them with
``python -m minarn.exercises check 06_batchnorm.py``. float64, channels-last: x is (N, H, W, C) (or any
(N, ..., C)), and every statistic is per channel, taken over EVERY axis but the last (N, H, W). Keras' (and
minarn's) defaults: eps = 1e-3, momentum = 0.99. Return new arrays; leave the inputs unchanged.
"""

import numpy as np


def batchnorm_forward_train(x, gamma, beta, eps=1e-3):
    """Training-mode batch normalization with the statistics of this batch.

    Args: x (N, H, W, C); gamma, beta (C,); eps.
    Returns: (out, mean, var): out (N, H, W, C); mean, var (C,), the batch statistics (needed for the moving
      averages, see update_moving).
    Math: per channel c, over all images and pixels (axes (0, 1, 2), i.e. every axis but the last):
      mean_c = mean(x[..., c]),  var_c = mean((x[..., c] - mean_c)^2)   (biased: divide by m, not m - 1),
      x_hat = (x - mean_c) / sqrt(var_c + eps),  out = gamma_c * x_hat + beta_c.
    Hint: axes = tuple(range(x.ndim - 1)); x.mean(axis=axes) has shape (C,) and broadcasts against x.
    """
    raise NotImplementedError("batchnorm_forward_train: write this function (see lesson 06)")


def batchnorm_forward_inference(x, gamma, beta, moving_mean, moving_var, eps=1e-3):
    """Inference-mode batch normalization: the moving statistics replace the batch's.

    Args: x (N, H, W, C); gamma, beta, moving_mean, moving_var (C,); eps.
    Returns: out (N, H, W, C) = gamma * (x - moving_mean) / sqrt(moving_var + eps) + beta.
    So an image's output does not depend on the other images of the batch.
    """
    raise NotImplementedError("batchnorm_forward_inference: write this function (see lesson 06)")


def batchnorm_backward(dout, x, gamma, eps=1e-3):
    """Backward pass of batchnorm_forward_train (training mode: the batch statistics depend on x).

    Args: dout (N, H, W, C) = dL/dout; x (N, H, W, C) the forward's input; gamma (C,); eps.
    Returns: (dx, dgamma, dbeta) with shapes (N, H, W, C), (C,), (C,).
    Math: recompute mean, var and x_hat from x as the forward did; with g = dout * gamma and means over the
      m = N*H*W values of each channel,
        dx     = (g - mean(g) - x_hat * mean(g * x_hat)) / sqrt(var + eps)
        dgamma = sum(dout * x_hat),   dbeta = sum(dout)      (sums over N, H, W).
      The two subtracted terms are how mean and var change with x; leaving either out is wrong. (With
      dout = ones dx is exactly 0: check your function with a random dout.)
    """
    raise NotImplementedError("batchnorm_backward: write this function (see lesson 06)")


def update_moving(moving, batch_stat, momentum=0.99):
    """One step of Keras' exponential moving average of a batch statistic.

    Args: moving (C,) the current moving mean (or variance); batch_stat (C,) this batch's mean (or biased
      variance); momentum (0.99 in Keras and minarn).
    Returns: the new moving value, momentum * moving + (1 - momentum) * batch_stat (a new array).
    The OLD value keeps the weight momentum: after t steps the start value (0 for the mean, 1 for the
    variance) still weighs momentum^t.
    """
    raise NotImplementedError("update_moving: write this function (see lesson 06)")
