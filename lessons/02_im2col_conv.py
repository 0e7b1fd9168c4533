# %% [markdown]
# # Lesson 2: the convolution forward pass, as naive loops and as im2col + one matrix product
#
# **What it teaches.** The formula of a Conv2D layer (Keras layout, channels-last); im2col, which copies every
# patch of the input into one row of a matrix; the whole convolution as ONE matrix product; "valid" and
# "same" padding (Keras' split of an odd padding) and stride 2. Paper Fig. 2 uses all of them.
#
# **Prerequisites.** Lesson 1 (images as `(N, 64, 64, 1)` arrays, scaled to [0, 1]).
#
# **Time.** About 15 minutes to read; 5 s to run (the seven-loop convolution takes most of it).
#
# **Exercises.** `python -m minarn.exercises new DIR` writes `02_im2col_conv.py` with the stubs of this
# lesson's functions `same_padding`, `im2col` and `conv2d_forward`;
# `python -m minarn.exercises check DIR/02_im2col_conv.py` grades them.
#
# **Try this.**
# 1. In `im2col`, delete `.transpose(0, 1, 2, 4, 5, 3)`, so that the columns come out in (c, i, j) order.
#    Section 1 still passes (one channel: the two orders are the same), but section 2 stops at
#    `assert np.array_equal(cols, ...)`: with 3 channels the columns no longer line up with minarn's im2col,
#    nor with `kernel.reshape(kh * kw * C, F)`.
# 2. In section 4, set the edge filter to `sobel.T` instead of `sobel`. The last panel of the figure then
#    marks top-bottom brightness changes instead of left-right ones: its strongest stripes move from the
#    left and right borders (where the bright image meets the zeros that "same" pads with) to the top and
#    bottom borders, and every check still passes (the loops and im2col agree for any kernel).

# %% [markdown]
# ## The formula
# A Conv2D layer computes, for every image n, output pixel (p, q) and filter f:
#
#     out[n, p, q, f] = b[f] + sum_{i, j, c} x[n, p*s + i, q*s + j, c] * K[i, j, c, f]
#
# with kernel K of shape (kh, kw, C, F), stride s, and OH = (H - kh) // s + 1 output rows ("valid": only
# windows that fit). "same" first pads the input with zeros so that OH = ceil(H / s).
#
# im2col copies every kh x kw x C patch into one row of a matrix `cols` of shape (N*OH*OW, kh*kw*C). Then the
# whole convolution is ONE matrix product:
#
#     out = cols @ K.reshape(kh*kw*C, F) + b.
#
# The column order (i, j, c) must match `K.reshape`'s order: that is the whole trick. The price: every input
# pixel is copied up to kh*kw times (9x more memory for 3x3 kernels).
#
# Checked here: im2col by hand (`sliding_window_view`) == minarn.kernels' im2col; naive loops == im2col
# convolution == `minarn.Conv2D`, to 1e-10, for "valid", "same" and stride 2 on a non-square input.
#
# Run as a script: `python lessons/02_im2col_conv.py` (figures go to `./lesson_figures`, or to
# `$MINARN_LESSON_OUT`); or open it as a notebook (see `lessons/README.md`).

# %%
import math
import time

from minarn import lesson_support

lesson_support.use_matplotlib()  # off-screen for a script, inline in a notebook
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from numpy.lib.stride_tricks import sliding_window_view  # noqa: E402

import minarn  # noqa: E402
from minarn import data, kernels  # noqa: E402

kernels.use_backend("numpy")  # the readable reference kernels (lesson 15 compares them with Numba)
rng = np.random.default_rng(0)

# %% [markdown]
# ## The oracle: seven nested loops
# Straight from the formula, slow and obviously right: everything else is checked against it. It takes an
# input that is already padded.


# %%
def conv_naive(x, K, b, s):
    """Seven nested loops, straight from the formula: the oracle everything else is checked against."""
    N, H, W, C = x.shape
    kh, kw, _, F = K.shape
    OH, OW = (H - kh) // s + 1, (W - kw) // s + 1
    out = np.zeros((N, OH, OW, F))
    for n in range(N):
        for p in range(OH):
            for q in range(OW):
                for f in range(F):
                    total = b[f]
                    for i in range(kh):
                        for j in range(kw):
                            for c in range(C):
                                total += x[n, p * s + i, q * s + j, c] * K[i, j, c, f]
                    out[n, p, q, f] = total
    return out


# %% [markdown]
# ## The three functions of this lesson (the exercises)
# `same_padding` is Keras' rule for "same": the output has ceil(size / stride) positions, which needs
# `total = max((out - 1) * stride + k - size, 0)` zeros, split as `(total // 2, total - total // 2)`: an odd
# total puts the extra one at the end (bottom, right).


