"""ARN-CNN: structure of Figure 2, whole-model gradient checks, weights in and out."""

from __future__ import annotations

import numpy as np
import pytest

import minarn
from minarn.gradcheck import sample_indices
from minarn.layers import ACTIVATIONS
from minarn.model import DENSE_ACTIVATIONS

FIGURE_2_NAMES = (
    ["conv2d", "max_pooling2d", "conv2d_1", "conv2d_2", "multiply", "conv2d_3", "conv2d_4", "multiply_1",
     "conv2d_5", "batch_normalization", "conv2d_6", "batch_normalization_1", "conv2d_7", "conv2d_8",
     "multiply_2", "conv2d_9", "add", "activation", "max_pooling2d_1", "conv2d_10", "conv2d_11", "conv2d_12",
     "multiply_3", "conv2d_13", "max_pooling2d_2"]
    + [n for i in range(4) for n in (f"conv2d_{14 + 2 * i}", f"conv2d_{15 + 2 * i}", f"multiply_{4 + i}")]
    + ["conv2d_22", "flatten", "dense", "dropout", "dense_1"]
)

# (name, output shape without batch, parameters) from Figure 2.
FIGURE_2_ROWS = [
    ("conv2d", (62, 62, 32), 320), ("max_pooling2d", (31, 31, 32), 0), ("conv2d_1", (31, 31, 32), 1056),
    ("multiply_1", (31, 31, 32), 0), ("conv2d_5", (31, 31, 64), 18496), ("batch_normalization", (31, 31, 64), 256),
    ("conv2d_6", (31, 31, 64), 36928), ("conv2d_7", (31, 31, 64), 4160), ("conv2d_9", (31, 31, 64), 2112),
    ("add", (31, 31, 64), 0), ("max_pooling2d_1", (15, 15, 64), 0), ("conv2d_10", (13, 13, 64), 36928),
    ("conv2d_13", (11, 11, 256), 147712), ("max_pooling2d_2", (5, 5, 256), 0), ("conv2d_14", (5, 5, 256), 65792),
    ("conv2d_22", (5, 5, 125), 32125), ("flatten", (3125,), 0), ("dense", (256,), 800256), ("dense_1", (6,), 1542),
]

SMALL = (28, 28, 1)  # the smallest kind of input that survives every pooling and valid convolution


@pytest.fixture(scope="module")
def default_model() -> minarn.ARNCNN:
    return minarn.ARNCNN(seed=0)


def test_parameter_counts_match_figure_2(default_model: minarn.ARNCNN) -> None:
    assert default_model.count_params() == 1_624_131
    assert sum(a.size for a in default_model.parameters().values()) == 1_623_875


def test_layer_names_and_order_match_figure_2(default_model: minarn.ARNCNN) -> None:
    assert [layer.name for layer in default_model.layers] == FIGURE_2_NAMES


def test_summary_rows_match_figure_2(default_model: minarn.ARNCNN) -> None:
    text = default_model.summary(print_fn=None)
    rows = {line.split()[0]: line for line in text.splitlines() if line.startswith(" ")}
    for name, shape, params in FIGURE_2_ROWS:
        line = rows[name]
        assert "(None, " + ", ".join(map(str, shape)) + ")" in line, line
        assert f" {params:,} " in line, line
    assert "['multiply_2[0][0]', 'conv2d_9[0][0]']" in rows["add"]
    assert "['multiply_1[0][0]']" in rows["conv2d_9"]
    assert "Total params: 1,624,131" in text
    assert "Trainable params: 1,623,875" in text
    assert "Non-trainable params: 256" in text


@pytest.mark.parametrize(
    "options, removed",
    [
        (dict(attention=False), 2 * 2 * 1056 + 2 * 4160 + 2 * 4160 + 8 * 65792),
        (dict(residual=False), 2112),
        (dict(attention=False, residual=False), 2 * 2 * 1056 + 2 * 4160 + 2 * 4160 + 8 * 65792 + 2112),
    ],
)
def test_ablations_remove_exactly_their_layers(options: dict, removed: int) -> None:
    model = minarn.ARNCNN(seed=0, **options)
    names = [layer.name for layer in model.layers]
    assert model.count_params() == 1_624_131 - removed
    if not options.get("attention", True):
        assert not any(n.startswith("multiply") for n in names)
    if not options.get("residual", True):
        assert "add" not in names
    # Keras numbers layers in creation order, so an ablation renumbers the convolutions without gaps.
    convs = [n for n in names if n.startswith("conv2d")]
    assert convs == ["conv2d"] + [f"conv2d_{i}" for i in range(1, len(convs))]
    probs = model.predict(np.random.default_rng(0).random((2, 64, 64, 1), dtype=np.float32))
    assert probs.shape == (2, 6) and np.allclose(probs.sum(axis=1), 1, atol=1e-5)


