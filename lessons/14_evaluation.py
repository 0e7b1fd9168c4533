# %% [markdown]
# # Lesson 14: evaluating a classifier: Table 2, uncertainty, calibration and Grad-CAM (Fig. 9)
#
# **What it teaches**
# - Everything in Table 2 follows from the confusion matrix C (rows true, columns predicted), N = sum C:
#   accuracy = trace(C) / N; precision_k = C_kk / sum_i C_ik; recall_k = C_kk / sum_j C_kj;
#   F1_k = 2 P_k R_k / (P_k + R_k), macro = mean over classes;
#   kappa = (p_o - p_e) / (1 - p_e), p_o = accuracy, p_e = sum_k (row_k / N)(col_k / N) (chance agreement);
#   log loss = -(1/N) sum_n ln p_n[y_n] needs the probabilities, not just C.
# - Uncertainty per TRUE class (Tables 3-4): entropy H_n = -sum_c p_nc ln p_nc in nats (Eq. 11, 0 .. ln 6), and
#   the std (ddof 0) of the normalized maximum probability m_n = max_c p_nc / sum_c p_nc (Eq. 8-10).
# - Calibration (not in the paper): ECE = sum_b |B_b| / N * |acc(B_b) - conf(B_b)| over 15 confidence bins.
# - Grad-CAM on conv2d_22: alpha_k = mean over positions of d logit_c / d A_k, cam = ReLU(sum_k alpha_k A_k).
#   The map depends on the class c asked about. For a misclassified image the maps of the predicted and of
#   the true class show where the evidence for each lies, and zeroing the cells a map marks tests the claim.
# - Two models, side by side. A short model (ARN-CNN on 48x48 inputs, trained here for 2-3 epochs as in
#   lesson 13) makes enough errors to show the mechanics, each metric computed by hand. The published model
#   (`results/default-seed123/model.npz`, trained on the full set for 36 epochs) gives a real Table 2 on its
#   whole test split (from the run's per-image predictions) and on the shipped sample's images, its 5x5
#   Grad-CAM, and its one real test error.
#
# **Prerequisites:** lesson 13 (training, and the batch-norm statistics of its part 4), lesson 12 (the whole
# network and conv2d_22's 5x5 map), lesson 10 (softmax and cross-entropy); lesson 1 for the split.
#
# **Time:** about 30 minutes to read and try; it runs in about 35 s (15 s with `MINARN_LESSON_FAST=1`), of
# which about 10 s read the full archive for part 11 when it is at hand.
#
# **Try this**
# 1. In part 1, add `probs[:] = 1 / 6` after `probs /= ...` and run parts 2-4: accuracy 0.167, kappa 0,
#    log loss ln 6 = 1.792, every entropy ln 6, and an ECE of 0: a model that knows nothing, and says so, is
#    perfectly calibrated. (Part 6 then stops: the "errors" it looks at are no longer the model's.)
# 2. In part 9, set `PART = 0`: Table 2 on the 546 sample images of the run's training split. Every image is
#    right and the log loss is lower still (0.0013 against 0.0014), which says nothing about new images:
#    that is why the test split is kept apart.
#
# Run it as a script, `python lessons/14_evaluation.py` (figures go to `./lesson_figures`, or to
# `$MINARN_LESSON_OUT`), or cell by cell as a notebook (see `lessons/README.md`). It needs the published
# run in the repository's `results/` folder (or the folder named by `MINARN_RESULTS`).

# %%
import csv
import io
import json
import os
import re
import shutil
import tarfile
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # before NumPy loads OpenBLAS (see lesson 13)
from minarn import lesson_support

lesson_support.use_matplotlib()  # Agg for a script; a notebook keeps its inline backend
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

import minarn  # noqa: E402
from minarn import data, figures, gradcam, metrics, optim  # noqa: E402

FAST = os.environ.get("MINARN_LESSON_FAST") == "1"
OUT = lesson_support.figure_folder()
names = data.MEDNIST_CLASSES


