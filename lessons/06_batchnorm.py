# %% [markdown]
# # Lesson 6: batch normalization, in training and in inference
#
# **What it teaches.** Batch normalization per channel, with the statistics of the batch (training) or the
# moving statistics (inference); the moving averages with Keras' momentum 0.99 and how slowly they warm up;
# the backward pass in training mode, and why its gradient check needs a random upstream gradient; how the
# moving average lags behind drifting activations, and how recomputing the statistics removes the lag.
#
# **Prerequisites.** Lesson 3 (backward passes, `gradcheck.check_layer`). Lesson 2 helps: batch norm sits
# after the convolutions, on their (N, H, W, C) outputs.
#
# **Time.** About 20 minutes to read; 5 s to run (`MINARN_LESSON_FAST=1`: 200 warm-up steps instead of 600).
#
# **Exercises.** `python -m minarn.exercises new DIR` writes `06_batchnorm.py` with the stubs of
# `batchnorm_forward_train`, `batchnorm_forward_inference`, `batchnorm_backward` and `update_moving`;
# `python -m minarn.exercises check DIR/06_batchnorm.py` grades them.
#
# **Try this.**
# 1. In `batchnorm_forward_train`, take the statistics over the batch axis only, `axes = 0` (one mean per
#    pixel and channel: every activation normalized on its own). Section 1 then prints statistics of shape
#    (5, 5, 4) instead of (4,), and its first check fails (off by about 1): minarn, like Keras, normalizes
#    each channel over all images AND all pixels.
# 2. In `batchnorm_backward`, drop the last term, `- x_hat * (g * x_hat).mean(axis=axes)`. The dout = ones
#    check of section 4 still passes (dx = 0 with and without the term), but the comparison with minarn for
#    a random dout stops the lesson, dx off by about 0.4: only a random upstream gradient exposes the bug.

# %% [markdown]
# ## Training mode
# BatchNormalization normalizes every channel c with the statistics of the current batch, taken over all
# images AND all pixels (axes N, H, W), not per activation:
#
#     mu_c = mean(x[..., c]),  var_c = mean((x[..., c] - mu_c)^2),  x_hat = (x - mu_c) / sqrt(var_c + eps),
#     out = gamma_c * x_hat + beta_c          (Keras defaults: eps = 1e-3, momentum 0.99).
#
# So each channel comes out with mean 0 and variance var/(var + eps) ~ 1; gamma and beta (trainable) can
# scale and shift it back if that helps.
#
# ## Moving statistics, used in inference
# The layer also tracks moving statistics, never trained, only averaged:
#
#     moving_mean = 0.99 * moving_mean + 0.01 * mu,   moving_variance likewise with var.
#
# Inference uses them instead of the batch's, so a prediction does not depend on the other images of the
# batch. After t steps the starting value (0 and 1) still weighs 0.99^t: it needs a few hundred steps.
#
# ## Backward
# Backward (training) must include how mu and var depend on x, with m values per channel:
#
#     dx = (g - mean(g) - x_hat * mean(g * x_hat)) / sqrt(var + eps),  g = dout * gamma;
#     dgamma = sum(dout * x_hat),  dbeta = sum(dout)     (sums and means over N, H, W).
#
# With dout = ones that is exactly 0, so gradient checks need a random upstream gradient.
#
# ## The lag
# While training changes the weights, the activations' true mean drifts, and the exponential average trails
# a steady drift of s per step by m/(1 - m) * s = 99 s. Inference then meets statistics of about 100 steps
# ago. `minarn.bn_statistics.recompute_batchnorm_statistics` removes the lag by averaging the batch
# statistics over some images at the frozen current weights ("precise BN"); tools/trace_epoch.py uses it to
# ask whether a validation spike is this lag or the weights themselves.
#
# Run as a script: `python lessons/06_batchnorm.py` (figures go to `./lesson_figures`, or to
# `$MINARN_LESSON_OUT`); or open it as a notebook (see `lessons/README.md`).

# %%
import os

from minarn import lesson_support

lesson_support.use_matplotlib()  # off-screen for a script, inline in a notebook
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

import minarn  # noqa: E402
from minarn import kernels  # noqa: E402
from minarn.bn_statistics import recompute_batchnorm_statistics  # noqa: E402
from minarn.gradcheck import check_layer  # noqa: E402

FAST = os.environ.get("MINARN_LESSON_FAST") == "1"
kernels.use_backend("numpy")  # the readable reference path (lesson 15 compares it with Numba)
rng = np.random.default_rng(0)
true_mean = np.array([5.0, -3.0, 0.0, 100.0])  # four channels on very different scales
true_std = np.array([2.0, 0.1, 3.0, 30.0])
np.set_printoptions(precision=3, suppress=True)


