"""ARN-CNN, the attention-based residual connection CNN of Kavousinejad (2024), Figure 2, layer for layer.

The network is written once, in ``ARNCNN.__init__``: the convolutional part as ``stages``, a chain of layers
and blocks (the stem ``ConvReLUPool``, attention modules, the residual block) built in Keras' creation order, then
the dense ``head``.
Everything else follows that list: ``layers`` (every plain layer, in order), ``graph`` (each layer with the
layers feeding it: ``summary``, the Keras twin in ``interop`` and the ONNX graph in ``onnx_export`` are built
from it), ``features`` (forward through the stages) and ``backward_features`` (back through them). Layer names
are the ones Keras gives (``conv2d``, ``conv2d_1``, ..., ``multiply_7``, ``add``, ``activation``, ``dense``,
``dense_1``), so weights line up 1:1 with the Keras original.
"""

from __future__ import annotations

import inspect
import json
import math
import os
import zipfile
from collections import defaultdict
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from minarn.allocator import tune_glibc_malloc
from minarn.atomic import save_npz_atomic
from minarn.layers.activations import ACTIVATIONS
from minarn.layers.attention import AttentionModule
from minarn.layers.base import Layer, SummaryRow, chain_rows, shape_str
from minarn.layers.conv import Conv2D
from minarn.layers.conv_pool import ConvReLUPool
from minarn.layers.dense import Dense
from minarn.layers.dropout import Dropout
from minarn.layers.flatten import Flatten
from minarn.layers.pool import MaxPooling2D
from minarn.layers.residual import ResidualBlock
from minarn.losses import l1_penalty, l2_penalty, softmax, softmax_cross_entropy

DENSE_ACTIVATIONS = ("gelu", "relu", "elu", "selu", "swish", "silu", "tanh", "sigmoid", "linear")
_CONFIG_KEY = "__config__"
_INPUT_NAME = "input_1"  # Keras' name of the input layer, the first row of the summary
_L = TypeVar("_L", bound=Layer)


