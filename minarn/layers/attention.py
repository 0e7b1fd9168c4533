"""The attention module of the paper (Fig. 3): a feature map re-weighted by a learned sigmoid mask."""

from __future__ import annotations

from typing import Any

import numpy as np

from minarn import kernels
from minarn.layers.base import Layer
from minarn.layers.conv import Conv2D
from minarn.layers.merge import Multiply


class AttentionModule:
    """a = ReLU(Conv1x1_C(x)); w = sigmoid(Conv1x1_C(a)); out = x * w.

    Shapes: x, a, w, out (N, H, W, C); each 1x1 convolution has a (1, 1, C, C) kernel and a (C,) bias.
    Backward: x feeds both the product and the first convolution, so its gradient is the *sum* of the two
    paths: dx = dout * w  +  conv_a^T(relu'(conv_b^T(dout * x * sigmoid'))).
    """

    def __init__(self, channels: int, names: tuple[str, str, str], seeds: tuple[int, int], dtype: Any) -> None:
        self.conv_a = Conv2D(channels, channels, 1, activation="relu", seed=seeds[0], dtype=dtype, name=names[0])
        self.conv_b = Conv2D(channels, channels, 1, activation="sigmoid", seed=seeds[1], dtype=dtype, name=names[1])
        self.multiply = Multiply(name=names[2])

    @property
    def layers(self) -> list[Layer]:
        return [self.conv_a, self.conv_b, self.multiply]

    def forward(self, x: np.ndarray, training: bool = False) -> np.ndarray:
        a = self.conv_a.forward(x, training)
        w = self.conv_b.forward(a, training)
        self.weights = w  # kept for inspection (lesson 7, the Fig. 3 illustration)
        return self.multiply.forward((x, w), training)

    def backward(self, dout: np.ndarray) -> np.ndarray:
        if self.conv_b._fused_kind() != "sigmoid":  # the plain path, layer by layer
            dx_direct, dw = self.multiply.backward(dout)
            da = self.conv_b.backward(dw)
            dx_through_mask = self.conv_a.backward(da)
            return dx_direct + dx_through_mask  # fan-out: x was used twice
        # Fast path, the same math: the product's and the sigmoid's backward in one fused pass
        # (dx_direct = dout * w, dzb = dout * x * w * (1 - w)), then the two 1x1 convolutions.
        x, w = self.multiply._saved()
        self.multiply._check_dout(dout, x.shape)
        C = x.shape[-1]
        dx_direct, dzb = kernels.get_backend().attention_backward_mask(
            dout.reshape(-1, C), x.reshape(-1, C), w.reshape(-1, C))
        dx = self.conv_a.backward(self.conv_b.backward_linear(dzb.reshape(x.shape)))
        dx += dx_direct.reshape(x.shape)  # fan-out: x was used twice (dx is a fresh array)
        return dx