def batch(n=16):
    """A batch of 'feature maps' (n, 5, 5, 4) whose channels have the means and spreads above."""
    return true_mean + true_std * rng.standard_normal((n, 5, 5, 4))


# %% [markdown]
# ## The functions of this lesson (the exercises)
# The statistics run over every axis but the last (the channel axis): (N, H, W) for a feature map. The
# variance is the biased one (divided by m, not m - 1), as Keras computes it.


# %%
def batchnorm_forward_train(x, gamma, beta, eps=1e-3):
    """Training-mode batch norm: x (N, ..., C), gamma, beta (C,) -> (out like x, mean (C,), var (C,)).

    mean, var = batch mean and biased variance over every axis but the last; out = gamma * x_hat + beta.
    """
    axes = tuple(range(x.ndim - 1))  # (0, 1, 2) for (N, H, W, C): one statistic per channel
    mean, var = x.mean(axis=axes), x.var(axis=axes)
    x_hat = (x - mean) / np.sqrt(var + eps)
    return gamma * x_hat + beta, mean, var


def batchnorm_forward_inference(x, gamma, beta, moving_mean, moving_var, eps=1e-3):
    """Inference-mode batch norm: the moving statistics (C,) in place of the batch's. x (N, ..., C) -> out."""
    return gamma * (x - moving_mean) / np.sqrt(moving_var + eps) + beta


# %% [markdown]
# The backward pass recomputes the statistics from x (as minarn's layer recomputes x_hat from the kept input).


# %%
def batchnorm_backward(dout, x, gamma, eps=1e-3):
    """Training-mode backward: dout, x (N, ..., C), gamma (C,) -> (dx like x, dgamma (C,), dbeta (C,)).

    dx = (g - mean(g) - x_hat * mean(g * x_hat)) / sqrt(var + eps) with g = dout * gamma; means per channel.
    """
    axes = tuple(range(x.ndim - 1))
    mean, var = x.mean(axis=axes), x.var(axis=axes)
    inv_std = 1.0 / np.sqrt(var + eps)
    x_hat = (x - mean) * inv_std
    g = dout * gamma
    dx = (g - g.mean(axis=axes) - x_hat * (g * x_hat).mean(axis=axes)) * inv_std
    return dx, (dout * x_hat).sum(axis=axes), dout.sum(axis=axes)


def update_moving(moving, batch_stat, momentum=0.99):
    """One step of Keras' moving average: momentum * moving + (1 - momentum) * batch_stat (a new array)."""
    return momentum * moving + (1.0 - momentum) * batch_stat


# %% [markdown]
# ## 1. Training mode, by hand vs minarn.BatchNormalization
# Float64, gamma = 1 and beta = 0 first; then trainable gamma and beta.

# %%
print("1. Training mode, by hand vs minarn.BatchNormalization (float64, gamma = 1, beta = 0)")
bn = minarn.BatchNormalization(4, dtype=np.float64)
x = batch()
by_hand, mu, var = batchnorm_forward_train(x, np.ones(4), np.zeros(4), bn.epsilon)  # mu, var: one per channel
out = bn.forward(x, training=True)
print(f"   x {x.shape}: statistics per channel, shape {mu.shape}; max |by hand - minarn| "
      f"{np.abs(by_hand - out).max():.1e}")
assert np.abs(by_hand - out).max() < 1e-12
assert np.allclose(mu, x.mean(axis=(0, 1, 2))) and np.allclose(var, x.var(axis=(0, 1, 2)))
m_out, v_out = out.mean(axis=(0, 1, 2)), out.var(axis=(0, 1, 2))
print(f"   channel means     before {mu}  after {np.abs(m_out)}")
print(f"   channel variances before {var}  after {v_out}")
assert np.all(np.abs(m_out) < 1e-12) and np.allclose(v_out, var / (var + bn.epsilon), rtol=1e-12)
assert np.all(np.abs(v_out[[0, 2, 3]] - 1) < 1e-3)
print(f"   channel 1 (std 0.1) gets variance {v_out[1]:.3f} = var/(var + eps), not 1: eps = 1e-3 matters")
gamma, beta = rng.uniform(0.5, 2, 4), rng.standard_normal(4)
bn.params["gamma"][:], bn.params["beta"][:] = gamma, beta
scaled = bn.forward(x, training=True)
assert np.allclose(scaled.mean(axis=(0, 1, 2)), beta) and np.allclose(scaled.std(axis=(0, 1, 2)), gamma, rtol=0.1)
assert np.abs(scaled - batchnorm_forward_train(x, gamma, beta, bn.epsilon)[0]).max() < 1e-12
print("   with trainable gamma, beta: channel means become beta, spreads ~gamma (checked)")

