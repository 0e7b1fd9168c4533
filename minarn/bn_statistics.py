"""Batch normalization's moving statistics, recomputed from data at the current weights ("precise BN").

In training, Keras updates ``moving = 0.99 * moving + 0.01 * batch value`` after every batch, so the
statistics that inference uses are an average over roughly the last 100 batches (4,000 images at batch 40),
taken while the weights kept changing. When the weights move fast, inference can meet moving statistics that
no longer describe its own activations. ``recompute_batchnorm_statistics`` replaces them with the average
batch statistics over a set of images at the frozen current weights; comparing the validation loss before
and after measures how much of it was moving-statistics lag (tools/trace_epoch.py does this along an epoch).

Reference: Y. Wu and J. Johnson, "Rethinking 'Batch' in BatchNorm", 2021 (section 3, "precise BN").
"""

from __future__ import annotations

import numpy as np

from minarn.layers.norm import BatchNormalization
from minarn.model import ARNCNN

Statistics = dict[str, tuple[np.ndarray, np.ndarray]]


def batchnorm_layers(model: ARNCNN) -> list[BatchNormalization]:
    """The model's batch normalization layers, in forward order."""
    return [layer for layer in model.layers if isinstance(layer, BatchNormalization)]


def moving_statistics(model: ARNCNN) -> Statistics:
    """Copies of every batch normalization layer's (moving_mean, moving_variance), keyed by layer name."""
    return {bn.name: (bn.state["moving_mean"].copy(), bn.state["moving_variance"].copy())
            for bn in batchnorm_layers(model)}


def set_moving_statistics(model: ARNCNN, stats: Statistics) -> None:
    """Write (moving_mean, moving_variance) pairs, as ``moving_statistics`` returns them, into the layers."""
    for bn in batchnorm_layers(model):
        if bn.name not in stats:
            raise KeyError(f"set_moving_statistics: no statistics for layer {bn.name!r}")
        mean, var = stats[bn.name]
        bn.state["moving_mean"][...] = mean
        bn.state["moving_variance"][...] = var


def recompute_batchnorm_statistics(model: ARNCNN, images: np.ndarray, batch_size: int = 40) -> Statistics:
    """Set each batch norm layer's moving statistics to its batch statistics averaged over ``images``.

    Shapes: images (N, H, W, 1), uint8 pixels (scaled by 1/255) or floats. The images go through the
    convolutional part in training mode (batch statistics, as in a training step; no dropout is involved: it
    sits in the dense head), ``batch_size`` at a time; for each layer, mean_bar = sum_b n_b mean_b / N and
    var_bar = sum_b n_b var_b / N, with var_b the biased batch variance that Keras also averages. Only the
    moving statistics change: no weight does.
    Returns the statistics that were replaced (``set_moving_statistics`` puts them back).
    """
    if images.ndim != 4 or len(images) == 0:
        raise ValueError(f"recompute_batchnorm_statistics: expected images of shape (N, H, W, C) with N >= 1, "
                         f"got shape {images.shape}")
    if batch_size < 1:
        raise ValueError(f"recompute_batchnorm_statistics: batch_size must be >= 1, got {batch_size}")
    layers = batchnorm_layers(model)
    old = moving_statistics(model)
    sums = {bn.name: (np.zeros(bn.channels), np.zeros(bn.channels)) for bn in layers}
    momenta = [bn.momentum for bn in layers]
    try:
        for bn in layers:
            bn.momentum = 0.0  # moving := this batch's value, read back after each forward pass
        for start in range(0, len(images), batch_size):
            x = model._prepare(images[start : start + batch_size])  # uint8 -> x / 255 in the model's dtype
            model.features(x, training=True)
            for bn in layers:
                mean_sum, var_sum = sums[bn.name]
                mean_sum += len(x) * bn.state["moving_mean"].astype(np.float64)
                var_sum += len(x) * bn.state["moving_variance"].astype(np.float64)
    except BaseException:
        set_moving_statistics(model, old)
        raise
    finally:
        for bn, m in zip(layers, momenta):
            bn.momentum = m
    set_moving_statistics(model, {name: (m / len(images), v / len(images)) for name, (m, v) in sums.items()})
    return old
