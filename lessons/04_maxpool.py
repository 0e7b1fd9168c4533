# %% [markdown]
# # Lesson 4: max-pooling, and where its gradient goes
#
# **What it teaches.** 2x2 max-pooling with stride 2 ("valid", as Keras' `MaxPooling2D(2)`): which rows are
# dropped, the sizes in the paper's Fig. 2; its backward pass, which routes the whole gradient of a window to
# the window's maximum; what happens at ties, and why gradient checks avoid them.
#
# **Prerequisites.** Lesson 3 (backward passes, numeric gradients and the relative error).
#
# **Time.** About 10 minutes to read; 4 s to run.
#
# **Exercises.** `python -m minarn.exercises new DIR` writes `04_maxpool.py` with the stubs of
# `maxpool_forward` and `maxpool_backward`; `python -m minarn.exercises check DIR/04_maxpool.py` grades them.
#
# **Try this.**
# 1. In `maxpool_backward`, replace the one-hot of the first maximum by a mask of every maximum:
#    `winner = flat == flat.max(axis=-1, keepdims=True)`. Sections 1 and 2 still pass (random values have no
#    ties), but section 3 stops: the flat 2x2 window now sends 5 to each of its four inputs, 20 in all, where
#    `MaxPooling2D` sends 5 to the top-left one only.
# 2. In section 2, draw integer values with many ties: `x = rng.integers(0, 3, size=(2, 7, 5, 3)) * 1.0`
#    at the start of the section (and `out = pool.forward(x)`). By hand and minarn still agree exactly (both
#    send the gradient to the first maximum), but the assert that the non-zero gradients sit exactly where x
#    equals its window's maximum fails: with ties several inputs equal the maximum, and only one of them wins.

# %% [markdown]
# ## The forward pass
# MaxPooling2D(2) keeps the largest value of every 2x2 window, moving by 2 (Keras "valid"):
#
#     out[n, p, q, c] = max_{i, j in {0, 1}} x[n, 2p + i, 2q + j, c],    OH = (H - 2) // 2 + 1,
#
# so an odd last row/column is dropped: 31 -> 15 and 11 -> 5 in the paper's Fig. 2.
#
# ## The backward pass
# max is piecewise linear: locally it IS the winning input, so the derivative is 1 for the winner and 0 for
# the other three. The backward pass routes each `dout[n, p, q, c]` to the argmax of its window only; inputs
# that never win (and a dropped last row) get exactly 0.
#
# Ties (equal values) are a kink: minarn sends the gradient to the first maximum in row-major order
# (top-left, top-right, bottom-left, bottom-right).
#
# Run as a script: `python lessons/04_maxpool.py` (figures go to `./lesson_figures`, or to
# `$MINARN_LESSON_OUT`); or open it as a notebook (see `lessons/README.md`).

# %%
from minarn import lesson_support

lesson_support.use_matplotlib()  # off-screen for a script, inline in a notebook
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

import minarn  # noqa: E402
from minarn import data, kernels  # noqa: E402
from minarn.gradcheck import numeric_grad, rel_error  # noqa: E402

kernels.use_backend("numpy")
rng = np.random.default_rng(0)

# %% [markdown]
# ## The two functions of this lesson (the exercises)
# Forward: crop to an even size, split each spatial axis into (blocks, 2), take the max over the 2s.


# %%
def maxpool_forward(x):
    """2x2 max-pooling, stride 2, "valid": x (N, H, W, C) -> out (N, H // 2, W // 2, C).

    out[n, p, q, c] = max(x[n, 2p : 2p + 2, 2q : 2q + 2, c]); an odd last row/column is dropped.
    """
    N, H, W, C = x.shape
    OH, OW = H // 2, W // 2
    blocks = x[:, : 2 * OH, : 2 * OW].reshape(N, OH, 2, OW, 2, C)
    return blocks.max(axis=(2, 4))


# %% [markdown]
# Backward: lay the 4 values of every window out in row-major order, take the one-hot of the first maximum
# (`argmax` returns the first of equal values), multiply by dout, and put the result back in place.


# %%
def maxpool_backward(dout, x):
    """Backward of maxpool_forward: dout (N, H // 2, W // 2, C), x (N, H, W, C) -> dx (N, H, W, C).

    Each dout[n, p, q, c] goes to the first maximum (row-major) of its window; all other inputs and the
    dropped last row/column get 0.
    """
    N, H, W, C = x.shape
    OH, OW = H // 2, W // 2
    blocks = x[:, : 2 * OH, : 2 * OW].reshape(N, OH, 2, OW, 2, C)
    flat = blocks.transpose(0, 1, 3, 5, 2, 4).reshape(N, OH, OW, C, 4)  # the 4 window values, row-major
    winner = np.eye(4)[flat.argmax(axis=-1)]  # one-hot of the first maximum
    routed = (winner * dout[..., None]).reshape(N, OH, OW, C, 2, 2).transpose(0, 1, 4, 2, 5, 3)
    dx = np.zeros_like(x)
    dx[:, : 2 * OH, : 2 * OW] = routed.reshape(N, 2 * OH, 2 * OW, C)
    return dx


# %% [markdown]
# ## 1. Forward: by hand vs minarn.MaxPooling2D
# An odd-sized input, 7x5 -> 3x2, and the paper's sizes.

# %%
print("1. Forward: by hand vs minarn.MaxPooling2D on an odd-sized input (7x5 -> 3x2)")
x = rng.standard_normal((2, 7, 5, 3))
pool = minarn.MaxPooling2D(2)
out = pool.forward(x)
print(f"   x {x.shape} -> out {out.shape}: the last row (6) and column (4) are dropped")
assert out.shape == (2, 3, 2, 3) and np.array_equal(out, maxpool_forward(x))
print(f"   paper sizes: 62 -> {pool.compute_output_shape((1, 62, 62, 32))[1]}, 31 -> "
      f"{pool.compute_output_shape((1, 31, 31, 64))[1]}, 11 -> {pool.compute_output_shape((1, 11, 11, 256))[1]}")
