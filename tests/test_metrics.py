"""minarn.metrics against scikit-learn (labels), scipy (entropy), numpy (std) and loop references (ECE).

Hypothesis draws the case structure (K, N, which classes are missing, dtype); a seeded RNG draws the numbers.
Label cases deliberately include classes never predicted, classes absent from y_true, a single true class,
perfect predictions and one error. The sklearn cross-checks skip cleanly without scikit-learn.
"""

from __future__ import annotations

import re
import warnings

import numpy as np
import pytest
import scipy.stats
from hypothesis import example, given, settings
from hypothesis import strategies as st

from minarn import metrics as M

FAST = settings(max_examples=60, deadline=None)
NAMES = ["AbdomenCT", "BreastMRI", "CXR", "ChestCT", "Hand", "HeadCT"]
LONG_NAMES = ["a", "a rather long class name", "c", "dd", "eee", "ffff"]


@pytest.fixture(scope="module")
def skm():
    pytest.importorskip("sklearn")
    import sklearn.metrics

    return sklearn.metrics


# --------------------------------------------------------------------------------------------------------
# strategies
# --------------------------------------------------------------------------------------------------------

LABEL_MODES = (
    "random",
    "never_predicted",  # one class never appears in y_pred
    "absent_true",  # one class never appears in y_true
    "unused_top",  # class K-1 in neither: only num_classes gives it a row
    "single_true",  # all y_true the same class, random y_pred
    "single_both",  # y_true == y_pred == one class: kappa's p_e == 1
    "perfect",
    "one_error",
)


@st.composite
def label_cases(draw, max_k: int = 6):
    """(K, y_true, y_pred) with labels in 0..K-1."""
    K = draw(st.integers(1, max_k))
    N = draw(st.integers(1, 40))
    mode = draw(st.sampled_from(LABEL_MODES))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    y_true = rng.integers(0, K, N)
    y_pred = rng.integers(0, K, N)
    others = lambda c: np.setdiff1d(np.arange(K), [c])
    c = int(rng.integers(0, K))
    if mode == "never_predicted" and K > 1:
        y_pred = rng.choice(others(c), N)
    elif mode == "absent_true" and K > 1:
        y_true = rng.choice(others(c), N)
    elif mode == "unused_top" and K > 1:
        y_true, y_pred = rng.integers(0, K - 1, N), rng.integers(0, K - 1, N)
    elif mode == "single_true":
        y_true = np.full(N, c)
    elif mode == "single_both":
        y_true, y_pred = np.full(N, c), np.full(N, c)
    elif mode == "perfect":
        y_pred = y_true.copy()
    elif mode == "one_error":
        y_pred = y_true.copy()
        i = int(rng.integers(0, N))
        y_pred[i] = (y_pred[i] + 1) % K
    return K, y_true, y_pred


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


