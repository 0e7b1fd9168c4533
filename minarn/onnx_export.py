"""ARN-CNN as an ONNX graph, built from minarn's NumPy weights with the ``onnx`` package alone (no framework).

The graph is Figure 2 in inference mode, node for node in Keras' layer order, built from
:meth:`ARNCNN.graph <minarn.model.ARNCNN.graph>` (each layer and the layers feeding it; nothing of the network is
restated here), each node named after its minarn layer:

- input ``image``: float32 ``(N, H, W, C)`` in [0, 1], what :meth:`ARNCNN.predict <minarn.model.ARNCNN.predict>`
  takes (``N`` free). Preprocessing, as training did: decode, convert to 8-bit grayscale (Pillow's ``L``; RGB
  for a 3-channel model), resize to ``H x W`` with nearest-neighbour sampling only when the size differs,
  divide by 255. The graph does not scale: uint8 pixels must be divided by 255 first.
- one ``Transpose`` to channels-first, then ``Conv`` (kernel ``(kh, kw, C, F)`` -> ``(F, C, kh, kw)``, "same"
  padding written out as explicit pads), ``Relu`` / ``Sigmoid``, ``MaxPool`` 2x2 (floor), ``Mul`` (attention),
  ``BatchNormalization`` on the moving statistics (epsilon 1e-3), ``Add`` (the skip);
- a ``Transpose`` back to channels-last before ``Flatten``, so the dense kernel ``(in, out)`` is used as it is
  (``Gemm``); the dense activation as ONNX operators (GELU: ``x * 0.5 * (1 + Erf(x / sqrt 2))``, Eq. 1-2;
  swish: ``x * Sigmoid(x)``); dropout is left out (inference);
- output ``probabilities``: float32 ``(N, K)``, ``Softmax`` over the classes, in the order of the metadata's
  ``class_names``.

The file sets its IR version and opset explicitly (:data:`IR_VERSION`, :data:`OPSET`): a current ``onnx``
writes a newer IR version than many ONNX Runtime builds load (ONNX Runtime 1.32 loads at most IR 14 /
opset 28); IR 8 with opset 17 loads in ONNX Runtime 1.13 and later. The model's ``metadata_props`` hold
``class_names`` and ``input_shape`` (JSON), the input, preprocessing and output in words, minarn's version and
model options, and the provenance the caller gives (:func:`file_provenance` for a ``model.npz``).

Needs the optional ``onnx`` package (``pip install 'minarn[onnx]'``); importing this module without it raises
an ``ImportError`` that says so. ``python -m minarn.export`` is the command line.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from minarn import __version__
from minarn.atomic import write_bytes_atomic
from minarn.layers.activations import SELU_ALPHA, SELU_SCALE, activation_name
from minarn.layers.base import Layer
from minarn.layers.conv import Conv2D, same_padding
from minarn.layers.dense import Dense
from minarn.layers.dropout import Dropout
from minarn.layers.flatten import Flatten
from minarn.layers.merge import Add, Multiply
from minarn.layers.norm import BatchNormalization
from minarn.layers.pool import MaxPooling2D
from minarn.model import ARNCNN
from minarn.onnx_model import PRODUCER
from minarn.predict import default_class_names

INSTALL_HINT = "pip install 'minarn[onnx]' (or only the package: pip install onnx)"
try:
    import onnx
    from onnx import TensorProto, helper, numpy_helper
except ImportError as err:  # the optional extra: say how to get it
    raise ImportError(f"minarn's ONNX export needs the onnx package; install it with: {INSTALL_HINT}") from err

__all__ = ["INPUT_NAME", "IR_VERSION", "OPSET", "OUTPUT_NAME", "PRODUCER", "build_onnx", "file_provenance",
           "to_onnx"]

IR_VERSION = 8  # ONNX IR version written into the file (onnx 1.23 would write 14)
OPSET = 17  # default-domain opset: every operator used here exists in this form since opset 13-14
INPUT_NAME = "image"
OUTPUT_NAME = "probabilities"


def _preprocessing_text(input_shape: tuple[int, int, int]) -> str:
    H, W, C = input_shape
    mode = "8-bit grayscale (Pillow mode 'L')" if C == 1 else "8-bit RGB (Pillow mode 'RGB')" if C == 3 else \
        f"{C} 8-bit channels"
    return (f"decode the image file, convert it to {mode}, resize it to {W}x{H} (width x height) with "
            f"nearest-neighbour sampling only when its size differs, divide the pixels by 255")


class _Graph:
    """The nodes and initializers (weights, float32) of the graph being built."""

    def __init__(self) -> None:
        self.nodes: list[Any] = []
        self.initializers: list[Any] = []

    def weight(self, name: str, value: np.ndarray) -> str:
        self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(value, dtype=np.float32), name))
        return name

    def node(self, op: str, inputs: Sequence[str], output: str, name: str, **attributes: Any) -> str:
        self.nodes.append(helper.make_node(op, list(inputs), [output], name=name, **attributes))
        return output


def _activation(g: _Graph, kind: str | None, x: str, name: str, out: str | None = None) -> str:
    """The activation ``kind`` (minarn's names) applied to tensor ``x``; returns the output tensor's name
    (``out``, default ``"{name}/{kind}"``: the activation fused into the layer ``name``)."""
    kind = "linear" if kind is None else kind
    out = f"{name}/{kind}" if out is None else out
    if kind == "linear":
        return x
    if kind in ("relu", "sigmoid", "tanh"):
        return g.node(kind.capitalize(), [x], out, out)
    if kind == "elu":
        return g.node("Elu", [x], out, out, alpha=1.0)
    if kind == "selu":
        return g.node("Selu", [x], out, out, alpha=SELU_ALPHA, gamma=SELU_SCALE)
    if kind in ("swish", "silu"):  # x * sigmoid(x)
        s = g.node("Sigmoid", [x], f"{out}/sigmoid", f"{out}/sigmoid")
        return g.node("Mul", [x, s], out, out)
    if kind == "gelu":  # x * Phi(x), Phi(x) = 0.5 * (1 + erf(x / sqrt(2))), as minarn computes it (Eq. 1-2)
        scaled = g.node("Div", [x, g.weight(f"{out}/sqrt2", np.array(math.sqrt(2.0)))], f"{out}/scaled",
                        f"{out}/scaled")
        erf = g.node("Erf", [scaled], f"{out}/erf", f"{out}/erf")
        one_plus = g.node("Add", [erf, g.weight(f"{out}/one", np.array(1.0))], f"{out}/one_plus", f"{out}/one_plus")
        cdf = g.node("Mul", [one_plus, g.weight(f"{out}/half", np.array(0.5))], f"{out}/cdf", f"{out}/cdf")
        return g.node("Mul", [x, cdf], out, out)
    if kind == "softmax":
        return g.node("Softmax", [x], out, out, axis=1)
    raise ValueError(f"minarn.onnx_export: no ONNX form for the activation {kind!r}")


def _conv(g: _Graph, layer: Conv2D, x: str, shape: tuple[Any, ...]) -> str:
    """Conv (+ activation) on an NCHW tensor; ``shape`` is minarn's (N, H, W, C) view of it."""
    (kh, kw), s = layer.kernel_size, layer.strides
    _, H, W, _ = shape
    (top, bottom), (left, right) = ((0, 0), (0, 0)) if layer.padding == "valid" else \
        (same_padding(H, kh, s), same_padding(W, kw, s))
    inputs = [x, g.weight(f"{layer.name}/kernel", layer.params["kernel"].transpose(3, 2, 0, 1))]
    if "bias" in layer.params:
        inputs.append(g.weight(f"{layer.name}/bias", layer.params["bias"]))
    z = g.node("Conv", inputs, f"{layer.name}/conv", layer.name, kernel_shape=[kh, kw], strides=[s, s],
               pads=[top, left, bottom, right], dilations=[1, 1], group=1)
    return _activation(g, layer.activation_name, z, layer.name)


def _pool(g: _Graph, layer: MaxPooling2D, x: str) -> str:
    p, s = layer.pool_size, layer.strides
    return g.node("MaxPool", [x], layer.name, layer.name, kernel_shape=[p, p], strides=[s, s], pads=[0, 0, 0, 0],
                  ceil_mode=0)


def _norm(g: _Graph, layer: BatchNormalization, x: str) -> str:
    """Inference-mode batch norm: (x - moving_mean) / sqrt(moving_variance + eps) * gamma + beta."""
    names = [g.weight(f"{layer.name}/{key}", values) for key, values in
             (("gamma", layer.params["gamma"]), ("beta", layer.params["beta"]),
              ("moving_mean", layer.state["moving_mean"]), ("moving_variance", layer.state["moving_variance"]))]
    return g.node("BatchNormalization", [x, *names], layer.name, layer.name, epsilon=layer.epsilon)


def _dense(g: _Graph, layer: Dense, x: str) -> str:
    z = g.node("Gemm", [x, g.weight(f"{layer.name}/kernel", layer.params["kernel"]),
                        g.weight(f"{layer.name}/bias", layer.params["bias"])], f"{layer.name}/linear", layer.name)
    return _activation(g, layer.activation_name, z, layer.name)


def _flatten(g: _Graph, layer: Flatten, x: str) -> str:
    """Flatten as minarn (and Keras) do: channels-last order, so the dense kernel's rows need no reordering."""
    nhwc = g.node("Transpose", [x], f"{layer.name}/nhwc", f"{layer.name}/nhwc", perm=[0, 2, 3, 1])
    return g.node("Flatten", [nhwc], layer.name, layer.name, axis=1)


def _layer_nodes(g: _Graph, layer: Layer, inputs: list[str], shape: tuple[Any, ...]) -> str:
    """Append the nodes of one minarn layer fed by the tensors ``inputs`` (the first of minarn shape ``shape``);
    returns its output tensor's name."""
    x = inputs[0]
    kind = activation_name(layer)
    if kind is not None:  # a stand-alone activation: its output is named after the layer
        return _activation(g, kind, x, layer.name, out=layer.name)
    if isinstance(layer, Conv2D):
        return _conv(g, layer, x, shape)
    if isinstance(layer, MaxPooling2D):
        return _pool(g, layer, x)
    if isinstance(layer, BatchNormalization):
        return _norm(g, layer, x)
    if isinstance(layer, Multiply):  # the attention mask: x * w (Fig. 3)
        return g.node("Mul", inputs, layer.name, layer.name)
    if isinstance(layer, Add):  # the skip
        return g.node("Add", inputs, layer.name, layer.name)
    if isinstance(layer, Flatten):
        return _flatten(g, layer, x)
    if isinstance(layer, Dense):
        return _dense(g, layer, x)
    if isinstance(layer, Dropout):  # identity in inference: left out
        return x
    raise ValueError(f"minarn.onnx_export: no ONNX form for {type(layer).__name__} {layer.name!r}")


def _graph_nodes(model: ARNCNN, g: _Graph) -> str:
    """Append the nodes of every row of ``model.graph()`` in its order (inference mode), each fed by the layers
    the row names; returns the name of the probabilities tensor."""
    rows = model.graph()
    layers = {layer.name: layer for layer in model.layers}
    tensors = {rows[0].name: g.node("Transpose", [INPUT_NAME], "input_nchw", "input_nchw", perm=[0, 3, 1, 2])}
    shapes = {rows[0].name: rows[0].output_shape}
    for row in rows[1:]:
        tensors[row.name] = _layer_nodes(g, layers[row.name], [tensors[name] for name in row.inputs],
                                         shapes[row.inputs[0]])
        shapes[row.name] = row.output_shape
    return tensors[rows[-1].name]


def _check_exportable(model: Any) -> None:
    if not isinstance(model, ARNCNN):
        raise TypeError(f"to_onnx: expected a minarn ARNCNN (minarn.load_model), got {type(model).__name__}")
    for key, value in model.state_dict().items():
        if not np.all(np.isfinite(value)):
            raise ValueError(f"to_onnx: weight {key} holds NaN or infinite values; the model cannot be exported")


def build_onnx(model: ARNCNN, class_names: Sequence[str] | None = None,
               provenance: Mapping[str, str] | None = None) -> onnx.ModelProto:
    """The ONNX model of ``model`` in inference mode (see the module docstring for the graph), checked.

    Parameters
    ----------
    model : ARNCNN
        Any configuration (ablations, dense activation, input size and channels); float64 weights are rounded
        to float32, the graph's precision.
    class_names : K names, the order of the output columns; default: the MedNIST names for 6 classes, else
        ``class 0``, ``class 1``, ...
    provenance : further ``metadata_props`` (string to string), e.g. :func:`file_provenance`.

    Returns
    -------
    onnx.ModelProto that ``onnx.checker.check_model(..., full_check=True)`` accepts (checked here).

    Raises
    ------
    TypeError for anything but an ARNCNN; ValueError for non-finite weights, a wrong number of class names or
    a provenance key that would overwrite one minarn sets.
    """
    _check_exportable(model)
    names = list(default_class_names(model.num_classes) if class_names is None else map(str, class_names))
    if len(names) != model.num_classes:
        raise ValueError(f"to_onnx: the model has {model.num_classes} classes, got {len(names)} class names")
    H, W, C = model.input_shape
    K = model.num_classes
    g = _Graph()
    probs = _graph_nodes(model, g)
    g.nodes.append(helper.make_node("Identity", [probs], [OUTPUT_NAME], name=OUTPUT_NAME))
    input_doc = f"float32 (N, {H}, {W}, {C}) in [0, 1], channels-last: {_preprocessing_text(model.input_shape)}"
    output_doc = f"float32 (N, {K}): class probabilities (softmax), columns in the order of class_names"
    graph = helper.make_graph(
        g.nodes, "arn_cnn",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["N", H, W, C], doc_string=input_doc)],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["N", K], doc_string=output_doc)],
        initializer=g.initializers,
        doc_string="ARN-CNN (Kavousinejad 2024, Figure 2) in inference mode: batch norm on its moving statistics, "
                   "no dropout",
    )
    proto = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION,
        producer_name=PRODUCER, producer_version=__version__, domain="org.minarn", model_version=1,
        doc_string=f"ARN-CNN exported by minarn {__version__}. Input '{INPUT_NAME}': {input_doc}. "
                   f"Output '{OUTPUT_NAME}': {output_doc}.",
    )
    config = {k: list(v) if isinstance(v, tuple) else v for k, v in model.config.items()}
    props = {
        "class_names": json.dumps(names),
        "input_shape": json.dumps([H, W, C]),
        "input": input_doc,
        "preprocessing": _preprocessing_text(model.input_shape),
        "output": output_doc,
        "minarn_version": __version__,
        "minarn_config": json.dumps(config, sort_keys=True),
    }
    clash = sorted(set(provenance or {}) & set(props))
    if clash:
        raise ValueError(f"to_onnx: provenance keys {', '.join(clash)} are set by minarn itself")
    helper.set_model_props(proto, {**props, **{str(k): str(v) for k, v in (provenance or {}).items()}})
    onnx.checker.check_model(proto, full_check=True)
    return proto


