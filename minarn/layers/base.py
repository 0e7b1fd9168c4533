"""The layer contract shared by every minarn layer, plus Keras' default initialiser.

A layer holds
- ``name``: Keras-style name (``"conv2d_5"``) so summaries and weights line up with Keras;
- ``params``: trainable arrays, updated in place by an optimizer (``{"kernel": ..., "bias": ...}``);
- ``grads``: same keys and shapes as ``params``, *overwritten* (never accumulated) by every ``backward``;
- ``state``: non-trainable arrays (batch norm's moving statistics).

``forward(x, training=False)`` keeps what ``backward`` needs; ``backward(dout)`` returns ``dx`` and fills
``grads``. ``backward`` never writes into ``dout`` or into the saved inputs.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np


def _snake_case(class_name: str) -> str:
    """``MaxPooling2D`` -> ``max_pooling2d``, ``Conv2D`` -> ``conv2d``, ``BatchNormalization`` -> ``batch_normalization``."""
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
