"""Graders of lesson 04's exercises (2x2 max-pooling: maxpool_forward, maxpool_backward with the tie rule).

The truth is minarn's own ``minarn.kernels.numpy_ref.maxpool_forward`` / ``maxpool_backward`` (pool 2, stride 2),
and the properties the lesson teaches: exactly one gradient entry per window, at the first maximum on ties;
nothing for the dropped last row/column. Values are drawn from a few integers, so ties are frequent.
"""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st

from minarn.exercises.graders.lesson02 import SEEDS
from minarn.exercises.grading import compare, exercise, falsify, numeric_gradient
from minarn.kernels import numpy_ref


def _pool_cases(ties: bool):
    """x (N, H, W, C) with H, W >= 2 (odd sizes included); with ``ties`` values from {0, 1, 2}."""

    @st.composite
    def cases(draw):
        shape = (draw(st.integers(1, 2)), draw(st.integers(2, 7)), draw(st.integers(2, 7)), draw(st.integers(1, 3)))
        rng = np.random.default_rng(draw(SEEDS))
        x = rng.integers(0, 3, size=shape) * 1.0 if ties else rng.standard_normal(shape)
        return x

    return cases()


def _forward_hint(x, got) -> str:
    N, H, W, C = x.shape
    if np.shape(got) != (N, H // 2, W // 2, C):
        return ("2x2 windows moved by 2, 'valid': OH = H // 2, OW = W // 2 (an odd last row/column belongs to no "
                "window and is dropped)")
    return "out[n, p, q, c] = max(x[n, 2p:2p+2, 2q:2q+2, c]): each window is 2 consecutive rows x 2 columns"


@exercise("04_maxpool", "maxpool_forward")
def grade_maxpool_forward(fn) -> None:
    """maxpool_forward(x) -> out (N, H // 2, W // 2, C), the max of every 2x2 window."""

    def check(x) -> None:
        got = fn(x.copy())
        compare("out", numpy_ref.maxpool_forward(x, 2, 2)[0], got, atol=0.0, case=f"x of shape {x.shape}",
                hint=_forward_hint(x, got) if got is not None else "")

    rng = np.random.default_rng(0)
    check(rng.standard_normal((2, 7, 5, 3)))
    falsify(check, _pool_cases(ties=False))


def _backward_hint(dout, x, got) -> str:
    """Look at each window: how many entries got a gradient, and which one."""
    N, H, W, C = x.shape
    OH, OW = H // 2, W // 2
    got = np.asarray(got, dtype=np.float64)
    if got.shape != x.shape:
        return "dx has the input's shape (N, H, W, C)"
    if np.any(got[:, 2 * OH :] != 0) or np.any(got[:, :, 2 * OW :] != 0):
        return "the dropped last row/column (odd H or W) is in no window: its gradient is 0"
    windows = got[:, : 2 * OH, : 2 * OW].reshape(N, OH, 2, OW, 2, C).transpose(0, 1, 3, 5, 2, 4).reshape(-1, 4)
    values = x[:, : 2 * OH, : 2 * OW].reshape(N, OH, 2, OW, 2, C).transpose(0, 1, 3, 5, 2, 4).reshape(-1, 4)
    counts = (windows != 0).sum(axis=1)
    if np.any(counts > 1):
        return ("exactly one input per window gets dout: on a tie (several equal maxima) only the FIRST maximum in "
                "row-major order (top-left first) does, the others get 0")
    is_max = values == values.max(axis=1, keepdims=True)
    last = 3 - np.argmax(is_max[:, ::-1], axis=1)
    picked = np.argmax(windows != 0, axis=1)
    tied = is_max.sum(axis=1) > 1
    if np.any(tied & (counts == 1) & (picked == last)) and not np.any(tied & (counts == 1) & (picked != last)):
        return ("on a tie the gradient goes to the first maximum in row-major order (top-left first), "
                "not the last one")
    return ("dx[n, 2p + i, 2q + j, c] = dout[n, p, q, c] at the window's (first) maximum (i, j), 0 elsewhere; "
            "exactly one entry per window")


@exercise("04_maxpool", "maxpool_backward")
def grade_maxpool_backward(fn) -> None:
    """maxpool_backward(dout, x) -> dx: all of each window's dout at its first maximum (row-major), 0 elsewhere."""

    def check(x, numeric: bool = False) -> None:
        out, argmax = numpy_ref.maxpool_forward(x, 2, 2)
        dout = np.random.default_rng(3).uniform(0.5, 2.0, out.shape)  # never 0: every routed entry is visible
        got = fn(dout.copy(), x.copy())
        if numeric:  # the truth without minarn: central differences of the window maximum (no ties here)
            expected = numeric_gradient(lambda v: np.sum(numpy_ref.maxpool_forward(v, 2, 2)[0] * dout), x)
            atol = 1e-7
        else:
            expected, atol = numpy_ref.maxpool_backward(dout, argmax, x.shape, 2, 2), 1e-12
        text = f"x of shape {x.shape}" + (f" = {x[..., 0].tolist()} (channel 0)" if x[0, ..., 0].size <= 16 else "")
        compare("dx", expected, got, atol=atol, case=text, hint=_backward_hint(dout, x, got) if got is not None else "")

    rng = np.random.default_rng(0)
    check(rng.standard_normal((1, 5, 4, 2)), numeric=True)
    check(np.ones((1, 2, 2, 1)))  # the lesson's flat window: all of dout to the top-left entry
    falsify(check, _pool_cases(ties=True))
