"""Weights between minarn and Keras, both ways: for runs that outgrow minarn, and Keras models to inspect.

A minarn :class:`~minarn.model.ARNCNN` and a Keras model "built the same way" (Figure 2, same options) have the
same layer names (``conv2d`` ... ``conv2d_22``, ``batch_normalization``, ``batch_normalization_1``, ``dense``,
``dense_1``) and the same weight layouts (channels-last kernels ``(kh, kw, C, F)``, dense kernels
``(in, out)``), so weights are copied by name, ``"layer/weight"``, never by position.

- :func:`build_keras_model` builds the Keras functional model of Figure 2, layer for layer from a minarn model
  built with the same options (its ``graph()``: names, settings, connections);
- :func:`to_keras` builds it from a minarn model's options and copies the weights in: continue a run on
  Keras' GPUs or distribution strategies;
- :func:`from_keras` infers the options of a Keras model, builds the minarn twin and copies the weights in:
  inspect a Keras-trained model with minarn's Grad-CAM and lessons;
- :func:`keras_to_state_dict`, :func:`load_keras_weights` and :func:`copy_to_keras` copy weights between
  existing models.
- :func:`to_onnx` writes the model as an ONNX file for ONNX Runtime (the graph is built in
  :mod:`minarn.onnx_export`, from the weights alone, without Keras).

Keras is not a dependency of minarn: it is imported only inside the functions that build a Keras model
(``pip install keras tensorflow``). Copying weights works on any object with Keras' ``layers`` /
``weights`` interface and needs no import. Likewise ``onnx`` is imported only inside :func:`to_onnx`
(``pip install 'minarn[onnx]'``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from minarn.layers.activations import activation_name
from minarn.layers.base import Layer
from minarn.layers.conv import Conv2D
from minarn.layers.dense import Dense
from minarn.layers.dropout import Dropout
from minarn.layers.flatten import Flatten
from minarn.layers.merge import Add, Multiply
from minarn.layers.norm import BatchNormalization
from minarn.layers.pool import MaxPooling2D
from minarn.model import ARNCNN, DENSE_ACTIVATIONS

__all__ = [
    "build_keras_model",
    "copy_to_keras",
    "from_keras",
    "keras_to_state_dict",
    "load_keras_weights",
    "to_keras",
    "to_onnx",
]

# The weights a layer of the network can hold, by their Keras names (minarn uses the same names).
WEIGHT_NAMES = ("kernel", "bias", "gamma", "beta", "moving_mean", "moving_variance")
_INSTALL_HINT = "pip install keras tensorflow"


def _import_keras() -> Any:
    """``import keras``, or an ``ImportError`` that says how to install it."""
    try:
        import keras
    except ImportError as err:
        raise ImportError(
            f"minarn.interop needs Keras 3 with a backend to build Keras models; install them with: "
            f"{_INSTALL_HINT}"
        ) from err
    return keras


# ----------------------------------------------------------------------------------------------------------
# Building the Keras model


def _keras_layer(keras: Any, model: ARNCNN, layer: Layer, dtype: str) -> Any:
    """The Keras layer standing for the minarn ``layer`` of ``model``: same class, name and settings; the
    dense(256) layer also carries the model's penalties (a factor of 0 leaves that regularizer out)."""
    L, reg = keras.layers, keras.regularizers
    common = dict(name=layer.name, dtype=dtype)
    kind = activation_name(layer)
    if kind is not None:
        return L.Activation(kind, **common)
    if isinstance(layer, Conv2D):
        return L.Conv2D(layer.filters, layer.kernel_size, strides=layer.strides, padding=layer.padding,
                        activation=layer.activation_name, use_bias="bias" in layer.params, **common)
    if isinstance(layer, BatchNormalization):
        return L.BatchNormalization(momentum=layer.momentum, epsilon=layer.epsilon, **common)
    if isinstance(layer, MaxPooling2D):
        return L.MaxPooling2D(layer.pool_size, strides=layer.strides, **common)
    if isinstance(layer, Dense):
        penalties = {} if layer is not model.dense else dict(
            kernel_regularizer=reg.L2(model.kernel_l2) if model.kernel_l2 else None,
            bias_regularizer=reg.L1(model.bias_l1) if model.bias_l1 else None,
            activity_regularizer=reg.L1(model.activity_l1) if model.activity_l1 else None)
        return L.Dense(layer.units, activation=layer.activation_name, use_bias="bias" in layer.params, **penalties,
                       **common)
    if isinstance(layer, Dropout):
        return L.Dropout(layer.rate, **common)
    if isinstance(layer, (Multiply, Add, Flatten)):
        return getattr(L, layer.keras_class)(**common)
    raise ValueError(f"minarn.interop: no Keras layer for {type(layer).__name__} {layer.name!r}")