@st.composite
def prob_cases(draw, min_k: int = 1, dtypes=(np.float64, np.float32)):
    """(K, y_true, probs): softmax rows (sum 1), from flat (scale 0.1) to saturated (scale 60: p < eps)."""
    K = draw(st.integers(min_k, 6))
    N = draw(st.integers(1, 40))
    scale = draw(st.sampled_from([0.1, 1.0, 5.0, 60.0]))
    zeros = draw(st.booleans())
    dtype = draw(st.sampled_from(dtypes))
    mode = draw(st.sampled_from(["random", "argmax", "single_true", "absent_true"]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    p = _softmax(scale * rng.standard_normal((N, K)))
    if zeros:  # exact zeros (0 ln 0, clipping at eps); the row maximum always survives
        keep = (rng.random((N, K)) < 0.5) | (p == p.max(axis=1, keepdims=True))
        p = np.where(keep, p, 0.0)
        p /= p.sum(axis=1, keepdims=True)
    y_true = rng.integers(0, K, N)
    if mode == "argmax":
        y_true = np.argmax(p, axis=1)
    elif mode == "single_true":
        y_true = np.full(N, int(rng.integers(0, K)))
    elif mode == "absent_true" and K > 1:
        y_true = rng.integers(0, K - 1, N)
    return K, y_true, p.astype(dtype)


# --------------------------------------------------------------------------------------------------------
# label metrics vs sklearn
# --------------------------------------------------------------------------------------------------------


@FAST
@given(case=label_cases())
@example(case=(3, np.array([1, 1, 1]), np.array([1, 1, 1])))
def test_confusion_matrix_and_accuracy_match_sklearn(skm, case):
    K, y_true, y_pred = case
    C = M.confusion_matrix(y_true, y_pred, num_classes=K)
    assert C.shape == (K, K)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # sklearn warns on a single label even with labels=[0]
        want = skm.confusion_matrix(y_true, y_pred, labels=list(range(K)))
    np.testing.assert_array_equal(C, want)
    assert M.accuracy(y_true, y_pred) == pytest.approx(skm.accuracy_score(y_true, y_pred), abs=1e-15)


@FAST
@given(case=label_cases())
@example(case=(4, np.array([0, 1, 1, 2]), np.array([0, 1, 1, 1])))  # class 2 never predicted, 3 unused
def test_precision_recall_f1_match_sklearn(skm, case):
    K, y_true, y_pred = case
    labels = list(range(K))
    p, r, f, s = M.precision_recall_f1_support(y_true, y_pred, K)
    ep, er, ef, es = skm.precision_recall_fscore_support(y_true, y_pred, labels=labels, average=None, zero_division=0)
    for got, want in ((p, ep), (r, er), (f, ef)):
        assert got.shape == (K,)
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-15)
    np.testing.assert_array_equal(s, es)
    for average in (None, "macro", "weighted"):
        ep, er, ef, _ = skm.precision_recall_fscore_support(
            y_true, y_pred, labels=labels, average=average, zero_division=0
        )
        np.testing.assert_allclose(M.precision_score(y_true, y_pred, K, average), ep, rtol=1e-12, atol=1e-15)
        np.testing.assert_allclose(M.recall_score(y_true, y_pred, K, average), er, rtol=1e-12, atol=1e-15)
        np.testing.assert_allclose(M.f1_score(y_true, y_pred, K, average), ef, rtol=1e-12, atol=1e-15)
        sk_f1 = skm.f1_score(y_true, y_pred, labels=labels, average=average, zero_division=0)
        np.testing.assert_allclose(M.f1_score(y_true, y_pred, K, average), sk_f1, rtol=1e-12, atol=1e-15)


@FAST
@given(case=label_cases())
@example(case=(3, np.array([2, 2]), np.array([2, 2])))  # p_e == 1
@example(case=(3, np.array([2, 2]), np.array([0, 1])))  # single true class, kappa defined (= 0)
def test_cohen_kappa_matches_sklearn(skm, case):
    K, y_true, y_pred = case
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        want = skm.cohen_kappa_score(y_true, y_pred, labels=list(range(K)))
        got = M.cohen_kappa(y_true, y_pred, num_classes=K)
    if np.isnan(want):
        assert np.isnan(got)
        with pytest.warns(M.UndefinedMetricWarning, match="p_e == 1"):
            M.cohen_kappa(y_true, y_pred, num_classes=K)
        with pytest.warns(M.UndefinedMetricWarning):
            assert M.cohen_kappa(y_true, y_pred, K, undefined=1.0) == 1.0
    else:
        assert got == pytest.approx(want, rel=1e-10, abs=1e-12)


def test_cohen_kappa_formula_by_hand():
    # C = [[20, 5], [10, 15]]: p_o = 35/50, p_e = (25*30 + 25*20)/50^2 = 0.5 -> kappa = (0.7 - 0.5)/0.5 = 0.4
    y_true = np.repeat([0, 0, 1, 1], [20, 5, 10, 15])
    y_pred = np.repeat([0, 1, 0, 1], [20, 5, 10, 15])
    assert M.cohen_kappa(y_true, y_pred) == pytest.approx(0.4, abs=1e-14)


@FAST
@given(case=label_cases(), long_names=st.booleans())
def test_classification_report_matches_sklearn(skm, case, long_names: bool):
    K, y_true, y_pred = case
    names = (LONG_NAMES if long_names else NAMES)[:K]
    labels = list(range(K))
    for digits in (4, 2):
        want_text = skm.classification_report(
            y_true, y_pred, labels=labels, target_names=names, digits=digits, zero_division=0
        )
        if not np.any(y_true == y_pred):
            # sklearn (seen in 1.9.1) prints supports as floats ("1.0") when there is no true positive at all;
            # ours stay integers. Same right-aligned width either way.
            want_text = re.sub(r"(\d+)\.0$", r"  \1", want_text, flags=re.MULTILINE)
        text = M.classification_report(y_true, y_pred, names) if digits == 4 else M.classification_report(
            y_true, y_pred, names, digits=digits
        )
        assert text == want_text
    got = M.classification_report_dict(y_true, y_pred, names)
    want = skm.classification_report(
        y_true, y_pred, labels=labels, target_names=names, zero_division=0, output_dict=True
    )
    assert list(got) == list(want)
    assert got["accuracy"] == pytest.approx(want["accuracy"], abs=1e-15)
    for key in [*names, "macro avg", "weighted avg"]:
        assert list(got[key]) == list(want[key])
        for metric, value in want[key].items():
            assert got[key][metric] == pytest.approx(value, rel=1e-12, abs=1e-15), (key, metric)


def test_num_classes_gives_unseen_classes_a_row_and_a_zero_score():
    y = np.array([0, 1, 1])
    assert M.confusion_matrix(y, y).shape == (2, 2)
    C = M.confusion_matrix(y, y, num_classes=4)
    np.testing.assert_array_equal(C, np.diag([1, 2, 0, 0]))
    np.testing.assert_array_equal(M.precision_score(y, y, 4, average=None), [1.0, 1.0, 0.0, 0.0])
    assert M.f1_score(y, y, average="macro") == 1.0
    assert M.f1_score(y, y, 4, average="macro") == 0.5  # the macro mean runs over all 4 classes
    assert M.f1_score(y, y, 4, average="weighted") == 1.0  # unseen classes have weight 0


# --------------------------------------------------------------------------------------------------------
# log loss
# --------------------------------------------------------------------------------------------------------


@FAST
@given(case=prob_cases(min_k=2))
def test_log_loss_matches_sklearn(skm, case):
    K, y_true, probs = case
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. "y_prob values do not sum to one" would mean a different input
        want = skm.log_loss(y_true, probs, labels=list(range(K)))
    tol = dict(rel=1e-5, abs=1e-6) if probs.dtype == np.float32 else dict(rel=1e-10, abs=1e-14)
    assert M.log_loss(y_true, probs) == pytest.approx(want, **tol)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_log_loss_clipping_caps_each_sample_at_minus_ln_eps(skm, dtype):
    eps = np.finfo(dtype).eps
    wrong = np.array([[0.0, 1.0]], dtype=dtype)  # p(true class 0) = 0
    assert M.log_loss([0], wrong) == pytest.approx(-np.log(eps), rel=1e-6)
    assert M.log_loss([0], wrong) == pytest.approx(skm.log_loss([0], wrong, labels=[0, 1]), rel=1e-6)
    # a perfect prediction costs -ln(1 - eps) ~ eps, not 0
    assert M.log_loss([1], wrong) == pytest.approx(-np.log1p(-float(eps)), rel=1e-6)
    # half confidently wrong: mean of the cap and ~0
    assert M.log_loss([0, 1], np.array([[0.0, 1.0], [0.0, 1.0]], dtype=dtype)) == pytest.approx(
        -np.log(eps) / 2, rel=1e-6
    )


@FAST
@given(case=prob_cases(dtypes=(np.float64,)), seed=st.integers(0, 2**32 - 1))
def test_log_loss_renormalises_rows(case, seed):
    _, y_true, probs = case
    scales = np.random.default_rng(seed).uniform(0.2, 5.0, (probs.shape[0], 1))
    assert M.log_loss(y_true, probs * scales) == pytest.approx(M.log_loss(y_true, probs), rel=1e-9, abs=1e-14)
    # and it is -mean ln p(true) of the renormalised rows, clipped at eps
    p = probs * scales
    eps = np.finfo(np.float64).eps
    p_true = np.clip((p / p.sum(axis=1, keepdims=True))[np.arange(len(y_true)), y_true], eps, 1 - eps)
    assert M.log_loss(y_true, probs * scales) == pytest.approx(-np.mean(np.log(p_true)), rel=1e-9, abs=1e-14)


# --------------------------------------------------------------------------------------------------------
# entropy, normalized max prob, uncertainty tables (Eq. 8-11)
# --------------------------------------------------------------------------------------------------------


@FAST
@given(case=prob_cases(), seed=st.integers(0, 2**32 - 1))
def test_entropy_matches_scipy_on_unnormalised_rows_with_zeros(case, seed):
    K, _, probs = case
    scaled = probs.astype(np.float64) * np.random.default_rng(seed).uniform(0.1, 10.0, (probs.shape[0], 1))
    H = M.entropy(scaled)
    np.testing.assert_allclose(H, scipy.stats.entropy(scaled, axis=1), rtol=1e-12, atol=1e-15)
    assert np.all(H >= 0) and np.all(H <= np.log(K) + 1e-12)
    np.testing.assert_allclose(M.normalized_max_prob(scaled), scaled.max(axis=1) / scaled.sum(axis=1), rtol=1e-15)


@FAST
@given(case=prob_cases())
@example(case=(3, np.array([0, 0, 2]), np.array([[0.5, 0.5, 0.0], [1.0, 0.0, 0.0], [0.2, 0.3, 0.5]])))
def test_uncertainty_table_per_true_class(case):
    K, y_true, probs = case
    names = NAMES[:K]
    table = M.uncertainty_table(y_true, probs, names)
    assert [row.class_index for row in table] == list(range(K))
    assert [row.name for row in table] == names
    H = scipy.stats.entropy(probs.astype(np.float64), axis=1)
    m = probs.max(axis=1).astype(np.float64) / probs.astype(np.float64).sum(axis=1)
    for k, row in enumerate(table):
        mask = y_true == k
        assert row.count == int(mask.sum())
        if row.count == 0:
            assert np.isnan(row.mean_entropy) and np.isnan(row.std_max_prob) and row.label == "n/a"
            continue
        assert row.mean_entropy == pytest.approx(np.mean(H[mask]), rel=1e-9, abs=1e-12)
        assert row.std_max_prob == pytest.approx(np.std(m[mask]), rel=1e-6, abs=1e-12)  # ddof=0
        assert row.label == ("low" if row.mean_entropy < 0.1 and row.std_max_prob < 0.1 else "moderate")


def test_uncertainty_std_is_population_form():
    probs = np.array([[1.0, 0.0], [0.5, 0.5]])  # normalized max prob 1.0 and 0.5
    (row, _) = M.uncertainty_table([0, 0], probs)
    assert row.std_max_prob == pytest.approx(0.25)  # ddof=1 would give 0.3536
    assert row.mean_entropy == pytest.approx(np.log(2) / 2)


def test_uncertainty_labels_follow_both_thresholds():
    sure = [0.999, 0.001]
    # class 0: all confident -> low; class 1: 19 confident + 1 coin flip -> mean H 0.042 < 0.1 but std 0.109
    # -> moderate; class 2: all uniform -> H = ln 2, std 0 -> moderate; class 3: no sample -> n/a
    probs = np.array([sure] * 5 + [sure] * 19 + [[0.5, 0.5]] + [[0.5, 0.5]] * 3)
    probs = np.hstack([probs, np.zeros((len(probs), 2))])
    y_true = np.repeat([0, 1, 2], [5, 20, 3])
    table = M.uncertainty_table(y_true, probs)
    assert table[1].mean_entropy < 0.1 < table[1].std_max_prob
    assert [row.label for row in table] == ["low", "moderate", "moderate", "n/a"]
    loose = M.uncertainty_table(y_true, probs, std_threshold=0.2)
    assert [row.label for row in loose] == ["low", "low", "moderate", "n/a"]
    md = M.uncertainty_markdown(M.uncertainty_table(y_true, probs, ["a", "b", "c", "d"]))
    lines = md.strip().splitlines()
    assert len(lines) == 2 + 4
    assert lines[2] == f"| a | 5 | {table[0].mean_entropy:.4f} | 0.0000 | low |"
    assert lines[4] == f"| c | 3 | {np.log(2):.4f} | 0.0000 | moderate |"
    assert lines[5] == "| d | 0 | nan | nan | n/a |"


# --------------------------------------------------------------------------------------------------------
# calibration
# --------------------------------------------------------------------------------------------------------


def _calibration_loop(y_true, probs, n_bins):
    """Reference: one pass over the samples per bin; bins (lo, hi], the first also holds 0."""
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    n = len(y_true)
    ece, gaps, counts = 0.0, [], []
    for b in range(n_bins):
        lo, hi = edges[b], edges[b + 1]
        confs, hits = [], []
        for i in range(n):
            row = probs[i].astype(np.float64)
            conf = float(row.max() / row.sum())
            if lo < conf <= hi or (b == 0 and conf == 0.0):
                confs.append(conf)
                hits.append(float(int(np.argmax(row)) == int(y_true[i])))
        counts.append(len(confs))
        if confs:
            gap = abs(sum(hits) / len(hits) - sum(confs) / len(confs))
            ece += len(confs) / n * gap
            gaps.append(gap)
    return ece, max(gaps), counts


@FAST
@given(case=prob_cases(), n_bins=st.integers(1, 20), seed=st.integers(0, 2**32 - 1))
@example(case=(2, np.array([0, 1, 0]), np.array([[0.5, 0.5], [0.75, 0.25], [1.0, 0.0]])), n_bins=4, seed=0)
def test_ece_and_mce_match_loop(case, n_bins, seed):
    K, y_true, probs = case
    if K == 2:  # put some confidences exactly on bin edges: c + (1 - c) == 1 exactly for c in [0.5, 1]
        rng = np.random.default_rng(seed)
        edges = np.linspace(0.0, 1.0, n_bins + 1)
        on_edge = edges[edges >= 0.5]
        rows = rng.random(len(y_true)) < 0.5
        c = rng.choice(on_edge, rows.sum())
        probs = probs.copy()
        probs[rows] = np.stack([c, 1 - c], axis=1).astype(probs.dtype)
    ece, mce, counts = _calibration_loop(y_true, probs, n_bins)
    assert M.expected_calibration_error(y_true, probs, n_bins) == pytest.approx(ece, rel=1e-9, abs=1e-12)
    assert M.maximum_calibration_error(y_true, probs, n_bins) == pytest.approx(mce, rel=1e-9, abs=1e-12)
    bins = M.reliability_bins(y_true, probs, n_bins)
    np.testing.assert_array_equal(bins.count, counts)
    assert bins.edges.shape == (n_bins + 1,) and bins.count.sum() == len(y_true)
    full = bins.count > 0
    assert np.all(np.isnan(bins.confidence[~full])) and np.all(np.isnan(bins.accuracy[~full]))
    assert np.all(bins.confidence[full] > bins.edges[:-1][full] - 1e-12)
    assert np.all(bins.confidence[full] <= bins.edges[1:][full] + 1e-12)
    assert np.all((bins.accuracy[full] >= 0) & (bins.accuracy[full] <= 1))


def test_reliability_bins_are_right_closed():
    probs = np.array([[0.5, 0.5], [0.75, 0.25], [1.0, 0.0]])
    bins = M.reliability_bins([0, 0, 1], probs, n_bins=4)  # edges 0, .25, .5, .75, 1
    np.testing.assert_array_equal(bins.count, [0, 1, 1, 1])
    np.testing.assert_allclose(bins.confidence, [np.nan, 0.5, 0.75, 1.0])
    np.testing.assert_allclose(bins.accuracy, [np.nan, 1.0, 1.0, 0.0])


def _two_class_rows(confidence, n_correct, n_total):
    """n_total rows predicting class 0 with the given confidence, n_correct of them truly class 0."""
    probs = np.tile([confidence, 1.0 - confidence], (n_total, 1))
    y_true = np.array([0] * n_correct + [1] * (n_total - n_correct))
    return y_true, probs


def test_ece_zero_for_a_perfectly_calibrated_construction():
    parts = [_two_class_rows(0.6, 3, 5), _two_class_rows(0.8, 8, 10), _two_class_rows(1.0, 4, 4)]
    y_true = np.concatenate([p[0] for p in parts])
    probs = np.concatenate([p[1] for p in parts])
    for n_bins in (1, 10, 15):
        assert M.expected_calibration_error(y_true, probs, n_bins) == pytest.approx(0.0, abs=1e-12)
        assert M.maximum_calibration_error(y_true, probs, n_bins) == pytest.approx(0.0, abs=1e-12)


def test_ece_and_mce_of_a_known_miscalibration():
    # 10 samples at confidence 0.9, 5 correct (gap 0.4); 10 at 0.6, 6 correct (gap 0)
    parts = [_two_class_rows(0.9, 5, 10), _two_class_rows(0.6, 6, 10)]
    y_true = np.concatenate([p[0] for p in parts])
    probs = np.concatenate([p[1] for p in parts])
    assert M.expected_calibration_error(y_true, probs) == pytest.approx(0.2, abs=1e-12)
    assert M.maximum_calibration_error(y_true, probs) == pytest.approx(0.4, abs=1e-12)
    # one bin pools both groups: conf 0.75, acc 0.55
    assert M.expected_calibration_error(y_true, probs, n_bins=1) == pytest.approx(0.2, abs=1e-12)
    assert M.maximum_calibration_error(y_true, probs, n_bins=1) == pytest.approx(0.2, abs=1e-12)
    assert M.maximum_calibration_error(y_true, probs, n_bins=4) == pytest.approx(0.4, abs=1e-12)


# --------------------------------------------------------------------------------------------------------
# Table 2 summary
# --------------------------------------------------------------------------------------------------------


@FAST
@given(case=prob_cases(min_k=2))
def test_summary_matches_sklearn(skm, case):
    K, y_true, probs = case
    y_pred = np.argmax(probs, axis=1)
    labels = list(range(K))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", M.UndefinedMetricWarning)  # kappa 0/0 when one class is everywhere
        got = M.summary(y_true, probs, NAMES[:K])
    assert list(got) == ["precision", "recall", "f1", "accuracy", "kappa", "log_loss"]
    p, r, f, _ = skm.precision_recall_fscore_support(y_true, y_pred, labels=labels, average="macro", zero_division=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        kappa = skm.cohen_kappa_score(y_true, y_pred, labels=labels)
    assert got["precision"] == pytest.approx(p, rel=1e-12, abs=1e-15)
    assert got["recall"] == pytest.approx(r, rel=1e-12, abs=1e-15)
    assert got["f1"] == pytest.approx(f, rel=1e-12, abs=1e-15)
    assert got["accuracy"] == pytest.approx(skm.accuracy_score(y_true, y_pred), abs=1e-15)
    assert got["kappa"] == pytest.approx(kappa, rel=1e-10, abs=1e-12, nan_ok=True)
    tol = dict(rel=1e-5, abs=1e-6) if probs.dtype == np.float32 else dict(rel=1e-10, abs=1e-14)
    assert got["log_loss"] == pytest.approx(skm.log_loss(y_true, probs, labels=labels), **tol)


def test_summary_markdown_of_the_papers_one_error_case():
    # Medical MNIST test split (docs/training-spec.md section 2); one AbdomenCT image predicted as ChestCT
    y_true = np.repeat(np.arange(6), [400, 359, 400, 400, 400, 400])
    y_pred = y_true.copy()
    y_pred[0] = 3
    probs = np.full((len(y_true), 6), 1e-4)
    probs[np.arange(len(y_true)), y_pred] = 1 - 5e-4
    values = M.summary(y_true, probs, NAMES)
    assert values["accuracy"] == pytest.approx(2358 / 2359)
    md = M.summary_markdown(values).strip().splitlines()
    assert md[0] == "| Precision | Recall | F1-score | Accuracy | Kappa | Log loss |"
    assert md[2] == f"| 0.9996 | 0.9996 | 0.9996 | 0.9996 | 0.9995 | {values['log_loss']:.4f} |"
    assert M.summary_markdown(values, digits=2).strip().splitlines()[2].startswith("| 1.00 | 1.00 | 1.00 | 1.00 |")
    with pytest.raises(ValueError, match="missing \\['kappa'\\]"):
        M.summary_markdown({k: v for k, v in values.items() if k != "kappa"})


# --------------------------------------------------------------------------------------------------------
# intervals and McNemar's exact test
# --------------------------------------------------------------------------------------------------------


def test_clopper_pearson_hand_cases_and_definition():
    # k = n: low = (alpha/2)^(1/n); k = 0: high = 1 - (alpha/2)^(1/n) (solve P(X = n) = alpha/2 by hand)
    all_right = M.clopper_pearson_interval(2359, 2359)
    assert all_right.low == pytest.approx(0.025 ** (1 / 2359), rel=1e-12) and all_right.high == 1.0
    assert all_right.method == "clopper-pearson" and all_right.confidence == 0.95
    none_right = M.clopper_pearson_interval(0, 10, confidence=0.9)
    assert none_right.low == 0.0 and none_right.high == pytest.approx(1 - 0.05 ** (1 / 10), rel=1e-12)
    # inside: the ends are where the binomial tails equal alpha/2
    ci = M.clopper_pearson_interval(2358, 2359)
    assert scipy.stats.binom.sf(2357, 2359, ci.low) == pytest.approx(0.025, rel=1e-8)
    assert scipy.stats.binom.cdf(2358, 2359, ci.high) == pytest.approx(0.025, rel=1e-8)


def test_wilson_hand_case():
    # 5 of 10 at 95 %: centre 0.5, half-width z/(1 + z^2/10) * sqrt(0.025 + z^2/400), z = 1.959964
    z = 1.959963984540054
    half = z / (1 + z * z / 10) * np.sqrt(0.025 + z * z / 400)
    ci = M.wilson_interval(5, 10)
    assert (ci.low, ci.high) == pytest.approx((0.5 - half, 0.5 + half), abs=1e-12)
    assert (round(ci.low, 4), round(ci.high, 4)) == (0.2366, 0.7634)
    assert M.wilson_interval(2359, 2359).low == pytest.approx(2359 / (2359 + z * z), rel=1e-12)


@given(st.integers(1, 300), st.data())
@FAST
def test_intervals_match_scipy_binomtest(n, data):
    k = data.draw(st.integers(0, n))
    confidence = data.draw(st.sampled_from([0.8, 0.95, 0.99]))
    result = scipy.stats.binomtest(k, n)
    for method, ours in (("exact", M.clopper_pearson_interval), ("wilson", M.wilson_interval)):
        ref = result.proportion_ci(confidence_level=confidence, method=method)
        got = ours(k, n, confidence)
        assert (got.low, got.high) == pytest.approx((ref.low, ref.high), abs=1e-9), method
        assert got.low <= k / n <= got.high


def test_accuracy_interval_counts_the_correct_labels():
    y = np.repeat(np.arange(6), [400, 359, 400, 400, 400, 400])
    pred = y.copy()
    pred[5] = 3
    assert M.accuracy_interval(y, pred) == M.clopper_pearson_interval(2358, 2359)
    assert M.accuracy_interval(y, pred, method="wilson") == M.wilson_interval(2358, 2359)
    with pytest.raises(ValueError, match="method: expected one of"):
        M.accuracy_interval(y, pred, method="normal")


def test_bootstrap_is_seeded_and_matches_a_direct_resampling():
    rng = np.random.default_rng(5)
    values = rng.exponential(size=3000)  # 3,000 values: the resamples are drawn in several chunks
    got = M.bootstrap_mean_interval(values, n_resamples=700, seed=11)
    idx = np.random.default_rng(11).integers(0, 3000, (700, 3000))  # one draw of every resample at once
    low, high = np.quantile(values[idx].mean(axis=1), [0.025, 0.975])
    assert (got.low, got.high) == pytest.approx((low, high), rel=1e-12)
    assert got == M.bootstrap_mean_interval(values, n_resamples=700, seed=11)
    assert got != M.bootstrap_mean_interval(values, n_resamples=700, seed=12)
    assert got.low < values.mean() < got.high
    constant = M.bootstrap_mean_interval(np.full(50, 0.25))
    assert (constant.low, constant.high) == (0.25, 0.25)


def test_log_loss_interval_brackets_the_log_loss_of_one_error():
    y = np.repeat(np.arange(6), [400, 359, 400, 400, 400, 400])
    probs = np.full((len(y), 6), 1e-4)
    probs[np.arange(len(y)), y] = 1 - 5e-4
    probs[0] = [0.3, 0.0, 0.0, 0.7, 0.0, 0.0]  # the one error: p(true) = 0.3
    terms = M.per_sample_log_loss(y, probs)
    assert terms.mean() == pytest.approx(M.log_loss(y, probs), rel=1e-15)
    assert terms[0] == pytest.approx(-np.log(0.3))
    ci = M.log_loss_interval(y, probs)
    assert ci.low < M.log_loss(y, probs) < ci.high
    # a resample without the error image has log loss -ln(1 - 5e-4); P(no copy of it) = (1 - 1/N)^N ~ 0.37 > 2.5 %
    assert ci.low == pytest.approx(-np.log(1 - 5e-4), rel=1e-9)


@pytest.mark.parametrize("k, n, p", [(0, 0, 1.0), (1, 1, 1.0), (0, 3, 0.25), (0, 5, 0.0625), (0, 6, 0.03125),
                                     (2, 10, 112 / 1024), (8, 10, 112 / 1024), (5, 10, 1.0), (3, 4, 0.625)])
def test_binomial_two_sided_p_hand_cases(k, n, p):
    assert M.binomial_two_sided_p(k, n) == p


def test_binomial_two_sided_p_matches_scipy_binomtest():
    for n in range(1, 41):
        for k in range(n + 1):
            assert M.binomial_two_sided_p(k, n) == pytest.approx(scipy.stats.binomtest(k, n, 0.5).pvalue,
                                                                rel=1e-12), (k, n)


def test_mcnemar_exact_by_hand_and_against_binomtest():
    # 2,359 images: A wrong on 1 image, B wrong on 4 others and on A's; b = 4 (only A right), c = 0
    correct_a = np.ones(2359, bool)
    correct_a[0] = False
    correct_b = correct_a.copy()
    correct_b[1:5] = False
    result = M.mcnemar_exact(correct_a, correct_b)
    assert (result.only_a, result.only_b, result.both_wrong, result.n) == (4, 0, 1, 2359)
    assert result.discordant == 4 and result.p_value == 2 / 16
    assert M.mcnemar_exact(correct_b, correct_a).p_value == result.p_value  # symmetric
    assert M.mcnemar_exact(correct_a, correct_a).p_value == 1.0  # no discordant pair
    rng = np.random.default_rng(0)
    for _ in range(20):
        a, b = rng.random(200) < 0.9, rng.random(200) < 0.8
        r = M.mcnemar_exact(a, b)
        assert r.p_value == pytest.approx(scipy.stats.binomtest(r.only_a, r.discordant, 0.5).pvalue, rel=1e-12)
    y = np.array([0, 1, 2, 2, 1])
    assert M.mcnemar_test(y, np.array([0, 1, 2, 2, 1]), np.array([1, 0, 0, 2, 1])).only_a == 3


def _brute_force_mcnemar_range(errors_a, errors_b, sizes):
    """Every way to choose which images of each class the two runs get wrong: min and max p."""
    import itertools

    per_class = []
    for a, b, n in zip(errors_a, errors_b, sizes):
        per_class.append([(set(wa), set(wb)) for wa in itertools.combinations(range(n), a)
                          for wb in itertools.combinations(range(n), b)])
    ps = []
    for choice in itertools.product(*per_class):
        only_a = sum(len(wb - wa) for wa, wb in choice)
        only_b = sum(len(wa - wb) for wa, wb in choice)
        ps.append(M.binomial_two_sided_p(only_a, only_a + only_b))
    return min(ps), max(ps)


@pytest.mark.parametrize("errors_a, errors_b, sizes", [([0, 1], [2, 1], [3, 2]), ([1, 1], [1, 0], [3, 3]),
                                                       ([2, 0], [2, 3], [3, 4]), ([0, 0], [3, 2], [3, 2]),
                                                       ([3, 1], [2, 2], [4, 2])])
def test_mcnemar_range_is_the_brute_force_range(errors_a, errors_b, sizes):
    assert M.mcnemar_exact_range(errors_a, errors_b, sizes) == _brute_force_mcnemar_range(errors_a, errors_b, sizes)


def test_mcnemar_range_hand_cases():
    # one run without error: the other's errors are all discordant, one value (3 errors: p = 2/8)
    assert M.mcnemar_exact_range([0, 0, 0], [1, 0, 2]) == (0.25, 0.25)
    # A: 1 Hand error, B: 2 Hand + 1 CXR; overlap 0 gives (1, 3), p = 10/16; overlap 1 gives (0, 2), p = 8/16
    assert M.mcnemar_exact_range([0, 1], [1, 2]) == (0.5, 0.625)


# --------------------------------------------------------------------------------------------------------
# validation: errors name the argument, the expected and the received shape
# --------------------------------------------------------------------------------------------------------

Y5 = np.array([0, 1, 2, 0, 1])
P5 = np.full((5, 3), 1 / 3)

BAD_CALLS = [
    (M.accuracy, (Y5, Y5[:4]), r"y_pred: expected shape \(5,\), got \(4,\)"),
    (M.confusion_matrix, (np.zeros((5, 3), int), Y5), r"y_true: expected shape \(N,\).*got \(5, 3\)"),
    (M.f1_score, (Y5, Y5.reshape(5, 1)), r"y_pred: expected shape \(5,\).*got \(5, 1\)"),
    (M.cohen_kappa, (Y5, Y5[:3]), r"y_pred: expected shape \(5,\), got \(3,\)"),
    (M.log_loss, (Y5, P5[:4]), r"probs: expected shape \(5, K\), got \(4, 3\)"),
    (M.log_loss, (Y5, P5[:, 0]), r"probs: expected shape \(5, K\), got \(5,\)"),
    (M.entropy, (P5[0],), r"probs: expected shape \(N, K\), got \(3,\)"),
    (M.normalized_max_prob, (P5[None],), r"probs: expected shape \(N, K\), got \(1, 5, 3\)"),
    (M.uncertainty_table, (Y5[:4], P5), r"probs: expected shape \(4, K\), got \(5, 3\)"),
    (M.expected_calibration_error, (Y5, P5[:2]), r"probs: expected shape \(5, K\), got \(2, 3\)"),
    (M.reliability_bins, (Y5, P5, 0), r"n_bins: expected an integer >= 1, got 0"),
    (M.summary, (Y5, P5, NAMES[:2]), r"class_names: expected 3 names, got 2"),
    (M.classification_report, (Y5, Y5, NAMES[:2]), r"labels: expected values < num_classes=2, got 2"),
    (M.log_loss, (np.array([0, 3]), P5[:2]), r"y_true: expected labels < K=3 \(columns of probs\), got 3"),
    (M.confusion_matrix, (Y5, Y5, 2), r"labels: expected values < num_classes=2, got 2"),
    (M.accuracy, (Y5.astype(float), Y5), r"y_true: expected integer class labels, got dtype float64"),
    (M.accuracy, (np.array([0, -1]), np.array([0, 0])), r"y_true: expected labels >= 0, got -1"),
    (M.accuracy, (np.array([], int), np.array([], int)), r"y_true: expected at least one sample, got shape \(0,\)"),
    (M.entropy, (np.array([[0.5, -0.1]]),), r"probs: expected values >= 0"),
    (M.entropy, (np.array([[0.5, np.nan]]),), r"probs: expected finite values"),
    (M.entropy, (np.array([[0.0, 0.0]]),), r"probs: expected every row to have a positive sum"),
    (M.precision_score, (Y5, Y5, 3, "micro"), r"average: expected one of"),
    (M.classification_report_dict, (Y5, Y5, ["a", "a", "b"]), r"class_names: expected unique names"),
    (M.clopper_pearson_interval, (11, 10), r"successes: expected 0 <= successes <= trials = 10, got 11"),
    (M.wilson_interval, (0, 0), r"trials: expected >= 1, got 0"),
    (M.wilson_interval, (1.5, 3), r"successes, trials: expected integers"),
    (M.clopper_pearson_interval, (1, 3, 95), r"confidence: expected a level in \(0, 1\)"),
    (M.bootstrap_mean_interval, (np.zeros((2, 2)),), r"values: expected shape \(N,\) with N >= 1, got \(2, 2\)"),
    (M.bootstrap_mean_interval, (np.array([1.0, np.inf]),), r"values: expected finite values"),
    (M.bootstrap_mean_interval, (np.ones(3), 0.95, 0), r"n_resamples: expected an integer >= 1, got 0"),
    (M.mcnemar_exact, (np.ones(3, bool), np.ones(4, bool)), r"expected two bool arrays of one shape"),
    (M.mcnemar_exact, (np.ones(3), np.ones(3)), r"expected dtype bool, got float64"),
    (M.mcnemar_test, (Y5, Y5, Y5[:4]), r"y_pred_b: expected shape \(5,\), got \(4,\)"),
    (M.mcnemar_exact_range, ([1, 0], [0]), r"expected one shape \(K,\)"),
    (M.mcnemar_exact_range, ([3, 0], [0, 0], [2, 2]), r"expected 0 <= errors <= sizes"),
    (M.binomial_two_sided_p, (4, 3), r"k, n: expected 0 <= k <= n, got k=4, n=3"),
]


@pytest.mark.parametrize("fn, args, message", BAD_CALLS, ids=[f"{c[0].__name__}-{i}" for i, c in enumerate(BAD_CALLS)])
def test_bad_inputs_raise_value_error_naming_the_argument(fn, args, message):
    with pytest.raises(ValueError, match=message):
        fn(*args)