# %%
def same_padding(size, k, stride):
    """Keras' "same" padding along one axis: (before, after) zeros for an input of ``size``, kernel ``k``.

    out = ceil(size / stride); total = max((out - 1) * stride + k - size, 0); (total // 2, total - total // 2).
    """
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + k - size, 0)
    return total // 2, total - total // 2


# %% [markdown]
# `im2col` takes every kh x kw window as a view (no copy yet), keeps every s-th, and lays each patch out as
# a row in the order (i, j, c).


# %%
def im2col(x, kh, kw, stride):
    """Every kh x kw patch of x (N, H, W, C) as one row: cols (N*OH*OW, kh*kw*C), columns in (i, j, c) order.

    cols[(n, p, q), (i, j, c)] = x[n, p*stride + i, q*stride + j, c], OH = (H - kh) // stride + 1.
    """
    win = sliding_window_view(x, (kh, kw), axis=(1, 2))[:, ::stride, ::stride]  # (N, OH, OW, C, kh, kw)
    N, OH, OW = win.shape[:3]
    return win.transpose(0, 1, 2, 4, 5, 3).reshape(N * OH * OW, -1)  # row order (i, j, c), like K.reshape


# %% [markdown]
# `conv2d_forward` is the whole layer without its activation: pad (for "same"), im2col, one matrix product,
# add the bias, reshape the rows back to (N, OH, OW, F).


# %%
def conv2d_forward(x, kernel, bias, stride=1, padding="valid"):
    """Conv2D forward: x (N, H, W, C), kernel (kh, kw, C, F), bias (F,) -> out (N, OH, OW, F).

    out = im2col(pad(x)) @ kernel.reshape(kh*kw*C, F) + bias; padding "valid" (none) or "same" (Keras).
    """
    kh, kw, C, F = kernel.shape
    if padding == "same":
        top_bottom, left_right = same_padding(x.shape[1], kh, stride), same_padding(x.shape[2], kw, stride)
        x = np.pad(x, ((0, 0), top_bottom, left_right, (0, 0)))
    elif padding != "valid":
        raise ValueError(f"conv2d_forward: padding must be 'valid' or 'same', got {padding!r}")
    N, H, W, _ = x.shape
    OH, OW = (H - kh) // stride + 1, (W - kw) // stride + 1
    cols = im2col(x, kh, kw, stride)
    return (cols @ kernel.reshape(kh * kw * C, F) + bias).reshape(N, OH, OW, F)


# %% [markdown]
# ## 1. im2col on a tiny example
# A 4x5 single-channel image whose pixel values are their indices 0..19, and a 3x3 kernel: OH*OW = 2*3 = 6
# patches, each 3*3*1 = 9 values.

# %%
print("1. im2col on a tiny example: a 4x5 single-channel image with pixel values 0..19, 3x3 kernel")
tiny = np.arange(20, dtype=np.float64).reshape(1, 4, 5, 1)
cols = im2col(tiny, 3, 3, 1)
print(f"   input {tiny.shape} -> cols {cols.shape}: OH*OW = 2*3 = 6 patches, each 3*3*1 = 9 values")
print("   first two rows, the patches at (0,0) and (0,1):", cols[:2].astype(int).tolist())
assert np.array_equal(cols, kernels.numpy_ref.im2col(tiny, 3, 3, 1))

# %% [markdown]
# ## 2. Naive loops vs im2col vs minarn.Conv2D
# Random input and kernel in float64, three settings: "valid", "same" (a 3x3 kernel at stride 1 pads one
# zero on each side) and stride 2 on a non-square input.

# %%
print("\n2. Naive loops vs im2col vs minarn.Conv2D (float64, random x and kernel)")
for padding, stride, shape in (("valid", 1, (2, 7, 6, 3)), ("same", 1, (2, 7, 6, 3)), ("valid", 2, (2, 9, 8, 3))):
    x = rng.standard_normal(shape)
    layer = minarn.Conv2D(3, 4, 3, strides=stride, padding=padding, seed=1, dtype=np.float64)
    layer.params["bias"][:] = rng.standard_normal(4)
    K, b = layer.params["kernel"], layer.params["bias"]
    xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0))) if padding == "same" else x  # 3x3, stride 1: 1 each side
    assert padding == "valid" or same_padding(shape[1], 3, stride) == same_padding(shape[2], 3, stride) == (1, 1)
    naive = conv_naive(xp, K, b, stride)
    cols = im2col(xp, 3, 3, stride)
    assert np.array_equal(cols, kernels.get_backend().im2col(xp, 3, 3, stride))
    via_im2col = conv2d_forward(x, K, b, stride, padding)
    ours = layer.forward(x)
    err1, err2 = np.abs(naive - via_im2col).max(), np.abs(naive - ours).max()
    print(f"   {padding:5s} stride {stride}: x {shape} -> out {ours.shape}; cols {cols.shape}; "
          f"max |naive - im2col| = {err1:.1e}, max |naive - Conv2D| = {err2:.1e}")
    assert err1 < 1e-10 and err2 < 1e-10

