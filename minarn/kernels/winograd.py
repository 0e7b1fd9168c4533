"""Winograd's minimal filtering F(m x m, 3x3): a 3x3 convolution at stride 1 with fewer multiplications.

Lavin & Gray (2016), "Fast Algorithms for Convolutional Neural Networks". The output is cut into m x m tiles;
tile t reads the s x s input window d_t (s = m + 2, stride m between tiles, zeros outside the image) and

    Y_t = A^T [ U (.) V_t ] A,   U = G g G^T (filter, s x s),   V_t = B^T d_t B (input, s x s),

with (.) the element-wise product, per channel pair. Summed over input channels, each of the s^2 positions
(xi, nu) of the s x s grid becomes one matrix product: M[k] = V[k] @ U[k], V (s^2, T, C), U (s^2, C, F), so
s^2 products with a reduction over C replace one with a reduction over 9C: 9 m^2 / s^2 fewer multiplications,
2.25x for F(2x2, 3x3) (``F2``: s = 4) and 4x for F(4x4, 3x3) (``F4``: s = 6, the variant Conv2D runs on the Numba
backend). F2's transforms only add, subtract and halve; F4's multiply by up to 8 and 1/24, so its float32 error
is a few times larger (still a few float32 epsilons relative to the output's scale; lesson 16 measures both).
Everything is linear, so the backward pass applies the adjoint (transposed) transforms in reverse order:

    dM_t = A dY_t A^T,   dU = sum_t V_t^T dM_t (s^2 products),   dg = G^T dU G,
    and dx, a convolution of dY with the turned kernel, by the same forward algorithm.

The tile transforms are backend kernels (``winograd_input``, ``winograd_output``, ``winograd_output_adjoint``
in ``numpy_ref`` and ``numba_jit``, each given the variant's B^T or A^T); this module holds the matrices (their
one definition), the filter transform (computed in float64: it is tiny) and the products that ``Conv2D`` runs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from minarn.kernels.scratch import image_blocks

B_T = np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]], dtype=np.float64)
G = np.array([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]], dtype=np.float64)
A_T = np.array([[1, 1, 1, 0], [0, 1, -1, -1]], dtype=np.float64)
# F(4x4, 3x3) with the interpolation points 0, 1, -1, 2, -2 and infinity (Lavin & Gray's matrices).
B_T4 = np.array([[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0], [0, -2, -1, 2, 1, 0],
                 [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]], dtype=np.float64)
G4 = np.array([[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6], [1 / 24, 1 / 12, 1 / 6],
               [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]], dtype=np.float64)
A_T4 = np.array([[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]],
                dtype=np.float64)


@dataclass(frozen=True)
class Variant:
    """F(m x m, 3x3): B^T (s, s), G (s, 3), A^T (m, s) with s = m + 2."""

    b_t: np.ndarray
    g: np.ndarray
    a_t: np.ndarray

    @property
    def m(self) -> int:
        """Output tile side."""
        return int(self.a_t.shape[0])

    @property
    def s(self) -> int:
        """Input window side, m + 2."""
        return int(self.b_t.shape[0])


F2 = Variant(B_T, G, A_T)
F4 = Variant(B_T4, G4, A_T4)


def tiles(out_h: int, out_w: int, m: int = 2) -> tuple[int, int]:
    """Number of m x m output tiles along each axis (the last one may hang over the edge)."""
    return math.ceil(out_h / m), math.ceil(out_w / m)


def filter_transform(kernel: np.ndarray, variant: Variant = F2) -> np.ndarray:
    """U = G g G^T for every (c, f): kernel (3, 3, C, F) -> U (s^2, C, F), in the kernel's dtype."""
    C, F = kernel.shape[2:]
    s, g = variant.s, variant.g
    rows = (g @ kernel.astype(np.float64).reshape(3, -1)).reshape(s, 3, C * F)  # G along i, then along j:
    return (g @ rows).reshape(s * s, C, F).astype(kernel.dtype)


def filter_transform_adjoint(du: np.ndarray, variant: Variant = F2) -> np.ndarray:
    """dg = G^T dU G for every (c, f): dU (s^2, C, F) -> dkernel (3, 3, C, F), in dU's dtype."""
    C, F = du.shape[1:]
    s, g = variant.s, variant.g
    rows = (g.T @ du.astype(np.float64).reshape(s, -1)).reshape(3, s, C * F)  # G^T along x, then along y
    return (g.T @ rows).reshape(3, 3, C, F).astype(du.dtype)


