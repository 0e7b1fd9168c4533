"""The paper's figures as PNG files, drawn with matplotlib without a display (Agg).

One function per figure; each takes arrays (or a model) rather than a run folder, writes one PNG and returns
its path. ``minarn.evaluate`` calls them on a run folder. Figure numbers follow the paper:

- Fig. 3 :func:`attention_illustration` - the first attention module on real images: input, weights, output
- Fig. 4 :func:`activation_functions` - GELU (Eq. 1-2) and the other dense-layer activations, with derivatives
- Fig. 5 :func:`sample_images` - example images of every class
- Fig. 6 :func:`label_frequency` - images per class in train / validation / test
- Fig. 7 :func:`learning_curves` - loss, accuracy and learning rate per epoch
- Fig. 8 :func:`confusion_and_confidence` - confusion matrix and top-class probability per test image
- Fig. 9 :func:`gradcam_grid` - Grad-CAM of conv2d_22 over test images
- Fig. 10 :func:`dense_activation_losses` - training loss of runs that differ in the dense activation
- (not in the paper) :func:`loss_per_epoch` - the same for runs that differ in anything, e.g. the seed
- (not in the paper) :func:`reliability_diagram` - calibration of the top-class probability

matplotlib is imported only when a figure is drawn, so ``import minarn`` stays light. Figures are built as
``matplotlib.figure.Figure`` objects (no pyplot state, nothing left open); the Agg backend is selected only
if pyplot has not been imported yet, so an interactive session keeps its own backend.
"""

from __future__ import annotations

import csv
import math
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure

    from minarn.gradcam import GradCAM
    from minarn.model import ARNCNN

__all__ = [
    "FIGURE_FILES",
    "activation_functions",
    "attention_illustration",
    "confusion_and_confidence",
    "dense_activation_losses",
    "gradcam_grid",
    "gradcam_title",
    "label_frequency",
    "learning_curves",
    "loss_per_epoch",
    "read_history",
    "reliability_diagram",
    "sample_images",
]

# File names used by ``minarn.evaluate`` inside ``RUN_DIR/figures``.
FIGURE_FILES = {
    "attention": "fig3_attention.png",
    "activations": "fig4_activations.png",
    "samples": "fig5_samples.png",
    "label_frequency": "fig6_label_frequency.png",
    "learning_curves": "fig7_learning_curves.png",
    "confusion": "fig8_confusion_confidence.png",
    "gradcam": "fig9_gradcam.png",
    "dense_activations": "fig10_dense_activation_loss.png",
    "reliability": "reliability.png",
    "misclassified": "misclassified_gradcam.png",
}
DPI = 110
SPLIT_COLOURS = {"train": "#1f77b4", "valid": "#ff7f0e", "test": "#2ca02c"}


def _figure(width: float, height: float) -> Figure:
    import matplotlib

    if "matplotlib.pyplot" not in sys.modules:
        matplotlib.use("Agg")
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    return fig


def _save(fig: Figure, path: str | os.PathLike[str]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=DPI, facecolor="white")
    return path


def _gray(image: np.ndarray) -> np.ndarray:
    img = np.asarray(image)
    return img[..., 0] if img.ndim == 3 and img.shape[-1] == 1 else img


def _image_axis(ax: Any, image: np.ndarray, title: str | None = None, **kw: Any) -> Any:
    img = _gray(image)
    vmax = 255 if img.dtype == np.uint8 else 1.0
    shown = ax.imshow(img, cmap=kw.pop("cmap", "gray"), vmin=kw.pop("vmin", 0), vmax=kw.pop("vmax", vmax),
                      interpolation="nearest", **kw)
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=9)
    return shown


# ---------------------------------------------------------------------------------------------------------
# Fig. 4: activation functions (no run needed)
# ---------------------------------------------------------------------------------------------------------

FIG4_ACTIVATIONS = ("gelu", "relu", "elu", "selu", "swish", "tanh", "sigmoid")


