"""Planted bugs for lesson 11's exercises: each must fail its grader with a message that points at it."""

import numpy as np

BUGS = []  # (function name, short description, buggy function, substring the failure message must contain)


def adamax_no_bias_correction(param, grad, m, u, t, lr=0.001, beta1=0.9, beta2=0.999, eps=1e-7):
    m = beta1 * m + (1 - beta1) * grad
    u = np.maximum(np.maximum(beta2 * u, np.abs(grad)), eps)
    return param - lr * m / u, m, u


BUGS.append(("adamax_step", "no bias correction (m instead of m_hat)", adamax_no_bias_correction,
             "the bias correction is missing"))


def adamax_no_abs(param, grad, m, u, t, lr=0.001, beta1=0.9, beta2=0.999, eps=1e-7):
    m = beta1 * m + (1 - beta1) * grad
    u = np.maximum(np.maximum(beta2 * u, grad), eps)  # |g| forgotten
    return param - lr * (m / (1 - beta1**t)) / u, m, u


BUGS.append(("adamax_step", "u = max(beta2 u, g, eps), abs missing", adamax_no_abs, "absolute value of g"))


def adamax_keras_epsilon(param, grad, m, u, t, lr=0.001, beta1=0.9, beta2=0.999, eps=1e-7):
    m = beta1 * m + (1 - beta1) * grad
    u = np.maximum(beta2 * u, np.abs(grad))
    return param - lr * (m / (1 - beta1**t)) / (u + eps), m, u


BUGS.append(("adamax_step", "eps added to the denominator (Keras' form), not inside the max", adamax_keras_epsilon,
             "eps goes inside the max"))


def adamax_returns_m_hat(param, grad, m, u, t, lr=0.001, beta1=0.9, beta2=0.999, eps=1e-7):
    m_hat = (beta1 * m + (1 - beta1) * grad) / (1 - beta1**t)
    u = np.maximum(np.maximum(beta2 * u, np.abs(grad)), eps)
    return param - lr * m_hat / u, m_hat, u


BUGS.append(("adamax_step", "keeps m_hat as the state instead of m", adamax_returns_m_hat, "not m_hat"))


def adam_no_bias_correction(param, grad, m, v, t, lr=0.001, beta1=0.9, beta2=0.999, eps=1e-7):
    m = beta1 * m + (1 - beta1) * grad
    v = beta2 * v + (1 - beta2) * grad**2
    return param - lr * m / (np.sqrt(v) + eps), m, v


BUGS.append(("adam_step", "no bias corrections", adam_no_bias_correction, "bias corrections are missing"))


def adam_v_of_abs_g(param, grad, m, v, t, lr=0.001, beta1=0.9, beta2=0.999, eps=1e-7):
    m = beta1 * m + (1 - beta1) * grad
    v = beta2 * v + (1 - beta2) * np.abs(grad)  # g, not g^2
    alpha = lr * np.sqrt(1 - beta2**t) / (1 - beta1**t)
    return param - alpha * m / (np.sqrt(v) + eps), m, v


BUGS.append(("adam_step", "v from |g| instead of g^2", adam_v_of_abs_g, "SQUARED gradient"))
