"""The attention module of the paper (Fig. 3): a feature map re-weighted by a learned sigmoid mask."""

from __future__ import annotations

from typing import Any

import numpy as np

from minarn.layers.base import Block, Layer, SummaryRow, chain_rows
from minarn.layers.conv import Conv2D
from minarn.layers.merge import Multiply


class AttentionModule(Block):
    """a = ReLU(Conv1x1_C(x)); w = sigmoid(Conv1x1_C(a)); out = x * w.

    Shapes: x, a, w, out (N, H, W, C); each 1x1 convolution has a (1, 1, C, C) kernel and a (C,) bias.
    Backward: x feeds both the product and the first convolution, so its gradient is the *sum* of the two
    paths: dx = dout * w  +  conv_a^T(relu'(conv_b^T(dout * x * sigmoid'))).
    ``names`` are the Keras names of conv_a, conv_b and the product; ``weights`` keeps the last mask w
    (lesson 7 and Fig. 3 show it).
    ``fused`` (default True) picks the fused path: conv_b's bias, sigmoid and the product in one kernel forward
    (``Multiply.forward_sigmoid_gate``), and backward the product's and the sigmoid's gradients with conv_b's
    bias gradient in one pass (``Multiply.backward_sigmoid_gate_and_sum``). ``fused = False`` runs the readable
    layer-by-layer path (each layer's own ``forward`` / ``backward``), the reference the fused one is tested
    against (same numbers to float32 round-off). Either backward works after either forward.
    """

    fused: bool = True

    def __init__(self, channels: int, names: tuple[str, str, str], seeds: tuple[int, int], dtype: Any,
                 name: str | None = None) -> None:
        super().__init__(name)
        self.conv_a = Conv2D(channels, channels, 1, activation="relu", seed=seeds[0], dtype=dtype, name=names[0])
        self.conv_b = Conv2D(channels, channels, 1, activation="sigmoid", seed=seeds[1], dtype=dtype, name=names[1])
        self.multiply = Multiply(name=names[2])
        self.weights: np.ndarray | None = None

    @property
    def sublayers(self) -> list[Layer]:
        return [self.conv_a, self.conv_b, self.multiply]

    def summary_rows(self, source: str, input_shape: tuple[Any, ...]) -> list[SummaryRow]:
        rows = chain_rows([self.conv_a, self.conv_b], source, input_shape)
        mask = rows[-1]
        return rows + [self.multiply.summary_row([source, mask.name], (input_shape, mask.output_shape))]

    def forward(self, x: np.ndarray, training: bool = False) -> np.ndarray:
        a = self.conv_a.forward(x, training)
        if self.fused:  # z = conv_b(a) without bias; then w = sigmoid(z + b) in place and out = x * w, one pass
            z = self.conv_b.forward_preactivation(a, training)
            out = self.multiply.forward_sigmoid_gate(x, z, self.conv_b.params.get("bias"), training)
            self.weights = z  # (now the mask w, conv_b's output)
        else:
            self.weights = self.conv_b.forward(a, training)
            out = self.multiply.forward((x, self.weights), training)
        return self._keep_output_shape(out)

    def backward(self, dout: np.ndarray) -> np.ndarray:
        self._check_block_dout(dout)
        if not self.fused:  # layer by layer: the product, conv_b (sigmoid, bias, product), conv_a, the fan-out sum
            dx_direct, dw = self.multiply.backward(dout)
            return self.conv_a.backward(self.conv_b.backward(dw)) + dx_direct
        # conv_b's sigmoid is fused with its bias (its backward_linear is the convolution's alone), so the
        # product's and the sigmoid's backward and conv_b's bias gradient run as one pass: dx_direct = dout * w,
        # dzb = dout * x * w * (1 - w), dbias_b = sum dzb; then the two 1x1 convolutions.
        dx_direct, dzb, dbias_b = self.multiply.backward_sigmoid_gate_and_sum(dout)
        dx = self.conv_a.backward(self.conv_b.backward_linear(dzb, dbias=dbias_b))
        dx += dx_direct  # fan-out: x was used twice (dx is a fresh array)
        return dx
