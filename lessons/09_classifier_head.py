"""Lesson 9: the classifier head: flatten, the dense layer and dropout (the end of the paper's Fig. 2).

What it teaches
- Flatten turns conv2d_22's map (N, 5, 5, 125) into vectors (N, 3125) in channels-last, row-major order:
      flat[n, (i * 5 + j) * 125 + c] = x[n, i, j, c].
  It moves no number and computes nothing, so its backward pass is the reverse reshape. The order matters
  only when weights move between frameworks: a channels-first flatten (PyTorch) lists the same numbers in
  another order, and the dense kernel's rows must be permuted the same way.
- Dense: z = x W + b, W (in, out), with out = act(z). Backward, for dz = dL/dz:
      dW = x^T dz,   db = sum over the batch of dz,   dx = dz W^T.
  dense(256) holds 3125 * 256 + 256 = 800,256 weights, half of ARN-CNN's 1,624,131; Keras' Glorot uniform
  initialization draws them from U(-l, l) with l = sqrt(6 / (fan_in + fan_out)) so that Var(w) = 2 / (in + out).
- Dropout(0.45) in training zeroes each element with probability 0.45 and scales the survivors by 1 / 0.55
  ("inverted" dropout), so every element keeps its expected value and inference can skip dropout entirely:
      out = x * m,  m = [u >= 0.45] / 0.55,  u ~ U[0, 1);   dx = dout * m (the same mask).
  The mask comes from a seeded generator: the same seed gives the same masks, so a run can be repeated.

Run:  python lessons/09_classifier_head.py     (figures go to ./lesson_figures, or to $MINARN_LESSON_OUT)
"""

import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

import minarn  # noqa: E402
from minarn import data  # noqa: E402
from minarn.gradcheck import check_layer, numeric_grad, rel_error  # noqa: E402

OUT = Path(os.environ.get("MINARN_LESSON_OUT", "lesson_figures"))
OUT.mkdir(parents=True, exist_ok=True)
rng = np.random.default_rng(0)

print("1. Flatten: (N, 5, 5, 125) -> (N, 3125), channels-last and row-major, as Keras")
x = rng.standard_normal((2, 5, 5, 125))
flatten = minarn.Flatten()
flat = flatten.forward(x)
n, i, j, c = 1, 3, 2, 17
print(f"   x[{n}, {i}, {j}, {c}] = {x[n, i, j, c]:.4f} sits at flat[{n}, ({i} * 5 + {j}) * 125 + {c}] = "
      f"flat[{n}, {(i * 5 + j) * 125 + c}] = {flat[n, (i * 5 + j) * 125 + c]:.4f}")
assert flat.shape == (2, 3125) and flat[n, (i * 5 + j) * 125 + c] == x[n, i, j, c]
assert np.array_equal(flat, x.reshape(2, -1))
dflat = rng.standard_normal(flat.shape)
dx = flatten.backward(dflat)
err = rel_error(dx, numeric_grad(lambda: flatten.forward(x), x, dflat))
print(f"   backward: the upstream gradient reshaped back; numeric check rel error {err:.1e}")
assert np.array_equal(dx, dflat.reshape(x.shape)) and err < 1e-8

print("\n   A channels-first flatten (PyTorch: x as (N, C, H, W)) lists the same numbers in another order:")
flat_cf = x.transpose(0, 3, 1, 2).reshape(2, -1)
perm = np.arange(5 * 5 * 125).reshape(5, 5, 125).transpose(2, 0, 1).reshape(-1)  # flat_cf = flat[:, perm]
W = rng.standard_normal((3125, 4))
print(f"   same entries: {np.array_equal(np.sort(flat_cf, axis=1), np.sort(flat, axis=1))}; same order: "
      f"{np.array_equal(flat_cf, flat)}; with the kernel's rows permuted (W[perm]) the dense output agrees to "
      f"{np.abs(flat_cf @ W[perm] - flat @ W).max():.1e}")
