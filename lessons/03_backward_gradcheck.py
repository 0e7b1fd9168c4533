# %% [markdown]
# # Lesson 3: backward passes and gradient checking: col2im, numeric gradients, relative error
#
# **What it teaches.** The convolution's backward pass by the chain rule on one matrix product; col2im, the
# adjoint of im2col, which must ADD; numeric gradients by central differences, how their error depends on
# eps, and why they need float64; the relative error that compares two gradients.
#
# **Prerequisites.** Lesson 2 (im2col, the convolution as `cols @ K.reshape(kh*kw*C, F)`, "same" padding).
#
# **Time.** About 20 minutes to read; 5 s to run.
#
# **Exercises.** `python -m minarn.exercises new DIR` writes `03_backward_gradcheck.py` with the stubs of
# `col2im` and `conv2d_backward`; `python -m minarn.exercises check DIR/03_backward_gradcheck.py` grades them.
#
# **Try this.**
# 1. In `col2im`, replace `+=` by `=`. Section 2 then stops at its `assert`: dx by hand differs from
#    `Conv2D.backward` by about 1.4, because a pixel that sat in several patches keeps only the last patch's
#    gradient.
# 2. In section 4, build the layers with `dtype=np.float32` and pass the input as
#    `rng.standard_normal((2, 6, 5, 3)).astype(np.float32)`. The relative errors jump from ~1e-10 to
#    1e-2 - 1e-1 and the assert fails: float32 rounding swamps the difference quotient (section 1 shows why).

# %% [markdown]
# ## The chain rule on a matrix product
# The convolution's forward pass is `z = cols @ K2 + b` with `cols = im2col(x)` and
# `K2 = K.reshape(kh*kw*C, F)` (lesson 2). Given the upstream gradient `dz = dL/dz`, the chain rule on a
# matrix product gives
#
#     dK2 = cols^T @ dz,    db = sum over rows of dz,    dcols = dz @ K2^T,    dx = col2im(dcols).
#
# col2im is the adjoint (transpose) of im2col: it sends every entry of dcols back to the pixel it was copied
# from and ADDS, because a pixel that sat in 9 patches gets gradient from all 9. Adjoint means
# `<im2col(x), D> = <x, col2im(D)>` for every x and D.
#
# A numeric gradient needs no calculus: for `L(x) = sum(f(x) * dout)` with a random dout,
#
#     dL/dx_i ~ (L(x + eps e_i) - L(x - eps e_i)) / (2 eps),     error O(eps^2) + rounding / eps.
#
# Compare with the relative error `||a - n|| / (||a|| + ||n||)`: ~1e-10 when backward is right (float64),
# ~1e-1 when it is wrong. Float32 cannot do this: rounding swamps the difference quotient.
#
# Run as a script: `python lessons/03_backward_gradcheck.py` (figures go to `./lesson_figures`, or to
# `$MINARN_LESSON_OUT`); or open it as a notebook (see `lessons/README.md`).

# %%
from minarn import lesson_support

lesson_support.use_matplotlib()  # off-screen for a script, inline in a notebook
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

import minarn  # noqa: E402
from minarn import kernels  # noqa: E402
from minarn.gradcheck import check_layer, numeric_grad, rel_error  # noqa: E402
from minarn.kernels.numpy_ref import im2col  # noqa: E402  (lesson 2's im2col, minarn's copy)
from minarn.layers.conv import same_padding  # noqa: E402  (lesson 2's same_padding, minarn's copy)

kernels.use_backend("numpy")
rng = np.random.default_rng(0)

# %% [markdown]
# ## The two functions of this lesson (the exercises)
# `col2im` folds every row of dcols back onto its patch, adding where patches overlap. Like im2col it loops
# over the kh x kw kernel offsets only: offset (i, j) of every patch at once is one strided slice of dx.


# %%
def col2im(dcols, x_shape, kh, kw, stride):
    """Adjoint of im2col: dcols (N*OH*OW, kh*kw*C) -> dx of shape x_shape (N, H, W, C), overlaps ADDED.

    dx[n, p*stride + i, q*stride + j, c] += dcols[(n, p, q), (i, j, c)];  OH = (H - kh) // stride + 1.
    """
    N, H, W, C = x_shape
    OH, OW = (H - kh) // stride + 1, (W - kw) // stride + 1
    patches = dcols.reshape(N, OH, OW, kh, kw, C)
    dx = np.zeros(x_shape)
    for i in range(kh):
        for j in range(kw):
            dx[:, i : i + stride * OH : stride, j : j + stride * OW : stride, :] += patches[:, :, :, i, j, :]
    return dx


# %% [markdown]
# `conv2d_backward` is the backward pass of lesson 2's `conv2d_forward` (no activation): pad as the forward
# did, rebuild the columns, three matrix products, and for "same" crop the padding off dx (the padded zeros
# are constants: their gradient goes nowhere).


