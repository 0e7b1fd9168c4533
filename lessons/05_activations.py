# %% [markdown]
# # Lesson 5: activations: ReLU, sigmoid, and GELU through erf (paper Eq. 1-2, Fig. 4)
#
# **What it teaches.** The three activations of ARN-CNN and their derivatives: ReLU and its kink at 0;
# sigmoid, its symmetry, its largest slope 1/4, and how to compute it without overflow; GELU in the exact erf
# form of the paper (Eq. 1-2), how it differs from the popular tanh approximation, and its derivative.
#
# **Prerequisites.** Lesson 3 (backward passes and numeric gradients).
#
# **Time.** About 15 minutes to read; 5 s to run.
#
# **Exercises.** `python -m minarn.exercises new DIR` writes `05_activations.py` with the stubs of
# `relu_forward`, `relu_backward`, `sigmoid_forward`, `sigmoid_backward`, `gelu_forward` and
# `gelu_backward`; `python -m minarn.exercises check DIR/05_activations.py` grades them.
#
# **Try this.**
# 1. In `sigmoid_forward`, return the textbook `1 / (1 + np.exp(-x))` instead. Every check still passes (at
#    x = -1000, 1 / (1 + inf) happens to give the right 0) but NumPy warns `overflow encountered in exp`.
#    Now try `np.exp(x) / (1 + np.exp(x))`, the same function on paper: section 3 stops, because at x = 1000
#    it gives inf / inf = nan.
# 2. In `gelu_backward`, drop the `x * pdf` term (return `dout * cdf`). Section 4 stops: the relative error
#    against the numeric gradient is about 0.1 instead of 1e-9. The missing term is the one that makes GELU'
#    negative for x < -0.75, where GELU falls to its minimum (section 2); Phi(x) alone is always positive.

# %% [markdown]
# ## The three activations
# - ReLU(x) = max(x, 0); derivative 1 for x > 0, 0 for x < 0 (minarn, like Keras, uses 0 at the kink).
#   Used after most convolutions of ARN-CNN.
# - sigmoid(x) = 1 / (1 + exp(-x)) in (0, 1); derivative s (1 - s) <= 1/4; s(-x) = 1 - s(x).
#   It makes the attention weights (lesson 7). Computed naively, exp(-x) overflows for x << 0; with
#   z = exp(-|x|), which never overflows, s = 1 / (1 + z) for x >= 0 and z / (1 + z) for x < 0.
# - GELU, the dense layer's activation (paper Eq. 1-2):
#
#       GELU(x) = x * Phi(x),   Phi(x) = P(Z <= x) = 0.5 * (1 + erf(x / sqrt(2))),   Z ~ N(0, 1);
#       GELU'(x) = Phi(x) + x * phi(x),   phi(x) = exp(-x^2 / 2) / sqrt(2 pi).
#
#   The popular tanh approximation 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))) is close but not equal;
#   minarn implements the exact erf form, as the paper states.
#
# Run as a script: `python lessons/05_activations.py` (figures go to `./lesson_figures`, or to
# `$MINARN_LESSON_OUT`); or open it as a notebook (see `lessons/README.md`).

# %%
import math

from minarn import lesson_support

lesson_support.use_matplotlib()  # off-screen for a script, inline in a notebook
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from scipy import special, stats  # noqa: E402

import minarn  # noqa: E402
from minarn.gradcheck import numeric_grad, rel_error  # noqa: E402

rng = np.random.default_rng(0)
x = np.linspace(-6, 6, 2401)  # float64 grid for the comparisons and the plot

# %% [markdown]
# ## The functions of this lesson (the exercises)
# Each activation as a forward function of x and a backward function of (dout, x) that returns
# dx = dout * f'(x). None of them changes its inputs.


# %%
def relu_forward(x):
    """ReLU(x) = max(x, 0), element-wise; any shape."""
    return np.maximum(x, 0.0)


def relu_backward(dout, x):
    """dx = dout * [x > 0]: the derivative is 0 at the kink x = 0 (as minarn and Keras)."""
    return dout * (x > 0)


# %%
def sigmoid_forward(x):
    """sigmoid(x) = 1 / (1 + exp(-x)), without overflow: with z = exp(-|x|) in (0, 1],
    1 / (1 + z) for x >= 0 and z / (1 + z) for x < 0."""
    z = np.exp(-np.abs(x))
    return np.where(x >= 0, 1.0 / (1.0 + z), z / (1.0 + z))


