"""minarn: the ARN-CNN of Kavousinejad (2024) built from NumPy, with explicit forward and backward passes.

Public API: the layers (``minarn.layers``), the kernel backends (``minarn.kernels``) and numeric gradient
checks (``minarn.gradcheck``), the
ARN-CNN model (``minarn.ARNCNN``, ``minarn.load_model``).
"""

import os

# OpenBLAS' threads busy-wait up to 2^28 cycles (~0.1 s) after each matrix product before they sleep. A training
# step alternates ~100 products with Numba's parallel loops, which then share the cores with spinning threads;
# 2^8 cycles lets them sleep at once (measured on 2 cores: +3 to +19 % training images/s, benchmarks/RESULTS.md).
# OpenBLAS reads the variable when it loads, so this only acts when minarn is imported before NumPy (as in
# ``python -m minarn.train``); a value the user set is kept.
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "8")

from minarn import gradcheck, kernels, losses, metrics, optim
from minarn.layers import (
    GELU,
    Add,
    BatchNormalization,
    Conv2D,
    Dense,
    Dropout,
    Flatten,
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
