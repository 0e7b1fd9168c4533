# %% [markdown]
# # Lesson 12: the whole network, assembled from the layers of lessons 2-11
#
# **What it teaches**
# - ARN-CNN (paper Fig. 2) is one chain of the layers built so far: conv 3x3 (32) -> max-pool -> 2 attention
#   modules -> residual block (64) -> conv 3x3 (64) -> attention -> conv 3x3 (256) -> max-pool -> 4 attention
#   modules -> conv 1x1 (125) -> flatten -> dense (256, GELU) -> dropout (0.45) -> dense (6, softmax).
# - `ARNCNN.summary()` prints Figure 2: every layer with Keras' name, output shape and parameter count. Each
#   count follows from the shapes: a k x k convolution has k k C_in C_out + C_out weights, a dense layer
#   n_in n_out + n_out, a batch norm 4 C (gamma, beta trainable; moving mean and variance not).
# - Shapes: a "valid" 3x3 convolution takes 2 rows and columns off (64 -> 62), "same" keeps them, a 2x2
#   max-pool halves and drops an odd last row (31 -> 15, 11 -> 5); 5 x 5 x 125 = 3125 numbers reach the head.
# - The forward pass chained by hand, layer by layer, gives exactly `model.logits` (bit for bit: the same
#   operations in the same order), in inference and in training mode.
# - The loss `loss_and_grads` returns is cross-entropy (Eq. 7) plus the dense layer's three penalties
#   (lesson 10). Its gradient is checked in float64 against central differences at sampled coordinates of
#   every kind of weight; the check also catches a gradient that forgets the activity penalty.
#
# **Prerequisites:** lessons 2-11 (every layer used here), above all lessons 7 (attention), 8 (residual
# block), 9 (the classifier head) and 10 (the loss and its penalties); lesson 3 for numeric gradients.
#
# **Time:** about 20 minutes to read and try; it runs in about 10 s (5 s with `MINARN_LESSON_FAST=1`).
#
# **Try this**
# 1. In part 1, build `minarn.ARNCNN(seed=0, input_shape=(48, 48, 1))`: the comparison with Figure 2 fails
#    at once (input_1 is 48 x 48), and the summary printed above it shows what changed: conv2d 46 x 46,
#    conv2d_22's map 3 x 3, and a dense layer of 1125 x 256 + 256 = 288,256 weights instead of 800,256. Only
#    the head's size depends on the input size.
# 2. In part 5, set `EPS = 1e-4`: the check fails, with errors of 1e-3 to 1e-2 in the first layers (conv2d,
#    and conv2d_5 and its batch norm in the residual block): one weight there moves thousands of ReLU and
#    max-pool inputs at once, and some of them cross a kink within +-EPS. With `EPS = 1e-7` kinks are rarely
#    crossed and the rounding error stays below the tolerance.
#
# Run it as a script, `python lessons/12_whole_network.py` (figures go to `./lesson_figures`, or to
# `$MINARN_LESSON_OUT`), or cell by cell as a notebook (see `lessons/README.md`).

# %%
import os
import re

from minarn import lesson_support

lesson_support.use_matplotlib()  # Agg for a script; a notebook keeps its inline backend
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

import minarn  # noqa: E402
from minarn import data, gradcheck, losses  # noqa: E402
from minarn.layers import BatchNormalization, Conv2D, Dense  # noqa: E402

FAST = os.environ.get("MINARN_LESSON_FAST") == "1"

# %% [markdown]
# ## 1. `summary()` against Figure 2
# The paper's Figure 2, written out: every layer's name, output shape (without the batch) and parameter
# count. The attention modules are the triples conv 1x1 (ReLU), conv 1x1 (sigmoid), multiply.

