"""Graders of lesson 11's exercises (Adamax, paper Eq. 3-6, and Adam): step by step against minarn.optim.Adamax
(paper form) and minarn.optim.Adam, and the lesson's properties (the first Adamax step is lr * sign(g))."""


from functools import partial

import numpy as np
from hypothesis import strategies as st

from minarn import optim
from minarn.exercises.grading import Failure, call_student, compare, describe, exercise, falsify, resembles

LESSON = "11_optimizers"


# Is a wrong answer what a known mistake gives (to name it in the hint)? At this lesson's tolerance.
_resembles = partial(resembles, atol=1e-13, rtol=1e-12)






class Run:
    """A start value and a sequence of gradients (one per step), with the optimizer's hyperparameters."""

    def __init__(self, seed, size, steps, lr, beta1, beta2, eps, scales=None):
        rng = np.random.default_rng(seed)
        scales = np.asarray(scales) if scales is not None else 10.0 ** rng.integers(-2, 3, size)
        self.param0 = rng.standard_normal(len(scales))
        self.grads = rng.standard_normal((steps, len(scales))) * scales
        self.lr, self.beta1, self.beta2, self.eps = lr, beta1, beta2, eps

    def hyper(self):
        return {"lr": self.lr, "beta1": self.beta1, "beta2": self.beta2, "eps": self.eps}

    def text(self, t):
        return (f"step t = {t} of a run from param0 = {describe(self.param0)} with gradients "
                f"{describe(self.grads[:t])}, " + ", ".join(f"{k}={v:g}" for k, v in self.hyper().items()))

    def __repr__(self):
        return self.text(len(self.grads))


RUNS = st.builds(Run, st.integers(0, 2**16), st.integers(1, 4), st.integers(1, 6), st.sampled_from([0.001, 0.01, 0.3]),
                 st.sampled_from([0.9, 0.5, 0.0]), st.sampled_from([0.999, 0.9]), st.sampled_from([1e-7, 1e-3]))
# Adam's runs keep eps = 1e-7: its two textbook placements of eps then agree to ~1e-3 of a step.
ADAM_RUNS = st.builds(Run, st.integers(0, 2**16), st.integers(1, 4), st.integers(1, 6),
                      st.sampled_from([0.001, 0.01, 0.3]), st.sampled_from([0.9, 0.5, 0.0]),
                      st.sampled_from([0.999, 0.9]), st.just(1e-7))
# The lesson's run: gradients from 1e-3 to 100 and one weight whose gradient is always 0 (u is floored at eps).
FIXED = Run(0, 6, 6, 0.001, 0.9, 0.999, 1e-7, scales=[1e-3, 1, 10, 100, 1, 0])


def _tuple3(got, names):
    if not isinstance(got, (tuple, list)) or len(got) != 3:
        size = f" of length {len(got)}" if isinstance(got, (tuple, list)) else ""
        raise Failure(f"must return the tuple {names} after the step, got {type(got).__name__}{size}")
    return [np.asarray(g, dtype=np.float64) for g in got]


def _replay(run, optimizer, slot):
    """minarn's optimizer on the run: the (param, m, slot) after every step."""
    params, states = {"w": run.param0.copy()}, []
    for g in run.grads:
        optimizer.apply(params, {"w": g.copy()})
        state = optimizer.state_dict()
        states.append((params["w"].copy(), state["m/w"], state[f"{slot}/w"]))
    return states


