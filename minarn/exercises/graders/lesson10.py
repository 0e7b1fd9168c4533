"""Graders of lesson 10's exercises (softmax, cross-entropy, (p - y) / N): against minarn's Softmax and
losses.softmax_cross_entropy, numeric gradients, and the lesson's properties (rows sum to 1, finite at +-1000,
ln K for equal scores)."""


from functools import partial

import numpy as np
from hypothesis import strategies as st

from minarn import losses
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
from minarn.layers.activations import Softmax

LESSON = "10_softmax_ce"


# Is a wrong answer what a known mistake gives (to name it in the hint)? At this lesson's tolerance.
_resembles = partial(resembles, atol=1e-10)






def _case(seed, n, k, scale):
    """Scores z (n, k) of the given scale and one-hot labels y (n, k)."""
    rng = np.random.default_rng(seed)
    return scale * rng.standard_normal((n, k)), np.eye(k)[rng.integers(0, k, n)]


CASES = st.builds(_case, st.integers(0, 2**16), st.integers(1, 5), st.integers(2, 6),
                  st.sampled_from([1.0, 3.0, 0.1, 30.0]))
# A fixed batch; then a very confident network (scores of +-1000, the true class the -1000 one in row 0) and two
# rows 2000 apart (each row needs its own maximum subtracted).
FIXED = [_case(0, 5, 6, 2.0),
         (np.array([[1000.0, 0.0, -1000.0], [0.0, 1000.0, 999.0]]), np.array([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0]])),
         (np.array([[1000.0, 999.0], [-1000.0, -1001.0]]), np.array([[1.0, 0.0], [0.0, 1.0]]))]


def _text(z, y=None):
    return describe({"z": z} if y is None else {"z": z, "y": y})


@exercise(LESSON, "softmax")
def grade_softmax(softmax) -> None:
    """softmax(z) -> exp(z - row max) / row sum, against minarn's Softmax; rows sum to 1; finite at +-1000."""

    def check(case):
        z = case[0]
        expected = Softmax().forward(z.copy())
        got = call_student(softmax, (z.copy(),), _text(z), "p = exp(z - max) / sum(exp(z - max)), per row")
        hint = "p = exp(z - m) / sum_j exp(z - m) over each row, m = the row's maximum"
        with np.errstate(all="ignore"):
            overflow = not np.isfinite(np.exp(z)).all()
        if _resembles(got, lambda: np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)) and overflow:
            hint = "exp overflows for large scores: subtract each row's maximum before exp (it cancels in the ratio)"
        elif _resembles(got, lambda: np.exp(z - z.max()) / np.exp(z - z.max()).sum(axis=1, keepdims=True)):
            hint = ("subtract each ROW's maximum (z.max(axis=1, keepdims=True)), not the maximum of the whole batch: "
                    "rows far below it underflow to 0 / 0")
        elif _resembles(got, lambda: np.exp(z - z.max(axis=0)) / np.exp(z - z.max(axis=0)).sum(axis=0)):
            hint = "normalize over each row (axis=1: the classes of one image), not over the batch (axis=0)"
        elif _resembles(got, lambda: np.exp(z) / np.exp(z).sum()):
            hint = "normalize each row separately: sum over axis=1 with keepdims=True, not over the whole array"
        compare("p", expected, got, atol=1e-12, case=_text(z), hint=hint)

    for case in FIXED:
        check(case)
    falsify(check, CASES, max_examples=30)


@exercise(LESSON, "cross_entropy")
def grade_cross_entropy(cross_entropy) -> None:
    """cross_entropy(z, y) -> -(1/N) sum y ln softmax(z) (Eq. 7), against losses.softmax_cross_entropy."""

    def check(case):
        z, y = case
        expected = np.asarray(losses.softmax_cross_entropy(z.copy(), y.copy())[0])
        got = call_student(cross_entropy, (z.copy(), y.copy()), _text(z, y), "L = -(1/N) sum_n sum_k y ln p")
        if np.ndim(got) == 1 and np.shape(got) == (len(z),):
            raise Failure(f"got one loss per image, shape {np.shape(got)}: Eq. 7 averages them over the batch into "
                          f"one number\n    input: {_text(z, y)}")
        hint = "L = -(1/N) sum_n sum_k y[n, k] ln p[n, k], the mean over the batch"
        with np.errstate(all="ignore"):
            p = np.exp(z - z.max(axis=1, keepdims=True))
            p /= p.sum(axis=1, keepdims=True)
        if len(z) > 1 and _resembles(got, lambda: -np.sum(y * losses.log_softmax(z))):
            hint = "this is the sum over the batch: divide by N (Eq. 7 is the mean over the batch)"
        elif _resembles(got, lambda: np.sum(y * losses.log_softmax(z)) / len(z)):
            hint = "the sign: L = -(1/N) sum y ln p is positive"
        elif not np.isfinite(np.asarray(got, dtype=np.float64)).all() and (p == 0).any():
            hint = ("ln of a probability that rounded to 0 is -inf: compute ln p as a log-softmax, "
                    "z - m - ln sum exp(z - m)")
        compare("loss", expected, got, atol=1e-10, rtol=1e-12, case=_text(z, y), hint=hint)

    for case in FIXED:
        check(case)
    k = 6
    uniform = call_student(cross_entropy, (np.zeros((4, k)), np.eye(k)[[0, 1, 2, 3]]), "equal scores", "")
    compare("loss for equal scores (p = 1/6 everywhere)", np.asarray(np.log(k)), uniform, atol=1e-12,
            case="z = zeros (4, 6), any labels", hint="a model that knows nothing scores ln K")
    falsify(check, CASES, max_examples=30)


@exercise(LESSON, "softmax_cross_entropy_backward")
def grade_softmax_cross_entropy_backward(softmax_cross_entropy_backward) -> None:
    """softmax_cross_entropy_backward(z, y) -> (softmax(z) - y) / N, against losses.softmax_cross_entropy."""

    def check(case, numeric=False):
        z, y = case
        expected = losses.softmax_cross_entropy(z.copy(), y.copy())[1]
        got = call_student(softmax_cross_entropy_backward, (z.copy(), y.copy()), _text(z, y), "dL/dz = (p - y) / N")
        p = Softmax().forward(z.copy())
        hint = "dL/dz = (p - y) / N with p = softmax(z)"
        if len(z) > 1 and _resembles(got, lambda: p - y):
            hint = "this is p - y: divide by N (the loss is the mean over the batch)"
        elif _resembles(got, lambda: (y - p) / len(z)):
            hint = "the sign: dL/dz = (p - y) / N (raising the true class's score lowers the loss)"
        elif not np.isfinite(np.asarray(got, dtype=np.float64)).all():
            hint = "not finite: compute p with the row's maximum subtracted; the fused (p - y) / N never divides by p"
        compare("dL/dz", expected, got, atol=1e-12, case=_text(z, y), hint=hint)
        if numeric:
            reference = numeric_gradient(lambda zv: losses.softmax_cross_entropy(zv, y)[0], z)
            compare("dL/dz (against a numeric gradient)", reference, got, atol=1e-7, case=_text(z, y))

    check(FIXED[0], numeric=True)
    for case in FIXED[1:]:
        check(case)
    falsify(check, CASES, max_examples=30)