def turned_kernel(kernel: np.ndarray) -> np.ndarray:
    """The kernel of the input gradient's convolution: kernel (kh, kw, C, F) turned by 180 degrees with its channel
    axes swapped, (kh, kw, F, C), contiguous. dx = conv(dz padded by k - 1 - pad, turned_kernel(kernel))."""
    return np.ascontiguousarray(kernel[::-1, ::-1].transpose(0, 1, 3, 2))


def forward(K: Any, x: np.ndarray, kernel: np.ndarray, pads: tuple[tuple[int, int], tuple[int, int]],
            out_hw: tuple[int, int], workspace: Any, variant: Variant = F2, bias: np.ndarray | None = None,
            kind: str = "linear") -> np.ndarray:
    """z = act(conv(x, kernel) + bias): x (N, H, W, C), kernel (3, 3, C, F) -> z (N, OH, OW, F), a new array;
    by default (no bias, linear) the convolution alone. ``kind`` is one of ``numpy_ref.ACTIVATION_KINDS``.

    ``K`` is the kernel backend, ``workspace(shape, dtype, slot)`` hands out the reused scratch arrays
    (V in slot 0, M in slot 1: both die before this returns). One block of images at a time
    (``image_blocks``): its V, its s^2 products and its output transform, which writes the block's part of z
    with the bias and activation applied (``winograd_output``)."""
    N, _, _, C = x.shape
    F = kernel.shape[-1]
    th, tw = tiles(*out_hw, variant.m)
    k = variant.s**2
    u = filter_transform(kernel.astype(x.dtype, copy=False), variant)
    b_t, a_t = variant.b_t.astype(x.dtype), variant.a_t.astype(x.dtype)
    z = np.empty((N, *out_hw, F), dtype=x.dtype)
    for lo, hi in image_blocks(N, k * th * tw * (C + F) * x.dtype.itemsize):
        T = (hi - lo) * th * tw
        v = K.winograd_input(x[lo:hi], pads[0][0], pads[1][0], th, tw, b_t, out=workspace((k, T, C), x.dtype, 0))
        m = np.matmul(v, u, out=workspace((k, T, F), x.dtype, 1))
        K.winograd_output(m, (hi - lo, *out_hw, F), th, tw, a_t, bias, kind, out=z[lo:hi])
    return z


def backward(K: Any, x: np.ndarray, kernel: np.ndarray, dz: np.ndarray,
             pads: tuple[tuple[int, int], tuple[int, int]], workspace: Any,
             input_grad: bool = True, variant: Variant = F2) -> tuple[np.ndarray, np.ndarray | None]:
    """Gradients of z = conv(x, kernel) for dz (N, OH, OW, F): (dkernel (3, 3, C, F), dx (N, H, W, C) or None).

    dkernel = G^T [sum over tiles of V^T dM] G with dM = A dz A^T (V rebuilt from x, not kept from forward).
    dx is itself a 3x3 convolution, of dz with the kernel turned by 180 degrees and its channel axes swapped,
    padded by 2 - pad on each leading side: so it runs through ``forward`` too.
    """
    N, H, W, C = x.shape
    OH, OW, F = dz.shape[1:]
    th, tw = tiles(OH, OW, variant.m)
    k = variant.s**2
    b_t, a_t = variant.b_t.astype(dz.dtype), variant.a_t.astype(dz.dtype)
    top, left = pads[0][0], pads[1][0]
    du = np.zeros((k, C, F), dtype=np.float64)  # summed over the blocks of images
    for lo, hi in image_blocks(N, k * th * tw * (C + F) * dz.dtype.itemsize):
        T = (hi - lo) * th * tw
        dm = K.winograd_output_adjoint(dz[lo:hi], th, tw, a_t, out=workspace((k, T, F), dz.dtype, 1))
        v = K.winograd_input(x[lo:hi], top, left, th, tw, b_t, out=workspace((k, T, C), dz.dtype, 0))
        du += np.matmul(v.transpose(0, 2, 1), dm)
    dkernel = filter_transform_adjoint(du, variant).astype(dz.dtype)
    if not input_grad:
        return dkernel, None
    return dkernel, forward(K, dz, turned_kernel(kernel), ((2 - top, 0), (2 - left, 0)), (H, W), workspace, variant)
