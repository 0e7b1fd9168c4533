"""The residual block of the paper: two 3x3 convolutions with batch norm, attention, a skip, ReLU, pooling."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from minarn.layers.activations import ReLU
from minarn.layers.attention import AttentionModule
from minarn.layers.base import Block, Layer, SummaryRow, chain_rows
from minarn.layers.conv import Conv2D
from minarn.layers.merge import Add
from minarn.layers.norm import BatchNormalization
from minarn.layers.pool import MaxPooling2D


class ResidualBlock(Block):
    """h = BN(Conv3x3_F(x, same, ReLU)); h = BN(Conv3x3_F(h, same, ReLU)); h = Attention(h);
    s = Conv1x1_F(x) (linear) if x has C != F channels else x;  out = MaxPool2x2(ReLU(h + s)).

    Shapes: x (N, H, W, C) -> out (N, H // 2, W // 2, F).
    ``attention=False`` drops the attention module; ``residual=False`` drops the skip and the add (paper
    Table 6), keeping ReLU and pooling. Backward: x feeds the main path and the skip, so dx is their sum.
    ``name`` is a callable giving Keras' next name for a layer type (``name("conv2d") -> "conv2d_5"``); the
    block itself is called ``"residual_block"``.
    ``fused`` (default True): pooling runs first and the ReLU on its output (max relu(h) = relu(max h)), so no
    full-size ReLU map is written or kept: pooling routes each gradient to its window's winner, whose ReLU
    derivative is [winner > 0] = [pooled output > 0], so backward masks dout by the block's own output and then
    pools back (the same numbers as ReLU's backward after pooling's; the full-size ReLU map would be 1/5 of what a
    training step keeps). ``fused = False`` runs
    the readable path, the ReLU layer then the pooling layer, which the fused one is tested against.
    """

    fused: bool = True

    def __init__(
        self,
        in_channels: int,
        filters: int,
        name: Callable[[str], str],
        seed: Callable[[], int],
        attention: bool = True,
        residual: bool = True,
        dtype: Any = np.float32,
    ) -> None:
        super().__init__()
        conv = dict(padding="same", activation="relu", dtype=dtype)
        self.conv1 = Conv2D(in_channels, filters, 3, seed=seed(), name=name("conv2d"), **conv)
        self.bn1 = BatchNormalization(filters, dtype=dtype, name=name("batch_normalization"))
        self.conv2 = Conv2D(filters, filters, 3, seed=seed(), name=name("conv2d"), **conv)
        self.bn2 = BatchNormalization(filters, dtype=dtype, name=name("batch_normalization"))
        self.attention = (
            AttentionModule(filters, (name("conv2d"), name("conv2d"), name("multiply")), (seed(), seed()), dtype)
            if attention
            else None
        )
        self.residual = residual
        self.skip = None
        if residual and in_channels != filters:
            self.skip = Conv2D(in_channels, filters, 1, seed=seed(), dtype=dtype, name=name("conv2d"))
        self.add = Add(name=name("add")) if residual else None
        self.relu = ReLU(name=name("activation"))
        self.pool = MaxPooling2D(2, name=name("max_pooling2d"))
        self._pooled: np.ndarray | None = None  # the fused path's output, kept for its backward

    @property
    def main_path(self) -> list[Layer]:
        """The layers of h, from x to the add: conv, BN, conv, BN and (unless ablated) the attention module."""
        return [self.conv1, self.bn1, self.conv2, self.bn2] + ([self.attention] if self.attention else [])

    @property
    def sublayers(self) -> list[Layer]:
        """The block's layers in creation (= Keras numbering) order."""
        found: list[Layer | None] = [*self.main_path, self.skip, self.add, self.relu, self.pool]
        return [layer for layer in found if layer is not None]

    def summary_rows(self, source: str, input_shape: tuple[Any, ...]) -> list[SummaryRow]:
        rows = chain_rows(self.main_path, source, input_shape)
        if self.add is not None:
            h = rows[-1]
            skip, skip_shape = source, input_shape
            if self.skip is not None:
                rows.append(self.skip.summary_row([source], input_shape))
                skip, skip_shape = rows[-1].name, rows[-1].output_shape
            rows.append(self.add.summary_row([h.name, skip], (h.output_shape, skip_shape)))
        return rows + chain_rows([self.relu, self.pool], rows[-1].name, rows[-1].output_shape)

    def forward(self, x: np.ndarray, training: bool = False) -> np.ndarray:
        h = x
        for layer in self.main_path:
            h = layer.forward(h, training)
        if self.add is not None:
            s = self.skip.forward(x, training) if self.skip else x
            h = self.add.forward((h, s), training)
        if not self.fused:
            self._pooled = None
            return self._keep_output_shape(self.pool.forward(self.relu.forward(h, training), training))
        # The ReLU commutes with a window's maximum (max relu(h) = relu(max h)), so it runs on the pooled map, a
        # quarter of the size; no full-size ReLU map is written. A window without a positive value pools to 0
        # either way, and its gradient is 0 either way (backward masks by [pooled > 0]).
        pooled = self.pool.forward(h, training)
        self._pooled = np.maximum(pooled, 0, out=pooled)
        return self._keep_output_shape(self._pooled)

    def backward(self, dout: np.ndarray) -> np.ndarray:
        self._check_block_dout(dout)
        if self._pooled is None:
            dh = self.relu.backward(self.pool.backward(dout))
        else:  # ReLU's derivative at each window's winner is [pooled output > 0]
            dh = self.pool.backward_through_relu(dout, self._pooled)
        dx_skip = None
        if self.add is not None:
            # the add hands dh to both inputs; neither branch writes into it, so they share it (no copies)
            dh = self.add.backward_shared(dh)
            dx_skip = self.skip.backward(dh) if self.skip else dh
        for layer in reversed(self.main_path):
            dh = layer.backward(dh)
        return dh if dx_skip is None else dh + dx_skip  # fan-out: x fed both branches
