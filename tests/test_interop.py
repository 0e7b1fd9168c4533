"""minarn.interop without Keras: lazy import, the install hint, and weight mapping on Keras-like stand-ins.

The stand-ins below have exactly the interface interop reads from a Keras model (``layers``, ``inputs``;
per layer ``name``, ``weights``, ``get_config()``, ``units``, ``rate``, ``dtype``, ``compute_dtype``; per
weight ``path`` (Keras 3) or ``name`` (``"conv2d/kernel:0"``, tf.keras 2), ``shape``, ``dtype``,
``numpy()``, ``assign()``), so the mapping logic is tested on machines without Keras. The real-Keras
checks are in ``test_keras_crosscheck.py``.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from minarn import ARNCNN, interop

SMALL = (28, 28, 1)  # the smallest square input the network accepts is 26x26: cheap models


def small_model(seed: int = 0, **options) -> ARNCNN:
    model = ARNCNN(input_shape=SMALL, seed=seed, **options)
    rng = np.random.default_rng(seed)
    for layer in model.layers:  # give biases and BN statistics non-default values
        for key, value in {**layer.params, **layer.state}.items():
            if key != "kernel":
                value += rng.uniform(0.1, 0.3, value.shape).astype(value.dtype)
    return model


class FakeWeight:
    def __init__(self, path: str, value: np.ndarray, style: str = "keras3") -> None:
        self._value = np.array(value)
        if style == "keras3":
            self.path, self.name = path, path.split("/")[-1]
        else:  # tf.keras 2: no .path, the name carries the layer and a ":0"
            self.name = path + ":0"
        self.assigned = 0

    @property
    def shape(self) -> tuple[int, ...]:
        return self._value.shape

    @property
    def dtype(self) -> str:
        return self._value.dtype.name

    def numpy(self) -> np.ndarray:
        return self._value.copy()

    def assign(self, value: np.ndarray) -> None:
        value = np.asarray(value)
        assert value.shape == self._value.shape and value.dtype == self._value.dtype
        self._value[...] = value
        self.assigned += 1


class FakeLayer:
    dtype = "float32"
    compute_dtype = "float32"

    def __init__(self, name: str, config: dict, weights: list[FakeWeight]) -> None:
        self.name, self._config, self.weights = name, {"name": name, **config}, weights
        for key in ("units", "rate"):
            if key in config:
                setattr(self, key, config[key])

    def get_config(self) -> dict:
        return dict(self._config)


_KINDS: dict[str, type] = {}


def fake_layer(kind: str, name: str, config: dict, weights: list[FakeWeight] | None = None) -> FakeLayer:
    cls = _KINDS.setdefault(kind, type(kind, (FakeLayer,), {}))  # interop looks at the class name
    return cls(name, config, weights or [])


class FakeTensor:
    def __init__(self, shape: tuple) -> None:
        self.shape = shape


class FakeModel:
    def __init__(self, layers: list[FakeLayer], input_shape: tuple) -> None:
        self.layers = layers
        self.inputs = [FakeTensor((None, *input_shape))]

    def get_layer(self, name: str) -> FakeLayer:
        return next(layer for layer in self.layers if layer.name == name)


def regularizer(kind: str, **factors: float) -> dict:
    return {"module": "keras.regularizers", "class_name": kind, "config": factors, "registered_name": None}


def fake_keras(model: ARNCNN, style: str = "keras3") -> FakeModel:
    """A Keras-like twin of ``model`` with Keras 3's config format and a copy of its weights."""
    layers = [fake_layer("InputLayer", "input_1", {})]
    for layer in model.layers:
        kind = {"ReLU": "Activation"}.get(type(layer).__name__, type(layer).__name__)
        config: dict = {}
        if kind in ("Conv2D", "Dense"):
            config["activation"] = layer.activation_name or "linear"
        if kind == "Conv2D":
            config.update(filters=layer.filters, kernel_size=tuple(layer.kernel_size),
                          strides=(layer.strides,) * 2, padding=layer.padding)
        elif kind == "Dense":
            config["units"] = layer.units
        elif kind == "BatchNormalization":
            config.update(momentum=layer.momentum, epsilon=layer.epsilon)
        elif kind == "MaxPooling2D":
            config.update(pool_size=(layer.pool_size,) * 2, strides=(layer.strides,) * 2, padding="valid")
        elif kind == "Dropout":
            config["rate"] = layer.rate
        if layer is model.dense:  # Keras 3 keeps L1 factors rounded to float32 (0.006000000052154064)
            config.update(
                kernel_regularizer=regularizer("L2", l2=model.kernel_l2),
                bias_regularizer=regularizer("L1", l1=float(np.float32(model.bias_l1))),
                activity_regularizer=regularizer("L1", l1=float(np.float32(model.activity_l1))),
            )
        weights = [FakeWeight(f"{layer.name}/{k}", v, style) for k, v in {**layer.params, **layer.state}.items()]
        layers.append(fake_layer(kind, layer.name, config, weights))
    return FakeModel(layers, model.input_shape)


