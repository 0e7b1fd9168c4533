"""The kernel interface: one small set of hot loops, in a NumPy form that always works and a Numba form.

Every backend module provides the same functions with the same signatures and results:
``im2col``, ``col2im``, ``maxpool_forward``, ``maxpool_backward`` (see ``numpy_ref`` for their shapes), and
the kernels of the layers' fast paths: ``im2col_padded`` / ``col2im_padded`` (padding folded in, optional
reused output buffer), ``bias_activation`` and ``activation_backward`` (bias + ReLU/sigmoid fused),
``attention_backward_mask`` (the attention product and sigmoid in one pass), ``channel_moments``,
``batchnorm_apply`` and ``batchnorm_backward`` (batch norm in one or two passes).

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
from typing import Any

import numpy as np

from minarn.kernels import numpy_ref

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
        return numpy_ref
    if not numba_available():
        raise ImportError("kernel backend 'numba' requested but numba is not installed: pip install 'minarn[fast]'")
    from minarn.kernels import numba_jit

    return numba_jit


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


_workspaces: dict[tuple[int, str], np.ndarray] = {}


def workspace(shape: tuple[int, ...], dtype: Any, slot: int = 0) -> np.ndarray:
    """A scratch array of ``shape`` and ``dtype`` carved out of one flat buffer per (slot, dtype) that grows as
    needed and is reused by every later call: layers put their transient im2col columns here, so a training
    step allocates (and pages in) that memory once instead of once per layer and step. The contents are
    overwritten by the next caller of the same slot, so only use it for values that die before that."""
    dtype = np.dtype(dtype)
    size = int(np.prod(shape))
    key = (slot, dtype.str)
    buf = _workspaces.get(key)
    if buf is None or buf.size < size:
        buf = _workspaces[key] = np.empty(size, dtype=dtype)
    return buf[:size].reshape(shape)


@contextlib.contextmanager
def backend(name: str) -> Iterator[ModuleType]:
    """Run a block with another backend, then put the previous one back."""
    global _active
    previous = _active
    try:
        yield use_backend(name)
    finally:
        _active = previous
