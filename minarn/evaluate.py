"""``python -m minarn.evaluate``: the paper's evaluation of a finished training run, as ``report.md`` and figures.

Usage::

    python -m minarn.evaluate RUN_DIR [RUN_DIR ...] [--data PATH] [--cache-dir DIR] [--checkpoint]
    python -m minarn.evaluate --compare RUN_DIR RUN_DIR [...] [--by OPTION] [--out FILE.png] [--data PATH]

The first form rebuilds the run's test split from its ``config.json`` (data source, ``--limit-per-class``,
``--dedupe``, split seed 123, exactly as ``minarn.train`` made it; ``--data`` points to the data when the run
folder moved to another machine), loads ``model.npz`` and writes into the run folder:

- ``report.md``: the paper's Table 2 (macro precision, recall, F1, accuracy, Cohen's kappa, log loss, 4 decimals)
  with 95 % intervals (Clopper-Pearson for the accuracy, a seeded percentile bootstrap for the log loss), Table 3
  (mean entropy of the prediction per true class), Table 4 (std of the normalized maximum probability per
  true class), the per-class report, the confusion matrix, the misclassified images by file, calibration (ECE,
  MCE) and the duplicate leakage of the split (test images with a byte-identical copy in train);
- ``test_predictions.csv``: one row per test image (``path``, true ``label``, ``predicted`` class, ``p_true``, the
  probability given to the true class), the paired predictions that ``--compare`` tests;
- ``figures/*.png``: Fig. 3-9 of the paper, a reliability diagram and Grad-CAM of the misclassified test images
  (``minarn.figures``).

With ``--checkpoint`` the first form evaluates a run that is still training: the best weights so far, which
the run's ``checkpoint.npz`` holds (the epoch-end controller's ``best_weights``), go through the same evaluation,
written into ``RUN_DIR/interim/`` (``report.md``, ``test.json`` and, unless ``--no-figures``, ``figures/``) so
that the run folder itself stays as training left it. The test split plays no part in training, so looking at
it midway changes nothing; the final result is still the one ``minarn.train`` computes at the end.

The second form draws Fig. 10, the loss per epoch of runs that differ in the dense layer's activation, or with
``--by OPTION`` the same plot for runs that differ in another training option (``--by seed``: the spread
between seeds). It then tests every pair of the runs with McNemar's exact test on their paired test predictions:
each run's ``test_predictions.csv``, or, for a run folder without one, the predictions of its ``model.npz`` on
its test split (rebuilt from the data as above, so ``--data`` may be needed). The runs must share their test
images (same data, ``--dedupe`` and ``--limit-per-class``), else it is an error; a run with neither file is named
and left out of the test.
Exit status: 0 done, 2 bad usage or unreadable run/data (one line on stderr).
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import sys
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from minarn import figures, kernels, metrics
from minarn.cli import Parser, UsageError
from minarn.data import (
    SPLIT_FRACTIONS,
    DataError,
    Dataset,
    Splits,
    copies_in_train,
    duplicate_groups,
    load_mednist,
    sample_path,
)
from minarn.gradcam import gradcam
from minarn.model import ARNCNN, load_model
from minarn.run import (
    build_training,
    data_identity,
    evaluate_split,
    input_format,
    load_checkpoint,
    select_and_split,
)

__all__ = ["INTERIM_DIR", "PREDICTIONS", "EvaluationError", "LoadedRun", "TestPredictions", "compare_runs",
           "evaluate_loaded_run", "evaluate_run", "load_run", "load_run_splits", "main", "mcnemar_runs",
           "read_predictions", "write_predictions"]

Report = Callable[[str], Any]
INTERIM_DIR = "interim"  # where --checkpoint writes, inside the run folder
PREDICTIONS = "test_predictions.csv"  # per-image test predictions, in the run folder
PREDICTION_COLUMNS = ("path", "label", "predicted", "p_true")
SIGNIFICANCE = 0.05  # the level at which --compare calls a difference distinguishable from chance
MISCLASSIFIED_SHOWN = 6  # images in the Grad-CAM figure of the misclassified test images (each shown twice)


class EvaluationError(ValueError):
    """The run folder or its data cannot be used: reported as one line, exit status 2."""


# ---------------------------------------------------------------------------------------------------------
# the run folder
# ---------------------------------------------------------------------------------------------------------


def _read_config(run_dir: Path) -> dict[str, Any]:
    if not run_dir.is_dir():
        raise EvaluationError(f"{run_dir}: no such run folder")
    path = run_dir / "config.json"
    if not path.is_file():
        raise EvaluationError(f"{run_dir}: no config.json (not a minarn.train run folder?)")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
        config["options"], config["class_names"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise EvaluationError(f"{path}: unreadable run configuration ({type(err).__name__}: {err})") from None
    return config


def _data_source(config: dict[str, Any], data: str | None) -> str:
    """--data if given; the shipped sample of this installation for runs trained on it; else the saved path."""
    if data:
        return str(data)
    if not config["options"].get("data"):
        return str(sample_path())
    source = str(config.get("data_source") or config["options"]["data"])
    if not Path(source).exists():
        raise EvaluationError(f"the run's data source {source} does not exist here; pass --data PATH")
    return source


def _model_input(config: dict[str, Any]) -> tuple[int, int]:
    """(image size, channels) the run's model takes: its ``input_shape`` in config.json (which train writes
    from the model), else the run's options (64x64 grayscale before --image-size and --channels)."""
    shape = (config.get("model") or {}).get("input_shape")
    if not shape:
        return input_format(config["options"])
    try:
        height, width, channels = (int(v) for v in shape)
    except (TypeError, ValueError):
        raise EvaluationError(f"config.json: model input_shape {shape!r} is not (height, width, channels)") from None
    if height != width or channels not in (1, 3):
        raise EvaluationError(f"config.json: model input_shape {shape!r}: only square 1- or 3-channel inputs are "
                              "supported")
    return height, channels


