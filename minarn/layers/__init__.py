"""minarn's layers: explicit forward and backward passes, channels-last, Keras names and layouts."""

from minarn.layers.activations import (
    ELU,
    GELU,
    SELU,
    ACTIVATIONS,
    Linear,
    ReLU,
    Sigmoid,
    Softmax,
    Swish,
    Tanh,
    get_activation,
)
from minarn.layers.base import Layer, glorot_uniform
from minarn.layers.conv import Conv2D
from minarn.layers.dense import Dense
from minarn.layers.dropout import Dropout
from minarn.layers.flatten import Flatten
from minarn.layers.merge import Add, Multiply
from minarn.layers.norm import BatchNormalization
from minarn.layers.pool import MaxPooling2D

__all__ = [
    "ACTIVATIONS",
    "Add",
    "BatchNormalization",
    "Conv2D",
    "Dense",
    "Dropout",
    "ELU",
    "Flatten",
    "GELU",
    "Layer",
    "Linear",
    "MaxPooling2D",
    "Multiply",
    "ReLU",
    "SELU",
    "Sigmoid",
    "Softmax",
    "Swish",
    "Tanh",
    "get_activation",
    "glorot_uniform",
]