# %% [markdown]
# ## 2. The moving statistics: an exponential average with momentum 0.99
# They start at 0 (mean) and 1 (variance). One step, then a few hundred, on batches of the same data.

# %%
print("\n2. The moving statistics: an exponential average with momentum 0.99")
bn = minarn.BatchNormalization(4, dtype=np.float64)
x = batch()
bn.forward(x, training=True)
assert np.allclose(bn.state["moving_mean"], 0.01 * x.mean(axis=(0, 1, 2)))
assert np.allclose(bn.state["moving_variance"], 0.99 * 1 + 0.01 * x.var(axis=(0, 1, 2)))
assert np.allclose(bn.state["moving_mean"], update_moving(np.zeros(4), x.mean(axis=(0, 1, 2)), bn.momentum))
assert np.allclose(bn.state["moving_variance"], update_moving(np.ones(4), x.var(axis=(0, 1, 2)), bn.momentum))
print(f"   after 1 step: moving_mean = 0.01 * batch mean = {np.round(bn.state['moving_mean'], 3)}")
probe = batch(64)
early = bn.forward(probe, training=False).mean(axis=(0, 1, 2))
steps = 200 if FAST else 600
history = [bn.state["moving_mean"].copy()]
for _ in range(steps - 1):
    bn.forward(batch(), training=True)
    history.append(bn.state["moving_mean"].copy())
history = np.array(history)
late = bn.forward(probe, training=False).mean(axis=(0, 1, 2))
left = 0.99**steps
print(f"   after {steps} steps: moving_mean {np.round(bn.state['moving_mean'], 2)} (data: {true_mean});")
print(f"   the starting value still weighs 0.99^{steps} = {left:.3f}")
assert np.all(np.abs(bn.state["moving_mean"] - true_mean) < left * np.abs(true_mean) + 0.1 * true_std)

# %% [markdown]
# ## 3. Inference mode uses the moving statistics
# So an image's output does not depend on the rest of the batch; in training mode it does.

# %%
print("\n3. Inference mode uses the moving statistics")
mm, mv = bn.state["moving_mean"], bn.state["moving_variance"]
inf_out = bn.forward(probe, training=False)
assert np.abs(inf_out - (probe - mm) / np.sqrt(mv + bn.epsilon)).max() < 1e-12
assert np.abs(inf_out - batchnorm_forward_inference(probe, np.ones(4), np.zeros(4), mm, mv, bn.epsilon)).max() < 1e-12
print(f"   channel means of an inference output after 1 step: {early}  (moving stats not warm yet)")
print(f"   {'... and after ' + str(steps) + ' steps:':<50}{late}")
assert np.abs(early[3]) > 10 and np.all(np.abs(late) < 0.25 + 2 * left * np.abs(true_mean) / true_std)
one_alone = bn.forward(probe[:1], training=False)
assert np.array_equal(one_alone, inf_out[:1])
alone_train = bn.forward(probe[:2], training=True)[:1]
change = np.abs(alone_train - bn.forward(probe, training=True)[:1]).max()
print("   inference: an image's output is the same alone or in a batch (checked exactly); in training it is")
print(f"   not (max change {change:.2f}): the batch's statistics differ")
assert change > 1e-3

# %% [markdown]
# ## 4. Backward, checked against numeric gradients
# A random upstream gradient, float64, in both modes; then the trap of dout = ones; then this lesson's
# `batchnorm_backward` against minarn's layer.

# %%
print("\n4. Backward, checked against numeric gradients (random upstream gradient, float64)")
for training in (True, False):
    layer = minarn.BatchNormalization(3, dtype=np.float64)
    layer.params["gamma"][:], layer.params["beta"][:] = rng.uniform(0.5, 2, 3), rng.standard_normal(3)
    layer.state["moving_mean"][:], layer.state["moving_variance"][:] = rng.standard_normal(3), rng.uniform(0.5, 2, 3)
    errs = check_layer(layer, rng.standard_normal((4, 3, 3, 3)) * 2 + 1, rng, training=training)
    print(f"   {'training ' if training else 'inference'}: " + ", ".join(f"{k} {v:.1e}" for k, v in errs.items()))
    assert max(errs.values()) < 1e-6
