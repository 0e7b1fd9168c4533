"""Graders of lesson 08's exercises (the residual block, y = ReLU(F(x) + S(x))): against minarn's ResidualBlock,
numeric gradients, and main paths F given as functions (linear, tanh) with an identity or a projection skip."""

import itertools
from functools import partial

import numpy as np
from hypothesis import strategies as st

from minarn import kernels
from minarn.exercises.grading import (
    call_student,
    compare,
    describe,
    exercise,
    falsify,
    numeric_gradient,
    resembles,
)
from minarn.layers.residual import ResidualBlock

LESSON = "08_residual"


# Is a wrong answer what a known mistake gives (to name it in the hint)? At this lesson's tolerance.
_resembles = partial(resembles, atol=1e-9)


class Case:
    """x, dout and a block: F(x) = tanh(x @ A) + c (or x @ A + c), S(x) = x @ P (projection) or x (identity)."""

    def __init__(self, seed, n, h, w, c, k, projection, linear):
        rng = np.random.default_rng(seed)
        k = k if projection else c
        self.x = rng.standard_normal((n, h, w, c))
        self.A, self.bias = rng.standard_normal((c, k)), 0.5 * rng.standard_normal(k)
        self.P = rng.standard_normal((c, k)) if projection else None
        self.linear, self.dout = linear, rng.standard_normal((n, h, w, k))

    def f(self, x):
        z = x @ self.A + self.bias
        return z if self.linear else np.tanh(z)

    def f_vjp(self, x, g):
        if not self.linear:
            g = g * (1 - np.tanh(x @ self.A + self.bias) ** 2)
        return g @ self.A.T

    def skip(self, x):
        return x @ self.P

    def skip_vjp(self, x, g):
        return g @ self.P.T

    def args(self):
        """residual_forward's skip and residual_backward's skip_vjp: None for the identity skip."""
        return (None, None) if self.P is None else (self.skip, self.skip_vjp)

    def s(self, x):
        return x if self.P is None else self.skip(x)

    def s_vjp(self, x, g):
        return g if self.P is None else self.skip_vjp(x, g)

    def __repr__(self):
        return self.text()

    def text(self):
        kind = "tanh(x @ A + c)" if not self.linear else "x @ A + c"
        return (f"F(x) = {kind}, S(x) = {'x (identity)' if self.P is None else 'x @ P'}; "
                + describe({"x": self.x, "dout": self.dout, "A": self.A, "c": self.bias, "P": self.P}))


CASES = st.builds(Case, st.integers(0, 2**16), st.integers(1, 2), st.integers(1, 3), st.integers(1, 3),
                  st.integers(1, 3), st.integers(1, 3), st.booleans(), st.booleans())
FIXED = [Case(3, 2, 3, 3, 2, 2, True, False), Case(4, 2, 2, 3, 3, 3, False, False), Case(5, 1, 3, 2, 2, 4, True, True)]






def _block():
    """The paper's block (2 -> 3 channels, 1x1 conv skip, float64) and its main path F and skip S as functions."""
    block = ResidualBlock(2, 3, name=lambda base: base, seed=itertools.count(1).__next__, dtype=np.float64)

    def f(v):
        h = block.bn1.forward(block.conv1.forward(v, True), True)
        return block.attention.forward(block.bn2.forward(block.conv2.forward(h, True), True), True)

    def f_vjp(v, g):
        g = block.bn2.backward(block.attention.backward(g))
        return block.conv1.backward(block.bn1.backward(block.conv2.backward(g)))

    return block, f, f_vjp, (lambda v: block.skip.forward(v)), (lambda v, g: block.skip.backward(g))