def to_onnx(model: ARNCNN, path: str | os.PathLike[str], class_names: Sequence[str] | None = None,
            provenance: Mapping[str, str] | None = None) -> Path:
    """Write ``model`` as an ONNX file (:func:`build_onnx`), atomically; returns the path.

    The folder of ``path`` must exist (``FileNotFoundError`` naming it). Same arguments and errors as
    :func:`build_onnx`; run the file with ``onnxruntime.InferenceSession(path)`` (input ``image``, float32
    (N, H, W, C) in [0, 1]; output ``probabilities``), or ``python -m minarn.predict OUT.onnx IMAGE ...``.
    """
    proto = build_onnx(model, class_names, provenance)
    return write_bytes_atomic(path, proto.SerializeToString())


def file_provenance(model_path: str | os.PathLike[str]) -> dict[str, str]:
    """Metadata tying an export to its ``model.npz``: the file's name and SHA-256, and from the run's
    ``config.json`` beside it (when there is one) the training options, data identity, versions and test score.

    Returns ``{"source": "model.npz", "source_sha256": "...", "training_run": "{...}" (JSON)}``; local paths
    are reduced to file names.
    """
    path = Path(model_path)
    out = {"source": path.name, "source_sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
    try:
        run = json.loads((path.parent / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return out
    if not isinstance(run, dict):
        return out
    options = dict(run.get("options") or {})
    for key in ("data", "out"):
        if isinstance(options.get(key), str):
            options[key] = Path(options[key]).name
    test = run.get("test") or {}
    training = {
        "options": options,
        "data_identity": run.get("data_identity"),
        "versions": run.get("versions"),
        "test": {k: test[k] for k in ("best_epoch", "images", "errors", "accuracy", "log_loss") if k in test},
    }
    out["training_run"] = json.dumps({k: v for k, v in training.items() if v}, sort_keys=True)
    return out
