# %% [markdown]
# # Lesson 7: the attention module (paper Fig. 3), and what it highlights on real images
#
# **What it teaches.** The attention module re-weights a feature map with a mask computed from the map itself;
# a 1x1 convolution is a matrix product over channels; the input's gradient is the sum of two paths (fan-out).
#
# **Prerequisites.** Lessons 02 (a convolution as a matrix product), 03 (backward passes and numeric gradient
# checks) and 05 (ReLU, sigmoid and their derivatives). Section 3 trains a small network with three tools that
# later lessons explain: `Dense` (lesson 09), softmax cross-entropy (lesson 10) and Adamax (lesson 11); here they
# are used as they are.
#
# **Time.** About 20 minutes; the script itself runs in about 20 s (10 s with `MINARN_LESSON_FAST=1`).
#
# **Exercise.** `attention_forward` and `attention_backward` (`python -m minarn.exercises new DIR` writes
# `07_attention.py` with their stubs; `python -m minarn.exercises check DIR/07_attention.py` grades them).
#
# **Try this.**
# 1. In section 2, make `attention_backward` return `dx_direct` instead of `dx_direct + dx_mask`: its check
#    against minarn fails (`dx` of the reference off by the mask path), just as the "direct path only" line
#    predicts (relative error ~1e-1 against the numeric gradient).
# 2. Set `EPOCHS = 4` in section 3: validation accuracy climbs to 97 %, and the mask varies more across the image
#    (the spread over all channels grows about 6x, against about 4x after the default 2 epochs and 2.5x after 1).
#
# Run as a script: `python lessons/07_attention.py` (figures go to `./lesson_figures`, or to
# `$MINARN_LESSON_OUT`), or open it as a notebook (see `lessons/README.md`).

# %%
import os

from minarn import lesson_support

lesson_support.use_matplotlib()
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from scipy.special import expit  # noqa: E402

import minarn  # noqa: E402
from minarn import data, kernels  # noqa: E402
from minarn.gradcheck import numeric_grad, rel_error  # noqa: E402
from minarn.layers.attention import AttentionModule  # noqa: E402
from minarn.losses import softmax_cross_entropy  # noqa: E402

FAST = os.environ.get("MINARN_LESSON_FAST") == "1"
kernels.use_backend("numpy")
rng = np.random.default_rng(0)

# %% [markdown]
# ## 1. The module by hand
#
# The module re-weights a feature map x (N, H, W, C) with a mask computed from x itself:
#
#     a = ReLU(Conv1x1(x)),   w = sigmoid(Conv1x1(a)) in (0, 1),   out = x * w   (element-wise).
#
# A 1x1 convolution is a matrix product over channels at every pixel: `a = x @ K_a + b_a` with `K_a` (C, C).
# So the mask looks at all channels of one pixel and decides, per pixel and channel, how much to let through.
# `attention_forward` is that, in three lines; we compare it with `minarn.layers.attention.AttentionModule`
# (float64, C = 4), whose 1x1 kernels (1, 1, C, C) reshape to the (C, C) matrices.


# %%
def attention_forward(x, w1, b1, w2, b2):
    """The attention module's output x * sigmoid(ReLU(x @ w1 + b1) @ w2 + b2) (paper Fig. 3).

    x (N, H, W, C); w1, w2 (C, C) (the 1x1 kernels as matrices over channels); b1, b2 (C,) -> out (N, H, W, C).
    """
    a = np.maximum(x @ w1 + b1, 0.0)  # conv_a, a 1x1 convolution + ReLU
    w = expit(a @ w2 + b2)  # conv_b + sigmoid: the attention weights, in (0, 1)
    return x * w


# %%
print("1. The module by hand vs minarn.layers.attention.AttentionModule (float64, C = 4)")
att = AttentionModule(4, ("conv_a", "conv_b", "multiply"), (1, 2), np.float64)
for conv in (att.conv_a, att.conv_b):
    conv.params["bias"][:] = 0.3 * rng.standard_normal(4)
