"""Graders of lesson 06's exercises (batch normalization: training and inference forward, backward, moving averages).

The truth is minarn's own ``minarn.BatchNormalization`` (Keras-style: per channel over every axis but the last,
biased variance, eps 1e-3, momentum 0.99; float64, NumPy kernels), a float64 numeric gradient of its training
forward, and the properties the lesson teaches (one statistic per channel; inference independent of the batch).
Channels get different means and spreads, and the moving statistics differ from the batch's, so a statistic
over the wrong axis, or the wrong statistics, always shows.
"""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st

from minarn import kernels
from minarn.exercises.graders.lesson02 import SEEDS
from minarn.exercises.grading import Failure, compare, exercise, falsify, numeric_gradient
from minarn.layers.norm import BatchNormalization

LESSON = "06_batchnorm"


def _bn_cases():
    """dict with x (N, H, W, C), gamma, beta, moving_mean, moving_var (C,), eps and a random dout."""

    @st.composite
    def cases(draw):
        shape = (draw(st.integers(2, 4)), draw(st.integers(1, 3)), draw(st.integers(1, 3)), draw(st.integers(1, 4)))
        eps = draw(st.sampled_from([1e-3, 1e-5]))
        return _make_case(draw(SEEDS), shape, eps)

    return cases()


def _make_case(seed: int, shape: tuple[int, ...], eps: float = 1e-3) -> dict:
    rng = np.random.default_rng(seed)
    C = shape[-1]
    x = rng.uniform(-5, 5, C) + rng.uniform(0.1, 3, C) * rng.standard_normal(shape)
    return {"x": x, "gamma": rng.uniform(0.5, 2, C), "beta": rng.standard_normal(C),
            "moving_mean": 3 * rng.standard_normal(C), "moving_var": rng.uniform(0.2, 4, C), "eps": eps,
            "dout": rng.standard_normal(shape)}


def _text(case: dict) -> str:
    return f"x of shape {case['x'].shape} (channels last), eps={case['eps']:g}"


def _layer(case: dict, training: bool) -> tuple[BatchNormalization, np.ndarray]:
    """minarn's layer set up with the case's parameters (and moving statistics), and its forward output."""
    C = case["x"].shape[-1]
    layer = BatchNormalization(C, epsilon=case["eps"], dtype=np.float64)
    layer.params["gamma"][...], layer.params["beta"][...] = case["gamma"], case["beta"]
    layer.state["moving_mean"][...], layer.state["moving_variance"][...] = case["moving_mean"], case["moving_var"]
    with kernels.backend("numpy"):
        out = layer.forward(case["x"], training=training)
    return layer, out


def _close(got, target, atol: float = 1e-9) -> bool:
    try:
        got = np.asarray(got, dtype=np.float64)
    except (TypeError, ValueError):
        return False
    return got.shape == np.shape(target) and bool(np.allclose(got, target, rtol=1e-9, atol=atol))


def _statistic_hint(what: str, got, x: np.ndarray) -> str:
    shape = np.shape(got)
    C = x.shape[-1]
    if shape in (x.shape[1:], (1, *x.shape[1:])):
        return (f"this {what} is per pixel and channel (over axis 0 only): batch norm after a convolution takes one "
                f"{what} per channel over every axis but the last, axis=(0, 1, 2), shape ({C},)")
    if shape in (x.shape[:-1], (*x.shape[:-1], 1)):
        return (f"this {what} is taken over the channels (axis=-1): take it over every axis but the last, "
                f"axis=(0, 1, 2), one value per channel, shape ({C},)")
    if shape != (C,):
        return f"one {what} per channel, over every axis but the last (N, H, W): shape ({C},)"
    return ""


def _unpack(got, names: str, count: int, text: str) -> tuple:
    if not isinstance(got, (tuple, list)) or len(got) != count:
        raise Failure(f"expected a tuple ({names}), got {type(got).__name__}"
                      + (f" of length {len(got)}" if isinstance(got, (tuple, list)) else "") + f"\n    input: {text}")
    return tuple(got)


