"""Two-input merges: the element-wise product of the attention module and the sum of the residual block."""

from __future__ import annotations

import numpy as np

from minarn import kernels
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

    def compute_output_shape(self, input_shape):
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

    def forward_sigmoid_gate(self, a: np.ndarray, z: np.ndarray, bias: np.ndarray | None,
                             training: bool = False) -> np.ndarray:
        """The fused forward of out = a * b with b = sigmoid(z + bias) (the attention mask), one kernel
        (``kernels.sigmoid_gate``): z is overwritten with the mask b, which is kept as ``forward((a, b))`` keeps
        it; returns out. z comes from ``Conv2D.forward_preactivation`` of the layer whose sigmoid makes b, so
        that layer then holds b as its output. Shapes: a, z, out (N, H, W, C); bias (C,) or None."""
        a, z = self._check_pair((a, z))
        C = a.shape[-1]
        if bias is not None:
            bias = bias.astype(z.dtype, copy=False)
        out = kernels.get_backend().sigmoid_gate(z.reshape(-1, C), bias, a.reshape(-1, C))
        self._cache = (a, z)
        return out.reshape(a.shape)

    def backward_sigmoid_gate_and_sum(self, dout: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The fused backward of out = a * b when b = sigmoid(z) (the attention mask): through the product and
        the sigmoid in one pass (``kernels.attention_backward_mask_and_sum``).

        Returns (da, dz, dbias): da = dout * b and dz = dout * a * b * (1 - b), both shaped like a, and dbias
        (C,) the sums of dz over every position (N, H, W). dz goes on to the layer whose sigmoid made b, as the
        gradient of its pre-activation (``Conv2D.backward_linear``), and dbias is that layer's bias gradient.
        """
        a, b = self._saved()
        self._check_dout(dout, a.shape)
        C = a.shape[-1]
        da, dz, dbias = kernels.get_backend().attention_backward_mask_and_sum(dout.reshape(-1, C), a.reshape(-1, C),
                                                                              b.reshape(-1, C))
        return da.reshape(a.shape), dz.reshape(a.shape), dbias


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

    def backward_shared(self, dout: np.ndarray) -> np.ndarray:
        """The gradient both inputs receive, as one array: ``dout`` itself, checked but not copied. For a caller
        that hands it to two branches neither of which writes into it (the residual block)."""
        self._check_dout(dout, self._saved())
        return dout