def _build(keras: Any, model: ARNCNN, dtype: str) -> Any:
    """``model`` in Keras (fresh Keras weights): one Keras layer per row of ``model.graph()``, in its order, fed
    by the layers the row names (see ``_keras_layer``). Nothing of Figure 2 is restated here: a change of the
    network in ``minarn.model`` is followed as it is (``tests/test_model.py`` checks Figure 2 itself)."""
    rows = model.graph()
    layers = {layer.name: layer for layer in model.layers}
    inputs = keras.Input(shape=model.input_shape, name=rows[0].name, dtype=dtype)
    tensors = {rows[0].name: inputs}
    for row in rows[1:]:
        fed = [tensors[name] for name in row.inputs]
        tensors[row.name] = _keras_layer(keras, model, layers[row.name], dtype)(fed if len(fed) > 1 else fed[0])
    return keras.Model(inputs, tensors[rows[-1].name], name="arn_cnn")


def build_keras_model(*, dtype: str = "float32", **options: Any) -> Any:
    """The Keras functional model of Figure 2, with exactly minarn's layer names.

    Parameters
    ----------
    **options
        :class:`~minarn.model.ARNCNN`'s options by name (``num_classes``, ``input_shape``, ``attention``,
        ``residual``, ``dense_activation``, ``dropout``, ``kernel_l2``, ``bias_l1``, ``activity_l1``), with its
        defaults for those left out. A penalty factor of 0 leaves that regularizer out.
    dtype : str
        Every layer's dtype policy ("float32", or "float64" for cross-checks without float32 rounding).

    Returns
    -------
    keras.Model
        Named ``"arn_cnn"``; input ``input_1`` of shape ``(None, *input_shape)``, output the softmax
        probabilities ``(None, num_classes)``. Weights are Keras' fresh initial values (seed them with
        ``keras.utils.set_random_seed``). BN momentum 0.99, epsilon 1e-3; the dense(256) layer carries
        ``L2(kernel_l2)``, ``L1(bias_l1)`` and the activity ``L1(activity_l1)``.

    Raises
    ------
    ImportError
        When Keras is not installed (``pip install keras tensorflow``).
    TypeError, ValueError
        For options :class:`~minarn.model.ARNCNN` does not take or rejects.
    """
    keras = _import_keras()
    twin = ARNCNN(**{"seed": 0, **options})  # only its graph is used: the Keras weights are Keras' own
    return _build(keras, twin, np.dtype(dtype).name)


def to_keras(model: ARNCNN) -> Any:
    """A Keras model built like ``model`` (from ``model.config``), holding a copy of ``model``'s weights.

    Parameters
    ----------
    model : ARNCNN
        Its weights and batch norm moving statistics are copied; the Keras layers get ``model``'s dtype.

    Returns
    -------
    keras.Model
        Predicts what ``model.predict`` does (to rounding). Compile it with
        ``keras.optimizers.Adamax`` to continue training in Keras.

    Raises
    ------
    ImportError
        When Keras is not installed (``pip install keras tensorflow``).
    """
    keras = _import_keras()
    keras_model = _build(keras, model, model.dtype.name)
    copy_to_keras(model, keras_model)
    return keras_model


