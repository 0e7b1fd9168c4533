# %% [markdown]
# # Lesson 8: the residual block: gradient norms through a deep stack, with and without the skip
#
# **What it teaches.** Why the skip connection matters: in a plain stack each conv + ReLU halves the signal and
# the gradient vanishes; `y = ReLU(F(x) + x)` adds an identity path to the gradient, which keeps it of order 1.
# Then the paper's `ResidualBlock` as `residual_forward` / `residual_backward` around its main path.
#
# **Prerequisites.** Lessons 02-03 (convolution forward and backward, gradient checks) and 05 (ReLU). Section 3
# uses the paper's block, which also holds batch norm (lesson 06) and the attention module (lesson 07).
#
# **Time.** About 15 minutes; the script runs in 5-8 s (4 s with `MINARN_LESSON_FAST=1`).
#
# **Exercise.** `residual_forward` and `residual_backward` (`python -m minarn.exercises new DIR`, then
# `python -m minarn.exercises check DIR/08_residual.py`).
#
# **Try this.**
# 1. In `make_stack`, multiply both kernels of every block by `np.sqrt(2)` (He initialization): the plain stack's
#    input gradient becomes 0.1-0.4 instead of ~4e-5 and the assertion "without it the gradient vanishes" fails:
#    the halving per ReLU was the initialization's doing. (With the skip the gradient now grows, to 25-40.)
# 2. Set `DEPTH = 24`: the plain stack's input gradient drops to 1e-9-1e-8 (the forward signal to ~3e-10), while
#    with the skip it stays 6-9.
#
# Run as a script: `python lessons/08_residual.py` (figures go to `./lesson_figures`, or to `$MINARN_LESSON_OUT`),
# or open it as a notebook (see `lessons/README.md`).

# %%
import itertools
import os

from minarn import lesson_support

lesson_support.use_matplotlib()
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

import minarn  # noqa: E402
from minarn import kernels  # noqa: E402
from minarn.gradcheck import numeric_grad, rel_error  # noqa: E402
from minarn.layers.residual import ResidualBlock  # noqa: E402

FAST = os.environ.get("MINARN_LESSON_FAST") == "1"
kernels.use_backend("numpy")
C, DEPTH, SEEDS = 8, 12, (3 if FAST else 6)
FMT = {"float_kind": lambda v: f"{v:.1e}"}

# %% [markdown]
# ## The block and its backward pass
#
# A plain block computes `y = F(x)`; a residual block computes `y = ReLU(F(x) + x)` (He et al. 2016; ARN-CNN's
# block, paper Fig. 2, with F = conv-BN-conv-BN-attention and a 1x1 conv S on the skip when the channels differ:
# `y = ReLU(F(x) + S(x))`).
#
# Backward through the sum: both branches get the same upstream gradient, and the input's gradient is
#
#     dL/dx = J_F(x)^T g + g,      g = dL/d(F(x) + x) = dout * [y > 0]   (the final ReLU's mask):
#
# the "+ g" is an identity path, so the gradient reaches early layers even when J_F shrinks it. The two
# functions below take F (and S) as given functions: `f(x)` computes F(x), `f_vjp(x, g)` computes J_F(x)^T g
# (the backward pass of F; for minarn layers, which keep what their forward saw, it is their `backward`).


# %%
def residual_forward(x, f, skip=None):
    """y = ReLU(F(x) + S(x)): f(x) is the main path F; skip(x) the skip path S (None: the identity, S(x) = x)."""
    s = x if skip is None else skip(x)
    return np.maximum(f(x) + s, 0.0)


def residual_backward(dout, x, y, f_vjp, skip_vjp=None):
    """dL/dx of y = ReLU(F(x) + S(x)) for the upstream gradient dout, given the forward's output y.

    f_vjp(x, g) = J_F(x)^T g (the main path's backward); skip_vjp(x, g) = J_S(x)^T g (None: the identity skip).
    g = dout * [y > 0] (the ReLU's mask); x feeds both paths, so dx = f_vjp(x, g) + skip_vjp(x, g).
    """
    g = dout * (y > 0)  # the final ReLU: y > 0 exactly where F(x) + S(x) > 0
    return f_vjp(x, g) + (g if skip_vjp is None else skip_vjp(x, g))  # fan-out: the two paths add up


# %% [markdown]
# ## 1. Gradient norms through a deep stack
#
# Why the gradient shrinks without the skip: Keras' default Glorot-uniform init gives a 3x3 conv with C -> C
# channels weights of variance 1/(9C) = 1/fan_in, which keeps the signal's size, and each ReLU then zeroes about
# half of it: the norm drops by a factor of about 2 per block (two ReLUs), ~2^-D or less after D blocks. With the
# skip it stays of order 1. Measured here on stacks of minarn layers (`Conv2D`, `ReLU`), float64, several seeds;
# the residual version goes through `residual_forward` / `residual_backward`, with F = the block's two convs.


