"""Lesson 7: the attention module (paper Fig. 3), and what it highlights on real images.

What it teaches
- The module re-weights a feature map x (N, H, W, C) with a mask computed from x itself:
      a = ReLU(Conv1x1(x)),   w = sigmoid(Conv1x1(a)) in (0, 1),   out = x * w   (element-wise).
  A 1x1 convolution is a matrix product over channels at every pixel: a = x @ K_a + b_a with K_a (C, C).
  So the mask looks at all channels of one pixel and decides, per pixel and channel, how much to let through.
- Backward: x is used twice (in the product and to compute w), so its gradient is the SUM of two paths:
      dx = dout * w   +   [(dout * x) * w (1 - w)] @ K_b^T * [a > 0] @ K_a^T.
  Dropping either path gives a wrong gradient; a numeric gradient check catches it.
- Trained inside a small network on the MedNIST sample, the mask stops being uniform; the figure shows
  input / attention weights / attended output for one test image per class.

Run:  python lessons/07_attention.py     (figures go to ./lesson_figures, or to $MINARN_LESSON_OUT)
"""

import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

import minarn  # noqa: E402
from minarn import data, kernels  # noqa: E402
from minarn.gradcheck import numeric_grad, rel_error  # noqa: E402
from minarn.layers.attention import AttentionModule  # noqa: E402
from minarn.losses import softmax_cross_entropy  # noqa: E402

FAST = os.environ.get("MINARN_LESSON_FAST") == "1"
OUT = Path(os.environ.get("MINARN_LESSON_OUT", "lesson_figures"))
OUT.mkdir(parents=True, exist_ok=True)
kernels.use_backend("numpy")
rng = np.random.default_rng(0)

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

print("\n2. Backward: x fans out, so its gradient is the sum of two paths")
dout = rng.standard_normal(out.shape)
dx_direct = dout * w                                # through out = x * w, holding w fixed
dz_b = (dout * x) * w * (1 - w)                     # through w: the sigmoid's derivative
dx_mask = ((dz_b @ Kb.T) * (a > 0)) @ Ka.T          # back through conv_b, the ReLU, conv_a
dx = att.backward(dout)
dkernels = {"conv_a": att.conv_a.grads["kernel"].copy(), "conv_b": att.conv_b.grads["kernel"].copy()}
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

print("\n3. On real images: a small network conv3x3(8) -> pool -> ATTENTION -> pool -> dense(6), trained briefly")
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


idx = [int(np.flatnonzero(splits.test.labels == k)[0]) for k in range(6)]  # one test image per class
show = data.scale_images(splits.test.images[idx])
logits(show)
w_before = att.weights.copy()
params = {f"{layer.name}/{k}": v for layer in layers for k, v in layer.params.items()}
opt = minarn.optim.Adamax(learning_rate=0.01)
gen = np.random.default_rng(0)
epoch_losses = []
for epoch in range(1 if FAST else 2):
    losses = []
    batches = data.iterate_batches(splits.train.images, splits.train.labels, 40, num_classes=6, shuffle=True, rng=gen)
    for xb, yb in batches:
        loss, dlogits = softmax_cross_entropy(logits(xb, training=True), yb)
        backward(dlogits)
        opt.apply(params, {f"{layer.name}/{k}": g for layer in layers for k, g in layer.grads.items()})
        losses.append(loss)
    acc = np.mean(logits(data.scale_images(splits.valid.images)).argmax(axis=1) == splits.valid.labels)
    epoch_losses.append(losses)
    print(f"   epoch {epoch + 1}: loss first batches {np.mean(losses[:3]):.3f} -> last {np.mean(losses[-3:]):.3f}, "
          f"validation accuracy {acc:.0%}")
assert np.mean(epoch_losses[-1][-3:]) < 0.7 * np.mean(epoch_losses[0][:3]) and acc > 0.5

feature = pool1.forward(conv.forward(show))
attended = att.forward(feature)
w_after = att.weights
assert np.all((w_after > 0) & (w_after < 1)) and np.array_equal(attended, feature * w_after)
k = int(np.argmax(w_after.std(axis=(1, 2)).mean(axis=0)))  # the channel whose mask varies most in space
spread_before, spread_after = w_before[..., k].std(axis=(1, 2)).mean(), w_after[..., k].std(axis=(1, 2)).mean()
bright = feature[..., k] > np.quantile(feature[..., k], 0.9, axis=(1, 2), keepdims=True)
print(f"   channel {k}: spatial spread (std) of its weights {spread_before:.3f} before training, "
      f"{spread_after:.3f} after;")
print(f"   mean weight on the brightest 10% of that channel's pixels {w_after[..., k][bright].mean():.2f}, "
      f"elsewhere {w_after[..., k][~bright].mean():.2f}")
assert spread_after > 2 * spread_before, "training makes the mask vary across the image"
print(f"   the mask is soft (channel {k}: weights from {w_after[..., k].min():.2f} to {w_after[..., k].max():.2f}), "
      "so x * w looks like x with parts dimmed")

print("\n4. Paper Fig. 3 on real images: input / feature map / attention weights / attended output")
fig, axes = plt.subplots(6, 5, figsize=(10, 13.5), layout="constrained")
lo, hi = min(w_before[..., k].min(), w_after[..., k].min()), max(w_before[..., k].max(), w_after[..., k].max())
for r in range(6):
    row = [(show[r, :, :, 0], "gray", None, None), (feature[r, :, :, k], "gray", None, None),
           (w_before[r, :, :, k], "magma", lo, hi), (w_after[r, :, :, k], "magma", lo, hi),
           (attended[r, :, :, k], "gray", None, None)]
    for c, (img, cmap, vmin, vmax) in enumerate(row):
        shown = axes[r, c].imshow(img, cmap=cmap, vmin=vmin, vmax=vmax)
        axes[r, c].set_xticks([]), axes[r, c].set_yticks([])
    axes[r, 0].set_ylabel(splits.test.class_names[r])
titles = ["input 64x64", f"feature map x\n(channel {k})", "weights w\nbefore training",
          "weights w\nafter training", "attended output\nx * w"]
for c, title in enumerate(titles):
    axes[0, c].set_title(title, fontsize=10)
fig.colorbar(axes[0, 3].images[0], ax=axes[-1, 2:4], orientation="horizontal", label="attention weight w")
fig.suptitle("Attention module (paper Fig. 3) in a small trained network, one test image per class")
path = OUT / "07_attention.png"
fig.savefig(path, dpi=90)
plt.close(fig)
print(f"   figure saved: {path}")
print("\nLesson 7 done: every check passed.")