def small(images):
    """64x64 uint8 -> 48x48 uint8 (bilinear), shape (N, 48, 48, 1)."""
    return np.stack([np.asarray(Image.fromarray(im[..., 0]).resize((48, 48), Image.BILINEAR)) for im in images])[
        ..., None]


# %% [markdown]
# ## 1. A briefly trained ARN-CNN (48x48 inputs, Adamax, batch 10)
# Trained on the sample's own split (lesson 1), then the batch norms' moving statistics are set from 100
# training images (lesson 13, part 4). It is evaluated on the sample's validation and test images together
# (60 images; 30 in the fast setting), for a less coarse confusion matrix.

# %%
print("1. A briefly trained ARN-CNN (48x48 inputs, Adamax, batch 10)")
ds = data.load_mednist()
sample = ds
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
x_eval = small(np.concatenate([valid.images, test.images]))
y = np.concatenate([valid.labels, test.labels])
probs = model.predict(x_eval).astype(np.float64)
probs /= probs.sum(axis=1, keepdims=True)  # float32 rows sum to 1 only to ~1e-7; metrics renormalizes too
pred = probs.argmax(axis=1)
print(f"   {len(y)} held-out images (validation + test)")

# %% [markdown]
# ## 2. Table 2 from the confusion matrix, by hand vs `minarn.metrics`

# %%
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
lib = metrics.summary(y, probs, names)
for key, value in hand.items():
    print(f"   {key:9s}: by hand {value:.6f}   minarn.metrics {lib[key]:.6f}")
    assert abs(value - lib[key]) < 1e-9, key
assert np.allclose(metrics.f1_score(y, pred, 6, average=None), F1)
print(f"   kappa corrects accuracy for chance: p_o = {p_o:.3f}, p_e = {p_e:.3f} (1/6 = 0.167 for balanced classes)")

# %% [markdown]
# ## 3. Uncertainty per true class (Eq. 8-11)
# Entropy in nats and the standard deviation of the normalized maximum probability.

# %%
print("\n3. Uncertainty per true class (Eq. 8-11)")
H = -np.sum(np.where(probs > 0, probs * np.log(np.where(probs > 0, probs, 1)), 0.0), axis=1)
m = probs.max(axis=1) / probs.sum(axis=1)
table = metrics.uncertainty_table(y, probs, names)
for k, r in enumerate(table):
    h_k, s_k = H[y == k].mean(), m[y == k].std()
    print(f"   {r.name:9s} n={r.count:2d}  mean entropy {h_k:.4f} (minarn {r.mean_entropy:.4f})  "
          f"std of max prob {s_k:.4f} (minarn {r.std_max_prob:.4f})  -> {r.label}")
    assert abs(h_k - r.mean_entropy) < 1e-12 and abs(s_k - r.std_max_prob) < 1e-12
assert np.all((H >= 0) & (H <= np.log(6) + 1e-12)) and np.all((m >= 1 / 6) & (m <= 1))

# %% [markdown]
# ## 4. Calibration: does a confidence of 0.8 mean 80 % correct?
# ECE over 15 equal-width bins of the top-class probability, by hand and by `minarn.metrics`.

# %%
print("\n4. Calibration: does a confidence of 0.8 mean 80 % correct?")
edges = np.linspace(0, 1, 16)
b = np.clip(np.searchsorted(edges, m, side="left") - 1, 0, 14)  # right-closed bins (b/15, (b+1)/15]
ece = sum(np.sum(b == i) / N * abs(np.mean(pred[b == i] == y[b == i]) - m[b == i].mean())
          for i in range(15) if np.any(b == i))
print(f"   mean confidence {m.mean():.3f}, accuracy {p_o:.3f}; ECE by hand {ece:.4f}, "
      f"minarn {metrics.expected_calibration_error(y, probs):.4f}")
assert abs(ece - metrics.expected_calibration_error(y, probs)) < 1e-12
lesson_support.saved(figures.reliability_diagram(y, probs, OUT / "14_reliability.png"))

