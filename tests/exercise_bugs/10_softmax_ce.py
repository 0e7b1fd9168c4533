"""Planted bugs for lesson 10's exercises: each must fail its grader with a message that points at it."""

import numpy as np

BUGS = []  # (function name, short description, buggy function, substring the failure message must contain)


def softmax_no_max_subtraction(z):
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


BUGS.append(("softmax", "no max subtraction (overflows at 1000)", softmax_no_max_subtraction,
             "subtract each row's maximum"))


def softmax_wrong_axis(z):
    e = np.exp(z - z.max(axis=0))
    return e / e.sum(axis=0)


BUGS.append(("softmax", "normalizes over the batch (axis 0)", softmax_wrong_axis, "normalize over each row"))


def softmax_global_max(z):
    e = np.exp(z - z.max())
    return e / e.sum(axis=1, keepdims=True)


BUGS.append(("softmax", "subtracts the batch's maximum, not each row's", softmax_global_max, "each ROW's maximum"))


def _log_softmax(z):
    shifted = z - z.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def cross_entropy_sum(z, y):
    return float(-np.sum(y * _log_softmax(z)))


BUGS.append(("cross_entropy", "sums over the batch instead of the mean", cross_entropy_sum, "divide by N"))


def cross_entropy_log_of_p(z, y):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    p = e / e.sum(axis=1, keepdims=True)
    return float(-np.sum(y * np.log(p)) / len(z))  # ln of a p that rounded to 0 is -inf


BUGS.append(("cross_entropy", "ln(softmax(z)) instead of a log-softmax (inf at +-1000)", cross_entropy_log_of_p,
             "log-softmax"))


def cross_entropy_per_image(z, y):
    return -np.sum(y * _log_softmax(z), axis=1)


BUGS.append(("cross_entropy", "returns one loss per image", cross_entropy_per_image, "averages them over the batch"))


def backward_no_division_by_n(z, y):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True) - y


BUGS.append(("softmax_cross_entropy_backward", "p - y without the / N", backward_no_division_by_n, "divide by N"))


def backward_wrong_sign(z, y):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return (y - e / e.sum(axis=1, keepdims=True)) / len(z)


BUGS.append(("softmax_cross_entropy_backward", "y - p instead of p - y", backward_wrong_sign, "the sign"))
