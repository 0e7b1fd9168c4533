# %% [markdown]
# # Lesson 16: Winograd's F(2x2, 3x3), a 3x3 convolution with 2.25x fewer multiplications
#
# **What it teaches**
# - In 1-D, two outputs of a 3-tap filter, y0 = d0 g0 + d1 g1 + d2 g2 and y1 = d1 g0 + d2 g1 + d3 g2, take 6
#   multiplications done directly. Winograd's minimal filtering F(2, 3) needs 4:
#   m1 = (d0 - d2) g0, m2 = (d1 + d2)(g0 + g1 + g2)/2, m3 = (d2 - d1)(g0 - g1 + g2)/2, m4 = (d1 - d3) g2,
#   y0 = m1 + m2 + m3, y1 = m2 - m3 - m4.
#   As matrices: y = A^T [(G g) * (B^T d)] with * element-wise (Lavin & Gray 2016). The filter side G g is
#   computed once per filter, not once per output.
# - Nesting it along rows and columns gives F(2x2, 3x3): a 2x2 output tile from a 4x4 input tile,
#   Y = A^T [ (G g G^T) * (B^T d B) ] A, 16 multiplications instead of 36. Over C input channels the 16
#   positions of the 4x4 grid become 16 matrix products (tiles x C) @ (C x F): the multiplications move from
#   im2col's one product with a reduction over 9C to 16 products with a reduction over C.
# - The price is memory traffic: the transformed input holds 16 values per 2x2 output tile (4x the input),
#   and the transforms are extra passes. minarn's Conv2D uses it, on the Numba backend, where it measured
#   faster (see benchmarks/RESULTS.md): the 3x3 layers with >= 32 input channels (conv2d_6, conv2d_10, conv2d_13's
#   forward pass and conv2d_5's gradients; conv2d_5's forward pass stays on im2col in training: its input is
#   exactly 0 over the black background, where Winograd's round-off would flip its ReLU's derivative; inference,
#   with no derivative to keep, runs it on Winograd too), in its larger form
#   F(4x4, 3x3) (a 4x4 tile from a 6x6 window: 36 multiplications instead of 144, 4x fewer; ``winograd.F4``),
#   which this lesson measures too in part 6.
# - The backward pass is the same algebra transposed (A dY A^T, G^T dU G), and the input gradient is itself a
#   3x3 convolution of dY with the kernel turned by 180 degrees, so it reuses the forward algorithm.
# - Float32 error stays at im2col's level: the transforms only add, subtract and halve, and each of the 16
#   products sums C terms instead of 9C. F(4x4, 3x3)'s transforms multiply by up to 8 and 1/24: its error is
#   several times larger, still a few millionths of the output's scale.
#
# **Prerequisites:** lesson 2 (im2col, convolution as one matrix product) and lesson 3 (the convolution's
# backward pass); lesson 15 shows where a training step spends its time.
#
# **Time:** about 20 minutes to read and try; it runs in about 5 s.
#
# **Try this**
# 1. In part 5, add a layer whose output has an even side, e.g. `"even": (16, 16, 64, 64, 14, 14)`: it shows
#    exactly 2.25x fewer multiplications (7 x 7 whole tiles); the odd 31 x 31 of conv2d_6 needs 16 x 16
#    tiles and gets 2.11x.
# 2. In part 6, scale the input, `x6 = 1000 * rng.standard_normal(...)`: both errors, measured relative to
#    the output's scale, stay at a few times 1e-7 (float32's epsilon is 1.2e-7): float32 rounding is
#    relative to the size of the numbers.
#
# Run it as a script, `python lessons/16_winograd.py` (figures go to `./lesson_figures`, or to
# `$MINARN_LESSON_OUT`), or cell by cell as a notebook (see `lessons/README.md`).

# %%
from minarn import lesson_support

lesson_support.use_matplotlib()  # Agg for a script; a notebook keeps its inline backend
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from minarn import kernels  # noqa: E402
from minarn.kernels import numpy_ref, winograd  # noqa: E402
from minarn.layers import Conv2D  # noqa: E402

rng = np.random.default_rng(0)

# %% [markdown]
# ## 1. F(2, 3) in 1-D: two outputs of a 3-tap filter with 4 multiplications instead of 6

