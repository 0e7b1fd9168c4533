"""Graders of lesson 07's exercises (the attention module, paper Fig. 3): against minarn's AttentionModule."""

import numpy as np
from hypothesis import strategies as st
from scipy.special import expit

from minarn import kernels
from minarn.exercises.grading import Failure, compare, describe, exercise, falsify, numeric_gradient
from minarn.layers.attention import AttentionModule

LESSON = "07_attention"


def _case(seed, n, h, w, c):
    """(x, w1, b1, w2, b2, dout), float64: x, dout (n, h, w, c), w1, w2 (c, c), b1, b2 (c,)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, h, w, c))
    w1, w2 = rng.standard_normal((c, c)), rng.standard_normal((c, c))
    b1, b2 = 0.5 * rng.standard_normal(c), 0.5 * rng.standard_normal(c)
    return x, w1, b1, w2, b2, rng.standard_normal(x.shape)


CASES = st.builds(_case, st.integers(0, 2**16), st.integers(1, 2), st.integers(1, 3), st.integers(1, 3),
                  st.integers(1, 4))
FIXED = _case(7, 2, 3, 2, 3)  # a first case with everything present: 2 images, 3 x 2 pixels, 3 channels


def _module(w1, b1, w2, b2):
    """minarn's AttentionModule (float64) holding these weights."""
    c = w1.shape[0]
    att = AttentionModule(c, ("conv_a", "conv_b", "multiply"), (0, 1), np.float64)
    att.conv_a.params["kernel"][...] = w1.reshape(1, 1, c, c)
    att.conv_a.params["bias"][...] = b1
    att.conv_b.params["kernel"][...] = w2.reshape(1, 1, c, c)
    att.conv_b.params["bias"][...] = b2
    return att


def _copies(case):
    return tuple(a.copy() for a in case)  # the student's function may write into its inputs


def _close(a, b, atol=1e-9):
    a = np.asarray(a, dtype=np.float64) if a is not None else None
    return a is not None and a.shape == np.shape(b) and bool(np.allclose(a, b, rtol=0, atol=atol))


@exercise(LESSON, "attention_forward")
def grade_attention_forward(attention_forward) -> None:
    """attention_forward(x, w1, b1, w2, b2) -> x * sigmoid(ReLU(x @ w1 + b1) @ w2 + b2)."""

    def check(case):
        case = case[:5]  # no dout
        x, w1, b1, w2, b2 = case
        with kernels.backend("numpy"):  # the readable kernels: no compilation wait
            expected = _module(w1, b1, w2, b2).forward(x.copy())
        got = attention_forward(*_copies(case))
        hint = "out = x * w with a = ReLU(x @ w1 + b1), w = sigmoid(a @ w2 + b2)"
        if _close(got, expit(np.maximum(x @ w1 + b1, 0) @ w2 + b2)):
            hint = "this is the mask w itself: the module returns x * w"
        elif _close(got, x * expit((x @ w1 + b1) @ w2 + b2)):
            hint = "the ReLU after the first 1x1 convolution is missing: a = ReLU(x @ w1 + b1)"
        elif _close(got, x * expit(np.maximum(x @ w1.T + b1, 0) @ w2.T + b2)):
            hint = "a 1x1 convolution is x @ w1 (rows of w1 = input channels), not x @ w1.T"
        compare("out", expected, got, atol=1e-10, case=describe(case), hint=hint)

    check(FIXED)
    falsify(check, CASES, max_examples=30)


@exercise(LESSON, "attention_backward")
def grade_attention_backward(attention_backward) -> None:
    """attention_backward(dout, x, w1, b1, w2, b2) -> (dx, dw1, db1, dw2, db2), dx = the two paths' sum."""

    def check(case, numeric=False):
        (x, w1, b1, w2, b2), dout = case[:5], case[5]
        with kernels.backend("numpy"):
            att = _module(w1, b1, w2, b2)
            att.forward(x.copy())
            dx = att.backward(dout.copy())
        c = w1.shape[0]
        expected = {"dx": dx, "dw1": att.conv_a.grads["kernel"].reshape(c, c), "db1": att.conv_a.grads["bias"],
                    "dw2": att.conv_b.grads["kernel"].reshape(c, c), "db2": att.conv_b.grads["bias"]}
        got = attention_backward(dout.copy(), *_copies(case[:5]))
        if not isinstance(got, (tuple, list)) or len(got) != 5:
            size = f" of length {len(got)}" if isinstance(got, (tuple, list)) else ""
            raise Failure(f"attention_backward must return the tuple (dx, dw1, db1, dw2, db2), got "
                          f"{type(got).__name__}{size}")
        got = dict(zip(expected, got))
        text = describe({"dout": dout, "x": x, "w1": w1, "b1": b1, "w2": w2, "b2": b2})
        z1 = x @ w1 + b1
        w = expit(np.maximum(z1, 0) @ w2 + b2)
        direct = dout * w
        hint = ("dx = dout * w + ((dout * x * w (1 - w)) @ w2^T * [z1 > 0]) @ w1^T: check the sigmoid's "
                "derivative w (1 - w) and the ReLU's mask [z1 > 0]")
        if _close(got["dx"], direct):
            hint = ("this is only dout * w: x also feeds conv_a, so add the path through the mask "
                    "(fan-out: the two paths' gradients add up)")
        elif _close(got["dx"], dx - direct):
            hint = ("this is only the path through the mask: add dout * w, the path through out = x * w "
                    "(fan-out: the two paths' gradients add up)")
        compare("dx", dx, got["dx"], atol=1e-9, case=text, hint=hint)
        if numeric:
            with kernels.backend("numpy"):
                reference = numeric_gradient(lambda xv: float(np.sum(dout * att.forward(xv))), x)
            compare("dx (against a numeric gradient)", reference, got["dx"], atol=1e-6, case=text)
        for key, path in (("dw2", "a^T dz2"), ("db2", "dz2 summed over N, H, W"), ("dw1", "x^T dz1"),
                          ("db1", "dz1 summed over N, H, W")):
            hint = f"{key} = {path}, with the pixels of every image as rows ((N*H*W, C) arrays)"
            if _close(got[key], np.asarray(expected[key]).T):
                hint = f"{key} is transposed: {path} (rows = input channels, columns = output channels)"
            compare(key, expected[key], got[key], atol=1e-9, case=text, hint=hint)

    check(FIXED, numeric=True)
    falsify(check, CASES, max_examples=30)
