# %% [markdown]
# # Lesson 10: softmax with cross-entropy (paper Eq. 7), the p - y gradient, and the L1/L2 penalties
#
# **What it teaches.** Softmax with the row's maximum subtracted; categorical cross-entropy (Eq. 7) averaged over
# the batch and computed as a log-softmax; the fused gradient `(p - y) / N`; why the separate route through
# `dL/dp` breaks for confident networks; the dense layer's L2/L1/activity penalties and ARN-CNN's first loss.
#
# **Prerequisites.** Lessons 03 (backward passes, numeric gradient checks) and 09 (the dense layer whose scores
# and kernel are used here).
#
# **Time.** About 15 minutes; the script runs in about 3 s.
#
# **Exercise.** `softmax`, `cross_entropy` and `softmax_cross_entropy_backward` (`python -m minarn.exercises new
# DIR`, then `python -m minarn.exercises check DIR/10_softmax_ce.py`).
#
# **Try this.**
# 1. In `softmax`, leave out `- z.max(axis=1, keepdims=True)`: section 1 still agrees with minarn (the scores are
#    small), but in section 3 the scores of +-1000 give `[nan 0. 0.]` (exp(1000) = inf) and the check fails.
# 2. Multiply the scores by 10 (`z = rng.standard_normal((N, K)) * 20`): the softmax becomes almost one-hot and
#    the loss jumps from 2.6 to 18.9: the batch's confident mistakes cost a lot, while the gradient's
#    entries stay within [-1/N, 1/N].
#
# Run as a script: `python lessons/10_softmax_ce.py` (figures go to `./lesson_figures`, or to
# `$MINARN_LESSON_OUT`), or open it as a notebook (see `lessons/README.md`).

# %%
from minarn import lesson_support

lesson_support.use_matplotlib()
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

import minarn  # noqa: E402
from minarn import losses  # noqa: E402
from minarn.gradcheck import numeric_grad, rel_error  # noqa: E402
from minarn.layers import glorot_uniform  # noqa: E402

rng = np.random.default_rng(0)
np.set_printoptions(precision=3, suppress=True)
N, K = 5, 6
z = rng.standard_normal((N, K)) * 2
labels = rng.integers(0, K, N)
y = np.eye(K)[labels]

# %% [markdown]
# ## 1. Softmax and cross-entropy
#
# The last layer gives K = 6 scores (logits) z per image; softmax turns them into probabilities
#
#     p_k = exp(z_k - m) / sum_j exp(z_j - m),   m = max_j z_j   (subtracting m changes nothing but overflow).
#
# Categorical cross-entropy, Eq. 7, averaged over the batch:  L = -(1/N) sum_n sum_k y_nk ln p_nk. A model that
# knows nothing (p = 1/6) scores ln 6 = 1.79; a confident mistake costs a lot. `cross_entropy` takes the scores,
# not p: it computes ln p as a log-softmax, `ln p_k = z_k - m - ln sum_j exp(z_j - m)`, which never takes the
# log of a probability that rounded to 0 (section 3).


# %%
def softmax(z):
    """Probabilities (N, K) from scores z (N, K): exp(z - max) normalized over each row."""
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def cross_entropy(z, y):
    """Mean categorical cross-entropy (Eq. 7) of softmax(z) against one-hot labels y, both (N, K): a float."""
    shifted = z - z.max(axis=1, keepdims=True)
    log_p = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))  # log-softmax
    return float(-np.sum(y * log_p) / len(z))


# %%
print("1. Softmax and cross-entropy (Eq. 7) by hand vs minarn (float64, a batch of 5, 6 classes)")
p = softmax(z)
loss_by_hand = -np.sum(y * np.log(p)) / N
loss, dz = losses.softmax_cross_entropy(z, y)
print(f"   p[0] = {p[0]} (sums to {p[0].sum():.1f}), label {labels[0]}")
print(f"   loss by hand {loss_by_hand:.12f}, minarn {loss:.12f}")
assert np.abs(p - minarn.Softmax().forward(z)).max() < 1e-15 and abs(loss - loss_by_hand) < 1e-12
assert abs(cross_entropy(z, y) - loss) < 1e-12
print(f"   cross_entropy (through the log-softmax) {cross_entropy(z, y):.12f}")
uniform, _ = losses.softmax_cross_entropy(np.zeros((N, K)), y)
print(f"   equal scores (p = 1/6 everywhere): loss = {uniform:.4f} = ln 6")
assert abs(uniform - np.log(6)) < 1e-12