# %%
def conv2d_backward(dout, x, kernel, stride=1, padding="valid"):
    """Backward of out = conv2d_forward(x, kernel, bias, stride, padding), given dout = dL/dout (N, OH, OW, F).

    Returns (dx (N, H, W, C), dkernel (kh, kw, C, F), dbias (F,)):
    dkernel = cols^T @ dz, dbias = sum of dz over rows, dx = crop(col2im(dz @ K2^T)), dz = dout as (N*OH*OW, F).
    """
    kh, kw, C, F = kernel.shape
    N, H, W, _ = x.shape
    if padding == "same":
        (top, bottom), (left, right) = same_padding(H, kh, stride), same_padding(W, kw, stride)
    else:
        (top, bottom), (left, right) = (0, 0), (0, 0)
    xp = np.pad(x, ((0, 0), (top, bottom), (left, right), (0, 0)))
    cols = im2col(xp, kh, kw, stride)
    dz = dout.reshape(-1, F)
    dkernel = (cols.T @ dz).reshape(kernel.shape)
    dbias = dz.sum(axis=0)
    dx = col2im(dz @ kernel.reshape(-1, F).T, xp.shape, kh, kw, stride)[:, top : top + H, left : left + W]
    return dx, dkernel, dbias


# %% [markdown]
# And the classic bug, kept here to be caught in section 5: `=` instead of `+=`, so each pixel keeps only
# the last patch's contribution.


# %%
def col2im_wrong(dcols, x_shape, kh, kw, s):
    """The classic bug: '=' instead of '+=', so each pixel keeps only the last patch's contribution."""
    N, H, W, C = x_shape
    OH, OW = (H - kh) // s + 1, (W - kw) // s + 1
    patches = dcols.reshape(N, OH, OW, kh, kw, C)
    dx = np.zeros(x_shape)
    for i in range(kh):
        for j in range(kw):
            dx[:, i : i + s * OH : s, j : j + s * OW : s, :] = patches[:, :, :, i, j, :]
    return dx


# %% [markdown]
# ## 1. A numeric gradient, and how its error depends on eps
# f = sin, whose exact derivative is cos: the relative error of central differences for eps from 1e-12 to
# 1e-1, in float64 and in float32.

# %%
print("1. A numeric gradient, and how its error depends on eps (f = sin, exact derivative cos)")
x64 = rng.uniform(-3, 3, size=50)
dout = rng.standard_normal(50)
epsilons = np.logspace(-12, -1, 23)
errors = {}
for dtype in (np.float64, np.float32):
    x = x64.astype(dtype)
    exact = np.cos(x64) * dout
    errors[dtype.__name__] = [rel_error(numeric_grad(lambda: np.sin(x), x, dout.astype(dtype), eps), exact)
                              for eps in epsilons]
best64 = int(np.argmin(errors["float64"]))
at_1e6 = int(np.argmin(np.abs(epsilons - 1e-6)))
print(f"   float64: best rel error {errors['float64'][best64]:.1e} at eps {epsilons[best64]:.0e}; "
      f"at eps 1e-6: {errors['float64'][at_1e6]:.1e}")
print(f"   float32: best rel error {min(errors['float32']):.1e}; at eps 1e-6: {errors['float32'][at_1e6]:.1e}")
assert errors["float64"][at_1e6] < 1e-8, "float64 central differences are accurate near eps = 1e-6"
assert min(errors["float32"]) > 1e-6 and errors["float32"][at_1e6] > 1e-2, "float32 is not good enough"

# %% [markdown]
# ## 2. The conv backward pass by hand, against minarn.Conv2D.backward
# Float64, "same" padding, stride 2. Keras' "same" puts the extra row or column of an odd padding at the end
# (lesson 2). A layer without activation is linear, so its dz is the upstream gradient itself.

# %%
print("\n2. The conv backward pass by hand, against minarn.Conv2D.backward (float64, 'same', stride 2)")
x = rng.standard_normal((2, 7, 6, 3))
layer = minarn.Conv2D(3, 4, 3, strides=2, padding="same", seed=1, dtype=np.float64)
out = layer.forward(x)
dz = rng.standard_normal(out.shape)  # linear layer: dz = dout
(top, bottom), (left, right) = same_padding(7, 3, 2), same_padding(6, 3, 2)  # Keras: an odd total pads more at the end
print(f"   'same' padding: rows ({top}, {bottom}), columns ({left}, {right})")
xp = np.pad(x, ((0, 0), (top, bottom), (left, right), (0, 0)))
cols = im2col(xp, 3, 3, 2)
dx, dK, db = conv2d_backward(dz, x, layer.params["kernel"], 2, "same")
dx_minarn = layer.backward(dz)
for name, ours, theirs in (("dx", dx, dx_minarn), ("dkernel", dK, layer.grads["kernel"]),
                           ("dbias", db, layer.grads["bias"])):
    print(f"   {name:8s} by hand vs minarn: max abs difference {np.abs(ours - theirs).max():.1e}")
    assert np.abs(ours - theirs).max() < 1e-12

