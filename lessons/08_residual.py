"""Lesson 8: the residual block: gradient norms through a deep stack, with and without the skip.

What it teaches
- A plain block computes y = F(x); a residual block computes y = ReLU(F(x) + x) (He et al. 2016; ARN-CNN's
  block, paper Fig. 2, with F = conv-BN-conv-BN-attention and a 1x1 conv on the skip when channels differ).
- Backward through the sum: both branches get the same upstream gradient, and the input's gradient is
      dL/dx = J_F(x)^T g + g,      g = dL/d(F(x) + x):
  the "+ g" is an identity path, so the gradient reaches early layers even when J_F shrinks it.
- Why it shrinks without the skip: Keras' default Glorot-uniform init gives a 3x3 conv with C -> C channels
  weights of variance 1/(9C) = 1/fan_in, which keeps the signal's size, and each ReLU then zeroes about half
  of it: the norm drops by a factor of about 2 per block (two ReLUs), ~2^-D or less after D blocks.
  With the skip it stays of order 1.
Measured here on stacks of minarn layers (Conv2D, ReLU, Add), float64, several seeds; then the paper's
ResidualBlock (minarn.layers.residual) is gradient-checked with and without its skip.

Run:  python lessons/08_residual.py     (figures go to ./lesson_figures, or to $MINARN_LESSON_OUT)
"""

import itertools
import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

import minarn  # noqa: E402
from minarn import kernels  # noqa: E402
from minarn.gradcheck import numeric_grad, rel_error  # noqa: E402
from minarn.layers.residual import ResidualBlock  # noqa: E402

FAST = os.environ.get("MINARN_LESSON_FAST") == "1"
OUT = Path(os.environ.get("MINARN_LESSON_OUT", "lesson_figures"))
OUT.mkdir(parents=True, exist_ok=True)
kernels.use_backend("numpy")
C, DEPTH, SEEDS = 8, 12, (3 if FAST else 6)
FMT = {"float_kind": lambda v: f"{v:.1e}"}


def make_stack(depth, seed):
    """depth blocks of conv3x3(ReLU) -> conv3x3 (linear), same padding, C -> C channels, Glorot init."""
    conv = {"padding": "same", "dtype": np.float64}
    return [(minarn.Conv2D(C, C, 3, activation="relu", seed=seed * 100 + 2 * d, **conv),
             minarn.Conv2D(C, C, 3, seed=seed * 100 + 2 * d + 1, **conv), minarn.Add(), minarn.ReLU())
            for d in range(depth)]


def grad_norms(stack, x, skip, dout):
    """Forward (y = ReLU(F(x) + x) or ReLU(F(x))), then backward; returns ||dL/dh|| at every block input,
    input first, relative to ||dout||; the output's norm relative to the input's; ||dL/dK|| of the first conv."""
    h = x
    for conv1, conv2, add, relu in stack:
        f = conv2.forward(conv1.forward(h))
        h = relu.forward(add.forward((f, h)) if skip else f)
    out_ratio = np.linalg.norm(h) / np.linalg.norm(x)
    norms, d = [np.linalg.norm(dout)], dout
    for conv1, conv2, add, relu in reversed(stack):
        g = relu.backward(d)
        if skip:
            g, d_skip = add.backward(g)  # Add copies g to both of its inputs
        d = conv1.backward(conv2.backward(g)) + (d_skip if skip else 0)  # fan-out: the two paths add up
        norms.append(np.linalg.norm(d))
    return np.array(norms[::-1]) / norms[0], out_ratio, np.linalg.norm(stack[0][0].grads["kernel"])


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

print("\n3. The paper's ResidualBlock (conv-BN-conv-BN-attention, skip, ReLU, max-pool): gradient check")
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
path = OUT / "08_residual.png"
fig.savefig(path, dpi=100)
plt.close(fig)
print(f"   figure saved: {path}")
print("\nLesson 8 done: every check passed.")