# %%
def make_stack(depth, seed):
    """depth blocks of conv3x3(ReLU) -> conv3x3 (linear), same padding, C -> C channels, Glorot init."""
    conv = {"padding": "same", "dtype": np.float64}
    return [(minarn.Conv2D(C, C, 3, activation="relu", seed=seed * 100 + 2 * d, **conv),
             minarn.Conv2D(C, C, 3, seed=seed * 100 + 2 * d + 1, **conv), minarn.ReLU())
            for d in range(depth)]


def grad_norms(stack, x, skip, dout):
    """Forward (y = ReLU(F(x) + x) or ReLU(F(x))), then backward; returns ||dL/dh|| at every block input,
    input first, relative to ||dout||; the output's norm relative to the input's; ||dL/dK|| of the first conv."""
    h, saved = x, []
    for conv1, conv2, relu in stack:
        f = lambda v, conv1=conv1, conv2=conv2: conv2.forward(conv1.forward(v))  # F of this block
        h_in = h
        h = residual_forward(h, f) if skip else relu.forward(f(h))
        saved.append((h_in, h))
    out_ratio = np.linalg.norm(h) / np.linalg.norm(x)
    norms, d = [np.linalg.norm(dout)], dout
    for (conv1, conv2, relu), (h_in, y) in zip(reversed(stack), reversed(saved)):
        f_vjp = lambda v, g, conv1=conv1, conv2=conv2: conv1.backward(conv2.backward(g))
        d = residual_backward(d, h_in, y, f_vjp) if skip else f_vjp(h_in, relu.backward(d))
        norms.append(np.linalg.norm(d))
    return np.array(norms[::-1]) / norms[0], out_ratio, np.linalg.norm(stack[0][0].grads["kernel"])


# %%
print(f"1. {DEPTH} blocks (= {2 * DEPTH} conv layers), C = {C}, input (4, 8, 8, {C}), random upstream gradient")
rng = np.random.default_rng(0)
results = {False: [], True: []}
for seed in range(SEEDS):
    x = rng.standard_normal((4, 8, 8, C))
    dout = rng.standard_normal(x.shape)
    for skip in (False, True):
        results[skip].append(grad_norms(make_stack(DEPTH, seed), x, skip, dout))
for skip, label in ((False, "plain   "), (True, "residual")):
    at_input = np.array([r[0][0] for r in results[skip]])
    outs = np.array([r[1] for r in results[skip]])
    print(f"   {label}: ||dL/dx|| / ||dL/dy|| at the input: {np.array2string(at_input, formatter=FMT)}")
    print(f"             ||y|| / ||x|| (forward signal): median {np.median(outs):.1e}")
plain_in = np.array([r[0][0] for r in results[False]])
resid_in = np.array([r[0][0] for r in results[True]])
print(f"   for reference 2^-{DEPTH} = {2.0 ** -DEPTH:.1e}; the skip gives "
      f"{np.min(resid_in / plain_in):,.0f}x or more gradient at the input, for every seed")
assert np.all(resid_in > 100 * plain_in), "with the skip the input gradient is much larger, every seed"
assert np.all(plain_in < 2.0 ** -(DEPTH / 2)), "without it the gradient vanishes (faster than 2^-D/2)"
assert np.all((resid_in > 0.2) & (resid_in < 20)), "with it the gradient keeps its size"
assert all(r[1] < 1e-2 for r in results[False]), "the plain stack also loses the forward signal"
first = {skip: np.array([r[2] for r in results[skip]]) for skip in (False, True)}
print(f"   what the first layer learns from, ||dL/dK|| of its kernel: plain {np.median(first[False]):.1e}, "
      f"with skip {np.median(first[True]):.1e}")
assert np.all(first[True] > 100 * first[False])

# %% [markdown]
# `residual_forward` / `residual_backward` against minarn's own `Add` and `ReLU` layers on one block: `Add`'s
# backward copies g to both of its inputs, which is where the "+ g" comes from.

# %%
conv1, conv2, relu = make_stack(1, 0)[0]
add = minarn.Add()
x1, d1 = rng.standard_normal((2, 5, 5, C)), rng.standard_normal((2, 5, 5, C))
y1 = residual_forward(x1, lambda v: conv2.forward(conv1.forward(v)))
dx1 = residual_backward(d1, x1, y1, lambda v, g: conv1.backward(conv2.backward(g)))
y_layers = relu.forward(add.forward((conv2.forward(conv1.forward(x1)), x1)))
g_main, g_skip = add.backward(relu.backward(d1))
dx_layers = conv1.backward(conv2.backward(g_main)) + g_skip
print(f"   one block by residual_forward/backward vs Conv2D/Add/ReLU layers: y {np.abs(y1 - y_layers).max():.1e}, "
      f"dx {np.abs(dx1 - dx_layers).max():.1e}")
assert np.abs(y1 - y_layers).max() < 1e-12 and np.abs(dx1 - dx_layers).max() < 1e-12

# %% [markdown]
# ## 2. Shallow stacks for comparison: input gradient norm vs depth (median over seeds)