# %% [markdown]
# ## 2. The gradient dL/dz = (p - y) / N
#
# Differentiated together, softmax and cross-entropy give the simplest gradient in the network:
#
#     dL/dz = (p - y) / N
#
# (going through the softmax layer separately needs dL/dp = -y / (N p), which blows up when p rounds to 0).


# %%
def softmax_cross_entropy_backward(z, y):
    """dL/dz of L = cross_entropy(z, y): (softmax(z) - y) / N, shape (N, K)."""
    return (softmax(z) - y) / len(z)


# %%
print("\n2. The gradient dL/dz = (p - y) / N")
print(f"   row 0: p - y = {p[0] - y[0]}")
print("   the true class is pushed up by 1 - p, every other class down by its own probability")
numeric = numeric_grad(lambda: np.array(losses.softmax_cross_entropy(z, y)[0]), z, np.array(1.0))
print(f"   minarn vs (p - y) / N: max diff {np.abs(dz - (p - y) / N).max():.1e};  vs numeric: rel error "
      f"{rel_error(dz, numeric):.1e}")
assert np.abs(dz - (p - y) / N).max() < 1e-15 and rel_error(dz, numeric) < 1e-6
assert np.abs(softmax_cross_entropy_backward(z, y) - dz).max() < 1e-15
assert np.allclose(dz.sum(axis=1), 0), "each row of p - y sums to 0"
softmax_layer = minarn.Softmax()
softmax_layer.forward(z)
through_layer = softmax_layer.backward(-y / (N * p))  # dL/dp, then the softmax layer's own backward
print("   the long way (dL/dp = -y/(N p), then Softmax.backward) agrees: "
      f"max diff {np.abs(through_layer - dz).max():.1e}")
assert np.abs(through_layer - dz).max() < 1e-12

# %% [markdown]
# ## 3. Stability: scores of +-1000 (a very confident network)

# %%
print("\n3. Stability: scores of +-1000 (a very confident network)")
big = np.array([[1000.0, 0.0, -1000.0]])
with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
    naive_p = np.exp(big) / np.exp(big).sum()
    naive_loss_wrong = -np.log(np.exp(big[0, 2] - big[0, 0]))  # p of class 2 after shifting: rounds to 0
wrong, _ = losses.softmax_cross_entropy(big, np.array([[0.0, 0.0, 1.0]]))
print(f"   naive softmax: {naive_p[0]} (inf / inf = nan); shifted softmax: {minarn.Softmax().forward(big)[0]}")
print(f"   loss when the true class is the -1000 one: ln of a rounded-to-0 p gives {naive_loss_wrong}; "
      f"log-softmax gives {wrong:.1f}")
assert np.isnan(naive_p).any() and np.isinf(naive_loss_wrong) and abs(wrong - 2000.0) < 1e-9
print(f"   softmax {softmax(big)[0]}, cross_entropy {cross_entropy(big, np.array([[0.0, 0.0, 1.0]])):.1f}, "
      f"softmax_cross_entropy_backward {softmax_cross_entropy_backward(big, np.array([[0.0, 0.0, 1.0]]))[0]}")
assert np.array_equal(softmax(big), minarn.Softmax().forward(big))
assert abs(cross_entropy(big, np.array([[0.0, 0.0, 1.0]])) - 2000.0) < 1e-9
p_big, y_big = minarn.Softmax().forward(big), np.array([[0.0, 0.0, 1.0]])
with np.errstate(divide="ignore", invalid="ignore"):
    dl_dp = -y_big / p_big  # the separate-softmax route divides by a p that rounded to 0
_, dz_big = losses.softmax_cross_entropy(big, y_big)
print(f"   gradient: through dL/dp = -y/p {dl_dp[0]}; fused (p - y)/N {dz_big[0]}")
assert np.isinf(dl_dp).any() and np.all(np.isfinite(dz_big))

# %% [markdown]
# ## 4. The L2 and L1 penalties (Keras regularizers), with their gradients
#
# Penalties on the dense(256) layer, added to the loss:
#
#     L2(W) = 0.016 * sum W^2  ->  gradient 0.032 W;   L1(v) = 0.006 * sum |v|  ->  0.006 sign(v)
#
# (the activity L1 on the layer's output is averaged over the batch).

