"""Lesson 08 exercises: the residual block's forward and backward pass, y = ReLU(F(x) + S(x)).

Fill in the two functions, then grade them:  python -m minarn.exercises check 08_residual.py
Lesson: lessons/08_residual.py (the block and its backward pass; section 3 uses them on the paper's block).
"""

import numpy as np


def residual_forward(x, f, skip=None):
    """The residual block's output y = ReLU(F(x) + S(x)).

    x: the block's input, e.g. (N, H, W, C).
    f: a function, f(x) = F(x), the main path (in the paper: conv-BN-conv-BN-attention), same shape as S(x).
    skip: a function, skip(x) = S(x), the skip path (in the paper a 1x1 convolution when the channels change);
        None means the identity skip, S(x) = x.
    Returns y, the shape of F(x).
    """
    raise NotImplementedError("residual_forward: write this function (see lesson 08)")


def residual_backward(dout, x, y, f_vjp, skip_vjp=None):
    """dL/dx for y = ReLU(F(x) + S(x)), given the upstream gradient dout = dL/dy.

    dout, y: the shape of F(x); y is what residual_forward returned for this x.
    x: the block's input.
    f_vjp: a function, f_vjp(x, g) = J_F(x)^T g, the main path's backward pass: the gradient at x of
        sum(F(x) * g). (For minarn layers it is their backward, which uses what their forward saw.)
    skip_vjp: a function, skip_vjp(x, g) = J_S(x)^T g, the skip path's backward; None for the identity skip.
    Returns dx, the shape of x.

    Math: g = dL/d(F(x) + S(x)) = dout * [y > 0] (the final ReLU's derivative; y > 0 exactly where
    F(x) + S(x) > 0). x feeds both paths (fan-out), so their gradients add up:
        dx = J_F(x)^T g + J_S(x)^T g       (= J_F(x)^T g + g for the identity skip: the "identity path").
    """
    raise NotImplementedError("residual_backward: write this function (see lesson 08)")