# %%
print("1. summary() against Figure 2")
FIGURE_2 = """
input_1 64,64,1 0 | conv2d 62,62,32 320 | max_pooling2d 31,31,32 0
conv2d_1 31,31,32 1056 | conv2d_2 31,31,32 1056 | multiply 31,31,32 0
conv2d_3 31,31,32 1056 | conv2d_4 31,31,32 1056 | multiply_1 31,31,32 0
conv2d_5 31,31,64 18496 | batch_normalization 31,31,64 256 | conv2d_6 31,31,64 36928
batch_normalization_1 31,31,64 256 | conv2d_7 31,31,64 4160 | conv2d_8 31,31,64 4160 | multiply_2 31,31,64 0
conv2d_9 31,31,64 2112 | add 31,31,64 0 | activation 31,31,64 0 | max_pooling2d_1 15,15,64 0
conv2d_10 13,13,64 36928 | conv2d_11 13,13,64 4160 | conv2d_12 13,13,64 4160 | multiply_3 13,13,64 0
conv2d_13 11,11,256 147712 | max_pooling2d_2 5,5,256 0
conv2d_14 5,5,256 65792 | conv2d_15 5,5,256 65792 | multiply_4 5,5,256 0
conv2d_16 5,5,256 65792 | conv2d_17 5,5,256 65792 | multiply_5 5,5,256 0
conv2d_18 5,5,256 65792 | conv2d_19 5,5,256 65792 | multiply_6 5,5,256 0
conv2d_20 5,5,256 65792 | conv2d_21 5,5,256 65792 | multiply_7 5,5,256 0
conv2d_22 5,5,125 32125 | flatten 3125 0 | dense 256 800256 | dropout 256 0 | dense_1 6 1542
"""
paper = [entry.split() for entry in re.split(r"[|\n]", FIGURE_2) if entry.strip()]
paper = [(name, tuple(int(s) for s in shape.split(",")), int(params)) for name, shape, params in paper]

model = minarn.ARNCNN(seed=0)
text = model.summary()
rows = re.findall(r"^ (\w+) \((\w+)\)\s+\[?\((None, [\d, ]+)\)\]?\s+([\d,]+)", text, flags=re.MULTILINE)
ours = [(name, tuple(int(s) for s in shape.split(", ")[1:]), int(params.replace(",", "")))
        for name, _, shape, params in rows]
for mine, theirs in zip(ours, paper):
    assert mine == theirs, f"summary {mine} != Figure 2 {theirs}"
assert len(ours) == len(paper) == 43
print(f"   all {len(paper)} rows of the summary equal Figure 2: names, output shapes and parameter counts")

# %% [markdown]
# Each parameter count follows from the layer's shapes, and the totals are the paper's 1,624,131 weights,
# of which 256 (the two batch norms' moving means and variances) are not trained.

# %%
for layer in model.layers:
    if isinstance(layer, Conv2D):
        kh, kw = layer.kernel_size
        expected = kh * kw * layer.in_channels * layer.filters + layer.filters
    elif isinstance(layer, Dense):
        expected = layer.in_features * layer.units + layer.units
    elif isinstance(layer, BatchNormalization):
        expected = 4 * layer.params["gamma"].size
    else:
        expected = 0  # pooling, multiply, add, activation, flatten, dropout hold no weights
    assert layer.count_params() == expected, layer.name
print("   conv2d_13: 3*3*64*256 + 256 = 147,712;  dense: 3125*256 + 256 = 800,256;  batch_normalization: 4*64")
trainable = sum(p.size for p in model.parameters().values())
print(f"   total {model.count_params():,}, trainable {trainable:,}, non-trainable {model.count_params() - trainable:,}")
assert (model.count_params(), trainable) == (1_624_131, 1_623_875)
print(f"   the dense layer alone holds {model.dense.count_params() / model.count_params():.0%} of the weights")

# %% [markdown]
# ## 2. A shape trace through every layer, and 3. the forward pass chained by hand
# `chain` calls every layer's own `forward` in the order of Figure 2, the attention modules and the residual
# block opened up into their layers, and records each output's shape. The skip connection of the residual
# block (conv2d_9) starts from the block's input, and `add` joins it to the attention output.

# %%
print("\n2. A shape trace through every layer, and 3. the forward pass chained by hand")


def chain(m, x, training=False):
    """Logits (N, 6) of ARNCNN ``m`` by calling its layers one by one; and [(layer name, output)]."""
    trace = []

    def run(layer, inp):
        out = layer.forward(inp, training)
        trace.append((layer.name, out))
        return out

    def attend(modules, h):
        for att in modules:  # x * sigmoid(conv1x1(relu(conv1x1(x)))), lesson 7
            w = run(att.conv_b, run(att.conv_a, h))
            h = run(att.multiply, (h, w))
        return h

    h = attend(m.stem_attention, run(m.pool_in, run(m.conv_in, x)))
    b = m.block  # lesson 8: two conv + BN, attention, the 1x1 skip, add, ReLU, pool
    main = attend([b.attention], run(b.bn2, run(b.conv2, run(b.bn1, run(b.conv1, h)))))
    h = run(b.pool, run(b.relu, run(b.add, (main, run(b.skip, h)))))
    h = attend(m.mid_attention, run(m.conv_mid, h))
    h = attend(m.deep_attention, run(m.pool_deep, run(m.conv_deep, h)))
    h = run(m.dropout, run(m.dense, run(m.flatten, run(m.conv_out, h))))  # lesson 9: the head
    logits = m.classifier.forward_linear(h, training)  # dense_1 before its softmax (lesson 10)
    trace.append((m.classifier.name, logits))
    return logits, trace


