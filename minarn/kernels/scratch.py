"""Scratch memory the kernels and layers share: one growing flat buffer per (slot, dtype), reused by every call,
and the blocks of images that keep each use of it near a fixed size.

Its own module so that a backend (``numba_jit``) can use it without importing the ``minarn.kernels`` package that
imports the backend; ``minarn.kernels.workspace`` is the same function.
"""

from __future__ import annotations

from typing import Any

import numpy as np

_workspaces: dict[tuple[int, str], np.ndarray] = {}

# The convolutions that build large transient matrices (im2col's columns, Winograd's V and M) run over blocks of
# whole images whose matrices take about this many bytes, whatever the batch size: the peak memory of a training
# step then grows with the activations alone (at batch 256 the columns of ARN-CNN's conv2d_5 alone were 283 MB).
# Not smaller: with 8 MB, Winograd's 16 products per block shrink to 1,024 rows and the step got ~10 % slower
# (benchmarks/RESULTS.md, session 9).
BLOCK_BYTES = 32 << 20


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


def image_blocks(images: int, bytes_per_image: int) -> list[tuple[int, int]]:
    """Split ``images`` into consecutive blocks [lo, hi) whose transient matrices take about ``BLOCK_BYTES``
    (``bytes_per_image`` each): at least one image per block, and a multiple of 4 images where a block holds 4
    or more (the kernels that work image by image hand out whole images to the threads)."""
    per = max(1, BLOCK_BYTES // max(1, bytes_per_image))
    if per >= 4:
        per -= per % 4
    return [(lo, min(images, lo + per)) for lo in range(0, images, per)]
