"""A convolution with ReLU followed by max-pooling, as one block: ARN-CNN's first stage (conv2d -> max_pooling2d)."""

from __future__ import annotations

from typing import Any

import numpy as np

from minarn.layers.base import Block, Layer, SummaryRow, chain_rows
from minarn.layers.conv import Conv2D
from minarn.layers.pool import MaxPooling2D


class ConvReLUPool(Block):
    """out = MaxPool(ReLU(Conv(x))), the two layers given (the convolution's activation must be ReLU).

    Shapes: x (N, H, W, C) -> conv (N, OH, OW, F) -> out (N, OH // 2, OW // 2, F) for 2x2 pooling.
    ``fused`` (default True): the full-size ReLU map is not kept for backward (in ARN-CNN it is the largest map
    of the network: 62x62x32, 126 MB at batch 256). Pooling routes each gradient to its window's winner, whose ReLU
    derivative is [winner > 0] = [pooled output > 0], so backward masks dout by the block's own output, pools it
    back (``MaxPooling2D.backward_through_relu``, as ``ResidualBlock`` does) and runs the convolution's
    ``backward_linear``. ``fused = False`` keeps the map and runs each layer's own backward: the readable path the
    fused one is tested against. The layers keep their names (``conv2d``, ``max_pooling2d``); the block adds none
    to the graph.
    """

    fused: bool = True

    def __init__(self, conv: Conv2D, pool: MaxPooling2D, name: str | None = None) -> None:
        super().__init__(name)
        if conv.activation_name != "relu":
            raise ValueError(f"{self._describe()}: the convolution {conv.name!r} must have a ReLU activation, got "
                             f"{conv.activation_name!r}")
        self.conv, self.pool = conv, pool
        self._pooled: np.ndarray | None = None  # the fused path's output, kept for its backward

    @property
    def sublayers(self) -> list[Layer]:
        return [self.conv, self.pool]

    def summary_rows(self, source: str, input_shape: tuple[Any, ...]) -> list[SummaryRow]:
        return chain_rows([self.conv, self.pool], source, input_shape)

    def forward(self, x: np.ndarray, training: bool = False) -> np.ndarray:
        out = self.pool.forward(self.conv.forward(x, training), training)
        self._pooled = None
        if self.fused:
            self.conv.release_output()  # the ReLU map dies here
            self._pooled = out
        return self._keep_output_shape(out)

    def backward(self, dout: np.ndarray, input_grad: bool = True) -> np.ndarray | None:  # type: ignore[override]
        """dL/dx (N, H, W, C), or None with ``input_grad=False`` (the network's first layer: see ``Conv2D``)."""
        self._check_block_dout(dout)
        if self._pooled is None:
            return self.conv.backward(self.pool.backward(dout), input_grad)
        return self.conv.backward_linear(self.pool.backward_through_relu(dout, self._pooled), input_grad)
