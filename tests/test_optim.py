"""Tests for minarn.optim: Adamax (paper Eq. 3-6 and Keras form), Adam, SGD, state round trips, Keras parity."""

from __future__ import annotations

import io
import os

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from minarn.optim import SGD, Adam, Adamax, Optimizer, get_optimizer

SHAPES = {"conv2d/kernel": (3, 3, 2, 4), "conv2d/bias": (4,), "dense/kernel": (5, 3)}
FAST = settings(deadline=None)  # example counts come from the profile in conftest.py (dev 15, ci 30)


def random_params(rng: np.random.Generator, dtype: type = np.float64) -> dict[str, np.ndarray]:
    return {k: rng.standard_normal(s).astype(dtype) for k, s in SHAPES.items()}


def random_grads_seq(rng: np.random.Generator, steps: int, dtype: type = np.float64) -> list[dict[str, np.ndarray]]:
    return [{k: rng.standard_normal(s).astype(dtype) for k, s in SHAPES.items()} for _ in range(steps)]


def copy(d: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {k: v.copy() for k, v in d.items()}


def make_all() -> list[Optimizer]:
    """One of each optimizer and form, with learning rates large enough for visible moves."""
    return [
        Adamax(0.01),
        Adamax(0.01, form="keras"),
        Adam(0.01),
        SGD(0.05),
        SGD(0.05, momentum=0.9),
        SGD(0.05, momentum=0.9, nesterov=True),
    ]


ALL_IDS = ["adamax-paper", "adamax-keras", "adam", "sgd", "sgd-momentum", "sgd-nesterov"]


# -- Adamax against hand-written loops ------------------------------------------------------------------
def adamax_paper_reference(theta, grads_seq, lr, b1, b2, eps):
    """Paper Eq. 3-6, written out literally (float64)."""
    theta = theta.copy()
    m = np.zeros_like(theta)
    u = np.zeros_like(theta)
    for t, g in enumerate(grads_seq, start=1):
        m = b1 * m + (1 - b1) * g                                    # Eq. 3
        m_hat = m / (1 - b1**t)                                      # Eq. 4
        u = np.maximum(np.maximum(b2 * u, np.abs(g)), eps)           # Eq. 5
        theta = theta - lr * m_hat / u                               # Eq. 6
    return theta


def adamax_keras_reference(theta, grads_seq, lr, b1, b2, eps):
    """Keras' documented Adamax: eps added to u in the denominator, bias correction folded into lr."""
    theta = theta.copy()
    m = np.zeros_like(theta)
    u = np.zeros_like(theta)
    for t, g in enumerate(grads_seq, start=1):
        m = b1 * m + (1 - b1) * g
        u = np.maximum(b2 * u, np.abs(g))
        theta = theta - (lr / (1 - b1**t)) * m / (u + eps)
    return theta


@FAST
@given(seed=st.integers(0, 2**32 - 1), steps=st.integers(1, 8),
       eps=st.sampled_from([1e-7, 1e-3, 0.5]))
@example(seed=0, steps=3, eps=0.5)
def test_adamax_paper_matches_equations_3_to_6(seed, steps, eps):
    rng = np.random.default_rng(seed)
    params = random_params(rng)
    start = copy(params)
    grads_seq = random_grads_seq(rng, steps)
    opt = Adamax(learning_rate=0.01, beta_1=0.8, beta_2=0.99, epsilon=eps)  # non-default: catches swapped betas
    for grads in grads_seq:
        opt.apply(params, grads)
    assert opt.iterations == steps
    for k in SHAPES:
        expected = adamax_paper_reference(start[k], [g[k] for g in grads_seq], 0.01, 0.8, 0.99, eps)
        np.testing.assert_allclose(params[k], expected, rtol=1e-12, atol=1e-15)


@FAST
@given(seed=st.integers(0, 2**32 - 1), steps=st.integers(1, 8),
       eps=st.sampled_from([1e-7, 1e-3, 0.5]))
@example(seed=0, steps=3, eps=0.5)
def test_adamax_keras_form_matches_its_formula(seed, steps, eps):
    rng = np.random.default_rng(seed)
    params = random_params(rng)
    start = copy(params)
    grads_seq = random_grads_seq(rng, steps)
    opt = Adamax(learning_rate=0.01, beta_1=0.8, beta_2=0.99, epsilon=eps, form="keras")
    for grads in grads_seq:
        opt.apply(params, grads)
    for k in SHAPES:
        expected = adamax_keras_reference(start[k], [g[k] for g in grads_seq], 0.01, 0.8, 0.99, eps)
        np.testing.assert_allclose(params[k], expected, rtol=1e-12, atol=1e-15)


def test_adamax_forms_differ_where_gradients_are_zero():
    """eps inside the max (paper Eq. 5) vs eps in the denominator (Keras): visible once a gradient is 0."""
    lr, b1, b2, eps = 0.01, 0.9, 0.999, 1e-3
    paper, keras_form = Adamax(lr, b1, b2, eps), Adamax(lr, b1, b2, eps, form="keras")
    p_paper, p_keras = {"w": np.ones(3)}, {"w": np.ones(3)}

    # Step 1, g = 0: nobody moves (and nobody divides 0 by 0), but the u slots differ.
    zero = {"w": np.zeros(3)}
    paper.apply(p_paper, zero)
    keras_form.apply(p_keras, zero)
    np.testing.assert_array_equal(p_paper["w"], 1.0)
    np.testing.assert_array_equal(p_keras["w"], 1.0)
    np.testing.assert_array_equal(paper.state_dict()["u/w"], eps)       # floored at eps
    np.testing.assert_array_equal(keras_form.state_dict()["u/w"], 0.0)  # no floor

    # Step 2, small g (|g| < eps): the paper divides by eps, Keras by |g| + eps.
    g = np.array([eps / 2, -eps / 4, 0.0])
    paper.apply(p_paper, {"w": g})
    keras_form.apply(p_keras, {"w": g})
    m = (1 - b1) * g
    step_paper = lr * (m / (1 - b1**2)) / np.maximum(np.maximum(b2 * eps, np.abs(g)), eps)
    step_keras = lr / (1 - b1**2) * m / (np.abs(g) + eps)
    np.testing.assert_allclose(1.0 - p_paper["w"], step_paper, rtol=1e-12, atol=0)
    np.testing.assert_allclose(1.0 - p_keras["w"], step_keras, rtol=1e-12, atol=0)
    # The two forms really move differently where g != 0 (eps/2: ratio 1.5; eps/4: 1.25) ...
    np.testing.assert_allclose(step_paper[:2] / step_keras[:2], [1.5, 1.25], rtol=1e-12)
    # ... and where the gradient stays 0 neither moves.
    assert p_paper["w"][2] == p_keras["w"][2] == 1.0


@FAST
@given(seed=st.integers(0, 2**32 - 1), scale=st.floats(1e-3, 1e3), form=st.sampled_from(["paper", "keras"]))
@example(seed=1, scale=1e-3, form="paper")
def test_adamax_invariant_to_gradient_scale_when_eps_is_zero(seed, scale, form):
    rng = np.random.default_rng(seed)
    params_a = random_params(rng)
    params_b = copy(params_a)
    grads_seq = random_grads_seq(rng, 5)
    opt_a = Adamax(0.01, epsilon=0.0, form=form)
    opt_b = Adamax(0.01, epsilon=0.0, form=form)
    for grads in grads_seq:
        opt_a.apply(params_a, grads)
        opt_b.apply(params_b, {k: scale * g for k, g in grads.items()})
    for k in SHAPES:
        np.testing.assert_allclose(params_b[k], params_a[k], rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_adamax_paper_first_step_is_lr_times_sign_of_g(dtype):
    rng = np.random.default_rng(3)
    lr, eps = 0.001, 1e-7
    g = rng.standard_normal(200).astype(dtype)
    g[:50] *= dtype(1e-5)  # small but still above eps
    params = {"w": np.zeros(200, dtype=dtype)}
    Adamax(lr, epsilon=eps).apply(params, {"w": g})
    tol = 4 * np.finfo(dtype).eps
    np.testing.assert_allclose(params["w"], -lr * np.sign(g), rtol=tol, atol=0)
    # Where |g| < eps the step is lr * g / eps instead (u is floored at eps), so smaller than lr.
    tiny = np.array([eps / 10, -eps / 2], dtype=dtype)
    params = {"w": np.zeros(2, dtype=dtype)}
    Adamax(lr, epsilon=eps).apply(params, {"w": tiny})
    np.testing.assert_allclose(params["w"], -lr * tiny / dtype(eps), rtol=1e-5)


# -- SGD ------------------------------------------------------------------------------------------------
QUAD_A = np.array([0.5, 1.0, 2.0, 5.0, 10.0])  # curvatures of f(x) = 0.5 * sum(a * (x - c)^2)
QUAD_C = np.array([1.0, -2.0, 0.5, 3.0, -1.0])


def quad_loss(x: np.ndarray) -> float:
    return float(0.5 * np.sum(QUAD_A * (x - QUAD_C) ** 2))


def quad_grad(x: np.ndarray) -> np.ndarray:
    return QUAD_A * (x - QUAD_C)


def test_sgd_plain_on_quadratic_matches_closed_form():
    lr, steps = 0.05, 30
    x0 = np.zeros(5)
    params = {"x": x0.copy()}
    opt = SGD(lr)
    for _ in range(steps):
        opt.apply(params, {"x": quad_grad(params["x"])})
    # x_t - c = (1 - lr * a)^t (x_0 - c)
    expected = QUAD_C + (1 - lr * QUAD_A) ** steps * (x0 - QUAD_C)
    np.testing.assert_allclose(params["x"], expected, rtol=1e-12, atol=1e-14)
    assert opt.state_dict().keys() == {"name", "learning_rate", "iterations", "momentum", "nesterov"}


@pytest.mark.parametrize("nesterov", [False, True])
def test_sgd_momentum_on_quadratic_matches_recurrence(nesterov):
    lr, mu, steps = 0.02, 0.9, 40
    params = {"x": np.zeros(5)}
    opt = SGD(lr, momentum=mu, nesterov=nesterov)
    x, v = np.zeros(5), np.zeros(5)
    for _ in range(steps):
        g = quad_grad(x)
        opt.apply(params, {"x": quad_grad(params["x"])})
        v = mu * v - lr * g          # Keras' velocity
        x = x + (mu * v - lr * g if nesterov else v)
    np.testing.assert_allclose(params["x"], x, rtol=1e-12, atol=1e-14)


def test_sgd_momentum_and_nesterov_flags_change_the_path():
    finals = []
    for kwargs in [{}, {"momentum": 0.9}, {"momentum": 0.9, "nesterov": True}]:
        params = {"x": np.zeros(5)}
        opt = SGD(0.02, **kwargs)
        for _ in range(5):
            opt.apply(params, {"x": quad_grad(params["x"])})
        finals.append(params["x"])
    assert not np.allclose(finals[0], finals[1])
    assert not np.allclose(finals[1], finals[2])


# -- Adam -----------------------------------------------------------------------------------------------
def test_adam_first_step_is_bias_corrected():
    """Without bias correction the first step would be (1-b1)/sqrt(1-b2) ~ 3.16 times lr; with it, lr."""
    g = np.random.default_rng(5).standard_normal(100)
    params = {"w": np.zeros(100)}
    Adam(0.001, epsilon=0.0).apply(params, {"w": g})
    np.testing.assert_allclose(params["w"], -0.001 * np.sign(g), rtol=1e-12, atol=0)


@FAST
@given(seed=st.integers(0, 2**32 - 1), steps=st.integers(1, 8), eps=st.sampled_from([0.0, 1e-7, 0.1]))
@example(seed=0, steps=5, eps=0.1)
def test_adam_matches_bias_corrected_formula(seed, steps, eps):
    rng = np.random.default_rng(seed)
    params = random_params(rng)
    start = copy(params)
    grads_seq = random_grads_seq(rng, steps)
    lr, b1, b2 = 0.01, 0.8, 0.99
    opt = Adam(lr, b1, b2, eps)
    for grads in grads_seq:
        opt.apply(params, grads)
    for k in SHAPES:
        theta, m, v = start[k].copy(), np.zeros(SHAPES[k]), np.zeros(SHAPES[k])
        for t, gs in enumerate(grads_seq, start=1):
            g = gs[k]
            m = b1 * m + (1 - b1) * g
            v = b2 * v + (1 - b2) * g**2
            m_hat, v_hat = m / (1 - b1**t), v / (1 - b2**t)
            # Keras' epsilon is Kingma & Ba's "epsilon hat": it is scaled by sqrt(1 - b2**t) here.
            theta = theta - lr * m_hat / (np.sqrt(v_hat) + eps / np.sqrt(1 - b2**t))
        np.testing.assert_allclose(params[k], theta, rtol=1e-10, atol=1e-13)


# -- all optimizers ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "opt",
    [Adamax(0.05), Adamax(0.05, form="keras"), Adam(0.05), SGD(0.05), SGD(0.02, momentum=0.9),
     SGD(0.02, momentum=0.9, nesterov=True)],
    ids=ALL_IDS,
)
def test_optimizers_minimise_a_convex_quadratic(opt):
    params = {"x": np.zeros(5)}
    start = quad_loss(params["x"])
    for step in range(600):
        if step in (300, 450):
            opt.learning_rate = opt.learning_rate / 10  # adaptive methods hover at ~lr from the optimum
        opt.apply(params, {"x": quad_grad(params["x"])})
    assert quad_loss(params["x"]) < 1e-6 * start
    np.testing.assert_allclose(params["x"], QUAD_C, atol=2e-3)


@pytest.mark.parametrize("idx", range(len(ALL_IDS)), ids=ALL_IDS)
def test_state_dict_round_trip_continues_bit_for_bit(idx):
    rng = np.random.default_rng(11)
    params = random_params(rng, np.float32)
    grads_seq = random_grads_seq(rng, 10, np.float32)

    straight = make_all()[idx]
    params_straight = copy(params)
    for i, grads in enumerate(grads_seq):
        if i == 3:
            straight.learning_rate = straight.learning_rate * 0.5
        straight.apply(params_straight, grads)

    first = make_all()[idx]
    params_first = copy(params)
    for i, grads in enumerate(grads_seq[:5]):
        if i == 3:
            first.learning_rate = first.learning_rate * 0.5
        first.apply(params_first, grads)
    buf = io.BytesIO()
    np.savez(buf, **first.state_dict())
    buf.seek(0)
    with np.load(buf, allow_pickle=False) as saved:
        loaded = {k: saved[k] for k in saved.files}
    resumed = make_all()[idx]  # fresh: default lr, iterations 0, no slots
    resumed.load_state_dict(loaded)
    assert resumed.iterations == 5
    assert resumed.learning_rate == first.learning_rate
    params_resumed = copy(params_first)
    for grads in grads_seq[5:]:
        resumed.apply(params_resumed, grads)
    for k in SHAPES:
        np.testing.assert_array_equal(params_resumed[k], params_straight[k])
        assert params_resumed[k].dtype == np.float32
    assert resumed.iterations == straight.iterations == 10


def test_state_dict_contents_and_load_errors():
    rng = np.random.default_rng(0)
    params = random_params(rng, np.float32)
    opt = Adamax(0.002, beta_1=0.85, form="keras")
    opt.apply(params, random_grads_seq(rng, 1, np.float32)[0])
    state = opt.state_dict()
    assert state["name"] == "adamax" and state["form"] == "keras"
    assert state["learning_rate"] == 0.002 and state["iterations"] == 1 and state["beta_1"] == 0.85
    assert {"beta_2", "epsilon"} <= state.keys()
    for k in SHAPES:
        assert state[f"m/{k}"].shape == SHAPES[k] and state[f"u/{k}"].dtype == np.float32
    # A copy, not a view of the live slots.
    state["m/conv2d/bias"][...] = 123.0
    assert not np.any(opt.state_dict()["m/conv2d/bias"] == 123.0)
    # Hyperparameters come back from the state.
    other = Adamax()
    other.load_state_dict(opt.state_dict())
    assert (other.form, other.beta_1, other.learning_rate) == ("keras", 0.85, 0.002)

    with pytest.raises(ValueError, match="adam"):
        Adam().load_state_dict(opt.state_dict())
    with pytest.raises(ValueError, match="unknown entry 'w/conv2d/bias'"):
        Adamax().load_state_dict({**opt.state_dict(), "w/conv2d/bias": np.zeros(4)})
    bad = opt.state_dict()
    del bad["iterations"]
    with pytest.raises(KeyError, match="iterations"):
        Adamax().load_state_dict(bad)
    # A loaded slot whose shape no longer fits its parameter is caught at the next apply.
    wrong = {**opt.state_dict(), "m/conv2d/bias": np.zeros(5, np.float32)}
    fresh = Adamax()
    fresh.load_state_dict(wrong)
    with pytest.raises(ValueError, match="m/conv2d/bias"):
        fresh.apply(params, {k: np.zeros_like(v) for k, v in params.items()})


@pytest.mark.parametrize("make", [lambda: Adamax(0.01), lambda: Adamax(0.01, form="keras"), lambda: Adam(0.01),
                                  lambda: SGD(0.01)], ids=["adamax-paper", "adamax-keras", "adam", "sgd"])
def test_learning_rate_setter_takes_effect(make):
    rng = np.random.default_rng(2)
    params = random_params(rng)
    grads_seq = random_grads_seq(rng, 4)
    a, b = make(), make()
    pa, pb = copy(params), copy(params)
    for grads in grads_seq[:3]:
        a.apply(pa, grads)
        b.apply(pb, grads)
    before = copy(pa)
    b.learning_rate = 0.03
    assert b.learning_rate == 0.03 and isinstance(b.learning_rate, float)
    a.apply(pa, grads_seq[3])
    b.apply(pb, grads_seq[3])
    for k in SHAPES:  # the new step is linear in lr given the same state
        np.testing.assert_allclose(pb[k] - before[k], 3.0 * (pa[k] - before[k]), rtol=1e-9, atol=1e-15)


@pytest.mark.parametrize("bad", [0.0, -1e-3, float("nan"), float("inf")])
def test_learning_rate_must_be_positive_and_finite(bad):
    with pytest.raises(ValueError, match="learning_rate"):
        Adamax(learning_rate=bad)
    opt = SGD()
    with pytest.raises(ValueError, match="learning_rate"):
        opt.learning_rate = bad
    assert opt.learning_rate == 0.01


def test_hyperparameter_validation():
    with pytest.raises(ValueError, match="form"):
        Adamax(form="Paper")
    with pytest.raises(ValueError, match="beta_1"):
        Adamax(beta_1=1.0)
    with pytest.raises(ValueError, match="beta_2"):
        Adam(beta_2=-0.1)
    with pytest.raises(ValueError, match="epsilon"):
        Adamax(epsilon=-1e-7)
    with pytest.raises(ValueError, match="momentum"):
        SGD(momentum=1.5)


@pytest.mark.parametrize("idx", range(len(ALL_IDS)), ids=ALL_IDS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_updates_in_place_and_keep_dtype(idx, dtype):
    rng = np.random.default_rng(4)
    opt = make_all()[idx]
    # A parameter that is a view into a bigger buffer, as a layer's weights may be: only in-place writes reach it.
    buffer = rng.standard_normal(20).astype(dtype)
    params = {"a/kernel": buffer[:12].reshape(3, 4), "a/bias": buffer[12:]}
    ids = {k: id(v) for k, v in params.items()}
    start = buffer.copy()
    for _ in range(3):
        # float64 gradients for a float32 parameter are cast, never the other way round
        opt.apply(params, {"a/kernel": rng.standard_normal((3, 4)), "a/bias": rng.standard_normal(8)})
    assert {k: id(v) for k, v in params.items()} == ids
    assert not np.array_equal(buffer, start)
    for k, v in params.items():
        assert v.dtype == dtype
        for slot_key, slot in opt.state_dict().items():
            if slot_key.endswith("/" + k):
                assert slot.dtype == dtype


def test_float32_run_tracks_float64_run():
    rng = np.random.default_rng(9)
    params64 = random_params(rng)
    params32 = {k: v.astype(np.float32) for k, v in params64.items()}
    opt64, opt32 = Adamax(0.01), Adamax(0.01)
    for grads in random_grads_seq(rng, 20):
        opt64.apply(params64, grads)
        opt32.apply(params32, {k: g.astype(np.float32) for k, g in grads.items()})
    for k in SHAPES:
        np.testing.assert_allclose(params32[k], params64[k], rtol=0, atol=1e-5)


def test_mismatched_keys_and_shapes_raise_and_change_nothing():
    rng = np.random.default_rng(6)
    params = random_params(rng)
    grads = random_grads_seq(rng, 1)[0]
    opt = Adamax(0.01)
    start = copy(params)

    missing = {k: v for k, v in grads.items() if k != "conv2d/bias"}
    with pytest.raises(KeyError, match="conv2d/bias"):
        opt.apply(params, missing)
    with pytest.raises(KeyError, match="dense/bias"):
        opt.apply(params, {**grads, "dense/bias": np.zeros(3)})
    with pytest.raises(ValueError, match=r"dense/kernel.*\(3, 5\).*\(5, 3\)"):
        opt.apply(params, {**grads, "dense/kernel": np.zeros((3, 5))})
    with pytest.raises(TypeError, match="conv2d/bias"):
        opt.apply({**params, "conv2d/bias": [0.0] * 4}, grads)
    with pytest.raises(TypeError, match="conv2d/bias"):
        opt.apply({**params, "conv2d/bias": np.zeros(4, dtype=np.int64)}, grads)

    # Checked before anything changed: params, step counter and state untouched.
    for k in SHAPES:
        np.testing.assert_array_equal(params[k], start[k])
    assert opt.iterations == 0
    assert set(opt.state_dict()) == {"name", "learning_rate", "iterations", "beta_1", "beta_2", "epsilon", "form"}


def test_get_optimizer():
    opt = get_optimizer("adamax", 0.002)
    assert isinstance(opt, Adamax) and opt.learning_rate == 0.002 and opt.form == "paper"
    assert isinstance(get_optimizer("Adam", 0.01), Adam)
    sgd = get_optimizer("sgd", 0.1, momentum=0.9)
    assert isinstance(sgd, SGD) and sgd.momentum == 0.9
    assert get_optimizer("adamax", None).learning_rate == 0.001
    assert get_optimizer("adamax", 0.001, form="keras").form == "keras"
    with pytest.raises(ValueError, match="rmsprop"):
        get_optimizer("rmsprop", 0.001)


def test_defaults_follow_the_paper_and_keras():
    opt = Adamax()
    assert (opt.learning_rate, opt.beta_1, opt.beta_2, opt.epsilon, opt.form) == (0.001, 0.9, 0.999, 1e-7, "paper")
    adam = Adam()
    assert (adam.learning_rate, adam.beta_1, adam.beta_2, adam.epsilon) == (0.001, 0.9, 0.999, 1e-7)
    sgd = SGD()
    assert (sgd.learning_rate, sgd.momentum, sgd.nesterov) == (0.01, 0.0, False)


# -- Keras cross-checks (skipped without keras) -------------------------------------------------------
KERAS_CASES = {
    "adamax": (lambda: Adamax(0.01, form="keras"), lambda k: k.optimizers.Adamax(0.01)),
    "adamax-betas": (lambda: Adamax(0.003, 0.8, 0.99, 1e-4, form="keras"),
                     lambda k: k.optimizers.Adamax(0.003, beta_1=0.8, beta_2=0.99, epsilon=1e-4)),
    "adam": (lambda: Adam(0.01), lambda k: k.optimizers.Adam(0.01)),
    "sgd": (lambda: SGD(0.05), lambda k: k.optimizers.SGD(0.05)),
    "sgd-momentum": (lambda: SGD(0.05, momentum=0.9), lambda k: k.optimizers.SGD(0.05, momentum=0.9)),
    "sgd-nesterov": (lambda: SGD(0.05, momentum=0.9, nesterov=True),
                     lambda k: k.optimizers.SGD(0.05, momentum=0.9, nesterov=True)),
}


@pytest.mark.keras
@pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")  # inside TF, NumPy 2
@pytest.mark.parametrize("case", list(KERAS_CASES))
def test_matches_keras_optimizers_float32(case):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    keras = pytest.importorskip("keras")
    make_ours, make_theirs = KERAS_CASES[case]
    rng = np.random.default_rng(21)
    params = random_params(rng, np.float32)
    variables = [keras.Variable(v.copy(), dtype="float32") for v in params.values()]
    ours, theirs = make_ours(), make_theirs(keras)
    for step in range(12):
        grads = {k: rng.standard_normal(s).astype(np.float32) for k, s in SHAPES.items()}
        if step == 4:
            grads["conv2d/bias"][:] = 0.0  # zero gradients exercise the eps placement
        if step == 8:  # a learning-rate cut, as the epoch-end controller makes
            ours.learning_rate = ours.learning_rate * 0.5
            theirs.learning_rate = ours.learning_rate
        ours.apply(params, grads)
        theirs.apply([keras.ops.convert_to_tensor(g) for g in grads.values()], variables)
        for (k, p), var in zip(params.items(), variables):
            theirs_value = keras.ops.convert_to_numpy(var.value)
            assert p.dtype == np.float32
            np.testing.assert_allclose(p, theirs_value, rtol=0, atol=1e-6, err_msg=f"{case} step {step} {k}")
    assert ours.iterations == int(keras.ops.convert_to_numpy(theirs.iterations)) == 12
