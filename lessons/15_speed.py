# %% [markdown]
# # Lesson 15: where a training step spends its time, on the NumPy kernels and on the Numba kernels
#
# **What it teaches**
# - A training step is a forward pass, the loss (Eq. 7 + penalties) and a backward pass. Timing each group of
#   layers shows where the time goes; counting floating-point operations shows why.
# - A convolution with a k x k kernel, C_in -> C_out channels, on an H_o x W_o output for N images is one
#   matrix product (lesson 2) of 2 N H_o W_o k^2 C_in C_out FLOPs forward; the backward pass does two products
#   of the same size (dK = cols^T dz, dcols = dz K^T), so about 2x the forward. Everything else (bias, ReLU,
#   sigmoid, batch norm, pooling, the attention product) costs a few FLOPs per element: the products dominate,
#   and a handful of 3x3 convolutions carry most of them.
# - minarn has two kernel backends with the same results (minarn.kernels): plain NumPy, and Numba-compiled
#   loops for im2col/col2im, pooling and the fused element-wise passes. The matrix products are BLAS in both.
#   They must agree on the loss and the gradients to float32 rounding, not bit for bit (sums are taken in a
#   different order). One tolerance is checked: all gradients taken together as one vector agree to 1e-3
#   relative (measured here: a few 1e-6 at batch 8, about 1e-4 for Numba at batch 16), the loss to 1e-6.
#   Single small tensors agree less well: a gradient that is a sum of many terms that cancel keeps few
#   correct digits in float32.
# - Timings are printed, never asserted: they depend on the machine and its load. One BLAS thread is used
#   unless OPENBLAS_NUM_THREADS is set (on a shared 2-core machine spinning BLAS threads distort the picture).
#   For throughput against PyTorch and Keras see benchmarks/README.md (python benchmarks/run.py).
#
# **Prerequisites:** lesson 2 (convolution as one matrix product), lesson 3 (its backward pass) and
# lesson 12 (the whole network, layer by layer); lesson 13 trains with exactly the step timed here.
#
# **Time:** about 15 minutes to read and try; it runs in about 10 s (6 s with `MINARN_LESSON_FAST=1`).
#
# **Try this**
# 1. In part 2, set `TOLERANCE = 1e-6`: the assertion fails. Float32 gradients land a few 1e-6 (batch 8) to
#    about 1e-4 (Numba, batch 16) away from float64; no backend does better than float32 rounding allows.
# 2. In part 3, count 100 FLOPs per output element instead of 10 (`other += 100 * size`): the products fall
#    to 66 % of the work and the > 90 % assertion fails. Part 4 shows why FLOPs are not time: the
#    element-wise groups (attention, batch norm, pooling) take far more than their FLOP share of the
#    milliseconds, because they are limited by memory traffic, not arithmetic.
#
# Run it as a script, `python lessons/15_speed.py` (figures go to `./lesson_figures`, or to
# `$MINARN_LESSON_OUT`), or cell by cell as a notebook (see `lessons/README.md`).

# %%
import os
import time

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # before NumPy loads OpenBLAS
from minarn import lesson_support

lesson_support.use_matplotlib()  # Agg for a script; a notebook keeps its inline backend
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

import minarn  # noqa: E402
from minarn import data, kernels, losses  # noqa: E402

FAST = os.environ.get("MINARN_LESSON_FAST") == "1"
N, REPEATS = (8, 1) if FAST else (16, 2)  # batch size, timed steps per backend

# %% [markdown]
# ## The step, group by group
# The network of lesson 12 in eight groups of layers. `step()` runs one training step (forward, loss with
# penalties, backward) through them in order and times each group's forward and backward; part 1 checks that
# it is exactly `ARNCNN.loss_and_grads`.

# %%

model = minarn.ARNCNN(seed=0)  # the full 64x64 network
splits = data.split_dataset(data.load_mednist())
x = data.scale_images(splits.train.images[:N])
y = data.one_hot(splits.train.labels[:N], 6)
m = model
GROUPS = [("conv 1->32 + pool", [m.conv_in, m.pool_in]), ("2 attention (32)", m.stem_attention),
          ("residual block", [m.block]), ("conv 64->64 + att.", [m.conv_mid] + m.mid_attention),
          ("conv 64->256 + pool", [m.conv_deep, m.pool_deep]), ("4 attention (256)", m.deep_attention),
          ("conv 1x1 256->125", [m.conv_out])]
NAMES = [g[0] for g in GROUPS] + ["dense head + loss"]