# ----------------------------------------------------------------------------------------------------------
# Keras is optional


def test_importing_minarn_and_interop_does_not_import_keras():
    code = ("import sys, minarn, minarn.interop; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('keras', 'tensorflow', 'tf_keras')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_building_a_keras_model_without_keras_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "keras", None)  # `import keras` now raises ImportError
    with pytest.raises(ImportError, match=r"pip install keras tensorflow"):
        interop.build_keras_model()
    with pytest.raises(ImportError, match=r"pip install keras tensorflow"):
        interop.to_keras(small_model())


def test_copying_weights_needs_no_keras(monkeypatch):
    monkeypatch.setitem(sys.modules, "keras", None)
    source = small_model(1)
    target = interop.load_keras_weights(small_model(2), fake_keras(source))
    for key, value in source.state_dict().items():
        np.testing.assert_array_equal(target.state_dict()[key], value, err_msg=key)


# ----------------------------------------------------------------------------------------------------------
# Keras -> minarn


@pytest.mark.parametrize("style", ["keras3", "tf.keras2"])
def test_keras_to_state_dict_keys_by_layer_and_weight_name(style):
    model = small_model()
    state = interop.keras_to_state_dict(fake_keras(model, style))
    expected = model.state_dict()
    assert list(state) == list(expected)  # same keys, in layer order
    assert "batch_normalization_1/moving_variance" in state and "dense_1/bias" in state
    for key, value in expected.items():
        np.testing.assert_array_equal(state[key], value, err_msg=key)
    fake_kernel = fake_keras(model, style).get_layer("conv2d").weights[0]
    assert interop.keras_to_state_dict(fake_keras(model, style))["conv2d/kernel"] is not fake_kernel._value


def test_keras_to_state_dict_rejects_unknown_and_duplicate_weights():
    fake = fake_keras(small_model())
    dense = fake.get_layer("dense")
    dense.weights.append(FakeWeight("dense/lora_kernel_a", np.zeros(3)))
    with pytest.raises(ValueError, match=r"'dense'.*dense/lora_kernel_a"):
        interop.keras_to_state_dict(fake)
    dense.weights[-1] = FakeWeight("dense/kernel", np.zeros(3))
    with pytest.raises(ValueError, match=r"two weights named 'dense/kernel'"):
        interop.keras_to_state_dict(fake)


def test_load_keras_weights_rejects_another_architecture_and_changes_nothing():
    model = small_model(3)
    before = model.state_dict()
    with pytest.raises(ValueError, match=r"not built like.*missing .*conv2d_21/bias"):
        interop.load_keras_weights(model, fake_keras(small_model(4, attention=False)))
    with pytest.raises(ValueError, match=r"dense_1/kernel has shape \(256, 4\)"):
        interop.load_keras_weights(model, fake_keras(small_model(4, num_classes=4)))
    for key, value in model.state_dict().items():
        np.testing.assert_array_equal(value, before[key], err_msg=key)


@pytest.mark.parametrize("options", [{}, {"attention": False}, {"residual": False},
                                     {"num_classes": 3, "dense_activation": "swish", "dropout": 0.2}])
def test_from_keras_infers_the_options_and_predicts_like_the_source(options):
    source = small_model(5, **options)
    model = interop.from_keras(fake_keras(source))
    drop = ("seed",)
    assert {k: v for k, v in model.config.items() if k not in drop} == {
        k: v for k, v in source.config.items() if k not in drop}
    assert model.bias_l1 == 0.006 and model.activity_l1 == 0.006  # not 0.006000000052154064
    x = np.random.default_rng(0).random((3, *SMALL)).astype(np.float32)
    np.testing.assert_array_equal(model.predict(x), source.predict(x))


def test_from_keras_reads_tf_keras2_weight_names():
    source = small_model(6)
    model = interop.from_keras(fake_keras(source, style="tf.keras2"))
    for key, value in source.state_dict().items():
        np.testing.assert_array_equal(model.state_dict()[key], value, err_msg=key)


def _edit(fake: FakeModel, layer: str, **config) -> FakeModel:
    fake.get_layer(layer)._config.update(config)
    return fake


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda f: _edit(f, "dense", kernel_regularizer=regularizer("L1L2", l1=0.01, l2=0.016)),
         r"kernel_regularizer.*only an L2"),
        (lambda f: _edit(f, "dense", activity_regularizer=regularizer("L2", l2=0.01)), r"only an L1"),
        (lambda f: _edit(f, "dense", activation="softplus"), r"dense activation 'softplus'"),
        (lambda f: _edit(f, "batch_normalization", momentum=0.9), r"'batch_normalization' has momentum=0.9"),
        (lambda f: _edit(f, "conv2d_5", padding="valid"), r"'conv2d_5' has padding='valid'"),
        (lambda f: _edit(f, "conv2d_9", activation="relu"), r"'conv2d_9' has activation='relu'"),
    ],
    ids=["l1l2-kernel", "l2-activity", "activation", "bn-momentum", "padding", "skip-activation"],
)
def test_from_keras_rejects_what_minarn_cannot_reproduce(edit, message):
    with pytest.raises(ValueError, match=message):
        interop.from_keras(edit(fake_keras(small_model(7))))