ds = data.load_mednist()
pick = [np.flatnonzero(ds.labels == k)[0] for k in (0, 3)]  # an AbdomenCT and a ChestCT image
x = data.scale_images(ds.images[pick])
logits, trace = chain(model, x)
shapes = {name: shape for name, shape, _ in paper}
for row in range(0, len(trace), 3):
    print("   " + "".join(f"{name:>22s} {out.shape[1:]!s:14s}" for name, out in trace[row : row + 3]))
for name, out in trace:
    assert out.shape[1:] == shapes[name], (name, out.shape, shapes[name])
print(f"   every one of the {len(trace)} layer outputs has Figure 2's shape (order: the residual block's skip "
      "conv2d_9 after its attention)")

# %% [markdown]
# The chain gives exactly `model.logits`: not just to round-off, but bit for bit, because the model's
# `forward` runs the same layer calls in the same order. In training mode too (batch statistics, and
# dropout with the same seed).

# %%
infer_model = model.logits(x)  # before any training-mode pass: those update the moving statistics
model.dropout.set_generator(np.random.default_rng(5))
train_chain, _ = chain(model, x, training=True)
model.dropout.set_generator(np.random.default_rng(5))
train_model = model.logits(x, training=True)
print(f"   max |chain - model.logits| = {np.abs(logits - infer_model).max()} in inference, "
      f"{np.abs(train_chain - train_model).max()} in training")
assert np.array_equal(logits, infer_model) and np.array_equal(train_chain, train_model), "bit for bit"
probs = model.forward(x)
print(f"   probabilities (softmax of the logits) of the untrained model: {np.round(probs[0], 3)} ...")
assert np.allclose(probs.sum(axis=1), 1, atol=1e-6)

# %% [markdown]
# One image on its way through the network: the mean over channels of a few layers' outputs. The
# feature maps shrink from 64 x 64 to conv2d_22's 5 x 5, the map Grad-CAM explains (lesson 14).

# %%
stages = ["conv2d", "multiply_1", "max_pooling2d_1", "multiply_3", "max_pooling2d_2", "conv2d_22"]
outputs = dict(trace)
fig, axes = plt.subplots(1, len(stages) + 1, figsize=(14, 2.6))
axes[0].imshow(x[0, :, :, 0], cmap="gray")
axes[0].set_title("input 64x64x1", fontsize=9)
for ax, name in zip(axes[1:], stages):
    out = outputs[name][0]
    ax.imshow(out.mean(axis=-1), cmap="viridis")
    ax.set_title(f"{name}\n{out.shape[0]}x{out.shape[1]}x{out.shape[2]}", fontsize=9)
for ax in axes:
    ax.set_xticks([]), ax.set_yticks([])
fig.suptitle("An AbdomenCT image through the untrained ARN-CNN (mean over channels)")
fig.tight_layout()
lesson_support.save(fig, "12_shapes.png", dpi=100)

# %% [markdown]
# ## 4. The loss: cross-entropy plus the dense layer's three penalties
# `loss_and_grads` returns CE (Eq. 7) + 0.016 sum(W^2) + 0.006 sum|b| + 0.006 sum|dense output| / N, as
# Keras adds them (lesson 10). From here on the model is in float64, so that numeric derivatives are
# precise. At initialization the biases are 0, where |b| has a kink; small random biases (and batch-norm
# gammas and betas away from 1 and 0) give every term a gradient to check.

# %%
print("\n4. The loss: cross-entropy plus the dense layer's three penalties")
rng = np.random.default_rng(0)
m64 = minarn.ARNCNN(seed=0, dtype=np.float64)
for layer in m64.layers:
    for key, p in layer.params.items():
        if key in ("bias", "beta"):
            p += rng.normal(0, 0.05, p.shape)
        elif key == "gamma":
            p *= rng.uniform(0.8, 1.2, p.shape)
x64 = x.astype(np.float64)
y64 = data.one_hot(ds.labels[pick], 6).astype(np.float64)


def loss_only():
    """The loss of loss_and_grads, forward only, with the same dropout mask every time (seed 1)."""
    m64.dropout.set_generator(np.random.default_rng(1))
    ce, _ = losses.softmax_cross_entropy(m64.logits(x64, training=True), y64)
    return ce + sum(value for value, _ in m64.penalties(len(x64)).values())