# %% [markdown]
# "same" at stride 2 on a 7 x 6 input: `same_padding` gives (1, 1) rows and (0, 1) columns (an odd total
# pads more at the end), and the output is ceil(7 / 2) x ceil(6 / 2) = 4 x 3, as `minarn.Conv2D` computes.

# %%
x = rng.standard_normal((2, 7, 6, 3))
layer = minarn.Conv2D(3, 4, 3, strides=2, padding="same", seed=1, dtype=np.float64)
layer.params["bias"][:] = rng.standard_normal(4)
ours = conv2d_forward(x, layer.params["kernel"], layer.params["bias"], 2, "same")
print(f"   same  stride 2: x {x.shape} -> out {ours.shape}; padding rows {same_padding(7, 3, 2)}, "
      f"columns {same_padding(6, 3, 2)}; max |conv2d_forward - Conv2D| = "
      f"{np.abs(ours - layer.forward(x)).max():.1e}")
assert same_padding(7, 3, 2) == (1, 1) and same_padding(6, 3, 2) == (0, 1) and ours.shape == (2, 4, 3, 4)
assert np.abs(ours - layer.forward(x)).max() < 1e-10

# %% [markdown]
# ## 3. Why bother: time
# One 64x64 image, a 3x3 kernel, 1 -> 8 channels: the loops against im2col + one matrix product.

# %%
print("\n3. Why bother: time on one 64x64 image, 3x3 kernel, 1 -> 8 channels")
ds = data.load_mednist()
img = data.scale_images(ds.images[:1]).astype(np.float64)
K8 = minarn.Conv2D(1, 8, 3, seed=2, dtype=np.float64).params["kernel"]
t0 = time.perf_counter()
slow = conv_naive(img, K8, np.zeros(8), 1)
t1 = time.perf_counter()
fast = conv2d_forward(img, K8, np.zeros(8), 1, "valid")
t2 = time.perf_counter()
print(f"   naive loops {t1 - t0:.2f} s, im2col + matmul {1e3 * (t2 - t1):.1f} ms (same result: "
      f"max diff {np.abs(slow - fast).max():.1e})")
assert np.abs(slow - fast).max() < 1e-10
print(f"   memory: the image has {img.size:,} values, its cols matrix {62 * 62 * 9:,} (about 9x more)")
assert im2col(img, 3, 3, 1).size == 62 * 62 * 9

# %% [markdown]
# ## 4. A picture
# im2col's rows for the tiny example, and a hand-set edge filter (Sobel: it responds to left-right
# brightness changes) on a real chest X-ray.

# %%
print("\n4. A picture: im2col's rows, and a hand-set edge filter on a real chest X-ray")
sobel = np.array([[1.0, 0, -1], [2, 0, -2], [1, 0, -1]])  # responds to left-right brightness changes
edge = minarn.Conv2D(1, 1, 3, padding="same", dtype=np.float64, use_bias=False)
edge.params["kernel"][:, :, 0, 0] = sobel
cxr = data.scale_images(ds.images[ds.labels == 2][:1]).astype(np.float64)
response = edge.forward(cxr)
assert np.abs(response - conv_naive(np.pad(cxr, ((0, 0), (1, 1), (1, 1), (0, 0))), edge.params["kernel"],
                                    np.zeros(1), 1)).max() < 1e-10
assert np.abs(response - conv2d_forward(cxr, edge.params["kernel"], np.zeros(1), 1, "same")).max() < 1e-10

# %%
fig, ax = plt.subplots(1, 4, figsize=(13, 3.4), gridspec_kw={"width_ratios": [1, 1.5, 1, 1]})
ax[0].imshow(tiny[0, :, :, 0], cmap="viridis")
for (r, c), v in np.ndenumerate(tiny[0, :, :, 0]):
    ax[0].text(c, r, int(v), ha="center", va="center", color="w")
ax[0].set_title("input 4x5 (pixel = its index)")
ax[1].imshow(im2col(tiny, 3, 3, 1), cmap="viridis")
for (r, c), v in np.ndenumerate(im2col(tiny, 3, 3, 1)):
    ax[1].text(c, r, int(v), ha="center", va="center", color="w", fontsize=8)
ax[1].set_title("cols: one row per 3x3 patch (6 x 9)")
ax[1].set_xlabel("column = (i, j, c) kernel position")
ax[2].imshow(cxr[0, :, :, 0], cmap="gray")
ax[2].set_title("chest X-ray (CXR)")
ax[3].imshow(response[0, :, :, 0], cmap="RdBu")
ax[3].set_title("Conv2D with a Sobel kernel")
for a in ax:
    a.set_xticks([]), a.set_yticks([])
fig.tight_layout()
lesson_support.save(fig, "02_im2col.png", dpi=100)
print("\nLesson 2 done: every check passed.")
