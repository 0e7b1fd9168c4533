"""Graders of lesson 09's exercises (the classifier head: dense and inverted dropout): against minarn's Dense and
Dropout, numeric gradients, and dropout's properties (the expectation is kept, backward uses the forward's mask)."""


from functools import partial

import numpy as np
from hypothesis import strategies as st

from minarn.exercises.grading import (
    Failure,
    call_student,
    compare,
    describe,
    exercise,
    falsify,
    numeric_gradient,
    resembles,
)
from minarn.layers.dense import Dense
from minarn.layers.dropout import Dropout

LESSON = "09_classifier_head"


# Is a wrong answer what a known mistake gives (to name it in the hint)? At this lesson's tolerance.
_resembles = partial(resembles, atol=1e-10)






def _tuple(got, length, what):
    if not isinstance(got, (tuple, list)) or len(got) != length:
        size = f" of length {len(got)}" if isinstance(got, (tuple, list)) else ""
        raise Failure(f"must return the tuple {what}, got {type(got).__name__}{size}")
    return got


# -- dense -------------------------------------------------------------------------------------------------------
def _dense_case(seed, n, fan_in, fan_out):
    """x (n, in), W (in, out), b (out,), dout (n, out), float64."""
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((n, fan_in)), rng.standard_normal((fan_in, fan_out)), rng.standard_normal(fan_out),
            rng.standard_normal((n, fan_out)))


DENSE_CASES = st.builds(_dense_case, st.integers(0, 2**16), st.integers(1, 4), st.integers(1, 4), st.integers(1, 4))
DENSE_FIXED = [_dense_case(1, 3, 4, 2), _dense_case(2, 3, 3, 3)]  # all sizes different; then a square kernel


def _dense(W, b):
    layer = Dense(W.shape[0], W.shape[1], dtype=np.float64)
    layer.params["kernel"][...] = W
    layer.params["bias"][...] = b
    return layer


@exercise(LESSON, "dense_forward")
def grade_dense_forward(dense_forward) -> None:
    """dense_forward(x, W, b) -> x W + b, against minarn's Dense."""

    def check(case):
        x, W, b, _ = case
        text = describe({"x": x, "W": W, "b": b})
        expected = _dense(W, b).forward_linear(x.copy())
        got = call_student(dense_forward, (x.copy(), W.copy(), b.copy()), text, "z = x @ W + b: (N, in) @ (in, out)")
        hint = "z = x @ W + b"
        if _resembles(got, lambda: x @ W):
            hint = "the bias is missing: z = x @ W + b"
        elif _resembles(got, lambda: x @ W.T + b):
            hint = "W is (in, out): z = x @ W + b, without a transpose"
        compare("z", expected, got, atol=1e-12, case=text, hint=hint)

    for case in DENSE_FIXED:
        check(case)
    falsify(check, DENSE_CASES, max_examples=30)


@exercise(LESSON, "dense_backward")
def grade_dense_backward(dense_backward) -> None:
    """dense_backward(dout, x, W) -> (dout W^T, x^T dout, sum of dout over the batch), against Dense.backward."""

    def check(case, numeric=False):
        x, W, b, dout = case
        text = describe({"dout": dout, "x": x, "W": W})
        layer = _dense(W, b)
        layer.forward_linear(x.copy())
        dx = layer.backward_linear(dout.copy())
        got = _tuple(call_student(dense_backward, (dout.copy(), x.copy(), W.copy()), text,
                           "a shape error, a missing transpose? dx = dout @ W.T (N, in), dW = x.T @ dout (in, out), "
                           "db = dout.sum(axis=0) (out,)"),
                     3, "(dx, dW, db)")
        hint = "dx = dout @ W.T: (N, out) @ (out, in)"
        if _resembles(got[0], lambda: dout @ W):
            hint = "a missing transpose: dx = dout @ W.T, not dout @ W"
        compare("dx", dx, got[0], atol=1e-10, case=text, hint=hint)
        hint = "dW = x.T @ dout: (in, N) @ (N, out), the sum over the batch of x[n]^T dout[n]"
        if _resembles(got[1], lambda: dout.T @ x):
            hint = "dW is transposed: dW = x.T @ dout has W's shape (in, out), not dout.T @ x"
        elif _resembles(got[1], lambda: (x.T @ dout) / len(x)):
            hint = "dW = x.T @ dout sums over the batch; do not divide by N (dout already holds the loss's 1/N)"
        compare("dW", layer.grads["kernel"], got[1], atol=1e-10, case=text, hint=hint)
        hint = "db = dout.sum(axis=0): the bias is added to every image's z, so its gradient sums over the batch"
        if _resembles(got[2], lambda: dout):
            hint = "db is not summed over the batch: db = dout.sum(axis=0), shape (out,)"
        elif _resembles(got[2], lambda: dout.mean(axis=0)):
            hint = "db is the SUM of dout over the batch, not the mean: db = dout.sum(axis=0)"
        elif _resembles(got[2], lambda: dout.sum(axis=1)):
            hint = "the wrong axis: db sums over the batch, axis 0, and has shape (out,)"
        compare("db", layer.grads["bias"], got[2], atol=1e-10, case=text, hint=hint)
        if numeric:
            numeric_dw = numeric_gradient(lambda w: float(np.sum(dout * (x @ w + b))), W)
            compare("dW (against a numeric gradient)", numeric_dw, got[1], atol=1e-7, case=text)

    for case in DENSE_FIXED:
        check(case, numeric=True)
    falsify(check, DENSE_CASES, max_examples=30)


