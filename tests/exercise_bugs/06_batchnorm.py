"""Planted bugs for lesson 06's exercises: each must fail its grader with a message that points at it."""

import numpy as np

BUGS = []  # (function name, short description, buggy function, substring the failure message must contain)


def batchnorm_forward_train_per_pixel(x, gamma, beta, eps=1e-3):
    mean, var = x.mean(axis=0), x.var(axis=0)  # per pixel and channel (DLFS' conv batch norm), not per channel
    return gamma * (x - mean) / np.sqrt(var + eps) + beta, mean, var


BUGS.append(("batchnorm_forward_train", "statistics per pixel (axis 0 only)", batchnorm_forward_train_per_pixel,
             "per pixel and channel"))


def batchnorm_forward_train_over_channels(x, gamma, beta, eps=1e-3):
    mean = x.mean(axis=-1, keepdims=True)  # over the channels: one mean per pixel
    var = x.var(axis=-1, keepdims=True)
    return gamma * (x - mean) / np.sqrt(var + eps) + beta, mean, var


BUGS.append(("batchnorm_forward_train", "statistics over the channel axis", batchnorm_forward_train_over_channels,
             "over the channels"))


def batchnorm_forward_train_unbiased(x, gamma, beta, eps=1e-3):
    mean, var = x.mean(axis=(0, 1, 2)), x.var(axis=(0, 1, 2), ddof=1)  # unbiased variance
    return gamma * (x - mean) / np.sqrt(var + eps) + beta, mean, var


BUGS.append(("batchnorm_forward_train", "unbiased variance (m - 1)", batchnorm_forward_train_unbiased, "biased"))


def batchnorm_forward_inference_batch_stats(x, gamma, beta, moving_mean, moving_var, eps=1e-3):
    mean, var = x.mean(axis=(0, 1, 2)), x.var(axis=(0, 1, 2))  # the batch's statistics, as in training
    return gamma * (x - mean) / np.sqrt(var + eps) + beta


BUGS.append(("batchnorm_forward_inference", "batch statistics in inference", batchnorm_forward_inference_batch_stats,
             "moving_mean and moving_var"))


def _stats(x, eps):
    axes = tuple(range(x.ndim - 1))
    mean, var = x.mean(axis=axes), x.var(axis=axes)
    inv_std = 1 / np.sqrt(var + eps)
    return axes, (x - mean) * inv_std, inv_std


def batchnorm_backward_no_mean_term(dout, x, gamma, eps=1e-3):
    axes, x_hat, inv_std = _stats(x, eps)
    g = dout * gamma
    dx = (g - x_hat * (g * x_hat).mean(axis=axes)) * inv_std  # forgot - mean(g)
    return dx, (dout * x_hat).sum(axis=axes), dout.sum(axis=axes)


BUGS.append(("batchnorm_backward", "missing the - mean(g) term", batchnorm_backward_no_mean_term,
             "missing the - mean(g) term"))


def batchnorm_backward_no_variance_term(dout, x, gamma, eps=1e-3):
    axes, x_hat, inv_std = _stats(x, eps)
    g = dout * gamma
    dx = (g - g.mean(axis=axes)) * inv_std  # forgot - x_hat * mean(g * x_hat)
    return dx, (dout * x_hat).sum(axis=axes), dout.sum(axis=axes)


BUGS.append(("batchnorm_backward", "missing the variance term", batchnorm_backward_no_variance_term,
             "missing the - x_hat * mean(g * x_hat) term"))


def batchnorm_backward_constant_statistics(dout, x, gamma, eps=1e-3):
    axes, x_hat, inv_std = _stats(x, eps)
    return dout * gamma * inv_std, (dout * x_hat).sum(axis=axes), dout.sum(axis=axes)  # the inference backward


BUGS.append(("batchnorm_backward", "mean and var treated as constants", batchnorm_backward_constant_statistics,
             "constants"))


def update_moving_swapped(moving, batch_stat, momentum=0.99):
    return (1 - momentum) * moving + momentum * batch_stat  # PyTorch's convention with Keras' number


BUGS.append(("update_moving", "momentum on the batch statistic", update_moving_swapped, "OLD"))
