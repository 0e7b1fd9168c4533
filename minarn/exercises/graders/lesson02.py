"""Graders of lesson 02's exercises (the convolution forward pass: same_padding, im2col, conv2d_forward).

The truth is minarn's own code: ``minarn.layers.conv.same_padding``, ``minarn.kernels.numpy_ref.im2col`` and
``minarn.Conv2D`` (float64, NumPy kernels). Inputs are float64 with values from a seeded generator; hypothesis
draws (and shrinks) the shapes, strides and seeds.
"""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st

from minarn import kernels
from minarn.exercises.grading import Failure, compare, exercise, falsify
from minarn.kernels import numpy_ref
from minarn.layers.conv import Conv2D, same_padding

SEEDS = st.integers(0, 2**16)


def _as_pair(got, what: str, case: str) -> tuple[int, int]:
    try:
        before, after = got
        pair = (int(before), int(after))
    except (TypeError, ValueError):
        raise Failure(f"{what}: expected a pair of ints (before, after), got {got!r}\n    input: {case}") from None
    if pair != (before, after):
        raise Failure(f"{what}: expected whole numbers, got {got!r}\n    input: {case}")
    return pair


@exercise("02_im2col_conv", "same_padding")
def grade_same_padding(fn) -> None:
    """same_padding(size, k, stride) -> (before, after), Keras' split (the extra zero at the end)."""

    def check(case) -> None:
        size, k, stride = case
        text = f"size={size}, k={k}, stride={stride}"
        expected = same_padding(size, k, stride)
        got = _as_pair(fn(size, k, stride), f"same_padding({size}, {k}, {stride})", text)
        if got == expected:
            return
        if sum(got) == sum(expected):
            hint = ("the total is right but not its split: Keras puts the extra zero of an odd total at the END, "
                    "(total // 2, total - total // 2)")
        else:
            hint = ("the total must make ceil(size / stride) outputs: total = max((ceil(size / stride) - 1) * "
                    "stride + k - size, 0)")
        raise Failure(f"same_padding({size}, {k}, {stride}): expected {expected}, got {got}\n    hint: {hint}")

    for case in ((5, 3, 1), (7, 3, 2), (6, 3, 2), (64, 3, 1), (4, 1, 1)):
        check(case)
    falsify(check, st.tuples(st.integers(1, 40), st.integers(1, 7), st.integers(1, 4)))


def _im2col_cases():
    """(x, kh, kw, stride) with x (N, H, W, C) at least one window big."""

    @st.composite
    def cases(draw):
        kh, kw, stride = draw(st.integers(1, 3)), draw(st.integers(1, 3)), draw(st.integers(1, 3))
        n, c = draw(st.integers(1, 2)), draw(st.integers(1, 3))
        h, w = kh + draw(st.integers(0, 4)), kw + draw(st.integers(0, 4))
        x = np.random.default_rng(draw(SEEDS)).standard_normal((n, h, w, c))
        return x, kh, kw, stride

    return cases()


def _im2col_hint(x, kh, kw, stride, got) -> str:
    """What a wrong cols matrix most likely gets wrong."""
    N, H, W, C = x.shape
    OH, OW = (H - kh) // stride + 1, (W - kw) // stride + 1
    got = np.asarray(got)
    if got.shape != (N * OH * OW, kh * kw * C):
        if got.shape[:1] == (N * (H - kh + 1) * (W - kw + 1),) and stride > 1:
            return "the stride is ignored: keep every stride-th window, OH = (H - kh) // stride + 1"
        return (f"cols has one row per window (N * OH * OW = {N}*{OH}*{OW}) and one column per kernel entry "
                f"(kh * kw * C = {kh}*{kw}*{C})")
    patches = numpy_ref.im2col(x, kh, kw, stride).reshape(-1, kh, kw, C)
    if np.allclose(got, patches.transpose(0, 3, 1, 2).reshape(got.shape)):
        return ("columns come out in (c, i, j) order: they must be in (i, j, c) order (kernel row, kernel column, "
                "channel), the order of kernel.reshape(kh * kw * C, F)")
    return "cols[(n, p, q), (i, j, c)] = x[n, p * stride + i, q * stride + j, c], columns in (i, j, c) order"