def test_from_keras_rejects_other_layer_names_and_mixed_precision():
    fake = fake_keras(small_model(8))
    fake.get_layer("conv2d").name = "conv2d_23"  # a model built second in a Keras session
    with pytest.raises(ValueError, match=r"no layer conv2d; unexpected layer conv2d_23"):
        interop.from_keras(fake)
    fake = fake_keras(small_model(8))
    fake.get_layer("dense").compute_dtype = "float16"
    with pytest.raises(ValueError, match="mixed precision"):
        interop.from_keras(fake)


# ----------------------------------------------------------------------------------------------------------
# minarn -> Keras


def test_copy_to_keras_writes_every_weight_in_the_keras_dtype():
    source, fake = small_model(9), fake_keras(small_model(10))
    assert interop.copy_to_keras(source, fake) is fake
    for layer in fake.layers:
        for weight in layer.weights:
            assert weight.assigned == 1
    state = interop.keras_to_state_dict(fake)
    for key, value in source.state_dict().items():
        np.testing.assert_array_equal(state[key], value, err_msg=key)

    wide = ARNCNN(input_shape=SMALL, seed=11, dtype=np.float64)
    interop.copy_to_keras(wide, fake)  # float64 values into float32 weights: cast
    np.testing.assert_array_equal(interop.keras_to_state_dict(fake)["dense/kernel"],
                                  wide.dense.params["kernel"].astype(np.float32))


def test_copy_to_keras_checks_everything_before_writing_anything():
    fake = fake_keras(small_model(12, residual=False))
    with pytest.raises(ValueError, match=r"lacks conv2d_22/bias, conv2d_22/kernel"):
        interop.copy_to_keras(small_model(13), fake)
    fake = fake_keras(small_model(12, num_classes=4))
    with pytest.raises(ValueError, match=r"dense_1/kernel has shape \(256, 4\) in Keras, \(256, 6\) in minarn"):
        interop.copy_to_keras(small_model(13), fake)
    assert all(w.assigned == 0 for layer in fake.layers for w in layer.weights)
