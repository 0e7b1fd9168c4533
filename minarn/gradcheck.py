"""Numeric gradients by central differences, and the relative error used to compare them with backward.

The scalar being differentiated is always ``sum(f(x) * dout)`` for a *random* upstream gradient ``dout``:
with ``dout = ones`` (i.e. ``f(x).sum()``) the input gradients of batch norm and softmax vanish identically,
and a wrong backward would pass. Use float64: in float32 the differences drown in rounding.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np


def numeric_grad(
    f: Callable[[], np.ndarray],
    x: np.ndarray,
    dout: np.ndarray,
    eps: float = 1e-6,
    indices: Iterable[tuple[int, ...]] | None = None,
) -> np.ndarray:
    """d/dx of sum(f() * dout), perturbing ``x`` in place (it is restored afterwards).

    ``f`` takes no argument and must read ``x`` (e.g. ``lambda: layer.forward(x)``, or a closure over a
    parameter array). With ``indices`` only those coordinates are estimated (the rest stay 0), which keeps
    checks of large tensors cheap.
    Math: g_i = (L(x + eps e_i) - L(x - eps e_i)) / (2 eps),  L(x) = sum(f(x) * dout).
    """
    grad = np.zeros_like(x, dtype=np.float64)
    coords = np.ndindex(*x.shape) if indices is None else indices
    for idx in coords:
        original = x[idx]
        x[idx] = original + eps
        plus = float(np.sum(f() * dout))
        x[idx] = original - eps
        minus = float(np.sum(f() * dout))
        x[idx] = original
        grad[idx] = (plus - minus) / (2 * eps)
    return grad


def rel_error(a: np.ndarray, b: np.ndarray, floor: float = 1e-12) -> float:
    """Relative error of two gradients as a whole: ||a - b|| / max(||a|| + ||b||, floor) (Euclidean norms).

    A correct backward in float64 gives about 1e-9 or less; a wrong one gives something of order 1e-1.
    Measured over the whole tensor, so numeric noise in entries that are almost 0 does not dominate.
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"rel_error: shapes differ, {a.shape} vs {b.shape}")
    scale = float(np.linalg.norm(a) + np.linalg.norm(b))
    return float(np.linalg.norm(a - b)) / max(scale, floor)


def sample_indices(shape: tuple[int, ...], count: int, rng: np.random.Generator) -> list[tuple[int, ...]]:
    """``count`` distinct coordinates of an array of ``shape`` (all of them when there are fewer)."""
    size = int(np.prod(shape))
    flat = np.arange(size) if size <= count else rng.choice(size, size=count, replace=False)
    return [tuple(int(i) for i in np.unravel_index(k, shape)) for k in flat]


def check_layer(
    layer, x: np.ndarray, rng: np.random.Generator, training: bool = True, eps: float = 1e-6
) -> dict[str, float]:
    """Relative error of ``layer.backward`` against numeric gradients, for the input and every parameter.

    Returns ``{"x": err, "<param>": err, ...}``. Runs forward in ``training`` mode with a random upstream
    gradient drawn from ``rng``. The layer must be deterministic between calls (seed dropout yourself).
    """
    out = layer.forward(x, training=training)
    dout = rng.standard_normal(out.shape)
    dx = layer.backward(dout)
    analytic = {"x": dx, **{k: g.copy() for k, g in layer.grads.items()}}

    def run() -> np.ndarray:
        return layer.forward(x, training=training)

    errors = {"x": rel_error(analytic["x"], numeric_grad(run, x, dout, eps))}
    for key, p in layer.params.items():
        errors[key] = rel_error(analytic[key], numeric_grad(run, p, dout, eps))
    return errors