def sigmoid_backward(dout, x):
    """dx = dout * s * (1 - s) with s = sigmoid(x)."""
    s = sigmoid_forward(x)
    return dout * s * (1.0 - s)


# %%
def gelu_forward(x):
    """GELU(x) = x * Phi(x), Phi(x) = 0.5 * (1 + erf(x / sqrt(2))) (paper Eq. 1-2, the exact form)."""
    return x * 0.5 * (1.0 + special.erf(x / math.sqrt(2.0)))


def gelu_backward(dout, x):
    """dx = dout * (Phi(x) + x * phi(x)), phi(x) = exp(-x^2 / 2) / sqrt(2 pi)."""
    cdf = 0.5 * (1.0 + special.erf(x / math.sqrt(2.0)))
    pdf = np.exp(-0.5 * x * x) / math.sqrt(2.0 * math.pi)
    return dout * (cdf + x * pdf)


# %% [markdown]
# And the approximation that minarn deliberately does NOT use:


# %%
def gelu_tanh(v):  # the approximation that minarn deliberately does NOT use
    return 0.5 * v * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (v + 0.044715 * v**3)))


# %% [markdown]
# ## 1. Forward: by hand vs minarn's layers
# On 2,401 points in [-6, 6], float64.

# %%
print("1. Forward: by hand vs minarn's layers on 2,401 points in [-6, 6] (float64)")
for name, by_hand, layer in (("ReLU", relu_forward, minarn.ReLU()), ("sigmoid", sigmoid_forward, minarn.Sigmoid()),
                             ("GELU", gelu_forward, minarn.GELU())):
    diff = np.abs(by_hand(x) - layer.forward(x)).max()
    print(f"   {name:8s} max |by hand - minarn| = {diff:.1e}")
    assert diff < 1e-12

# %% [markdown]
# ## 2. GELU(x) = x * Phi(x)
# Phi is the standard normal CDF (`scipy.stats.norm.cdf`). How far is the tanh approximation, and where does
# GELU, unlike ReLU, go below 0?

# %%
print("\n2. GELU(x) = x * Phi(x): Phi is the standard normal CDF (scipy.stats.norm.cdf)")
diff = np.abs(minarn.GELU().forward(x) - x * stats.norm.cdf(x)).max()
print(f"   max |GELU - x * norm.cdf(x)| = {diff:.1e}")
assert diff < 1e-12
gap = np.abs(gelu_forward(x) - gelu_tanh(x))
worst = x[np.argmax(gap)]
print(f"   the tanh approximation differs by at most {gap.max():.2e} (at x = {worst:+.2f}); tiny, but not zero,")
print("   so weights trained with one form give slightly different outputs with the other")
assert 1e-4 < gap.max() < 5e-4 and 1.0 < abs(worst) < 3.0
print(f"   GELU is not monotone: its minimum is {gelu_forward(x).min():.4f} at x = "
      f"{x[np.argmin(gelu_forward(x))]:.2f}; ReLU's is 0")
assert -0.18 < gelu_forward(x).min() < -0.16

# %% [markdown]
# ## 3. Sigmoid: symmetric, bounded, and stable where the naive formula overflows
# At x = -1000, exp(-x) = exp(1000) overflows to inf; 1 / (1 + inf) happens to give the right 0, after an
# overflow. The other textbook form exp(x) / (1 + exp(x)) gives inf / inf = nan at x = 1000.

# %%
print("\n3. Sigmoid: symmetric, bounded, and stable where the naive formula overflows")
layer = minarn.Sigmoid()
s = layer.forward(x)
assert np.allclose(layer.forward(-x), 1 - s, atol=1e-15) and np.all((s > 0) & (s < 1))
far = np.array([-1000.0, -40.0, 40.0, 1000.0])
with np.errstate(over="ignore", invalid="ignore"):
    exp_minus = np.exp(-far)  # exp(1000) = inf: 1 / (1 + inf) happens to give 0, after an overflow
    other_form = np.exp(far) / (1 + np.exp(far))  # the same function on paper; inf / inf = nan in floats
