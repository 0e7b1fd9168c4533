# %% [markdown]
# # Lesson 11: Adamax (paper Eq. 3-6) against SGD and Adam on the same small problem
#
# **What it teaches.** SGD's single learning rate; Adamax, the paper's optimizer: bias correction, the decaying
# maximum of |g| (an infinity norm) in the denominator, steps of about lr whatever the gradient's scale; Adam,
# the same with a root mean square; the three compared on a softmax regression and on a narrow valley.
#
# **Prerequisites.** Lessons 09 (the dense layer, trained here as a softmax regression) and 10 (the loss and its
# gradient `(p - y) / N`).
#
# **Time.** About 15 minutes; the script runs in 3-5 s.
#
# **Exercise.** `adamax_step` and `adam_step` (`python -m minarn.exercises new DIR`, then
# `python -m minarn.exercises check DIR/11_optimizers.py`).
#
# **Try this.**
# 1. In `adamax_step`, leave out the bias correction (use `m` where it says `m_hat`): the first step becomes
#    0.1 * lr * sign(g) instead of lr * sign(g), and the comparison with `optim.Adamax` fails at t = 1.
# 2. In section 4, raise SGD's learning rate from 0.035 to 0.045 (above 2 / 50): along the steep direction b each
#    step multiplies b by 1 - 0.045 * 50 = -1.25, SGD diverges (f grows to ~1e9 in 40 steps) and its check fails.
#
# Run as a script: `python lessons/11_optimizers.py` (figures go to `./lesson_figures`, or to `$MINARN_LESSON_OUT`),
# or open it as a notebook (see `lessons/README.md`).

# %%
import os

from minarn import lesson_support

lesson_support.use_matplotlib()
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

import minarn  # noqa: E402
from minarn import data, losses, optim  # noqa: E402

FAST = os.environ.get("MINARN_LESSON_FAST") == "1"
rng = np.random.default_rng(0)

# %% [markdown]
# ## 1. Adamax by hand (Eq. 3-6)
#
# SGD steps against the gradient: theta -= lr * g. One learning rate for every weight, so the step is large where
# gradients are large and tiny where they are small. Adamax (Kingma & Ba 2015, Sec. 7.1), the paper's optimizer,
# with t = 1, 2, ... and m_0 = u_0 = 0:
#
#     m_t = b1 m_{t-1} + (1 - b1) g_t              (Eq. 3)  running mean of the gradient
#     m_hat = m_t / (1 - b1^t)                     (Eq. 4)  undo the bias toward the zero start
#     u_t = max(b2 u_{t-1}, |g_t|, eps)            (Eq. 5)  decaying maximum of |g| (infinity norm)
#     theta_{t+1} = theta_t - lr m_hat / u_t       (Eq. 6)
#
# defaults lr 0.001, b1 0.9, b2 0.999, eps 1e-7. Every weight gets a step of about lr whatever the scale of its
# gradient: the first step is exactly lr * sign(g), and multiplying all gradients by 1000 changes nothing.


# %%
def adamax_step(param, grad, m, u, t, lr=0.001, beta1=0.9, beta2=0.999, eps=1e-7):
    """One Adamax step (paper Eq. 3-6) at step t = 1, 2, ...: returns the new (param, m, u).

    param, grad, m, u: arrays of one shape (m and u start at zeros); lr, beta1, beta2, eps: floats.
    """
    m = beta1 * m + (1 - beta1) * grad  # Eq. 3
    m_hat = m / (1 - beta1**t)  # Eq. 4
    u = np.maximum(np.maximum(beta2 * u, np.abs(grad)), eps)  # Eq. 5
    return param - lr * m_hat / u, m, u  # Eq. 6


