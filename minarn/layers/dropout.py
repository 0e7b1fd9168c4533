"""Inverted dropout (Keras ``Dropout``)."""

from __future__ import annotations

from typing import Any

import numpy as np

from minarn.layers.base import Layer


class Dropout(Layer):
    """Zero each element with probability ``rate`` in training and scale the survivors by 1 / (1 - rate).

    Shapes: x (N, ...) -> out, same shape. Identity in inference (nothing to rescale: "inverted" dropout
    keeps the expected value of every element unchanged in training).
    Math: mask = [u >= rate] / (1 - rate) with u ~ U[0, 1); out = x * mask; dx = dout * mask.
    Randomness: a ``numpy.random.Generator`` (``rng``) seeded with ``seed``; each training forward draws a new
    mask from it. ``set_generator`` hands it another one (training gives every batch its own, so a resumed run
    draws the same masks).
    """

    def __init__(self, rate: float, seed: int | None = None, name: str | None = None) -> None:
        super().__init__(name)
        if not 0.0 <= rate < 1.0:
            raise ValueError(f"{self._describe()}: rate must be in [0, 1), got {rate!r}")
        self.rate = float(rate)
        self.seed = seed
        self.rng = np.random.default_rng(seed)

    def set_generator(self, rng: Any) -> None:
        """Draw the next masks from ``rng``: a ``numpy.random.Generator`` (e.g. ``default_rng([seed, epoch,
        batch])``) or anything with its ``random(shape, dtype=...)`` method (``minarn.distributed.RowsOf``)."""
        if not callable(getattr(rng, "random", None)):
            raise TypeError(f"{self._describe()}: expected a numpy.random.Generator, got {type(rng).__name__} "
                            "(make one with numpy.random.default_rng(seed))")
        self.rng = rng

    def forward(self, x: np.ndarray, training: bool = False) -> np.ndarray:
        if not isinstance(x, np.ndarray) or not np.issubdtype(x.dtype, np.floating):
            raise TypeError(f"{self._describe()}: expected a floating-point numpy array, got {type(x).__name__}")
        if not training or self.rate == 0.0:
            self._cache = (None, x.shape)
            return x
        keep = self.rng.random(x.shape, dtype=np.float64) >= self.rate
        mask = keep.astype(x.dtype) * x.dtype.type(1.0 / (1.0 - self.rate))
        self._cache = (mask, x.shape)
        return x * mask

    def backward(self, dout: np.ndarray) -> np.ndarray:
        mask, x_shape = self._saved()
        self._check_dout(dout, x_shape)
        return dout.copy() if mask is None else dout * mask
