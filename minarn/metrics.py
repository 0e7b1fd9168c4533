"""Evaluation metrics: the paper's Table 2 (precision, recall, F1, accuracy, kappa, log loss), its per-class
uncertainty tables (Eq. 8-11), and what the paper does not report: calibration (ECE/MCE, reliability bins),
95 % intervals (Clopper-Pearson and Wilson for an accuracy, a seeded bootstrap for the log loss) and McNemar's
exact test of two classifiers on the same images.

Conventions used throughout:
- ``y_true``, ``y_pred``: integer class labels ``0..K-1``, shape (N,); ``probs``: predicted distributions,
  shape (N, K), one row per sample (softmax output; rows are renormalised wherever a distribution is needed).
- ``num_classes`` fixes K, so a class that is never predicted, or absent from ``y_true``, still gets its row,
  column and per-class score (all 0.0). Without it, K = largest label seen + 1.
- Undefined ratios (0/0) are 0.0, as sklearn's ``zero_division=0``; kappa's 0/0 is NaN, as sklearn's default.
- Shape and value errors raise ``ValueError`` naming the argument, the expected and the received shape.

The values match ``sklearn.metrics`` (checked in ``tests/test_metrics.py``); scikit-learn is not imported here.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import SupportsInt

import numpy as np
from scipy.special import entr, ndtri
from scipy.stats import beta

AVERAGES = (None, "macro", "weighted")
REPORT_HEADERS = ("precision", "recall", "f1-score", "support")


class UndefinedMetricWarning(RuntimeWarning):
    """A metric is 0/0 for these inputs (e.g. Cohen's kappa when p_e == 1); the returned value is a convention."""


# ---------------------------------------------------------------------------------------------------------
# validation
# ---------------------------------------------------------------------------------------------------------


def _check_labels(y: object, name: str, n: int | None = None) -> np.ndarray:
    """1-D non-negative integer labels as int64; ``n`` fixes the expected length."""
    arr = np.asarray(y)
    expected = f"({n},)" if n is not None else "(N,)"
    if arr.ndim != 1:
        raise ValueError(f"{name}: expected shape {expected} of integer class labels, got {arr.shape}")
    if n is not None and arr.shape[0] != n:
        raise ValueError(f"{name}: expected shape {expected}, got {arr.shape}")
    if arr.shape[0] == 0:
        raise ValueError(f"{name}: expected at least one sample, got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"{name}: expected integer class labels, got dtype {arr.dtype}")
    if arr.min() < 0:
        raise ValueError(f"{name}: expected labels >= 0, got {int(arr.min())}")
    return arr.astype(np.int64, copy=False)


def _check_probs(probs: object, n: int | None = None) -> np.ndarray:
    """2-D finite non-negative float array whose rows have a positive sum (dtype kept if floating)."""
    arr = np.asarray(probs)
    expected = f"({n}, K)" if n is not None else "(N, K)"
    if arr.ndim != 2 or (n is not None and arr.shape[0] != n):
        raise ValueError(f"probs: expected shape {expected}, got {arr.shape}")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"probs: expected at least one sample and one class, got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.floating):
        arr = arr.astype(np.float64)
    if not np.all(np.isfinite(arr)):
        raise ValueError("probs: expected finite values, got NaN or inf")
    if arr.min() < 0:
        raise ValueError(f"probs: expected values >= 0, got {float(arr.min())}")
    if np.any(arr.sum(axis=1) <= 0):
        raise ValueError("probs: expected every row to have a positive sum, got an all-zero row")
    return arr


def _resolve_num_classes(num_classes: int | None, *labels: np.ndarray) -> int:
    """K from the argument, or largest label + 1; checks every label is < K."""
    top = max(int(y.max()) for y in labels)
    if num_classes is None:
        return top + 1
    if int(num_classes) < 1:
        raise ValueError(f"num_classes: expected >= 1, got {num_classes}")
    if top >= num_classes:
        raise ValueError(f"labels: expected values < num_classes={num_classes}, got {top}")
    return int(num_classes)


def _check_pair(y_true: object, y_pred: object, num_classes: int | None) -> tuple[np.ndarray, np.ndarray, int]:
    yt = _check_labels(y_true, "y_true")
    yp = _check_labels(y_pred, "y_pred", yt.shape[0])
    return yt, yp, _resolve_num_classes(num_classes, yt, yp)


def _check_true_probs(y_true: object, probs: object) -> tuple[np.ndarray, np.ndarray]:
    yt = _check_labels(y_true, "y_true")
    p = _check_probs(probs, yt.shape[0])
    if int(yt.max()) >= p.shape[1]:
        raise ValueError(f"y_true: expected labels < K={p.shape[1]} (columns of probs), got {int(yt.max())}")
    return yt, p


def _check_names(class_names: Sequence[str] | None, num_classes: int) -> list[str]:
    if class_names is None:
        return [str(k) for k in range(num_classes)]
    names = [str(c) for c in class_names]
    if len(names) != num_classes:
        raise ValueError(f"class_names: expected {num_classes} names, got {len(names)}")
    if len(set(names)) != len(names):
        raise ValueError(f"class_names: expected unique names, got {names}")
    return names


def _normalize_rows(p: np.ndarray) -> np.ndarray:
    return p / p.sum(axis=1, keepdims=True)


# ---------------------------------------------------------------------------------------------------------
# label metrics: confusion matrix, accuracy, precision / recall / F1, Cohen's kappa
# ---------------------------------------------------------------------------------------------------------


def confusion_matrix(y_true: object, y_pred: object, num_classes: int | None = None) -> np.ndarray:
    """Counts C[i, j] = #{n : y_true[n] = i, y_pred[n] = j}: rows true, columns predicted.

    Shapes: y_true, y_pred: (N,) -> C: (K, K) int64, K = num_classes (or largest label + 1).
    Every class gets a row and a column even if it never occurs (sklearn ``labels=range(K)``).
    """
    yt, yp, K = _check_pair(y_true, y_pred, num_classes)
    return np.bincount(yt * K + yp, minlength=K * K).reshape(K, K)


def accuracy(y_true: object, y_pred: object) -> float:
    """Fraction of correct labels.   Shapes: y_true, y_pred: (N,).   Math: acc = (1/N) sum_n [y_n = yhat_n]."""
    yt = _check_labels(y_true, "y_true")
    yp = _check_labels(y_pred, "y_pred", yt.shape[0])
    return float(np.mean(yt == yp))


def _divide(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den with 0/0 -> 0.0 (sklearn ``zero_division=0``)."""
    num = num.astype(np.float64)
    safe = np.where(den == 0, 1, den).astype(np.float64)
    return np.where(den == 0, 0.0, num / safe)


def precision_recall_f1_support(
    y_true: object, y_pred: object, num_classes: int | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per-class precision, recall, F1 and support (number of true samples of the class).

    Shapes: y_true, y_pred: (N,) -> four arrays (K,), support int64.
    Math: with C = confusion_matrix, tp_k = C[k, k], pred_k = sum_i C[i, k], true_k = sum_j C[k, j]:
        precision_k = tp_k / pred_k,  recall_k = tp_k / true_k,  F1_k = 2 tp_k / (true_k + pred_k)
        (= 2 P R / (P + R) when defined). Any 0/0 is 0.0: a never-predicted class has precision 0, a class
        absent from y_true has recall 0 and F1 0 (sklearn ``zero_division=0``).
    """
    C = confusion_matrix(y_true, y_pred, num_classes)
    tp = np.diag(C)
    pred = C.sum(axis=0)
    true = C.sum(axis=1)
    return _divide(tp, pred), _divide(tp, true), _divide(2 * tp, true + pred), true


def _average(scores: np.ndarray, support: np.ndarray, average: str | None) -> float | np.ndarray:
    if average is None:
        return scores
    if average == "macro":  # unweighted mean over all K classes, including absent / never-predicted ones
        return float(np.mean(scores))
    if average == "weighted":  # weights = support; classes absent from y_true get weight 0
        return float(np.average(scores, weights=support))
    raise ValueError(f"average: expected one of {AVERAGES}, got {average!r}")


def precision_score(
    y_true: object, y_pred: object, num_classes: int | None = None, average: str | None = "macro"
) -> float | np.ndarray:
    """Precision tp/(tp+fp) per class (``average=None``, array (K,)), or its "macro" / "weighted" mean.

    Macro = (1/K) sum_k P_k over all K classes; weighted = sum_k true_k P_k / N. 0/0 -> 0.0.
    """
    p, _, _, s = precision_recall_f1_support(y_true, y_pred, num_classes)
    return _average(p, s, average)


def recall_score(
    y_true: object, y_pred: object, num_classes: int | None = None, average: str | None = "macro"
) -> float | np.ndarray:
    """Recall tp/(tp+fn) per class (``average=None``), or its "macro" / "weighted" mean. 0/0 -> 0.0.

    Note: weighted recall equals accuracy.
    """
    _, r, _, s = precision_recall_f1_support(y_true, y_pred, num_classes)
    return _average(r, s, average)


def f1_score(
    y_true: object, y_pred: object, num_classes: int | None = None, average: str | None = "macro"
) -> float | np.ndarray:
    """F1 = 2 tp / (2 tp + fp + fn) per class (``average=None``), or its "macro" / "weighted" mean.

    Macro F1 is the mean of per-class F1 (sklearn's definition), not the F1 of macro P and R. 0/0 -> 0.0.
    """
    _, _, f, s = precision_recall_f1_support(y_true, y_pred, num_classes)
    return _average(f, s, average)


def cohen_kappa(
    y_true: object, y_pred: object, num_classes: int | None = None, undefined: float = float("nan")
) -> float:
    """Unweighted Cohen's kappa, chance-corrected agreement of y_pred with y_true.

    Shapes: y_true, y_pred: (N,).
    Math: kappa = (p_o - p_e) / (1 - p_e), p_o = trace(C)/N, p_e = sum_k (true_k/N)(pred_k/N).
        Computed as sklearn does, kappa = 1 - sum_{i!=j} C_ij / sum_{i!=j} E_ij with E = outer(true, pred)/N,
        which is the same ratio and makes the degenerate case exact: p_e == 1 (both label vectors are one and
        the same single class, so p_o == 1 too) is 0/0; like sklearn (default ``replace_undefined_by=np.nan``)
        it returns ``undefined`` (NaN by default) and warns with ``UndefinedMetricWarning``.
    """
    C = confusion_matrix(y_true, y_pred, num_classes).astype(np.float64)
    N = C.sum()
    expected = np.outer(C.sum(axis=1), C.sum(axis=0)) / N
    off = ~np.eye(C.shape[0], dtype=bool)
    denominator = expected[off].sum()
    if denominator == 0:  # exact: a sum of non-negative terms
        warnings.warn(
            f"cohen_kappa: p_e == 1 (a single class in both y_true and y_pred), kappa is 0/0; returning {undefined}",
            UndefinedMetricWarning,
            stacklevel=2,
        )
        return float(undefined)
    return float(1.0 - C[off].sum() / denominator)


# ---------------------------------------------------------------------------------------------------------
# probability metrics: log loss, entropy, normalized maximum probability
# ---------------------------------------------------------------------------------------------------------


def per_sample_log_loss(y_true: object, probs: object) -> np.ndarray:
    """Each sample's term of :func:`log_loss`: -ln clip(p_n[y_n], eps, 1 - eps) after renormalising the rows.

    Shapes: y_true: (N,), probs: (N, K) -> (N,) float64; ``log_loss`` is their mean.
    """
    yt, p = _check_true_probs(y_true, probs)
    p = _normalize_rows(p)
    eps = np.finfo(p.dtype).eps
    p_true = np.clip(p[np.arange(yt.shape[0]), yt], eps, 1 - eps)
    return -np.log(p_true.astype(np.float64))


def log_loss(y_true: object, probs: object) -> float:
    """Mean negative log-likelihood of the true class (natural log), as ``sklearn.metrics.log_loss``.

    Shapes: y_true: (N,), probs: (N, K).
    Math: L = -(1/N) sum_n ln clip(p_n[y_n], eps, 1 - eps), rows of probs first renormalised to sum 1,
        eps = np.finfo(probs.dtype).eps (float64: 2.2e-16, float32: 1.19e-7), as sklearn >= 1.3.
    Consequence of the clipping: one sample contributes at most -ln(eps) = 36.04 nats (float64) or
        15.94 nats (float32), so a confidently wrong image (p(true) = 0) is capped at that value rather than
        +inf, and the result depends on the dtype; a perfect prediction costs -ln(1 - eps) ~ eps, not 0.
    Renormalisation: sklearn 1.3-1.4 clipped, then divided each row by its sum; sklearn >= 1.5 only clips
        (and warns if rows do not sum to 1). Here rows are divided by their sum first, then clipped: for
        softmax outputs (rows sum to 1 up to rounding) all three agree to a few ulp; for unnormalised scores
        the result is invariant to scaling a row. Integer ``probs`` are treated as float64.
    """
    return float(np.mean(per_sample_log_loss(y_true, probs)))


def entropy(probs: object) -> np.ndarray:
    """Shannon entropy of each predicted distribution, in nats (paper Eq. 11).

    Shapes: probs: (N, K) -> H: (N,) float64.
    Math: H_n = -sum_c p_nc ln p_nc after renormalising each row to sum 1, with 0 ln 0 = 0;
        identical to ``scipy.stats.entropy(probs, axis=1)``. 0 <= H_n <= ln K.
    """
    p = _normalize_rows(_check_probs(probs).astype(np.float64))
    return entr(p).sum(axis=1)


def normalized_max_prob(probs: object) -> np.ndarray:
    """Top-label confidence of each sample (paper Eq. 8-10).

    Shapes: probs: (N, K) -> (N,) float64.   Math: m_n = max_c p_nc / sum_c p_nc (= max p for a softmax).
    """
    p = _check_probs(probs).astype(np.float64)
    return p.max(axis=1) / p.sum(axis=1)


# ---------------------------------------------------------------------------------------------------------
# classification report (sklearn layout)
# ---------------------------------------------------------------------------------------------------------


def classification_report_dict(
    y_true: object, y_pred: object, class_names: Sequence[str]
) -> dict[str, dict[str, float] | float]:
    """``sklearn.metrics.classification_report(..., output_dict=True, zero_division=0)`` with K = len(class_names).

    Returns {name: {"precision", "recall", "f1-score", "support"}, ..., "accuracy": float,
    "macro avg": {...}, "weighted avg": {...}}; averages' support is N; supports are ints.
    """
    names = list(class_names)
    K = len(names)
    if K == 0:
        raise ValueError("class_names: expected at least one name, got 0")
    names = _check_names(names, K)
    reserved = {"accuracy", "macro avg", "weighted avg"} & set(names)
    if reserved:
        raise ValueError(f"class_names: expected names other than the report rows, got {sorted(reserved)}")
    p, r, f, s = precision_recall_f1_support(y_true, y_pred, K)
    report: dict[str, dict[str, float] | float] = {}
    for k, name in enumerate(names):
        report[name] = {"precision": float(p[k]), "recall": float(r[k]), "f1-score": float(f[k]), "support": int(s[k])}
    report["accuracy"] = accuracy(y_true, y_pred)
    total = int(s.sum())
    for average in ("macro", "weighted"):
        report[f"{average} avg"] = {
            "precision": float(_average(p, s, average)),
            "recall": float(_average(r, s, average)),
            "f1-score": float(_average(f, s, average)),
            "support": total,
        }
    return report


def classification_report(y_true: object, y_pred: object, class_names: Sequence[str], digits: int = 4) -> str:
    """Text report, character for character sklearn's ``classification_report`` layout (but digits=4 by default).

    One row per class (precision, recall, f1-score, support), then accuracy, macro avg, weighted avg.
    """
    rep = classification_report_dict(y_true, y_pred, class_names)
    names = list(rep)[: len(rep) - 3]
    width = max(max(len(n) for n in names), len("weighted avg"), digits)
    head_fmt = "{:>{width}s} " + " {:>9}" * len(REPORT_HEADERS)
    row_fmt = "{:>{width}s} " + " {:>9.{digits}f}" * 3 + " {:>9}\n"
    text = head_fmt.format("", *REPORT_HEADERS, width=width) + "\n\n"
    for name in [*names, "", "accuracy", "macro avg", "weighted avg"]:
        if name == "":
            text += "\n"
        elif name == "accuracy":
            total = rep["macro avg"]["support"]  # type: ignore[index]
            acc_fmt = "{:>{width}s} " + " {:>9}" * 2 + " {:>9.{digits}f}" + " {:>9}\n"
            text += acc_fmt.format("accuracy", "", "", rep["accuracy"], total, width=width, digits=digits)
        else:
            row = rep[name]
            assert isinstance(row, dict)
            values = [row[h] for h in REPORT_HEADERS]
            text += row_fmt.format(name, *values, width=width, digits=digits)
    return text


# ---------------------------------------------------------------------------------------------------------
# per-class uncertainty (paper Eq. 8-11)
# ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClassUncertainty:
    """One row of the paper's uncertainty table, for the samples whose TRUE class is ``name``.

    ``mean_entropy``: mean of H_n (nats, Eq. 11); ``std_max_prob``: population std (ddof=0) of the normalized
    maximum probability (Eq. 8-10); both NaN when ``count`` is 0. ``label``: "low", "moderate" or "n/a".
    """

    class_index: int
    name: str
    count: int
    mean_entropy: float
    std_max_prob: float
    label: str


def uncertainty_label(
    mean_entropy: float, std_max_prob: float, entropy_threshold: float = 0.1, std_threshold: float = 0.1
) -> str:
    """The paper's qualitative level: "low" iff mean entropy < entropy_threshold AND std < std_threshold,
    else "moderate"; "n/a" for a class without samples (NaN).

    The paper names the levels but gives no numeric rule; the thresholds (0.1 nats, 0.1) are ours. For
    reference, H ranges over [0, ln K] (ln 6 = 1.79 for Medical MNIST) and the normalized max prob over [1/K, 1].
    """
    if np.isnan(mean_entropy) or np.isnan(std_max_prob):
        return "n/a"
    return "low" if mean_entropy < entropy_threshold and std_max_prob < std_threshold else "moderate"


def uncertainty_table(
    y_true: object,
    probs: object,
    class_names: Sequence[str] | None = None,
    entropy_threshold: float = 0.1,
    std_threshold: float = 0.1,
) -> list[ClassUncertainty]:
    """Per TRUE class: sample count, mean Shannon entropy (Eq. 11), std of the normalized max prob (Eq. 8-10).

    Shapes: y_true: (N,), probs: (N, K) -> K rows (classes with no sample get count 0, NaN and "n/a").
    Math: for class k with S_k = {n : y_n = k}: mean_entropy_k = (1/|S_k|) sum_{n in S_k} H_n,
        std_max_prob_k = sqrt((1/|S_k|) sum_{n in S_k} (m_n - mean m)^2)  (population form, ddof=0;
        the paper does not say which, numpy's default is used), H and m from ``entropy``/``normalized_max_prob``.
    """
    yt, p = _check_true_probs(y_true, probs)
    K = p.shape[1]
    names = _check_names(class_names, K)
    H = entropy(p)
    m = normalized_max_prob(p)
    rows = []
    for k in range(K):
        mask = yt == k
        count = int(mask.sum())
        mean_h = float(np.mean(H[mask])) if count else float("nan")
        std_m = float(np.std(m[mask])) if count else float("nan")
        label = uncertainty_label(mean_h, std_m, entropy_threshold, std_threshold)
        rows.append(ClassUncertainty(k, names[k], count, mean_h, std_m, label))
    return rows


def uncertainty_markdown(table: Sequence[ClassUncertainty], digits: int = 4) -> str:
    """Markdown table of ``uncertainty_table`` rows (class, n, mean entropy, std of max prob, uncertainty)."""
    lines = [
        "| class | n | mean entropy (nats) | std of normalized max prob | uncertainty |",
        "|---|---:|---:|---:|---|",
    ]
    for row in table:
        h, sd = f"{row.mean_entropy:.{digits}f}", f"{row.std_max_prob:.{digits}f}"
        lines.append(f"| {row.name} | {row.count} | {h} | {sd} | {row.label} |")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------------------
# calibration (not in the paper)
# ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReliabilityBins:
    """Data for a reliability diagram. ``edges`` (B+1,); per bin (B,): ``count`` (int64), ``confidence``
    (mean top-label confidence) and ``accuracy`` (fraction correct), both NaN for empty bins."""

    edges: np.ndarray
    count: np.ndarray
    confidence: np.ndarray
    accuracy: np.ndarray


def reliability_bins(y_true: object, probs: object, n_bins: int = 15) -> ReliabilityBins:
    """Bin samples by top-label confidence m_n = max p / sum p into ``n_bins`` equal-width bins of [0, 1].

    Bins are right-closed, B_b = (b/B, (b+1)/B] (the first also holds 0), as in Guo et al. (2017); a sample is
    correct when argmax_c p_nc == y_n (ties -> the lowest class index, np.argmax).
    Shapes: y_true: (N,), probs: (N, K).
    References: C. Guo et al., "On Calibration of Modern Neural Networks", ICML 2017.
    """
    if int(n_bins) != n_bins or n_bins < 1:
        raise ValueError(f"n_bins: expected an integer >= 1, got {n_bins}")
    n_bins = int(n_bins)
    yt, p = _check_true_probs(y_true, probs)
    conf = normalized_max_prob(p)
    correct = (np.argmax(p, axis=1) == yt).astype(np.float64)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    # number of inner edges strictly below conf = index of the right-closed bin holding conf
    idx = np.searchsorted(edges[1:-1], conf, side="left")
    count = np.bincount(idx, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.bincount(idx, weights=conf, minlength=n_bins) / count
        acc = np.bincount(idx, weights=correct, minlength=n_bins) / count
    return ReliabilityBins(edges, count, np.where(count > 0, mean_conf, np.nan), np.where(count > 0, acc, np.nan))


def expected_calibration_error(y_true: object, probs: object, n_bins: int = 15) -> float:
    """ECE = sum_b |B_b|/N * |acc(B_b) - conf(B_b)| over the non-empty bins of ``reliability_bins``.

    0 for a perfectly calibrated model; depends on n_bins (default 15, Guo et al. 2017).
    """
    bins = reliability_bins(y_true, probs, n_bins)
    full = bins.count > 0
    gaps = np.abs(bins.accuracy[full] - bins.confidence[full])
    return float(np.sum(bins.count[full] * gaps) / bins.count.sum())


def maximum_calibration_error(y_true: object, probs: object, n_bins: int = 15) -> float:
    """MCE = max_b |acc(B_b) - conf(B_b)| over the non-empty bins of ``reliability_bins``."""
    bins = reliability_bins(y_true, probs, n_bins)
    full = bins.count > 0
    return float(np.max(np.abs(bins.accuracy[full] - bins.confidence[full])))


# ---------------------------------------------------------------------------------------------------------
# intervals and McNemar's exact test (not in the paper)
# ---------------------------------------------------------------------------------------------------------

CONFIDENCE = 0.95
ACCURACY_INTERVAL = "clopper-pearson"  # the accuracy interval that report.md and results/README.md give
BOOTSTRAP_RESAMPLES = 2000
BOOTSTRAP_SEED = 0


@dataclass(frozen=True)
class Interval:
    """A two-sided confidence interval [low, high] at level ``confidence``, computed by ``method``."""

    low: float
    high: float
    confidence: float
    method: str


def _check_counts(successes: SupportsInt, trials: SupportsInt) -> tuple[int, int]:
    if int(trials) != trials or int(successes) != successes:
        raise ValueError(f"successes, trials: expected integers, got {successes!r}, {trials!r}")
    k, n = int(successes), int(trials)
    if n < 1:
        raise ValueError(f"trials: expected >= 1, got {n}")
    if not 0 <= k <= n:
        raise ValueError(f"successes: expected 0 <= successes <= trials = {n}, got {k}")
    return k, n


def _check_confidence(confidence: float) -> float:
    if not 0.0 < float(confidence) < 1.0:
        raise ValueError(f"confidence: expected a level in (0, 1), e.g. 0.95, got {confidence!r}")
    return float(confidence)


def clopper_pearson_interval(successes: int, trials: int, confidence: float = CONFIDENCE) -> Interval:
    """Exact (Clopper-Pearson) interval for a binomial proportion k / n.

    Math: with alpha = 1 - confidence and B^-1(q; a, b) the beta distribution's quantile (scipy.stats.beta.ppf),
        low = B^-1(alpha/2; k, n - k + 1)  (0 when k = 0),   high = B^-1(1 - alpha/2; k + 1, n - k)  (1 when k = n).
    Its coverage is at least ``confidence`` for every true proportion (it is conservative). For k = n the low end
    is (alpha/2)^(1/n): 0.99844 for 2,359 of 2,359 at 95 %.
    """
    k, n = _check_counts(successes, trials)
    alpha = 1.0 - _check_confidence(confidence)
    low = 0.0 if k == 0 else float(beta.ppf(alpha / 2, k, n - k + 1))
    high = 1.0 if k == n else float(beta.ppf(1 - alpha / 2, k + 1, n - k))
    return Interval(low, high, confidence, "clopper-pearson")


def wilson_interval(successes: int, trials: int, confidence: float = CONFIDENCE) -> Interval:
    """Wilson score interval for a binomial proportion p = k / n.

    Math: z = Phi^-1(1 - alpha/2) (1.95996 at 95 %),
        centre = (p + z^2 / 2n) / (1 + z^2 / n),   half = z / (1 + z^2 / n) * sqrt(p (1 - p) / n + z^2 / 4n^2).
    Narrower than Clopper-Pearson, with coverage close to (not always above) ``confidence``.
    """
    k, n = _check_counts(successes, trials)
    z = float(ndtri(1.0 - (1.0 - _check_confidence(confidence)) / 2))
    p = k / n
    denominator = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z / denominator * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    low = 0.0 if k == 0 else max(0.0, centre - half)  # exact ends at k = 0 and k = n (no rounding residue)
    high = 1.0 if k == n else min(1.0, centre + half)
    return Interval(low, high, confidence, "wilson")


INTERVALS = {"clopper-pearson": clopper_pearson_interval, "wilson": wilson_interval}


def accuracy_interval(y_true: object, y_pred: object, confidence: float = CONFIDENCE,
                      method: str = ACCURACY_INTERVAL) -> Interval:
    """Interval for the accuracy: ``method`` ("clopper-pearson" or "wilson") on (correct, N).

    Shapes: y_true, y_pred: (N,). Treats the N images as independent draws of the model's error rate.
    """
    if method not in INTERVALS:
        raise ValueError(f"method: expected one of {sorted(INTERVALS)}, got {method!r}")
    yt = _check_labels(y_true, "y_true")
    yp = _check_labels(y_pred, "y_pred", yt.shape[0])
    return INTERVALS[method](int(np.sum(yt == yp)), yt.shape[0], confidence)


def bootstrap_mean_interval(values: object, confidence: float = CONFIDENCE, n_resamples: int = BOOTSTRAP_RESAMPLES,
                            seed: int = BOOTSTRAP_SEED) -> Interval:
    """Percentile bootstrap interval for the mean of ``values`` (shape (N,)).

    Math: draw ``n_resamples`` samples of N indices with replacement (``np.random.default_rng(seed)``), take the
    mean of ``values`` over each, and return the alpha/2 and 1 - alpha/2 quantiles of those means (numpy's
    default linear interpolation). Same seed, same interval.
    """
    v = np.asarray(values, dtype=np.float64)
    if v.ndim != 1 or v.shape[0] == 0:
        raise ValueError(f"values: expected shape (N,) with N >= 1, got {v.shape}")
    if not np.all(np.isfinite(v)):
        raise ValueError("values: expected finite values, got NaN or inf")
    if int(n_resamples) != n_resamples or n_resamples < 1:
        raise ValueError(f"n_resamples: expected an integer >= 1, got {n_resamples!r}")
    alpha = 1.0 - _check_confidence(confidence)
    rng = np.random.default_rng(seed)
    n = v.shape[0]
    chunk = max(1, 2_000_000 // n)  # resamples per draw: bounded memory for any N
    means = np.concatenate([v[rng.integers(0, n, (min(chunk, int(n_resamples) - start), n))].mean(axis=1)
                            for start in range(0, int(n_resamples), chunk)])
    low, high = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    return Interval(float(low), float(high), confidence, f"percentile bootstrap, {int(n_resamples)} resamples")


def log_loss_interval(y_true: object, probs: object, confidence: float = CONFIDENCE,
                      n_resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED) -> Interval:
    """Bootstrap interval of :func:`log_loss`: :func:`bootstrap_mean_interval` of the per-image terms
    (:func:`per_sample_log_loss`). Shapes: y_true: (N,), probs: (N, K)."""
    return bootstrap_mean_interval(per_sample_log_loss(y_true, probs), confidence, n_resamples, seed)


def binomial_two_sided_p(k: int, n: int) -> float:
    """Exact two-sided p of k successes in n trials under Binomial(n, 1/2).

    Math: p = min(1, 2 P(X <= min(k, n - k))) = min(1, 2 sum_{i <= min(k, n-k)} C(n, i) / 2^n), in exact integer
    arithmetic; the distribution is symmetric, so this equals ``scipy.stats.binomtest(k, n, 0.5).pvalue``.
    n = 0 gives 1.
    """
    k, n = int(k), int(n)
    if n < 0 or not 0 <= k <= n:
        raise ValueError(f"k, n: expected 0 <= k <= n, got k={k}, n={n}")
    tail = sum(math.comb(n, i) for i in range(min(k, n - k) + 1))
    return float(min(Fraction(1), Fraction(2 * tail, 2**n)))


@dataclass(frozen=True)
class McNemarResult:
    """McNemar's exact test of two classifiers A and B on the same N images.

    ``only_a``: images A gets right and B wrong; ``only_b``: the reverse; ``both_wrong`` and ``n``
    complete the 2x2 table. ``p_value``: exact two-sided p (:func:`binomial_two_sided_p` on the discordant pairs).
    """

    only_a: int
    only_b: int
    both_wrong: int
    n: int
    p_value: float

    @property
    def discordant(self) -> int:
        return self.only_a + self.only_b


def mcnemar_exact(correct_a: object, correct_b: object) -> McNemarResult:
    """McNemar's exact test on paired per-image outcomes (shapes (N,), bool: True = classified correctly).

    Math: b = #{A right, B wrong}, c = #{A wrong, B right}; under H0 (equal error rates) b ~ Binomial(b + c, 1/2)
    given b + c, so p = binomial_two_sided_p(b, b + c); no discordant pair gives p = 1.
    """
    a, b = np.asarray(correct_a), np.asarray(correct_b)
    if a.ndim != 1 or a.shape != b.shape or a.shape[0] == 0:
        raise ValueError(f"correct_a, correct_b: expected two bool arrays of one shape (N,), got {a.shape}, {b.shape}")
    if a.dtype != bool or b.dtype != bool:
        raise ValueError(f"correct_a, correct_b: expected dtype bool, got {a.dtype}, {b.dtype}")
    only_a, only_b = int(np.sum(a & ~b)), int(np.sum(~a & b))
    return McNemarResult(only_a, only_b, int(np.sum(~a & ~b)), a.shape[0],
                         binomial_two_sided_p(only_a, only_a + only_b))


def mcnemar_test(y_true: object, y_pred_a: object, y_pred_b: object) -> McNemarResult:
    """:func:`mcnemar_exact` of two label predictions (shapes (N,)) against the same true labels."""
    yt = _check_labels(y_true, "y_true")
    ya = _check_labels(y_pred_a, "y_pred_a", yt.shape[0])
    yb = _check_labels(y_pred_b, "y_pred_b", yt.shape[0])
    return mcnemar_exact(ya == yt, yb == yt)


def mcnemar_exact_range(errors_a: object, errors_b: object, sizes: object | None = None) -> tuple[float, float]:
    """(smallest, largest) McNemar exact p over every pairing of two runs' errors that their per-class error counts
    allow, for two runs on the same images whose wrong images are not known one by one.

    Shapes: errors_a, errors_b, sizes: (K,) non-negative integers: errors per true class of A and B, and the images
    per class (``None``: no limit). An image wrong in both runs has one true class, so k_c images of class c are
    wrong in both with max(0, a_c + b_c - n_c) <= k_c <= min(a_c, b_c); for a total overlap k the test sees
    (A - k, B - k) discordant pairs. When one run has no error the range is a single value.
    """
    a, b = (np.asarray(e) for e in (errors_a, errors_b))
    n = np.full(a.shape, np.iinfo(np.int64).max) if sizes is None else np.asarray(sizes)
    if a.ndim != 1 or a.shape != b.shape or n.shape != a.shape:
        raise ValueError(f"errors_a, errors_b, sizes: expected one shape (K,), got {a.shape}, {b.shape}, {n.shape}")
    if min(a.min(), b.min()) < 0 or np.any(np.maximum(a, b) > n):
        raise ValueError("errors_a, errors_b: expected 0 <= errors <= sizes in every class")
    lowest = int(np.maximum(0, a + b - n).sum())
    highest = int(np.minimum(a, b).sum())
    ps = [binomial_two_sided_p(int(a.sum()) - k, int(a.sum() + b.sum()) - 2 * k) for k in range(lowest, highest + 1)]
    return min(ps), max(ps)


# ---------------------------------------------------------------------------------------------------------
# the paper's Table 2
# ---------------------------------------------------------------------------------------------------------

SUMMARY_COLUMNS = {
    "precision": "Precision",
    "recall": "Recall",
    "f1": "F1-score",
    "accuracy": "Accuracy",
    "kappa": "Kappa",
    "log_loss": "Log loss",
}


def summary(y_true: object, probs: object, class_names: Sequence[str] | None = None) -> dict[str, float]:
    """The paper's Table 2 from softmax outputs: macro precision, recall, F1, accuracy, kappa, log loss.

    Shapes: y_true: (N,), probs: (N, K); y_pred = argmax(probs) (ties -> lowest index). ``class_names`` is
    only checked to have K entries (a guard against a names list that does not match the model's outputs).
    Keys: "precision", "recall", "f1", "accuracy", "kappa", "log_loss".
    """
    yt, p = _check_true_probs(y_true, probs)
    K = p.shape[1]
    _check_names(class_names, K)
    yp = np.argmax(p, axis=1)
    prec, rec, f1, s = precision_recall_f1_support(yt, yp, K)
    return {
        "precision": float(_average(prec, s, "macro")),
        "recall": float(_average(rec, s, "macro")),
        "f1": float(_average(f1, s, "macro")),
        "accuracy": accuracy(yt, yp),
        "kappa": cohen_kappa(yt, yp, K),
        "log_loss": log_loss(yt, p),
    }


def summary_markdown(values: dict[str, float], digits: int = 4) -> str:
    """One-row markdown table in the paper's Table 2 column order, ``digits`` decimals (default 4).

    Note: the paper's "1.0000" (P/R/F1) and "0.99" (kappa) look like 2-decimal values; 4 digits show
    e.g. 0.9996 for one error in 2,359 images.
    """
    missing = [k for k in SUMMARY_COLUMNS if k not in values]
    if missing:
        raise ValueError(f"values: expected keys {list(SUMMARY_COLUMNS)}, missing {missing}")
    header = "| " + " | ".join(SUMMARY_COLUMNS.values()) + " |"
    rule = "|" + "---:|" * len(SUMMARY_COLUMNS)
    row = "| " + " | ".join(f"{values[k]:.{digits}f}" for k in SUMMARY_COLUMNS) + " |"
    return "\n".join([header, rule, row]) + "\n"