# ----------------------------------------------------------------------------------------------------------
# Copying weights


def _weight_key(layer: Any, weight: Any) -> str:
    """``"layer/weight"`` for a Keras weight: the layer's name and the last part of the weight's path.

    Keras 3 gives ``weight.path == "conv2d/kernel"``; tf.keras 2 gives ``weight.name == "conv2d/kernel:0"``.
    """
    path = getattr(weight, "path", None) or getattr(weight, "name", "")
    short = str(path).split("/")[-1].split(":")[0]
    if short not in WEIGHT_NAMES:
        raise ValueError(
            f"Keras layer {layer.name!r} has a weight {path!r} that minarn does not know "
            f"(expected one of {', '.join(WEIGHT_NAMES)})"
        )
    return f"{layer.name}/{short}"


def _keras_weights(keras_model: Any) -> dict[str, Any]:
    """Every weight of ``keras_model`` (trainable or not) keyed ``"layer/weight"``."""
    out: dict[str, Any] = {}
    for layer in keras_model.layers:
        for weight in layer.weights:
            key = _weight_key(layer, weight)
            if key in out:
                raise ValueError(f"Keras model has two weights named {key!r}")
            out[key] = weight
    return out


def keras_to_state_dict(keras_model: Any) -> dict[str, np.ndarray]:
    """Copies of a Keras model's weights keyed ``"layer/weight"``, for :meth:`ARNCNN.load_state_dict`.

    Parameters
    ----------
    keras_model : keras.Model
        Built like Figure 2 (e.g. by :func:`build_keras_model`); conv and dense layers give ``kernel`` and
        ``bias``, batch norm layers ``gamma``, ``beta``, ``moving_mean`` and ``moving_variance``.

    Returns
    -------
    dict of str to np.ndarray
        ``{"conv2d/kernel": (3, 3, 1, 32) array, ..., "batch_normalization/moving_mean": (64,) array, ...}``;
        Keras' layouts are minarn's, so nothing is transposed.

    Raises
    ------
    ValueError
        For a weight whose name is not one of ``kernel``, ``bias``, ``gamma``, ``beta``, ``moving_mean``,
        ``moving_variance``, or two weights with the same ``"layer/weight"`` key.
    """
    return {key: np.array(weight.numpy()) for key, weight in _keras_weights(keras_model).items()}


def load_keras_weights(model: ARNCNN, keras_model: Any) -> ARNCNN:
    """Copy every weight of ``keras_model`` into ``model`` in place (matched by name); returns ``model``.

    Raises
    ------
    ValueError
        When the two models do not hold the same ``"layer/weight"`` entries with the same shapes (the message
        names them); ``model`` is then left unchanged.
    """
    state = keras_to_state_dict(keras_model)
    try:
        model.load_state_dict(state)
    except ValueError as err:
        raise ValueError(f"load_keras_weights: the Keras model is not built like this ARNCNN: {err}") from None
    return model


def copy_to_keras(model: ARNCNN, keras_model: Any) -> Any:
    """Copy every weight of ``model`` into ``keras_model`` in place (matched by name); returns ``keras_model``.

    Values are cast to each Keras weight's dtype. Everything is checked before anything is written.

    Raises
    ------
    ValueError
        When the two models do not hold the same ``"layer/weight"`` entries with the same shapes (the message
        names them); ``keras_model`` is then left unchanged.
    """
    state = model.state_dict()
    targets = _keras_weights(keras_model)
    missing, extra = sorted(set(state) - set(targets)), sorted(set(targets) - set(state))
    if missing or extra:
        parts = ([f"Keras model lacks {', '.join(missing)}"] if missing else []) + (
            [f"Keras model has extra {', '.join(extra)}"] if extra else [])
        raise ValueError(f"copy_to_keras: the Keras model is not built like this ARNCNN: {'; '.join(parts)}")
    for key, weight in targets.items():
        if tuple(weight.shape) != state[key].shape:
            raise ValueError(
                f"copy_to_keras: {key} has shape {tuple(weight.shape)} in Keras, {state[key].shape} in minarn"
            )
    for key, weight in targets.items():
        dtype = getattr(weight.dtype, "as_numpy_dtype", weight.dtype)  # tf.DType in tf.keras 2, str in Keras 3
        weight.assign(state[key].astype(np.dtype(dtype)))
    return keras_model


