"""Lesson 11 exercises: one step of Adamax (paper Eq. 3-6), the paper's optimizer, and one step of Adam.

Fill in the two functions, then grade them:  python -m minarn.exercises check 11_optimizers.py
Lesson: lessons/11_optimizers.py (section 1).
"""

import numpy as np


def adamax_step(param, grad, m, u, t, lr=0.001, beta1=0.9, beta2=0.999, eps=1e-7):
    """One Adamax step (paper Eq. 3-6); returns the tuple (param, m, u) after the step.

    param, grad, m, u: float arrays of one shape; m and u are the optimizer's state, zeros before the first step.
    t: the step number, 1 for the first step.
    lr, beta1, beta2, eps: the learning rate and the decay rates (paper: 0.001, 0.9, 0.999, 1e-7).

        m_t = beta1 m_{t-1} + (1 - beta1) g_t           (Eq. 3)  running mean of the gradient
        m_hat = m_t / (1 - beta1^t)                      (Eq. 4)  bias correction: m started at 0
        u_t = max(beta2 u_{t-1}, |g_t|, eps)             (Eq. 5)  decaying maximum of |g|, element by element
        param_{t+1} = param_t - lr m_hat / u_t           (Eq. 6)

    Checks you can make: the first step is exactly -lr * sign(g) wherever |g| > eps; multiplying every gradient
    by 1000 (with eps = 0) gives the same steps. Return new arrays or update the given ones in place: either works.
    """
    raise NotImplementedError("adamax_step: write this function (see lesson 11)")


def adam_step(param, grad, m, v, t, lr=0.001, beta1=0.9, beta2=0.999, eps=1e-7):
    """One Adam step (Kingma & Ba 2015, Algorithm 1); returns the tuple (param, m, v) after the step.

    param, grad, m, v: float arrays of one shape; m, v zeros before the first step; t = 1 for the first step.

        m_t = beta1 m_{t-1} + (1 - beta1) g_t            running mean of the gradient
        v_t = beta2 v_{t-1} + (1 - beta2) g_t^2          running mean of its square
        param_{t+1} = param_t - lr m_hat / (sqrt(v_hat) + eps)
    with the bias corrections m_hat = m_t / (1 - beta1^t) and v_hat = v_t / (1 - beta2^t).

    minarn (like Keras) writes the last line as param - alpha_t m_t / (sqrt(v_t) + eps) with
    alpha_t = lr sqrt(1 - beta2^t) / (1 - beta1^t); the two differ only in where eps sits, and the grader
    accepts either.
    """
    raise NotImplementedError("adam_step: write this function (see lesson 11)")