def step():
    """One training step, group by group: (loss, grads, {group: [forward s, backward s]})."""
    t = {name: [0.0, 0.0] for name in NAMES}
    model.dropout.set_generator(np.random.default_rng(1))  # the same dropout mask every time
    h = x
    for name, parts in GROUPS:
        t0 = time.perf_counter()
        for p in parts:
            h = p.forward(h, True)
        t[name][0] = time.perf_counter() - t0
    t0 = time.perf_counter()
    model._dense_out = model.dense.forward(model.flatten.forward(h, True), True)  # as ARNCNN.logits does
    logits = model.classifier.forward_linear(model.dropout.forward(model._dense_out, True), True)
    ce, dlogits = losses.softmax_cross_entropy(logits, y)
    pen = model.penalties(N)
    t[NAMES[-1]][0] = time.perf_counter() - t0
    t0 = time.perf_counter()
    dh = model.backward_head(dlogits, pen["activity_l1"][1])
    t[NAMES[-1]][1] = time.perf_counter() - t0
    for name, parts in reversed(GROUPS):
        t0 = time.perf_counter()
        for p in reversed(parts):
            dh = p.backward(dh)
        t[name][1] = time.perf_counter() - t0
    grads = {f"{layer.name}/{k}": g.copy() for layer in model.layers for k, g in layer.grads.items()}
    grads["dense/kernel"] += pen["kernel_l2"][1]
    grads["dense/bias"] += pen["bias_l1"][1]
    return ce + sum(v for v, _ in pen.values()), grads, t


# %% [markdown]
# ## 1. One training step of the 64x64 ARN-CNN, timed per group of layers, on each backend
# The first step is a warm-up: Numba compiles its kernels there (or loads them from its cache).

# %%
print("1. One training step of the 64x64 ARN-CNN, timed per group of layers, on each backend")
print(f"   batch {N}")
backends = kernels.available_backends()
if "numba" not in backends:
    print("   numba is not installed (pip install 'minarn[fast]'): only the NumPy kernels are timed")
results = {}
for name in backends:
    with kernels.backend(name):
        t0 = time.perf_counter()
        step()  # warm-up: numba compiles its kernels here, NumPy pages in its buffers
        warm = time.perf_counter() - t0
        runs = [step() for _ in range(REPEATS)]
        loss, grads = runs[0][0], runs[0][1]
        times = {g: np.median([r[2][g] for r in runs], axis=0) for g in NAMES}
        model.dropout.set_generator(np.random.default_rng(1))
        ref_loss, ref_grads = model.loss_and_grads(x, y)
    assert abs(loss - ref_loss) < 1e-6 and all(np.array_equal(grads[k], ref_grads[k]) for k in ref_grads), \
        "the grouped step is exactly ARNCNN.loss_and_grads"
    results[name] = (loss, grads, times)
    print(f"   {name}: warm-up step {warm:.2f} s, then the median of {REPEATS} step(s); loss {loss:.5f}")

# %% [markdown]
# ## 2. The backends agree with each other and with a float64 reference, to float32 rounding
# The same weights in float64 give the reference. `rel` measures all gradients as one vector,
# ||a - b|| / ||b||, and finds the single tensor that agrees least.

# %%
print("\n2. The backends agree with each other and with a float64 reference, to float32 rounding")
m64 = minarn.ARNCNN(seed=0, dtype=np.float64)
m64.load_state_dict(model.state_dict())  # the same weights, in float64
m64.dropout.set_generator(np.random.default_rng(1))
with kernels.backend("numpy"):
    l64, g64 = m64.loss_and_grads(x.astype(np.float64), y.astype(np.float64))


def rel(ga, gb):
    """All gradients as one vector: ||a - b|| / ||b||; and the worst single tensor."""
    glob = np.sqrt(sum(np.sum((ga[k] - gb[k]) ** 2.0) for k in gb) / sum(np.sum(gb[k] ** 2.0) for k in gb))
    return glob, max((np.linalg.norm(ga[k] - gb[k]) / np.linalg.norm(gb[k]), k) for k in gb)


TOLERANCE = 1e-3  # all gradients as one vector, relative; the loss: 1e-6 relative
largest = max(np.linalg.norm(g64[k]) for k in g64)
pairs = [(b, results[b][0], results[b][1], l64, g64, "float64") for b in results]
if len(results) == 2:
    pairs.append(("numpy", results["numpy"][0], results["numpy"][1], results["numba"][0], results["numba"][1], "numba"))
else:
    print("   (numba not installed: only NumPy against float64)")
