"""Graders of lesson 05's exercises (activations: ReLU, sigmoid, GELU, forward and backward).

The truth is minarn's own layers ``minarn.ReLU``, ``minarn.Sigmoid`` and ``minarn.GELU`` (float64, NumPy kernels),
float64 numeric gradients of their forward passes, and what the lesson teaches: ReLU's derivative is 0 at the
kink; sigmoid stays finite at +-1000; GELU is the exact erf form with derivative Phi(x) + x * phi(x).
Inputs include exact zeros and, for some cases, values of size 1000.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
from hypothesis import strategies as st
from scipy import special

from minarn import kernels
from minarn.exercises.graders.lesson02 import SEEDS
from minarn.exercises.grading import Failure, compare, exercise, falsify, numeric_gradient
from minarn.layers.activations import GELU, ReLU, Sigmoid

LESSON = "05_activations"
# Deterministic inputs: both far tails, the kink, and ordinary values.
SPECIAL = np.array([-1000.0, -40.0, -3.0, -1.0, -0.5, 0.0, 0.5, 1.0, 3.0, 40.0, 1000.0])


def _forward(layer_cls, x: np.ndarray) -> np.ndarray:
    with kernels.backend("numpy"):
        return layer_cls().forward(x)


def _backward(layer_cls, dout: np.ndarray, x: np.ndarray) -> np.ndarray:
    layer = layer_cls()
    with kernels.backend("numpy"):
        layer.forward(x)
        return layer.backward(dout)


def _arrays():
    """x of 1 to 3 axes, with some exact zeros, at scale 1, 4 or 1000; and a dout of the same shape."""

    @st.composite
    def cases(draw):
        shape = tuple(draw(st.lists(st.integers(1, 4), min_size=1, max_size=3)))
        scale = draw(st.sampled_from([1.0, 4.0, 1000.0]))
        rng = np.random.default_rng(draw(SEEDS))
        x = rng.uniform(-scale, scale, shape)
        x[rng.random(shape) < 0.2] = 0.0
        return x, rng.standard_normal(shape)

    return cases()


def _describe_x(x: np.ndarray) -> str:
    if x.size <= 12:
        values = ", ".join(f"{v:.4g}" for v in x.ravel())
        return f"x = [{values}]" + (f" (shape {x.shape})" if x.ndim != 1 else "")
    return f"x of shape {x.shape}, values in [{x.min():.3g}, {x.max():.3g}]"


def _call(fn: Callable, name: str, *args: np.ndarray):
    """Call the student's function on copies, with floating-point warnings silenced; check inputs unchanged."""
    copies = [a.copy() for a in args]
    with np.errstate(all="ignore"):
        got = fn(*copies)
    for arg_name, original, copy in zip(("dout", "x") if len(args) == 2 else ("x",), args, copies):
        if not np.array_equal(original, copy, equal_nan=True):
            raise Failure(f"{name} changed its input {arg_name} in place: return a new array and leave the inputs as "
                          f"they were (no out=, no {arg_name}[...] = ...)\n    input: {_describe_x(args[-1])}")
    return got


def _close(got, target, atol: float = 1e-9) -> bool:
    try:
        got = np.asarray(got, dtype=np.float64)
    except (TypeError, ValueError):
        return False
    with np.errstate(all="ignore"):
        return got.shape == np.shape(target) and bool(np.allclose(got, target, rtol=1e-9, atol=atol))


def _grade(fn, name: str, truth: Callable, hint: Callable, backward: bool, atol: float, numeric_of=None) -> None:
    """Shared body: the special values, a numeric-gradient case (backward), then a hypothesis search."""

    def check(case, numeric: bool = False) -> None:
        x, dout = case
        args = (dout, x) if backward else (x,)
        got = _call(fn, name, *args)
        expected, tol = truth(*args), atol
        if numeric:
            expected = numeric_gradient(lambda v: float(np.sum(numeric_of(v) * dout)), x)
            tol = 1e-7
        compare("dx" if backward else "out", expected, got, atol=tol, rtol=1e-12, case=_describe_x(x),
                hint=hint(got, *args) if got is not None else "")

    rng = np.random.default_rng(0)
    check((SPECIAL.copy(), rng.standard_normal(SPECIAL.shape)))
    if numeric_of is not None:
        x = rng.uniform(-4, 4, (3, 5))
        x[np.abs(x) < 1e-2] = 0.5  # away from ReLU's kink: there a numeric gradient sees the mean of two slopes
        check((x, rng.standard_normal(x.shape)), numeric=True)
    falsify(check, _arrays())


# -- ReLU --------------------------------------------------------------------------------------------------------
def _relu_forward_hint(got, x) -> str:
    return "ReLU(x) = max(x, 0) element-wise: negative inputs become 0, the others stay as they are"


def _relu_backward_hint(got, dout, x) -> str:
    got = np.asarray(got, dtype=np.float64)
    if got.shape != x.shape:
        return "dx has the shape of x"
    if np.any(got[x < 0] != 0):
        return ("dx must be 0 where x < 0 (note: out = max(x, 0) is >= 0 everywhere, so a mask [out >= 0] lets "
                "every gradient through)")
    right = np.where(x > 0, dout, 0.0)
    wrong = got != right
    if wrong.any() and np.all(x[wrong] == 0):
        return ("at the kink x = 0 the derivative is taken as 0 (as minarn and Keras): dx = dout * [x > 0], "
                "not [x >= 0]")
    if _close(got, (x > 0) * 1.0):
        return "multiply the mask by dout: dx = dout * [x > 0]"
    return "dx = dout * [x > 0]"


