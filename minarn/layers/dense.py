"""Fully connected layer (Keras ``Dense``)."""

from __future__ import annotations

from typing import Any

import numpy as np

from minarn.layers.activations import get_activation
from minarn.layers.base import Layer, glorot_uniform


class Dense(Layer):
    """Affine map with optional fused activation.

    Shapes: x (N, in_features) -> out (N, units); kernel (in_features, units); bias (units,).
    Math: z = x @ kernel + bias; out = act(z).
    Backward: dz = act'(dout); dkernel = x^T @ dz; dbias = sum_rows dz; dx = dz @ kernel^T.
    """

    def __init__(
        self,
        in_features: int,
        units: int,
        activation: str | None = None,
        use_bias: bool = True,
        seed: int | None = None,
        dtype: Any = np.float32,
        name: str | None = None,
    ) -> None:
        super().__init__(name)
        for what, v in (("in_features", in_features), ("units", units)):
            if int(v) != v or v < 1:
                raise ValueError(f"{self._describe()}: {what} must be a positive integer, got {v!r}")
        self.in_features, self.units = int(in_features), int(units)
        self.activation_name = activation
        self.activation = get_activation(activation, layer_name=f"{self.name}_activation")
        rng = np.random.default_rng(seed)
        self.params["kernel"] = glorot_uniform((in_features, units), in_features, units, rng, dtype)
        if use_bias:
            self.params["bias"] = np.zeros(units, dtype=dtype)
        self.grads = {k: np.zeros_like(v) for k, v in self.params.items()}

    def compute_output_shape(self, input_shape: tuple[Any, ...]) -> tuple[Any, ...]:
        self._check_shape(tuple(input_shape), 2, self.in_features)
        return (input_shape[0], self.units)

    def forward(self, x: np.ndarray, training: bool = False) -> np.ndarray:
        return self.activation.forward(self.forward_linear(x, training), training)

    def forward_linear(self, x: np.ndarray, training: bool = False) -> np.ndarray:
        """The pre-activation z = x @ kernel + bias only (what a softmax + cross-entropy loss consumes)."""
        self._check_input(x, 2, self.in_features)
        z = x @ self.params["kernel"].astype(x.dtype, copy=False)
        if "bias" in self.params:
            z += self.params["bias"].astype(x.dtype, copy=False)
        self._cache = (x, z.shape)
        return z

    def backward(self, dout: np.ndarray) -> np.ndarray:
        _, out_shape = self._saved()
        self._check_dout(dout, out_shape)
        return self.backward_linear(self.activation.backward(dout))

    def backward_linear(self, dz: np.ndarray) -> np.ndarray:
        """Backward through the affine part only, given dz = dL/dz for the pre-activation z.

        Used where the activation's derivative is folded into the loss (softmax + cross-entropy: dz = p - y)
        or where the pre-activation is the quantity of interest (Grad-CAM's class score).
        """
        x, out_shape = self._saved()
        self._check_dout(dz, out_shape)
        kernel = self.params["kernel"]
        self.grads["kernel"] = (x.T @ dz).astype(kernel.dtype, copy=False)
        if "bias" in self.params:
            self.grads["bias"] = dz.sum(axis=0).astype(self.params["bias"].dtype, copy=False)
        return dz @ kernel.astype(dz.dtype, copy=False).T