@exercise(LESSON, "residual_forward")
def grade_residual_forward(residual_forward) -> None:
    """residual_forward(x, f, skip=None) -> ReLU(f(x) + skip(x)), skip None = the identity."""

    def check(case):
        fx, sx = case.f(case.x), case.s(case.x)
        expected = np.maximum(fx + sx, 0)
        skip = case.args()[0]
        got = call_student(residual_forward, (case.x.copy(), case.f, skip), case.text(),
                    "y = ReLU(f(x) + x) without a skip function, ReLU(f(x) + skip(x)) with one")
        hint = "y = ReLU(F(x) + S(x)): the sum first, then the ReLU"
        if _resembles(got, lambda: fx + sx):
            hint = "the final ReLU is missing: y = ReLU(F(x) + S(x))"
        elif _resembles(got, lambda: np.maximum(fx, 0) + sx):
            hint = "the ReLU comes after the sum: y = ReLU(F(x) + S(x)), not ReLU(F(x)) + S(x)"
        elif skip is not None and _resembles(got, lambda: np.maximum(fx + case.x, 0)):
            hint = "with a skip function the skip path is skip(x), not x"
        elif skip is not None and _resembles(got, lambda: np.maximum(fx, 0)):
            hint = "the skip path is missing: y = ReLU(F(x) + skip(x))"
        elif skip is None and _resembles(got, lambda: np.maximum(fx, 0)):
            hint = "the skip path is missing: with skip=None, y = ReLU(F(x) + x)"
        compare("y", expected, got, atol=1e-12, case=case.text(), hint=hint)

    for case in FIXED:
        check(case)
    with kernels.backend("numpy"):  # the paper's block: pool(ReLU(F(x) + S(x))) == ResidualBlock.forward
        block, f, _, skip, _ = _block()
        x = np.random.default_rng(1).standard_normal((2, 4, 4, 2))
        expected = block.forward(x.copy(), training=True)
        got = call_student(residual_forward, (x.copy(), f, skip), "the paper's ResidualBlock (2 -> 3 channels)", "")
        compare("max-pool of y (the paper's ResidualBlock)", expected, block.pool.forward(np.asarray(got)),
                atol=1e-10, case="x (2, 4, 4, 2) through minarn's ResidualBlock(2, 3), training mode",
                hint="y = ReLU(F(x) + skip(x)) with F = conv-BN-conv-BN-attention and skip = the 1x1 conv")
    falsify(check, CASES, max_examples=30)


@exercise(LESSON, "residual_backward")
def grade_residual_backward(residual_backward) -> None:
    """residual_backward(dout, x, y, f_vjp, skip_vjp=None) -> f_vjp(x, g) + skip_vjp(x, g), g = dout * [y > 0]."""

    def check(case, numeric=False):
        x, dout = case.x, case.dout
        y = np.maximum(case.f(x) + case.s(x), 0)
        g = dout * (y > 0)
        expected = case.f_vjp(x, g) + case.s_vjp(x, g)
        args = (dout.copy(), x.copy(), y.copy(), case.f_vjp, case.args()[1])
        got = call_student(residual_backward, args, case.text(),
                           "dx = f_vjp(x, g) + g (identity skip) or f_vjp(x, g) + skip_vjp(x, g), g = dout * [y > 0]")
        hint = "dx = f_vjp(x, g) + skip_vjp(x, g) (or + g for the identity skip), with g = dout * [y > 0]"
        if _resembles(got, lambda: case.f_vjp(x, g)):
            hint = ("the skip's gradient is missing: x feeds both paths (fan-out), so add "
                    + ("g (the identity path)" if case.P is None else "skip_vjp(x, g)"))
        elif _resembles(got, lambda: case.f_vjp(x, dout) + case.s_vjp(x, dout)):
            hint = "the final ReLU's mask is missing: g = dout * [y > 0] goes into both paths, not dout"
        elif case.P is not None and _resembles(got, lambda: case.f_vjp(x, g) + g):
            hint = "with a skip function, its gradient is skip_vjp(x, g), not g"
        elif _resembles(got, lambda: case.f_vjp(x, dout * (x > 0)) + case.s_vjp(x, dout * (x > 0))):
            hint = "the ReLU's mask is [y > 0] (where F(x) + S(x) > 0), not [x > 0]"
        compare("dx", expected, got, atol=1e-10, case=case.text(), hint=hint)
        if numeric:
            def loss(xv):
                return float(np.sum(dout * np.maximum(case.f(xv) + case.s(xv), 0)))
            compare("dx (against a numeric gradient)", numeric_gradient(loss, x), got, atol=1e-6,
                    case=case.text())

    for case in FIXED:
        check(case, numeric=True)
    with kernels.backend("numpy"):  # the paper's block: its backward through residual_backward
        block, f, f_vjp, skip, skip_vjp = _block()
        x = np.random.default_rng(1).standard_normal((2, 4, 4, 2))
        dout = np.random.default_rng(2).standard_normal(block.forward(x.copy(), training=True).shape)
        expected = block.backward(dout)
        y = np.maximum(f(x) + skip(x), 0)  # F's layers now hold this forward, for f_vjp
        got = call_student(residual_backward, (block.pool.backward(dout), x.copy(), y, f_vjp, skip_vjp),
                    "the paper's ResidualBlock (2 -> 3 channels)", "")
        compare("dx (the paper's ResidualBlock)", expected, got, atol=1e-10,
                case="x (2, 4, 4, 2) through minarn's ResidualBlock(2, 3), training mode, a random dout",
                hint="dx = f_vjp(x, g) + skip_vjp(x, g), g = dout * [y > 0]")
    falsify(check, CASES, max_examples=30)