# %%
print("\n4. The L2 and L1 penalties (Keras regularizers), with their gradients")
w = rng.standard_normal((4, 3))
v = rng.standard_normal((8, 3))
l2, dl2 = losses.l2_penalty(w, 0.016)
l1, dl1 = losses.l1_penalty(w, 0.006)
act, dact = losses.l1_penalty(v, 0.006, batch_size=8)
assert abs(l2 - 0.016 * np.sum(w**2)) < 1e-12 and np.allclose(dl2, 0.032 * w)
assert abs(l1 - 0.006 * np.sum(np.abs(w))) < 1e-12 and np.allclose(dl1, 0.006 * np.sign(w))
assert abs(act - 0.006 * np.sum(np.abs(v)) / 8) < 1e-12
for name, f, arr, grad in (("L2 0.016", lambda: np.array(losses.l2_penalty(w, 0.016)[0]), w, dl2),
                           ("L1 0.006", lambda: np.array(losses.l1_penalty(w, 0.006)[0]), w, dl1),
                           ("activity L1 / batch", lambda: np.array(losses.l1_penalty(v, 0.006, 8)[0]), v, dact)):
    err = rel_error(grad, numeric_grad(f, arr, np.array(1.0)))
    print(f"   {name:20s} gradient vs numeric: rel error {err:.1e}")
    assert err < 1e-6
print("   L2 pulls big weights hardest (gradient ~ w); L1 pulls every weight by the same amount toward 0")

# %% [markdown]
# ## 5. ARN-CNN's first loss
#
# At initialization the L2 term of the 3125 x 256 kernel alone is ~7.6, four times ln 6: why ARN-CNN's first
# losses are far above its log loss.

# %%
print("\n5. Why ARN-CNN's first loss is ~9, not ~1.8: the dense(256) kernel's L2 penalty at initialization")
kernel = glorot_uniform((3125, 256), 3125, 256, np.random.default_rng(1), np.float64)
penalty, _ = losses.l2_penalty(kernel, 0.016)
expected = 0.016 * kernel.size * 2 / (3125 + 256)  # E[w^2] = limit^2 / 3 = 2 / (fan_in + fan_out)
print(f"   0.016 * sum(W^2) = {penalty:.2f} (expected {expected:.2f}), plus cross-entropy ~ln 6 = 1.79: "
      f"~{penalty + 1.79:.1f}")
assert abs(penalty - expected) < 0.02 * expected

# %% [markdown]
# ## 6. Figures: cross-entropy vs p(true class), p - y for one image, the two penalties

# %%
print("\n6. Figures: cross-entropy vs p(true class), p - y for one image, the two penalties")
fig, ax = plt.subplots(1, 3, figsize=(14, 3.8))
pt = np.linspace(0.001, 1, 400)
ax[0].plot(pt, -np.log(pt))
ax[0].axvline(1 / 6, color="gray", ls=":", label="p = 1/6: loss ln 6")
ax[0].set_xlabel("p of the true class"), ax[0].set_ylabel("-ln p"), ax[0].set_title("cross-entropy (Eq. 7), one image")
ax[0].legend()
ax[1].bar(np.arange(K) - 0.2, p[0], width=0.4, label="p")
ax[1].bar(np.arange(K) + 0.2, p[0] - y[0], width=0.4, label="p - y (gradient x N)")
ax[1].axhline(0, color="k", lw=0.8), ax[1].set_xlabel("class"), ax[1].legend()
ax[1].set_title(f"image 0, label {labels[0]}")
ws = np.linspace(-2, 2, 401)
ax[2].plot(ws, 0.016 * ws**2, label="L2: 0.016 w^2"), ax[2].plot(ws, 0.032 * ws, "--", label="its gradient")
ax[2].plot(ws, 0.006 * np.abs(ws), label="L1: 0.006 |w|")
ax[2].plot(ws, 0.006 * np.sign(ws), "--", label="its gradient")
ax[2].set_xlabel("w"), ax[2].legend(fontsize=8), ax[2].set_title("penalties on one weight")
for a in ax:
    a.grid(alpha=0.3)
fig.tight_layout()
lesson_support.save(fig, "10_softmax_ce.png", dpi=100)
print("\nLesson 10 done: every check passed.")