# %% [markdown]
# ## 5. Grad-CAM of conv2d_22: channel weights against a numeric gradient of the class logit
# alpha_k must be the spatial mean of d logit_c / d A_k; a central difference on A checks it for the two
# channels with the largest |alpha|, and the map is rebuilt by hand. On 48x48 inputs conv2d_22's map is 3x3.

# %%
print("\n5. Grad-CAM of conv2d_22: channel weights against a numeric gradient of the class logit")
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
lesson_support.saved(figures.gradcam_grid(x_eval[pick], res, names, OUT / "14_gradcam.png", y_true=y[pick]))

# %% [markdown]
# ## 6. Grad-CAM answers "where is the evidence for class c?": both classes of a misclassified image
# The short model's most confident error. `gradcam` explains the predicted class by default; asked for the
# predicted and the true class it gives two maps. The claim is tested where it is made: zeroing conv2d_22's
# features at the cells the predicted class's map marks (map >= 0.5) must lower the predicted class's
# logit, and by more than the true class's.

# %%
print("\n6. Grad-CAM answers 'where is the evidence for class c?': both classes of a misclassified image")


def zero_cells(m, features, marked):
    """Logits (K,) of the head when conv2d_22's features (h, w, F) are zeroed at the ``marked`` (h, w) cells."""
    kept = features.copy()
    kept[marked] = 0
    return gradcam.head_logits(m, kept[None])[0]


wrong = np.flatnonzero(pred != y)
assert len(wrong), "a 2-3 epoch model makes errors"
hard = int(wrong[np.argmax(probs[wrong, pred[wrong]] - probs[wrong, y[wrong]])])
first, true = int(pred[hard]), int(y[hard])
print(f"   {len(wrong)} errors; image {hard}: true {names[true]}, p({names[first]}) = {probs[hard, first]:.3f}, "
      f"p({names[true]}) = {probs[hard, true]:.3f}")
default = gradcam.gradcam(model, x_eval[[hard]])  # no class given: the predicted one
cams = gradcam.gradcam(model, x_eval[[hard, hard]], np.array([first, true]))
assert default.classes[0] == first and np.allclose(default.cam[0], cams.cam[0], atol=1e-5)
marked = cams.cam[0] >= 0.5
before = cams.logits[0]
after = zero_cells(model, cams.features[0], marked)
drop = before - after
print(f"   zeroing the {marked.sum()} of {marked.size} cells marked for {names[first]}: its logit drops by "
      f"{drop[first]:+.3f}, {names[true]}'s by {drop[true]:+.3f}")
assert drop[first] > 0 and drop[first] > drop[true]
lesson_support.saved(figures.gradcam_grid(
    x_eval[[hard, hard]], cams, names, OUT / "14_gradcam_two_classes.png", y_true=y[[hard, hard]],
    title="Short model, a misclassified image:\nGrad-CAM of the predicted class, then of the true class"))

# %% [markdown]
# ## 7. The published model, and which sample images it was trained on
# `results/default-seed123` holds the weights of the paper's default run on the full MedNIST set (58,954
# images), its configuration and its report. The shipped sample is 100 images per class drawn from the same
# full set without regard to that run's split, so most of them were in the run's TRAINING data. Which ones
# is computed here: the full set's files are named 000000.jpeg, 000001.jpeg, ... in every class, so a sample
# file's name gives its place in the full set's path order, and the run's split (seed 123, lesson 1) depends
# only on the labels in that order, whose counts `config.json` records. Part 8 checks the result against the
# run's own list of its test images.

# %%
print("\n7. The published model, and which sample images it was trained on")


def find_run(name):
    """``$MINARN_RESULTS/name``, else ``results/name`` here or one folder up, else next to minarn's source."""
    bases = [os.environ.get("MINARN_RESULTS"), "results", "../results", Path(minarn.__path__[0]).parent / "results"]
    for base in bases:
        if base and (Path(base) / name / "model.npz").is_file():
            return Path(base) / name
    raise FileNotFoundError(f"{name}/model.npz not found in {bases}: run from a checkout of the repository "
                            "(its results/ folder) or set MINARN_RESULTS to the folder that holds it")


