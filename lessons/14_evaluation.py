"""Lesson 14: evaluating a classifier: the paper's Table 2-4 metrics, calibration, and Grad-CAM (Fig. 9).

What it teaches
- Everything in Table 2 follows from the confusion matrix C (rows true, columns predicted), N = sum C:
      accuracy = trace(C) / N;  precision_k = C_kk / sum_i C_ik;  recall_k = C_kk / sum_j C_kj;
      F1_k = 2 P_k R_k / (P_k + R_k), macro = mean over classes;
      kappa = (p_o - p_e) / (1 - p_e), p_o = accuracy, p_e = sum_k (row_k / N)(col_k / N)  (chance agreement);
  log loss = -(1/N) sum_n ln p_n[y_n] needs the probabilities, not just C.
- Uncertainty per TRUE class (Tables 3-4): entropy H_n = -sum_c p_nc ln p_nc in nats (Eq. 11, 0 .. ln 6), and
  the std (ddof 0) of the normalized maximum probability m_n = max_c p_nc / sum_c p_nc (Eq. 8-10).
- Calibration (not in the paper): ECE = sum_b |B_b| / N * |acc(B_b) - conf(B_b)| over 15 confidence bins.
- Grad-CAM on conv2d_22: alpha_k = mean over positions of d logit_c / d A_k, cam = ReLU(sum_k alpha_k A_k).
  We check alpha_k against a central-difference gradient of the logit with respect to A. The map depends on
  the class c asked about: for a hard image, the maps of its two most likely classes show where the evidence
  for each lies (minarn.evaluate draws this for every misclassified test image).

The model is ARN-CNN on 48x48 inputs trained for a few epochs as in lesson 13 (one BLAS thread, batch 10,
then the batch norm moving statistics set from 100 training images, see lesson 13 part 4).

Run:  python lessons/14_evaluation.py     (figures go to ./lesson_figures, or to $MINARN_LESSON_OUT)
"""

import os
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # before NumPy loads OpenBLAS (see lesson 13)
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

import minarn  # noqa: E402
from minarn import data, figures, gradcam, metrics, optim  # noqa: E402

FAST = os.environ.get("MINARN_LESSON_FAST") == "1"
OUT = Path(os.environ.get("MINARN_LESSON_OUT", "lesson_figures"))
OUT.mkdir(parents=True, exist_ok=True)


def small(images):
    """64x64 uint8 -> 48x48 uint8 (bilinear), shape (N, 48, 48, 1)."""
    return np.stack([np.asarray(Image.fromarray(im[..., 0]).resize((48, 48), Image.BILINEAR)) for im in images])[
        ..., None]


print("1. A briefly trained ARN-CNN (48x48 inputs, Adamax, batch 10)")
ds = data.load_mednist()
if FAST:
    ds = ds.subset(np.concatenate([np.flatnonzero(ds.labels == k)[:50] for k in range(6)]))
train, valid, test = data.split_dataset(ds)
xtr = small(train.images)
model, opt = minarn.ARNCNN(input_shape=(48, 48, 1), seed=0), optim.Adamax(0.001, form="paper")
for epoch in range(2 if FAST else 3):
    order = np.random.default_rng([0, epoch]).permutation(len(xtr))
    for b in range(0, len(xtr), 10):
        idx = order[b : b + 10]
        loss, grads = model.loss_and_grads(data.scale_images(xtr[idx]), data.one_hot(train.labels[idx], 6))
        opt.apply(model.parameters(), grads)
    print(f"   epoch {epoch + 1}: last batch loss {loss:.3f}")
for bn in (model.block.bn1, model.block.bn2):  # moving statistics := those of 100 training images (lesson 13)
    bn.momentum = 0.0
model.logits(data.scale_images(xtr[:100]), training=True)
# evaluate on validation + test together (60 images; 30 in fast mode) for a less coarse matrix
x_eval = small(np.concatenate([valid.images, test.images]))
y = np.concatenate([valid.labels, test.labels])
probs = model.predict(x_eval).astype(np.float64)
probs /= probs.sum(axis=1, keepdims=True)  # float32 rows sum to 1 only to ~1e-7; metrics renormalizes too
pred = probs.argmax(axis=1)
print(f"   {len(y)} held-out images (validation + test)")

print("\n2. Table 2 from the confusion matrix, by hand vs minarn.metrics")
C = metrics.confusion_matrix(y, pred, 6)
print("   " + str(C).replace("\n", "\n   ") + "   (rows: true class, columns: predicted)")
assert np.array_equal(C, np.array([[np.sum((y == i) & (pred == j)) for j in range(6)] for i in range(6)]))
N, tp, col, row = C.sum(), np.diag(C), C.sum(axis=0), C.sum(axis=1)
P = np.where(col > 0, tp / np.maximum(col, 1), 0.0)
R = tp / row
F1 = np.where(P + R > 0, 2 * P * R / np.where(P + R > 0, P + R, 1), 0.0)
p_o, p_e = tp.sum() / N, np.sum((row / N) * (col / N))
hand = {"accuracy": p_o, "precision": P.mean(), "recall": R.mean(), "f1": F1.mean(),
        "kappa": (p_o - p_e) / (1 - p_e), "log_loss": -np.mean(np.log(probs[np.arange(N), y]))}
lib = metrics.summary(y, probs, data.MEDNIST_CLASSES)
for key, value in hand.items():
    print(f"   {key:9s}: by hand {value:.6f}   minarn.metrics {lib[key]:.6f}")
    assert abs(value - lib[key]) < 1e-9, key