# ----------------------------------------------------------------------------------------------------------
# From Keras to minarn


def _penalty_factor(layer: Any, which: str, kind: str) -> float:
    """The ``kind`` ("l1" or "l2") factor of a Dense layer's ``which`` regularizer (0 when it has none)."""
    config = layer.get_config().get(which)
    if not config:
        return 0.0
    params = config.get("config", {}) if isinstance(config, dict) else {}
    other = "l2" if kind == "l1" else "l1"
    if float(params.get(other, 0.0) or 0.0) != 0.0 or kind not in params:
        raise ValueError(
            f"from_keras: layer {layer.name!r} has {which}={config!r}; minarn supports only "
            f"an {kind.upper()} {which.replace('_', ' ')} there"
        )
    # Keras may keep the factor rounded to float32 (0.006 -> 0.006000000052); take the shortest decimal.
    return float(np.format_float_positional(np.float32(params[kind]), unique=True, trim="0"))


def _layers_of(keras_model: Any, class_name: str) -> list[Any]:
    return [layer for layer in keras_model.layers if type(layer).__name__ == class_name]


def _infer_config(keras_model: Any) -> dict[str, Any]:
    """ARNCNN options of a Keras model built like Figure 2 (see :func:`from_keras`)."""
    dense = _layers_of(keras_model, "Dense")
    if len(dense) != 2:
        raise ValueError(f"from_keras: expected 2 Dense layers (dense, dense_1), found {len(dense)}")
    hidden, head = dense
    activation = hidden.get_config().get("activation")
    if isinstance(activation, dict):  # a serialized function object
        activation = activation.get("config", {}).get("name", activation.get("class_name"))
    if str(activation).lower() not in DENSE_ACTIVATIONS:
        raise ValueError(
            f"from_keras: dense activation {activation!r} is not supported; minarn has {', '.join(DENSE_ACTIVATIONS)}"
        )
    dtype = str(getattr(hidden, "dtype", "float32"))
    compute = str(getattr(hidden, "compute_dtype", dtype))
    if compute != dtype:
        raise ValueError(f"from_keras: mixed precision ({compute} compute, {dtype} weights) is not supported")
    dropouts = _layers_of(keras_model, "Dropout")
    inputs = getattr(keras_model, "inputs", None) or []
    if len(inputs) != 1:
        raise ValueError(f"from_keras: expected a model with one input, found {len(inputs)}")
    return {
        "num_classes": int(head.units),
        "input_shape": tuple(int(s) for s in inputs[0].shape[1:]),
        "attention": bool(_layers_of(keras_model, "Multiply")),
        "residual": bool(_layers_of(keras_model, "Add")),
        "dense_activation": str(activation).lower(),
        "dropout": float(dropouts[0].rate) if dropouts else 0.0,
        "kernel_l2": _penalty_factor(hidden, "kernel_regularizer", "l2"),
        "bias_l1": _penalty_factor(hidden, "bias_regularizer", "l1"),
        "activity_l1": _penalty_factor(hidden, "activity_regularizer", "l1"),
        "dtype": np.dtype(dtype),
    }