run = find_run("default-seed123")
config = json.loads((run / "config.json").read_text())
published = minarn.load_model(run / "model.npz")
print(f"   {run}: {published.count_params():,} weights, best epoch {config['test']['best_epoch']}")
assert not config["options"]["dedupe"] and config["options"]["limit_per_class"] is None  # the whole set, as is
full_counts = np.array([sum(config["split"][part][c] for part in ("train", "valid", "test")) for c in names])
full_labels = np.repeat(np.arange(6), full_counts)
parts = data.split_indices(full_labels, seed=config["options"]["seed"])
part_of = np.empty(len(full_labels), np.int64)
for p, idx in enumerate(parts):
    part_of[idx] = p  # 0 train, 1 valid, 2 test
assert [np.bincount(full_labels[idx], minlength=6).tolist() for idx in parts] == [
    [config["split"][part][c] for c in names] for part in ("train", "valid", "test")]
offset = np.concatenate([[0], np.cumsum(full_counts)[:-1]])


def full_index(path):
    """'Hand/000676.jpeg' -> its position in the full set's path order."""
    cls, file = path.split("/")
    return int(offset[names.index(cls)] + int(file.split(".")[0]))


split_part = part_of[[full_index(p) for p in sample.paths]]
report = (run / "report.md").read_text()
error_path, true_name, pred_name, p_pred, p_true = re.search(
    r"^\| `([^`]+)` \| (\w+) \| (\w+) \| ([\d.]+) \| ([\d.]+) \|", report, flags=re.MULTILINE).groups()
assert part_of[full_index(error_path)] == 2, "the report's one test error must lie in the test split"
print(f"   of the sample's 600 images, {np.sum(split_part == 0)} were in the run's training split, "
      f"{np.sum(split_part == 1)} in validation, {np.sum(split_part == 2)} in test; the report's one test error, "
      f"{error_path}, is in the test split here too")

# %% [markdown]
# ## 8. A real Table 2 of the published model, on its whole test split
# The run's `test_predictions.csv` holds, for each of its 2,359 test images, the true class, the predicted
# class and p(true class). That is all Table 2 needs: the confusion matrix from the two classes, the log loss
# from p(true). The file also checks part 7: its paths must be exactly the test split reconstructed there.

# %%
print("\n8. A real Table 2 of the published model, on its whole test split")
with open(run / "test_predictions.csv", newline="", encoding="utf-8") as f:
    rows = list(csv.DictReader(f))
test_paths = [r["path"] for r in rows]
assert sorted(full_index(p) for p in test_paths) == sorted(parts[2].tolist()), "part 7's test split"
y_test = np.array([names.index(r["label"]) for r in rows])
pred_test = np.array([names.index(r["predicted"]) for r in rows])
p_true_test = np.array([float(r["p_true"]) for r in rows])
full_table = {"precision": metrics.precision_score(y_test, pred_test, 6),
              "recall": metrics.recall_score(y_test, pred_test, 6), "f1": metrics.f1_score(y_test, pred_test, 6),
              "accuracy": metrics.accuracy(y_test, pred_test), "kappa": metrics.cohen_kappa(y_test, pred_test, 6),
              "log_loss": -np.mean(np.log(p_true_test))}
print(f"   {len(rows):,} test images:\n   " + metrics.summary_markdown(full_table).strip().replace("\n", "\n   "))
for key, value in full_table.items():
    assert abs(value - config["test"][key]) < 1e-6, (key, value, config["test"][key])
wrong_test = [p for p, t, q in zip(test_paths, y_test, pred_test) if t != q]
assert wrong_test == [error_path]
print(f"   == the run's report (to 1e-6); its one error, {error_path}, is a {true_name} image taken for "
      f"{pred_name}")