def _split_words(ds: Dataset, options: dict[str, Any]) -> str:
    """How the run split its data: "stratified 90 / 6 / 4 %, seed 123", or "the dataset's own train/, valid/ and
    test/ folders"."""
    if ds.part is not None:
        return "the dataset's own train/, valid/ and test/ folders"
    fractions = options.get("split") or SPLIT_FRACTIONS
    return "stratified " + " / ".join(f"{100 * float(f):g}" for f in fractions) + " %, seed 123"


def load_run_splits(run_dir: str | Path, data: str | None = None, cache_dir: str | None = None,
                    report: Report | None = None) -> tuple[Splits, Dataset, dict[str, Any], list[str]]:
    """The train / valid / test split of a run, rebuilt as ``minarn.train`` built it.

    Returns (splits, the dataset before splitting, config.json as a dict, warnings). A split whose class
    counts differ from the ones saved in config.json (other data under the same path) gives a warning.
    """
    run_dir = Path(run_dir)
    config = _read_config(run_dir)
    options = config["options"]
    source = _data_source(config, data)
    size, channels = _model_input(config)
    ds = load_mednist(source, image_size=size, channels=channels, cache_dir=cache_dir, report=report)
    if list(ds.class_names) != list(config["class_names"]):
        raise EvaluationError(f"{source}: classes {list(ds.class_names)} differ from the run's {config['class_names']}")
    ds, splits = select_and_split(ds, options)
    warnings = []
    recorded = config.get("data_identity")
    if recorded and data_identity(ds) != recorded:
        warnings.append(f"the data differ from the run's: {source} gives data_identity {data_identity(ds)[:12]}... "
                        f"but the run recorded {recorded[:12]}... in config.json (other files, or files moved "
                        "between class folders): the scores below are not the run's test scores")
    saved = config.get("split") or {}
    for name, part in splits._asdict().items():
        if name in saved and int(saved[name].get("total", len(part))) != len(part):
            warnings.append(f"the {name} split has {len(part)} images here but had {saved[name]['total']} in "
                            f"training: the data differ from the run's")
    return splits, ds, config, warnings


def load_checkpoint_best(run_dir: Path, config: dict[str, Any]) -> tuple[ARNCNN, int, int]:
    """(model with the best weights so far, best epoch, epochs finished) from a run's ``checkpoint.npz``."""
    path = run_dir / "checkpoint.npz"  # evaluate_run has checked that it exists
    try:
        model, optimizer, controller = build_training(config["options"], len(config["class_names"]))
        run = load_checkpoint(path, model, optimizer, controller)
    except (UsageError, KeyError, TypeError, ValueError) as err:
        raise EvaluationError(f"{path}: unusable checkpoint ({err})") from None
    if not run.history:
        raise EvaluationError(f"{path}: no epoch finished yet, so there are no best weights to evaluate")
    model.load_state_dict(controller.best_weights)
    return model, controller.best_epoch, len(run.history)


# ---------------------------------------------------------------------------------------------------------
# per-image test predictions (test_predictions.csv)
# ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TestPredictions:
    """One run's predictions on its test images: ``paths``, ``labels`` and ``predicted`` (class names), shapes (N,);
    ``p_true`` (N,) float64, the probability given to the true class (NaN where not known)."""

    paths: np.ndarray
    labels: np.ndarray
    predicted: np.ndarray
    p_true: np.ndarray

    @property
    def correct(self) -> np.ndarray:
        return self.labels == self.predicted


def write_predictions(path: Path, paths: Sequence[str], y: np.ndarray, probs: np.ndarray,
                      names: Sequence[str]) -> Path:
    """``test_predictions.csv``: per image its path, true class, predicted class (argmax) and p(true class) of the
    renormalised rows, 9 significant digits (enough to recompute the log loss to 1e-8)."""
    p = probs / probs.sum(axis=1, keepdims=True)
    pred = probs.argmax(axis=1)
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(PREDICTION_COLUMNS)
        for i, rel in enumerate(paths):
            writer.writerow([rel, names[y[i]], names[pred[i]], f"{p[i, y[i]]:.9g}"])
    return path


def read_predictions(path: str | Path) -> TestPredictions:
    """Read a ``test_predictions.csv`` (an empty ``p_true`` is NaN). Raises EvaluationError naming the file."""
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
        if not rows or tuple(rows[0]) != PREDICTION_COLUMNS:
            raise ValueError(f"expected the columns {', '.join(PREDICTION_COLUMNS)} and at least one row")
        p_true = np.array([float(r["p_true"]) if r["p_true"] else np.nan for r in rows])
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise EvaluationError(f"{path}: unreadable test predictions ({err})") from None
    paths, labels, predicted = (np.array([r[c] for r in rows]) for c in PREDICTION_COLUMNS[:3])
    return TestPredictions(paths, labels, predicted, p_true)


