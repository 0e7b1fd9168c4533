"""Element-wise activations (and softmax over the last axis), each with its explicit derivative.

Every class is a parameter-free layer working on any shape. ``get_activation(name)`` maps the names that
``Conv2D(activation=...)`` and ``Dense(activation=...)`` accept to a fresh layer.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import special

from minarn import kernels
from minarn.layers.base import Layer
from minarn.losses import softmax

_SQRT_2 = math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
# SELU constants (Klambauer et al. 2017), as in Keras.
SELU_ALPHA = 1.6732632423543772848170429916717
SELU_SCALE = 1.0507009873554804934193349852946


class _Elementwise(Layer):
    """Shared plumbing: check the input, keep it (and the output) for backward."""

    @property
    def keras_class(self) -> str:
        """Keras' ``Activation`` layer (``Activation("relu")``): what a stand-alone activation is in a summary."""
        return "Activation"

    def _keep(self, x: np.ndarray, out: np.ndarray, extra: np.ndarray | None = None) -> np.ndarray:
        """Keep x, the output and (GELU, Swish) an intermediate that backward reuses; return the output."""
        self._cache = (x, out, extra)
        return out

    def _check(self, x: np.ndarray) -> None:
        if not isinstance(x, np.ndarray) or not np.issubdtype(x.dtype, np.floating):
            raise TypeError(f"{self._describe()}: expected a floating-point numpy array, got {type(x).__name__}")

    def _input_output(self, dout: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        x, out, _ = self._saved()
        self._check_dout(dout, out.shape)
        return x, out

    def _input_extra(self, dout: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The kept input and intermediate (see ``_keep``), after checking ``dout``."""
        x, out, extra = self._saved()
        self._check_dout(dout, out.shape)
        return x, extra


class Linear(_Elementwise):
    """Identity. Math: out = x; dx = dout."""

    def forward(self, x: np.ndarray, training: bool = False) -> np.ndarray:
        self._check(x)
        return self._keep(x, x)

    def backward(self, dout: np.ndarray) -> np.ndarray:
        self._input_output(dout)
        return dout.copy()


class ReLU(_Elementwise):
    """Rectified linear unit. Math: out = max(x, 0); dx = dout * [x > 0] (the kink at 0 gets 0, as in Keras)."""

    def forward(self, x: np.ndarray, training: bool = False) -> np.ndarray:
        self._check(x)
        return self._keep(x, np.maximum(x, 0))

    def backward(self, dout: np.ndarray) -> np.ndarray:
        _, out = self._input_output(dout)
        if out.ndim == 0 or out.size == 0:
            return np.where(out > 0, dout, 0).astype(dout.dtype, copy=False)
        # [x > 0] == [out > 0]; one fused pass on the numba backend (kernels.activation_backward)
        C = out.shape[-1]
        dz = kernels.get_backend().activation_backward(dout.reshape(-1, C), out.reshape(-1, C), "relu")
        return dz.reshape(out.shape)


class Sigmoid(_Elementwise):
    """Logistic function, stable for large |x| (``scipy.special.expit`` never overflows).

    Math: s = 1 / (1 + exp(-x)); ds/dx = s * (1 - s); symmetric: s(-x) = 1 - s(x).
    """

    def forward(self, x: np.ndarray, training: bool = False) -> np.ndarray:
        self._check(x)
        return self._keep(x, special.expit(x))

    def backward(self, dout: np.ndarray) -> np.ndarray:
        _, s = self._input_output(dout)
        return dout * s * (1 - s)


class Tanh(_Elementwise):
    """Hyperbolic tangent. Math: out = tanh(x); dx = dout * (1 - out^2)."""

    def forward(self, x: np.ndarray, training: bool = False) -> np.ndarray:
        self._check(x)
        return self._keep(x, np.tanh(x))

    def backward(self, dout: np.ndarray) -> np.ndarray:
        _, t = self._input_output(dout)
        return dout * (1 - t * t)


class GELU(_Elementwise):
    """Gaussian error linear unit, exact erf form (paper Eq. 1-2; not the tanh approximation).

    Math: out = x * Phi(x), Phi(x) = 0.5 * (1 + erf(x / sqrt(2)));
    dx = dout * (Phi(x) + x * phi(x)), phi(x) = exp(-x^2 / 2) / sqrt(2 pi).
    """

    def forward(self, x: np.ndarray, training: bool = False) -> np.ndarray:
        self._check(x)
        cdf = 0.5 * (1 + special.erf(x / x.dtype.type(_SQRT_2)))
        return self._keep(x, x * cdf, cdf)

    def backward(self, dout: np.ndarray) -> np.ndarray:
        x, cdf = self._input_extra(dout)
        pdf = x.dtype.type(_INV_SQRT_2PI) * np.exp(-0.5 * x * x)
        return dout * (cdf + x * pdf)


class ELU(_Elementwise):
    """Exponential linear unit (alpha = 1). Math: out = x if x > 0 else exp(x) - 1; dx = dout * (1 or exp(x))."""

    def forward(self, x: np.ndarray, training: bool = False) -> np.ndarray:
        self._check(x)
        return self._keep(x, np.where(x > 0, x, np.expm1(np.minimum(x, 0))))

    def backward(self, dout: np.ndarray) -> np.ndarray:
        x, _ = self._input_output(dout)
        return dout * np.where(x > 0, 1, np.exp(np.minimum(x, 0))).astype(dout.dtype, copy=False)


class SELU(_Elementwise):
    """Scaled ELU. Math: out = scale * (x if x > 0 else alpha * (exp(x) - 1))."""

    def forward(self, x: np.ndarray, training: bool = False) -> np.ndarray:
        self._check(x)
        neg = SELU_ALPHA * np.expm1(np.minimum(x, 0))
        return self._keep(x, (SELU_SCALE * np.where(x > 0, x, neg)).astype(x.dtype, copy=False))

    def backward(self, dout: np.ndarray) -> np.ndarray:
        x, _ = self._input_output(dout)
        slope = SELU_SCALE * np.where(x > 0, 1, SELU_ALPHA * np.exp(np.minimum(x, 0)))
        return (dout * slope).astype(dout.dtype, copy=False)


class Swish(_Elementwise):
    """Swish / SiLU. Math: out = x * s(x); dx = dout * (s + x * s * (1 - s)), s = sigmoid(x)."""

    def forward(self, x: np.ndarray, training: bool = False) -> np.ndarray:
        self._check(x)
        s = special.expit(x)
        return self._keep(x, x * s, s)

    def backward(self, dout: np.ndarray) -> np.ndarray:
        x, s = self._input_extra(dout)
        return dout * (s + x * s * (1 - s))


class Softmax(_Elementwise):
    """Softmax over the last axis, stable (the row maximum is subtracted before ``exp``: ``losses.softmax``).

    Math: p_i = exp(x_i - m) / sum_j exp(x_j - m); dx = p * (dout - sum_j dout_j p_j).
    (A model's final softmax is differentiated together with the cross-entropy instead: dz = p - y.)
    """

    def forward(self, x: np.ndarray, training: bool = False) -> np.ndarray:
        self._check(x)
        return self._keep(x, softmax(x))

    def backward(self, dout: np.ndarray) -> np.ndarray:
        _, p = self._input_output(dout)
        return p * (dout - (dout * p).sum(axis=-1, keepdims=True))


ACTIVATIONS: dict[str, type[_Elementwise]] = {
    "linear": Linear,
    "relu": ReLU,
    "sigmoid": Sigmoid,
    "tanh": Tanh,
    "gelu": GELU,
    "elu": ELU,
    "selu": SELU,
    "swish": Swish,
    "silu": Swish,
    "softmax": Softmax,
}


def activation_name(layer: Layer) -> str | None:
    """The name ``get_activation`` takes for an activation layer (``ReLU()`` -> ``"relu"``); None for other layers."""
    return next((key for key, kind in ACTIVATIONS.items() if type(layer) is kind), None)


def get_activation(name: str | None, layer_name: str | None = None) -> _Elementwise:
    """A fresh activation layer for ``name`` (``None`` means linear); unknown names raise ``ValueError``."""
    key = "linear" if name is None else str(name).lower()
    if key not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}: expected one of {', '.join(sorted(ACTIVATIONS))} or None")
    return ACTIVATIONS[key](name=layer_name)