assert np.array_equal(flat_cf, flat[:, perm]) and not np.array_equal(flat_cf, flat)
assert np.abs(flat_cf @ W[perm] - flat @ W).max() < 1e-12
assert np.abs(flat_cf @ W - flat @ W).max() > 1  # the unpermuted kernel is simply wrong

print("\n2. Dense: z = x W + b; backward dW = x^T dz, db = sum dz, dx = dz W^T (float64, a batch of 8)")
dense = minarn.Dense(20, 7, seed=1, dtype=np.float64)
dense.params["bias"][:] = rng.standard_normal(7)  # Keras starts biases at 0; any values test the formula
xd = rng.standard_normal((8, 20))
z = dense.forward(xd)
Wd, bd = dense.params["kernel"], dense.params["bias"]
assert np.abs(z - (xd @ Wd + bd)).max() < 1e-14
dz = rng.standard_normal(z.shape)
dxd = dense.backward(dz)
diffs = {"dW": np.abs(dense.grads["kernel"] - xd.T @ dz).max(), "db": np.abs(dense.grads["bias"] - dz.sum(0)).max(),
         "dx": np.abs(dxd - dz @ Wd.T).max()}
print("   by hand vs Dense.backward, max diff: " + ", ".join(f"{k} {v:.1e}" for k, v in diffs.items()))
assert max(diffs.values()) < 1e-13
errors = check_layer(minarn.Dense(20, 7, activation="gelu", seed=2, dtype=np.float64), xd, rng)
print("   with its GELU (as ARN-CNN's dense(256)), numeric check: "
      + ", ".join(f"{k} {v:.1e}" for k, v in errors.items()))
assert max(errors.values()) < 1e-6

model = minarn.ARNCNN(seed=0)
kernel = model.dense.params["kernel"]
limit = np.sqrt(6 / (3125 + 256))
share = model.dense.params["kernel"].size / model.count_params()
print(f"\n   ARN-CNN's dense(256): kernel {kernel.shape} + bias (256,) = {kernel.size + 256:,} weights, "
      f"{100 * share:.0f} % of all {model.count_params():,}")
print(f"   Glorot uniform: |w| <= l = sqrt(6 / 3381) = {limit:.4f} (largest drawn {np.abs(kernel).max():.4f}); "
      f"Var(w) = {kernel.var():.3e}, expected 2 / 3381 = {2 / 3381:.3e}")
assert kernel.size + 256 == 800_256 and np.abs(kernel).max() <= limit
assert abs(kernel.var() / (2 / 3381) - 1) < 0.01

print("\n3. Dropout(0.45): zero with probability 0.45, scale the rest by 1 / 0.55")
drop = minarn.Dropout(0.45, seed=3)
ones = np.ones((1000, 256))
out = drop.forward(ones, training=True)
kept = (out != 0).mean()
print(f"   on 256,000 ones: {100 * kept:.2f} % kept (expected 55 %), survivors = {out[out != 0][0]:.4f} = 1 / 0.55, "
      f"mean of the output {out.mean():.4f} (expected 1)")
assert set(np.unique(out)) == {0.0, 1 / 0.55} and abs(kept - 0.55) < 0.005 and abs(out.mean() - 1) < 0.01
print(f"   inference: the identity ({np.array_equal(drop.forward(ones, training=False), ones)}), "
      "nothing to rescale")
assert np.array_equal(drop.forward(ones, training=False), ones)

xs = rng.standard_normal((6, 10))
out = drop.forward(xs, training=True)
dout = rng.standard_normal(xs.shape)
mask = np.where(out != 0, 1 / 0.55, 0.0)
assert np.abs(drop.backward(dout) - dout * mask).max() < 1e-15


def forward_with_fixed_mask():
    drop.rng = np.random.default_rng(5)  # a numeric gradient needs the same mask at every evaluation
    return drop.forward(xs, training=True)


analytic = (forward_with_fixed_mask(), drop.backward(dout))[1]
err = rel_error(analytic, numeric_grad(forward_with_fixed_mask, xs, dout))
print(f"   backward = dout * the forward's mask; numeric check with the mask held fixed: rel error {err:.1e}")
assert err < 1e-8
masks = [minarn.Dropout(0.45, seed=s).forward(ones[:4], training=True) for s in (7, 7, 8)]
print(f"   seed 7 twice: the same masks ({np.array_equal(masks[0], masks[1])}); seed 8: different "
      f"({not np.array_equal(masks[0], masks[2])})")