# %%
print("1. F(2, 3) in 1-D: two outputs of a 3-tap filter with 4 multiplications instead of 6")
d = rng.standard_normal(4)
g = rng.standard_normal(3)
direct = np.array([d[0] * g[0] + d[1] * g[1] + d[2] * g[2], d[1] * g[0] + d[2] * g[1] + d[3] * g[2]])
m1 = (d[0] - d[2]) * g[0]
m2 = (d[1] + d[2]) * (g[0] + g[1] + g[2]) / 2
m3 = (d[2] - d[1]) * (g[0] - g[1] + g[2]) / 2
m4 = (d[1] - d[3]) * g[2]
by_winograd = np.array([m1 + m2 + m3, m2 - m3 - m4])
print(f"   direct   {direct}\n   Winograd {by_winograd}")
assert np.allclose(direct, by_winograd, atol=1e-12)

# %% [markdown]
# ## 2. The same with minarn's matrices: y = A^T [(G g) * (B^T d)]

# %%
print("\n2. The same with minarn's matrices: y = A^T [(G g) * (B^T d)]")
B_T, G, A_T = winograd.B_T, winograd.G, winograd.A_T
y = A_T @ ((G @ g) * (B_T @ d))
assert np.allclose(y, direct, atol=1e-12)
print(f"   B^T (4x4), G (4x3), A^T (2x4) reproduce it: {y}")

# %% [markdown]
# ## 3. F(2x2, 3x3): one 4x4 input tile -> one 2x2 output tile, 16 multiplications instead of 36

# %%
print("\n3. F(2x2, 3x3): one 4x4 input tile -> one 2x2 output tile, 16 multiplications instead of 36")
tile = rng.standard_normal((4, 4))
kernel = rng.standard_normal((3, 3))
direct_2d = np.array([[np.sum(tile[i : i + 3, j : j + 3] * kernel) for j in range(2)] for i in range(2)])
U = G @ kernel @ G.T  # the filter, transformed once
V = B_T @ tile @ B_T.T  # the input tile, transformed
Y = A_T @ (U * V) @ A_T.T  # 16 element-wise multiplications, then the output transform
print(f"   max |direct - Winograd| = {np.abs(direct_2d - Y).max():.1e}; multiplications per tile: 36 -> {U.size}")
assert np.allclose(Y, direct_2d, atol=1e-12) and U.size == 16

# %% [markdown]
# ## 4. A whole layer: many tiles and channels; the 16 grid positions become 16 matrix products
# The NumPy backend computes this narrow layer by im2col (lesson 2; it takes Winograd only for layers with 32 or
# more input channels on maps of 30x30 and more); `winograd.forward` and `winograd.backward` must give the same
# output and the same gradients.

# %%
print("\n4. A whole layer: many tiles and channels; the 16 grid positions become 16 matrix products")
layer = Conv2D(8, 6, 3, padding="same", use_bias=False, seed=1, dtype=np.float64)
x = rng.standard_normal((2, 9, 7, 8))
fresh = lambda shape, dtype, slot: np.empty(shape, dtype)  # no shared workspace in a lesson
with kernels.backend("numpy"):  # the NumPy backend computes this Conv2D by im2col
    z = layer.forward(x, training=True)
    dz = rng.standard_normal(z.shape)
    dx = layer.backward(dz)
    pads = layer._pads(9, 7)
    th, tw = winograd.tiles(9, 7)
    v = numpy_ref.winograd_input(x, pads[0][0], pads[1][0], th, tw)
    u = winograd.filter_transform(layer.params["kernel"])
    print(f"   input {x.shape}: {th}x{tw} tiles per image, V {v.shape} (16, tiles, C) @ U {u.shape} (16, C, F)")
    z_w = winograd.forward(numpy_ref, x, layer.params["kernel"], pads, (9, 7), fresh)
    dkernel, dx_w = winograd.backward(numpy_ref, x, layer.params["kernel"], dz, pads, fresh)
print(f"   forward: max |im2col - Winograd| = {np.abs(z - z_w).max():.1e}")
print(f"   backward: kernel gradient {np.abs(dkernel - layer.grads['kernel']).max():.1e}, "
      f"input gradient {np.abs(dx - dx_w).max():.1e}")
assert np.allclose(z, z_w, atol=1e-10) and np.allclose(dx, dx_w, atol=1e-10)
assert np.allclose(dkernel, layer.grads["kernel"], atol=1e-10)

# %% [markdown]
# ## 5. Multiplications in ARN-CNN's 3x3 stride-1 convolutions (batch 40, forward)
# Each layer: (H, W, C_in, C_out, output height, output width).

# %%
print("\n5. Multiplications in ARN-CNN's 3x3 stride-1 convolutions (batch 40, forward)")
layers = {"conv2d_5": (31, 31, 32, 64, 31, 31), "conv2d_6": (31, 31, 64, 64, 31, 31),
          "conv2d_10": (15, 15, 64, 64, 13, 13), "conv2d_13": (13, 13, 64, 256, 11, 11)}