layer = minarn.BatchNormalization(3, dtype=np.float64)
xb = rng.standard_normal((4, 3, 3, 3))
layer.forward(xb, training=True)
dx_ones = layer.backward(np.ones((4, 3, 3, 3)))
print(f"   the trap: with dout = ones, dx = 0 (max |dx| = {np.abs(dx_ones).max():.1e}), so a check with")
print("   dout = ones (loss = out.sum()) compares 0 with 0 and passes even for a wrong backward")
assert np.abs(dx_ones).max() < 1e-12
assert np.abs(batchnorm_backward(np.ones_like(xb), xb, np.ones(3), layer.epsilon)[0]).max() < 1e-12

# %%
gamma3 = rng.uniform(0.5, 2, 3)
layer.params["gamma"][:] = gamma3
layer.forward(xb, training=True)
dout = rng.standard_normal(xb.shape)
dx_layer = layer.backward(dout)
dx, dgamma, dbeta = batchnorm_backward(dout, xb, gamma3, layer.epsilon)
diffs = [np.abs(dx - dx_layer).max(), np.abs(dgamma - layer.grads["gamma"]).max(),
         np.abs(dbeta - layer.grads["beta"]).max()]
print(f"   batchnorm_backward vs minarn, random dout: max |difference| dx {diffs[0]:.1e}, dgamma {diffs[1]:.1e}, "
      f"dbeta {diffs[2]:.1e}")
assert max(diffs) < 1e-12

# %% [markdown]
# ## 5. The lag: moving statistics trail a drifting mean by m / (1 - m) = 99 steps
# The true mean of one channel grows by 0.01 per step, as if the weights before it changed. Then the remedy:
# recompute the moving statistics from some images at the current weights. This part uses the whole
# ARN-CNN, which lesson 12 assembles; here we only use it to show that after
# `recompute_batchnorm_statistics` on 8 images, inference on those images gives what training mode gives.

# %%
print("\n5. The lag: moving statistics trail a drifting mean by m / (1 - m) = 99 steps")
drift = 0.01  # the true mean of channel 0 grows by this much per step, as if the weights before it changed
lagging = minarn.BatchNormalization(1, dtype=np.float64)
lag_steps = 1500
for t in range(lag_steps):
    lagging.forward(drift * t + 0.1 * rng.standard_normal((16, 5, 5, 1)), training=True)
gap = drift * (lag_steps - 1) - lagging.state["moving_mean"][0]
print(f"   after {lag_steps} steps the data mean is {drift * (lag_steps - 1):.2f}, the moving mean "
      f"{lagging.state['moving_mean'][0]:.2f}: behind by {gap:.3f} = {gap / drift:.1f} steps of drift")
assert abs(gap / drift - 0.99 / 0.01) < 2

# %%
tiny = minarn.ARNCNN(num_classes=3, input_shape=(32, 32, 1), seed=0, dtype=np.float64)
pixels = rng.integers(0, 256, (8, 32, 32, 1), dtype=np.uint8)
recompute_batchnorm_statistics(tiny, pixels, batch_size=8)  # the statistics of exactly these 8 images
same = np.abs(tiny.features(tiny._prepare(pixels), training=False)
              - tiny.features(tiny._prepare(pixels), training=True)).max()
print(f"   an ARN-CNN with its moving statistics recomputed from 8 images: inference on them = training mode "
      f"(max diff {same:.1e})")
assert same < 1e-9

# %% [markdown]
# ## 6. Figures
# The four channels before and after BN, and the moving mean warming up as 1 - 0.99^t.

# %%
print("\n6. Figures: the four channels before and after BN, and the moving mean warming up")
fig, ax = plt.subplots(1, 3, figsize=(15, 3.8))
for c in range(4):
    ax[0].hist(x[..., c].ravel(), bins=40, alpha=0.6, label=f"channel {c}: mean {mu[c]:.1f}, std {np.sqrt(var[c]):.1f}")
    ax[1].hist(out[..., c].ravel(), bins=40, alpha=0.5, label=f"channel {c}")
ax[0].set_title("before BN: every channel on its own scale"), ax[0].legend(fontsize=8)
ax[1].set_title("after BN (training mode): mean 0, variance ~1")
t = np.arange(1, steps + 1)
for c in (0, 3):
    ax[2].plot(t, history[:, c] / true_mean[c], label=f"channel {c}: moving_mean / data mean")
ax[2].plot(t, 1 - 0.99**t, "k:", label="1 - 0.99^t")
ax[2].set_xlabel("training steps"), ax[2].set_title("moving mean (used in inference)"), ax[2].legend(fontsize=8)
fig.tight_layout()
lesson_support.save(fig, "06_batchnorm.png", dpi=100)
print("\nLesson 6 done: every check passed.")