x = rng.standard_normal((2, 5, 5, 4))
Ka, ba = att.conv_a.params["kernel"].reshape(4, 4), att.conv_a.params["bias"]  # 1x1 kernel = a (C, C) matrix
Kb, bb = att.conv_b.params["kernel"].reshape(4, 4), att.conv_b.params["bias"]
a = np.maximum(x @ Ka + ba, 0)
w = 1 / (1 + np.exp(-(a @ Kb + bb)))
out = att.forward(x)
print(f"   max |by hand - minarn| = {np.abs(x * w - out).max():.1e}; weights in [{w.min():.3f}, {w.max():.3f}]")
assert np.abs(x * w - out).max() < 1e-12 and np.abs(att.weights - w).max() < 1e-12
assert np.all((att.weights > 0) & (att.weights < 1)) and np.array_equal(out, x * att.weights)
assert np.abs(attention_forward(x, Ka, ba, Kb, bb) - out).max() < 1e-12
print(f"   attention_forward vs minarn: {np.abs(attention_forward(x, Ka, ba, Kb, bb) - out).max():.1e}")

# %% [markdown]
# ## 2. Backward: x fans out, so its gradient is the sum of two paths
#
# x is used twice, in the product and to compute w, so its gradient is the SUM of two paths:
#
#     dx = dout * w   +   [(dout * x) * w (1 - w)] @ K_b^T * [a > 0] @ K_a^T.
#
# Dropping either path gives a wrong gradient, and a numeric gradient check catches it. The kernels' and biases'
# gradients come out of the mask path on the way: `dK_b = a^T dz_b`, `dK_a = x^T dz_a` (summed over every pixel
# of every image, as in lesson 03), `db = sum dz`.


# %%
def attention_backward(dout, x, w1, b1, w2, b2):
    """Gradients of the attention module: (dx, dw1, db1, dw2, db2) for the upstream gradient dout.

    Shapes as attention_forward; dout (N, H, W, C); dw1, dw2 (C, C); db1, db2 (C,).
    dx = dout * w (the product, w held fixed)  +  the path through the mask:
    dz2 = dout * x * w (1 - w);  dz1 = (dz2 @ w2^T) * [z1 > 0];  dx_mask = dz1 @ w1^T.
    """
    channels = x.shape[-1]
    z1 = x @ w1 + b1
    a = np.maximum(z1, 0.0)
    w = expit(a @ w2 + b2)
    dx_direct = dout * w  # out = x * w, holding w fixed
    dz2 = dout * x * w * (1 - w)  # back through the product into w, then the sigmoid
    dz1 = (dz2 @ w2.T) * (z1 > 0)  # back through conv_b and the ReLU
    dx_mask = dz1 @ w1.T  # back through conv_a
    dw2 = a.reshape(-1, channels).T @ dz2.reshape(-1, channels)
    dw1 = x.reshape(-1, channels).T @ dz1.reshape(-1, channels)
    db2 = dz2.reshape(-1, channels).sum(axis=0)
    db1 = dz1.reshape(-1, channels).sum(axis=0)
    return dx_direct + dx_mask, dw1, db1, dw2, db2  # fan-out: x's two paths add up


# %%
print("\n2. Backward: x fans out, so its gradient is the sum of two paths")
dout = rng.standard_normal(out.shape)
dx_direct = dout * w                                # through out = x * w, holding w fixed
dz_b = (dout * x) * w * (1 - w)                     # through w: the sigmoid's derivative
dx_mask = ((dz_b @ Kb.T) * (a > 0)) @ Ka.T          # back through conv_b, the ReLU, conv_a
dx = att.backward(dout)
dkernels = {"conv_a": att.conv_a.grads["kernel"].copy(), "conv_b": att.conv_b.grads["kernel"].copy()}
dbiases = {"conv_a": att.conv_a.grads["bias"].copy(), "conv_b": att.conv_b.grads["bias"].copy()}
numeric = numeric_grad(lambda: att.forward(x), x, dout)
for name, candidate in (("direct path only", dx_direct), ("mask path only", dx_mask),
                        ("sum (by hand)", dx_direct + dx_mask), ("minarn backward", dx)):
    print(f"   {name:17s} rel error vs numeric {rel_error(candidate, numeric):.1e}")