for b, la, ga, lb, gb, ref in pairs:
    glob, (worst, k) = rel(ga, gb)
    print(f"   {b:5s} vs {ref:7s}: loss {la:.7f} vs {lb:.7f}; gradients {glob:.1e} relative overall, "
          f"worst tensor {worst:.1e} ({k}, its gradient's norm {np.linalg.norm(g64[k]) / largest:.0e} of the "
          "largest)")
    assert abs(la - lb) <= 1e-6 * abs(lb) and glob < TOLERANCE
print(f"   checked: the loss to 1e-6 and all gradients together to {TOLERANCE:.0e}, relative. The worst single")
print("   tensors are gradients that are sums of many terms that cancel (after batch norm, in the deep")
print("   attention modules), where float32 keeps few correct digits.")

# %% [markdown]
# ## 3. FLOPs: the matrix products of the convolutions and dense layers against everything else
# Every Conv2D is one product of 2 N H_o W_o k^2 C_in C_out FLOPs, the dense layers 2 N in out; everything
# else is counted generously at 10 FLOPs per output element.

# %%
print("\n3. FLOPs: the matrix products of the convolutions and dense layers against everything else")
mm_flops, other, per_layer = {name: 0.0 for name in NAMES}, 0.0, {}
owner = {layer.name: name for name, parts in GROUPS for p in parts for layer in getattr(p, "layers", [p])}
for lname, kind, shape, _, _ in model.graph()[1:]:
    size = N * int(np.prod(shape[1:]))
    other += 10 * size  # a generous 10 FLOPs per output element for bias, activations, BN, pooling, products
    layer = model.get_layer(lname)
    if kind == "Conv2D":
        kh, kw = layer.kernel_size
        per_layer[lname] = 2 * size * kh * kw * layer.in_channels
        mm_flops[owner[lname]] += per_layer[lname]
    elif kind == "Dense":
        mm_flops[NAMES[-1]] += 2 * N * layer.params["kernel"].size
total_mm = sum(mm_flops.values())
top = sorted(per_layer, key=per_layer.get, reverse=True)[:3]
print(f"   forward matrix products {total_mm / 1e9:.2f} GFLOP, everything else at most {other / 1e9:.3f} GFLOP: "
      f"{total_mm / (total_mm + other):.1%} of the work; backward ~2x the products")
print(f"   the three largest of {len(per_layer)} convolutions: " + ", ".join(
    f"{k} {per_layer[k] / 1e9:.2f} GFLOP ({per_layer[k] / total_mm:.0%})" for k in top))
assert total_mm / (total_mm + other) > 0.9 and sum(per_layer[k] for k in top) > 0.4 * total_mm

# %% [markdown]
# ## 4. Milliseconds per group (forward / backward) and the share of the product FLOPs

# %%
print("\n4. Milliseconds per group (forward / backward) and the share of the product FLOPs")
print(f"   {'group':22s}" + "".join(f"{b + ' fwd':>12s}{b + ' bwd':>12s}" for b in results) + f"{'FLOPs':>8s}")
for g in NAMES:
    cells = "".join(f"{1e3 * results[b][2][g][0]:12.1f}{1e3 * results[b][2][g][1]:12.1f}" for b in results)
    print(f"   {g:22s}{cells}{mm_flops[g] / total_mm:8.0%}")
for b in results:
    total = sum(sum(v) for v in results[b][2].values())
    print(f"   {b}: {1e3 * total:.0f} ms per step = {N / total:.0f} images/s, "
          f"{3 * total_mm / total / 1e9:.1f} GFLOP/s on the products (forward + ~2x backward)")

# %% [markdown]
# The same as a figure: time per group next to the work per group.

# %%
fig, ax = plt.subplots(1, 2, figsize=(13, 4.4))
pos = np.arange(len(NAMES))
width = 0.8 / (2 * len(results))
for i, b in enumerate(results):
    for j, phase in enumerate(("forward", "backward")):
        ax[0].bar(pos + (2 * i + j - len(results) + 0.5) * width, [1e3 * results[b][2][g][j] for g in NAMES],
                  width, label=f"{b} {phase}")
ax[0].set_ylabel("ms"), ax[0].set_title(f"time per group of layers, batch {N}"), ax[0].legend()
ax[1].bar(pos, [mm_flops[g] / 1e9 for g in NAMES], color="gray")
ax[1].set_ylabel("GFLOP (forward matrix products)"), ax[1].set_title("work per group")
for a in ax:
    a.set_xticks(pos, NAMES, rotation=30, ha="right", fontsize=8)
fig.tight_layout()
lesson_support.save(fig, "15_speed.png", dpi=100)
print("   for full-step throughput against PyTorch and Keras, see benchmarks/README.md")
print("\nLesson 15 done: every check passed.")
