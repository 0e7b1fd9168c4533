"""2-D convolution as im2col + one matrix product (Keras ``Conv2D``, channels-last)."""

from __future__ import annotations

import math
from typing import Any, Literal, overload

import numpy as np

from minarn import kernels
from minarn.kernels import winograd
from minarn.layers.activations import Linear, ReLU, Sigmoid, get_activation
from minarn.layers.base import Layer, glorot_uniform

# Activations the fast path fuses with the bias (see ``kernels.bias_activation``).
_FUSABLE = {Linear: "linear", ReLU: "relu", Sigmoid: "sigmoid"}
# A patch of at most this many values (kh * kw * C; the first layer's 3x3x1 is 9) goes through the direct
# kernels ``kernels.shallow_conv_*``: a matrix product with so short a reduction only moves memory.
SHALLOW_PATCH = 16
# A 3x3 stride-1 convolution this wide and this large runs Winograd's F(4x4, 3x3) (``kernels.winograd``) when the
# backend's tile transforms are fast (``K.WINOGRAD``): its forward pass always, its gradients only when it has at
# most ``WINOGRAD_MAX_WIDENING`` times as many output as input channels. Measured on 2 cores with AVX-512
# (benchmarks/RESULTS.md, session 11): F(4x4, 3x3) beat im2col in ARN-CNN's conv2d_5 (32 -> 64 channels on
# 31x31), conv2d_6 (64 -> 64, 31x31) and conv2d_10 (64 -> 64, 13x13) both ways, and in conv2d_13's forward pass
# (64 -> 256, 11x11), whose backward it did not speed up (the input gradient is a convolution from 256 channels
# down to 64). Below these sizes the transforms' memory traffic costs more than the fewer multiplications save.
# A backend may ask for larger maps (its own ``WINOGRAD_MIN_OUTPUT``: the NumPy one, whose transforms are slower).
# A layer's training forward pass can opt out (``winograd_forward``): ARNCNN keeps conv2d_5's on im2col for its
# ReLU's sake. F(4x4, 3x3)'s output transform adds the bias and applies a linear or ReLU activation as it stores.
WINOGRAD_MIN_CHANNELS = 32
WINOGRAD_MIN_OUTPUT = 100  # output positions per image
WINOGRAD_MAX_WIDENING = 2  # output / input channels, for the gradients
WINOGRAD_VARIANT = winograd.F4


def conv_output_size(size: int, k: int, stride: int, padding: str) -> int:
    """Output length along one axis: "valid" floor((size - k) / stride) + 1, "same" ceil(size / stride)."""
    if padding == "same":
        return math.ceil(size / stride)
    return (size - k) // stride + 1


def same_padding(size: int, k: int, stride: int) -> tuple[int, int]:
    """Keras/TensorFlow "same" padding along one axis: total = max((out - 1) * stride + k - size, 0),
    split with the extra row/column (if the total is odd) at the end: (total // 2, total - total // 2)."""
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + k - size, 0)
    return total // 2, total - total // 2


