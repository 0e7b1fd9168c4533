# %% [markdown]
# # Lesson 9: the classifier head: flatten, the dense layer and dropout (the end of the paper's Fig. 2)
#
# **What it teaches.** Flatten's channels-last order and why it matters between frameworks; the dense layer
# `z = x W + b` and its backward pass (`dW = x^T dz`, `db = sum dz`, `dx = dz W^T`), Glorot initialization;
# inverted dropout (mask `[u >= rate] / (1 - rate)`), its backward through the same mask, and seeded masks.
#
# **Prerequisites.** Lessons 03 (backward passes, numeric gradient checks) and 05 (GELU, used by ARN-CNN's
# dense(256)). Section 4 runs the whole ARN-CNN (`minarn.ARNCNN`, put together layer by layer in lesson 12) up to
# its head.
#
# **Time.** About 15 minutes; the script runs in about 5 s.
#
# **Exercise.** `dense_forward`, `dense_backward`, `dropout_forward` and `dropout_backward`
# (`python -m minarn.exercises new DIR`, then `python -m minarn.exercises check DIR/09_classifier_head.py`).
#
# **Try this.**
# 1. In `dense_backward`, replace `dout.sum(axis=0)` by `dout.mean(axis=0)`: `db` comes out 8x too small (the batch
#    holds 8; the printed db difference jumps from 0 to ~6) and the comparison with `Dense.backward` fails.
# 2. In `dropout_forward`, leave out the `/ (1 - rate)`: on 256,000 ones the printed output mean drops to 0.55
#    instead of 1, and the check "inverted dropout keeps the mean" fails: without the rescaling the next layer
#    would see, in inference, inputs 1.8x larger than in training.
#
# Run as a script: `python lessons/09_classifier_head.py` (figures go to `./lesson_figures`, or to
# `$MINARN_LESSON_OUT`), or open it as a notebook (see `lessons/README.md`).

# %%
from minarn import lesson_support

lesson_support.use_matplotlib()
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

import minarn  # noqa: E402
from minarn import data  # noqa: E402
from minarn.gradcheck import check_layer, numeric_grad, rel_error  # noqa: E402

rng = np.random.default_rng(0)

# %% [markdown]
# ## 1. Flatten
#
# Flatten turns conv2d_22's map (N, 5, 5, 125) into vectors (N, 3125) in channels-last, row-major order:
#
#     flat[n, (i * 5 + j) * 125 + c] = x[n, i, j, c].
#
# It moves no number and computes nothing, so its backward pass is the reverse reshape.

# %%
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

# %% [markdown]
# The order matters only when weights move between frameworks: a channels-first flatten (PyTorch) lists the same
# numbers in another order, and the dense kernel's rows must be permuted the same way.

# %%
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

# %% [markdown]
# ## 2. Dense
#
# `z = x W + b`, W (in, out), with out = act(z). Backward, for dz = dL/dz: every weight W[i, o] multiplies
# x[n, i] in every image n of the batch, so its gradient sums over the batch; so does the bias's:
#
#     dW = x^T dz,   db = sum over the batch of dz,   dx = dz W^T.


# %%
def dense_forward(x, W, b):
    """z = x W + b: x (N, in), W (in, out), b (out,) -> z (N, out)."""
    return x @ W + b


def dense_backward(dout, x, W):
    """Gradients of z = x W + b for dout = dL/dz (N, out): returns dx (N, in), dW (in, out), db (out,)."""
    return dout @ W.T, x.T @ dout, dout.sum(axis=0)


# %%
print("\n2. Dense: z = x W + b; backward dW = x^T dz, db = sum dz, dx = dz W^T (float64, a batch of 8)")
dense = minarn.Dense(20, 7, seed=1, dtype=np.float64)
dense.params["bias"][:] = rng.standard_normal(7)  # Keras starts biases at 0; any values test the formula
xd = rng.standard_normal((8, 20))
z = dense.forward(xd)
Wd, bd = dense.params["kernel"], dense.params["bias"]
assert np.abs(z - (xd @ Wd + bd)).max() < 1e-14 and np.abs(z - dense_forward(xd, Wd, bd)).max() < 1e-14
dz = rng.standard_normal(z.shape)
dxd = dense.backward(dz)
dx_ref, dW_ref, db_ref = dense_backward(dz, xd, Wd)
diffs = {"dW": np.abs(dense.grads["kernel"] - xd.T @ dz).max(), "db": np.abs(dense.grads["bias"] - dz.sum(0)).max(),
         "dx": np.abs(dxd - dz @ Wd.T).max()}