# %% [markdown]
# ## 9. The same model on the shipped sample's images
# The weights themselves, run here. The sample images of the run's test split must get the probabilities
# `test_predictions.csv` records for them. The sample's images in the training split are scored too (in the
# full setting), to show what scoring seen images gives: Table 2 on them says nothing about new images.

# %%
print("\n9. The same model on the shipped sample's images")
PART = 2  # which of the run's parts Table 2 is computed on: 0 training, 1 validation, 2 test
PART_NAMES = ("training", "validation", "test")
chosen = np.flatnonzero(split_part == PART)
scored = np.flatnonzero((split_part > 0) | (split_part == PART)) if FAST else np.arange(len(sample))
p_pub = np.zeros((len(sample), 6))
p_pub[scored] = published.predict(sample.images[scored]).astype(np.float64)
table2 = metrics.summary(sample.labels[chosen], p_pub[chosen], names)
print(f"   {len(chosen)} sample images in the run's {PART_NAMES[PART]} split:\n   " +
      metrics.summary_markdown(table2).strip().replace("\n", "\n   "))
assert table2["accuracy"] == 1.0 and table2["log_loss"] < 0.05
recorded = dict(zip(test_paths, p_true_test))
in_test = np.flatnonzero(split_part == 2)
ours_p = p_pub[in_test, sample.labels[in_test]] / p_pub[in_test].sum(axis=1)
theirs_p = np.array([recorded[sample.paths[i]] for i in in_test])
print(f"   p(true class) of the {len(in_test)} sample test images against test_predictions.csv: max difference "
      f"{np.abs(ours_p - theirs_p).max():.1e}")
assert np.abs(ours_p - theirs_p).max() < 1e-5
for p in [q for q in (1, 0, 2) if q != PART]:
    where, label = np.flatnonzero(split_part == p), PART_NAMES[p]
    if np.isin(where, scored).all():
        right = np.mean(p_pub[where].argmax(axis=1) == sample.labels[where])
        print(f"   the {len(where)} sample images of the run's {label} split: accuracy {right:.4f}, log loss "
              f"{metrics.log_loss(sample.labels[where], p_pub[where]):.4f}")

# %% [markdown]
# ## 10. Both models side by side: the published model's 5x5 Grad-CAM and the short model's 3x3
# One sample image of the run's test split per class (the short model may have trained on some of them:
# its split is the sample's own). A 5x5 map upsampled to 64x64 is coarse; a 3x3 map coarser still.

# %%
print("\n10. Both models side by side: the published model's 5x5 Grad-CAM and the short model's 3x3")
held_out = np.flatnonzero(split_part == 2)
pick = np.array([held_out[sample.labels[held_out] == k][0] for k in range(6)])
cam_pub = gradcam.gradcam(published, sample.images[pick])
cam_short = gradcam.gradcam(model, small(sample.images[pick]))
assert cam_pub.cam.shape[1:] == (5, 5) and cam_short.cam.shape[1:] == (3, 3)
assert np.array_equal(cam_pub.classes, sample.labels[pick])
lesson_support.saved(figures.gradcam_grid(sample.images[pick], cam_pub, names, OUT / "14_gradcam_published.png",
                                          y_true=sample.labels[pick]))
fig, axes = plt.subplots(3, 6, figsize=(11, 6))
for j, i in enumerate(pick):
    axes[0, j].imshow(sample.images[i, :, :, 0], cmap="gray", vmin=0, vmax=255)
    axes[0, j].set_title(names[sample.labels[i]], fontsize=9)
    for r, (res_, label) in enumerate(((cam_short, "short"), (cam_pub, "published")), start=1):
        img = small(sample.images[[i]])[0] if res_ is cam_short else sample.images[i]
        axes[r, j].imshow(res_.overlays(img[None])[0])
        axes[r, j].set_title(f"{label}: {names[res_.classes[j]]} {res_.probs[j, res_.classes[j]]:.2f}", fontsize=8)