assert [pool.compute_output_shape((1, s, s, 1))[1] for s in (62, 31, 11)] == [31, 15, 5]

# %% [markdown]
# ## 2. Backward: each output's gradient goes to its window's argmax and nowhere else
# Random values (no ties): exactly one non-zero input gradient per output, at the maximum; each window's
# gradients sum to its dout; the dropped row and column get 0; and a numeric gradient agrees.

# %%
print("\n2. Backward: each output's gradient goes to its window's argmax and nowhere else")
dout = rng.standard_normal(out.shape)
dx = pool.backward(dout)
assert np.array_equal(dx, maxpool_backward(dout, x))
nonzero = dx != 0
winners = np.zeros_like(nonzero)
winners[:, :6, :4] = x[:, :6, :4] == np.repeat(np.repeat(out, 2, axis=1), 2, axis=2)  # where x equals its max
print(f"   {nonzero.sum()} of {dx.size} input gradients are non-zero = one per output ({out.size})")
assert nonzero.sum() == out.size and np.array_equal(nonzero, winners)
assert np.allclose(dx[:, :6, :4].reshape(2, 3, 2, 2, 2, 3).sum(axis=(2, 4)), dout), "window sums equal dout"
assert np.all(dx[:, 6, :, :] == 0) and np.all(dx[:, :, 4, :] == 0), "dropped row/column get no gradient"
num = numeric_grad(lambda: pool.forward(x), x, dout)
print(f"   numeric gradient vs backward: rel error {rel_error(dx, num):.1e} (random values: no ties)")
assert rel_error(dx, num) < 1e-6

# %% [markdown]
# ## 3. Ties
# A flat window has four maxima; the first one (top-left) takes all the gradient. A numeric gradient sees
# something else there: the mean of the slopes on the two sides of the kink.

# %%
print("\n3. Ties: a flat window has four maxima; the first one (top-left) takes all the gradient")
flat = np.ones((1, 2, 2, 1))
pool.forward(flat)
dflat = pool.backward(np.full((1, 1, 1, 1), 5.0))
print(f"   x = ones(2x2), dout = 5 -> dx = {dflat[0, :, :, 0].tolist()}")
assert dflat[0, 0, 0, 0] == 5.0 and dflat.sum() == 5.0
assert np.array_equal(maxpool_backward(np.full((1, 1, 1, 1), 5.0), flat), dflat), "by hand: the same tie rule"
num_tie = numeric_grad(lambda: pool.forward(flat), flat, np.full((1, 1, 1, 1), 5.0))
print(f"   a numeric gradient sees {np.round(num_tie[0, :, :, 0], 6).tolist()}: at a tie max has a kink")
print("   (slope 5 on one side, 0 on the other), so gradient checks draw random, tie-free values")
assert np.allclose(num_tie, 2.5)

# %% [markdown]
# ## 4. On a real image
# Which pixels of a Hand X-ray will receive a gradient after one pooling? Exactly one per window, also in
# the dark flat background, where all four values tie at 0.

# %%
print("\n4. On a real image: which pixels will receive a gradient after one pooling?")
ds = data.load_mednist()
hand = data.scale_images(ds.images[ds.labels == ds.class_names.index("Hand")][:1]).astype(np.float64)
pooled = pool.forward(hand)
grad_mask = pool.backward(np.ones_like(pooled)) != 0
print(f"   {hand.shape[1]}x{hand.shape[2]} -> {pooled.shape[1]}x{pooled.shape[2]}; "
      f"{grad_mask.mean():.0%} of the pixels get a gradient")
assert grad_mask.sum() == pooled.size  # exactly one pixel of each window (dark flat areas tie at 0)
assert np.array_equal(maxpool_forward(hand), pooled)
assert np.array_equal(maxpool_backward(np.ones_like(pooled), hand) != 0, grad_mask)

# %%
fig, axes = plt.subplots(2, 3, figsize=(11, 7.5))
ax = axes.ravel()
panels = [(x[0, :, :, 0], "input x (7x5), one channel"), (out[0, :, :, 0], "max-pooled (3x2)"),
          (dx[0, :, :, 0], "dx: dout lands on the winners")]
for a, (img, title) in zip(ax[:3], panels):
    a.imshow(img, cmap="coolwarm", vmin=-2.5, vmax=2.5)
    for (r, c), v in np.ndenumerate(img):
        a.text(c, r, f"{v:.2f}" if v != 0 else "0", ha="center", va="center", fontsize=8)
    a.set_title(title, fontsize=10)
for a in (ax[0], ax[2]):  # the 2x2 windows; row 6 and column 4 belong to none
    for r in np.arange(-0.5, 6, 2):
        a.axhline(r, color="k", lw=1.5)
    for c in np.arange(-0.5, 4, 2):
        a.axvline(c, color="k", lw=1.5)
ax[3].imshow(hand[0, :, :, 0], cmap="gray")
ax[3].set_title("Hand X-ray, 64x64", fontsize=10)
ax[4].imshow(pooled[0, :, :, 0], cmap="gray")
ax[4].set_title("max-pooled, 32x32: bright structures survive", fontsize=10)
ax[5].imshow(grad_mask[0, :, :, 0], cmap="gray")
ax[5].set_title("pixels that receive a gradient (1 per window)", fontsize=10)
for a in ax:
    a.set_xticks([]), a.set_yticks([])
fig.tight_layout()
lesson_support.save(fig, "04_maxpool.png", dpi=100)
print("\nLesson 4 done: every check passed.")
