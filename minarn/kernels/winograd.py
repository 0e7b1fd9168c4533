"""Winograd's minimal filtering F(2x2, 3x3): a 3x3 convolution at stride 1 with 2.25x fewer multiplications.

Lavin & Gray (2016), "Fast Algorithms for Convolutional Neural Networks". The output is cut into 2x2 tiles;
tile t reads the 4x4 input window d_t (stride 2 between tiles, zeros outside the image) and

    Y_t = A^T [ U (.) V_t ] A,   U = G g G^T (filter, 4x4),   V_t = B^T d_t B (input, 4x4),

with (.) the element-wise product, per channel pair. Summed over input channels, each of the 16 positions
(xi, nu) of the 4x4 grid becomes one matrix product: M[k] = V[k] @ U[k], V (16, T, C), U (16, C, F), so
16 products with a reduction over C replace one with a reduction over 9C. Everything is linear, so the
backward pass applies the adjoint (transposed) transforms in reverse order:

    dM_t = A dY_t A^T,   dU = sum_t V_t^T dM_t (16 products),   dg = G^T dU G,
    and dx, a convolution of dY with the turned kernel, by the same forward algorithm.

The tile transforms are backend kernels (``winograd_input``, ``winograd_output``, ``winograd_output_adjoint``
in ``numpy_ref`` and ``numba_jit``); this module holds the matrices (their one definition: the NumPy reference
builds its transforms from them), the filter transform (computed in float64: it is tiny) and the products that
``Conv2D`` runs. Float32 error stays at im2col's level (the transforms only add, subtract and halve; lesson 16
measures both).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from minarn.kernels.scratch import image_blocks

B_T = np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]], dtype=np.float64)
G = np.array([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]], dtype=np.float64)
A_T = np.array([[1, 1, 1, 0], [0, 1, -1, -1]], dtype=np.float64)


def tiles(out_h: int, out_w: int) -> tuple[int, int]:
    """Number of 2x2 output tiles along each axis (the last one may hang over the edge)."""
    return math.ceil(out_h / 2), math.ceil(out_w / 2)


def filter_transform(kernel: np.ndarray) -> np.ndarray:
    """U = G g G^T for every (c, f): kernel (3, 3, C, F) -> U (16, C, F), in the kernel's dtype."""
    C, F = kernel.shape[2:]
    u = np.einsum("xi,ijcf,yj->xycf", G, kernel.astype(np.float64), G)
    return u.reshape(16, C, F).astype(kernel.dtype)


def filter_transform_adjoint(du: np.ndarray) -> np.ndarray:
    """dg = G^T dU G for every (c, f): dU (16, C, F) -> dkernel (3, 3, C, F), in dU's dtype."""
    C, F = du.shape[1:]
    g = np.einsum("xi,xycf,yj->ijcf", G, du.astype(np.float64).reshape(4, 4, C, F), G)
    return g.astype(du.dtype)


def forward(K: Any, x: np.ndarray, kernel: np.ndarray, pads: tuple[tuple[int, int], tuple[int, int]],
            out_hw: tuple[int, int], workspace: Any) -> np.ndarray:
    """z = conv(x, kernel) without bias: x (N, H, W, C), kernel (3, 3, C, F) -> z (N, OH, OW, F), a new array.

    ``K`` is the kernel backend, ``workspace(shape, dtype, slot)`` hands out the reused scratch arrays
    (V in slot 0, M in slot 1: both die before this returns). One block of images at a time
    (``image_blocks``): its V, its 16 products and its output transform."""
    N, _, _, C = x.shape
    F = kernel.shape[-1]
    th, tw = tiles(*out_hw)
    u = filter_transform(kernel.astype(x.dtype, copy=False))
    z = np.empty((N, *out_hw, F), dtype=x.dtype)
    for lo, hi in image_blocks(N, 16 * th * tw * (C + F) * x.dtype.itemsize):
        T = (hi - lo) * th * tw
        v = K.winograd_input(x[lo:hi], pads[0][0], pads[1][0], th, tw, out=workspace((16, T, C), x.dtype, 0))
        m = np.matmul(v, u, out=workspace((16, T, F), x.dtype, 1))
        z[lo:hi] = K.winograd_output(m, (hi - lo, *out_hw, F), th, tw)
    return z


def backward(K: Any, x: np.ndarray, kernel: np.ndarray, dz: np.ndarray,
             pads: tuple[tuple[int, int], tuple[int, int]], workspace: Any,
             input_grad: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
    """Gradients of z = conv(x, kernel) for dz (N, OH, OW, F): (dkernel (3, 3, C, F), dx (N, H, W, C) or None).

    dkernel = G^T [sum over tiles of V^T dM] G with dM = A dz A^T (V rebuilt from x, not kept from forward).
    dx is itself a 3x3 convolution, of dz with the kernel turned by 180 degrees and its channel axes swapped,
    padded by 2 - pad on each leading side: so it runs through ``forward`` too.
    """
    N, H, W, C = x.shape
    OH, OW, F = dz.shape[1:]
    th, tw = tiles(OH, OW)
    top, left = pads[0][0], pads[1][0]
    du = np.zeros((16, C, F), dtype=np.float64)  # summed over the blocks of images
    for lo, hi in image_blocks(N, 16 * th * tw * (C + F) * dz.dtype.itemsize):
        T = (hi - lo) * th * tw
        dm = K.winograd_output_adjoint(dz[lo:hi], th, tw, out=workspace((16, T, F), dz.dtype, 1))
        v = K.winograd_input(x[lo:hi], top, left, th, tw, out=workspace((16, T, C), dz.dtype, 0))
        du += np.matmul(v.transpose(0, 2, 1), dm)
    dkernel = filter_transform_adjoint(du).astype(dz.dtype)
    if not input_grad:
        return dkernel, None
    turned = np.ascontiguousarray(kernel[::-1, ::-1].transpose(0, 1, 3, 2))  # (3, 3, F, C)
    return dkernel, forward(K, dz, turned, ((2 - top, 0), (2 - left, 0)), (H, W), workspace)
