"""Batch normalization over the last (channel) axis, with Keras' moving statistics."""

from __future__ import annotations

from typing import Any

import numpy as np

from minarn import kernels
from minarn.layers.base import Layer


class BatchNormalization(Layer):
    """Per-channel batch normalization (Keras ``BatchNormalization(axis=-1)``).

    Shapes: x (N, ..., C) -> out (N, ..., C); gamma, beta, moving_mean, moving_variance (C,).
    Math (training): mu, var = mean and biased variance of x over every axis but the last;
    x_hat = (x - mu) / sqrt(var + eps); out = gamma * x_hat + beta;
    moving = momentum * moving + (1 - momentum) * batch value (Keras' rule, biased variance).
    Math (inference): the same with moving_mean / moving_variance in place of mu / var.
    Backward (training), with m values per channel and g = dout * gamma:
    dx = (g - mean(g) - x_hat * mean(g * x_hat)) / sqrt(var + eps); dgamma = sum(dout * x_hat); dbeta = sum(dout).
    Backward (inference) treats the moving statistics as constants: dx = g / sqrt(moving_variance + eps).
    Kernels (``kernels.channel_moments`` / ``batchnorm_apply`` / ``batchnorm_backward``): the Numba backend
    takes the statistics in one pass and the backward in two; x_hat is recomputed from the kept input.
    ``reducer``: None, or an object with those two kernels' ``channel_moments`` and ``batchnorm_backward`` that
    takes the sums over more rows than this process holds (``minarn.distributed.SyncBatchNorm``: all ranks').
    """

    def __init__(
        self,
        channels: int,
        momentum: float = 0.99,
        epsilon: float = 1e-3,
        dtype: Any = np.float32,
        name: str | None = None,
    ) -> None:
        super().__init__(name)
        if int(channels) != channels or channels < 1:
            raise ValueError(f"{self._describe()}: channels must be a positive integer, got {channels!r}")
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"{self._describe()}: momentum must be in [0, 1], got {momentum!r}")
        if epsilon <= 0:
            raise ValueError(f"{self._describe()}: epsilon must be positive, got {epsilon!r}")
        self.channels, self.momentum, self.epsilon = int(channels), float(momentum), float(epsilon)
        self.params["gamma"] = np.ones(channels, dtype=dtype)
        self.params["beta"] = np.zeros(channels, dtype=dtype)
        self.grads = {k: np.zeros_like(v) for k, v in self.params.items()}
        self.state["moving_mean"] = np.zeros(channels, dtype=dtype)
        self.state["moving_variance"] = np.ones(channels, dtype=dtype)
        self.reducer: Any = None

    def compute_output_shape(self, input_shape: tuple[Any, ...]) -> tuple[Any, ...]:
        self._check_shape(tuple(input_shape), max(len(input_shape), 2), self.channels)
        return tuple(input_shape)

    def forward(self, x: np.ndarray, training: bool = False) -> np.ndarray:
        self._check_input(x, max(x.ndim, 2), self.channels)
        dt = x.dtype
        K = kernels.get_backend()
        x2 = x.reshape(-1, self.channels)  # (rows, C): every axis but the channel axis is averaged over
        if training:
            mean, var = (K if self.reducer is None else self.reducer).channel_moments(x2)  # numba: one pass
            m = self.momentum
            for key, batch_value in (("moving_mean", mean), ("moving_variance", var)):
                moving = self.state[key]
                moving *= moving.dtype.type(m)
                moving += (moving.dtype.type(1 - m) * batch_value).astype(moving.dtype, copy=False)
        else:
            mean = self.state["moving_mean"].astype(dt, copy=False)
            var = self.state["moving_variance"].astype(dt, copy=False)
        inv_std = 1 / np.sqrt(var + dt.type(self.epsilon))
        gamma = self.params["gamma"].astype(dt, copy=False)
        out = K.batchnorm_apply(x2, mean, inv_std, gamma, self.params["beta"].astype(dt, copy=False))
        # x itself is kept (x_hat is recomputed in backward): x is the previous layer's output, alive anyway.
        self._cache = (x2, mean, inv_std, training, x.shape)
        return out.reshape(x.shape)

    def backward(self, dout: np.ndarray) -> np.ndarray:
        x2, mean, inv_std, training, x_shape = self._saved()
        self._check_dout(dout, x_shape)
        gamma = self.params["gamma"]
        d2 = dout.reshape(-1, self.channels)
        if not training:
            self.grads["gamma"] = (d2 * ((x2 - mean) * inv_std)).sum(axis=0).astype(gamma.dtype, copy=False)
            self.grads["beta"] = d2.sum(axis=0).astype(gamma.dtype, copy=False)
            return (dout * (gamma.astype(dout.dtype, copy=False) * inv_std)).astype(dout.dtype, copy=False)
        dt = dout.dtype
        dx, dgamma, dbeta = (kernels.get_backend() if self.reducer is None else self.reducer).batchnorm_backward(
            d2, x2.astype(dt, copy=False), mean.astype(dt, copy=False), inv_std.astype(dt, copy=False),
            gamma.astype(dt, copy=False))
        self.grads["gamma"] = dgamma.astype(gamma.dtype, copy=False)
        self.grads["beta"] = dbeta.astype(gamma.dtype, copy=False)
        return dx.reshape(x_shape)