np.set_printoptions(precision=3)
print(f"   x = {far}:  exp(-x) = {exp_minus}")
print(f"   exp(x) / (1 + exp(x)) = {other_form}   (nan: overflow in the numerator)")
print(f"   minarn.Sigmoid (scipy.special.expit, never overflows) = {layer.forward(far)}")
assert np.isinf(exp_minus[0]) and np.isnan(other_form[-1]) and np.all(np.isfinite(layer.forward(far)))
print(f"   sigmoid_forward (exp(-|x|), never overflows)          = {sigmoid_forward(far)}")
assert np.all(np.isfinite(sigmoid_forward(far))) and np.allclose(sigmoid_forward(far), layer.forward(far),
                                                                  rtol=1e-12, atol=0)
print(f"   the largest slope of sigmoid is {np.max(s * (1 - s)):.4f} (at 0): stacking many sigmoids shrinks gradients")
assert abs(np.max(s * (1 - s)) - 0.25) < 1e-6

# %% [markdown]
# ## 4. Backward: the analytic derivatives against numeric gradients
# Float64, a random upstream gradient, inputs kept away from ReLU's kink at 0 (a numeric gradient there
# would see the mean of the two slopes). minarn's layers and this lesson's backward functions both.

# %%
print("\n4. Backward: the analytic derivatives against numeric gradients (float64, random upstream gradient)")
xs = rng.uniform(-4, 4, size=(8, 16))
xs = np.where(np.abs(xs) < 1e-3, 0.5, xs)  # keep away from ReLU's kink at 0
for layer, backward in ((minarn.ReLU(), relu_backward), (minarn.Sigmoid(), sigmoid_backward),
                        (minarn.GELU(), gelu_backward)):
    dout = rng.standard_normal(xs.shape)
    layer.forward(xs)
    analytic = layer.backward(dout)
    numeric = numeric_grad(lambda: layer.forward(xs), xs, dout)
    err = rel_error(analytic, numeric)
    ours = rel_error(backward(dout, xs), numeric)
    print(f"   {type(layer).__name__:8s} rel error {err:.1e}; {backward.__name__} {ours:.1e}")
    assert err < 1e-8 and ours < 1e-8
phi = np.exp(-xs**2 / 2) / math.sqrt(2 * math.pi)
g = minarn.GELU()
g.forward(xs)
assert np.allclose(g.backward(np.ones_like(xs)), stats.norm.cdf(xs) + xs * phi, rtol=0, atol=1e-12)
print("   and GELU' = Phi(x) + x * phi(x) exactly (checked to 1e-12)")
at_kink = relu_backward(np.ones(3), np.array([-1.0, 0.0, 1.0]))
relu = minarn.ReLU()
relu.forward(np.array([-1.0, 0.0, 1.0]))
print(f"   ReLU at x = -1, 0, 1: derivative {at_kink.tolist()} (0 at the kink, as minarn and Keras)")
assert at_kink.tolist() == [0.0, 0.0, 1.0] and np.array_equal(relu.backward(np.ones(3)), at_kink)

# %% [markdown]
# ## 5. Paper Fig. 4: the activations and their derivatives
# What each layer's backward computes for dout = 1, next to the tanh approximation.

# %%
print("\n5. Paper Fig. 4: the activations and their derivatives")
fig, ax = plt.subplots(1, 3, figsize=(14, 4))
for name, layer in (("ReLU", minarn.ReLU()), ("sigmoid", minarn.Sigmoid()), ("GELU (erf, Eq. 1-2)", minarn.GELU())):
    ax[0].plot(x, layer.forward(x), label=name)
    ax[1].plot(x, layer.backward(np.ones_like(x)), label=name)  # what backward computes, dout = 1
ax[0].plot(x, gelu_tanh(x), "--", label="GELU, tanh approx.")
ax[1].plot(x, np.gradient(gelu_tanh(x), x), "--", label="GELU, tanh approx.")
ax[0].set_ylim(-1, 4), ax[0].set_xlim(-4, 4), ax[1].set_xlim(-4, 4)
ax[0].set_title("activation f(x)")
ax[1].set_title("derivative f'(x)")
ax[2].plot(x, gelu_forward(x) - gelu_tanh(x))
ax[2].set_title("GELU exact - tanh approximation")
for a in ax:
    a.grid(alpha=0.3), a.set_xlabel("x")
ax[0].legend(), ax[1].legend(fontsize=8)
fig.tight_layout()
lesson_support.save(fig, "05_activations.png", dpi=100)
print("\nLesson 5 done: every check passed.")
