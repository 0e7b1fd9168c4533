"""Lesson 5: activations: ReLU, sigmoid, and GELU through erf (paper Eq. 1-2, Fig. 4).

What it teaches
- ReLU(x) = max(x, 0);  derivative 1 for x > 0, 0 for x < 0 (minarn, like Keras, uses 0 at the kink).
  Used after most convolutions of ARN-CNN.
- sigmoid(x) = 1 / (1 + exp(-x)) in (0, 1);  derivative s (1 - s) <= 1/4;  s(-x) = 1 - s(x).
  It makes the attention weights (lesson 7). Computed naively, exp(-x) overflows for x << 0.
- GELU, the dense layer's activation (paper Eq. 1-2):
      GELU(x) = x * Phi(x),   Phi(x) = P(Z <= x) = 0.5 * (1 + erf(x / sqrt(2))),   Z ~ N(0, 1);
      GELU'(x) = Phi(x) + x * phi(x),   phi(x) = exp(-x^2 / 2) / sqrt(2 pi).
  The popular tanh approximation 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))) is close but not equal;
  minarn implements the exact erf form, as the paper states.

Run:  python lessons/05_activations.py     (figures go to ./lesson_figures, or to $MINARN_LESSON_OUT)
"""

import math
import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from scipy import special, stats  # noqa: E402

import minarn  # noqa: E402
from minarn.gradcheck import numeric_grad, rel_error  # noqa: E402

OUT = Path(os.environ.get("MINARN_LESSON_OUT", "lesson_figures"))
OUT.mkdir(parents=True, exist_ok=True)
rng = np.random.default_rng(0)
x = np.linspace(-6, 6, 2401)  # float64 grid for the comparisons and the plot


def relu(v):
    return np.maximum(v, 0.0)


def sigmoid(v):
    return 1.0 / (1.0 + np.exp(-v))


def gelu(v):  # Eq. 1-2, with the standard normal CDF written through erf
    return v * 0.5 * (1.0 + special.erf(v / math.sqrt(2.0)))


def gelu_tanh(v):  # the approximation that minarn deliberately does NOT use
    return 0.5 * v * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (v + 0.044715 * v**3)))


print("1. Forward: by hand vs minarn's layers on 2,401 points in [-6, 6] (float64)")
for name, by_hand, layer in (("ReLU", relu, minarn.ReLU()), ("sigmoid", sigmoid, minarn.Sigmoid()),
                             ("GELU", gelu, minarn.GELU())):
    diff = np.abs(by_hand(x) - layer.forward(x)).max()
    print(f"   {name:8s} max |by hand - minarn| = {diff:.1e}")
    assert diff < 1e-12

print("\n2. GELU(x) = x * Phi(x): Phi is the standard normal CDF (scipy.stats.norm.cdf)")
diff = np.abs(minarn.GELU().forward(x) - x * stats.norm.cdf(x)).max()
print(f"   max |GELU - x * norm.cdf(x)| = {diff:.1e}")
assert diff < 1e-12
gap = np.abs(gelu(x) - gelu_tanh(x))
worst = x[np.argmax(gap)]
print(f"   the tanh approximation differs by at most {gap.max():.2e} (at x = {worst:+.2f}); tiny, but not zero,")
print("   so weights trained with one form give slightly different outputs with the other")
assert 1e-4 < gap.max() < 5e-4 and 1.0 < abs(worst) < 3.0
print(f"   GELU is not monotone: its minimum is {gelu(x).min():.4f} at x = {x[np.argmin(gelu(x))]:.2f}; "
      "ReLU's is 0")
assert -0.18 < gelu(x).min() < -0.16

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
print(f"   the largest slope of sigmoid is {np.max(s * (1 - s)):.4f} (at 0): stacking many sigmoids shrinks gradients")
assert abs(np.max(s * (1 - s)) - 0.25) < 1e-6

print("\n4. Backward: the analytic derivatives against numeric gradients (float64, random upstream gradient)")
xs = rng.uniform(-4, 4, size=(8, 16))
xs[np.abs(xs) < 1e-3] = 0.5  # keep away from ReLU's kink at 0
for layer in (minarn.ReLU(), minarn.Sigmoid(), minarn.GELU()):
    dout = rng.standard_normal(xs.shape)
    layer.forward(xs)
    analytic = layer.backward(dout)
    err = rel_error(analytic, numeric_grad(lambda: layer.forward(xs), xs, dout))
    print(f"   {type(layer).__name__:8s} rel error {err:.1e}")
    assert err < 1e-8
phi = np.exp(-xs**2 / 2) / math.sqrt(2 * math.pi)
g = minarn.GELU()
g.forward(xs)
assert np.allclose(g.backward(np.ones_like(xs)), stats.norm.cdf(xs) + xs * phi, rtol=0, atol=1e-12)
print("   and GELU' = Phi(x) + x * phi(x) exactly (checked to 1e-12)")

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
ax[2].plot(x, gelu(x) - gelu_tanh(x))
ax[2].set_title("GELU exact - tanh approximation")
for a in ax:
    a.grid(alpha=0.3), a.set_xlabel("x")
ax[0].legend(), ax[1].legend(fontsize=8)
fig.tight_layout()
path = OUT / "05_activations.png"
fig.savefig(path, dpi=100)
plt.close(fig)
print(f"   figure saved: {path}")
print("\nLesson 5 done: every check passed.")