for ax in axes.ravel():
    ax.set_xticks([]), ax.set_yticks([])
fig.suptitle("Grad-CAM of the predicted class: short model (3x3 map, 48x48 input) and published model (5x5, 64x64)")
fig.tight_layout()
lesson_support.save(fig, "14_two_models.png", dpi=100)

# %% [markdown]
# ## 11. The published model's one real test error
# `Hand/000676.jpeg` is not in the sample. If the full MedNIST archive is at hand (`$MINARN_MEDNIST`, the
# path the run was trained from, or where `minarn.download` saves it), the image is read from it and its
# Grad-CAM tested as in part 6; otherwise the run's published figure of it is shown. `MINARN_LESSON_FAST=1`
# does not look for the archive (reading it takes a few seconds).

# %%
print("\n11. The published model's one real test error")
candidates = [os.environ.get("MINARN_MEDNIST"), config["data_source"], data.default_cache_dir() / "MedNIST.tar.gz"]
archive = next((Path(c) for c in candidates if c and Path(c).is_file() and tarfile.is_tarfile(c)), None)
if FAST or archive is None:
    figure = shutil.copy(run / "figures" / "misclassified_gradcam.png", OUT / "14_published_error.png")
    print(f"   the full archive is {'not looked for (fast setting)' if FAST else 'not found'}; the run's "
          f"report: {error_path} has p(predicted) = {p_pred}, p(true) = {p_true}; its published figure:")
    lesson_support.saved(figure)
else:
    with tarfile.open(archive) as tar:
        member = next(m for m in tar if m.name.endswith("/" + error_path))
        error_image = np.asarray(Image.open(io.BytesIO(tar.extractfile(member).read())).convert("L"))
    print(f"   {error_path} read from {archive}")

# %% [markdown]
# With the image at hand: the model must give it the report's probabilities, and the two maps must mark
# separate evidence. Zeroing the cells marked for the predicted class lowers that class's logit and raises the
# true class's until the prediction turns to the true class; and the predicted class's map lies on the black
# background, not on the hand.

# %%
if not FAST and archive is not None:
    x_err = np.stack([error_image, error_image])[..., None]
    p_err = published.predict(x_err[:1])[0]
    err_pred, err_true = names.index(pred_name), names.index(true_name)
    print(f"   p({pred_name}) = {p_err[err_pred]:.4f}, p({true_name}) = {p_err[err_true]:.4f} (report: "
          f"{p_pred}, {p_true})")
    assert int(p_err.argmax()) == err_pred and abs(p_err[err_pred] - float(p_pred)) < 1e-3
    assert abs(p_err[err_true] - float(p_true)) < 1e-3
    both = gradcam.gradcam(published, x_err, np.array([err_pred, err_true]))
    for r, (own, other) in enumerate(((err_pred, err_true), (err_true, err_pred))):
        after = zero_cells(published, both.features[0], both.cam[r] >= 0.5)
        change = after - both.logits[0]
        print(f"   zeroing the cells marked for {names[own]}: its logit {change[own]:+.2f}, {names[other]}'s "
              f"{change[other]:+.2f}; the prediction becomes {names[int(after.argmax())]}")
        assert change[own] < 0 < change[other]
        if own == err_pred:
            assert int(after.argmax()) == err_true
    dark = error_image / 255 < 0.05
    share = [both.heatmap[r][dark].sum() / both.heatmap[r].sum() for r in range(2)]
    print(f"   {dark.mean():.0%} of the image is black; of each map's weight, {share[0]:.0%} ({names[err_pred]}) and "
          f"{share[1]:.0%} ({names[err_true]}) lie there")
    assert share[0] > 0.8 > 0.5 > share[1]
    lesson_support.saved(figures.gradcam_grid(
        x_err, both, names, OUT / "14_real_error.png", y_true=np.array([err_true, err_true]),
        title=f"The published model's one test error, {error_path}:\npredicted class, then the true class"))
print("\nLesson 14 done: every check passed.")
