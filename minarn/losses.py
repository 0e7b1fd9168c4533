"""Categorical cross-entropy (paper Eq. 7) on logits, and the L1/L2 penalties of the dense head.

Each function returns ``(value, gradient)``: the forward value and its derivative with respect to its input.
"""

from __future__ import annotations

import numpy as np


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Stable log of the softmax over the last axis: z - max(z) - log(sum(exp(z - max(z))))."""
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def softmax_cross_entropy(logits: np.ndarray, y_onehot: np.ndarray, class_weights: np.ndarray | None = None
                          ) -> tuple[float, np.ndarray]:
    """Mean categorical cross-entropy of softmax(logits), differentiated together with the softmax.

    Shapes: logits, y_onehot (N, K), class_weights (K,) or None -> loss (scalar), dlogits (N, K).
    Math (Eq. 7): L = -(1/N) sum_n sum_k y_nk ln p_nk, p = softmax(z);  dL/dz = (p - y) / N.
    With ``class_weights`` w each image counts w_c of its class c, as Keras' ``class_weight`` does (a
    per-sample weight s_n = sum_k y_nk w_k, still divided by N): L = -(1/N) sum_n s_n sum_k y_nk ln p_nk,
    dL/dz_n = s_n (p_n - y_n) / N.
    Computing ln p as a log-softmax never takes the log of a rounded-to-0 probability (Keras' TensorFlow
    backend does the same when the softmax output comes straight from a layer).
    """
    if logits.shape != y_onehot.shape or logits.ndim != 2:
        raise ValueError(
            f"softmax_cross_entropy: logits and labels must both be (N, K), got {logits.shape} and {y_onehot.shape}"
        )
    n = logits.shape[0]
    log_p = log_softmax(logits)
    if class_weights is None:
        loss = float(-(y_onehot * log_p).sum() / n)
        dlogits = (np.exp(log_p) - y_onehot) / logits.dtype.type(n)
        return loss, dlogits.astype(logits.dtype, copy=False)
    weights = np.asarray(class_weights, dtype=logits.dtype)
    if weights.shape != (logits.shape[1],):
        raise ValueError(f"softmax_cross_entropy: class_weights must have shape ({logits.shape[1]},), "
                         f"got {weights.shape}")
    per_sample = y_onehot @ weights  # (N,)
    loss = float(-(per_sample[:, None] * y_onehot * log_p).sum() / n)
    dlogits = per_sample[:, None] * (np.exp(log_p) - y_onehot) / logits.dtype.type(n)
    return loss, dlogits.astype(logits.dtype, copy=False)


def l2_penalty(w: np.ndarray, factor: float) -> tuple[float, np.ndarray]:
    """Keras ``regularizers.l2(factor)``: P = factor * sum(w^2); dP/dw = 2 * factor * w."""
    return float(factor * np.sum(np.square(w, dtype=np.float64))), (2 * factor) * w


def l1_penalty(v: np.ndarray, factor: float, batch_size: int = 1) -> tuple[float, np.ndarray]:
    """Keras ``regularizers.l1(factor)``: P = factor * sum(|v|) / batch_size; dP/dv = factor * sign(v) / batch_size.

    ``batch_size`` > 1 gives an activity penalty averaged over the batch, as tf.keras 2 and Keras >= 3.15 do.
    The kink at 0 gets derivative 0 (sign(0) = 0).
    """
    scale = factor / batch_size
    value = float(scale * np.sum(np.abs(v), dtype=np.float64))
    return value, (np.sign(v) * v.dtype.type(scale)).astype(v.dtype, copy=False)