@exercise(LESSON, "adamax_step")
def grade_adamax_step(adamax_step) -> None:
    """adamax_step(param, grad, m, u, t, lr, beta1, beta2, eps) -> (param, m, u), against optim.Adamax (paper form)."""

    def check(run):
        h = run.hyper()
        expected = _replay(run, optim.Adamax(run.lr, run.beta1, run.beta2, run.eps, form="paper"), "u")
        param, m, u = run.param0.copy(), np.zeros_like(run.param0), np.zeros_like(run.param0)
        for t, (g, (e_param, e_m, e_u)) in enumerate(zip(run.grads, expected), start=1):
            got = _tuple3(call_student(adamax_step, (param.copy(), g.copy(), m.copy(), u.copy(), t, *h.values()),
                                run.text(t), "m = b1 m + (1 - b1) g; m_hat = m / (1 - b1^t); u = max(b2 u, |g|, eps)"),
                          "(param, m, u)")
            b1, b2, lr, eps = run.beta1, run.beta2, run.lr, run.eps
            m_new = b1 * m + (1 - b1) * g
            u_new = np.maximum(np.maximum(b2 * u, np.abs(g)), eps)
            hint = "param - lr m_hat / u with m_hat = m / (1 - beta1^t) (Eq. 4), u = max(beta2 u, |g|, eps) (Eq. 5)"
            if b1 > 0 and _resembles(got[0], lambda: param - lr * m_new / u_new):
                hint = ("the bias correction is missing: m_hat = m / (1 - beta1^t) (Eq. 4); the first step must be "
                        "lr * sign(g), not (1 - beta1) lr * sign(g)")
            elif _resembles(got[0], lambda: param - lr * (m_new / (1 - b1**t))
                            / np.maximum(np.maximum(b2 * u, g), eps)):
                hint = "u = max(beta2 u, |g|, eps) takes the absolute value of g (Eq. 5): negative gradients too"
            elif _resembles(got[0], lambda: param - lr * (m_new / (1 - b1**t)) / (np.maximum(b2 * u, np.abs(g)) + eps)):
                hint = "eps goes inside the max, u = max(beta2 u, |g|, eps) (Eq. 5), not into the denominator"
            elif b1 > 0 and t > 1 and _resembles(got[0], lambda: param - lr * (m_new / (1 - b1 ** (t - 1))) / u_new):
                hint = "the bias correction at step t is 1 - beta1^t, with t = 1 for the first step"
            elif _resembles(got[0], lambda: param + lr * (m_new / (1 - b1**t)) / u_new):
                hint = "the sign: Adamax steps against the gradient, param - lr m_hat / u"
            compare("param", e_param, got[0], atol=1e-13, rtol=1e-12, case=run.text(t), hint=hint)
            hint = "m = beta1 m + (1 - beta1) g (Eq. 3); return m itself, not m_hat"
            if b1 > 0 and _resembles(got[1], lambda: m_new / (1 - b1**t)):
                hint = "return m (Eq. 3), not m_hat: the state keeps the uncorrected running mean"
            compare("m", e_m, got[1], atol=1e-13, rtol=1e-12, case=run.text(t), hint=hint)
            hint = "u = max(beta2 u, |g|, eps), element by element (Eq. 5)"
            if _resembles(got[2], lambda: np.maximum(b2 * u, np.abs(g))):
                hint = "eps belongs inside the max: u = max(beta2 u, |g|, eps) (Eq. 5)"
            compare("u", e_u, got[2], atol=1e-13, rtol=1e-12, case=run.text(t), hint=hint)
            param, m, u = got

    check(FIXED)
    first = _tuple3(call_student(adamax_step, (FIXED.param0.copy(), FIXED.grads[0].copy(), np.zeros(6), np.zeros(6), 1),
                          FIXED.text(1), ""), "(param, m, u)")[0]
    compare("the first step (defaults lr=0.001, beta1=0.9, beta2=0.999, eps=1e-7)",
            -0.001 * np.sign(FIXED.grads[0]), first - FIXED.param0, atol=1e-15, rtol=1e-9, case=FIXED.text(1),
            hint="with the paper's defaults the first step is -lr * sign(g) (0 where g = 0)")
    falsify(check, RUNS, max_examples=25)


@exercise(LESSON, "adam_step")
def grade_adam_step(adam_step) -> None:
    """adam_step(param, grad, m, v, t, lr, beta1, beta2, eps) -> (param, m, v), against optim.Adam."""

    def check(run):
        h = run.hyper()
        expected = _replay(run, optim.Adam(run.lr, run.beta1, run.beta2, run.eps), "v")
        param, m, v = run.param0.copy(), np.zeros_like(run.param0), np.zeros_like(run.param0)
        previous = run.param0.copy()
        for t, (g, (e_param, e_m, e_v)) in enumerate(zip(run.grads, expected), start=1):
            got = _tuple3(call_student(adam_step, (param.copy(), g.copy(), m.copy(), v.copy(), t, *h.values()),
                                run.text(t), "m = b1 m + (1 - b1) g; v = b2 v + (1 - b2) g^2"), "(param, m, v)")
            b1, b2, lr, eps = run.beta1, run.beta2, run.lr, run.eps
            m_new, v_new = b1 * m + (1 - b1) * g, b2 * v + (1 - b2) * g**2
            compare("m", e_m, got[1], atol=1e-13, rtol=1e-12, case=run.text(t),
                    hint="m = beta1 m + (1 - beta1) g: return m itself, not m_hat")
            hint = "v = beta2 v + (1 - beta2) g^2: return v itself, not v_hat"
            if any(_resembles(got[2], lambda w=w: b2 * v + (1 - b2) * w) for w in (g, np.abs(g))):
                hint = "v is the running mean of the SQUARED gradient: v = beta2 v + (1 - beta2) g^2"
            compare("v", e_v, got[2], atol=1e-13, rtol=1e-12, case=run.text(t), hint=hint)
            hint = "param - lr m_hat / (sqrt(v_hat) + eps), m_hat = m / (1 - beta1^t), v_hat = v / (1 - beta2^t)"
            if _resembles(got[0], lambda: param - lr * m_new / (np.sqrt(v_new) + eps), rtol=1e-6):
                hint = "the bias corrections are missing: m_hat = m / (1 - beta1^t), v_hat = v / (1 - beta2^t)"
            elif _resembles(got[0], lambda: param - lr * (m_new / (1 - b1**t)) / (v_new / (1 - b2**t) + eps),
                            rtol=1e-6):
                hint = "the denominator is sqrt(v_hat) + eps: the square root is missing"
            # the step, not the parameter, is compared: the two placements of eps differ by ~eps / sqrt(v) of it
            compare("param - its previous value (the step)", e_param - previous, got[0] - param, atol=1e-12,
                    rtol=2e-3, case=run.text(t), hint=hint)
            previous = e_param
            param, m, v = got

    nonzero = Run(0, 5, 6, 0.001, 0.9, 0.999, 1e-7, scales=[1e-2, 1, 10, 100, 1])
    check(nonzero)
    falsify(check, ADAM_RUNS, max_examples=25)
