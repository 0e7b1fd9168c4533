"""The residual block of the paper: two 3x3 convolutions with batch norm, attention, a skip, ReLU, pooling."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from minarn.layers.activations import ReLU
from minarn.layers.attention import AttentionModule
from minarn.layers.base import Layer
from minarn.layers.conv import Conv2D
from minarn.layers.merge import Add
from minarn.layers.norm import BatchNormalization
from minarn.layers.pool import MaxPooling2D


class ResidualBlock:
    """h = BN(Conv3x3_F(x, same, ReLU)); h = BN(Conv3x3_F(h, same, ReLU)); h = Attention(h);
    s = Conv1x1_F(x) (linear) if x has C != F channels else x;  out = MaxPool2x2(ReLU(h + s)).

    Shapes: x (N, H, W, C) -> out (N, H // 2, W // 2, F).
    ``attention=False`` drops the attention module; ``residual=False`` drops the skip and the add (paper
    Table 6), keeping ReLU and pooling. Backward: x feeds the main path and the skip, so dx is their sum.
    ``name`` is a callable giving Keras' next name for a layer type (``name("conv2d") -> "conv2d_5"``).
    """

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

    @property
    def layers(self) -> list[Layer]:
        """The block's layers in creation (= Keras numbering) order."""
        found: list[Layer | None] = [self.conv1, self.bn1, self.conv2, self.bn2]
        found += self.attention.layers if self.attention else []
        found += [self.skip, self.add, self.relu, self.pool]
        return [layer for layer in found if layer is not None]

    def forward(self, x: np.ndarray, training: bool = False) -> np.ndarray:
        h = self.bn1.forward(self.conv1.forward(x, training), training)
        h = self.bn2.forward(self.conv2.forward(h, training), training)
        if self.attention:
            h = self.attention.forward(h, training)
        if self.residual:
            s = self.skip.forward(x, training) if self.skip else x
            h = self.add.forward((h, s), training)
        return self.pool.forward(self.relu.forward(h, training), training)

    def backward(self, dout: np.ndarray) -> np.ndarray:
        dh = self.relu.backward(self.pool.backward(dout))
        dx_skip = None
        if self.residual:
            # Add's backward hands dout to both inputs; neither branch writes into it, so share it (no copies)
            self.add._check_dout(dh, self.add._saved())
            dx_skip = self.skip.backward(dh) if self.skip else dh
        if self.attention:
            dh = self.attention.backward(dh)
        dh = self.conv2.backward(self.bn2.backward(dh))
        dx_main = self.conv1.backward(self.bn1.backward(dh))
        return dx_main if dx_skip is None else dx_main + dx_skip  # fan-out: x fed both branches