m64.dropout.set_generator(np.random.default_rng(1))
loss, grads = m64.loss_and_grads(x64, y64)
grads = {k: g.copy() for k, g in grads.items()}
print("   " + ", ".join(f"{k} {v:.4f}" for k, v in m64.last_terms.items()) + f"  ->  loss {loss:.4f}")
assert loss == sum(m64.last_terms.values()) == loss_only()
assert len(grads) == len(m64.parameters()) == 54  # 23 convolutions, 2 dense layers: kernel and bias; 2 BN

# %% [markdown]
# ## 5. A float64 gradient check of the whole `loss_and_grads`, penalties included
# For a weight w: (L(w + EPS) - L(w - EPS)) / (2 EPS) against the analytic gradient, at sampled coordinates
# of each weight tensor: the coordinate with the largest gradient (where an error would show most) and,
# in the full run, a random one; the error of a tensor is `gradcheck.rel_error` over its coordinates.
# EPS = 1e-7 balances rounding (a loss of ~10 carries ~1e-15, divided by 2 EPS: ~1e-8) against kinks (ReLU,
# max-pool, |.|: a larger EPS steps across some of them, see "Try this"). Against the smallest gradients
# (~2e-5, the deep attention kernels) that rounding is ~1e-4 relative, hence the tolerance of 3e-4; a
# gradient that misses a term is off by 2e-3 or more (below).

# %%
print("\n5. A float64 gradient check of the whole loss_and_grads, penalties included")
EPS = 1e-7
TOLERANCE = 3e-4
params = m64.parameters()
if FAST:  # one tensor of every kind, from the first layer to the last
    names = ["conv2d/kernel", "conv2d_2/bias", "conv2d_4/kernel", "conv2d_5/kernel", "batch_normalization/gamma",
             "batch_normalization_1/beta", "conv2d_8/kernel", "conv2d_9/kernel", "conv2d_10/bias",
             "conv2d_13/kernel", "conv2d_21/kernel", "conv2d_22/kernel", "dense/kernel", "dense/bias",
             "dense_1/kernel"]
else:
    names = list(params)
numeric, coords = {}, {}
for name in names:
    p, g = params[name], grads[name]
    coords[name] = [np.unravel_index(np.argmax(np.abs(g)), g.shape)]
    if not FAST:
        coords[name] += gradcheck.sample_indices(g.shape, 1, rng)
    numeric[name] = gradcheck.numeric_grad(loss_only, p, np.float64(1.0), EPS, coords[name])
errors = {}
for name in names:
    analytic = np.array([grads[name][i] for i in coords[name]])
    errors[name] = gradcheck.rel_error(analytic, np.array([numeric[name][i] for i in coords[name]]))
    print(f"   {name:27s} analytic {analytic[0]:+.4e}  relative error {errors[name]:.1e}")
print(f"   {len(names)} tensors, {sum(len(c) for c in coords.values())} coordinates; worst relative error "
      f"{max(errors.values()):.1e} (tolerance {TOLERANCE:.0e})")
assert max(errors.values()) < TOLERANCE

# %% [markdown]
# The check bites. Two gradients a careless `loss_and_grads` might return: one that forgets the activity
# penalty's gradient (it enters at the dense layer's output and flows back through every layer), and one
# that forgets the kernel L2 term (only dense/kernel). Both are compared with the same numeric derivatives.

# %%
m64.dropout.set_generator(np.random.default_rng(1))
ce, dlogits = losses.softmax_cross_entropy(m64.logits(x64, training=True), y64)
m64.backward_features(m64.backward_head(dlogits), input_grad=False)  # no ddense_extra: activity term lost
no_activity = {f"{layer.name}/{k}": g.copy() for layer in m64.layers for k, g in layer.grads.items()}
no_activity["dense/kernel"] += m64.penalties(len(x64))["kernel_l2"][1]
no_activity["dense/bias"] += m64.penalties(len(x64))["bias_l1"][1]
no_l2 = dict(grads, **{"dense/kernel": grads["dense/kernel"] - m64.penalties(len(x64))["kernel_l2"][1]})
failing = {}
for label, wrong in (("activity penalty forgotten", no_activity), ("kernel L2 forgotten", no_l2)):
    bad = {n: gradcheck.rel_error(np.array([wrong[n][i] for i in coords[n]]),
                                  np.array([numeric[n][i] for i in coords[n]])) for n in names}
    failing[label] = [n for n in names if bad[n] > TOLERANCE]
    print(f"   {label}: {len(failing[label])} of {len(names)} tensors fail the check, worst "
          f"{max(bad.values()):.1e} ({max(bad, key=bad.get)})")
assert set(failing["activity penalty forgotten"]) == set(names) - {"dense_1/kernel", "dense_1/bias"}  # after it
assert failing["kernel L2 forgotten"] == ["dense/kernel"]
print("\nLesson 12 done: every check passed.")