def activation_functions(path: str | os.PathLike[str], names: Sequence[str] = FIG4_ACTIVATIONS,
                         x_range: tuple[float, float] = (-4.0, 4.0)) -> Path:
    """Fig. 4: the dense-layer activations and their derivatives, computed by minarn's own layers.

    Left: f(x); right: f'(x) from each layer's ``backward`` (ones upstream, exact for element-wise maps).
    GELU is the exact erf form x * Phi(x) (paper Eq. 1-2).
    """
    from minarn.layers.activations import get_activation

    x = np.linspace(*x_range, 801)
    fig = _figure(11, 4.4)
    ax_f, ax_d = fig.subplots(1, 2)
    for name in names:
        layer = get_activation(name)
        y = layer.forward(x)
        dy = layer.backward(np.ones_like(x))
        style = {"lw": 2.6 if name == "gelu" else 1.4}
        label = {"gelu": "GELU (Eq. 1-2)", "relu": "ReLU", "elu": "ELU", "selu": "SELU", "swish": "Swish / SiLU",
                 "tanh": "tanh", "sigmoid": "sigmoid"}.get(name, name)
        ax_f.plot(x, y, label=label, **style)
        ax_d.plot(x, dy, label=label, **style)
    for ax, title, ylabel in ((ax_f, "Activation functions", "f(x)"), (ax_d, "Derivatives", "f'(x)")):
        ax.axhline(0, color="0.6", lw=0.8)
        ax.axvline(0, color="0.6", lw=0.8)
        ax.grid(alpha=0.3)
        ax.set_xlabel("x")
        ax.set_ylabel(ylabel)
        ax.set_title(title)
    ax_f.set_ylim(-2.0, 4.0)
    ax_d.set_ylim(-0.3, 1.9)
    ax_f.legend(fontsize=9, loc="upper left")
    fig.suptitle("Fig. 4 - Activation functions for the dense(256) layer (GELU in the paper)")
    return _save(fig, path)


# ---------------------------------------------------------------------------------------------------------
# Fig. 5, 6: the data
# ---------------------------------------------------------------------------------------------------------


def sample_images(images: np.ndarray, labels: np.ndarray, class_names: Sequence[str],
                  path: str | os.PathLike[str], per_class: int = 6, seed: int = 0) -> Path:
    """Fig. 5: ``per_class`` images of each class, one row per class, picked with a seeded generator.

    Shapes: images (N, H, W[, 1 or 3]) uint8 or float in [0, 1]; labels (N,) ints indexing ``class_names``.
    """
    labels = np.asarray(labels)
    height, width = np.shape(images)[1:3]
    colour = "RGB" if np.ndim(images) == 4 and np.shape(images)[3] == 3 else "grayscale"
    rng = np.random.default_rng(seed)
    K = len(class_names)
    cols = max(1, int(per_class))
    fig = _figure(1.35 * cols + 1.2, 1.35 * K + 0.6)
    axes = np.atleast_2d(fig.subplots(K, cols, squeeze=False))
    for k, name in enumerate(class_names):
        members = np.flatnonzero(labels == k)
        picked: np.ndarray | list[int] = (np.sort(rng.choice(members, size=min(cols, len(members)), replace=False))
                                          if len(members) else [])
        for j in range(cols):
            ax = axes[k, j]
            if j < len(picked):
                _image_axis(ax, images[picked[j]])
            else:
                ax.axis("off")
        axes[k, 0].set_ylabel(f"{name}\n({len(members):,})", fontsize=10, rotation=0, ha="right", va="center")
    fig.suptitle(f"Fig. 5 - Sample images per class ({height}x{width} {colour}; image count in brackets)")
    return _save(fig, path)


def label_frequency(counts: Mapping[str, Sequence[int]], class_names: Sequence[str],
                    path: str | os.PathLike[str], how: str = "stratified 90 / 6 / 4 %, seed 123") -> Path:
    """Fig. 6: images per class in each split, one panel per split (their scales differ ~15x).

    ``counts`` maps a split name ("train", "valid", "test") to per-class counts in ``class_names`` order;
    ``how`` says in the title how the split was made.
    """
    splits = list(counts)
    fig = _figure(4.2 * len(splits) + 0.5, 4.2)
    axes = np.atleast_1d(fig.subplots(1, len(splits), squeeze=False)[0])
    x = np.arange(len(class_names))
    for ax, split in zip(axes, splits):
        values = np.asarray(counts[split], dtype=np.int64)
        bars = ax.bar(x, values, color=SPLIT_COLOURS.get(split, "0.5"))
        ax.bar_label(bars, labels=[f"{v:,}" for v in values], fontsize=8, padding=2)
        ax.set_xticks(x, class_names, rotation=35, ha="right", fontsize=9)
        ax.set_title(f"{split} ({values.sum():,} images)")
        ax.set_ylabel("images")
        ax.set_ylim(0, max(1, values.max()) * 1.15)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(f"Fig. 6 - Label frequency per split ({how})")
    return _save(fig, path)