@exercise(LESSON, "relu_forward")
def grade_relu_forward(fn) -> None:
    """relu_forward(x) = max(x, 0), as minarn.ReLU; the input is left unchanged."""
    _grade(fn, "relu_forward", lambda x: _forward(ReLU, x), _relu_forward_hint, backward=False, atol=0.0)


@exercise(LESSON, "relu_backward")
def grade_relu_backward(fn) -> None:
    """relu_backward(dout, x) = dout * [x > 0] (0 at x = 0), as minarn.ReLU.backward; numeric check off the kink."""
    _grade(fn, "relu_backward", lambda dout, x: _backward(ReLU, dout, x), _relu_backward_hint, backward=True,
           atol=0.0, numeric_of=lambda v: _forward(ReLU, v))


# -- sigmoid -----------------------------------------------------------------------------------------------------
def _sigmoid(x):
    return special.expit(x)


def _sigmoid_forward_hint(got, x) -> str:
    with np.errstate(all="ignore"):
        finite = np.isfinite(np.asarray(got, dtype=np.float64)).all()
    if not finite:
        return ("not finite for large |x|: exp overflows there (exp(1000) = inf, inf / inf = nan). With z = exp(-|x|) "
                "in (0, 1]: sigmoid = 1 / (1 + z) for x >= 0 and z / (1 + z) for x < 0")
    return "sigmoid(x) = 1 / (1 + exp(-x)), in (0, 1), with sigmoid(0) = 0.5 and sigmoid(-x) = 1 - sigmoid(x)"


def _sigmoid_backward_hint(got, dout, x) -> str:
    s = _sigmoid(x)
    if _close(got, dout * s):
        return "you multiplied by s alone: the derivative of sigmoid is s * (1 - s), s = sigmoid(x)"
    if _close(got, s * (1 - s)):
        return "multiply by dout: dx = dout * s * (1 - s)"
    with np.errstate(all="ignore"):
        if not np.isfinite(np.asarray(got, dtype=np.float64)).all():
            return "not finite for large |x|: compute s with a sigmoid that does not overflow (sigmoid_forward)"
    return "dx = dout * s * (1 - s) with s = sigmoid(x)"


@exercise(LESSON, "sigmoid_forward")
def grade_sigmoid_forward(fn) -> None:
    """sigmoid_forward(x) as minarn.Sigmoid (scipy.special.expit): accurate and finite at +-1000."""
    _grade(fn, "sigmoid_forward", _sigmoid, _sigmoid_forward_hint, backward=False, atol=1e-12)


@exercise(LESSON, "sigmoid_backward")
def grade_sigmoid_backward(fn) -> None:
    """sigmoid_backward(dout, x) = dout * s * (1 - s), as minarn.Sigmoid.backward, and numerically."""
    _grade(fn, "sigmoid_backward", lambda dout, x: _backward(Sigmoid, dout, x), _sigmoid_backward_hint,
           backward=True, atol=1e-12, numeric_of=_sigmoid)


# -- GELU --------------------------------------------------------------------------------------------------------
def _phi_cdf(x):
    return 0.5 * (1.0 + special.erf(x / math.sqrt(2.0))), np.exp(-0.5 * x * x) / math.sqrt(2.0 * math.pi)


def _gelu_forward_hint(got, x) -> str:
    tanh_form = 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))
    if _close(got, tanh_form, atol=1e-12):
        return ("this is the tanh approximation: the paper (Eq. 1-2) and minarn use the exact form "
                "x * Phi(x), Phi(x) = 0.5 * (1 + erf(x / sqrt(2)))")
    return "GELU(x) = x * Phi(x), Phi(x) = 0.5 * (1 + erf(x / sqrt(2))), the standard normal CDF"


def _gelu_backward_hint(got, dout, x) -> str:
    cdf, pdf = _phi_cdf(x)
    if _close(got, dout * cdf):
        return "missing the x * phi(x) term: GELU'(x) = Phi(x) + x * phi(x) (product rule on x * Phi(x))"
    if _close(got, dout * (cdf + pdf)):
        return "the second term is x * phi(x), not phi(x): GELU'(x) = Phi(x) + x * phi(x)"
    return "dx = dout * (Phi(x) + x * phi(x)), phi(x) = exp(-x^2 / 2) / sqrt(2 pi)"


@exercise(LESSON, "gelu_forward")
def grade_gelu_forward(fn) -> None:
    """gelu_forward(x) = x * Phi(x) with erf, as minarn.GELU (not the tanh approximation)."""
    _grade(fn, "gelu_forward", lambda x: _forward(GELU, x), _gelu_forward_hint, backward=False, atol=1e-12)


@exercise(LESSON, "gelu_backward")
def grade_gelu_backward(fn) -> None:
    """gelu_backward(dout, x) = dout * (Phi(x) + x * phi(x)), as minarn.GELU.backward, and numerically."""
    _grade(fn, "gelu_backward", lambda dout, x: _backward(GELU, dout, x), _gelu_backward_hint, backward=True,
           atol=1e-12, numeric_of=lambda v: _forward(GELU, v))