assert np.allclose(metrics.f1_score(y, pred, 6, average=None), F1)
print(f"   kappa corrects accuracy for chance: p_o = {p_o:.3f}, p_e = {p_e:.3f} (1/6 = 0.167 for balanced classes)")

print("\n3. Uncertainty per true class (Eq. 8-11): entropy (nats) and std of the normalized max probability")
H = -np.sum(np.where(probs > 0, probs * np.log(np.where(probs > 0, probs, 1)), 0.0), axis=1)
m = probs.max(axis=1) / probs.sum(axis=1)
table = metrics.uncertainty_table(y, probs, data.MEDNIST_CLASSES)
for k, r in enumerate(table):
    h_k, s_k = H[y == k].mean(), m[y == k].std()
    print(f"   {r.name:9s} n={r.count:2d}  mean entropy {h_k:.4f} (minarn {r.mean_entropy:.4f})  "
          f"std of max prob {s_k:.4f} (minarn {r.std_max_prob:.4f})  -> {r.label}")
    assert abs(h_k - r.mean_entropy) < 1e-12 and abs(s_k - r.std_max_prob) < 1e-12
assert np.all((H >= 0) & (H <= np.log(6) + 1e-12)) and np.all((m >= 1 / 6) & (m <= 1))

print("\n4. Calibration: does a confidence of 0.8 mean 80 % correct? (ECE, 15 equal-width bins)")
edges = np.linspace(0, 1, 16)
b = np.clip(np.searchsorted(edges, m, side="left") - 1, 0, 14)  # right-closed bins (b/15, (b+1)/15]
ece = sum(np.sum(b == i) / N * abs(np.mean(pred[b == i] == y[b == i]) - m[b == i].mean())
          for i in range(15) if np.any(b == i))
print(f"   mean confidence {m.mean():.3f}, accuracy {p_o:.3f}; ECE by hand {ece:.4f}, "
      f"minarn {metrics.expected_calibration_error(y, probs):.4f}")
assert abs(ece - metrics.expected_calibration_error(y, probs)) < 1e-12
path = figures.reliability_diagram(y, probs, OUT / "14_reliability.png")
print(f"   figure saved: {path}")

print("\n5. Grad-CAM of conv2d_22: channel weights vs a numeric gradient of the class logit")
pick = np.array([np.flatnonzero(y == k)[0] for k in range(6)])
res = gradcam.gradcam(model, x_eval[pick])
print(f"   feature map A {res.features.shape[1:]} per image; explained classes {res.classes.tolist()}")
A = res.features[0].astype(np.float64)
c, eps = int(res.classes[0]), 1e-3
for k in np.argsort(-np.abs(res.weights[0]))[:2]:  # the two channels with the largest |alpha|
    g = np.zeros(A.shape[:2])
    for i, j in np.ndindex(*A.shape[:2]):
        Ap, Am = A.copy(), A.copy()
        Ap[i, j, k] += eps
        Am[i, j, k] -= eps
        g[i, j] = (gradcam.head_logits(model, Ap[None])[0, c] - gradcam.head_logits(model, Am[None])[0, c]) / (2 * eps)
    rel = abs(g.mean() - res.weights[0, k]) / abs(res.weights[0, k])
    print(f"   channel {k:3d}: alpha {res.weights[0, k]:+.6f}, mean of numeric gradient {g.mean():+.6f} "
          f"(relative difference {rel:.1e})")
    assert rel < 1e-3
cam = np.maximum(np.einsum("ijk,k->ij", A, res.weights[0]), 0)
assert np.allclose(cam / cam.max() if cam.max() > 0 else cam, res.cam[0], atol=1e-6)
print("   and cam = ReLU(sum_k alpha_k A_k) / max matches gradcam's map")
path = figures.gradcam_grid(x_eval[pick], res, data.MEDNIST_CLASSES, OUT / "14_gradcam.png", y_true=y[pick])
print(f"   figure saved: {path}")

print("\n6. Grad-CAM answers 'where is the evidence for class c?': ask it for two classes of a hard image")
top2 = np.argsort(-probs, axis=1)[:, :2]
margin = probs[np.arange(N), top2[:, 0]] - probs[np.arange(N), top2[:, 1]]
hard = int(np.argmin(margin))  # the image the model is least sure about (an error, if there is one)
first, second = (int(k) for k in top2[hard])
names = data.MEDNIST_CLASSES
print(f"   image {hard}: true {names[y[hard]]}; p({names[first]}) = {probs[hard, first]:.3f}, "
      f"p({names[second]}) = {probs[hard, second]:.3f}" + ("  (an error)" if first != y[hard] else ""))
default = gradcam.gradcam(model, x_eval[[hard]])  # no class given: the predicted one
both = gradcam.gradcam(model, x_eval[[hard, hard]], np.array([first, second]))
print(f"   classes explained: default {default.classes.tolist()}, asked {both.classes.tolist()}; "
      f"max map difference {np.abs(default.cam[0] - both.cam[0]).max():.2e}")
assert default.classes[0] == first and np.allclose(default.cam[0], both.cam[0], atol=1e-5)
difference = np.abs(both.cam[0] - both.cam[1]).max()
print(f"   the map of the predicted class is the default; the two maps differ by up to {difference:.2f} "
      "(of 1): each class has its own evidence, and an error is best read from both")
assert difference > 0.05
path = figures.gradcam_grid(x_eval[[hard, hard]], both, names, OUT / "14_gradcam_two_classes.png",
                            y_true=y[[hard, hard]], title="The same image, Grad-CAM for its two most likely classes")
print(f"   figure saved: {path}")
print("\nLesson 14 done: every check passed.")