def _randomize(model: minarn.ARNCNN, rng: np.random.Generator) -> None:
    """Move biases and batch-norm parameters away from their initial values (0 and 1 hide bugs)."""
    for key, a in model.parameters().items():
        if not key.endswith("kernel"):
            a += rng.normal(0, 0.1, size=a.shape).astype(a.dtype)


@pytest.mark.parametrize(
    "options", [dict(), dict(attention=False), dict(residual=False), dict(dense_activation="relu")],
    ids=["default", "no-attention", "no-residual", "relu-head"],
)
def test_whole_model_gradient_check_float64(options: dict) -> None:
    rng = np.random.default_rng(1)
    model = minarn.ARNCNN(input_shape=SMALL, seed=3, dtype=np.float64, **options)
    _randomize(model, rng)
    x = rng.random((3, *SMALL))
    y = np.eye(6)[[0, 4, 5]]

    with minarn.kernels.backend("numpy"):  # for tiny tensors NumPy beats Numba's thread start-up
        _check_model_gradients(model, x, y, rng)


def _check_model_gradients(model: minarn.ARNCNN, x: np.ndarray, y: np.ndarray, rng: np.random.Generator) -> None:
    def loss() -> float:
        model.dropout.set_generator(np.random.default_rng(7))  # the same dropout mask at every evaluation
        return model.loss_and_grads(x, y)[0]

    model.dropout.set_generator(np.random.default_rng(7))
    _, grads = model.loss_and_grads(x, y)
    grads = {k: g.copy() for k, g in grads.items()}
    params = model.parameters()
    assert set(grads) == set(params)

    def numeric(p: np.ndarray, i: tuple[int, ...], eps: float) -> float:
        original = p[i]
        p[i] = original + eps
        plus = loss()
        p[i] = original - eps
        minus = loss()
        p[i] = original
        return (plus - minus) / (2 * eps)

    checked = skipped = 0
    for key, p in params.items():
        for i in sample_indices(p.shape, 3, rng):
            estimate = numeric(p, i, 1e-6)
            # Tolerance: the loss is ~5 (mostly the L2 penalty), so float64 round-off in the numeric estimate
            # is ~1e-10 absolute; a wrong backward is off by the size of the gradient itself.
            if np.isclose(grads[key][i], estimate, rtol=1e-4, atol=5e-9):
                checked += 1
                continue
            # A second step size that disagrees with the first means a kink (a ReLU input or a max-pool tie)
            # lies within 1e-6 of this coordinate: the loss is not differentiable there, it proves nothing.
            finer = numeric(p, i, 5e-7)
            assert abs(estimate - finer) > 1e-4 * abs(estimate) + 2e-9, (key, i, grads[key][i], estimate)
            skipped += 1
    assert skipped <= checked // 10, f"{skipped} coordinates straddled a kink, only {checked} checked"


def test_loss_is_crossentropy_plus_penalties() -> None:
    rng = np.random.default_rng(0)
    model = minarn.ARNCNN(input_shape=SMALL, seed=1, dropout=0.0)
    x = rng.random((4, *SMALL), dtype=np.float32)
    y = np.eye(6, dtype=np.float32)[[1, 2, 3, 0]]
    loss, _ = model.loss_and_grads(x, y)
    terms = model.last_terms
    probs = model.last_probs
    assert np.isclose(terms["crossentropy"], -np.mean(np.log(probs[np.arange(4), [1, 2, 3, 0]])), rtol=1e-5)
    assert np.isclose(terms["kernel_l2"], 0.016 * np.sum(model.dense.params["kernel"].astype(np.float64) ** 2))
    dense_out = model.dense.forward(model.flatten.forward(model.features(x, training=True)), training=True)
    assert np.isclose(terms["activity_l1"], 0.006 * np.abs(dense_out).sum() / 4, rtol=1e-4)
    assert np.isclose(loss, sum(terms.values()))
    assert probs.dtype == np.float32


def test_predict_is_batch_size_independent_and_accepts_uint8() -> None:
    model = minarn.ARNCNN(seed=2)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(7, 64, 64, 1), dtype=np.uint8)
    a = model.predict(images, batch_size=3)
    b = model.predict(images.astype(np.float32) / 255, batch_size=256)
    assert a.shape == (7, 6) and a.dtype == np.float32
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(model.predict(images[:, :, :, 0])[0], a[0], rtol=1e-5)
    with pytest.raises(ValueError, match=r"expected input of shape \(N, 64, 64, 1\), got \(2, 32, 32, 1\)"):
        model.predict(np.zeros((2, 32, 32, 1), np.float32))


def test_same_seed_same_weights_different_seed_different() -> None:
    a, b, c = (minarn.ARNCNN(seed=s) for s in (5, 5, 6))
    for key, value in a.state_dict().items():
        np.testing.assert_array_equal(value, b.state_dict()[key])
    assert not np.array_equal(a.parameters()["conv2d_13/kernel"], c.parameters()["conv2d_13/kernel"])