assert rel_error(dx, numeric) < 1e-6 and np.abs(dx - dx_direct - dx_mask).max() < 1e-12
assert rel_error(dx_direct, numeric) > 1e-2 and rel_error(dx_mask, numeric) > 1e-2
for conv in (att.conv_a, att.conv_b):
    err = rel_error(dkernels[conv.name], numeric_grad(lambda: att.forward(x), conv.params["kernel"], dout))
    print(f"   kernel of {conv.name}: rel error vs numeric {err:.1e}")
    assert err < 1e-6

# %% [markdown]
# `attention_backward` puts the same steps into one function; it must agree with minarn's backward on every
# gradient.

# %%
ref_dx, ref_dw1, ref_db1, ref_dw2, ref_db2 = attention_backward(dout, x, Ka, ba, Kb, bb)
diffs = {"dx": np.abs(ref_dx - dx).max(), "dK_a": np.abs(ref_dw1 - dkernels["conv_a"].reshape(4, 4)).max(),
         "db_a": np.abs(ref_db1 - dbiases["conv_a"]).max(),
         "dK_b": np.abs(ref_dw2 - dkernels["conv_b"].reshape(4, 4)).max(),
         "db_b": np.abs(ref_db2 - dbiases["conv_b"]).max()}
print("   attention_backward vs minarn, max diff: " + ", ".join(f"{k} {v:.1e}" for k, v in diffs.items()))
assert max(diffs.values()) < 1e-12

# %% [markdown]
# ## 3. On real images: a small network with attention, trained briefly
#
# conv3x3(8) -> pool -> ATTENTION -> pool -> dense(6), trained on the MedNIST sample. Trained inside a network,
# the mask stops being uniform. The channel we look at is chosen BEFORE training (the one whose mask already
# varies most across the image), so that what training does to it is not a matter of picking the best-looking
# channel afterwards; the spread is also measured over all channels.

# %%
print("\n3. On real images: a small network conv3x3(8) -> pool -> ATTENTION -> pool -> dense(6), trained briefly")
EPOCHS = 1 if FAST else 2
splits = data.split_dataset(data.load_mednist())
conv = minarn.Conv2D(1, 8, 3, activation="relu", seed=1)
pool1, pool2, flat = minarn.MaxPooling2D(2), minarn.MaxPooling2D(2), minarn.Flatten()
att = AttentionModule(8, ("conv2d_1", "conv2d_2", "multiply"), (2, 3), np.float32)
dense = minarn.Dense(15 * 15 * 8, 6, seed=4)
layers = [conv, att.conv_a, att.conv_b, dense]


def logits(x, training=False):
    h = att.forward(pool1.forward(conv.forward(x, training)), training)
    return dense.forward_linear(flat.forward(pool2.forward(h)))


def backward(dlogits):
    dh = att.backward(pool2.backward(flat.backward(dense.backward_linear(dlogits))))
    conv.backward(pool1.backward(dh))


def spatial_spread(weights):
    """Std of the attention weights over (H, W), averaged over the images: (N, H, W, C) -> (C,)."""
    return weights.std(axis=(1, 2)).mean(axis=0)


# %%
idx = [int(np.flatnonzero(splits.test.labels == k)[0]) for k in range(6)]  # one test image per class
show = data.scale_images(splits.test.images[idx])
logits(show)
w_before = att.weights.copy()
k = int(np.argmax(spatial_spread(w_before)))  # chosen now, before training: the channel whose mask varies most
print(f"   before training: spatial spread per channel {np.array2string(spatial_spread(w_before), precision=4)}; "
      f"we follow channel {k}")