def _check_layers(model: ARNCNN, keras_model: Any) -> None:
    """Same layer names, and for each layer the settings that change its output; ``ValueError`` otherwise."""
    keras_layers = {layer.name: layer for layer in keras_model.layers if type(layer).__name__ != "InputLayer"}
    ours = {layer.name: layer for layer in model.layers}
    missing, extra = sorted(set(ours) - set(keras_layers)), sorted(set(keras_layers) - set(ours))
    if missing or extra:
        raise ValueError(
            "from_keras: the Keras model is not built like Figure 2 with Keras' default names: "
            + "; ".join(([f"no layer {', '.join(missing)}"] if missing else [])
                        + ([f"unexpected layer {', '.join(extra)}"] if extra else []))
        )
    for name, layer in ours.items():
        config = keras_layers[name].get_config()
        expected: dict[str, Any] = {}
        if isinstance(layer, (Conv2D, Dense)):
            expected["activation"] = layer.activation_name or "linear"
        if isinstance(layer, Conv2D):
            expected.update(kernel_size=layer.kernel_size, strides=(layer.strides, layer.strides),
                            padding=layer.padding, filters=layer.filters)
        elif isinstance(layer, BatchNormalization):
            expected.update(momentum=layer.momentum, epsilon=layer.epsilon)
        elif isinstance(layer, MaxPooling2D):
            expected.update(pool_size=(layer.pool_size,) * 2, strides=(layer.strides,) * 2, padding="valid")
        for key, want in expected.items():
            got: Any = config.get(key)  # a value of Keras' get_config(), which is untyped
            got = tuple(got) if isinstance(got, list) else got
            same = np.isclose(float(got), want, rtol=1e-6) if isinstance(want, float) else got == want
            if not same:
                raise ValueError(f"from_keras: layer {name!r} has {key}={got!r}, minarn's twin has {want!r}")


def from_keras(keras_model: Any) -> ARNCNN:
    """The minarn ARNCNN equivalent to a Keras model built like Figure 2, holding a copy of its weights.

    Options are inferred: ``attention`` if the model has a Multiply layer, ``residual`` if it has an Add
    layer, ``dense_activation``, the penalty factors and the dtype from the dense(256) layer, ``dropout``
    from the Dropout layer's rate, ``num_classes`` from the last Dense layer's units, ``input_shape`` from
    the model's input.

    Parameters
    ----------
    keras_model : keras.Model
        Layer names must be Keras' defaults for a fresh session (``conv2d`` ... ``dense_1``), as
        :func:`build_keras_model` gives them.

    Returns
    -------
    ARNCNN
        In the Keras model's dtype (float32 usually); its ``predict`` agrees with ``keras_model.predict`` to
        rounding.

    Raises
    ------
    ValueError
        When the Keras model has other layer names, settings or weights than the inferred ARNCNN (the
        message names the first difference), or a dense activation or regularizer minarn does not support.
    """
    model = ARNCNN(**_infer_config(keras_model), seed=0)
    _check_layers(model, keras_model)
    return load_keras_weights(model, keras_model)


# ----------------------------------------------------------------------------------------------------------
# To ONNX


def to_onnx(model: ARNCNN, path: str | os.PathLike[str], class_names: Sequence[str] | None = None,
            provenance: Mapping[str, str] | None = None) -> Path:
    """Write ``model`` as an ONNX file that ONNX Runtime runs with minarn's probabilities; returns the path.

    The graph takes what ``model.predict`` takes, (N, H, W, C) float32 in [0, 1] (input ``image``), and gives the
    class probabilities (N, K) (output ``probabilities``); the file's metadata holds ``class_names``,
    ``input_shape``, the preprocessing and ``provenance``. See :mod:`minarn.onnx_export` for the graph,
    :func:`minarn.onnx_export.build_onnx` for the arguments and errors.

    Raises
    ------
    ImportError
        When the ``onnx`` package is not installed (``pip install 'minarn[onnx]'``).
    """
    # the optional onnx package is imported only here, as Keras is above
    from minarn import onnx_export

    return onnx_export.to_onnx(model, path, class_names, provenance)