assert np.array_equal(masks[0], masks[1]) and not np.array_equal(masks[0], masks[2])

print("\n4. The whole head of ARN-CNN, by hand, on sample images")
ds = data.load_mednist()
pick = np.array([np.flatnonzero(ds.labels == k)[0] for k in range(6)])  # the first image of every class
x64 = data.scale_images(ds.images[pick])
features = model.features(x64)  # conv2d_22's map, (6, 5, 5, 125)
h = features.reshape(len(pick), -1) @ model.dense.params["kernel"] + model.dense.params["bias"]
h = minarn.GELU().forward(h)
logits_by_hand = h @ model.classifier.params["kernel"] + model.classifier.params["bias"]
logits = model.logits(x64)
print(f"   features {features.shape} -> flatten {features.reshape(len(pick), -1).shape} -> dense+GELU {h.shape} "
      f"-> (dropout: identity in inference) -> dense_1 {logits.shape}; by hand vs model.logits: "
      f"{np.abs(logits_by_hand - logits).max():.1e}")
assert np.abs(logits_by_hand - logits).max() < 1e-4 * np.abs(logits).max()
train_a, train_b = model.logits(x64, training=True), model.logits(x64, training=True)
print("   training mode twice: different dropout masks, different scores "
      f"(max difference {np.abs(train_a - train_b).max():.3f}); inference twice: identical")
assert np.abs(train_a - train_b).max() > 0 and np.array_equal(model.logits(x64), model.logits(x64))

print("\n5. Figure: the flatten order, the dense kernel at initialization, dropout's mask")
fig, ax = plt.subplots(1, 3, figsize=(15, 4.2))
small = np.arange(2 * 2 * 3).reshape(2, 2, 3)  # (H, W, C) = (2, 2, 3): the entry's value is its flat index
colours = plt.cm.tab10(np.arange(3))
for idx, (a, b, ch) in enumerate(np.ndindex(2, 2, 3)):
    ax[0].text(idx, 0, str(small[a, b, ch]), ha="center", va="center", fontsize=11,
               bbox={"facecolor": colours[ch], "alpha": 0.4})
    ax[0].text(idx, -0.6, f"({a},{b})", ha="center", va="center", fontsize=7)
cf = small.transpose(2, 0, 1).reshape(-1)
for idx, v in enumerate(cf):
    ax[0].text(idx, -1.6, str(v), ha="center", va="center", fontsize=11,
               bbox={"facecolor": colours[v % 3], "alpha": 0.4})
ax[0].set_xlim(-0.7, 11.7), ax[0].set_ylim(-2.2, 0.6), ax[0].axis("off")
ax[0].set_title("a (2, 2, 3) map flattened:\nchannels-last (top, (row,col) below; colour = channel)\n"
                "channels-first (bottom)", fontsize=9)
ax[1].hist(kernel.ravel(), bins=80, color="C0")
for s in (-limit, limit):
    ax[1].axvline(s, color="k", ls=":")
ax[1].set_title(f"dense(256) kernel at init: U(-{limit:.4f}, {limit:.4f})", fontsize=9)
ax[1].set_xlabel("w")
m = minarn.Dropout(0.45, seed=3).forward(np.ones((16, 32)), training=True)
ax[2].imshow(m, cmap="gray", vmin=0, vmax=1 / 0.55)
ax[2].set_title(f"a dropout mask (16 x 32): black = 0, white = 1/0.55; {100 * (m != 0).mean():.0f} % kept", fontsize=9)
ax[2].set_xlabel("unit"), ax[2].set_ylabel("image")
fig.tight_layout()
path = OUT / "09_classifier_head.png"
fig.savefig(path, dpi=100)
plt.close(fig)
print(f"   figure saved: {path}")
print("\nLesson 9 done: every check passed.")