print("   by hand vs Dense.backward, max diff: " + ", ".join(f"{k} {v:.1e}" for k, v in diffs.items()))
assert max(diffs.values()) < 1e-13
ref_diffs = {"dW": np.abs(dense.grads["kernel"] - dW_ref).max(), "db": np.abs(dense.grads["bias"] - db_ref).max(),
             "dx": np.abs(dxd - dx_ref).max()}
print("   dense_backward vs Dense.backward, max diff: " + ", ".join(f"{k} {v:.1e}" for k, v in ref_diffs.items()))
assert max(ref_diffs.values()) < 1e-13
errors = check_layer(minarn.Dense(20, 7, activation="gelu", seed=2, dtype=np.float64), xd, rng)
print("   with its GELU (as ARN-CNN's dense(256)), numeric check: "
      + ", ".join(f"{k} {v:.1e}" for k, v in errors.items()))
assert max(errors.values()) < 1e-6

# %% [markdown]
# dense(256) holds 3125 * 256 + 256 = 800,256 weights, half of ARN-CNN's 1,624,131; Keras' Glorot uniform
# initialization draws them from U(-l, l) with l = sqrt(6 / (fan_in + fan_out)) so that Var(w) = 2 / (in + out).

# %%
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

# %% [markdown]
# ## 3. Dropout
#
# Dropout(0.45) in training zeroes each element with probability 0.45 and scales the survivors by 1 / 0.55
# ("inverted" dropout), so every element keeps its expected value and inference can skip dropout entirely:
#
#     out = x * m,  m = [u >= 0.45] / 0.55,  u ~ U[0, 1);   dx = dout * m (the same mask).
#
# The mask comes from a seeded generator: the same seed gives the same masks, so a run can be repeated.
# `dropout_forward` takes the uniform numbers u as an argument (minarn's `Dropout` draws them from its generator,
# `rng.random(x.shape)`), so it computes the same mask from the same u.


# %%
def dropout_forward(x, rate, u):
    """Inverted dropout in training: returns (out, mask), mask = [u >= rate] / (1 - rate), out = x * mask.

    x and u (uniform numbers in [0, 1)) have the same shape; 0 <= rate < 1.
    """
    mask = (u >= rate) / (1.0 - rate)
    return x * mask, mask


def dropout_backward(dout, mask):
    """dx = dout * mask: the gradient goes through the SAME mask that the forward pass used."""
    return dout * mask


# %%
print("\n3. Dropout(0.45): zero with probability 0.45, scale the rest by 1 / 0.55")
drop = minarn.Dropout(0.45, seed=3)
ones = np.ones((1000, 256))
out = drop.forward(ones, training=True)
out_ref, mask_ref = dropout_forward(ones, 0.45, np.random.default_rng(3).random(ones.shape))
print(f"   dropout_forward with the same uniform numbers: output mean {out_ref.mean():.4f}, the same output as "
      f"minarn's Dropout: {np.array_equal(out_ref, out)}")
assert abs(out_ref.mean() - 1) < 0.01, "inverted dropout keeps the mean"
assert np.array_equal(out_ref, out), "the same u gives minarn's mask"
kept = (out != 0).mean()
print(f"   on 256,000 ones: {100 * kept:.2f} % kept (expected 55 %), survivors = {out[out != 0][0]:.4f} = 1 / 0.55, "
      f"mean of the output {out.mean():.4f} (expected 1)")
assert set(np.unique(out)) == {0.0, 1 / 0.55} and abs(kept - 0.55) < 0.005 and abs(out.mean() - 1) < 0.01
print(f"   inference: the identity ({np.array_equal(drop.forward(ones, training=False), ones)}), "
      "nothing to rescale")
