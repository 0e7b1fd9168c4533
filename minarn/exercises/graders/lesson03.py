"""Graders of lesson 03's exercises (the convolution's backward pass: col2im, conv2d_backward).

The truth is minarn's own code: ``minarn.kernels.numpy_ref.col2im`` and ``minarn.Conv2D.backward`` (float64,
NumPy kernels), a float64 numeric gradient of minarn's forward, and the adjointness of col2im and im2col.
"""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st

from minarn import kernels
from minarn.exercises.graders.lesson02 import SEEDS, conv_cases, conv_reference
from minarn.exercises.grading import Failure, compare, exercise, falsify, numeric_gradient
from minarn.kernels import numpy_ref
from minarn.layers.conv import Conv2D, same_padding


def _col2im_cases():
    """(dcols, x_shape, kh, kw, stride), including strides that leave a last row or column uncovered."""

    @st.composite
    def cases(draw):
        kh, kw, stride = draw(st.integers(1, 3)), draw(st.integers(1, 3)), draw(st.integers(1, 3))
        n, c = draw(st.integers(1, 2)), draw(st.integers(1, 3))
        h, w = kh + draw(st.integers(0, 4)), kw + draw(st.integers(0, 4))
        oh, ow = (h - kh) // stride + 1, (w - kw) // stride + 1
        dcols = np.random.default_rng(draw(SEEDS)).standard_normal((n * oh * ow, kh * kw * c))
        return dcols, (n, h, w, c), kh, kw, stride

    return cases()


def _col2im_hint(dcols, x_shape, kh, kw, stride, got) -> str:
    """Name the likely bug: assigning instead of adding shows up only where patches overlap."""
    got = np.asarray(got, dtype=np.float64)
    if got.shape != tuple(x_shape):
        return "dx has the input's shape x_shape = (N, H, W, C)"
    expected = numpy_ref.col2im(dcols, x_shape, kh, kw, stride)
    wrong = np.abs(got - expected) > 1e-10
    cover = numpy_ref.col2im(np.ones_like(dcols), x_shape, kh, kw, stride)
    if wrong.any() and np.all(cover[wrong] > 1):
        return ("only pixels covered by several patches are wrong: they must ADD the gradients of all their "
                "patches (+=, not =)")
    if wrong.any() and np.all(cover[wrong] == 0):
        return "pixels that no patch covers (a last row/column the stride skips) must get 0"
    return ("dx[n, p * stride + i, q * stride + j, c] += dcols[(n, p, q), (i, j, c)], columns in im2col's "
            "(i, j, c) order")


@exercise("03_backward_gradcheck", "col2im")
def grade_col2im(fn) -> None:
    """col2im(dcols, x_shape, kh, kw, stride) -> dx (N, H, W, C), the adjoint of im2col (overlaps added)."""

    def check(case) -> None:
        dcols, x_shape, kh, kw, stride = case
        got = fn(dcols.copy(), tuple(x_shape), kh, kw, stride)
        text = f"dcols of shape {dcols.shape}, x_shape={x_shape}, kh={kh}, kw={kw}, stride={stride}"
        hint = _col2im_hint(dcols, x_shape, kh, kw, stride, got) if got is not None else ""
        compare("dx", numpy_ref.col2im(dcols, x_shape, kh, kw, stride), got, atol=1e-10, case=text, hint=hint)
        x = np.random.default_rng(1).standard_normal(x_shape)  # adjointness, the property the lesson teaches
        lhs, rhs = float(np.sum(numpy_ref.im2col(x, kh, kw, stride) * dcols)), float(np.sum(x * np.asarray(got)))
        if abs(lhs - rhs) > 1e-9 * max(1.0, abs(lhs)):
            raise Failure(f"col2im is not the adjoint of im2col: <im2col(x), D> = {lhs:.6g} but <x, col2im(D)> = "
                          f"{rhs:.6g}\n    input: {text}")

    ones = np.ones((16, 9))  # the lesson's coverage picture: 6x6, 3x3, stride 1
    check((ones, (1, 6, 6, 1), 3, 3, 1))
    falsify(check, _col2im_cases())


def _conv_backward_reference(dout, x, kernel, stride, padding):
    """(dx, dkernel, dbias) of minarn.Conv2D (no activation), float64, NumPy kernels."""
    kh, kw, C, F = kernel.shape
    layer = Conv2D(C, F, (kh, kw), strides=stride, padding=padding, dtype=np.float64)
    layer.params["kernel"][...] = kernel
    with kernels.backend("numpy"):
        layer.forward(x)
        dx = layer.backward(dout)
    return dx, layer.grads["kernel"], layer.grads["bias"]


