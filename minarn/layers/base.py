"""The layer contract shared by every minarn layer, plus Keras' default initialiser.

A layer holds
- ``name``: Keras-style name (``"conv2d_5"``) so summaries and weights line up with Keras;
- ``params``: trainable arrays, updated in place by an optimizer (``{"kernel": ..., "bias": ...}``);
- ``grads``: same keys and shapes as ``params``, *overwritten* (never accumulated) by every ``backward``;
- ``state``: non-trainable arrays (batch norm's moving statistics).

``forward(x, training=False)`` keeps what ``backward`` needs (in ``_cache``); ``backward(dout)`` returns ``dx``
and fills ``grads``. ``backward`` never writes into ``dout`` or into the saved inputs.

A ``Block`` (the attention module, the residual block) is a layer made of layers: its ``params``, ``grads`` and
``state`` are its layers' arrays keyed ``"layer/weight"``, and ``layers`` lists the plain layers inside it (a
plain layer's ``layers`` is itself), so whatever walks ``layers`` recurses into blocks.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np


def _snake_case(class_name: str) -> str:
    """``MaxPooling2D`` -> ``max_pooling2d``, ``Conv2D`` -> ``conv2d``,
    ``BatchNormalization`` -> ``batch_normalization``."""
    s = re.sub(r"(?<=[a-z0-9])([A-Z])", r"_\1", class_name)
    return s.lower().replace("_2_d", "2d").replace("2_d", "2d")


def glorot_uniform(
    shape: tuple[int, ...], fan_in: int, fan_out: int, rng: np.random.Generator, dtype: Any
) -> np.ndarray:
    """Keras' default kernel initialiser: U(-limit, limit), limit = sqrt(6 / (fan_in + fan_out))."""
    limit = np.sqrt(6.0 / (fan_in + fan_out))
    return rng.uniform(-limit, limit, size=shape).astype(dtype)


def shape_str(shape: tuple[Any, ...]) -> str:
    """Shape as Keras prints it, with ``None`` for an unknown batch: ``(None, 31, 31, 32)``."""
    return "(" + ", ".join("None" if s is None else str(s) for s in shape) + ")"


class SummaryRow(NamedTuple):
    """One row of a Keras-style summary: layer name, Keras class, output shape, weight count, input layers."""

    name: str
    keras_class: str
    output_shape: tuple[Any, ...]
    params: int
    inputs: list[str]


def chain_rows(layers: Sequence[Layer], source: str, input_shape: tuple[Any, ...]) -> list[SummaryRow]:
    """Summary rows of ``layers`` applied one after the other to the output of the layer ``source``."""
    rows: list[SummaryRow] = []
    for layer in layers:
        rows += layer.summary_rows(source, input_shape)
        source, input_shape = rows[-1].name, rows[-1].output_shape
    return rows


