"""Scratch memory the kernels and layers share: one growing flat buffer per (slot, dtype), reused by every call.

Its own module so that a backend (``numba_jit``) can use it without importing the ``minarn.kernels`` package that
imports the backend; ``minarn.kernels.workspace`` is the same function.
"""

from __future__ import annotations

from typing import Any

import numpy as np

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