# ---------------------------------------------------------------------------------------------------------
# Fig. 7, 10: training histories
# ---------------------------------------------------------------------------------------------------------


def read_history(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Rows of a run's ``history.csv`` with numbers parsed (``monitor`` stays a string)."""
    rows = []
    with open(path, newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            rows.append({k: (v if k == "monitor" else (int(v) if k == "epoch" else float(v))) for k, v in row.items()})
    return rows


def _column(history: Sequence[Mapping[str, Any]], key: str) -> np.ndarray:
    return np.array([float(r[key]) for r in history])


def learning_curves(history: Sequence[Mapping[str, Any]], path: str | os.PathLike[str],
                    best_epoch: int | None = None, title: str = "") -> Path:
    """Fig. 7: loss, accuracy and learning rate per epoch (training and validation).

    ``history`` rows have the columns of ``history.csv`` (epoch, loss, accuracy, val_loss, val_accuracy, lr,
    ...). The losses include the dense layer's penalties, as Keras reports them. ``best_epoch`` (the weights
    kept at the end) is marked.
    """
    if not history:
        raise ValueError("learning_curves: the history is empty (no finished epoch)")
    from matplotlib.ticker import FormatStrFormatter
    epoch = _column(history, "epoch")
    fig = _figure(13, 4.2)
    ax_l, ax_a, ax_r = fig.subplots(1, 3)
    ax_l.plot(epoch, _column(history, "loss"), "o-", label="training loss")
    ax_l.plot(epoch, _column(history, "val_loss"), "s--", label="validation loss")
    ax_l.set_ylabel("loss (cross-entropy + penalties)")
    ax_l.set_title("Loss")
    losses = np.r_[_column(history, "loss"), _column(history, "val_loss")]
    if losses.min() > 0 and losses.max() / losses.min() > 20:
        ax_l.set_yscale("log")
    ax_a.plot(epoch, 100 * _column(history, "val_accuracy"), "s--", color="C1", label="validation accuracy")
    ax_a.plot(epoch, 100 * _column(history, "accuracy"), "o-", color="C0", ms=4,  # on top: near 100 % both overlap
              label="training accuracy")
    ax_a.set_ylabel("accuracy (%)")
    ax_a.set_title("Accuracy")
    lr = _column(history, "lr")
    ax_r.step(epoch, lr, where="mid", color="C2", label="learning rate used")
    ax_r.plot(epoch, lr, "o", color="C2")
    if lr.min() > 0 and lr.max() / lr.min() > 20:  # several halvings: a log axis keeps the late cuts visible
        ax_r.set_yscale("log")
    else:
        ax_r.set_ylim(0, 1.15 * lr.max())
        ax_r.yaxis.set_major_formatter(FormatStrFormatter("%g"))
    ax_r.set_ylabel("learning rate")
    ax_r.set_title("Learning rate")
    for ax in (ax_l, ax_a, ax_r):
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        if len(epoch) <= 20:
            ax.set_xticks(epoch)
        if best_epoch is not None:
            ax.axvline(best_epoch, color="0.4", ls=":", lw=1.2, label=f"best epoch ({best_epoch})")
        ax.legend(fontsize=8)
    fig.suptitle("Fig. 7 - Learning curves" + (f" ({title})" if title else ""))
    return _save(fig, path)


def loss_per_epoch(runs: Sequence[tuple[str, Sequence[Mapping[str, Any]]]], path: str | os.PathLike[str],
                   legend_title: str, title: str, emphasise: str | None = None) -> Path:
    """Training (left) and validation (right) loss per epoch of several runs, one line per run.

    ``runs`` is a list of (label, history rows), e.g. [("123", rows), ("7", rows)] with ``legend_title="seed"``;
    the lines whose label contains ``emphasise`` are drawn thicker. Both axes turn logarithmic when the losses
    span more than a factor 20.
    """
    if not runs:
        raise ValueError("loss_per_epoch: no runs given")
    fig = _figure(12, 4.4)
    ax_t, ax_v = fig.subplots(1, 2)
    everything = []
    for i, (label, history) in enumerate(runs):
        if not history:
            continue
        epoch = _column(history, "epoch")
        thick = emphasise is not None and emphasise in label.lower()
        for ax, key in ((ax_t, "loss"), (ax_v, "val_loss")):
            values = _column(history, key)
            everything.append(values)
            ax.plot(epoch, values, "o-", color=f"C{i % 10}", lw=2.4 if thick else 1.5, label=label, ms=4)
    for ax, name in ((ax_t, "Training loss"), (ax_v, "Validation loss")):
        ax.set_xlabel("epoch")
        ax.set_ylabel("loss (cross-entropy + penalties)")
        ax.set_title(name)
        ax.grid(alpha=0.3)
        ax.legend(title=legend_title, fontsize=9)
    if everything:
        allv = np.concatenate(everything)
        if allv.min() > 0 and allv.max() / allv.min() > 20:
            ax_t.set_yscale("log")
            ax_v.set_yscale("log")
    fig.suptitle(title)
    return _save(fig, path)


def dense_activation_losses(runs: Sequence[tuple[str, Sequence[Mapping[str, Any]]]],
                            path: str | os.PathLike[str]) -> Path:
    """Fig. 10: :func:`loss_per_epoch` of runs that differ in the dense activation, GELU drawn thicker.

    ``runs`` is a list of (label, history rows), e.g. [("gelu", rows), ("relu", rows)].
    """
    if not runs:
        raise ValueError("dense_activation_losses: no runs given")
    return loss_per_epoch(runs, path, "dense activation",
                          "Fig. 10 - Loss with different activations in the dense(256) layer", emphasise="gelu")


# ---------------------------------------------------------------------------------------------------------
# Fig. 8 and the reliability diagram: test predictions
# ---------------------------------------------------------------------------------------------------------


def confusion_and_confidence(y_true: np.ndarray, probs: np.ndarray, class_names: Sequence[str],
                             path: str | os.PathLike[str], title: str = "") -> Path:
    """Fig. 8: confusion matrix (counts; colour = fraction of the true class) and, per true class, the
    top-class probability of every test image (dots: correct, red crosses: wrong).

    Shapes: y_true (N,) ints, probs (N, K).
    """
    from minarn.metrics import confusion_matrix

    y_true = np.asarray(y_true)
    probs = np.asarray(probs, dtype=np.float64)
    K = len(class_names)
    y_pred = probs.argmax(axis=1)
    C = confusion_matrix(y_true, y_pred, K)
    frac = C / np.maximum(C.sum(axis=1, keepdims=True), 1)
    fig = _figure(13.5, 5.6)
    fig.set_layout_engine("constrained", wspace=0.08)
    ax_c, ax_p = fig.subplots(1, 2, width_ratios=[1.05, 1])
    im = ax_c.imshow(frac, cmap="Blues", vmin=0, vmax=1)
    for i in range(K):
        for j in range(K):
            ax_c.text(j, i, f"{C[i, j]:,}", ha="center", va="center", fontsize=10,
                      color="white" if frac[i, j] > 0.5 else "black")
    ax_c.set_xticks(range(K), class_names, rotation=35, ha="right")
    ax_c.set_yticks(range(K), class_names)
    ax_c.set_xlabel("predicted class")
    ax_c.set_ylabel("true class")
    errors = int((y_pred != y_true).sum())
    ax_c.set_title(f"Confusion matrix ({errors} errors in {len(y_true):,} test images)")
    fig.colorbar(im, ax=ax_c, shrink=0.8, label="fraction of the true class")

    conf = probs.max(axis=1) / probs.sum(axis=1)
    rng = np.random.default_rng(0)
    dot = 28 if len(y_true) <= 300 else 8
    correct = y_pred == y_true
    for k in range(K):
        sel = y_true == k
        jitter = k + rng.uniform(-0.28, 0.28, size=sel.sum())
        ok = correct[sel]
        ax_p.scatter(jitter[ok], conf[sel][ok], s=dot, alpha=0.5, color="C0",
                     label="correct" if k == 0 else None)
        ax_p.scatter(jitter[~ok], conf[sel][~ok], s=3 * dot, marker="x", color="C3",
                     label="wrong" if k == 0 else None)
        if sel.any():
            ax_p.hlines(np.mean(conf[sel]), k - 0.35, k + 0.35, color="k", lw=1.5,
                        label="class mean" if k == 0 else None)
    ax_p.set_xticks(range(K), class_names, rotation=35, ha="right")
    ax_p.set_xlim(-0.6, K - 0.4)
    ax_p.set_ylim(max(0.0, 1.0 / K - 0.05), 1.02)
    ax_p.set_xlabel("true class")
    ax_p.set_ylabel("top-class probability (confidence)")
    ax_p.set_title("Prediction confidence per test image")
    ax_p.grid(axis="y", alpha=0.3)
    if ax_p.get_legend_handles_labels()[0]:
        ax_p.legend(fontsize=8, loc="lower left")
    fig.suptitle("Fig. 8 - Confusion matrix and prediction confidence on the test split"
                 + (f" ({title})" if title else ""))
    return _save(fig, path)


def reliability_diagram(y_true: np.ndarray, probs: np.ndarray, path: str | os.PathLike[str],
                        n_bins: int = 15) -> Path:
    """Reliability diagram (not in the paper): accuracy vs mean confidence in equal-width confidence bins
    (Guo et al. 2017), with the bin counts below; ECE and MCE in the title (``minarn.metrics``)."""
    from minarn.metrics import (
        expected_calibration_error,
        maximum_calibration_error,
        reliability_bins,
    )

    bins = reliability_bins(y_true, probs, n_bins)
    ece = expected_calibration_error(y_true, probs, n_bins)
    mce = maximum_calibration_error(y_true, probs, n_bins)
    fig = _figure(6.4, 7.0)
    ax, ax_n = fig.subplots(2, 1, height_ratios=[3, 1], sharex=True)
    left, width = bins.edges[:-1], np.diff(bins.edges)
    full = bins.count > 0
    ax.bar(left[full], bins.accuracy[full], width=width[full], align="edge", color="C0", edgecolor="k",
           alpha=0.8, label="accuracy in bin")
    gap_lo = np.minimum(bins.accuracy[full], bins.confidence[full])
    gap = np.abs(bins.accuracy[full] - bins.confidence[full])
    ax.bar(left[full], gap, bottom=gap_lo, width=width[full], align="edge", color="C3", alpha=0.35,
           hatch="//", edgecolor="C3", label="gap to mean confidence")
    ax.plot([0, 1], [0, 1], "k--", lw=1, label="perfect calibration")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_ylabel("accuracy")
    ax.set_title(f"Reliability diagram: ECE {ece:.4f}, MCE {mce:.4f} ({n_bins} bins, N = {int(bins.count.sum()):,})")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    ax_n.bar(left, np.maximum(bins.count, 0), width=width, align="edge", color="0.5", edgecolor="k")
    if bins.count.max() > 50 * max(1, np.min(bins.count[full])):
        ax_n.set_yscale("log")
    ax_n.set_xlabel("top-class probability (confidence)")
    ax_n.set_ylabel("images")
    ax_n.grid(alpha=0.3)
    return _save(fig, path)


# ---------------------------------------------------------------------------------------------------------
# Fig. 9: Grad-CAM, Fig. 3: attention
# ---------------------------------------------------------------------------------------------------------


def gradcam_grid(images: np.ndarray, result: GradCAM, class_names: Sequence[str],
                 path: str | os.PathLike[str], y_true: np.ndarray | None = None, names: Sequence[str] | None = None,
                 cols: int = 6, alpha: float = 0.4, title: str | None = None) -> Path:
    """Fig. 9: each image above its Grad-CAM overlay (jet, alpha 0.4), titled with the explained class and
    its probability (and the true class when ``y_true`` is given, or a file name from ``names``).

    Shapes: images (N, H, W[, 1]); ``result`` from :func:`minarn.gradcam.gradcam` for these images.
    """
    from matplotlib import colormaps
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    n = len(images)
    if n == 0:
        raise ValueError("gradcam_grid: no images")
    cols = max(1, min(int(cols), n))
    blocks = math.ceil(n / cols)
    fig = _figure(1.9 * cols + 1.0, 4.1 * blocks + 0.5)
    axes = fig.subplots(2 * blocks, cols, squeeze=False)
    overlays = result.overlays(images, alpha)
    for i in range(blocks * cols):
        b, j = divmod(i, cols)
        top, bottom = axes[2 * b, j], axes[2 * b + 1, j]
        if i >= n:
            top.axis("off")
            bottom.axis("off")
            continue
        c = int(result.classes[i])
        head = []
        if names is not None:
            head.append(str(names[i]))
        if y_true is not None:
            head.append(f"true {class_names[int(y_true[i])]}")
        _image_axis(top, images[i], "\n".join(head) if head else None)
        bottom.imshow(overlays[i], interpolation="nearest")
        bottom.set_xticks([])
        bottom.set_yticks([])
        wrong = y_true is not None and int(y_true[i]) != c
        bottom.set_title(f"{class_names[c]} {result.probs[i, c]:.3f}", fontsize=9,
                         color="C3" if wrong else "black")
    for b in range(blocks):
        axes[2 * b, 0].set_ylabel("image", fontsize=9)
        axes[2 * b + 1, 0].set_ylabel("Grad-CAM", fontsize=9)
    fig.colorbar(ScalarMappable(Normalize(0, 1), colormaps["jet"]), ax=axes, shrink=0.5,
                 label="Grad-CAM (scaled to [0, 1])")
    fig.suptitle(gradcam_title(result, images, title))
    return _save(fig, path)


def gradcam_title(result: GradCAM, images: np.ndarray, title: str | None = None) -> str:
    """The title of :func:`gradcam_grid`: ``title`` (or Fig. 9's) with the size of the map that was really used.

    conv2d_22's map is 5x5 for 64x64 inputs but 3x3 for 48x48 ones, so the size is read from ``result.cam``
    (N, h, w) and the images (N, H, W[, 1]), never assumed.
    """
    h, w = result.cam.shape[1:3]
    H, W = np.shape(images)[1:3]
    size = f"{h}x{w} map of conv2d_22, upsampled to {H}x{W}"
    if title is None:
        return f"Fig. 9 - Grad-CAM ({size}); below: explained class, its probability"
    return f"{title}\n(Grad-CAM: {size})"


def attention_illustration(model: ARNCNN, images: np.ndarray, path: str | os.PathLike[str],
                           labels: np.ndarray | None = None, class_names: Sequence[str] | None = None,
                           channel: int | None = None) -> Path:
    """Fig. 3: the first attention module (``model.stem_attention[0]``) on real images.

    Columns: the image; the module's input x (conv2d -> max-pooling, 31x31x32); the attention weights
    w = sigmoid(conv1x1(relu(conv1x1(x)))); the attended output x * w. Feature maps show the mean over the
    32 channels, or one channel when ``channel`` is given; the weights use their own colour range (printed
    in the column title), since a little-trained module stays near sigmoid(0) = 0.5. Shapes: images (N, 64, 64[, 1]).
    """
    if not model.stem_attention:
        raise ValueError("attention_illustration: this model has no attention modules (attention=False)")
    x = np.asarray(images)
    if x.ndim == 3:
        x = x[..., None]
    att = model.stem_attention[0]
    h = model.pool_in.forward(model.conv_in.forward(model._prepare(x), False), False)
    out = att.forward(h, False)
    w = att.weights
    assert w is not None  # forward keeps its mask w

    def reduce(a: np.ndarray) -> np.ndarray:
        return a[..., channel] if channel is not None else a.mean(axis=-1)

    xs, ws, outs = reduce(h), reduce(w), reduce(out)
    what = f"channel {channel}" if channel is not None else f"mean of {h.shape[-1]} channels"
    # The weights get their own colour range (shared by the rows): a barely trained module stays near
    # sigmoid(0) = 0.5 everywhere, and a fixed 0..1 scale would hide its spatial pattern.
    w_lo, w_hi = float(ws.min()), float(ws.max())
    if w_hi - w_lo < 1e-6:
        w_lo, w_hi = w_lo - 0.5e-6, w_hi + 0.5e-6
    n = len(x)
    fig = _figure(11.5, 2.6 * n + 0.8)
    axes = fig.subplots(n, 4, squeeze=False)
    names = [att.conv_a.name, att.conv_b.name, att.multiply.name]
    titles = ["input image", f"module input x\n({what})",
              f"attention weights w = sigmoid(...)\n({what}; colour range {w_lo:.3f}-{w_hi:.3f})",
              f"attended output x * w\n({what})"]
    for i in range(n):
        fmax = max(float(xs[i].max()), 1e-12)
        _image_axis(axes[i, 0], x[i])
        _image_axis(axes[i, 1], xs[i], cmap="viridis", vmin=0, vmax=fmax)
        shown_w = _image_axis(axes[i, 2], ws[i], cmap="magma", vmin=w_lo, vmax=w_hi)
        _image_axis(axes[i, 3], outs[i], cmap="viridis", vmin=0, vmax=fmax)
        if labels is not None and class_names is not None:
            axes[i, 0].set_ylabel(class_names[int(labels[i])], fontsize=10)
        fig.colorbar(shown_w, ax=axes[i, 2], shrink=0.8)
        fig.colorbar(axes[i, 3].images[0], ax=axes[i, 3], shrink=0.8)
    for j, t in enumerate(titles):
        axes[0, j].set_title(t, fontsize=9)
    fig.suptitle(f"Fig. 3 - Attention module ({' -> '.join(names)}) on test images: out = x * w")
    return _save(fig, path)
