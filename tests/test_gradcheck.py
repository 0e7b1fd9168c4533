"""minarn.gradcheck itself: the checker must find known gradients and must reject wrong ones."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import example, given
from strategies import SEEDS, random_dout, small_shapes, uniform

from minarn.gradcheck import check_layer, numeric_grad, rel_error, sample_indices
from minarn.layers import Dense


@given(shape=small_shapes(), seed=SEEDS)
@example(shape=(1,), seed=0)
def test_numeric_grad_of_square(shape, seed):
    rng = np.random.default_rng(seed)
    x, dout = uniform(rng, shape), random_dout(rng, shape)
    x_before = x.copy()
    grad = numeric_grad(lambda: x**2, x, dout)
    # rounding in the summed loss is ~1e-16 * size / eps per entry: compare as a whole, plus a loose per-entry bound
    assert rel_error(grad, 2 * x * dout) < 1e-8
    np.testing.assert_allclose(grad, 2 * x * dout, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(x, x_before)  # perturbations undone
    assert grad.dtype == np.float64


def test_numeric_grad_of_a_coupled_function():
    # f(x) = x * sum(x): df_i/dx_j = delta_ij * sum(x) + x_i, so d/dx sum(f * dout) = dout * sum(x) + sum(dout * x).
    rng = np.random.default_rng(1)
    x, dout = uniform(rng, (3, 4)), random_dout(rng, (3, 4))
    grad = numeric_grad(lambda: x * x.sum(), x, dout)
    np.testing.assert_allclose(grad, dout * x.sum() + np.sum(dout * x), rtol=1e-6, atol=1e-8)


def test_numeric_grad_only_at_given_indices():
    rng = np.random.default_rng(2)
    x, dout = uniform(rng, (4, 5)), random_dout(rng, (4, 5))
    idx = [(0, 0), (3, 4), (2, 1)]
    grad = numeric_grad(lambda: np.sin(x), x, dout, indices=idx)
    for i in idx:
        assert grad[i] == pytest.approx(np.cos(x[i]) * dout[i], rel=1e-6)
    mask = np.zeros(x.shape, bool)
    mask[tuple(np.array(idx).T)] = True
    assert not grad[~mask].any()


def test_rel_error():
    a = np.array([1.0, -2.0, 3.0])
    assert rel_error(a, a) == 0.0
    assert rel_error(a, a + 1e-9) < 1e-9
    assert rel_error(a, -a) == pytest.approx(1.0)
    assert rel_error(a, 1.1 * a) == pytest.approx(0.1 / 2.1)
    assert rel_error(np.zeros(3), np.zeros(3)) == 0.0  # the floor avoids 0 / 0
    assert rel_error(1e-9 * a, 1.1e-9 * a) == pytest.approx(0.1 / 2.1)  # scale-free down to tiny gradients
    with pytest.raises(ValueError, match="shape"):
        rel_error(np.zeros(3), np.zeros(4))


def test_rel_error_detects_a_wrong_gradient():
    rng = np.random.default_rng(3)
    x, dout = uniform(rng, (5, 6)), random_dout(rng, (5, 6))
    numeric = numeric_grad(lambda: x**2, x, dout)
    assert rel_error(2 * x * dout, numeric) < 1e-8
    assert rel_error(x * dout, numeric) > 0.1  # factor 2 missing
    assert rel_error(2 * x, numeric) > 0.1  # upstream gradient ignored
    wrong_one_entry = 2 * x * dout
    wrong_one_entry[2, 3] += 1.0
    assert rel_error(wrong_one_entry, numeric) > 1e-3


def test_sample_indices():
    rng = np.random.default_rng(4)
    idx = sample_indices((5, 6, 7), 20, rng)
    assert len(idx) == 20 and len(set(idx)) == 20  # distinct
    assert all(len(i) == 3 and all(0 <= i[d] < (5, 6, 7)[d] for d in range(3)) for i in idx)
    assert all(isinstance(v, int) for i in idx for v in i)
    same_seed = [sample_indices((5, 6, 7), 20, np.random.default_rng(9)) for _ in range(2)]
    assert same_seed[0] == same_seed[1]
    everything = sample_indices((2, 3), 100, rng)  # fewer coordinates than asked: all of them
    assert sorted(everything) == [(i, j) for i in range(2) for j in range(3)]


def test_check_layer_on_a_correct_layer():
    rng = np.random.default_rng(5)
    layer = Dense(4, 3, activation="tanh", seed=0, dtype=np.float64)
    errors = check_layer(layer, uniform(rng, (2, 4)), rng)
    assert set(errors) == {"x", "kernel", "bias"}
    assert max(errors.values()) < 1e-8


class _DenseWithWrongBackward(Dense):
    """Forgets the activation's derivative for the kernel gradient and halves dx."""

    def backward(self, dout):
        dx = super().backward(dout)
        x, _ = self._saved()
        self.grads["kernel"] = x.T @ dout
        return 0.5 * dx


def test_check_layer_catches_a_wrong_backward():
    rng = np.random.default_rng(6)
    layer = _DenseWithWrongBackward(4, 3, activation="tanh", seed=0, dtype=np.float64)
    errors = check_layer(layer, uniform(rng, (2, 4)), rng)
    assert errors["x"] > 0.1 and errors["kernel"] > 1e-3
    assert errors["bias"] < 1e-8  # the untouched gradient still passes