@exercise(LESSON, "batchnorm_forward_train")
def grade_batchnorm_forward_train(fn) -> None:
    """batchnorm_forward_train(x, gamma, beta, eps) -> (out, mean, var), as BatchNormalization in training mode."""

    def check(case) -> None:
        x, gamma, beta, eps = case["x"], case["gamma"], case["beta"], case["eps"]
        text = _text(case)
        out, mean, var = _unpack(fn(x.copy(), gamma.copy(), beta.copy(), eps), "out, mean, var", 3, text)
        with kernels.backend("numpy"):
            e_mean, e_var = kernels.numpy_ref.channel_moments(x.reshape(-1, x.shape[-1]))
        compare("mean", e_mean, mean, atol=1e-10, case=text, hint=_statistic_hint("mean", mean, x))
        m = x.size // x.shape[-1]
        hint = _statistic_hint("variance", var, x)
        if m > 1 and _close(var, e_var * m / (m - 1)):
            hint = "the biased variance: divide by m = N*H*W (np.var's default), not m - 1"
        compare("var", e_var, var, atol=1e-10, case=text, hint=hint)
        _, expected = _layer(case, training=True)
        x_hat = (x - e_mean) / np.sqrt(e_var + eps)
        if _close(out, gamma * (x - e_mean) / (np.sqrt(e_var) + eps) + beta):
            hint = "eps goes inside the square root: x_hat = (x - mean) / sqrt(var + eps)"
        elif _close(out, x_hat):
            hint = "scale and shift x_hat: out = gamma * x_hat + beta"
        else:
            hint = "out = gamma * (x - mean) / sqrt(var + eps) + beta, with the per-channel mean and var"
        compare("out", expected, out, atol=1e-10, case=text, hint=hint)

    check(_make_case(0, (16, 5, 5, 4)))
    falsify(check, _bn_cases(), max_examples=30)


@exercise(LESSON, "batchnorm_forward_inference")
def grade_batchnorm_forward_inference(fn) -> None:
    """batchnorm_forward_inference(x, gamma, beta, moving_mean, moving_var, eps), as the layer in inference."""

    def check(case) -> None:
        x, text = case["x"], _text(case)
        args = (case["gamma"], case["beta"], case["moving_mean"], case["moving_var"])
        got = fn(x.copy(), *(a.copy() for a in args), case["eps"])
        _, expected = _layer(case, training=False)
        _, batch_out = _layer(case, training=True)
        if _close(got, batch_out):
            hint = ("this uses the batch's statistics: inference uses moving_mean and moving_var, so that an image's "
                    "output does not depend on the rest of the batch")
        else:
            hint = "out = gamma * (x - moving_mean) / sqrt(moving_var + eps) + beta"
        compare("out", expected, got, atol=1e-10, case=text, hint=hint)
        alone = fn(x[:1].copy(), *(a.copy() for a in args), case["eps"])
        compare("out for the first image alone", np.asarray(got)[:1], alone, atol=1e-12, case=text,
                hint="in inference an image's output must not depend on the other images of the batch")

    check(_make_case(0, (16, 5, 5, 4)))
    falsify(check, _bn_cases(), max_examples=30)


def _backward_hint(case: dict, dx) -> str:
    """Which term of dx = (g - mean(g) - x_hat * mean(g * x_hat)) / sqrt(var + eps) is missing, if one is."""
    x, gamma, eps, dout = case["x"], case["gamma"], case["eps"], case["dout"]
    axes = tuple(range(x.ndim - 1))
    inv_std = 1 / np.sqrt(x.var(axis=axes) + eps)
    x_hat = (x - x.mean(axis=axes)) * inv_std
    g = dout * gamma
    mean_g, mean_gx = g.mean(axis=axes), (g * x_hat).mean(axis=axes)
    if _close(dx, g * inv_std):
        return ("this treats mean and var as constants (that is the inference backward): in training they depend on "
                "x, which adds the terms - mean(g) - x_hat * mean(g * x_hat)")
    if _close(dx, (g - x_hat * mean_gx) * inv_std):
        return ("missing the - mean(g) term (how the batch mean depends on x): dx = (g - mean(g) - x_hat * "
                "mean(g * x_hat)) / sqrt(var + eps)")
    if _close(dx, (g - mean_g) * inv_std):
        return ("missing the - x_hat * mean(g * x_hat) term (how the batch variance depends on x): dx = (g - mean(g) "
                "- x_hat * mean(g * x_hat)) / sqrt(var + eps)")
    d = dout
    if _close(dx, (d - d.mean(axis=axes) - x_hat * (d * x_hat).mean(axis=axes)) * inv_std):
        return "g = dout * gamma: the gradient goes through the scale gamma"
    return ("dx = (g - mean(g) - x_hat * mean(g * x_hat)) / sqrt(var + eps), g = dout * gamma, means per channel over "
            "(N, H, W)")


