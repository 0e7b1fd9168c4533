"""2-D max-pooling (Keras ``MaxPooling2D`` with "valid" padding, channels-last)."""

from __future__ import annotations

from typing import Any

import numpy as np

from minarn import kernels
from minarn.layers.base import Layer


class MaxPooling2D(Layer):
    """Maximum over each ``pool_size x pool_size`` window, moved by ``strides`` (default: ``pool_size``).

    Shapes: x (N, H, W, C) -> out (N, OH, OW, C), OH = (H - pool) // stride + 1 ("valid": an odd last
    row/column that does not fill a window is dropped, so 31 -> 15 and 11 -> 5 for 2x2 windows).
    Math: out[n, p, q, c] = max_{i, j} x[n, p*s + i, q*s + j, c].
    Backward: the whole of dout[n, p, q, c] goes to the input that won the window; dropped rows get 0.
    Ties: when several inputs share the maximum, the *first* one in row-major window order (top-left first)
    gets the gradient, the others get 0 (DLFS' rule; cs231n splits it instead). Keras' TensorFlow kernel
    also routes to a single winner.
    """

    def __init__(self, pool_size: int = 2, strides: int | None = None, name: str | None = None) -> None:
        super().__init__(name)
        strides = pool_size if strides is None else strides
        for what, v in (("pool_size", pool_size), ("strides", strides)):
            if int(v) != v or v < 1:
                raise ValueError(f"{self._describe()}: {what} must be a positive integer, got {v!r}")
        if pool_size > 11:  # the winner's index inside the window is stored as int8
            raise ValueError(f"{self._describe()}: pool_size must be at most 11, got {pool_size}")
        self.pool_size, self.strides = int(pool_size), int(strides)

    def compute_output_shape(self, input_shape: tuple[Any, ...]) -> tuple[Any, ...]:
        self._check_shape(tuple(input_shape), 4)
        N, H, W, C = input_shape
        p, s = self.pool_size, self.strides
        if H < p or W < p:
            raise ValueError(f"{self._describe()}: input of spatial size {H}x{W} is smaller than the {p}x{p} window")
        return (N, (H - p) // s + 1, (W - p) // s + 1, C)

    def forward(self, x: np.ndarray, training: bool = False) -> np.ndarray:
        self._check_input(x, 4)
        self.compute_output_shape(x.shape)
        out, argmax = kernels.get_backend().maxpool_forward(x, self.pool_size, self.strides)
        self._cache = (argmax, x.shape)
        return out

    def backward(self, dout: np.ndarray) -> np.ndarray:
        argmax, x_shape = self._saved()
        self._check_dout(dout, argmax.shape)
        return kernels.get_backend().maxpool_backward(dout, argmax, x_shape, self.pool_size, self.strides)

    def backward_through_relu(self, dout: np.ndarray, pooled: np.ndarray) -> np.ndarray:
        """Backward through ReLU followed by this pooling, when the ReLU map was not kept: dL/dh for
        ``pooled = forward(max(h, 0))``. Each gradient goes to its window's winner, whose ReLU derivative is
        [winner > 0] = [pooled > 0], so dout is masked by ``pooled`` and then routed back: the same numbers as
        ReLU's backward after this layer's. Shapes: dout, pooled (N, OH, OW, C) -> (N, H, W, C)."""
        C = dout.shape[-1]
        masked = kernels.get_backend().activation_backward(dout.reshape(-1, C), pooled.reshape(-1, C), "relu")
        return self.backward(masked.reshape(dout.shape))