# %%
print("1. Adamax by hand (Eq. 3-6) vs minarn.optim.Adamax, 6 steps on random gradients (float64)")
lr, b1, b2, eps = 0.001, 0.9, 0.999, 1e-7
theta0 = rng.standard_normal(5)
grads = rng.standard_normal((6, 5)) * np.array([1e-3, 1, 10, 100, 1])  # gradients on very different scales
theta, m, u = theta0.copy(), np.zeros(5), np.zeros(5)
params = {"w": theta0.copy()}
opt = optim.Adamax()  # paper form: eps inside the max
for t, g in enumerate(grads, start=1):
    theta, m, u = adamax_step(theta, g, m, u, t, lr, b1, b2, eps)  # Eq. 3-6
    opt.apply(params, {"w": g})
    diff = np.abs(theta - params["w"]).max()
    print(f"   t = {t}: step by hand {np.array2string(theta - theta0, precision=5)}  max |hand - minarn| {diff:.1e}")
    assert diff < 1e-15
    if t == 1:
        assert np.allclose(theta - theta0, -lr * np.sign(g), rtol=1e-12), "first step: lr * sign(g)"
print("   the first step was -lr * sign(g) for every weight, gradients from 1e-3 to 100 alike")

# %% [markdown]
# Adam is the same with u replaced by the square root of a running mean of g^2, v_t = b2 v_{t-1} + (1 - b2) g_t^2,
# and its own bias correction 1 - b2^t. minarn (like Keras) folds both corrections into the learning rate,
# alpha_t = lr sqrt(1 - b2^t) / (1 - b1^t), and adds eps to sqrt(v_t) (Kingma & Ba's "epsilon hat").


# %%
def adam_step(param, grad, m, v, t, lr=0.001, beta1=0.9, beta2=0.999, eps=1e-7):
    """One Adam step at step t = 1, 2, ... (Kingma & Ba 2015, Sec. 2, the form minarn and Keras use).

    Returns the new (param, m, v); m, v start at zeros.
    """
    m = beta1 * m + (1 - beta1) * grad
    v = beta2 * v + (1 - beta2) * grad**2
    alpha = lr * np.sqrt(1 - beta2**t) / (1 - beta1**t)  # both bias corrections in the step size
    return param - alpha * m / (np.sqrt(v) + eps), m, v


# %%
theta, m, v = theta0.copy(), np.zeros(5), np.zeros(5)
params, opt = {"w": theta0.copy()}, optim.Adam()
for t, g in enumerate(grads, start=1):
    theta, m, v = adam_step(theta, g, m, v, t)
    opt.apply(params, {"w": g})
print(f"   Adam by hand vs minarn.optim.Adam after 6 steps: max diff {np.abs(theta - params['w']).max():.1e}; "
      f"first Adam step {np.array2string(adam_step(theta0, grads[0], 0, 0, 1)[0] - theta0, precision=5)}")
assert np.abs(theta - params["w"]).max() < 1e-15

# %% [markdown]
# ## 2. Scale invariance: gradients x 1000 give the same steps (with eps = 0)

# %%
print("\n2. Scale invariance: gradients x 1000 give the same steps (with eps = 0)")
a, b = {"w": theta0.copy()}, {"w": theta0.copy()}
opt_a, opt_b = optim.Adamax(epsilon=0.0), optim.Adamax(epsilon=0.0)
for g in grads[:3]:
    opt_a.apply(a, {"w": g}), opt_b.apply(b, {"w": 1000 * g})
print(f"   max difference after 3 steps: {np.abs(a['w'] - b['w']).max():.1e}")
assert np.allclose(a["w"], b["w"], rtol=1e-12, atol=1e-15)
keras_form = {"w": theta0.copy()}
opt_k = optim.Adamax(form="keras")
for g in grads[:3]:
    opt_k.apply(keras_form, {"w": g})
rel = np.abs((keras_form["w"] - theta0) / (a["w"] - theta0) - 1)
print(f"   Keras' form (u + eps in the denominator instead of eps inside the max) differs by {rel.max():.1e}")
print("   relative, for the weight with the smallest gradients (~1e-3): the difference is about eps / u")
assert rel.max() < 1e-3 and np.argmax(rel) == 0

# %% [markdown]
# ## 3. The same small problem for SGD, Adam and Adamax: softmax regression on the MedNIST sample

# %%
print("\n3. The same small problem for SGD, Adam and Adamax: softmax regression on the MedNIST sample")
splits = data.split_dataset(data.load_mednist())


def features(ds):
    """64x64 images averaged over 4x4 blocks to 16x16 = 256 numbers per image."""
    x = data.scale_images(ds.images).astype(np.float64)
    return x.reshape(len(x), 16, 4, 16, 4).mean(axis=(2, 4)).reshape(len(x), -1)