class Layer:
    """Base class: bookkeeping, input checks and the backward-before-forward guard."""

    def __init__(self, name: str | None = None) -> None:
        self.name: str = name or _snake_case(type(self).__name__)
        self.params: dict[str, np.ndarray] = {}
        self.grads: dict[str, np.ndarray] = {}
        self.state: dict[str, np.ndarray] = {}
        self._cache: Any = None

    # -- the contract -------------------------------------------------------------------------------
    def forward(self, x: np.ndarray, training: bool = False) -> np.ndarray:
        raise NotImplementedError

    def backward(self, dout: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def compute_output_shape(self, input_shape: tuple[Any, ...]) -> tuple[Any, ...]:
        """Output shape for an input shape (batch may be ``None``); raises like ``forward`` on a bad shape."""
        return tuple(input_shape)

    @property
    def keras_class(self) -> str:
        """The Keras layer class this layer stands for, as a summary prints it (``"Conv2D"``)."""
        return type(self).__name__

    def count_params(self) -> int:
        """Number of weights, trainable and not (as Keras counts them)."""
        return int(sum(a.size for a in self.params.values()) + sum(a.size for a in self.state.values()))

    @property
    def layers(self) -> list[Layer]:
        """The plain layers this layer is made of, in Keras order: ``[self]`` (a ``Block`` lists its own)."""
        return [self]

    def summary_row(self, inputs: list[str], input_shape: Any) -> SummaryRow:
        """This layer's summary row when fed by the layers ``inputs`` (``input_shape``: one shape, or a pair)."""
        return SummaryRow(self.name, self.keras_class, self.compute_output_shape(input_shape), self.count_params(),
                          list(inputs))

    def summary_rows(self, source: str, input_shape: tuple[Any, ...]) -> list[SummaryRow]:
        """The summary rows of this layer fed by the layer ``source``, the output last (a ``Block`` gives one
        row per layer inside it)."""
        return [self.summary_row([source], input_shape)]

    def __call__(self, x: Any, training: bool = False) -> Any:
        return self.forward(x, training=training)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"

    # -- helpers for subclasses ---------------------------------------------------------------------
    def _describe(self) -> str:
        return f"{type(self).__name__} {self.name!r}"

    def _check_shape(self, shape: tuple[Any, ...], ndim: int, channels: int | None = None) -> None:
        """Raise ``ValueError`` naming this layer, the expected and the received shape."""
        channels_ok = channels is None or (len(shape) == ndim and shape[-1] == channels)
        if len(shape) != ndim or not channels_ok:
            expected = ["N"] + ["?"] * (ndim - 2) + [str(channels) if channels is not None else "C"]
            if ndim == 1:
                expected = ["N"]
            raise ValueError(
                f"{self._describe()}: expected input of shape ({', '.join(expected)}), "
                f"got {shape_str(tuple(shape))}"
            )

    def _check_input(self, x: np.ndarray, ndim: int, channels: int | None = None) -> None:
        if not isinstance(x, np.ndarray):
            raise TypeError(f"{self._describe()}: expected a numpy array, got {type(x).__name__}")
        if not np.issubdtype(x.dtype, np.floating):
            raise TypeError(f"{self._describe()}: expected a floating-point input, got dtype {x.dtype}")
        self._check_shape(x.shape, ndim, channels)

    def _saved(self) -> Any:
        """What ``forward`` kept for ``backward``; a clear error when there was no forward."""
        if self._cache is None:
            raise RuntimeError(f"{self._describe()}: backward() called before forward()")
        return self._cache

    def _check_dout(self, dout: np.ndarray, expected_shape: tuple[int, ...]) -> None:
        if dout.shape != tuple(expected_shape):
            raise ValueError(
                f"{self._describe()}: upstream gradient has shape {shape_str(dout.shape)}, "
                f"expected {shape_str(tuple(expected_shape))} (the shape of the last forward output)"
            )


class Block(Layer):
    """A layer made of layers, with the ``Layer`` contract: ``forward``, ``backward``, ``params`` / ``grads`` /
    ``state`` (its layers' live arrays, keyed ``"layer/weight"``) and ``layers`` (the plain layers inside it, in
    Keras order; a block inside a block is walked through).

    Subclasses build their layers, list them in ``sublayers`` (creation order, which fixes Keras' numbering) and
    write ``forward``, ``backward`` and ``summary_rows``; the output shape follows from ``summary_rows``.
    """

    def __init__(self, name: str | None = None) -> None:
        # Not Layer.__init__: a block holds no arrays of its own (params, grads and state are views, below).
        self.name = name or _snake_case(type(self).__name__)
        self._cache: Any = None

    @property
    def sublayers(self) -> list[Layer]:
        """The block's own layers (plain layers and blocks), in creation order."""
        raise NotImplementedError

    @property
    def layers(self) -> list[Layer]:
        return [leaf for layer in self.sublayers for leaf in layer.layers]

    def _arrays(self, kind: str) -> dict[str, np.ndarray]:
        """``{"layer/key": array}`` of every plain layer's ``params``, ``grads`` or ``state`` (``kind``)."""
        out: dict[str, np.ndarray] = {}
        for layer in self.layers:
            for key, array in getattr(layer, kind).items():
                qualified = f"{layer.name}/{key}"
                if qualified in out:
                    raise ValueError(f"{self._describe()}: two of its layers are called {layer.name!r}; "
                                     "give each layer of a block its own name")
                out[qualified] = array
        return out

    @property
    def params(self) -> dict[str, np.ndarray]:  # type: ignore[override]
        return self._arrays("params")

    @property
    def grads(self) -> dict[str, np.ndarray]:  # type: ignore[override]
        return self._arrays("grads")

    @property
    def state(self) -> dict[str, np.ndarray]:  # type: ignore[override]
        return self._arrays("state")

    def compute_output_shape(self, input_shape: tuple[Any, ...]) -> tuple[Any, ...]:
        return self.summary_rows("input", tuple(input_shape))[-1].output_shape

    def _keep_output_shape(self, out: np.ndarray) -> np.ndarray:
        """Remember the output's shape (``backward`` checks ``dout`` against it); return ``out``."""
        self._cache = out.shape
        return out

    def _check_block_dout(self, dout: np.ndarray) -> None:
        """Backward-before-forward and ``dout``'s shape, checked with the block's name."""
        self._check_dout(dout, self._saved())
