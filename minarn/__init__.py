"""minarn: the ARN-CNN of Kavousinejad (2024) built from NumPy, with explicit forward and backward passes.

Public API: the layers (``minarn.layers``), the kernel backends (``minarn.kernels``) and numeric gradient
checks (``minarn.gradcheck``), the
ARN-CNN model (``minarn.ARNCNN``, ``minarn.load_model``).
"""

from minarn import gradcheck, kernels, losses, metrics, optim
from minarn.layers import (
    Add,
    BatchNormalization,
    Conv2D,
    Dense,
    Dropout,
    Flatten,
    GELU,
    MaxPooling2D,
    Multiply,
    ReLU,
    Sigmoid,
    Softmax,
)

from minarn.model import ARNCNN, load_model

__version__ = "0.1.0"

__all__ = [
    "ARNCNN",
    "Add",
    "BatchNormalization",
    "Conv2D",
    "Dense",
    "Dropout",
    "Flatten",
    "GELU",
    "MaxPooling2D",
    "Multiply",
    "ReLU",
    "Sigmoid",
    "Softmax",
    "__version__",
    "gradcheck",
    "kernels",
    "load_model",
    "losses",
    "metrics",
    "optim",
]