X, Y = features(splits.train), np.eye(6)[splits.train.labels]
steps = 60 if FAST else 150
curves = {}
for name, opt in (("SGD lr 0.1", optim.SGD(0.1)), ("Adam lr 0.01", optim.Adam(0.01)),
                  ("Adamax lr 0.01", optim.Adamax(0.01))):
    dense = minarn.Dense(256, 6, seed=0, dtype=np.float64)  # the same starting weights for all three
    curve = [losses.softmax_cross_entropy(dense.forward_linear(X), Y)[0]]
    for step in range(steps):
        i = (40 * step) % (len(X) - 40)  # mini-batches of 40
        _, dz = losses.softmax_cross_entropy(dense.forward_linear(X[i : i + 40]), Y[i : i + 40])
        dense.backward_linear(dz)
        opt.apply(dense.params, dense.grads)
        curve.append(losses.softmax_cross_entropy(dense.forward_linear(X), Y)[0])
    acc = np.mean(dense.forward_linear(features(splits.valid)).argmax(axis=1) == splits.valid.labels)
    curves[name] = curve
    print(f"   {name:15s}: training loss {curve[0]:.3f} -> {curve[-1]:.3f} in {steps} steps; "
          f"validation accuracy {acc:.0%}")
    assert curve[-1] < 0.5 * curve[0], f"{name} should reduce the loss"

# %% [markdown]
# ## 4. A 2-D picture: f(a, b) = (a^2 + 50 b^2) / 2, a long narrow valley

# %%
print("\n4. A 2-D picture: f(a, b) = (a^2 + 50 b^2) / 2, a long narrow valley")
paths = {}
for name, opt in (("SGD lr 0.035", optim.SGD(0.035)), ("Adam lr 0.3", optim.Adam(0.3)),
                  ("Adamax lr 0.3", optim.Adamax(0.3))):
    p = {"theta": np.array([-4.0, 1.0])}
    path = [p["theta"].copy()]
    for _ in range(40):
        ta, tb = p["theta"]
        opt.apply(p, {"theta": np.array([ta, 50 * tb])})  # the gradient of f
        path.append(p["theta"].copy())
    paths[name] = np.array(path)
    f_end = 0.5 * (path[-1][0] ** 2 + 50 * path[-1][1] ** 2)
    print(f"   {name:14s}: f from {0.5 * (16 + 50):.1f} to {f_end:.3f} in 40 steps")
    assert f_end < 0.1 * 33.0
moved = {name: path[10, 0] - path[0, 0] for name, path in paths.items()}
print("   SGD's learning rate is capped by the steep direction (lr < 2/50); Adam and Adamax scale each")
print("   coordinate by its own gradient size, so the flat direction moves fast too: along a, the first 10")
print("   steps cover " + ", ".join(f"{name.split()[0]} {d:.2f}" for name, d in moved.items()))
assert moved["Adamax lr 0.3"] > 2 * moved["SGD lr 0.035"] and moved["Adam lr 0.3"] > 2 * moved["SGD lr 0.035"]

# %%
fig, ax = plt.subplots(1, 2, figsize=(12, 4.2))
for name, curve in curves.items():
    ax[0].plot(curve, label=name)
ax[0].set_xlabel("step"), ax[0].set_ylabel("training loss (Eq. 7)")
ax[0].set_title("softmax regression, MedNIST sample")
A, B = np.meshgrid(np.linspace(-4.5, 1, 200), np.linspace(-1.3, 1.3, 200))
ax[1].contour(A, B, 0.5 * (A**2 + 50 * B**2), levels=np.geomspace(0.05, 60, 12), colors="gray", linewidths=0.6)
for name, path in paths.items():
    ax[1].plot(path[:, 0], path[:, 1], ".-", label=name)
ax[1].set_xlabel("a"), ax[1].set_ylabel("b"), ax[1].set_title("40 steps on (a^2 + 50 b^2) / 2")
for panel in ax:
    panel.legend()
fig.tight_layout()
lesson_support.save(fig, "11_optimizers.png", dpi=100)
print("\nLesson 11 done: every check passed.")