# %% [markdown]
# ## 3. col2im is the adjoint of im2col
# For a random D of the shape of cols: `<im2col(x), D> == <x, col2im(D)>`; and our col2im equals minarn's.

# %%
print("\n3. col2im is the adjoint of im2col: <im2col(x), D> == <x, col2im(D)>")
D = rng.standard_normal(cols.shape)
lhs, rhs = np.sum(cols * D), np.sum(xp * col2im(D, xp.shape, 3, 3, 2))
print(f"   {lhs:.12f} vs {rhs:.12f}")
assert abs(lhs - rhs) < 1e-10
assert np.allclose(col2im(D, xp.shape, 3, 3, 2), kernels.get_backend().col2im(D, xp.shape, 3, 3, 2))

# %% [markdown]
# ## 4. Numeric gradients agree with backward
# `minarn.gradcheck.check_layer` compares backward with central differences for the input and every
# parameter. A Conv2D can end with an activation; the sigmoid and GELU used here are derived in lesson 5:
# here they only show that the check covers a whole layer, activation included.

# %%
print("\n4. Numeric gradients agree with backward (minarn.gradcheck.check_layer: input and every parameter)")
for padding, stride, act in (("valid", 1, None), ("same", 2, "sigmoid"), ("same", 1, "gelu")):
    conv = minarn.Conv2D(3, 4, 3, strides=stride, padding=padding, activation=act, seed=2, dtype=np.float64)
    conv.params["bias"][:] = rng.standard_normal(4)
    errs = check_layer(conv, rng.standard_normal((2, 6, 5, 3)), rng)
    print(f"   {padding:5s} stride {stride} {act!s:7s}: " + ", ".join(f"{k} {v:.1e}" for k, v in errs.items()))
    assert max(errs.values()) < 1e-6

# %% [markdown]
# ## 5. ...and a gradient check catches a bug
# The same check on `col2im_wrong`, the `=`-instead-of-`+=` version.

# %%
print("\n5. ...and a gradient check catches a bug: col2im with '=' instead of '+='")
xs = rng.standard_normal((1, 6, 6, 2))
conv = minarn.Conv2D(2, 3, 3, seed=3, dtype=np.float64)
d = rng.standard_normal(conv.forward(xs).shape)
dcols = d.reshape(-1, 3) @ conv.params["kernel"].reshape(-1, 3).T
numeric = numeric_grad(lambda: conv.forward(xs), xs, d)
good, bad = col2im(dcols, xs.shape, 3, 3, 1), col2im_wrong(dcols, xs.shape, 3, 3, 1)
print(f"   rel error, correct col2im {rel_error(good, numeric):.1e};  with the bug {rel_error(bad, numeric):.1e}")
assert rel_error(good, numeric) < 1e-6 and rel_error(bad, numeric) > 1e-1
assert rel_error(conv2d_backward(d, xs, conv.params["kernel"])[0], numeric) < 1e-6

# %% [markdown]
# ## 6. Figures
# The eps trade-off of section 1, and how many patches cover each pixel: col2im of all-ones counts them.

# %%
print("\n6. Figures: the eps trade-off, and how many patches cover each pixel (col2im of all-ones)")
cover = col2im(np.ones((16, 9)), (1, 6, 6, 1), 3, 3, 1)[0, :, :, 0]
assert cover[0, 0] == 1 and cover[2, 2] == 9 and cover.sum() == 16 * 9
fig, ax = plt.subplots(1, 2, figsize=(11, 4))
for name, errs in errors.items():
    ax[0].loglog(epsilons, errs, "o-", label=name)
ax[0].axhline(1e-6, color="gray", ls=":", label="pass threshold 1e-6")
ax[0].set_xlabel("eps")
ax[0].set_ylabel("relative error vs exact gradient")
ax[0].set_title("Central differences: truncation (right) vs rounding (left)")
ax[0].legend()
ax[1].imshow(cover, cmap="Blues")
for (r, c), v in np.ndenumerate(cover):
    ax[1].text(c, r, int(v), ha="center", va="center")
ax[1].set_title("col2im(ones): 3x3 patches covering each pixel\n(so col2im must add, not assign)")
ax[1].set_xticks([]), ax[1].set_yticks([])
fig.tight_layout()
lesson_support.save(fig, "03_gradcheck.png", dpi=100)
print("\nLesson 3 done: every check passed.")
