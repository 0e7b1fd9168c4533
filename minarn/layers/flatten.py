"""Flatten every axis but the batch axis (Keras ``Flatten``)."""

from __future__ import annotations

from typing import Any

import numpy as np

from minarn.layers.base import Layer


class Flatten(Layer):
    """Shapes: x (N, d1, d2, ...) -> out (N, d1 * d2 * ...), in channels-last (row-major) order, as Keras.
    Math: a reshape; backward reshapes dout back to the input's shape."""

    def compute_output_shape(self, input_shape: tuple[Any, ...]) -> tuple[Any, ...]:
        if len(input_shape) < 2:
            self._check_shape(tuple(input_shape), 2)
        return (input_shape[0], int(np.prod(input_shape[1:])))

    def forward(self, x: np.ndarray, training: bool = False) -> np.ndarray:
        self._check_input(x, max(x.ndim, 2))
        self._cache = x.shape
        return x.reshape(x.shape[0], -1)

    def backward(self, dout: np.ndarray) -> np.ndarray:
        x_shape = self._saved()
        self._check_dout(dout, (x_shape[0], int(np.prod(x_shape[1:]))))
        return dout.reshape(x_shape)
