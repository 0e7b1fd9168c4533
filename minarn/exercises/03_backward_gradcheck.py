"""Exercises of lesson 3: the convolution's backward pass, with col2im.

Fill in the two functions below (``lessons/03_backward_gradcheck.py`` explains every step), then grade them with
``python -m minarn.exercises check 03_backward_gradcheck.py``. Work in float64, channels-last. im2col and
same_padding are lesson 2's exercises; minarn's own are imported below (or paste yours from 02_im2col_conv.py).
"""

import numpy as np

from minarn.kernels.numpy_ref import im2col  # im2col(x, kh, kw, stride) -> cols (N*OH*OW, kh*kw*C), (i, j, c)
from minarn.layers.conv import same_padding  # same_padding(size, k, stride) -> (before, after), Keras' split


def col2im(dcols, x_shape, kh, kw, stride):
    """Fold the rows of dcols back onto the input grid: the adjoint (transpose) of im2col.

    Args: dcols (N * OH * OW, kh * kw * C), rows (n, p, q) and columns (i, j, c) as im2col's;
          x_shape = (N, H, W, C) the shape of the input im2col was taken from; kh, kw, stride.
    Returns: dx of shape x_shape, with OH = (H - kh) // stride + 1, OW = (W - kw) // stride + 1.
    Math: dx[n, p * stride + i, q * stride + j, c] += dcols[(n, p, q), (i, j, c)]  for every row and column.
      A pixel that sat in several patches gets the SUM of their entries; a pixel in no patch (a dropped last
      row when the stride does not fit) gets 0. Adjoint: sum(im2col(x) * D) == sum(x * col2im(D)) for all x, D.
    Hints: start from zeros; reshape dcols to (N, OH, OW, kh, kw, C) and loop over the kh * kw offsets (i, j),
      adding each into the strided slice dx[:, i : i + stride * OH : stride, j : j + stride * OW : stride, :].
    """
    raise NotImplementedError("col2im: write this function (see lesson 03)")


def conv2d_backward(dout, x, kernel, stride=1, padding="valid"):
    """Backward pass of the convolution out = conv2d_forward(x, kernel, bias, stride, padding) (lesson 2).

    Args: dout (N, OH, OW, F) = dL/dout; x (N, H, W, C) the forward's input; kernel (kh, kw, C, F);
          stride; padding "valid" or "same" (as the forward).
    Returns: (dx, dkernel, dbias) with shapes (N, H, W, C), (kh, kw, C, F), (F,).
    Math: with x_pad = x padded as the forward did, cols = im2col(x_pad, kh, kw, stride),
      K2 = kernel.reshape(kh * kw * C, F) and dz = dout.reshape(N * OH * OW, F):
        dkernel = (cols^T @ dz) reshaped to (kh, kw, C, F)     [(kh*kw*C, N*OH*OW) @ (N*OH*OW, F)]
        dbias   = dz summed over its rows                        (every image and position)
        dx      = col2im(dz @ K2^T, x_pad.shape, kh, kw, stride), then cropped back to x's rows and columns
                  ("same": drop the padding, dx_pad[:, top : top + H, left : left + W]).
    """
    raise NotImplementedError("conv2d_backward: write this function (see lesson 03)")