class Conv2D(Layer):
    """2-D convolution with bias and optional fused activation, Keras layout.

    Shapes: x (N, H, W, C) -> out (N, OH, OW, F); kernel (kh, kw, C, F); bias (F,).
    Math: cols = im2col(pad(x)) of shape (N*OH*OW, kh*kw*C); z = cols @ kernel.reshape(kh*kw*C, F) + bias;
    out = act(z).
    Backward: dz = act'(dout); dkernel = cols^T @ dz; dbias = sum_rows dz; dx = crop(col2im(dz @ kernel^T)).
    A 1x1 kernel at stride 1 skips im2col: the channels-last input viewed as (N*H*W, C) already is ``cols``.
    A short patch (kh*kw*C <= ``SHALLOW_PATCH``) with a fusable activation uses direct loops instead, and a
    wide 3x3 stride-1 convolution Winograd's algorithm (see ``WINOGRAD_MIN_CHANNELS``).
    Fast path: padding is folded into im2col (no padded copy), the columns live in a shared reused workspace
    and are rebuilt in backward from the kept input, and bias + linear/ReLU/sigmoid run as one fused kernel
    whose backward needs only the output (``kernels.bias_activation`` / ``activation_backward``).
    """

    def __init__(
        self,
        in_channels: int,
        filters: int,
        kernel_size: int | tuple[int, int],
        strides: int = 1,
        padding: str = "valid",
        activation: str | None = None,
        use_bias: bool = True,
        seed: int | None = None,
        dtype: Any = np.float32,
        name: str | None = None,
    ) -> None:
        super().__init__(name)
        kh, kw = (kernel_size, kernel_size) if isinstance(kernel_size, int) else tuple(kernel_size)
        if padding not in ("valid", "same"):
            raise ValueError(f"{self._describe()}: padding must be 'valid' or 'same', got {padding!r}")
        for what, v in (("in_channels", in_channels), ("filters", filters), ("kernel_size", kh),
                        ("kernel_size", kw), ("strides", strides)):
            if int(v) != v or v < 1:
                raise ValueError(f"{self._describe()}: {what} must be a positive integer, got {v!r}")
        self.in_channels, self.filters = int(in_channels), int(filters)
        # False keeps this layer's training forward pass on im2col whatever the size rule says (``_is_winograd``): for
        # an input that is exactly zero over whole regions (black image background), where im2col gives exact zeros
        # and Winograd's round-off +-1e-8, which flips the ReLU's derivative there (see ARNCNN: conv2d_5). The gradients
        # have no such kink (they are linear in dz) and still follow the size rule, and so does inference.
        self.winograd_forward = True
        self.kernel_size, self.strides, self.padding = (int(kh), int(kw)), int(strides), padding
        self.activation_name = activation
        self.activation = get_activation(activation, layer_name=f"{self.name}_activation")
        rng = np.random.default_rng(seed)
        fan_in, fan_out = kh * kw * in_channels, kh * kw * filters
        self.params["kernel"] = glorot_uniform((kh, kw, in_channels, filters), fan_in, fan_out, rng, dtype)
        self.grads["kernel"] = np.zeros_like(self.params["kernel"])
        if use_bias:
            self.params["bias"] = np.zeros(filters, dtype=dtype)
            self.grads["bias"] = np.zeros_like(self.params["bias"])

    def compute_output_shape(self, input_shape: tuple[Any, ...]) -> tuple[Any, ...]:
        self._check_shape(tuple(input_shape), 4, self.in_channels)
        N, H, W, _ = input_shape
        (kh, kw), s = self.kernel_size, self.strides
        OH, OW = conv_output_size(H, kh, s, self.padding), conv_output_size(W, kw, s, self.padding)
        if OH < 1 or OW < 1:
            raise ValueError(
                f"{self._describe()}: input of spatial size {H}x{W} is smaller than the {kh}x{kw} kernel"
            )
        return (N, OH, OW, self.filters)

    def _pads(self, H: int, W: int) -> tuple[tuple[int, int], tuple[int, int]]:
        (kh, kw), s = self.kernel_size, self.strides
        if self.padding == "valid":
            return (0, 0), (0, 0)
        return same_padding(H, kh, s), same_padding(W, kw, s)

    def _is_pointwise(self) -> bool:
        return self.kernel_size == (1, 1) and self.strides == 1

    def _is_shallow(self) -> bool:
        kh, kw = self.kernel_size
        return kh * kw * self.in_channels <= SHALLOW_PATCH and not self._is_pointwise()

    def _is_winograd(self, K: Any, x_shape: tuple[int, ...], training: bool = True, backward: bool = False) -> bool:
        """Whether Winograd (``WINOGRAD_VARIANT``) computes this layer's forward pass in training or inference
        (``backward=True``: its gradients) for an input of ``x_shape`` on backend ``K``. Either pass may run either
        algorithm: both compute the same convolution, to float32 round-off. ``winograd_forward = False`` keeps the
        training forward pass on im2col (inference has no ReLU derivative to keep exact)."""
        if not getattr(K, "WINOGRAD", False) or not (backward or self.winograd_forward or not training):
            return False
        if self.kernel_size != (3, 3) or self.strides != 1:
            return False
        _, OH, OW, F = self.compute_output_shape(x_shape)
        C = self.in_channels
        if C < WINOGRAD_MIN_CHANNELS or OH * OW < max(WINOGRAD_MIN_OUTPUT, getattr(K, "WINOGRAD_MIN_OUTPUT", 0)):
            return False
        return not backward or F <= WINOGRAD_MAX_WIDENING * C

    @property
    def fused_kind(self) -> str | None:
        """The activation as a kernel ``kind`` when bias and activation run fused into one pass (linear, ReLU,
        sigmoid: their derivative follows from the output alone), else None. With a fused kind, ``backward_linear``
        is the backward of the convolution alone: a caller that has dL/dz (the attention module) skips the
        activation's backward."""
        return _FUSABLE.get(type(self.activation))

    def forward(self, x: np.ndarray, training: bool = False) -> np.ndarray:
        self._check_input(x, 4, self.in_channels)
        N, OH, OW, F = self.compute_output_shape(x.shape)
        kh, kw = self.kernel_size
        K = kernels.get_backend()
        kernel = self.params["kernel"].astype(x.dtype, copy=False).reshape(kh * kw * self.in_channels, F)
        pads = self._pads(x.shape[1], x.shape[2])
        bias = self.params["bias"].astype(x.dtype, copy=False) if "bias" in self.params else None
        kind = self.fused_kind
        if kind is not None and self._is_shallow():
            out = K.shallow_conv_forward(x, kernel.reshape(kh, kw, self.in_channels, F), bias, self.strides, pads,
                                         kind)
            self._cache = (x, pads, out, kind)
            return out
        if self._is_winograd(K, x.shape, training):
            z = winograd.forward(K, x, kernel.reshape(kh, kw, self.in_channels, F), pads, (OH, OW),
                                 kernels.workspace, WINOGRAD_VARIANT, bias if kind else None, kind or "linear")
            if kind is not None:  # bias + activation already applied by the output transform
                self._cache = (x, pads, z, kind)
                return z
            z = z.reshape(-1, F)
        else:
            z = self._im2col_product(K, x, pads, kernel)
        if kind is not None:  # fast path: z = act(z + bias) in place, one pass
            out = K.bias_activation(z, bias, kind).reshape(N, OH, OW, F)
        else:
            if bias is not None:
                z += bias
            out = self.activation.forward(z.reshape(N, OH, OW, F), training)
        # Only the input is kept: backward rebuilds the columns (cheap next to the matrix products) instead of
        # holding kh*kw copies of the input per layer between forward and backward.
        self._cache = (x, pads, out, kind)
        return out

    def forward_preactivation(self, x: np.ndarray, training: bool = False) -> np.ndarray:
        """z = conv(x) *without* bias and activation, (N, OH, OW, F), for a caller that runs this layer's fused
        bias + activation (``fused_kind``) itself, in place on z, together with its own next step (the attention
        module: ``Multiply.forward_sigmoid_gate``). z is kept as the layer's output, so once the caller has made
        it act(z + bias), ``backward`` and ``backward_linear`` run exactly as after ``forward``."""
        self._check_input(x, 4, self.in_channels)
        if self.fused_kind is None or self._is_shallow():
            raise ValueError(f"{self._describe()}: forward_preactivation needs a fusable activation (linear, relu, "
                             f"sigmoid) and a patch longer than {SHALLOW_PATCH}; use forward")
        N, OH, OW, F = self.compute_output_shape(x.shape)
        kh, kw = self.kernel_size
        K = kernels.get_backend()
        kernel = self.params["kernel"].astype(x.dtype, copy=False)
        pads = self._pads(x.shape[1], x.shape[2])
        if self._is_winograd(K, x.shape, training):
            z = winograd.forward(K, x, kernel, pads, (OH, OW), kernels.workspace, WINOGRAD_VARIANT)
        else:
            z = self._im2col_product(K, x, pads, kernel.reshape(kh * kw * self.in_channels, F)).reshape(N, OH, OW, F)
        self._cache = (x, pads, z, self.fused_kind)
        return z

    def _column_blocks(self, x_shape: tuple[int, ...], itemsize: int) -> list[tuple[int, int]]:
        """The blocks of images whose im2col columns are built and used one at a time (``image_blocks``)."""
        (kh, kw), C = self.kernel_size, self.in_channels
        _, OH, OW, _ = self.compute_output_shape(x_shape)
        return kernels.image_blocks(x_shape[0], OH * OW * kh * kw * C * itemsize)

    def _im2col_product(self, K: Any, x: np.ndarray, pads: tuple[tuple[int, int], tuple[int, int]],
                        kernel: np.ndarray) -> np.ndarray:
        """z = cols @ kernel, (N*OH*OW, F) for kernel (kh*kw*C, F): the columns of one block of images at a time."""
        if self._is_pointwise():
            return x.reshape(-1, self.in_channels) @ kernel
        rows = int(np.prod(self.compute_output_shape(x.shape)[1:3]))  # output positions per image
        z = np.empty((x.shape[0] * rows, kernel.shape[1]), dtype=np.result_type(x, kernel))
        for lo, hi in self._column_blocks(x.shape, x.dtype.itemsize):
            np.matmul(self._columns(K, x[lo:hi], pads), kernel, out=z[lo * rows : hi * rows])
        return z

    def _columns(self, K: Any, x: np.ndarray, pads: tuple[tuple[int, int], tuple[int, int]]) -> np.ndarray:
        """cols (N*OH*OW, kh*kw*C) of the padded input; built in the shared workspace (they die right away)."""
        if self._is_pointwise():
            return x.reshape(-1, self.in_channels)
        (kh, kw), s = self.kernel_size, self.strides
        N, H, W, C = x.shape
        OH = (H + pads[0][0] + pads[0][1] - kh) // s + 1
        OW = (W + pads[1][0] + pads[1][1] - kw) // s + 1
        out = kernels.workspace((N * OH * OW, kh * kw * C), x.dtype)
        return K.im2col_padded(x, kh, kw, s, pads, out=out)

    def release_output(self) -> None:
        """Drop the output that ``forward`` kept (the activation's backward needs it), keeping the input: for a caller
        that gets dL/dz some other way and then calls ``backward_linear`` (``ConvReLUPool``: the ReLU's derivative
        at the pooling windows' winners follows from the pooled map). ``backward`` then refuses to run."""
        x, pads, _, kind = self._saved()
        self._cache = (x, pads, None, kind)

    # The overloads say that dx is there unless input_grad=False (a plain bool gives dx or None).
    @overload
    def backward(self, dout: np.ndarray, input_grad: Literal[True] = ...) -> np.ndarray: ...
    @overload
    def backward(self, dout: np.ndarray, input_grad: bool) -> np.ndarray | None: ...

    def backward(self, dout: np.ndarray, input_grad: bool = True) -> np.ndarray | None:
        """Fill ``grads`` and return dL/dx (N, H, W, C); with ``input_grad=False`` skip dx and return None
        (the first layer of a network: nothing upstream needs the gradient of the images)."""
        *_, out, kind = self._saved()
        if out is None:
            raise RuntimeError(f"{self._describe()}: its output was released after forward (release_output); only "
                               "backward_linear, given dL/dz, can run")
        self._check_dout(dout, out.shape)
        if kind is None:
            return self.backward_linear(self.activation.backward(dout), input_grad)
        if kind == "linear":
            return self.backward_linear(dout, input_grad)  # backward_linear never writes into dz
        F = self.filters
        K = kernels.get_backend()
        if "bias" not in self.params or self._is_shallow():  # (the short-patch kernel sums dz itself)
            return self.backward_linear(K.activation_backward(dout.reshape(-1, F), out.reshape(-1, F), kind).reshape(
                out.shape), input_grad)
        # one pass gives dz and its column sums, the bias gradient
        dz, dbias = K.activation_backward_and_sum(dout.reshape(-1, F), out.reshape(-1, F), kind)
        return self.backward_linear(dz.reshape(out.shape), input_grad, dbias)

    @overload
    def backward_linear(self, dz: np.ndarray, input_grad: Literal[True] = ...,
                        dbias: np.ndarray | None = ...) -> np.ndarray: ...
    @overload
    def backward_linear(self, dz: np.ndarray, input_grad: bool,
                        dbias: np.ndarray | None = ...) -> np.ndarray | None: ...

    def backward_linear(self, dz: np.ndarray, input_grad: bool = True,
                        dbias: np.ndarray | None = None) -> np.ndarray | None:
        """Backward through the convolution only, given dz = dL/dz for the pre-activation z (N, OH, OW, F).
        Returns dL/dx, or None when ``input_grad`` is False (the products for dx are then skipped).
        ``dbias``: the column sums of dz when the caller already has them (else they are computed here)."""
        x, pads, _, _ = self._saved()
        self._check_dout(dz, self.compute_output_shape(x.shape))
        (kh, kw), s = self.kernel_size, self.strides
        F = self.filters
        K = kernels.get_backend()
        kernel = self.params["kernel"]
        if self._is_shallow():
            dkernel, summed = K.shallow_conv_weight_grad(x.astype(dz.dtype, copy=False), dz, kh, kw, s, pads)
            self.grads["kernel"] = dkernel.astype(kernel.dtype, copy=False)
            if "bias" in self.params:
                self._set_bias_grad(dz, summed)
            if not input_grad:
                return None
            dcols = dz.reshape(-1, F) @ kernel.astype(dz.dtype, copy=False).reshape(-1, F).T
            return K.col2im_padded(dcols, x.shape, kh, kw, s, pads)
        if self._is_winograd(K, x.shape, backward=True):
            dkernel, dx = winograd.backward(K, x.astype(dz.dtype, copy=False), kernel.astype(dz.dtype, copy=False),
                                            dz, pads, kernels.workspace, input_grad, WINOGRAD_VARIANT)
            self.grads["kernel"] = dkernel.astype(kernel.dtype, copy=False)
            if "bias" in self.params:
                self._set_bias_grad(dz, dbias)
            return dx
        x = x.astype(dz.dtype, copy=False)
        kernel_t = kernel.astype(dz.dtype, copy=False).reshape(-1, F).T
        if self._is_pointwise():
            dz = dz.reshape(-1, F)
            self.grads["kernel"] = (dz.T @ x.reshape(-1, self.in_channels)).T.reshape(kernel.shape).astype(
                kernel.dtype, copy=False)
            if "bias" in self.params:
                self._set_bias_grad(dz, dbias)
            return (dz @ kernel_t).reshape(x.shape) if input_grad else None
        # One block of images at a time: its columns, its share of dkernel = cols^T dz (computed as (dz^T cols)^T:
        # OpenBLAS runs this long-reduction product faster with the wide matrix on the right), then, in the
        # columns' workspace (they are dead by then), dcols = dz kernel^T folded back onto the block's images.
        rows = dz.shape[1] * dz.shape[2]
        dz_rows = dz.reshape(-1, F)
        dkernel = np.zeros((F, kernel_t.shape[1]), dtype=np.float64)
        dx = np.empty(x.shape, dtype=dz.dtype) if input_grad else None
        turned, dz_pads = self._turned_kernel(x.shape, dz.shape, pads, dz.dtype)
        for lo, hi in self._column_blocks(x.shape, x.dtype.itemsize):
            dz_block = dz_rows[lo * rows : hi * rows]
            cols = self._columns(K, x[lo:hi], pads)
            dkernel += dz_block.T @ cols
            if dx is not None and turned is not None:  # dx = conv(dz, turned kernel): in the columns' workspace
                dz_cols = K.im2col_padded(dz[lo:hi], kh, kw, 1, dz_pads, out=kernels.workspace(
                    ((hi - lo) * x.shape[1] * x.shape[2], turned.shape[0]), dz.dtype))
                np.matmul(dz_cols, turned, out=dx[lo:hi].reshape(-1, self.in_channels))
            elif dx is not None:
                dcols = np.matmul(dz_block, kernel_t, out=cols)
                dx[lo:hi] = K.col2im_padded(dcols, x[lo:hi].shape, kh, kw, s, pads)
        self.grads["kernel"] = dkernel.T.reshape(kernel.shape).astype(kernel.dtype)
        if "bias" in self.params:
            self._set_bias_grad(dz_rows, dbias)
        return dx

    def _turned_kernel(self, x_shape: tuple[int, ...], dz_shape: tuple[int, ...],
                       pads: tuple[tuple[int, int], tuple[int, int]], dtype: Any
                       ) -> tuple[np.ndarray | None, tuple[tuple[int, int], tuple[int, int]]]:
        """For the im2col backward of a stride-1 layer whose dz holds no more values than its columns (3x3 "same"
        with as many output as input channels: conv2d_6 on the NumPy backend): the kernel turned by 180 degrees with
        its channel axes swapped, (kh*kw*F, C), and the padding of dz, k - 1 - pad, so that dx = im2col(dz) @ turned,
        a convolution of dz (one im2col and one product instead of the product and col2im's overlapping adds;
        measured 0.83 of the time on conv2d_6, benchmarks/RESULTS.md, session 13). Else (None, pads)."""
        (kh, kw), C, F = self.kernel_size, self.in_channels, self.filters
        (top, bottom), (left, right) = pads
        if self.strides != 1 or F * x_shape[1] * x_shape[2] > C * dz_shape[1] * dz_shape[2]:
            return None, pads
        turned = winograd.turned_kernel(self.params["kernel"].astype(dtype, copy=False)).reshape(kh * kw * F, C)
        return turned, ((kh - 1 - top, kh - 1 - bottom), (kw - 1 - left, kw - 1 - right))

    def _set_bias_grad(self, dz: np.ndarray, dbias: np.ndarray | None) -> None:
        """grads["bias"] = sum of dz over every position (N, OH, OW), or the ``dbias`` already summed."""
        total = dz.reshape(-1, self.filters).sum(axis=0) if dbias is None else dbias
        self.grads["bias"] = total.astype(self.params["bias"].dtype, copy=False)
