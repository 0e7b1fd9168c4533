"""Two-input merges: the element-wise product of the attention module and the sum of the residual block."""

from __future__ import annotations

import numpy as np

from minarn.layers.base import Layer, shape_str


class _Merge(Layer):
    def _check_pair(self, inputs: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        if not isinstance(inputs, (tuple, list)) or len(inputs) != 2:
            raise ValueError(f"{self._describe()}: expected a pair (a, b) of arrays")
        a, b = inputs
        for x in (a, b):
            if not isinstance(x, np.ndarray) or not np.issubdtype(x.dtype, np.floating):
                raise TypeError(f"{self._describe()}: expected floating-point numpy arrays, got {type(x).__name__}")
        if a.shape != b.shape:
            raise ValueError(
                f"{self._describe()}: both inputs must have the same shape, got {shape_str(a.shape)} "
                f"and {shape_str(b.shape)}"
            )
        return a, b

    def compute_output_shape(self, input_shape):  # type: ignore[override]
        a, b = input_shape
        if tuple(a) != tuple(b):
            raise ValueError(f"{self._describe()}: both inputs must have the same shape, got {a} and {b}")
        return tuple(a)


class Multiply(_Merge):
    """Element-wise product (paper Fig. 3: a feature map times its attention weights).

    Shapes: a, b, out (N, H, W, C). Math: out = a * b; da = dout * b, db = dout * a.
    """

    def forward(self, inputs: tuple[np.ndarray, np.ndarray], training: bool = False) -> np.ndarray:  # type: ignore[override]
        a, b = self._check_pair(inputs)
        self._cache = (a, b)
        return a * b

    def backward(self, dout: np.ndarray) -> tuple[np.ndarray, np.ndarray]:  # type: ignore[override]
        a, b = self._saved()
        self._check_dout(dout, a.shape)
        return dout * b, dout * a


class Add(_Merge):
    """Element-wise sum (the residual connection). Shapes: a, b, out (N, ...). Math: out = a + b; da = db = dout."""

    def forward(self, inputs: tuple[np.ndarray, np.ndarray], training: bool = False) -> np.ndarray:  # type: ignore[override]
        a, b = self._check_pair(inputs)
        self._cache = a.shape
        return a + b

    def backward(self, dout: np.ndarray) -> tuple[np.ndarray, np.ndarray]:  # type: ignore[override]
        shape = self._saved()
        self._check_dout(dout, shape)
        return dout.copy(), dout.copy()