# %%
print("\n2. Shallow stacks for comparison: input gradient norm vs depth (median over seeds)")
depths = list(range(1, DEPTH + 1, 1 if not FAST else 3))
curve = {skip: [] for skip in (False, True)}
for depth in depths:
    for skip in (False, True):
        vals = []
        for seed in range(SEEDS):
            x = np.random.default_rng(seed).standard_normal((2, 8, 8, C))
            dout = np.random.default_rng(99).standard_normal(x.shape)
            vals.append(grad_norms(make_stack(depth, seed), x, skip, dout)[0][0])
        curve[skip].append(np.median(vals))
for depth, p, r in zip(depths, curve[False], curve[True]):
    print(f"   depth {depth:2d}: plain {p:.1e}   residual {r:.2f}")
assert curve[False][-1] < curve[False][0] / 30 and curve[True][-1] > 0.2

# %% [markdown]
# ## 3. The paper's ResidualBlock
#
# `minarn.layers.residual.ResidualBlock`: conv-BN-conv-BN-attention (the main path F), a 1x1 conv skip S (2 -> 3
# channels), ReLU, then max-pooling. Its forward is `pool(residual_forward(x, F, S))` and its backward
# `residual_backward(pool's backward, ...)` with F's and S's backward passes; then a numeric gradient check of the
# whole block, with and without its skip.

# %%
print("\n3. The paper's ResidualBlock (conv-BN-conv-BN-attention, skip, ReLU, max-pool)")
block = ResidualBlock(2, 3, name=lambda base: base, seed=itertools.count(1).__next__, dtype=np.float64)


def main_path(v):
    """F of the block, in training mode: conv1 (ReLU) -> BN -> conv2 (ReLU) -> BN -> attention."""
    h = block.bn1.forward(block.conv1.forward(v, True), True)
    return block.attention.forward(block.bn2.forward(block.conv2.forward(h, True), True), True)


def main_path_vjp(v, g):
    """J_F^T g: the main path's layers' backward passes, in reverse order (they kept what their forward saw)."""
    g = block.bn2.backward(block.attention.backward(g))
    return block.conv1.backward(block.bn1.backward(block.conv2.backward(g)))


xb = np.random.default_rng(1).standard_normal((2, 6, 6, 2))
out_block = block.forward(xb, training=True)
dout = np.random.default_rng(2).standard_normal(out_block.shape)
dx_block = block.backward(dout)
yb = residual_forward(xb, main_path, block.skip.forward)
out_ours = block.pool.forward(yb)
dx_ours = residual_backward(block.pool.backward(dout), xb, yb, main_path_vjp, lambda v, g: block.skip.backward(g))
print(f"   pool(residual_forward) vs ResidualBlock.forward: {np.abs(out_ours - out_block).max():.1e}; "
      f"residual_backward vs ResidualBlock.backward: {np.abs(dx_ours - dx_block).max():.1e}")
assert np.abs(out_ours - out_block).max() < 1e-12 and np.abs(dx_ours - dx_block).max() < 1e-12

# %%
for residual in (True, False):
    seeds = itertools.count(1)  # the block asks for a seed per layer and for Keras-style names
    block = ResidualBlock(2, 3, name=lambda base: base, seed=seeds.__next__, residual=residual, dtype=np.float64)
    xb = np.random.default_rng(1).standard_normal((2, 6, 6, 2))
    dout = np.random.default_rng(2).standard_normal(block.forward(xb, training=True).shape)
    dx = block.backward(dout)
    err = rel_error(dx, numeric_grad(lambda: block.forward(xb, training=True), xb, dout))
    skip = "1x1 conv skip (2 -> 3 channels)" if residual else "no skip"
    print(f"   {skip:32s}: x {xb.shape} -> {dout.shape}; input gradient rel error {err:.1e}")
    assert err < 1e-6

# %% [markdown]
# ## 4. Figure: gradient norm at every block, and at the input as the stack gets deeper

# %%
print("\n4. Figure: gradient norm at every block, and at the input as the stack gets deeper")
fig, ax = plt.subplots(1, 2, figsize=(12, 4.2))
for skip, color in ((False, "tab:red"), (True, "tab:blue")):
    for i, (norms, _, _) in enumerate(results[skip]):
        ax[0].semilogy(range(DEPTH + 1), norms, color=color, alpha=0.6,
                       label=("with skip" if skip else "plain") if i == 0 else None)
    ax[1].semilogy(depths, curve[skip], "o-", color=color, label="with skip" if skip else "plain")
ax[1].semilogy(depths, [2.0**-d for d in depths], "k:", label="2^-depth")
ax[0].set_xlabel("block index (0 = network input)"), ax[0].set_ylabel("||dL/dh|| / ||dL/dy||")
ax[0].set_title(f"{DEPTH}-block stack, {SEEDS} seeds")
ax[1].set_xlabel("number of blocks"), ax[1].set_title("gradient norm at the input")
for a in ax:
    a.legend(), a.grid(alpha=0.3)
fig.tight_layout()
lesson_support.save(fig, "08_residual.png", dpi=100)
print("\nLesson 8 done: every check passed.")