def _unpack(got, text: str):
    try:
        dx, dkernel, dbias = got
    except (TypeError, ValueError):
        raise Failure(f"conv2d_backward must return a tuple (dx, dkernel, dbias), got {type(got).__name__}"
                      f"\n    input: {text}") from None
    return dx, dkernel, dbias


def _dkernel_hint(dout, x, kernel, stride, padding, got) -> str:
    kh, kw, C, F = kernel.shape
    pads = ((0, 0), (0, 0)) if padding == "valid" else (same_padding(x.shape[1], kh, stride),
                                                         same_padding(x.shape[2], kw, stride))
    cols = numpy_ref.im2col(np.pad(x, ((0, 0), *pads, (0, 0))), kh, kw, stride)
    dz = dout.reshape(-1, F)
    got = np.asarray(got, dtype=np.float64)
    if got.size == kernel.size and np.allclose(got.ravel(), (dz.T @ cols).ravel()):
        return ("a missing transpose: dkernel = cols^T @ dz is (kh*kw*C, F); dz^T @ cols is its transpose "
                "(F, kh*kw*C), and reshaping that to (kh, kw, C, F) scrambles the entries")
    return "dkernel = (cols^T @ dz).reshape(kh, kw, C, F): transpose cols, not dz, and reshape without transposing"


def _dx_hint(x, kernel, stride, padding, got) -> str:
    kh, kw, _, _ = kernel.shape
    N, H, W, C = x.shape
    shape = np.shape(got)
    if padding == "same":
        (top, bottom), (left, right) = same_padding(H, kh, stride), same_padding(W, kw, stride)
        if shape == (N, H + top + bottom, W + left + right, C) and (top or bottom or left or right):
            return ("dx has the padded shape: crop the padding off, dx_pad[:, top : top + H, left : left + W] "
                    "(the padded zeros are constants, their gradient goes nowhere)")
    return ("dx = col2im(dz @ K2^T, x_pad.shape, kh, kw, stride), cropped to x's shape for 'same'; col2im must add "
            "the gradients of overlapping patches")


@exercise("03_backward_gradcheck", "conv2d_backward")
def grade_conv2d_backward(fn) -> None:
    """conv2d_backward(dout, x, kernel, stride, padding) -> (dx, dkernel, dbias), as minarn.Conv2D.backward."""

    def check(case, numeric: bool = False) -> None:
        x, kernel, _, stride, padding = case
        shape = conv_reference(x, kernel, np.zeros(kernel.shape[-1]), stride, padding).shape
        dout = np.random.default_rng(2).standard_normal(shape)
        text = f"x of shape {x.shape}, kernel {kernel.shape}, stride={stride}, padding={padding!r}"
        dx, dkernel, dbias = _unpack(fn(dout.copy(), x.copy(), kernel.copy(), stride, padding), text)
        e_dx, e_dkernel, e_dbias = _conv_backward_reference(dout, x, kernel, stride, padding)
        if numeric:  # the truth, independently of minarn's backward: central differences of minarn's forward
            bias = np.zeros(kernel.shape[-1])
            e_dx = numeric_gradient(lambda v: np.sum(conv_reference(v, kernel, bias, stride, padding) * dout), x)
            atol = 1e-7
        else:
            atol = 1e-10
        compare("dbias", e_dbias, dbias, atol=atol, case=text,
                hint="dbias = dout summed over every image and position (axes N, OH, OW): shape (F,)")
        compare("dkernel", e_dkernel, dkernel, atol=atol, case=text,
                hint=_dkernel_hint(dout, x, kernel, stride, padding, dkernel) if dkernel is not None else "")
        compare("dx", e_dx, dx, atol=atol, case=text, hint=_dx_hint(x, kernel, stride, padding, dx))

    rng = np.random.default_rng(0)
    check((rng.standard_normal((1, 5, 4, 2)), rng.standard_normal((3, 3, 2, 3)), None, 1, "same"), numeric=True)
    check((rng.standard_normal((2, 7, 6, 3)), rng.standard_normal((3, 3, 3, 4)), None, 2, "same"))
    falsify(check, conv_cases())