def test_state_dict_round_trip_and_errors() -> None:
    src, dst = minarn.ARNCNN(seed=1), minarn.ARNCNN(seed=2)
    state = src.state_dict()
    assert "batch_normalization/moving_mean" in state and "batch_normalization_1/moving_variance" in state
    assert len(state) == len(src.parameters()) + 4
    dst.load_state_dict(state)
    x = np.random.default_rng(0).random((2, 64, 64, 1), dtype=np.float32)
    np.testing.assert_array_equal(src.predict(x), dst.predict(x))
    state["conv2d/kernel"] = state["conv2d/kernel"][..., :3]
    with pytest.raises(ValueError, match=r"conv2d/kernel has shape \(3, 3, 1, 3\), expected \(3, 3, 1, 32\)"):
        dst.load_state_dict(state)
    missing = src.state_dict()
    del missing["dense/bias"]
    with pytest.raises(ValueError, match="missing dense/bias"):
        dst.load_state_dict(missing)
    extra = {**src.state_dict(), "dense_9/kernel": np.zeros(3)}
    with pytest.raises(ValueError, match="unexpected dense_9/kernel"):
        dst.load_state_dict(extra)


def test_state_dict_is_a_copy() -> None:
    model = minarn.ARNCNN(seed=1)
    state = model.state_dict()
    state["conv2d/kernel"][:] = 0
    assert np.abs(model.parameters()["conv2d/kernel"]).sum() > 0


def test_save_and_load_model(tmp_path) -> None:
    model = minarn.ARNCNN(seed=4, attention=False, dense_activation="swish", dropout=0.3)
    x = np.random.default_rng(0).random((3, 64, 64, 1), dtype=np.float32)
    model.loss_and_grads(x, np.eye(6, dtype=np.float32)[:3])  # moves the BN moving statistics
    path = model.save(tmp_path / "m.npz")
    loaded = minarn.load_model(path)
    assert loaded.config == model.config
    np.testing.assert_array_equal(loaded.predict(x), model.predict(x))
    assert [p.name for p in tmp_path.iterdir()] == ["m.npz"]  # no temporary file left behind
    (tmp_path / "bad.npz").write_bytes(b"not a zip file")
    with pytest.raises(ValueError, match="bad.npz"):
        minarn.load_model(tmp_path / "bad.npz")


@pytest.mark.parametrize("activation", DENSE_ACTIVATIONS)
def test_dense_activations(activation: str) -> None:
    model = minarn.ARNCNN(input_shape=SMALL, seed=0, dense_activation=activation)
    assert type(model.dense.activation) is ACTIVATIONS[activation]
    probs = model.predict(np.random.default_rng(0).random((2, *SMALL), dtype=np.float32))
    assert probs.shape == (2, 6) and np.all(np.isfinite(probs))


def test_dense_activation_changes_the_output() -> None:
    x = np.random.default_rng(0).random((2, *SMALL), dtype=np.float32)
    gelu = minarn.ARNCNN(input_shape=SMALL, seed=0, dense_activation="gelu").predict(x)
    relu = minarn.ARNCNN(input_shape=SMALL, seed=0, dense_activation="relu").predict(x)
    assert not np.allclose(gelu, relu)


def test_bad_options_are_refused() -> None:
    with pytest.raises(ValueError, match="dense_activation"):
        minarn.ARNCNN(dense_activation="softplus")
    with pytest.raises(ValueError, match="too small"):
        minarn.ARNCNN(input_shape=(16, 16, 1))
    with pytest.raises(ValueError, match="num_classes"):
        minarn.ARNCNN(num_classes=1)
    model = minarn.ARNCNN(input_shape=SMALL, seed=0)
    with pytest.raises(ValueError, match=r"one-hot labels of shape \(2, 6\)"):
        model.loss_and_grads(np.zeros((2, *SMALL), np.float32), np.zeros((2, 5), np.float32))


def test_backward_features_input_gradient_is_numeric_gradient() -> None:
    """Training skips the image gradient (``input_grad=False``); asked for, it is the true dL/dx."""
    rng = np.random.default_rng(2)
    model = minarn.ARNCNN(input_shape=SMALL, seed=3, dtype=np.float64)
    x = rng.random((2, *SMALL))
    weights = rng.standard_normal(model.features(x, training=False).shape)

    def loss(inputs: np.ndarray) -> float:
        return float(np.sum(model.features(inputs, training=False) * weights))

    with minarn.kernels.backend("numpy"):
        loss(x)
        dx = model.backward_features(weights)
        model.features(x, training=False)
        assert model.backward_features(weights, input_grad=False) is None
        for i in sample_indices(x.shape, 6, rng):
            xp, xm = x.copy(), x.copy()
            xp[i] += 1e-6
            xm[i] -= 1e-6
            estimate = (loss(xp) - loss(xm)) / 2e-6
            assert np.isclose(dx[i], estimate, rtol=1e-4, atol=1e-8), (i, dx[i], estimate)