@exercise(LESSON, "batchnorm_backward")
def grade_batchnorm_backward(fn) -> None:
    """batchnorm_backward(dout, x, gamma, eps) -> (dx, dgamma, dbeta), as the layer's training backward."""

    def check(case, numeric: bool = False) -> None:
        x, gamma, eps, dout, text = case["x"], case["gamma"], case["eps"], case["dout"], _text(case)
        dx, dgamma, dbeta = _unpack(fn(dout.copy(), x.copy(), gamma.copy(), eps), "dx, dgamma, dbeta", 3, text)
        layer, _ = _layer(case, training=True)
        with kernels.backend("numpy"):
            e_dx = layer.backward(dout)
        atol = 1e-10
        if numeric:  # the truth without minarn's backward: central differences of its training forward
            e_dx = numeric_gradient(lambda v: float(np.sum(_layer({**case, "x": v}, training=True)[1] * dout)), x)
            atol = 1e-7
        compare("dbeta", layer.grads["beta"], dbeta, atol=1e-10, case=text,
                hint="dbeta = dout summed over every axis but the last (N, H, W): shape (C,)")
        compare("dgamma", layer.grads["gamma"], dgamma, atol=1e-10, case=text,
                hint="dgamma = (dout * x_hat) summed over (N, H, W), x_hat = (x - mean) / sqrt(var + eps)")
        compare("dx", e_dx, dx, atol=atol, case=text, hint=_backward_hint(case, dx) if dx is not None else "")
        ones = fn(np.ones_like(x), x.copy(), gamma.copy(), eps)[0]  # the lesson's trap, as a property
        compare("dx for dout = ones", np.zeros_like(x), ones, atol=1e-9, case=text,
                hint="with dout = ones the loss sum(out) does not depend on x (each channel's sum is fixed), so dx = 0")

    check(_make_case(0, (3, 2, 2, 3)), numeric=True)
    check(_make_case(1, (16, 5, 5, 4)))
    falsify(check, _bn_cases(), max_examples=30)


@exercise(LESSON, "update_moving")
def grade_update_moving(fn) -> None:
    """update_moving(moving, batch_stat, momentum) = momentum * moving + (1 - momentum) * batch_stat (Keras)."""

    def check(case) -> None:
        moving, batch_stat, momentum = case
        got = fn(moving.copy(), batch_stat.copy(), momentum)
        text = f"moving={moving.tolist()}, batch_stat={batch_stat.tolist()}, momentum={momentum}"
        if _close(got, (1 - momentum) * moving + momentum * batch_stat):
            hint = ("momentum weighs the OLD moving value: momentum * moving + (1 - momentum) * batch_stat "
                    "(Keras' rule; PyTorch's momentum=0.1 means the opposite)")
        else:
            hint = "new moving value = momentum * moving + (1 - momentum) * batch_stat"
        compare("moving", momentum * moving + (1 - momentum) * batch_stat, got, atol=1e-12, case=text, hint=hint)

    case = _make_case(0, (16, 5, 5, 4))  # one training step of minarn's layer from its start values (0 and 1)
    layer = BatchNormalization(4, dtype=np.float64)
    with kernels.backend("numpy"):
        layer.forward(case["x"], training=True)
    axes = (0, 1, 2)
    for key, start, stat in (("moving_mean", np.zeros(4), case["x"].mean(axis=axes)),
                             ("moving_variance", np.ones(4), case["x"].var(axis=axes))):
        got = fn(start.copy(), stat.copy(), 0.99)
        compare(key, layer.state[key], got, atol=1e-12, case=f"one step of BatchNormalization from {start.tolist()}",
                hint="momentum 0.99 keeps 99 % of the OLD value: 0.99 * moving + 0.01 * batch_stat")

    @st.composite
    def cases(draw):
        rng = np.random.default_rng(draw(SEEDS))
        C = draw(st.integers(1, 4))
        return rng.standard_normal(C), rng.standard_normal(C), draw(st.sampled_from([0.99, 0.9, 0.7]))

    falsify(check, cases(), max_examples=20)
