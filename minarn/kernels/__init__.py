"""The kernel interface: one small set of hot loops, in a NumPy form that always works and a Numba form.

Every backend module (``numpy_ref``, the readable reference, and ``numba_jit``, its compiled twins) defines
each kernel of ``KERNELS`` with the same signature and results, and the constants ``NAME`` and ``WINOGRAD``
(whether ``Conv2D`` should pick Winograd's algorithm on it). ``KERNELS`` is the full list, in one place: a
backend that lacks one is refused when it loads, and ``tests/test_contracts.py`` checks that both backends
define exactly these names with the same parameters. Shapes and math are in ``numpy_ref``'s docstrings; the
activation kinds the fused kernels take are ``numpy_ref.ACTIVATION_KINDS``. Winograd's algorithm around its
tile kernels (matrices, filter transform, products) is ``kernels.winograd``.

Which backend runs is chosen, in this order, by ``use_backend(name)`` from code or the ``MINARN_BACKEND``
environment variable (``auto``, ``numpy`` or ``numba``). ``auto`` (the default) picks numba when it is
installed and numpy otherwise. Layers look the backend up on every call, so switching takes effect at once.

    >>> from minarn import kernels
    >>> with kernels.backend("numpy"):
    ...     pass  # everything in here runs the NumPy reference
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
from collections.abc import Iterator
from types import ModuleType

from minarn.kernels import numpy_ref
from minarn.kernels.scratch import image_blocks as image_blocks  # blocks of images of bounded scratch size
from minarn.kernels.scratch import workspace as workspace  # the layers' shared scratch arrays

# Every kernel a backend provides: name -> what it computes (rows are positions of a channels-last map viewed as
# (rows, C); ``kind`` is one of ``numpy_ref.ACTIVATION_KINDS``).
KERNELS: dict[str, str] = {
    "im2col": "unfold the kh x kw patches of an (already padded) map into rows (N*OH*OW, kh*kw*C)",
    "col2im": "the adjoint of im2col: fold rows back onto the map, adding where patches overlap",
    "im2col_padded": "im2col with the zero padding folded in, optionally into a reused buffer",
    "col2im_padded": "the adjoint of im2col_padded: fold, then drop the padding",
    "maxpool_forward": "max over each window and the winner's position in it",
    "maxpool_backward": "route each output gradient to its window's winner",
    "shallow_conv_forward": "convolution + bias + activation for a short patch (kh*kw*C <= 16), direct loops",
    "shallow_conv_weight_grad": "kernel and bias gradients of a short-patch convolution",
    "winograd_input": "Winograd input transform V = B^T d B of every tile (F(2x2, 3x3) or F(4x4, 3x3))",
    "winograd_output": "Winograd output transform Y = A^T M A of every tile, cropped, + bias and activation",
    "winograd_output_adjoint": "the adjoint of winograd_output: dM = A dY A^T",
    "bias_activation": "in place: z = act(z + bias), act = kind",
    "activation_backward": "dz from dout and the activation's output",
    "activation_backward_and_sum": "activation_backward and the column sums of dz (the bias gradient)",
    "sigmoid_gate": "the attention mask and product: in place z = sigmoid(z + bias), and out = x * z",
    "attention_backward_mask_and_sum": "backward of out = x * sigmoid(z) for x and z, and dz's column sums",
    "channel_moments": "per-channel mean and biased variance (batch norm's batch statistics)",
    "batchnorm_apply": "out = gamma * (x - mean) * inv_std + beta",
    "batchnorm_backward": "training-mode batch norm backward: dx, dgamma, dbeta",
}

BACKENDS = ("auto", "numpy", "numba")
ENV_VAR = "MINARN_BACKEND"

_active: ModuleType | None = None


def numba_available() -> bool:
    """True when numba can be imported (the ``fast`` extra is installed)."""
    return importlib.util.find_spec("numba") is not None


def available_backends() -> list[str]:
    """Names of the backends that can run here, NumPy first."""
    return ["numpy"] + (["numba"] if numba_available() else [])


def _load(name: str) -> ModuleType:
    if name not in BACKENDS:
        raise ValueError(f"unknown kernel backend {name!r}: expected one of {', '.join(BACKENDS)}")
    if name == "auto":
        name = "numba" if numba_available() else "numpy"
    if name == "numpy":
        return _checked(numpy_ref)
    if not numba_available():
        raise ImportError("kernel backend 'numba' requested but numba is not installed: pip install 'minarn[fast]'")
    from minarn.kernels import numba_jit  # only here: numba is an optional dependency (the ``fast`` extra)

    return _checked(numba_jit)


def _checked(module: ModuleType) -> ModuleType:
    """``module`` if it defines every kernel of ``KERNELS``; else ``ImportError`` naming what it lacks."""
    missing = [k for k in KERNELS if not callable(getattr(module, k, None))]
    if missing:
        raise ImportError(f"kernel backend {module.__name__} lacks the kernels {', '.join(missing)} "
                          "(every backend defines all of minarn.kernels.KERNELS)")
    return module


def use_backend(name: str) -> ModuleType:
    """Select the kernel backend for the whole process (``auto``, ``numpy`` or ``numba``) and return it."""
    global _active
    _active = _load(name)
    return _active


def get_backend() -> ModuleType:
    """The active backend module; on first use it is taken from ``MINARN_BACKEND`` (default ``auto``)."""
    global _active
    if _active is None:
        _active = _load(os.environ.get(ENV_VAR, "auto").strip().lower() or "auto")
    return _active


@contextlib.contextmanager
def backend(name: str) -> Iterator[ModuleType]:
    """Run a block with another backend, then put the previous one back."""
    global _active
    previous = _active
    try:
        yield use_backend(name)
    finally:
        _active = previous