# ---------------------------------------------------------------------------------------------------------
# report.md
# ---------------------------------------------------------------------------------------------------------


def _confusion_markdown(C: np.ndarray, names: Sequence[str]) -> str:
    lines = ["| true \\ predicted | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    for name, row in zip(names, C):
        lines.append(f"| {name} | " + " | ".join(f"{v:,}" for v in row) + " |")
    return "\n".join(lines) + "\n"


def _errors_markdown(paths: Sequence[str], y: np.ndarray, probs: np.ndarray, names: Sequence[str],
                     most: int = 25) -> str:
    """The misclassified images (at most ``most``, least confident in the true class first) as a table."""
    pred = probs.argmax(axis=1)
    wrong = np.flatnonzero(pred != y)
    if len(wrong) == 0:
        return "None: every test image is classified correctly.\n"
    wrong = wrong[np.argsort(probs[wrong, y[wrong]], kind="stable")]
    lines = ["| image | true class | predicted | p(predicted) | p(true) |", "|---|---|---|---:|---:|"]
    for i in wrong[:most]:
        lines.append(f"| `{paths[i]}` | {names[y[i]]} | {names[pred[i]]} | {probs[i, pred[i]]:.4f} | "
                     f"{probs[i, y[i]]:.4f} |")
    more = f"\n{len(wrong) - most} more not listed.\n" if len(wrong) > most else ""
    return "\n".join(lines) + "\n" + more


def _score_without_copies(copied: np.ndarray, y: np.ndarray, probs: np.ndarray) -> str:
    """The test score split by ``copied`` (a byte-identical copy in train, ``copies_in_train``): what a
    deduplicated test split would have given these weights (only the test side; the training data stay as
    they were)."""
    right = probs.argmax(axis=1) == y
    fresh = ~copied
    errors = int((~right[fresh]).sum())
    text = (f"Without them: {int(right[fresh].sum()):,} of {int(fresh.sum()):,} right "
            f"({errors} error{'' if errors == 1 else 's'}")
    if fresh.any():
        text += f", log loss {metrics.log_loss(y[fresh], probs[fresh]):.4f}"
    return text + f"); on them: {int(right[copied].sum()):,} of {int(copied.sum()):,} right."


def _intervals_line(accuracy_ci: metrics.Interval, log_loss_ci: metrics.Interval, n: int) -> str:
    """report.md's line of 95 % intervals under Table 2."""
    return (f"95 % intervals: accuracy {accuracy_ci.low:.4f}-{accuracy_ci.high:.4f} (Clopper-Pearson, exact binomial "
            f"over the {n:,} test images), log loss {log_loss_ci.low:.4f}-{log_loss_ci.high:.4f} (percentile "
            f"bootstrap of the per-image log loss, {metrics.BOOTSTRAP_RESAMPLES:,} resamples, seed "
            f"{metrics.BOOTSTRAP_SEED}).")


def _level(value: float, threshold: float) -> str:
    return "n/a" if np.isnan(value) else ("low" if value < threshold else "moderate")


def _uncertainty_tables(rows: Sequence[metrics.ClassUncertainty], threshold: float = 0.1) -> tuple[str, str]:
    t3 = ["| class | n | mean entropy (nats) | uncertainty |", "|---|---:|---:|---|"]
    t4 = ["| class | n | std of normalized max probability | uncertainty |", "|---|---:|---:|---|"]
    for r in rows:
        t3.append(f"| {r.name} | {r.count} | {r.mean_entropy:.4f} | {_level(r.mean_entropy, threshold)} |")
        t4.append(f"| {r.name} | {r.count} | {r.std_max_prob:.4f} | {_level(r.std_max_prob, threshold)} |")
    return "\n".join(t3) + "\n", "\n".join(t4) + "\n"


def _pick_per_class(labels: np.ndarray, num_classes: int, per_class: int) -> np.ndarray:
    """The first ``per_class`` indices of every class, in class order (deterministic figure contents)."""
    picked = [np.flatnonzero(labels == k)[:per_class] for k in range(num_classes)]
    return np.concatenate(picked).astype(np.int64) if picked else np.zeros(0, np.int64)


def _make_figures(model: ARNCNN, splits: Splits, ds: Dataset, probs: np.ndarray, history_path: Path,
                  best_epoch: int | None, out: Path, title: str, wanted: Collection[str] = figures.FIGURE_FILES,
                  split_how: str = "stratified 90 / 6 / 4 %, seed 123") -> tuple[dict[str, Path], list[str]]:
    """The single-run figures named in ``wanted`` (keys of ``FIGURE_FILES``) into ``out``; returns their paths
    and notes on figures that were skipped. ``split_how`` (:func:`_split_words`) goes into Fig. 6's title."""
    names = list(ds.class_names)
    K = len(names)
    test = splits.test
    files = figures.FIGURE_FILES
    made: dict[str, Path] = {}
    notes: list[str] = []
    if "activations" in wanted:
        made["activations"] = figures.activation_functions(out / files["activations"])
    if "samples" in wanted:
        made["samples"] = figures.sample_images(ds.images, ds.labels, names, out / files["samples"])
    if "label_frequency" in wanted:
        counts = {k: part.class_counts() for k, part in splits._asdict().items()}
        made["label_frequency"] = figures.label_frequency(counts, names, out / files["label_frequency"], split_how)
    if "learning_curves" in wanted:
        if history_path.is_file() and figures.read_history(history_path):
            made["learning_curves"] = figures.learning_curves(figures.read_history(history_path),
                                                              out / files["learning_curves"], best_epoch, title)
        else:
            notes.append("Fig. 7 skipped: history.csv is missing or empty")
    if not len(test):
        notes.append("Fig. 3, 8, 9 and the reliability diagram skipped: the test split is empty")
        return made, notes
    if "confusion" in wanted:
        made["confusion"] = figures.confusion_and_confidence(test.labels, probs, names, out / files["confusion"], title)
    if "reliability" in wanted:
        made["reliability"] = figures.reliability_diagram(test.labels, probs, out / files["reliability"])
    if "gradcam" in wanted:
        pick = _pick_per_class(test.labels, K, 2)
        made["gradcam"] = figures.gradcam_grid(test.images[pick], gradcam(model, test.images[pick]), names,
                                               out / files["gradcam"], y_true=test.labels[pick])
    wrong = np.flatnonzero(probs.argmax(axis=1) != test.labels)
    if "misclassified" in wanted and len(wrong):  # where the network looked: the class it chose, then the true one
        wrong = wrong[np.argsort(probs[wrong, test.labels[wrong]], kind="stable")][:MISCLASSIFIED_SHOWN]
        twice = np.repeat(wrong, 2)
        explained = np.stack([probs[wrong].argmax(axis=1), test.labels[wrong]], axis=1).ravel()
        made["misclassified"] = figures.gradcam_grid(
            test.images[twice], gradcam(model, test.images[twice], explained), names, out / files["misclassified"],
            y_true=test.labels[twice], names=[Path(p).name for p in test.paths[twice]], cols=min(6, len(twice)),
            title="Misclassified test images\nGrad-CAM of the predicted class, then of the true class")
    elif "misclassified" in wanted:
        notes.append("No Grad-CAM of misclassified images: every test image is classified correctly")
    if "attention" in wanted and model.stem_attention:
        classes = sorted({round(float(c)) for c in np.linspace(0, K - 1, min(3, K))})
        pick3 = np.concatenate([np.flatnonzero(test.labels == c)[:1] for c in classes]).astype(np.int64)
        made["attention"] = figures.attention_illustration(model, test.images[pick3], out / files["attention"],
                                                           test.labels[pick3], names)
    elif "attention" in wanted:
        notes.append("Fig. 3 skipped: the model has no attention modules (ablation)")
    return made, notes


def _wanted_figures(make_figures: bool | Collection[str]) -> list[str]:
    """The ``FIGURE_FILES`` keys that ``make_figures`` asks for (True: all, False: none)."""
    wanted = list(figures.FIGURE_FILES) if make_figures is True else list(make_figures or [])
    unknown = sorted(set(wanted) - set(figures.FIGURE_FILES))
    if unknown:
        raise EvaluationError(f"make_figures: unknown figures {unknown}; known: {list(figures.FIGURE_FILES)}")
    return wanted


@dataclass
class LoadedRun:
    """What the evaluation of a run needs, in hand: its folder, the model and the file it came from, the split
    and the dataset before splitting (``minarn.run.select_and_split``), config.json as a dict, the data source,
    the best epoch, and warnings on the data to repeat in report.md. ``epochs_finished`` set: an interim
    evaluation of the best weights so far of a run still training (``checkpoint.npz``)."""

    run_dir: Path
    model: ARNCNN
    model_path: Path
    splits: Splits
    dataset: Dataset
    config: dict[str, Any]
    source: str
    best_epoch: int | None = None
    epochs_finished: int | None = None
    warnings: list[str] = field(default_factory=list)


def load_run(run_dir: str | Path, data: str | None = None, report: Report | None = print, *,
             cache_dir: str | None = None, checkpoint: bool = False) -> LoadedRun:
    """A finished run's model (``model.npz``), or with ``checkpoint`` the best weights so far of ``checkpoint.npz``,
    with its split rebuilt from the data (``load_run_splits``; ``data`` overrides the source in config.json)."""
    run_dir = Path(run_dir)
    model_path = run_dir / ("checkpoint.npz" if checkpoint else "model.npz")
    _read_config(run_dir)
    if not model_path.is_file():
        hint = ("--checkpoint evaluates a run that is still training" if checkpoint else
                "the training run did not finish? --checkpoint evaluates its best weights so far")
        raise EvaluationError(f"{run_dir}: no {model_path.name} ({hint})")
    splits, ds, config, warnings = load_run_splits(run_dir, data, cache_dir, report)
    for w in warnings:
        (report or (lambda _msg: None))(f"warning: {w}")
    epochs_finished = None
    best_epoch: int | None
    if checkpoint:
        model, best_epoch, epochs_finished = load_checkpoint_best(run_dir, config)
    else:
        try:
            model = load_model(model_path)
        except ValueError as err:  # load_model reports a damaged or foreign file as ValueError
            raise EvaluationError(str(err)) from None
        best_epoch = (config.get("test") or {}).get("best_epoch")
    return LoadedRun(run_dir, model, model_path, splits, ds, config, _data_source(config, data), best_epoch,
                     epochs_finished, warnings)


def evaluate_run(run_dir: str | Path, data: str | None = None, report: Report | None = print, *,
                 cache_dir: str | None = None, make_figures: bool | Collection[str] = True,
                 out_dir: str | Path | None = None, checkpoint: bool = False) -> dict[str, Any]:
    """Evaluate a finished ``minarn.train`` run on its test split; write ``report.md`` and ``figures/``.

    Parameters
    ----------
    run_dir : the run folder (``model.npz``, ``config.json``, ``history.csv``).
    data : data source overriding the one saved in config.json (a moved run folder).
    report : callback for progress lines (``print`` by default; ``None`` for silence).
    cache_dir : cache folder for the decoded images (``load_mednist``).
    make_figures : False writes only report.md; a collection of ``minarn.figures.FIGURE_FILES`` keys makes
        only those figures.
    out_dir : where report.md and figures/ go (default: the run folder, or its ``interim/`` with ``checkpoint``;
        another folder leaves the run as it was).
    checkpoint : evaluate the best weights so far from ``checkpoint.npz`` (a run still training) instead of
        ``model.npz``; also writes ``test.json`` (the Table 2 values, errors, best epoch, epochs finished).

    Returns
    -------
    dict with "summary" (Table 2 values), "accuracy_interval" and "log_loss_interval" (``metrics.Interval``, 95 %),
    "uncertainty" (rows of Tables 3-4), "ece", "mce", "confusion_matrix",
    "loss_with_penalties", "n_test", "duplicates_in_train", "warnings", "report" (path of report.md),
    "figures" (name -> path).

    Raises
    ------
    EvaluationError, minarn.data.DataError : unusable run folder or data (one-line messages).
    """
    _wanted_figures(make_figures)  # a wrong name fails before the data are loaded
    run = load_run(run_dir, data, report, cache_dir=cache_dir, checkpoint=checkpoint)
    return evaluate_loaded_run(run, report, make_figures=make_figures, out_dir=out_dir)


def evaluate_loaded_run(run: LoadedRun, report: Report | None = print, *,
                        make_figures: bool | Collection[str] = True,
                        out_dir: str | Path | None = None,
                        test_scores: tuple[float, np.ndarray] | None = None) -> dict[str, Any]:
    """``evaluate_run`` on a run in hand (``load_run``, or the training that just finished): the same report.md,
    test_predictions.csv and figures, into ``out_dir`` (default: the run folder, or its ``interim/`` for a
    checkpoint's weights); returns the same dict. ``test_scores``: the test split's loss with penalties and
    probabilities (N, K), when the caller has them (``evaluate_split``; training on several ranks shares them)."""
    say: Report = report or (lambda _msg: None)
    wanted = _wanted_figures(make_figures)
    run_dir, model, model_path, splits, ds, config = (run.run_dir, run.model, run.model_path, run.splits,
                                                      run.dataset, run.config)
    best_epoch, epochs_finished, warnings = run.best_epoch, run.epochs_finished, run.warnings
    checkpoint = epochs_finished is not None
    names = list(config["class_names"])
    if model.input_shape != splits.test.images.shape[1:]:
        raise EvaluationError(f"{model_path}: the model takes {model.input_shape} images but config.json describes "
                              f"{splits.test.images.shape[1:]}")
    if model.num_classes != len(names):
        raise EvaluationError(f"{model_path}: {model.num_classes} outputs but {len(names)} classes in config.json")
    test = splits.test
    if len(test) == 0:
        raise EvaluationError(f"{run_dir}: the test split is empty")
    batch = int(config["options"].get("batch_size") or 40)
    say(f"evaluating {model_path} on {len(test):,} test images")
    if test_scores is None:
        loss_pen, _, probs = evaluate_split(model, test.images, test.labels, batch)
    else:
        loss_pen, probs = test_scores
        if len(probs) != len(test):
            raise EvaluationError(f"{run_dir}: {len(probs)} test probabilities given for {len(test)} images")
    probs = probs.astype(np.float64)
    y = test.labels
    summary = metrics.summary(y, probs, names)
    accuracy_ci = metrics.accuracy_interval(y, probs.argmax(axis=1))
    log_loss_ci = metrics.log_loss_interval(y, probs)
    unc = metrics.uncertainty_table(y, probs, names)
    ece = metrics.expected_calibration_error(y, probs)
    mce = metrics.maximum_calibration_error(y, probs)
    C = metrics.confusion_matrix(y, probs.argmax(axis=1), len(names))
    copied = copies_in_train(splits)
    leaks = {name: int(mask.sum()) for name, mask in copied.items()}
    groups = duplicate_groups(ds)
    options = config["options"]
    title = f"{run_dir.name}, dense {options.get('dense_activation', 'gelu')}"
    if checkpoint:
        title += f", interim (epoch {best_epoch} of {epochs_finished})"

    out_dir = (run_dir / INTERIM_DIR if checkpoint else run_dir) if out_dir is None else Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    fig_dir = out_dir / "figures"
    made: dict[str, Path] = {}
    notes: list[str] = []
    if wanted:
        made, notes = _make_figures(model, splits, ds, probs, run_dir / "history.csv", best_epoch, fig_dir, title,
                                    wanted, _split_words(ds, options))
        for key in set(wanted) - set(made):  # e.g. no errors this time: no Grad-CAM of errors left from before
            (fig_dir / figures.FIGURE_FILES[key]).unlink(missing_ok=True)

    errors = int(C.sum() - np.trace(C))
    t3, t4 = _uncertainty_tables(unc)
    source = run.source
    variant = ", ".join(f"{k} {'on' if options.get(k, True) else 'off'}" for k in ("attention", "residual"))
    limit = options.get("limit_per_class")
    data_line = (f"- data: `{source}`" + (f", at most {limit} images per class" if limit else "")
                 + ("; byte-identical duplicates removed before splitting" if options.get("dedupe") else "")
                 + ("" if model.input_shape == (64, 64, 1) else
                    f"; images {model.input_shape[0]}x{model.input_shape[1]} "
                    + ("grayscale" if model.input_shape[2] == 1 else "RGB"))
                 + ("; cross-entropy weighted by class (balanced)" if options.get("class_weight") else ""))
    model_line = (f"- model: `{model_path}` ({model.count_params():,} weights; {variant}; dense activation "
                  f"{options.get('dense_activation', 'gelu')})" + (f"; best epoch {best_epoch}" if best_epoch else ""))
    if checkpoint:
        model_line += (f" of the {epochs_finished} finished so far. **Interim**: the run is still training; these "
                       "are its best weights at the time of this evaluation, not its final result.")
    leak_line = (f"Test images with a byte-identical copy in train: {leaks['test']:,} of {len(test):,}; "
                 f"validation images: {leaks['valid']:,} of {len(splits.valid):,}.")
    if leaks["test"] and not options.get("dedupe"):
        leak_line += (" These test images were, in effect, seen in training; "
                      "`python -m minarn.train --dedupe` avoids that.")
        leak_line += " " + _score_without_copies(copied["test"], y, probs)
    lines = [
        f"# {'Interim evaluation' if checkpoint else 'Evaluation'} of `{run_dir.name}`",
        "",
        model_line,
        data_line,
        (f"- split ({_split_words(ds, options)}): train {len(splits.train):,}, valid {len(splits.valid):,}, "
         f"test {len(test):,}"),
        (f"- test: {errors} errors in {len(test):,} images; Keras-style loss with the dense layer's penalties "
         f"{loss_pen:.5f} (Table 2's log loss is the pure cross-entropy)"),
        *[f"- **warning**: {w}" for w in warnings],
        "",
        "## Table 2: test metrics (macro averages over the classes)",
        "",
        metrics.summary_markdown(summary),
        _intervals_line(accuracy_ci, log_loss_ci, len(test)),
        "",
        ("Paper: precision 1.0000, recall 1.0000, F1 1.0000, accuracy 0.9996, kappa 0.99, log loss 0.0037 "
         "(on 2,359 test images of the full set)."),
        "",
        "## Table 3: uncertainty (entropy) per class",
        "",
        ("Mean Shannon entropy (natural log) of the predicted distribution over the test images of each true "
         "class (paper Eq. 11); 0 = certain, ln K = uniform. Level: low below 0.1 nats."),
        "",
        t3,
        "## Table 4: standard deviation of the normalized maximum probability per class",
        "",
        ("Population standard deviation (ddof = 0) over the test images of each true class of max(p) / sum(p) "
         "(paper Eq. 8-10). Level: low below 0.1."),
        "",
        t4,
        "## Per-class report",
        "",
        "```",
        metrics.classification_report(y, probs.argmax(axis=1), names, digits=4).rstrip(),
        "```",
        "",
        "## Confusion matrix (rows: true class, columns: predicted class)",
        "",
        _confusion_markdown(C, names),
        "## Misclassified test images",
        "",
        _errors_markdown(list(test.paths), y, probs, names),
        "## Calibration (not in the paper)",
        "",
        (f"Expected calibration error (ECE) {ece:.4f}, maximum calibration error (MCE) {mce:.4f}, with 15 "
         "equal-width bins of the top-class probability (Guo et al. 2017)."),
        "",
        "## Duplicate leakage of the split",
        "",
        (f"The data hold {sum(len(g) - 1 for g in groups):,} extra byte-identical copies in {len(groups):,} groups"
         + (" (removed before splitting)." if options.get("dedupe") else ".")),
        leak_line,
        "",
    ]
    if made or notes:
        lines += ["## Figures", ""]
        for key in figures.FIGURE_FILES:  # in figure-number order
            if key in made:
                lines += [f"![{key}](figures/{made[key].name})", ""]
        lines += [f"- {n}" for n in notes]
        lines.append("")
    report_path = out_dir / "report.md"
    report_path.write_text("\n".join(lines), encoding="utf-8")
    write_predictions(out_dir / PREDICTIONS, list(test.paths), y, probs, names)
    if checkpoint:
        interim = {**{k: float(summary[k]) for k in metrics.SUMMARY_COLUMNS}, "errors": errors,
                   "images": len(test), "best_epoch": best_epoch, "epochs_finished": epochs_finished}
        (out_dir / "test.json").write_text(json.dumps(interim, indent=2) + "\n", encoding="utf-8")
    say(f"test: accuracy {summary['accuracy']:.4f}, macro F1 {summary['f1']:.4f}, kappa {summary['kappa']:.4f}, "
        f"log loss {summary['log_loss']:.4f}, ECE {ece:.4f}")
    say(f"report: {report_path}" + (f"; {len(made)} figures in {fig_dir}" if made else ""))
    return {
        "summary": summary,
        "accuracy_interval": accuracy_ci,
        "log_loss_interval": log_loss_ci,
        "uncertainty": unc,
        "ece": ece,
        "mce": mce,
        "confusion_matrix": C,
        "loss_with_penalties": loss_pen,
        "n_test": len(test),
        "duplicates_in_train": leaks,
        "warnings": warnings,
        "report": report_path,
        "figures": made,
    }


def compare_runs(run_dirs: Sequence[str | Path], out: str | Path, report: Report | None = print,
                 by: str = "dense_activation") -> Path:
    """Training and validation loss per epoch of several runs, one line per run labelled by option ``by``.

    ``by="dense_activation"`` (the default) draws the paper's Fig. 10; any other option of the runs'
    ``config.json`` (``seed``, ``batch_size``, ``dedupe``, ...) labels the lines with its values under the
    option's name. Runs that share a value are told apart by their folder name.
    """
    runs = []
    for d in map(Path, run_dirs):
        config = _read_config(d)
        options = config.get("options") or {}
        if by not in options:
            raise EvaluationError(f"--by {by}: not an option in {d / 'config.json'}; its options are "
                                  f"{', '.join(sorted(options))}")
        hist = d / "history.csv"
        if not hist.is_file():
            raise EvaluationError(f"{d}: no history.csv")
        rows = figures.read_history(hist)
        if not rows:
            raise EvaluationError(f"{hist}: no finished epoch")
        value = options[by]
        if by == "dense_activation":
            value = (config.get("model") or {}).get("dense_activation") or value or "?"
        runs.append((str(value), rows, d.name))
    labels = [a for a, _, _ in runs]
    named = [(f"{a} ({n})" if labels.count(a) > 1 else a, rows) for a, rows, n in runs]
    if by == "dense_activation":
        path = figures.dense_activation_losses(named, out)
    else:
        option = by.replace("_", " ")
        path = figures.loss_per_epoch(named, out, option, f"Loss per epoch by {option}")
    if report:
        report(f"wrote {path} ({len(runs)} runs: {', '.join(label for label, _ in named)})")
    return path


def run_predictions(run_dir: str | Path, data: str | None = None, cache_dir: str | None = None,
                    report: Report | None = None) -> TestPredictions | None:
    """A run's per-image test predictions: its ``test_predictions.csv``; without one, the predictions of its
    ``model.npz`` on its test split (rebuilt from the data, ``load_run_splits``); None when it has neither."""
    run_dir = Path(run_dir)
    config = _read_config(run_dir)
    if (run_dir / PREDICTIONS).is_file():
        return read_predictions(run_dir / PREDICTIONS)
    if not (run_dir / "model.npz").is_file():
        return None
    splits, _, config, _ = load_run_splits(run_dir, data, cache_dir, report)
    try:
        model = load_model(run_dir / "model.npz")
    except ValueError as err:
        raise EvaluationError(str(err)) from None
    test = splits.test
    _, _, probs = evaluate_split(model, test.images, test.labels, int(config["options"].get("batch_size") or 40))
    probs = probs.astype(np.float64)
    probs /= probs.sum(axis=1, keepdims=True)
    names = np.array(config["class_names"])
    return TestPredictions(np.asarray(test.paths), names[test.labels], names[probs.argmax(axis=1)],
                           probs[np.arange(len(test)), test.labels])


def paired_correct(a: TestPredictions, b: TestPredictions, name_a: str, name_b: str) -> tuple[np.ndarray, np.ndarray]:
    """(correct of a, correct of b), both (N,) bool in a's image order, paired by image path.

    Raises EvaluationError when the two runs were not tested on the same images with the same labels.
    """
    where_b = {p: i for i, p in enumerate(b.paths.tolist())}
    common = sum(p in where_b for p in a.paths.tolist())
    if common != len(a.paths) or len(a.paths) != len(b.paths):
        raise EvaluationError(f"{name_a} and {name_b} were tested on different images ({len(a.paths):,} and "
                              f"{len(b.paths):,} test images, {common:,} in common): McNemar's test needs the same "
                              "test split (same data, --dedupe and --limit-per-class)")
    order = np.array([where_b[p] for p in a.paths.tolist()], dtype=np.int64)
    differ = np.flatnonzero(a.labels != b.labels[order])
    if len(differ):
        raise EvaluationError(f"{name_a} and {name_b} give {a.paths[differ[0]]} different true classes "
                              f"({a.labels[differ[0]]}, {b.labels[order[differ[0]]]}): not the same data")
    return a.correct, b.correct[order]


def mcnemar_line(name_a: str, name_b: str, result: metrics.McNemarResult) -> str:
    """One line: the 2x2 table's discordant counts, the exact p, and whether it is distinguishable from chance."""
    verdict = "distinguishable" if result.p_value < SIGNIFICANCE else "not distinguishable"
    return (f"McNemar's exact test, {name_a} vs {name_b} on the same {result.n:,} test images: right only by "
            f"{name_a} {result.only_a}, only by {name_b} {result.only_b}, wrong by both {result.both_wrong}; "
            f"p = {result.p_value:.4g} ({verdict} from chance at the {SIGNIFICANCE:.0%} level)")


def mcnemar_runs(run_dirs: Sequence[str | Path], data: str | None = None, cache_dir: str | None = None,
                 report: Report | None = print) -> list[tuple[str, str, metrics.McNemarResult]]:
    """McNemar's exact test for every pair of the runs, on their paired test predictions (``run_predictions``).

    Returns (name, name, result) per pair, names being the folder names (the paths when two names are equal).
    A run without predictions is reported and left out; runs tested on different images raise EvaluationError.
    """
    say: Report = report or (lambda _msg: None)
    dirs = [Path(d) for d in run_dirs]
    names = [d.name for d in dirs]
    names = [str(d) if names.count(n) > 1 else n for d, n in zip(dirs, names)]
    known = []
    for d, name in zip(dirs, names):
        pred = run_predictions(d, data, cache_dir)
        if pred is None:
            say(f"McNemar's test: {name} left out: it has neither {PREDICTIONS} nor model.npz (evaluate the run "
                "with its weights first: python -m minarn.evaluate RUN_DIR)")
        else:
            known.append((name, pred))
    results = []
    for (name_a, a), (name_b, b) in itertools.combinations(known, 2):
        result = metrics.mcnemar_exact(*paired_correct(a, b, name_a, name_b))
        say(mcnemar_line(name_a, name_b, result))
        results.append((name_a, name_b, result))
    return results


# ---------------------------------------------------------------------------------------------------------
# command line
# ---------------------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = Parser(error_type=EvaluationError, prog="python -m minarn.evaluate",
                description="Evaluate a finished training run on its test split: writes RUN_DIR/report.md (paper "
                "Tables 2-4, per-class report, calibration, duplicate leakage) and RUN_DIR/figures/*.png. With "
                "--compare: draw Fig. 10 (loss per epoch by dense activation, or by another option with --by) from "
                "several runs and test each pair with McNemar's exact test. With --checkpoint: evaluate the best "
                "weights so far of a run still training.")
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run folder(s) written by python -m minarn.train")
    p.add_argument("--data", help="data source (folder or archive) instead of the one saved in config.json")
    p.add_argument("--cache-dir", help="cache folder for decoded images (default ~/.cache/minarn)")
    p.add_argument("--no-figures", action="store_true", help="write report.md only")
    p.add_argument("--checkpoint", action="store_true",
                   help=f"evaluate the best weights so far in checkpoint.npz of a run still training; writes "
                   f"RUN_DIR/{INTERIM_DIR}/ (report.md, test.json, figures/)")
    p.add_argument("--report-dir", metavar="DIR",
                   help="write report.md and figures/ here instead of into RUN_DIR (one subfolder per run when "
                   "several are given): checks a published run without changing it")
    p.add_argument("--compare", action="store_true",
                   help="draw Fig. 10 (loss per epoch by dense activation) from the runs instead of evaluating, then "
                   "test every pair of runs with McNemar's exact test on their paired test predictions "
                   f"({PREDICTIONS}, or model.npz on the data)")
    p.add_argument("--by", default="dense_activation", metavar="OPTION",
                   help="with --compare: the training option that labels the runs, e.g. seed (default: %(default)s)")
    p.add_argument("--out", help=f"output PNG of --compare (default: {figures.FIGURE_FILES['dense_activations']}, "
                   "or loss_by_OPTION.png with --by)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (0 done, 2 bad usage, run folder or data)."""
    try:
        args = build_parser().parse_args(argv)
        try:
            kernels.get_backend()
        except (ImportError, ValueError) as e:
            raise EvaluationError(f"{e} (from ${kernels.ENV_VAR})") from None
        if args.compare:
            out = args.out or (figures.FIGURE_FILES["dense_activations"] if args.by == "dense_activation"
                               else f"loss_by_{args.by}.png")
            if not str(out).lower().endswith(".png"):
                raise EvaluationError(f"--out must name a .png file, got {out}")
            compare_runs(args.run_dirs, out, by=args.by)
            mcnemar_runs(args.run_dirs, args.data, args.cache_dir)
            return 0
        if args.by != "dense_activation" or args.out:
            raise EvaluationError("--by and --out belong to --compare")
        for run_dir in args.run_dirs:
            out_dir = None
            if args.report_dir:
                out_dir = Path(args.report_dir) / Path(run_dir).name if len(args.run_dirs) > 1 else args.report_dir
            evaluate_run(run_dir, args.data, cache_dir=args.cache_dir, make_figures=not args.no_figures,
                         out_dir=out_dir, checkpoint=args.checkpoint)
        return 0
    except (EvaluationError, DataError) as err:
        print(f"python -m minarn.evaluate: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:
        print(f"python -m minarn.evaluate: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