# -- dropout -----------------------------------------------------------------------------------------------------
def _dropout_case(seed, shape, rate):
    """x and dout (shape), u = the uniform numbers minarn's Dropout(rate, seed) draws, the rate."""
    data = np.random.default_rng(seed + 1)
    return data.standard_normal(shape), rate, np.random.default_rng(seed).random(shape), data.standard_normal(shape)


RATES = st.sampled_from([0.45, 0.0, 0.1, 0.5, 0.75])
SHAPES = st.lists(st.integers(1, 5), min_size=1, max_size=3).map(tuple)
DROPOUT_CASES = st.builds(_dropout_case, st.integers(0, 2**16), SHAPES, RATES)
DROPOUT_FIXED = _dropout_case(3, (4, 6), 0.45)


@exercise(LESSON, "dropout_forward")
def grade_dropout_forward(dropout_forward) -> None:
    """dropout_forward(x, rate, u) -> (x * mask, mask), mask = [u >= rate] / (1 - rate); E[out] = x."""

    def check(case):
        x, rate, u, _ = case
        seed_text = describe({"x": x, "rate": rate, "u": u})
        # minarn's Dropout(rate, seed) draws u = default_rng(seed).random(x.shape): the same u, the same mask
        expected_mask = np.where(u >= rate, 1 / (1 - rate), 0.0)
        got = _tuple(call_student(dropout_forward, (x.copy(), rate, u.copy()), seed_text,
                           "mask = (u >= rate) / (1 - rate); out = x * mask"), 2, "(out, mask)")
        hint = "mask = (u >= rate) / (1 - rate): keep where u >= rate, scale the survivors by 1 / (1 - rate)"
        if rate > 0 and _resembles(got[1], lambda: (u >= rate) * 1.0):
            hint = "the survivors are not rescaled: divide the mask by 1 - rate (inverted dropout keeps E[out] = x)"
        elif rate > 0 and _resembles(got[1], lambda: (u < rate) / (1 - rate)):
            hint = "this keeps the elements with u < rate: an element is DROPPED with probability rate (u < rate)"
        elif rate > 0 and _resembles(got[1], lambda: (u >= rate) / rate):
            hint = "divide by the keep probability 1 - rate, not by rate"
        compare("mask", expected_mask, got[1], atol=1e-12, case=seed_text, hint=hint)
        compare("out", x * expected_mask, got[0], atol=1e-12, case=seed_text, hint="out = x * mask")

    x, rate, u, _ = DROPOUT_FIXED
    check(DROPOUT_FIXED)
    got = call_student(dropout_forward, (x.copy(), rate, u.copy()), "x (4, 6), rate 0.45", "")[0]
    compare("out (against minarn's Dropout(0.45, seed=3) with the same uniform numbers)",
            Dropout(rate, seed=3).forward(x.copy(), training=True), got, atol=1e-12, case="x (4, 6), rate 0.45, seed 3")
    ones, big_u = np.ones(200_000), np.random.default_rng(0).random(200_000)
    mean = float(np.mean(call_student(dropout_forward, (ones, 0.45, big_u), "200,000 ones, rate 0.45", "")[0]))
    if not abs(mean - 1) < 0.01:
        raise Failure(f"the expectation is not kept: on 200,000 ones with rate 0.45 the output's mean is "
                      f"{mean:.4f}, expected 1 (+-0.01)\n    hint: scale the kept elements by 1 / (1 - rate)")
    falsify(check, DROPOUT_CASES, max_examples=30)


@exercise(LESSON, "dropout_backward")
def grade_dropout_backward(dropout_backward) -> None:
    """dropout_backward(dout, mask) -> dout * mask (the forward's mask), against minarn's Dropout.backward."""

    def check(case):
        x, rate, u, dout = case
        mask = np.where(u >= rate, 1 / (1 - rate), 0.0)
        text = describe({"dout": dout, "mask": mask})
        got = call_student(dropout_backward, (dout.copy(), mask.copy()), text, "dx = dout * mask")
        again = call_student(dropout_backward, (dout.copy(), mask.copy()), text, "dx = dout * mask")
        if not _resembles(again, lambda: np.asarray(got, dtype=np.float64), atol=0.0):
            raise Failure(f"two calls with the same dout and mask gave different gradients\n    input: {text}\n"
                          f"    hint: draw nothing new: the gradient goes through the same mask as the forward pass, "
                          f"the mask argument")
        hint = "dx = dout * mask"
        if rate > 0 and _resembles(got, lambda: dout * (mask != 0)):
            hint = "the mask already holds the 1 / (1 - rate) scale: dx = dout * mask"
        elif rate > 0 and not _resembles((np.asarray(got) != 0), lambda: (dout * mask) != 0, atol=0.0):
            hint = ("the gradient must be zero exactly where the forward dropped an element: use the same mask as "
                    "the forward pass (the mask argument), not a new one")
        compare("dx", dout * mask, got, atol=1e-12, case=text, hint=hint)

    check(DROPOUT_FIXED)
    x, rate, u, dout = DROPOUT_FIXED
    layer = Dropout(rate, seed=3)
    layer.forward(x.copy(), training=True)
    mask = np.where(u >= rate, 1 / (1 - rate), 0.0)
    got = call_student(dropout_backward, (dout.copy(), mask), "dout (4, 6), the mask of rate 0.45, seed 3", "")
    compare("dx (against minarn's Dropout.backward)", layer.backward(dout.copy()), got, atol=1e-12,
            case="dout (4, 6), the mask of Dropout(0.45, seed=3)",
            hint="dx = dout * mask: the same mask, with its 1 / (1 - rate) scale")
    falsify(check, DROPOUT_CASES, max_examples=30)