# %%
params = {f"{layer.name}/{key}": v for layer in layers for key, v in layer.params.items()}
opt = minarn.optim.Adamax(learning_rate=0.01)
gen = np.random.default_rng(0)
epoch_losses = []
for epoch in range(EPOCHS):
    losses = []
    batches = data.iterate_batches(splits.train.images, splits.train.labels, 40, num_classes=6, shuffle=True, rng=gen)
    for xb, yb in batches:
        loss, dlogits = softmax_cross_entropy(logits(xb, training=True), yb)
        backward(dlogits)
        opt.apply(params, {f"{layer.name}/{key}": g for layer in layers for key, g in layer.grads.items()})
        losses.append(loss)
    acc = np.mean(logits(data.scale_images(splits.valid.images)).argmax(axis=1) == splits.valid.labels)
    epoch_losses.append(losses)
    print(f"   epoch {epoch + 1}: loss first batches {np.mean(losses[:3]):.3f} -> last {np.mean(losses[-3:]):.3f}, "
          f"validation accuracy {acc:.0%}")
assert np.mean(epoch_losses[-1][-3:]) < 0.7 * np.mean(epoch_losses[0][:3]) and acc > 0.5

# %%
feature = pool1.forward(conv.forward(show))
attended = att.forward(feature)
w_after = att.weights
assert np.all((w_after > 0) & (w_after < 1)) and np.array_equal(attended, feature * w_after)
spread_before, spread_after = spatial_spread(w_before)[k], spatial_spread(w_after)[k]
all_before, all_after = spatial_spread(w_before).mean(), spatial_spread(w_after).mean()
bright = feature[..., k] > np.quantile(feature[..., k], 0.9, axis=(1, 2), keepdims=True)
print(f"   channel {k}: spatial spread (std) of its weights {spread_before:.3f} before training, "
      f"{spread_after:.3f} after; over all 8 channels {all_before:.4f} -> {all_after:.4f} "
      f"({all_after / all_before:.1f}x)")
print(f"   mean weight on the brightest 10% of that channel's pixels {w_after[..., k][bright].mean():.2f}, "
      f"elsewhere {w_after[..., k][~bright].mean():.2f}")
assert all_after > 2 * all_before, "training makes the mask vary across the image, on average over the channels"
assert spread_after > 1.5 * spread_before, "and on the channel chosen before training"
print(f"   the mask is soft (channel {k}: weights from {w_after[..., k].min():.2f} to {w_after[..., k].max():.2f}), "
      "so x * w looks like x with parts dimmed")

# %% [markdown]
# ## 4. Paper Fig. 3 on real images
#
# Input / feature map / attention weights before and after training / attended output, one test image per class.
# The attended output `x * w` is drawn on the colour scale of its feature map `x` (per row), so the dimming shows:
# with its own scale it would look just like `x`.

# %%
print("\n4. Paper Fig. 3 on real images: input / feature map / attention weights / attended output")
fig, axes = plt.subplots(6, 5, figsize=(10, 13.5), layout="constrained")
lo, hi = min(w_before[..., k].min(), w_after[..., k].min()), max(w_before[..., k].max(), w_after[..., k].max())
for r in range(6):
    x_lo, x_hi = feature[r, :, :, k].min(), feature[r, :, :, k].max()  # x's colour scale, also used for x * w
    row = [(show[r, :, :, 0], "gray", None, None), (feature[r, :, :, k], "gray", x_lo, x_hi),
           (w_before[r, :, :, k], "magma", lo, hi), (w_after[r, :, :, k], "magma", lo, hi),
           (attended[r, :, :, k], "gray", x_lo, x_hi)]
    for c, (img, cmap, vmin, vmax) in enumerate(row):
        axes[r, c].imshow(img, cmap=cmap, vmin=vmin, vmax=vmax)
        axes[r, c].set_xticks([]), axes[r, c].set_yticks([])
    axes[r, 0].set_ylabel(splits.test.class_names[r])
titles = ["input 64x64", f"feature map x\n(channel {k})", "weights w\nbefore training",
          "weights w\nafter training", "attended output x * w\n(on x's colour scale)"]
for c, title in enumerate(titles):
    axes[0, c].set_title(title, fontsize=10)
fig.colorbar(axes[0, 3].images[0], ax=axes[-1, 2:4], orientation="horizontal", label="attention weight w")
fig.suptitle("Attention module (paper Fig. 3) in a small trained network, one test image per class")
lesson_support.save(fig, "07_attention.png", dpi=90)
print("\nLesson 7 done: every check passed.")
