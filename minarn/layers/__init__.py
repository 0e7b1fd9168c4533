"""minarn's layers: explicit forward and backward passes, channels-last, Keras names and layouts; the blocks
(``ConvReLUPool``, ``AttentionModule``, ``ResidualBlock``) are layers made of layers."""

from minarn.layers.activations import (
    ACTIVATIONS,
    ELU,
    GELU,
    SELU,
    Linear,
    ReLU,
    Sigmoid,
    Softmax,
    Swish,
    Tanh,
    get_activation,
)
from minarn.layers.attention import AttentionModule
from minarn.layers.base import Block, Layer, glorot_uniform
from minarn.layers.conv import Conv2D
from minarn.layers.conv_pool import ConvReLUPool
from minarn.layers.dense import Dense
from minarn.layers.dropout import Dropout
from minarn.layers.flatten import Flatten
from minarn.layers.merge import Add, Multiply
from minarn.layers.norm import BatchNormalization
from minarn.layers.pool import MaxPooling2D
from minarn.layers.residual import ResidualBlock

__all__ = [
    "ACTIVATIONS",
    "ELU",
    "GELU",
    "SELU",
    "Add",
    "AttentionModule",
    "BatchNormalization",
    "Block",
    "Conv2D",
    "ConvReLUPool",
    "Dense",
    "Dropout",
    "Flatten",
    "Layer",
    "Linear",
    "MaxPooling2D",
    "Multiply",
    "ReLU",
    "ResidualBlock",
    "Sigmoid",
    "Softmax",
    "Swish",
    "Tanh",
    "get_activation",
    "glorot_uniform",
]
