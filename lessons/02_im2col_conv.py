"""Lesson 2: the convolution forward pass, as naive loops and as im2col + one matrix product.

What it teaches
- A Conv2D layer (Keras layout, channels-last) computes, for every image n, output pixel (p, q), filter f:
      out[n, p, q, f] = b[f] + sum_{i, j, c} x[n, p*s + i, q*s + j, c] * K[i, j, c, f]
  with kernel K of shape (kh, kw, C, F), stride s, and OH = (H - kh) // s + 1 ("valid").
  "same" padding first pads with zeros so that OH = ceil(H / s) (paper Fig. 2 uses both).
- im2col copies every kh x kw x C patch into one row of a matrix cols (N*OH*OW, kh*kw*C). Then the whole
  convolution is ONE matrix product:  out = cols @ K.reshape(kh*kw*C, F) + b.  The column order (i, j, c)
  must match K.reshape's order, which is the whole trick.
- The price: every input pixel is copied up to kh*kw times (9x more memory for 3x3 kernels).

Checked here: im2col by hand (sliding_window_view) == minarn.kernels' im2col; naive loops == im2col conv ==
minarn.Conv2D, to 1e-10, for "valid", "same" and stride 2 on a non-square input.

Run:  python lessons/02_im2col_conv.py     (figures go to ./lesson_figures, or to $MINARN_LESSON_OUT)
"""

import os
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from numpy.lib.stride_tricks import sliding_window_view  # noqa: E402

import minarn  # noqa: E402
from minarn import data, kernels  # noqa: E402

OUT = Path(os.environ.get("MINARN_LESSON_OUT", "lesson_figures"))
OUT.mkdir(parents=True, exist_ok=True)
kernels.use_backend("numpy")  # the readable reference kernels (lesson 15 compares them with Numba)
rng = np.random.default_rng(0)


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


def im2col_by_hand(x, kh, kw, s):
    """Every kh x kw window as a view (no copy yet), keep every s-th, then lay each patch out as a row."""
    win = sliding_window_view(x, (kh, kw), axis=(1, 2))[:, ::s, ::s]  # (N, OH, OW, C, kh, kw)
    N, OH, OW = win.shape[:3]
    return win.transpose(0, 1, 2, 4, 5, 3).reshape(N * OH * OW, -1)  # row order (i, j, c), like K.reshape


print("1. im2col on a tiny example: a 4x5 single-channel image with pixel values 0..19, 3x3 kernel")
tiny = np.arange(20, dtype=np.float64).reshape(1, 4, 5, 1)
cols = im2col_by_hand(tiny, 3, 3, 1)
print(f"   input {tiny.shape} -> cols {cols.shape}: OH*OW = 2*3 = 6 patches, each 3*3*1 = 9 values")
print("   first two rows, the patches at (0,0) and (0,1):", cols[:2].astype(int).tolist())
assert np.array_equal(cols, kernels.numpy_ref.im2col(tiny, 3, 3, 1))

print("\n2. Naive loops vs im2col vs minarn.Conv2D (float64, random x and kernel)")
for padding, stride, shape in (("valid", 1, (2, 7, 6, 3)), ("same", 1, (2, 7, 6, 3)), ("valid", 2, (2, 9, 8, 3))):
    x = rng.standard_normal(shape)
    layer = minarn.Conv2D(3, 4, 3, strides=stride, padding=padding, seed=1, dtype=np.float64)
    layer.params["bias"][:] = rng.standard_normal(4)
    K, b = layer.params["kernel"], layer.params["bias"]
    xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0))) if padding == "same" else x  # 3x3, stride 1: 1 each side
    naive = conv_naive(xp, K, b, stride)
    cols = im2col_by_hand(xp, 3, 3, stride)
    assert np.array_equal(cols, kernels.get_backend().im2col(xp, 3, 3, stride))
    via_im2col = (cols @ K.reshape(-1, 4) + b).reshape(naive.shape)
    ours = layer.forward(x)
    err1, err2 = np.abs(naive - via_im2col).max(), np.abs(naive - ours).max()
    print(f"   {padding:5s} stride {stride}: x {shape} -> out {ours.shape}; cols {cols.shape}; "
          f"max |naive - im2col| = {err1:.1e}, max |naive - Conv2D| = {err2:.1e}")
    assert err1 < 1e-10 and err2 < 1e-10

print("\n3. Why bother: time on one 64x64 image, 3x3 kernel, 1 -> 8 channels")
ds = data.load_mednist()
img = data.scale_images(ds.images[:1]).astype(np.float64)
K8 = minarn.Conv2D(1, 8, 3, seed=2, dtype=np.float64).params["kernel"]
t0 = time.perf_counter()
slow = conv_naive(img, K8, np.zeros(8), 1)
t1 = time.perf_counter()
fast = (im2col_by_hand(img, 3, 3, 1) @ K8.reshape(-1, 8)).reshape(slow.shape)
t2 = time.perf_counter()
print(f"   naive loops {t1 - t0:.2f} s, im2col + matmul {1e3 * (t2 - t1):.1f} ms (same result: "
      f"max diff {np.abs(slow - fast).max():.1e})")
assert np.abs(slow - fast).max() < 1e-10
print(f"   memory: the image has {img.size:,} values, its cols matrix {62 * 62 * 9:,} (about 9x more)")

print("\n4. A picture: im2col's rows, and a hand-set edge filter on a real chest X-ray")
sobel = np.array([[1.0, 0, -1], [2, 0, -2], [1, 0, -1]])  # responds to left-right brightness changes
edge = minarn.Conv2D(1, 1, 3, padding="same", dtype=np.float64, use_bias=False)
edge.params["kernel"][:, :, 0, 0] = sobel
cxr = data.scale_images(ds.images[ds.labels == 2][:1]).astype(np.float64)
response = edge.forward(cxr)
assert np.abs(response - conv_naive(np.pad(cxr, ((0, 0), (1, 1), (1, 1), (0, 0))), edge.params["kernel"],
                                    np.zeros(1), 1)).max() < 1e-10
fig, ax = plt.subplots(1, 4, figsize=(13, 3.4), gridspec_kw={"width_ratios": [1, 1.5, 1, 1]})
ax[0].imshow(tiny[0, :, :, 0], cmap="viridis")
for (r, c), v in np.ndenumerate(tiny[0, :, :, 0]):
    ax[0].text(c, r, int(v), ha="center", va="center", color="w")
ax[0].set_title("input 4x5 (pixel = its index)")
ax[1].imshow(im2col_by_hand(tiny, 3, 3, 1), cmap="viridis")
for (r, c), v in np.ndenumerate(im2col_by_hand(tiny, 3, 3, 1)):
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
path = OUT / "02_im2col.png"
fig.savefig(path, dpi=100)
plt.close(fig)
print(f"   figure saved: {path}")
print("\nLesson 2 done: every check passed.")
