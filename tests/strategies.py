"""Shared test helpers: hypothesis draws the *shapes*, a seeded NumPy generator draws the *numbers*.

Drawing values from ``np.random.default_rng(seed)`` (not hypothesis' ``arrays()``) keeps examples fast and free
of the ties and kinks that shrinking toward zeros would manufacture (ReLU at 0, max-pool ties).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from hypothesis import assume
from hypothesis import strategies as st

from minarn import kernels
from minarn.gradcheck import check_layer, numeric_grad, rel_error
from minarn.layers import BatchNormalization, Conv2D, Dense, MaxPooling2D

# Backends that can run here, NumPy first; numba only when it is importable.
BACKENDS: list[str] = kernels.available_backends()

SEEDS = st.integers(0, 2**32 - 1)

# Norm-relative error (minarn.gradcheck.rel_error) accepted for float64 central differences.
GRAD_TOL = 1e-6

# Activations with a continuous derivative: central differences are safe at any input.
# (relu and selu have a kink at 0 and are checked with inputs kept away from it.)
SMOOTH_ACTIVATIONS: tuple[str | None, ...] = (None, "linear", "sigmoid", "tanh", "gelu", "elu", "swish", "softmax")


# -- values ----------------------------------------------------------------------------------------------
def uniform(rng: np.random.Generator, shape: tuple[int, ...], dtype=np.float64, bound: float = 3.0) -> np.ndarray:
    """Values in [-bound, bound]."""
    return rng.uniform(-bound, bound, size=shape).astype(dtype)


def distinct(rng: np.random.Generator, shape: tuple[int, ...], dtype=np.float64, bound: float = 3.0) -> np.ndarray:
    """A shuffled, evenly spaced grid in [-bound, bound]: any two values differ by >= 2 * bound / size,
    so a 1e-6 perturbation never changes which input wins a max-pool window."""
    size = int(np.prod(shape))
    ranks = rng.permutation(size).astype(np.float64)
    values = (ranks - (size - 1) / 2) * (2 * bound / max(size, 1))
    return values.reshape(shape).astype(dtype)


def away_from_zero(x: np.ndarray, margin: float = 1e-3) -> np.ndarray:
    """Shift every value away from 0 by 2 * margin (keeps ReLU/SELU kinks out of the difference quotient)."""
    return np.where(x >= 0, x + 2 * margin, x - 2 * margin).astype(x.dtype)


def random_dout(rng: np.random.Generator, shape: tuple[int, ...], dtype=np.float64) -> np.ndarray:
    """A random upstream gradient (never ones: with ones BN's and softmax's input gradients vanish)."""
    return rng.standard_normal(shape).astype(dtype)


# -- gradient checks -------------------------------------------------------------------------------------
@contextlib.contextmanager
def numba_threads(count: int) -> Iterator[None]:
    """Run a block with ``count`` Numba threads (a no-op without numba)."""
    if not kernels.numba_available():
        yield
        return
    import numba

    previous = numba.get_num_threads()
    numba.set_num_threads(min(count, numba.config.NUMBA_NUM_THREADS))
    try:
        yield
    finally:
        numba.set_num_threads(previous)


def check_layer_on(
    backend: str, layer, x: np.ndarray, rng: np.random.Generator, training: bool = True
) -> dict[str, float]:
    """``minarn.gradcheck.check_layer`` under ``backend``.

    On the Numba backend the analytic pass runs with the default (parallel) thread pool, the hundreds of
    forwards of the numeric pass with one thread: waking the pool costs 0.5-15 ms per call on a tiny,
    busy machine, against microseconds single-threaded. Same compiled kernels, same numbers.
    """
    with kernels.backend(backend):
        if backend == "numpy":
            return check_layer(layer, x, rng, training=training)
        out = layer.forward(x, training=training)
        dout = rng.standard_normal(out.shape)
        analytic = {"x": layer.backward(dout), **{k: g.copy() for k, g in layer.grads.items()}}

        def run() -> np.ndarray:
            return layer.forward(x, training=training)

        with numba_threads(1):
            return {
                key: rel_error(analytic[key], numeric_grad(run, array, dout))
                for key, array in (("x", x), *layer.params.items())
            }


# -- shapes ----------------------------------------------------------------------------------------------
def keras_out_and_pads(size: int, k: int, stride: int, padding: str) -> tuple[int, tuple[int, int]]:
    """Independent restatement of Keras' output size and padding split (the extra pad goes at the end)."""
    if padding == "valid":
        return (size - k) // stride + 1, (0, 0)
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + k - size, 0)
    return out, (total // 2, total - total // 2)


@dataclass(frozen=True)
class ConvCase:
    n: int
    h: int
    w: int
    c: int
    f: int
    kh: int
    kw: int
    stride: int
    padding: str
    activation: str | None = None
    use_bias: bool = True

    @property
    def kernel_size(self) -> int | tuple[int, int]:
        return self.kh if self.kh == self.kw else (self.kh, self.kw)

    @property
    def out_shape(self) -> tuple[int, int, int, int]:
        oh, _ = keras_out_and_pads(self.h, self.kh, self.stride, self.padding)
        ow, _ = keras_out_and_pads(self.w, self.kw, self.stride, self.padding)
        return (self.n, oh, ow, self.f)

    def build(self, rng: np.random.Generator, dtype=np.float64, param_dtype=None) -> tuple[Conv2D, np.ndarray]:
        """A layer (Glorot kernel from a drawn seed, random bias) and an input in [-3, 3]."""
        layer = Conv2D(
            self.c,
            self.f,
            self.kernel_size,
            strides=self.stride,
            padding=self.padding,
            activation=self.activation,
            use_bias=self.use_bias,
            seed=int(rng.integers(2**31)),
            dtype=dtype if param_dtype is None else param_dtype,
        )
        if self.use_bias:
            layer.params["bias"][...] = rng.uniform(-1, 1, size=self.f)
        return layer, uniform(rng, (self.n, self.h, self.w, self.c), dtype)


@st.composite
def conv_cases(
    draw, activations: tuple[str | None, ...] = (None,), max_size: int = 7, vary_bias: bool = True
) -> ConvCase:
    """N 1-2, H and W 1-max_size independently (odd, non-square), C and F 1-3, kernel 1-3 (square or not,
    1x1 included), stride 1-2, "valid" or "same"; the output is never empty."""
    n = draw(st.integers(1, 2))
    h = draw(st.integers(1, max_size))
    w = draw(st.integers(1, max_size))
    c = draw(st.integers(1, 3))
    f = draw(st.integers(1, 3))
    kh = draw(st.integers(1, 3))
    kw = draw(st.one_of(st.just(kh), st.integers(1, 3)))
    stride = draw(st.integers(1, 2))
    padding = draw(st.sampled_from(["valid", "same"]))
    activation = draw(st.sampled_from(activations))
    use_bias = draw(st.booleans()) if vary_bias else True
    case = ConvCase(n, h, w, c, f, kh, kw, stride, padding, activation, use_bias)
    _, oh, ow, _ = case.out_shape
    assume(oh >= 1 and ow >= 1)
    return case


@dataclass(frozen=True)
class PoolCase:
    n: int
    h: int
    w: int
    c: int
    pool: int
    stride: int | None = None

    @property
    def out_shape(self) -> tuple[int, int, int, int]:
        s = self.pool if self.stride is None else self.stride
        return (self.n, (self.h - self.pool) // s + 1, (self.w - self.pool) // s + 1, self.c)

    def build(self, rng: np.random.Generator, dtype=np.float64) -> tuple[MaxPooling2D, np.ndarray]:
        """A layer and an input of distinct values (no near-ties)."""
        return MaxPooling2D(self.pool, self.stride), distinct(rng, (self.n, self.h, self.w, self.c), dtype)


@st.composite
def pool_cases(draw, max_size: int = 7) -> PoolCase:
    """pool 1-3, stride default (= pool) or 1-3 (overlapping, adjacent or skipping windows), odd sizes."""
    pool = draw(st.integers(1, 3))
    stride = draw(st.one_of(st.none(), st.integers(1, 3)))
    h = draw(st.integers(1, max_size))
    w = draw(st.integers(1, max_size))
    assume(h >= pool and w >= pool)
    return PoolCase(draw(st.integers(1, 2)), h, w, draw(st.integers(1, 3)), pool, stride)


@dataclass(frozen=True)
class DenseCase:
    n: int
    features: int
    units: int
    activation: str | None = None
    use_bias: bool = True

    def build(self, rng: np.random.Generator, dtype=np.float64, param_dtype=None) -> tuple[Dense, np.ndarray]:
        layer = Dense(
            self.features,
            self.units,
            activation=self.activation,
            use_bias=self.use_bias,
            seed=int(rng.integers(2**31)),
            dtype=dtype if param_dtype is None else param_dtype,
        )
        if self.use_bias:
            layer.params["bias"][...] = rng.uniform(-1, 1, size=self.units)
        return layer, uniform(rng, (self.n, self.features), dtype)


@st.composite
def dense_cases(draw, activations: tuple[str | None, ...] = (None,)) -> DenseCase:
    return DenseCase(
        n=draw(st.integers(1, 4)),
        features=draw(st.integers(1, 6)),
        units=draw(st.integers(1, 5)),
        activation=draw(st.sampled_from(activations)),
        use_bias=draw(st.booleans()),
    )


@dataclass(frozen=True)
class BNCase:
    shape: tuple[int, ...]
    momentum: float = 0.99

    @property
    def channels(self) -> int:
        return self.shape[-1]

    def build(self, rng: np.random.Generator, dtype=np.float64) -> tuple[BatchNormalization, np.ndarray]:
        """Random gamma, beta and moving statistics (variance in [0.5, 2]), input in [-3, 3]."""
        layer = BatchNormalization(self.channels, momentum=self.momentum, dtype=dtype)
        layer.params["gamma"][...] = rng.uniform(0.5, 2.0, size=self.channels) * rng.choice([-1, 1], self.channels)
        layer.params["beta"][...] = rng.uniform(-1, 1, size=self.channels)
        layer.state["moving_mean"][...] = rng.uniform(-1, 1, size=self.channels)
        layer.state["moving_variance"][...] = rng.uniform(0.5, 2.0, size=self.channels)
        return layer, uniform(rng, self.shape, dtype)


@st.composite
def bn_cases(draw, min_per_channel: int = 1) -> BNCase:
    """Dense-style (N, C), sequence-style (N, L, C) and conv-style (N, H, W, C) inputs."""
    rank = draw(st.sampled_from([2, 3, 4]))
    c = draw(st.integers(1, 4))
    if rank == 2:
        lead = (draw(st.integers(1, 6)),)
    else:
        lead = (draw(st.integers(1, 3)),) + tuple(draw(st.integers(1, 4)) for _ in range(rank - 2))
    assume(int(np.prod(lead)) >= min_per_channel)
    return BNCase(lead + (c,), momentum=draw(st.sampled_from([0.0, 0.5, 0.9, 0.99])))


def small_shapes(min_dims: int = 1, max_dims: int = 4, max_side: int = 5):
    """Any small array shape, for element-wise layers."""
    return st.lists(st.integers(1, max_side), min_size=min_dims, max_size=max_dims).map(tuple)