class _KerasNames:
    """Keras' automatic names: the first ``conv2d``, then ``conv2d_1``, ``conv2d_2``, ... per layer type."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = defaultdict(int)

    def __call__(self, base: str) -> str:
        n = self.counts[base]
        self.counts[base] += 1
        return base if n == 0 else f"{base}_{n}"


class ARNCNN:
    """The ARN-CNN classifier (paper Fig. 2): 1,624,131 weights for 64x64x1 inputs and 6 classes.

    Shapes: x (N, H, W, C) float in [0, 1] (uint8 in [0, 255] is scaled for you) -> probabilities (N, K).
    Layout: conv 3x3 (32) -> pool -> 2 attention modules -> residual block (64) -> conv 3x3 (64) -> attention
    -> conv 3x3 (256) -> pool -> 4 attention modules -> conv 1x1 (125) -> flatten -> dense (256, GELU, L1/L2
    penalties) -> dropout (0.45) -> dense (K, softmax).
    ``attention=False`` / ``residual=False`` build the ablations of Table 6.
    ``expected_flat`` (not part of the config): the dense layer's input size the caller expects, checked before
    that layer (the only one whose size grows with the input) is allocated; ``load_model`` passes the stored one.
    """

    def __init__(
        self,
        num_classes: int = 6,
        input_shape: tuple[int, int, int] = (64, 64, 1),
        attention: bool = True,
        residual: bool = True,
        dense_activation: str = "gelu",
        dropout: float = 0.45,
        seed: int | None = None,
        *,
        kernel_l2: float = 0.016,
        bias_l1: float = 0.006,
        activity_l1: float = 0.006,
        dtype: Any = np.float32,
        expected_flat: int | None = None,
    ) -> None:
        if int(num_classes) != num_classes or num_classes < 2:
            raise ValueError(f"ARNCNN: num_classes must be an integer >= 2, got {num_classes!r}")
        if len(input_shape) != 3 or any(int(s) != s or s < 1 for s in input_shape):
            raise ValueError(f"ARNCNN: input_shape must be (height, width, channels), got {input_shape!r}")
        key = str(dense_activation).lower()
        if key not in DENSE_ACTIVATIONS or key not in ACTIVATIONS:
            raise ValueError(
                f"ARNCNN: dense_activation must be one of {', '.join(DENSE_ACTIVATIONS)}, got {dense_activation!r}"
            )
        self.config = dict(
            num_classes=int(num_classes),
            input_shape=tuple(int(s) for s in input_shape),
            attention=bool(attention),
            residual=bool(residual),
            dense_activation=key,
            dropout=float(dropout),
            seed=seed,
            kernel_l2=float(kernel_l2),
            bias_l1=float(bias_l1),
            activity_l1=float(activity_l1),
            dtype=np.dtype(dtype).name,
        )
        self.dtype = np.dtype(dtype)
        self.input_shape = self.config["input_shape"]
        self.num_classes = int(num_classes)
        self.kernel_l2, self.bias_l1, self.activity_l1 = float(kernel_l2), float(bias_l1), float(activity_l1)

        name = _KerasNames()
        rng = np.random.default_rng(seed)

        def next_seed() -> int:
            return int(rng.integers(2**31 - 1))

        def attention_modules(count: int, channels: int) -> list[AttentionModule]:
            if not attention:
                return []
            return [
                AttentionModule(channels, (name("conv2d"), name("conv2d"), name("multiply")),
                                (next_seed(), next_seed()), dtype)
                for _ in range(count)
            ]

        self.stages: list[Layer] = []  # the convolutional part, in order: features() runs through it

        def stage(layer: _L) -> _L:
            self.stages.append(layer)
            return layer

        C = self.input_shape[2]
        # Figure 2 in Keras' creation order, which fixes the layer names.
        self.conv_in = Conv2D(C, 32, 3, activation="relu", seed=next_seed(), dtype=dtype, name=name("conv2d"))
        self.pool_in = MaxPooling2D(2, name=name("max_pooling2d"))
        self.stem = stage(ConvReLUPool(self.conv_in, self.pool_in, name="conv_relu_pool"))  # conv_in, then pool_in
        self.stem_attention = [stage(m) for m in attention_modules(2, 32)]
        self.block = stage(ResidualBlock(32, 64, name, next_seed, attention=attention, residual=residual,
                                         dtype=dtype))
        # conv2d_5 sees the stem's output, exactly 0 wherever the image is black (ReLU of a zero-bias convolution
        # of zeros, gated): its pre-activation is then exactly 0 with im2col but +-1e-8 with Winograd's transforms,
        # and the ReLU's derivative there (0 or 1) moved 30 % of its bias gradient on MedNIST's images at
        # initialization (lesson 15's backend check). So its training forward pass stays on im2col (its gradients,
        # linear in dz, run Winograd by the size rule; so does its inference, which has no derivative to keep).
        self.block.conv1.winograd_forward = False
        self.conv_mid = stage(Conv2D(64, 64, 3, activation="relu", seed=next_seed(), dtype=dtype,
                                     name=name("conv2d")))
        self.mid_attention = [stage(m) for m in attention_modules(1, 64)]
        self.conv_deep = stage(Conv2D(64, 256, 3, activation="relu", seed=next_seed(), dtype=dtype,
                                      name=name("conv2d")))
        self.pool_deep = stage(MaxPooling2D(2, name=name("max_pooling2d")))
        self.deep_attention = [stage(m) for m in attention_modules(4, 256)]
        self.conv_out = stage(Conv2D(256, 125, 1, activation="relu", seed=next_seed(), dtype=dtype,
                                     name=name("conv2d")))
        self.flatten = Flatten(name=name("flatten"))
        try:  # the flatten size follows from the input size (3125 for 64x64)
            flat = self._rows([*self.stages, self.flatten])[-1].output_shape[1]
        except ValueError as err:
            raise ValueError(f"ARNCNN: input_shape {self.input_shape} is too small for the network: {err}") from None
        if expected_flat is not None and flat != expected_flat:
            raise ValueError(f"ARNCNN: input_shape {self.input_shape} gives {flat:,} inputs to the dense layer, "
                             f"but {expected_flat:,} were expected")
        self.dense = Dense(flat, 256, activation=key, seed=next_seed(), dtype=dtype, name=name("dense"))
        self.dropout = Dropout(dropout, seed=next_seed(), name=name("dropout"))
        self.classifier = Dense(256, num_classes, activation="softmax", seed=next_seed(), dtype=dtype,
                                name=name("dense"))
        # the dense head; logits() and backward_head() run it (the activity penalty and the fused softmax
        # cross-entropy need its inside)
        self.head: list[Layer] = [self.flatten, self.dense, self.dropout, self.classifier]
        self.last_terms: dict[str, float] = {}
        self.last_probs: np.ndarray | None = None

    # -- structure --------------------------------------------------------------------------------------
    @property
    def layers(self) -> list[Layer]:
        """Every plain layer in Keras order (the order of Figure 2); blocks are walked through."""
        return [leaf for layer in [*self.stages, *self.head] for leaf in layer.layers]

    def get_layer(self, name: str) -> Layer:
        """The layer called ``name`` (``KeyError`` listing the names when there is none)."""
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise KeyError(f"ARNCNN has no layer {name!r}; layers: {', '.join(layer.name for layer in self.layers)}")

    def _rows(self, layers: list[Layer]) -> list[SummaryRow]:
        """Summary rows of the input and of ``layers`` chained onto it."""
        shape: tuple[Any, ...] = (None, *self.input_shape)
        return [SummaryRow(_INPUT_NAME, "InputLayer", shape, 0, []), *chain_rows(layers, _INPUT_NAME, shape)]

    def graph(self) -> list[SummaryRow]:
        """The network as a graph, derived from ``stages`` and ``head``: the input, then one row per plain layer
        in Keras order (name, Keras class, output shape, parameter count, the names of the layers feeding it).
        ``summary()``, the Keras twin (``interop``) and the ONNX export (``onnx_export``) are built from it."""
        return self._rows([*self.stages, *self.head])

    def count_params(self) -> int:
        """All weights, trainable and not (1,624,131 for the default model)."""
        return sum(layer.count_params() for layer in self.layers)

    def summary(self, print_fn: Any = print) -> str:
        """The Figure 2 table: layer (type), output shape, parameter count, connected to; then the totals."""
        widths = (44, 22, 11)
        line = "_" * 120
        out = ['Model: "arn_cnn"', line,
               f" {'Layer (type)':<{widths[0]}}{'Output Shape':<{widths[1]}}{'Param #':<{widths[2]}}Connected to",
               "=" * 120]
        for name, kind, shape, params, inputs in self.graph():
            shown = f"[{shape_str(shape)}]" if kind == "InputLayer" else shape_str(shape)
            connected = "[" + ", ".join(f"'{x}[0][0]'" for x in inputs) + "]"
            out.append(f" {name + ' (' + kind + ')':<{widths[0]}}{shown:<{widths[1]}}{params:<{widths[2]},}{connected}")
        trainable = sum(a.size for a in self.parameters().values())
        total = self.count_params()
        out += ["=" * 120, f"Total params: {total:,}", f"Trainable params: {trainable:,}",
                f"Non-trainable params: {total - trainable:,}", line]
        text = "\n".join(out)
        if print_fn is not None:
            print_fn(text)
        return text

    # -- forward and backward -----------------------------------------------------------------------------
    def _prepare(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x)
        if x.ndim == 3 and self.input_shape[2] == 1 and x.shape[1:] == self.input_shape[:2]:
            x = x[..., None]
        if x.ndim != 4 or x.shape[1:] != self.input_shape:
            raise ValueError(
                f"ARNCNN: expected input of shape (N, {', '.join(map(str, self.input_shape))}), "
                f"got {shape_str(x.shape)}"
            )
        if x.dtype == np.uint8:
            return x.astype(self.dtype) / self.dtype.type(255)
        if not np.issubdtype(x.dtype, np.floating) and not np.issubdtype(x.dtype, np.integer):
            raise TypeError(f"ARNCNN: expected a numeric input, got dtype {x.dtype}")
        return x.astype(self.dtype, copy=False)

    def features(self, x: np.ndarray, training: bool = False) -> np.ndarray:
        """The convolutional part: input (N, H, W, C) -> conv2d_22's map (N, h, w, 125), the Grad-CAM layer."""
        h = x
        for layer in self.stages:
            h = layer.forward(h, training)
        return h

    def logits(self, x: np.ndarray, training: bool = False) -> np.ndarray:
        """Pre-softmax class scores (N, K). Keeps the dense layer's output for its activity penalty."""
        h = self.flatten.forward(self.features(self._prepare(x), training), training)
        self._dense_out = self.dense.forward(h, training)
        h = self.dropout.forward(self._dense_out, training)
        return self.classifier.forward_linear(h, training)

    def forward(self, x: np.ndarray, training: bool = False) -> np.ndarray:
        """Class probabilities (N, K) for one batch."""
        return softmax(self.logits(x, training))

    def backward_features(self, dfeatures: np.ndarray, input_grad: bool = True) -> np.ndarray | None:
        """Backward through the convolutional part: d(conv2d_22 output) -> d(input) (N, 64, 64, 1).
        Fills every layer's grads; with ``input_grad=False`` (training) the image gradient is skipped: None."""
        dh = dfeatures
        for layer in reversed(self.stages[1:]):
            dh = layer.backward(dh)
        return self.stem.backward(dh, input_grad)  # the stem (conv_in, pool_in) is stages[0]

    def backward_head(self, dlogits: np.ndarray, ddense_extra: np.ndarray | None = None) -> np.ndarray:
        """Backward through the dense head: d(logits) -> d(conv2d_22 output).

        ``ddense_extra`` is added to the gradient arriving at the dense(256) output (its activity penalty).
        """
        dh = self.dropout.backward(self.classifier.backward_linear(dlogits))
        if ddense_extra is not None:
            dh = dh + ddense_extra
        return self.flatten.backward(self.dense.backward(dh))

    def penalties(self, batch_size: int) -> dict[str, tuple[float, np.ndarray]]:
        """The dense(256) layer's penalties (value, gradient) for the last forward pass, as Keras adds them:
        kernel L2 0.016 * sum(w^2), bias L1 0.006 * sum(|b|), activity L1 0.006 * sum(|out|) / batch size."""
        return {
            "kernel_l2": l2_penalty(self.dense.params["kernel"], self.kernel_l2),
            "bias_l1": l1_penalty(self.dense.params["bias"], self.bias_l1),
            "activity_l1": l1_penalty(self._dense_out, self.activity_l1, batch_size=batch_size),
        }

    def loss_and_grads(self, x: np.ndarray, y_onehot: np.ndarray, class_weights: np.ndarray | None = None
                       ) -> tuple[float, dict[str, np.ndarray]]:
        """One training-mode forward and backward pass.

        Returns the loss as Keras reports it (cross-entropy, Eq. 7, plus the three penalties; the terms are
        kept in ``last_terms``, the probabilities in ``last_probs``) and the gradient of every trainable
        weight keyed ``"layer/weight"``. ``class_weights`` (K,) weight each image's cross-entropy by its
        class, as Keras' ``class_weight`` (``losses.softmax_cross_entropy``); the penalties stay as they are.
        The first call tunes glibc's allocator for the process (``minarn.allocator``; ``MINARN_MALLOC=default``
        opts out).
        """
        tune_glibc_malloc()  # once per process: freed memory is kept for the next step (minarn.allocator)
        n = len(x)
        y = np.asarray(y_onehot)
        if y.shape != (n, self.num_classes):
            raise ValueError(f"ARNCNN: expected one-hot labels of shape ({n}, {self.num_classes}), "
                             f"got {shape_str(y.shape)}")
        logits = self.logits(x, training=True)
        ce, dlogits = softmax_cross_entropy(logits, y.astype(logits.dtype, copy=False), class_weights)
        pen = self.penalties(n)
        self.last_terms = {"crossentropy": ce, **{k: v for k, (v, _) in pen.items()}}
        self.last_probs = softmax(logits)
        self.backward_features(self.backward_head(dlogits, pen["activity_l1"][1]), input_grad=False)
        grads = {f"{layer.name}/{k}": g for layer in self.layers for k, g in layer.grads.items()}
        grads[f"{self.dense.name}/kernel"] = grads[f"{self.dense.name}/kernel"] + pen["kernel_l2"][1]
        grads[f"{self.dense.name}/bias"] = grads[f"{self.dense.name}/bias"] + pen["bias_l1"][1]
        return ce + sum(v for v, _ in pen.values()), grads

    def predict(self, x: np.ndarray, batch_size: int = 64) -> np.ndarray:
        """Class probabilities (N, K) in inference mode (dropout off, batch norm on moving statistics).

        The images go through ``batch_size`` at a time, which bounds the working memory: the largest im2col
        block (conv2d_6) holds batch x 961 x 576 floats, 142 MB at 64 images but 567 MB at 256; smaller blocks
        are also faster to stream through (see benchmarks/RESULTS.md). The first call tunes glibc's allocator
        for the process (``minarn.allocator``; ``MINARN_MALLOC=default`` opts out)."""
        tune_glibc_malloc()  # once per process (minarn.allocator)
        x = np.asarray(x)
        if batch_size < 1:
            raise ValueError(f"ARNCNN.predict: batch_size must be >= 1, got {batch_size}")
        parts = [self.forward(x[i : i + batch_size], training=False) for i in range(0, len(x), batch_size)]
        return np.concatenate(parts) if parts else np.zeros((0, self.num_classes), self.dtype)

    # -- weights ------------------------------------------------------------------------------------------
    def parameters(self) -> dict[str, np.ndarray]:
        """Trainable arrays keyed ``"layer/weight"`` (the live arrays an optimizer updates in place)."""
        return {f"{layer.name}/{k}": a for layer in self.layers for k, a in layer.params.items()}

    def state_dict(self) -> dict[str, np.ndarray]:
        """Copies of all weights, batch norm moving statistics included, keyed ``"layer/weight"``."""
        out = {}
        for layer in self.layers:
            for k, a in {**layer.params, **layer.state}.items():
                out[f"{layer.name}/{k}"] = a.copy()
        return out

    def _live_weights(self) -> dict[str, np.ndarray]:
        return {f"{layer.name}/{k}": a for layer in self.layers for k, a in {**layer.params, **layer.state}.items()}

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        """Copy weights in place; a missing, extra or wrongly shaped entry raises ``ValueError`` naming it."""
        live = self._live_weights()
        missing = sorted(set(live) - set(state))
        extra = sorted(set(state) - set(live))
        if missing or extra:
            parts = (([f"missing {', '.join(missing)}"] if missing else [])
                     + ([f"unexpected {', '.join(extra)}"] if extra else []))
            raise ValueError(f"ARNCNN.load_state_dict: {'; '.join(parts)}")
        for key, target in live.items():
            value = np.asarray(state[key])
            if value.shape != target.shape:
                raise ValueError(
                    f"ARNCNN.load_state_dict: {key} has shape {value.shape}, expected {target.shape}"
                )
        for key, target in live.items():
            np.copyto(target, np.asarray(state[key]), casting="same_kind")

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write architecture options and all weights to one ``.npz`` file, atomically."""
        arrays = dict(self.state_dict())
        arrays[_CONFIG_KEY] = np.array(json.dumps(self.config))
        return save_npz_atomic(path, arrays)


_CONFIG_TYPES: dict[str, type | tuple[type, ...]] = {
    "num_classes": int, "input_shape": list, "attention": bool, "residual": bool, "dense_activation": str,
    "dropout": float, "seed": (int, type(None)), "kernel_l2": float, "bias_l1": float, "activity_l1": float,
    "dtype": str}
_REQUIRED = ("num_classes", "input_shape", "dtype")
_DTYPES = ("float32", "float64")


def _check_npz_sizes(path: Path) -> None:
    """Every ``.npy`` member of the ``.npz`` declares no more bytes (shape x item size) than it holds: numpy
    would allocate the declared size before reading (an edited header could ask for gigabytes)."""
    with zipfile.ZipFile(path) as zf:
        for info in zf.infolist():
            if not info.filename.endswith(".npy"):
                continue
            with zf.open(info) as f:
                version = np.lib.format.read_magic(f)
                read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
                shape, _, dtype = read(f)
            declared = math.prod(shape) * dtype.itemsize
            if declared > info.file_size:
                raise ValueError(f"load_model: {path}: {info.filename[:-4]} declares shape {shape} "
                                 f"({declared:,} bytes) but holds {info.file_size:,} bytes: "
                                 "the file is damaged or edited")


def _checked_config(config: Any, weights: dict[str, np.ndarray], path: Path) -> dict[str, Any]:
    """The saved configuration as ARNCNN's keyword arguments, every key and type checked, and the sizes that
    decide how much memory the model takes (classes, the dense layer's inputs) matched against the stored
    weights before anything is allocated. ValueError naming the key otherwise."""
    where = f"load_model: {path}: the model configuration"
    if not isinstance(config, dict):
        raise ValueError(f"{where} is not a JSON object")
    known = [k for k in inspect.signature(ARNCNN).parameters if k != "expected_flat"]
    unknown = sorted(set(config) - set(known), key=str)
    if unknown:
        raise ValueError(f"{where} has unknown key(s) {', '.join(map(str, unknown))}; known: {', '.join(known)}")
    missing = [k for k in _REQUIRED if k not in config]
    if missing:
        raise ValueError(f"{where} lacks {', '.join(missing)}")
    for key, kind in _CONFIG_TYPES.items():  # keys ARNCNN gains later are passed on unchecked
        value = config.get(key)
        ok = isinstance(value, kind) and not (kind in (int, float) and isinstance(value, bool))
        if key in config and not (ok or (kind is float and isinstance(value, int) and not isinstance(value, bool))):
            raise ValueError(f"{where}: {key} is {value!r}, not a {getattr(kind, '__name__', 'value of its type')}")
    shape = config["input_shape"]
    if len(shape) != 3 or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in shape):
        raise ValueError(f"{where}: input_shape is {shape!r}, not [height, width, channels] of positive integers")
    if config["dtype"] not in _DTYPES:
        raise ValueError(f"{where}: dtype is {config['dtype']!r}; a model is float32 or float64")
    dense, classifier = weights.get("dense/kernel"), weights.get("dense_1/kernel")
    if dense is None or classifier is None or dense.ndim != 2 or classifier.ndim != 2:
        raise ValueError(f"load_model: {path}: the weights dense/kernel and dense_1/kernel are missing or not 2-D")
    if config["num_classes"] != classifier.shape[1]:
        raise ValueError(f"{where}: num_classes is {config['num_classes']}, but the stored weights have "
                         f"{classifier.shape[1]} classes")
    bad = sorted(k for k, v in weights.items() if v.dtype.kind in "fc" and not np.isfinite(v).all())
    if bad:
        raise ValueError(f"load_model: {path}: the weights {', '.join(bad)} hold NaN or infinite values "
                         "(saved from a training that diverged?)")
    return {**config, "input_shape": tuple(shape), "dtype": np.dtype(config["dtype"]), "expected_flat": dense.shape[0]}


def load_model(path: str | os.PathLike[str]) -> ARNCNN:
    """Rebuild a model saved with ``ARNCNN.save`` (architecture options and weights).

    The file is checked before anything big is allocated: no array declares more bytes than it holds, the
    configuration has known keys of the right types, its class count and input size match the stored weights,
    and no weight is NaN or infinite; ValueError naming the problem otherwise. Nothing in the file is executed
    (no pickles)."""
    path = Path(path)
    try:
        _check_npz_sizes(path)
        with np.load(path, allow_pickle=False) as data:
            if _CONFIG_KEY not in data.files:
                raise ValueError(f"load_model: {path} holds no minarn model configuration ({_CONFIG_KEY!r} missing)")
            config = json.loads(str(data[_CONFIG_KEY]))
            weights = {k: data[k] for k in data.files if k != _CONFIG_KEY}
    except (OSError, EOFError, ValueError, KeyError, zipfile.BadZipFile) as err:
        if str(err).startswith("load_model"):  # already says what is wrong
            raise
        raise ValueError(f"load_model: cannot read {path} as a minarn model (.npz): {err}") from None
    try:
        model = ARNCNN(**_checked_config(config, weights, path))
        model.load_state_dict(weights)
    except ValueError as err:
        if str(err).startswith("load_model"):
            raise
        raise ValueError(f"load_model: {path}: {err}") from None
    return model