assert np.array_equal(drop.forward(ones, training=False), ones)

# %% [markdown]
# Backward through the same mask, a numeric check with the mask held fixed, and seeded masks.

# %%
xs = rng.standard_normal((6, 10))
out = drop.forward(xs, training=True)
dout = rng.standard_normal(xs.shape)
mask = np.where(out != 0, 1 / 0.55, 0.0)
assert np.abs(drop.backward(dout) - dout * mask).max() < 1e-15
assert np.array_equal(dropout_backward(dout, mask), drop.backward(dout))


def forward_with_fixed_mask():
    drop.set_generator(np.random.default_rng(5))  # a numeric gradient needs the same mask at every evaluation
    return drop.forward(xs, training=True)


analytic = (forward_with_fixed_mask(), drop.backward(dout))[1]
err = rel_error(analytic, numeric_grad(forward_with_fixed_mask, xs, dout))
print(f"   backward = dout * the forward's mask; numeric check with the mask held fixed: rel error {err:.1e}")
assert err < 1e-8
masks = [minarn.Dropout(0.45, seed=s).forward(ones[:4], training=True) for s in (7, 7, 8)]
print(f"   seed 7 twice: the same masks ({np.array_equal(masks[0], masks[1])}); seed 8: different "
      f"({not np.array_equal(masks[0], masks[2])})")
assert np.array_equal(masks[0], masks[1]) and not np.array_equal(masks[0], masks[2])

# %% [markdown]
# ## 4. The whole head of ARN-CNN, by hand, on sample images
#
# features -> flatten -> dense(256) + GELU -> dropout (the identity in inference) -> dense_1 (6 scores). In
# training mode every call draws a new dropout mask: we rebuild the scores of two training-mode calls from the
# masks that the model's dropout generator draws, exactly.

# %%
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

# %% [markdown]
# Training mode, twice: the dropout generator's state is read first, so the two masks can be drawn again.

# %%
state = model.dropout.rng.bit_generator.state  # the generator before the two training-mode calls
train_a = model.logits(x64, training=True)
dense_a = model._dense_out.copy()  # dense(256) + GELU output of that call, before dropout
train_b = model.logits(x64, training=True)
dense_b = model._dense_out.copy()
replay = np.random.default_rng()
replay.bit_generator.state = state  # the same generator state: the same uniform numbers, the same masks
Wc, bc = model.classifier.params["kernel"], model.classifier.params["bias"]
masks, by_hand = [], []
for dense_out in (dense_a, dense_b):
    dropped, m = dropout_forward(dense_out, 0.45, replay.random(dense_out.shape))
    masks.append(m)
    by_hand.append(dense_forward(dropped, Wc, bc))
changed = np.mean(train_a != train_b)
print(f"   training mode twice: the same dense(256) output ({np.array_equal(dense_a, dense_b)}), two masks that "
      f"differ in {np.mean(masks[0] != masks[1]):.0%} of the units, {changed:.0%} of the 36 scores changed "
      f"(max difference {np.abs(train_a - train_b).max():.3f})")
print(f"   both calls rebuilt from the replayed masks: max |by hand - model| {np.abs(by_hand[0] - train_a).max():.1e}, "
      f"{np.abs(by_hand[1] - train_b).max():.1e}; inference twice: identical")
assert np.array_equal(dense_a, dense_b), "before dropout the two training-mode calls agree exactly"
assert changed == 1.0, "each score sums 256 masked units: a new mask changes every one of them"
scale = np.abs(train_a).max()
assert np.abs(by_hand[0] - train_a).max() < 1e-5 * scale and np.abs(by_hand[1] - train_b).max() < 1e-5 * scale
assert abs(np.mean(masks[0] != masks[1]) - 2 * 0.45 * 0.55) < 0.05  # P(two masks differ) = 2 rate (1 - rate)
assert np.array_equal(model.logits(x64), model.logits(x64))

# %% [markdown]
# ## 5. Figure: the flatten order, the dense kernel at initialization, dropout's mask

# %%
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
lesson_support.save(fig, "09_classifier_head.png", dpi=100)
print("\nLesson 9 done: every check passed.")