counts = {}
for name, (_H, _W, C, F, OH, OW) in layers.items():
    direct_macs = 40 * OH * OW * 9 * C * F
    th, tw = winograd.tiles(OH, OW)
    winograd_macs = 16 * 40 * th * tw * C * F  # tiles hanging over the edge are computed too
    counts[name] = (direct_macs, winograd_macs)
    print(f"   {name}: {direct_macs / 1e6:7.1f} M -> {winograd_macs / 1e6:7.1f} M "
          f"({direct_macs / winograd_macs:.2f}x fewer)")
    assert winograd_macs < direct_macs
print("   At most 2.25x: the edge tiles of odd-sized outputs cost a little.")

# %% [markdown]
# ## 6. Float32: how far each method lands from the float64 result (conv2d_6's shape, 2 images)

# %%
print("\n6. Float32: how far each method lands from the float64 result (conv2d_6's shape, 2 images)")
layer6 = Conv2D(64, 64, 3, padding="same", use_bias=False, seed=2, dtype=np.float64)
x6 = rng.standard_normal((2, 31, 31, 64))


def by_columns(x, kernel):
    """The convolution as im2col's one matrix product (lesson 2), in the arrays' precision."""
    cols = numpy_ref.im2col_padded(x, 3, 3, 1, ((1, 1), (1, 1)))
    return (cols @ kernel.reshape(-1, kernel.shape[-1])).reshape(*x.shape[:3], kernel.shape[-1])


truth = by_columns(x6, layer6.params["kernel"])  # float64
layer32 = Conv2D(64, 64, 3, padding="same", use_bias=False, seed=2)
layer32.params["kernel"][...] = layer6.params["kernel"]
by_im2col = by_columns(x6.astype(np.float32), layer32.params["kernel"]).astype(np.float64)
by_winograd = winograd.forward(numpy_ref, x6.astype(np.float32), layer32.params["kernel"], ((1, 1), (1, 1)),
                               (31, 31), fresh).astype(np.float64)
by_f4 = winograd.forward(numpy_ref, x6.astype(np.float32), layer32.params["kernel"], ((1, 1), (1, 1)),
                         (31, 31), fresh, winograd.F4).astype(np.float64)
scale = np.abs(truth).max()
err_im2col = np.abs(by_im2col - truth) / scale
err_winograd = np.abs(by_winograd - truth) / scale
err_f4 = np.abs(by_f4 - truth) / scale
print(f"   largest error relative to the output's scale: im2col {err_im2col.max():.1e}, "
      f"Winograd F(2x2, 3x3) {err_winograd.max():.1e}, F(4x4, 3x3) {err_f4.max():.1e}")
assert err_winograd.max() < 1e-5, "Winograd's float32 error stays a small multiple of float32's epsilon"
assert err_winograd.max() < err_f4.max() < 5e-5, "F(4x4, 3x3) pays for 4x fewer multiplications in accuracy"

# %% [markdown]
# The multiplication counts of part 5 and the error distributions of part 6 side by side.

# %%
fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
names = list(counts)
ax1.bar(np.arange(len(names)) - 0.2, [counts[n][0] / 1e6 for n in names], 0.4, label="im2col (direct)")
ax1.bar(np.arange(len(names)) + 0.2, [counts[n][1] / 1e6 for n in names], 0.4, label="Winograd F(2x2, 3x3)")
ax1.set_xticks(range(len(names)), names)
ax1.set_ylabel("million multiply-adds, batch 40")
ax1.set_title("Multiplications per forward pass")
ax1.legend()
bins = np.logspace(-12, -4, 60)
ax2.hist(err_im2col.ravel() + 1e-13, bins=bins, alpha=0.6, label="im2col")
ax2.hist(err_winograd.ravel() + 1e-13, bins=bins, alpha=0.6, label="Winograd F(2x2, 3x3)")
ax2.hist(err_f4.ravel() + 1e-13, bins=bins, alpha=0.6, label="Winograd F(4x4, 3x3)")
ax2.set_xscale("log")
ax2.set_xlabel("|float32 - float64| / max |output|")
ax2.set_ylabel("outputs")
ax2.set_title("Float32 error, conv2d_6's shape")
ax2.legend()
fig.tight_layout()
lesson_support.save(fig, "16_winograd.png", dpi=110)
print("\nLesson 16 done: every check passed (F(2, 3), F(2x2, 3x3) on a tile, a whole layer forward and backward, "
      "the counts, the float32 error).")