@exercise("02_im2col_conv", "im2col")
def grade_im2col(fn) -> None:
    """im2col(x, kh, kw, stride) -> cols (N*OH*OW, kh*kw*C), rows (n, p, q), columns (i, j, c)."""

    def check(case) -> None:
        x, kh, kw, stride = case
        expected = numpy_ref.im2col(x, kh, kw, stride)
        got = fn(x.copy(), kh, kw, stride)
        compare("cols", expected, got, atol=1e-12, hint=_im2col_hint(x, kh, kw, stride, got) if got is not None
                else "", case=f"x of shape {x.shape}, kh={kh}, kw={kw}, stride={stride}")

    tiny = np.arange(20, dtype=np.float64).reshape(1, 4, 5, 1)
    check((tiny, 3, 3, 1))
    falsify(check, _im2col_cases())


def conv_reference(x, kernel, bias, stride, padding) -> np.ndarray:
    """minarn.Conv2D's forward in float64 with the NumPy kernels."""
    kh, kw, C, F = kernel.shape
    layer = Conv2D(C, F, (kh, kw), strides=stride, padding=padding, dtype=np.float64)
    layer.params["kernel"][...] = kernel
    layer.params["bias"][...] = bias
    with kernels.backend("numpy"):
        return layer.forward(x)


def conv_cases(paddings=("valid", "same")):
    """(x, kernel, bias, stride, padding) with small random float64 arrays."""

    @st.composite
    def cases(draw):
        kh, kw, stride = draw(st.integers(1, 3)), draw(st.integers(1, 3)), draw(st.integers(1, 2))
        n, c, f = draw(st.integers(1, 2)), draw(st.integers(1, 3)), draw(st.integers(1, 3))
        h, w = kh + draw(st.integers(0, 4)), kw + draw(st.integers(0, 4))
        padding = draw(st.sampled_from(paddings))
        rng = np.random.default_rng(draw(SEEDS))
        return (rng.standard_normal((n, h, w, c)), rng.standard_normal((kh, kw, c, f)), rng.standard_normal(f),
                stride, padding)

    return cases()


def _conv_forward_hint(x, kernel, bias, stride, padding, got) -> str:
    N, H, W, C = x.shape
    kh, kw, _, F = kernel.shape
    got = np.asarray(got)
    valid_shape = (N, (H - kh) // stride + 1, (W - kw) // stride + 1, F)
    if padding == "same" and got.shape == valid_shape and got.shape != (N, -(-H // stride), -(-W // stride), F):
        return ("padding='same' was not applied: pad x with zeros first (rows same_padding(H, kh, stride), columns "
                "same_padding(W, kw, stride)), so that the output has ceil(H / stride) x ceil(W / stride) positions")
    expected = conv_reference(x, kernel, bias, stride, padding)
    if got.shape != expected.shape:
        return f"out has shape (N, OH, OW, F) = {expected.shape}"
    if np.allclose(got + bias, expected, atol=1e-9):
        return "the bias is missing: out = cols @ kernel.reshape(kh * kw * C, F) + bias"
    if padding == "same":
        rows, columns = same_padding(H, kh, stride), same_padding(W, kw, stride)
        at_start = np.pad(x, ((0, 0), rows[::-1], columns[::-1], (0, 0)))  # the extra zero before, not after
        if np.allclose(got, conv_reference(at_start, kernel, bias, stride, "valid")):
            return "Keras' 'same' puts the extra zero of an odd padding at the END (bottom, right)"
    return ("out = im2col(x_pad) @ kernel.reshape(kh * kw * C, F) + bias: the (i, j, c) columns of im2col must meet "
            "the rows of kernel.reshape in the same order (no transpose of the kernel)")


@exercise("02_im2col_conv", "conv2d_forward")
def grade_conv2d_forward(fn) -> None:
    """conv2d_forward(x, kernel, bias, stride, padding) -> out (N, OH, OW, F), as minarn.Conv2D."""

    def check(case) -> None:
        x, kernel, bias, stride, padding = case
        expected = conv_reference(x, kernel, bias, stride, padding)
        got = fn(x.copy(), kernel.copy(), bias.copy(), stride, padding)
        hint = _conv_forward_hint(x, kernel, bias, stride, padding, got) if got is not None else ""
        compare("out", expected, got, atol=1e-10, hint=hint,
                case=f"x of shape {x.shape}, kernel {kernel.shape}, stride={stride}, padding={padding!r}")

    rng = np.random.default_rng(0)
    for padding, stride, shape in (("valid", 1, (2, 7, 6, 3)), ("same", 1, (2, 7, 6, 3)), ("same", 2, (1, 7, 6, 2))):
        c = shape[-1]
        check((rng.standard_normal(shape), rng.standard_normal((3, 3, c, 4)), rng.standard_normal(4), stride,
               padding))
    falsify(check, conv_cases())
