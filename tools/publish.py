"""Publish a training run into ``results/`` and regenerate the generated parts of ``results/README.md``.

Usage::

    python tools/publish.py RUN_DIR [--name NAME] [--weights]   # copy a run, then regenerate the tables
    python tools/publish.py RUN_DIR --interim                   # a run in progress, with its best weights' test
    python tools/publish.py --tables                            # regenerate the tables from results/*/
    python tools/publish.py --check                             # exit 1 if the tables are out of date
    python tools/publish.py RUN_DIR --zero-error-predictions [--data PATH]   # see below

A finished run (``config.json`` has a ``test`` block with the accuracy, and ``report.md`` exists) is copied
with ``report.md``, ``test_predictions.csv``, ``history.csv``, ``config.json``, ``train.log`` and
``figures/*.png``; ``model.npz`` only
with ``--weights`` (meant for the default run). A run still in progress is copied without its report, figures
and weights (they would be those of an earlier, shorter session). ``checkpoint.npz`` is never copied.

``--interim`` (a run in progress) first evaluates the best weights its checkpoint holds (as ``python -m
minarn.evaluate RUN_DIR --checkpoint`` does, with two figures: the learning curves so far and the Grad-CAM of the
misclassified images) and publishes that evaluation as ``interim/report.md``, ``interim/test.json`` and
``interim/figures/``; the tables then show its numbers marked "interim", until the finished run replaces them.

Statistics (``minarn.metrics``): every accuracy gets its 95 % Clopper-Pearson interval; a log loss gets its 95 %
bootstrap interval when the run's ``test_predictions.csv`` holds p(true class) per image. Each comparison that a
table draws (seeds, ablations against ARN-CNN, dense activation, optimizers at the same ``--epochs``,
``--dedupe``) gets McNemar's exact p on the
paired test images: from the two runs' ``test_predictions.csv``; for a run without one, from its per-class error
counts (report.md's confusion matrix), as the range of p over every pairing of the errors those counts allow
(``minarn.metrics.mcnemar_exact_range``; a single value when one run has no error). Runs of a published folder
without weights cannot be evaluated again; ``--zero-error-predictions`` writes the file of a finished run without
a test error all the same (every predicted class is the true class; ``p_true`` is empty), from its test split
rebuilt from the data. The near-duplicate audit (``python -m minarn.near_duplicates``) is published in
``results/near-duplicates/``; its counts and the scores without the near-copied test images are tables too.

``results/README.md`` is hand-written except between marker comments::

    <!-- generated:table1 -->
    ...                        written by this script from the files under results/*/
    <!-- end:table1 -->

Every table is computed from the published files alone (and the paper's values, copied below from
``docs/arn-cnn.md``), so ``--check`` gives the same answer on any clone of the repository.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import re
import shlex
import shutil
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from minarn import metrics
from minarn.data import DataError
from minarn.evaluate import (
    INTERIM_DIR as INTERIM,  # minarn.evaluate --checkpoint's folder in a run
)
from minarn.evaluate import (
    PREDICTION_COLUMNS,
    PREDICTIONS,
    SIGNIFICANCE,
    EvaluationError,
    TestPredictions,
    compare_runs,
    evaluate_run,
    load_run_splits,
    paired_correct,
    read_predictions,
)
from minarn.figures import FIGURE_FILES, read_history
from minarn.metrics import SUMMARY_COLUMNS
from minarn.near_duplicates import FILES as AUDIT_FILES
from minarn.train import HISTORY_COLUMNS

RESULTS = Path(__file__).resolve().parents[1] / "results"  # the repository's results/, wherever this runs from
COPIED_ALWAYS = ("history.csv", "config.json", "train.log")
COPIED_WHEN_FINISHED = ("report.md", PREDICTIONS)
AUDIT = "near-duplicates"  # python -m minarn.near_duplicates DATA --out results/near-duplicates
TARGET_VAL_ACCURACY = 0.999  # time to this validation accuracy (issue 23)
PAPER_EPOCH_SECONDS = [104.09, 93.52, 92.83, 90.68, 83.18]  # the paper's Table 1 durations
WEIGHTS = "model.npz"
INTERIM_FILES = ("report.md", "test.json")
INTERIM_FIGURES = ("learning_curves", "misclassified")  # the figures an interim evaluation draws
FIG10 = FIGURE_FILES["dense_activations"]
SEEDS_FIG = "seeds_loss.png"  # loss per epoch of the paper's recipe with different seeds
OPTIMIZER_FIG = "optimizer_loss_{epochs}epochs.png"  # loss per epoch by optimizer, one figure per --epochs budget
OPTIMIZERS = ("adamax", "adam", "sgd")  # minarn.train --optimizer, in the order the tables list them
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")

# The paper's recipe as minarn.train records it in config.json "options" (data aside).
PAPER_RECIPE: dict[str, Any] = {
    "epochs": 100, "batch_size": 40, "lr": 0.001, "seed": 123, "attention": True, "residual": True,
    "dense_activation": "gelu", "optimizer": "adamax", "augment": "none", "dedupe": False, "limit_per_class": None,
}
# minarn.train's parser defaults for the options the command line leaves out when they have these values.
PARSER_DEFAULTS = {"dense_activation": "gelu", "optimizer": "adamax", "augment": "none"}

# The paper's numbers, as docs/arn-cnn.md gives them (strings: printed exactly as there).
PAPER_TABLE1 = [
    ["1", "0.455", "99.129", "0.12981", "99.859", "0.001", "0.001", "val_loss", "0.00", "104.09 s"],
    ["2", "0.117", "99.945", "0.08788", "99.943", "0.001", "0.001", "val_loss", "32.30", "93.52 s"],
    ["3", "0.086", "99.972", "0.06450", "99.972", "0.001", "0.001", "val_loss", "26.61", "92.83 s"],
    ["4", "0.067", "99.987", "0.05427", "99.972", "0.001", "0.001", "val_loss", "15.86", "90.68 s"],
    ["5", "0.059", "99.932", "0.04867", "99.972", "0.001", "0.001", "val_loss", "10.32", "83.18 s"],
]
PAPER_TABLE2 = ["1.0000", "1.0000", "1.0000", "0.9996", "0.99", "0.0037"]  # SUMMARY_COLUMNS order
PAPER_TABLE6 = {  # variant -> (accuracy, loss)
    "attention off, residual block on": ("0.967", "0.106"),
    "attention on, residual block off": ("0.975", "0.012"),
    "both on (ARN-CNN)": ("0.996 (0.9996 in Table 2)", "0.0037"),
}
EPOCH_COLUMNS = ["Epoch", "Loss", "Accuracy", "V_loss", "V_acc", "LR", "Next LR", "Monitor", "% Improv", "Duration"]


class PublishError(Exception):
    """A run folder or results/README.md that cannot be used: one line naming the file, exit status 2."""


# ---------------------------------------------------------------------------------------------------------
# a run folder
# ---------------------------------------------------------------------------------------------------------


@dataclass
class Run:
    """The files of one run folder that the tables use, read and checked."""

    name: str
    folder: Path
    config: dict[str, Any]
    history: list[dict[str, Any]]
    report: str | None  # report.md, None when absent
    interim: dict[str, Any] | None = None  # interim/test.json of a run in progress, None when absent
    interim_report: str | None = None  # interim/report.md

    @property
    def options(self) -> dict[str, Any]:
        return self.config["options"]

    @property
    def test(self) -> dict[str, Any]:
        return self.config.get("test") or {}

    @property
    def finished(self) -> bool:
        """Trained to its end and evaluated: the test metrics are in config.json and report.md exists."""
        return "accuracy" in self.test and self.report is not None

    @property
    def stopped_by_controller(self) -> bool:
        """Finished before its ``--epochs``: the controller stopped it, and any larger budget gives the same run."""
        return self.finished and len(self.history) < self.options["epochs"]

    @property
    def status(self) -> str:
        n = len(self.history)
        epochs = f"{n} epoch" + ("" if n == 1 else "s")
        if self.finished:
            limit = self.options["epochs"]
            return f"{epochs} (" + ("stopped by the controller)" if self.stopped_by_controller
                                    else f"`--epochs {limit}` reached)")
        if self.test:
            return f"trained {epochs}, not evaluated yet"
        return f"in progress, {epochs} so far"

    @property
    def results(self) -> dict[str, Any] | None:
        """The test numbers to show: the finished run's (config.json), else the interim ones, else None."""
        if self.finished:
            return self.test
        return self.interim

    @property
    def differences(self) -> dict[str, Any]:
        """Options that differ from the paper's recipe (``data`` only when the run used the shipped sample)."""
        diff = {k: self.options.get(k) for k, v in PAPER_RECIPE.items() if self.options.get(k) != v}
        if not self.options.get("data"):
            diff["data"] = "sample"
        return diff

    def is_variant(self, *allowed: str) -> bool:
        """True if the run differs from the paper's recipe in the ``allowed`` options at most."""
        return set(self.differences) <= set(allowed)

    @property
    def trained_in(self) -> str:
        """The run folder named on the first line of train.log (``... run folder: X``), or "?"."""
        log = self.folder / "train.log"
        first = log.read_text(encoding="utf-8").partition("\n")[0] if log.is_file() else ""
        return first.rpartition("run folder: ")[2].strip() if "run folder: " in first else "?"


def read_run(folder: Path, name: str | None = None) -> Run:
    """Read ``config.json``, ``history.csv`` and (if present) ``report.md`` of a run folder."""
    folder = Path(folder)
    if not folder.is_dir():
        raise PublishError(f"{folder}: no such run folder")
    config_path, history_path = folder / "config.json", folder / "history.csv"
    for path in (config_path, history_path):
        if not path.is_file():
            raise PublishError(f"{path}: missing (not a minarn.train run folder, or no epoch finished yet?)")
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
        options = config["options"]
        missing = [k for k in PAPER_RECIPE if k not in options]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise PublishError(f"{config_path}: unreadable run configuration ({type(err).__name__}: {err})") from None
    if missing:
        raise PublishError(f"{config_path}: options lack {missing}")
    try:
        history = read_history(history_path)
    except (OSError, ValueError, TypeError) as err:
        raise PublishError(f"{history_path}: unreadable history ({type(err).__name__}: {err})") from None
    lacking = sorted({c for row in history for c in HISTORY_COLUMNS if row.get(c) is None})
    if lacking or not history:
        raise PublishError(f"{history_path}: " + (f"columns {lacking} missing" if lacking else "no epoch in it"))
    report_path = folder / "report.md"
    report = report_path.read_text(encoding="utf-8") if report_path.is_file() else None
    run = Run(name or folder.name, folder, config, history, report)
    interim_json, interim_md = folder / INTERIM / "test.json", folder / INTERIM / "report.md"
    if not run.finished and interim_json.is_file() and interim_md.is_file():
        try:
            run.interim = json.loads(interim_json.read_text(encoding="utf-8"))
            missing = [k for k in (*SUMMARY_COLUMNS, "errors", "images", "best_epoch", "epochs_finished")
                       if k not in run.interim]
        except (OSError, ValueError, TypeError) as err:
            raise PublishError(f"{interim_json}: unreadable ({type(err).__name__}: {err})") from None
        if missing:
            raise PublishError(f"{interim_json}: lacks {missing}")
        run.interim_report = interim_md.read_text(encoding="utf-8")
    return run


def read_published(results: Path) -> list[Run]:
    """Every published run: the sub-folders of ``results`` that hold a config.json, sorted by name."""
    return [read_run(d) for d in sorted(results.iterdir()) if d.is_dir() and (d / "config.json").is_file()]


# ---------------------------------------------------------------------------------------------------------
# publishing
# ---------------------------------------------------------------------------------------------------------


def evaluate_interim(run_dir: Path, say: Callable[[str], Any] = print) -> None:
    """Evaluate the best weights in ``run_dir/checkpoint.npz`` into ``run_dir/interim/`` (a run in progress)."""
    try:
        evaluate_run(run_dir, report=say, make_figures=INTERIM_FIGURES, checkpoint=True)
    except (EvaluationError, DataError, OSError) as err:
        raise PublishError(f"--interim: {err}") from None


def publish(run_dir: Path, results: Path = RESULTS, name: str | None = None, weights: bool = False,
            interim: bool = False, say: Callable[[str], Any] = print) -> Path:
    """Copy a run folder into ``results/<name>/`` (replacing an earlier copy); returns that folder.

    ``interim``: first evaluate the best weights of a run in progress (:func:`evaluate_interim`). An interim
    evaluation is copied only while it matches the run's history (made after its last finished epoch).
    """
    run_dir = Path(run_dir)
    run = read_run(run_dir, name)
    if interim:
        if run.finished:
            raise PublishError(f"{run_dir}: --interim is for a run in progress; this one is {run.status}")
        evaluate_interim(run_dir, say)
        run = read_run(run_dir, name)
    if not NAME_PATTERN.fullmatch(run.name):
        raise PublishError(f"--name {run.name!r}: use letters, digits, '.', '_' and '-' only")
    dest = results / run.name
    if dest.resolve() == run_dir.resolve():
        raise PublishError(f"{run_dir}: already the published folder; nothing to copy")
    if weights and not run.finished:
        raise PublishError(f"{run_dir}: --weights needs a finished run; this one is {run.status} "
                           f"(its {WEIGHTS} is not the final model)")
    if weights and not (run_dir / WEIGHTS).is_file():
        raise PublishError(f"{run_dir / WEIGHTS}: missing")
    files = list(COPIED_ALWAYS) + (list(COPIED_WHEN_FINISHED) if run.finished else [])
    if run.interim is not None:
        if run.interim["epochs_finished"] == len(run.history):
            files += [f"{INTERIM}/{f}" for f in INTERIM_FILES]
            files += [f"{INTERIM}/figures/{FIGURE_FILES[k]}" for k in INTERIM_FIGURES]
        else:
            say(f"{run_dir / INTERIM}: made after epoch {run.interim['epochs_finished']}, but the run has finished "
                f"{len(run.history)}: not copied (--interim evaluates again)")
    files = [f for f in files if (run_dir / f).is_file()]
    figures = sorted((run_dir / "figures").glob("*.png")) if run.finished else []

    for stale in [*COPIED_ALWAYS, *COPIED_WHEN_FINISHED, WEIGHTS]:  # the copy mirrors the run as it is now
        (dest / stale).unlink(missing_ok=True)
    shutil.rmtree(dest / "figures", ignore_errors=True)
    shutil.rmtree(dest / INTERIM, ignore_errors=True)
    dest.mkdir(parents=True, exist_ok=True)
    for f in files:
        (dest / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(run_dir / f, dest / f)
    if figures:
        (dest / "figures").mkdir()
        for png in figures:
            shutil.copy2(png, dest / "figures" / png.name)
    if weights:
        shutil.copy2(run_dir / WEIGHTS, dest / WEIGHTS)
    copied = list(files)
    if figures:
        copied.append(f"figures/ ({len(figures)} PNG, {sum(p.stat().st_size for p in figures) / 1e6:.2f} MB)")
    if weights:
        copied.append(WEIGHTS)
    say(f"{run_dir} -> {dest}: {', '.join(copied)}; {read_run(dest).status}")
    return dest


def write_zero_error_predictions(run_dir: Path, data: str | None = None, say: Callable[[str], Any] = print) -> Path:
    """``test_predictions.csv`` of a finished run without test errors and without weights: its test split rebuilt
    from the data (``minarn.evaluate.load_run_splits``), every predicted class the true one, ``p_true`` empty."""
    run = read_run(run_dir)
    if not run.finished or run.test.get("errors") != 0:
        raise PublishError(f"{run_dir}: --zero-error-predictions is for a finished run without test errors; this one "
                           f"is {run.status} with {run.test.get('errors', '?')} errors")
    if (run_dir / WEIGHTS).is_file():
        raise PublishError(f"{run_dir}: has {WEIGHTS}; python -m minarn.evaluate RUN_DIR writes its predictions")
    try:
        splits, _, config, warnings = load_run_splits(run_dir, data)
    except (EvaluationError, DataError, OSError) as err:
        raise PublishError(f"--zero-error-predictions: {err}") from None
    test = splits.test
    if warnings or len(test) != config["split"]["test"]["total"]:
        raise PublishError(f"{run_dir}: the rebuilt test split differs from the run's ({'; '.join(warnings)})")
    names = config["class_names"]
    path = run_dir / PREDICTIONS
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(PREDICTION_COLUMNS)
        writer.writerows([p, names[y], names[y], ""] for p, y in zip(test.paths.tolist(), test.labels.tolist()))
    say(f"{path}: {len(test):,} test images, all predicted right (config.json: 0 errors)")
    return path


def draw_comparisons(results: Path, runs: Sequence[Run], say: Callable[[str], Any] = print) -> list[Path]:
    """Fig. 10 and the seeds' loss curves with minarn's own code (``minarn.evaluate.compare_runs``), each once
    two runs differ in the dense activation, resp. the seed."""
    drawn = []
    for chosen, by, name in ((fig10_runs(runs), "dense_activation", FIG10), (seed_runs(runs), "seed", SEEDS_FIG),
                             *((group, "optimizer", OPTIMIZER_FIG.format(epochs=budget))
                               for budget, group in optimizer_groups(runs).items())):
        if len({r.options[by] for r in chosen}) >= 2:
            drawn.append(compare_runs([r.folder for r in chosen], results / name, report=say, by=by))
    return drawn


# ---------------------------------------------------------------------------------------------------------
# reading report.md (Tables 2-4 as minarn.evaluate writes them)
# ---------------------------------------------------------------------------------------------------------


def report_table(run: Run, heading: str) -> tuple[list[str], list[list[str]]]:
    """(header, body rows) of the first Markdown table after the line of report.md that starts with ``heading``."""
    path = run.folder / ("report.md" if run.finished else f"{INTERIM}/report.md")
    lines = ((run.report if run.finished else run.interim_report) or "").splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith(heading)), None)
    if start is None:
        raise PublishError(f"{path}: no section {heading!r}")
    table: list[list[str]] = []
    for line in lines[start + 1:]:
        if line.startswith("|"):
            table.append([c.strip() for c in line.strip().strip("|").split("|")])
        elif table or line.startswith("#"):
            break
    if len(table) < 3:
        raise PublishError(f"{path}: no table under {heading!r}")
    return table[0], table[2:]


def table2_values(run: Run) -> dict[str, float]:
    """Table 2 of report.md, keyed like ``minarn.metrics.SUMMARY_COLUMNS``; checked against config.json."""
    header, rows = report_table(run, "## Table 2")
    keys = {label: key for key, label in SUMMARY_COLUMNS.items()}
    try:
        values = {keys[label]: float(v) for label, v in zip(header, rows[0])}
    except (KeyError, ValueError) as err:
        raise PublishError(f"{run.folder / 'report.md'}: unexpected Table 2 ({type(err).__name__}: {err})") from None
    if set(values) != set(SUMMARY_COLUMNS):
        raise PublishError(f"{run.folder / 'report.md'}: Table 2 has columns {header}")
    for key in ("accuracy", "log_loss"):
        if abs(values[key] - float(run.test[key])) > 5e-5:
            raise PublishError(f"{run.folder}: report.md gives {key} {values[key]} but config.json "
                               f"{run.test[key]}: the two files come from different evaluations")
    return values


def uncertainty_values(run: Run) -> dict[str, tuple[str, str, str]]:
    """Class -> (n, mean entropy, std of normalized max probability) from report.md's Tables 3 and 4."""
    t3 = {row[0]: (row[1], row[2]) for row in report_table(run, "## Table 3")[1]}
    t4 = {row[0]: row[2] for row in report_table(run, "## Table 4")[1]}
    return {c: (n, entropy, t4.get(c, "?")) for c, (n, entropy) in t3.items()}


# ---------------------------------------------------------------------------------------------------------
# formatting
# ---------------------------------------------------------------------------------------------------------


def md_table(header: Sequence[str], rows: Iterable[Sequence[str]], align: str = "") -> str:
    """A Markdown table; ``align`` has one letter per column, ``l`` or ``r`` (default: all left)."""
    align = align or "l" * len(header)
    rule = "|" + "|".join("---:" if a == "r" else "---" for a in align) + "|"
    lines = ["| " + " | ".join(header) + " |", rule] + ["| " + " | ".join(map(str, r)) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def link(run: Run) -> str:
    return f"[`{run.name}`]({run.name}/)"


def variant(run: Run) -> str:
    """How a run differs from the paper's recipe, as command-line flags."""
    flags = []
    for key, value in run.differences.items():
        if key == "data":
            flags.append("shipped sample")
        elif key in ("attention", "residual"):
            flags.append(f"`--no-{key}`")
        elif key == "dedupe":
            flags.append("`--dedupe`")
        else:
            flags.append(f"`--{key.replace('_', '-')} {value}`")
    return ", ".join(flags) or "paper recipe"


def command(run: Run) -> str:
    """The ``python -m minarn.train`` line that makes this run (options of config.json; --out runs/<name>)."""
    o = run.options
    parts = ["python", "-m", "minarn.train"]
    if o.get("data"):
        parts += ["--data", str(o["data"])]
    parts += ["--epochs", str(o["epochs"]), "--batch-size", str(o["batch_size"]), "--lr", f"{o['lr']:g}",
              "--seed", str(o["seed"])]
    parts += ["--no-attention"] * (not o["attention"]) + ["--no-residual"] * (not o["residual"])
    for key, default in PARSER_DEFAULTS.items():
        if o[key] != default:
            parts += [f"--{key.replace('_', '-')}", str(o[key])]
    parts += ["--dedupe"] * bool(o["dedupe"])
    if o["limit_per_class"]:
        parts += ["--limit-per-class", str(o["limit_per_class"])]
    if o.get("split"):
        parts += ["--split", ",".join(map(str, o["split"]))]
    for key in ("image_size", "channels", "class_weight"):  # recorded only when not the default
        if o.get(key):
            parts += [f"--{key.replace('_', '-')}", str(o[key])]
    return shlex.join(parts + ["--out", f"runs/{run.name}"])


def duration(seconds: float) -> str:
    s = round(seconds)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


def exact_fraction(value: float, total: int) -> float:
    """An accuracy that history.csv rounded to 6 digits, recovered as (correct images) / total.

    Rounding it again to the paper's 3 decimals of a percent could otherwise move the last digit (99.9435 ->
    99.944 where minarn.train printed 99.943 for 3,535 of 3,537).
    """
    return round(value * total) / total if total else value


def validation_cells(run: Run, row: dict[str, Any]) -> tuple[str, str]:
    """(V_loss, V_acc in percent) of one history row, with the paper's precision."""
    v_acc = exact_fraction(row["val_accuracy"], run.config["split"]["valid"]["total"])
    return f"{row['val_loss']:.5f}", f"{100 * v_acc:.3f}"


def epoch_cells(run: Run, row: dict[str, Any]) -> list[str]:
    """One history row with the paper's columns and precision (accuracies in percent)."""
    acc = exact_fraction(row["accuracy"], run.config["split"]["train"]["total"])
    return [str(row["epoch"]), f"{row['loss']:.3f}", f"{100 * acc:.3f}", *validation_cells(run, row),
            f"{row['lr']:g}", f"{row['next_lr']:g}", row["monitor"], f"{row['improvement']:.2f}",
            f"{row['duration']:.2f} s"]


def interim_label(run: Run) -> str:
    """" (interim, best epoch N)" for a run in progress with an interim evaluation, else ""."""
    return f" (interim, best epoch {run.interim['best_epoch']})" if run.interim else ""  # None once finished


def test_result(run: Run) -> str:
    """Test accuracy in percent with the error count, marked interim for a run in progress ("-" if none)."""
    t = run.results
    if t is None:
        return "-"
    n = run.config["split"]["test"]["total"]
    return f"{100 * t['accuracy']:.3f} % ({t['errors']} of {n:,} wrong)" + interim_label(run)


def log_loss_cell(run: Run) -> str:
    t = run.results
    return f"{t['log_loss']:.4f}" if t is not None else ""


# ---------------------------------------------------------------------------------------------------------
# the generated blocks of results/README.md
# ---------------------------------------------------------------------------------------------------------


def fig10_runs(runs: Sequence[Run]) -> list[Run]:
    """Runs that differ from the paper's recipe at most in the dense activation and the number of epochs."""
    return [r for r in runs if r.is_variant("dense_activation", "epochs")]


def seed_runs(runs: Sequence[Run]) -> list[Run]:
    """Runs of the paper's recipe, up to the seed."""
    return [r for r in runs if r.is_variant("seed")]


def optimizer_groups(runs: Sequence[Run]) -> dict[int, list[Run]]:
    """Runs of the paper's recipe up to the optimizer and ``--epochs``, by ``--epochs`` budget: the runs given
    that budget, and the runs the controller stopped within it (they would have stopped there with this budget
    too). Only budgets with at least two optimizers; Adamax, Adam, SGD in each group."""
    chosen = [r for r in runs if r.is_variant("optimizer", "epochs")]
    groups = {budget: [r for r in chosen if r.options["epochs"] == budget
                       or r.stopped_by_controller and len(r.history) <= budget]
              for budget in sorted({r.options["epochs"] for r in chosen})}
    return {budget: sorted(group, key=lambda r: OPTIMIZERS.index(r.options["optimizer"]))
            for budget, group in groups.items() if len({r.options["optimizer"] for r in group}) >= 2}


def best_epoch_row(run: Run) -> tuple[int | None, dict[str, Any] | None]:
    """(best epoch, its history row) of a run with test results, else (None, None)."""
    best = run.results["best_epoch"] if run.results else None
    return best, next((h for h in run.history if h["epoch"] == best), None)


def block_runs(runs: Sequence[Run]) -> str:
    rows = []
    for r in runs:
        extras = [name for name, there in (("report", (r.folder / "report.md").is_file()),
                                           ("figures", (r.folder / "figures").is_dir()),
                                           ("weights", (r.folder / WEIGHTS).is_file())) if there]
        extras += ["interim evaluation"] * (r.interim is not None)
        best = str(r.results["best_epoch"]) if r.results else ""
        rows.append([link(r), variant(r), r.status, best, test_result(r), log_loss_cell(r), f"`{r.trained_in}`",
                     ", ".join(extras) or "-"])
    return md_table(["run", "differs from the paper's recipe", "epochs", "best epoch", "test accuracy", "log loss",
                     "trained in", "published"], rows, "lllrrrll") if rows else "No run published yet.\n"


def block_table1(runs: Sequence[Run]) -> str:
    chosen = [r for r in runs if r.is_variant("epochs", "seed", "dedupe")]
    rows = []
    for k, paper in enumerate(PAPER_TABLE1):
        rows.append(["paper"] + paper)
        rows += [[link(r)] + epoch_cells(r, r.history[k]) for r in chosen if len(r.history) > k]
    note = "".join(f"- {link(r)}: {r.status}.\n" for r in chosen if len(r.history) < len(PAPER_TABLE1))
    return md_table(["run"] + EPOCH_COLUMNS, rows, "lrrrrrrrlrr") + ("\n" + note if note else "")


def block_table2(runs: Sequence[Run]) -> str:
    chosen = [r for r in runs if r.is_variant("epochs", "seed", "dedupe")]
    rows = [["paper", "", *PAPER_TABLE2, "1 of 2,359"]]
    for r in chosen:
        if r.finished:
            v = table2_values(r)
            v.update(accuracy=r.test["accuracy"], log_loss=r.test["log_loss"])  # full precision from config.json
            n = r.config["split"]["test"]["total"]
            rows.append([link(r), r.status, *(f"{v[k]:.4f}" for k in SUMMARY_COLUMNS), f"{r.test['errors']} of {n:,}"])
        elif r.interim:
            v, n = r.interim, r.config["split"]["test"]["total"]
            rows.append([link(r), r.status + interim_label(r), *(f"{v[k]:.4f}" for k in SUMMARY_COLUMNS),
                         f"{v['errors']} of {n:,}"])
        else:
            rows.append([link(r), r.status] + [""] * (len(SUMMARY_COLUMNS) + 1))
    return md_table(["run", "epochs", *SUMMARY_COLUMNS.values(), "test errors"], rows, "llrrrrrrr")


def block_tables34(runs: Sequence[Run]) -> str:
    chosen = [r for r in runs if r.is_variant("epochs", "seed", "dedupe") and r.results]
    waiting = [r for r in runs if r.is_variant("epochs", "seed", "dedupe") and not r.results]
    note = "".join(f"- {link(r)}: {r.status}; its tables come with its evaluation.\n" for r in waiting)
    note += "".join(f"- {link(r)}: {r.status}; its columns are interim, from the best weights of epoch "
                    f"{r.interim['best_epoch']} ([report]({r.name}/{INTERIM}/report.md)).\n"
                    for r in chosen if not r.finished)
    if not chosen:
        return "No finished run yet.\n" + note
    values = [uncertainty_values(r) for r in chosen]
    classes = list(values[0])
    header = ["class", "n"] + [f"{link(r)} entropy" for r in chosen] + [f"{link(r)} std max p" for r in chosen]
    rows = [[c, values[0][c][0]] + [v.get(c, ("", "?", ""))[1] for v in values]
            + [v.get(c, ("", "", "?"))[2] for v in values] for c in classes]
    return md_table(header, rows, "lr" + "r" * 2 * len(chosen)) + ("\n" + note if note else "")


def ablation_groups(runs: Sequence[Run]) -> dict[str, list[Run]]:
    """Table 6's variants (the paper's names) with the runs of each: the ablations, and ARN-CNN itself."""
    return {
        "attention off, residual block on": [r for r in runs if r.is_variant("attention", "epochs", "seed")
                                             and not r.options["attention"]],
        "attention on, residual block off": [r for r in runs if r.is_variant("residual", "epochs", "seed")
                                             and not r.options["residual"]],
        "both on (ARN-CNN)": [r for r in runs if r.is_variant("epochs", "seed")],
    }


def block_table6(runs: Sequence[Run]) -> str:
    groups = ablation_groups(runs)
    rows = []
    for name, (acc, loss) in PAPER_TABLE6.items():
        minarn = [[link(r), r.status + interim_label(r), f"{r.results['accuracy']:.4f}" if r.results else "",
                   log_loss_cell(r)] for r in groups[name]]
        for k, cells in enumerate(minarn or [["not run yet", "", "", ""]]):
            rows.append(([name, acc, loss] if k == 0 else ["", "", ""]) + cells)
    out = [md_table(["variant", "paper accuracy", "paper loss", "minarn run", "epochs", "minarn accuracy",
                     "minarn log loss"], rows, "lrrllrr")]
    ablations = [r for name, group in groups.items() if name != "both on (ARN-CNN)" for r in group]
    if ablations:  # the same epochs side by side: validation loss / accuracy of every variant that got that far
        n = max(len(r.history) for r in ablations)
        chosen = [r for group in groups.values() for r in group if len(r.history) >= n]
        cells = [[str(k + 1)] + [" / ".join(validation_cells(r, r.history[k])) for r in chosen] for k in range(n)]
        out.append(f"Validation loss / accuracy (%) in the first {n} epochs, every variant with at least {n}:\n")
        out.append(md_table(["epoch"] + [link(r) for r in chosen], cells, "r" * (len(chosen) + 1)))
    return "\n".join(out)


def block_fig7(runs: Sequence[Run]) -> str:
    out = []
    for r in runs:
        fig = f"{r.name}/figures/{FIGURE_FILES['learning_curves']}"
        if r.is_variant():
            out.append(f"**{link(r)}** ({r.status}):\n")
            interim_fig = f"{r.name}/{INTERIM}/figures/{FIGURE_FILES['learning_curves']}"
            if r.finished and (r.folder / "figures" / FIGURE_FILES["learning_curves"]).is_file():
                out.append(f"![Fig. 7, {r.name}]({fig})\n")
            elif r.interim and (r.folder.parent / interim_fig).is_file():
                out.append(f"![Fig. 7 so far, {r.name}]({interim_fig})\n\nEvery epoch so far:\n")
            else:
                out.append("Fig. 7 is drawn by the evaluation at the end of the run. Every epoch so far:\n")
            out.append(md_table(EPOCH_COLUMNS, [epoch_cells(r, h) for h in r.history], "rrrrrrrlrr"))
        elif r.finished and (r.folder / "figures" / FIGURE_FILES["learning_curves"]).is_file():
            out.append(f"Fig. 7 of {link(r)} ({variant(r)}): [{fig}]({fig})\n")
    return "\n".join(out) if out else "No run of the paper's recipe published yet.\n"


def block_fig10(runs: Sequence[Run]) -> str:
    chosen = fig10_runs(runs)
    labels = [f"{r.options['dense_activation']} ({link(r)})" for r in chosen]
    most = max((len(r.history) for r in chosen), default=0)
    rows = [[str(k + 1)] + [f"{r.history[k]['loss']:.4f}" if len(r.history) > k else "" for r in chosen]
            for k in range(most)]
    out = [md_table(["epoch"] + labels, rows, "r" * (len(chosen) + 1)) if chosen else ""]
    missing = [a for a in ("gelu", "relu") if a not in {r.options["dense_activation"] for r in chosen}]
    if missing:
        out.append(f"Not run yet: dense activation {', '.join(missing)}.\n")
    if chosen and (chosen[0].folder.parent / FIG10).is_file():  # the results folder
        folders = " ".join(f"results/{r.name}" for r in chosen)
        out.append(f"![Fig. 10]({FIG10})\n\nDrawn by `python -m minarn.evaluate --compare {folders} "
                   f"--out results/{FIG10}`.\n")
    return "\n".join(out)


def block_seeds(runs: Sequence[Run]) -> str:
    chosen = seed_runs(runs)
    rows = []
    for r in chosen:
        best, row = best_epoch_row(r)
        rows.append([link(r), str(r.options["seed"]), r.status, str(best or ""),
                     *(validation_cells(r, row) if row else ("", "")), test_result(r), log_loss_cell(r)])
    out = [md_table(["run", "seed", "epochs", "best epoch", "V_loss", "V_acc", "test accuracy", "log loss"], rows,
                    "lrlrrrrr") if rows else ""]
    if len({r.options["seed"] for r in chosen}) < 2:
        out.append("Second seed: not run yet.\n")
    elif chosen and (chosen[0].folder.parent / SEEDS_FIG).is_file():  # the results folder
        folders = " ".join(f"results/{r.name}" for r in chosen)
        out.append(f"![Loss per epoch by seed]({SEEDS_FIG})\n\nDrawn by `python -m minarn.evaluate --compare "
                   f"{folders} --by seed --out results/{SEEDS_FIG}`.\n")
    return "\n".join(o for o in out if o)


def block_optimizers(runs: Sequence[Run]) -> str:
    groups = optimizer_groups(runs)
    if not groups:
        return "Not run yet: no `--epochs` budget has runs of two optimizers.\n"
    out = []
    for budget, group in groups.items():
        out.append(f"`--epochs {budget}`:\n")
        rows = []
        for r in group:
            best, row = best_epoch_row(r)
            n, t = r.config["split"]["test"]["total"], r.results
            rows.append([r.options["optimizer"], link(r), r.status, str(best or ""),
                         *(validation_cells(r, row) if row else ("", "")), test_result(r),
                         accuracy_ci(n - t["errors"], n) if t else "", log_loss_cell(r),
                         log_loss_ci(run_predictions(r)) if t else ""])
        out.append(md_table(["optimizer", "run", "epochs", "best epoch", "V_loss", "V_acc", "test accuracy",
                             "95 % interval (Clopper-Pearson)", "log loss", "95 % interval (bootstrap)"], rows,
                            "lllrrrrrrr"))
        most = max(len(r.history) for r in group)
        cells = [[str(k + 1)] + [" / ".join(validation_cells(r, r.history[k])) if len(r.history) > k else ""
                                 for r in group] for k in range(most)]
        out.append("Validation loss / accuracy (%) per epoch:\n")
        out.append(md_table(["epoch"] + [f"{r.options['optimizer']} ({link(r)})" for r in group], cells,
                            "r" * (len(group) + 1)))
        fig = OPTIMIZER_FIG.format(epochs=budget)
        if (group[0].folder.parent / fig).is_file():  # the results folder
            folders = " ".join(f"results/{r.name}" for r in group)
            out.append(f"![Loss per epoch by optimizer, --epochs {budget}]({fig})\n\nDrawn by `python -m "
                       f"minarn.evaluate --compare {folders} --by optimizer --out results/{fig}`.\n")
    return "\n".join(out)


def block_dedupe(runs: Sequence[Run]) -> str:
    chosen = [r for r in runs if r.is_variant("dedupe", "seed")]
    rows = []
    for r in chosen:
        s, dup = r.config["split"], r.config.get("duplicates_in_train", {})
        rows.append([link(r), "yes" if r.options["dedupe"] else "no",
                     f"{s['train']['total']:,} / {s['valid']['total']:,} / {s['test']['total']:,}",
                     f"{dup.get('test', '?')} / {dup.get('valid', '?')}", r.status, test_result(r), log_loss_cell(r)])
    table = md_table(["run", "`--dedupe`", "train / valid / test", "test / valid images with a copy in train",
                      "epochs", "test accuracy", "log loss"], rows, "llrrlrr") if rows else ""
    if not any(r.options["dedupe"] for r in chosen):
        table += ("\n" if table else "") + "`--dedupe` run: not run yet.\n"
    return table


def block_times(runs: Sequence[Run]) -> str:
    rows = []
    for r in runs:
        d = [h["duration"] for h in r.history]
        rows.append([link(r), str(len(d)), duration(sum(d)) + ("" if r.finished else " so far"),
                     f"{sum(d) / len(d):.0f} s" if d else "", f"{min(d):.0f} s" if d else "",
                     f"{max(d):.0f} s" if d else "", r.config.get("backend", "?")])
    return md_table(["run", "epochs", "total", "mean epoch", "fastest", "slowest", "kernels"], rows, "lrrrrrl")


def block_versions(runs: Sequence[Run]) -> str:
    keys = ["minarn", "python", "numpy", "numba", "platform"]
    rows = [[link(r)] + [r.config.get("versions", {}).get(k, "-") for k in keys] for r in runs]
    return md_table(["run"] + keys, rows)


def block_data(runs: Sequence[Run]) -> str:
    rows = [[link(r), f"`{r.config.get('data_source') or r.options.get('data') or 'shipped sample'}`",
             f"`{r.config.get('data_identity', '?')}`",
             f"{sum(r.config['split'][k]['total'] for k in r.config['split']):,}",
             str(len(r.config.get("skipped_files", [])))] for r in runs]
    return md_table(["run", "data source (as recorded)", "data_identity", "images", "skipped files"], rows, "lllrr")


def block_commands(runs: Sequence[Run]) -> str:
    return "".join(f"{link(r)}:\n\n```\n{command(r)}\n```\n\n" for r in runs).rstrip("\n") + "\n" if runs else \
        "No run published yet.\n"


# ---------------------------------------------------------------------------------------------------------
# statistics: intervals, McNemar's exact test, the near-duplicate audit, time to accuracy
# ---------------------------------------------------------------------------------------------------------


def run_predictions(run: Run) -> TestPredictions | None:
    """The run's ``test_predictions.csv`` (None without one), checked against config.json: as many rows as test
    images, as many wrong as its errors and, where p(true) is given, the same log loss."""
    path = run.folder / PREDICTIONS
    if not run.finished or not path.is_file():
        return None
    try:
        pred = read_predictions(path)
    except EvaluationError as err:
        raise PublishError(str(err)) from None
    n, errors = run.config["split"]["test"]["total"], run.test["errors"]
    if len(pred.paths) != n or int((~pred.correct).sum()) != errors:
        raise PublishError(f"{path}: {len(pred.paths):,} images, {int((~pred.correct).sum())} wrong, but "
                           f"config.json has {n:,} test images and {errors} errors")
    if not np.isnan(pred.p_true).any():
        loss = float(np.mean(per_image_log_loss(pred)))
        if abs(loss - run.test["log_loss"]) > 1e-4 * max(1.0, run.test["log_loss"]) + 1e-7:
            raise PublishError(f"{path}: log loss {loss:.6f} from p_true but config.json has {run.test['log_loss']}")
    return pred


def per_image_log_loss(pred: TestPredictions) -> np.ndarray:
    """-ln clip(p_true, eps, 1 - eps) per image (float64 eps, as ``minarn.metrics.log_loss``)."""
    eps = np.finfo(np.float64).eps
    return -np.log(np.clip(pred.p_true, eps, 1 - eps))


def accuracy_ci(right: int, n: int) -> str:
    ci = metrics.clopper_pearson_interval(right, n)
    return f"{100 * ci.low:.3f}-{100 * ci.high:.3f} %"


def log_loss_ci(pred: TestPredictions | None, keep: np.ndarray | None = None) -> str:
    if pred is None or np.isnan(pred.p_true).any():
        return "n/a"
    losses = per_image_log_loss(pred)[keep if keep is not None else slice(None)]
    ci = metrics.bootstrap_mean_interval(losses)
    return f"{ci.low:.4f}-{ci.high:.4f}"


def errors_by_class(run: Run) -> tuple[np.ndarray, np.ndarray] | None:
    """(errors per true class, test images per true class) from report.md's confusion matrix; None without it."""
    try:
        header, rows = report_table(run, "## Confusion matrix")
        C = np.array([[int(v.replace(",", "")) for v in row[1:]] for row in rows])
    except (PublishError, ValueError):
        return None
    if C.shape != (len(header) - 1, len(header) - 1) or int(C.sum() - np.trace(C)) != run.test["errors"]:
        return None
    return C.sum(axis=1) - np.diag(C), C.sum(axis=1)


def same_split(a: Run, b: Run) -> bool:
    """The same split of the same files: same data_identity, --dedupe, --limit-per-class and --split."""

    def key(r: Run) -> tuple[Any, ...]:
        split = r.options.get("split")
        return (r.config.get("data_identity"), r.options["dedupe"], r.options["limit_per_class"],
                tuple(split) if split else None)

    return key(a) == key(b)


@dataclass
class Comparison:
    """McNemar's exact test of two finished runs on ``images`` shared test images (with ``errors_a`` / ``errors_b``
    on them): ``p_low`` == ``p_high`` when the pairing is known; ``only_a`` / ``only_b`` None when it is not."""

    images: int
    errors_a: int
    errors_b: int
    only_a: int | None
    only_b: int | None
    p_low: float
    p_high: float
    how: str


def compare(a: Run, b: Run) -> Comparison | None:
    """McNemar's exact test of two finished runs on their shared test images (module docstring); None when it
    cannot be computed."""
    if not (a.finished and b.finished):
        return None
    pa, pb = run_predictions(a), run_predictions(b)
    if pa is not None and pb is not None:
        if same_split(a, b):
            ca, cb = paired_correct(pa, pb, a.name, b.name)
            how = "paired by image"
        else:  # different splits: the images both test splits hold
            where = {path: k for k, path in enumerate(pb.paths.tolist())}
            common = [k for k, path in enumerate(pa.paths.tolist()) if path in where]
            if not common:
                return None
            ca, cb = pa.correct[common], pb.correct[[where[pa.paths[k]] for k in common]]
            how = "paired by image, on the images both test splits hold"
        r = metrics.mcnemar_exact(ca, cb)
        return Comparison(r.n, int((~ca).sum()), int((~cb).sum()), r.only_a, r.only_b, r.p_value, r.p_value, how)
    if not same_split(a, b):
        return None
    counts = []
    for run, pred in ((a, pa), (b, pb)):
        if run.test["errors"] == 0:
            counts.append(None)
        elif pred is not None:
            names = run.config["class_names"]
            wrong = ~pred.correct
            counts.append((np.array([int(np.sum(wrong & (pred.labels == c))) for c in names]),
                           np.array([int(np.sum(pred.labels == c)) for c in names])))
        else:
            counts.append(errors_by_class(run))
            if counts[-1] is None:
                return None
    known = [c for c in counts if c is not None]
    zeros = np.zeros(len(a.config["class_names"]), dtype=np.int64)
    sizes = known[0][1] if known else None
    ea, eb = (c[0] if c is not None else zeros for c in counts)
    low, high = metrics.mcnemar_exact_range(ea, eb, sizes)
    n, errors = a.config["split"]["test"]["total"], (a.test["errors"], b.test["errors"])
    if 0 in errors:  # A right where B is wrong, or the reverse
        return Comparison(n, *errors, errors[1] if errors[0] == 0 else 0, errors[0] if errors[1] == 0 else 0,
                          low, high, "one run has no test error: every error of the other is discordant")
    return Comparison(n, *errors, None, None, low, high,
                      "which images are wrong is not known: range over the pairings the per-class errors allow")


def comparisons(runs: Sequence[Run]) -> list[tuple[str, Run, Run]]:
    """The comparisons the tables draw: (what, run A, run B) for seeds, ablations against ARN-CNN, dense
    activation, optimizers at the same ``--epochs`` and --dedupe, finished runs only."""
    done = [r for r in runs if r.finished]
    out = [("seed", a, b) for a, b in itertools.combinations([r for r in seed_runs(done)], 2)
           if a.options["seed"] != b.options["seed"]]
    groups = ablation_groups(done)
    for name, group in groups.items():
        if name != "both on (ARN-CNN)":
            out += [(name, a, b) for a in group for b in groups["both on (ARN-CNN)"]]
    out += [("dense activation", a, b) for a, b in itertools.combinations(fig10_runs(done), 2)
            if a.options["dense_activation"] != b.options["dense_activation"]]
    for budget, group in optimizer_groups(done).items():
        out += [(f"optimizer (`--epochs {budget}`)", a, b) for a, b in itertools.combinations(group, 2)
                if a.options["optimizer"] != b.options["optimizer"]]
    dedupe = [r for r in done if r.is_variant("dedupe", "seed")]
    out += [("`--dedupe`", a, b) for a in dedupe if a.options["dedupe"] for b in dedupe if not b.options["dedupe"]]
    return out


def p_cell(c: Comparison) -> str:
    return f"{c.p_low:.3g}" if c.p_low == c.p_high else f"{c.p_low:.3g}-{c.p_high:.3g}"


def verdict(c: Comparison) -> str:
    if c.p_high < SIGNIFICANCE:
        return "yes"
    if c.p_low >= SIGNIFICANCE:
        return "no"
    return "depends on which images are wrong"


def block_intervals(runs: Sequence[Run]) -> str:
    rows = []
    for r in runs:
        t = r.results
        if t is None:
            continue
        n = r.config["split"]["test"]["total"]
        pred = run_predictions(r)
        rows.append([link(r), r.status + interim_label(r), f"{n:,}", str(t["errors"]), f"{100 * t['accuracy']:.3f} %",
                     accuracy_ci(n - t["errors"], n), f"{t['log_loss']:.4f}", log_loss_ci(pred)])
    if not rows:
        return "No finished run yet.\n"
    return md_table(["run", "epochs", "test images", "errors", "accuracy", "95 % interval (Clopper-Pearson)",
                     "log loss", "95 % interval (bootstrap)"], rows, "llrrrrrr")


def block_mcnemar(runs: Sequence[Run]) -> str:
    rows = []
    for what, a, b in comparisons(runs):
        c = compare(a, b)
        if c is None:
            rows.append([what, link(a), link(b), "", "", "", "not computable", ""])
            continue
        only = f"{c.only_a} / {c.only_b}" if c.only_a is not None else "?"
        rows.append([what, link(a), link(b), f"{c.images:,}", f"{c.errors_a} / {c.errors_b}", only, p_cell(c),
                     verdict(c)])
    if not rows:
        return "No comparison drawn yet.\n"
    return md_table(["comparison", "run A", "run B", "test images compared", "errors A / B",
                     "right only by A / only by B", "McNemar exact p",
                     f"distinguishable from chance ({SIGNIFICANCE:.0%})"], rows, "llllrrrl")


def read_audit(results: Path) -> tuple[dict[str, Any], list[dict[str, str]]] | None:
    """near_duplicates.json and near_copies.csv of results/near-duplicates/, None when not published."""
    folder = results / AUDIT
    if not (folder / AUDIT_FILES["json"]).is_file():
        return None
    try:
        summary = json.loads((folder / AUDIT_FILES["json"]).read_text(encoding="utf-8"))
        with open(folder / AUDIT_FILES["csv"], newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
        summary["threshold"], summary["splits"], summary["classes"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise PublishError(f"{folder}: unreadable audit ({type(err).__name__}: {err})") from None
    return summary, rows


def block_neardup(runs: Sequence[Run]) -> str:
    audit = read_audit(runs[0].folder.parent) if runs else None
    if audit is None:
        return f"Not run yet (`python -m minarn.near_duplicates DATA --out results/{AUDIT}`).\n"
    summary, copies = audit
    t = summary["threshold"]
    out = [(f"{summary['images']:,} images; threshold {t:.4f} ({summary['threshold_rule']}); every pair within "
            f"{summary['max_distance']} found in {summary['seconds']:.1f} s. "
            f"[Report]({AUDIT}/{AUDIT_FILES['report']}), [figure]({AUDIT}/{AUDIT_FILES['figure']}).\n")]
    out.append(md_table(["class", "images", "byte-identical groups", "extra copies", "near-identical groups",
                         "images in them"],
                        [[c["class"], f"{c['images']:,}" if c["images"] else "", str(c["exact_groups"]),
                          str(c["exact_extra"]),
                          str(c["near_groups"]), str(c["near_images"])] for c in summary["classes"]], "lrrrrr"))
    levels = list(next(iter(next(iter(summary["splits"].values())).values()))["near"])
    out.append(md_table(["split", "part", "images", "byte-identical copy in train",
                         *(f"near-copy within {float(x):.3g}" for x in levels)],
                        [[name, part, f"{v['images']:,}", str(v["exact"]), *(str(v["near"][x]) for x in levels)]
                         for name, parts in summary["splits"].items() for part, v in parts.items()], "llrrrrrr"))
    rows = []
    for r in [r for r in runs if r.finished and r.is_variant("dedupe", "seed")]:
        split = "dedupe" if r.options["dedupe"] else "paper"
        if summary["splits"][split]["test"]["images"] != r.config["split"]["test"]["total"]:
            raise PublishError(f"results/{AUDIT}: its {split} test split has "
                               f"{summary['splits'][split]['test']['images']} images, {r.name}'s "
                               f"{r.config['split']['test']['total']}: not the same data")
        near = {c["path"] for c in copies if c["split"] == split and c["part"] == "test" and float(c["distance"]) <= t}
        pred = run_predictions(r)
        n = r.config["split"]["test"]["total"]
        if pred is not None:
            if not near <= set(pred.paths.tolist()):
                raise PublishError(f"results/{AUDIT}: test images of the {split} split missing from "
                                   f"{r.name}/{PREDICTIONS}")
            keep = np.array([p not in near for p in pred.paths.tolist()])
            right, kept = int(pred.correct[keep].sum()), int(keep.sum())
            loss = f"{np.mean(per_image_log_loss(pred)[keep]):.4f}" if not np.isnan(pred.p_true).any() else "n/a"
            rows.append([link(r), split, str(len(near)), f"{right:,} of {kept:,}", accuracy_ci(right, kept), loss,
                         log_loss_ci(pred, keep)])
        elif r.test["errors"] == 0:
            kept = n - len(near)
            rows.append([link(r), split, str(len(near)), f"{kept:,} of {kept:,}", accuracy_ci(kept, kept), "n/a",
                         "n/a"])
    if rows:
        out.append(f"Test scores without the test images that have a byte-identical or near-identical copy in train "
                   f"(distance <= {t:.4f}):\n")
        out.append(md_table(["run", "split", "test images left out", "right", "95 % interval (Clopper-Pearson)",
                             "log loss", "95 % interval (bootstrap)"], rows, "llrrrrr"))
    return "\n".join(out)


def threads_cell(run: Run) -> str:
    """The threads recorded per start of the run (config.json "sessions"), and how many starts train.log shows."""
    log = run.folder / "train.log"
    starts = sum(1 for line in (log.read_text(encoding="utf-8").splitlines() if log.is_file() else [])
                 if line.startswith("minarn ") and "ARN-CNN training" in line)
    counts = sorted({str((sess.get("threads") or {}).get("numba", "?")) for sess in run.config.get("sessions", [])})
    recorded = len(run.config.get("sessions", []))
    if not recorded:
        return f"not recorded ({starts} start{'s' * (starts != 1)})"
    if recorded >= starts:
        return ", ".join(counts) + (" (1 start)" if recorded == 1 else f" (all {recorded} starts)")
    return ", ".join(counts) + f" ({recorded} of {starts} starts recorded)"


def block_time_to_accuracy(runs: Sequence[Run]) -> str:
    rows = [["paper", "GPU (not stated here)", "", "2", duration(sum(PAPER_EPOCH_SECONDS[:2])), "", "", "not reported",
             "", f"{np.mean(PAPER_EPOCH_SECONDS):.0f} s (epochs 1-5)"]]
    for r in runs:
        d = np.cumsum([h["duration"] for h in r.history])
        n_valid = r.config["split"]["valid"]["total"]
        hit = next((k for k, h in enumerate(r.history) if exact_fraction(h["val_accuracy"], n_valid)
                    >= TARGET_VAL_ACCURACY - 1e-12), None)
        best = r.results["best_epoch"] if r.results else None
        rows.append([link(r), f"`{r.config.get('versions', {}).get('platform', '?')}`, {r.config.get('backend', '?')}",
                     threads_cell(r), str(hit + 1) if hit is not None else "not reached",
                     duration(d[hit]) if hit is not None else "", str(best or ""),
                     duration(d[best - 1]) if best and best <= len(d) else "", r.status,
                     duration(d[-1]) + ("" if r.finished else " so far"), f"{d[-1] / len(d):.0f} s"])
    return md_table(["run", "machine, kernels", "threads", f"epochs to {100 * TARGET_VAL_ACCURACY:g} % V_acc",
                     "time to it", "best epoch", "time to it", "stop", "time to the stop", "mean epoch"],
                    rows, "lllrrrrlrr")




BLOCKS: dict[str, Callable[[Sequence[Run]], str]] = {
    "runs": block_runs, "table1": block_table1, "table2": block_table2, "tables34": block_tables34,
    "table6": block_table6, "fig7": block_fig7, "fig10": block_fig10, "seeds": block_seeds,
    "optimizers": block_optimizers, "dedupe": block_dedupe,
    "times": block_times, "versions": block_versions, "data": block_data, "commands": block_commands,
    "intervals": block_intervals, "mcnemar": block_mcnemar, "neardup": block_neardup,
    "timetoacc": block_time_to_accuracy,
}
OPENING, CLOSING = re.compile(r"<!-- generated:[\w-]+ -->"), re.compile(r"<!-- end:[\w-]+ -->")
MARKED = re.compile(r"(<!-- generated:(?P<name>[\w-]+) -->\n)(?P<body>.*?)(<!-- end:(?P=name) -->)", re.DOTALL)


def render(results: Path = RESULTS) -> tuple[str, str]:
    """(current text, regenerated text) of ``results/README.md``."""
    readme = results / "README.md"
    if not readme.is_file():
        raise PublishError(f"{readme}: missing")
    text = readme.read_text(encoding="utf-8")
    found = MARKED.findall(text)
    if len(found) != len(OPENING.findall(text)) or len(found) != len(CLOSING.findall(text)):
        raise PublishError(f"{readme}: unbalanced <!-- generated:NAME --> / <!-- end:NAME --> markers")
    unknown = [m[1] for m in found if m[1] not in BLOCKS]
    if unknown:
        raise PublishError(f"{readme}: unknown generated block(s) {unknown}; known: {list(BLOCKS)}")
    runs = read_published(results)
    blocks = {name: make(runs) for name, make in BLOCKS.items()}
    return text, MARKED.sub(lambda m: m.group(1) + blocks[m["name"]] + m.group(4), text)


def outdated(results: Path = RESULTS) -> list[str]:
    """Names of the generated blocks of README.md whose text differs from a fresh rendering."""
    old, new = render(results)
    fresh = {m["name"]: m["body"] for m in MARKED.finditer(new)}
    return [m["name"] for m in MARKED.finditer(old) if fresh[m["name"]] != m["body"]]


def write_tables(results: Path = RESULTS, say: Callable[[str], Any] = print) -> None:
    old, new = render(results)
    if new != old:
        (results / "README.md").write_text(new, encoding="utf-8")
    say(f"{results / 'README.md'}: " + ("updated" if new != old else "already up to date"))


# ---------------------------------------------------------------------------------------------------------
# command line
# ---------------------------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """Exit status: 0 done, 1 ``--check`` found README.md out of date, 2 bad usage or unusable files."""
    p = argparse.ArgumentParser(prog="python tools/publish.py", description=__doc__.split("\n\n")[0])
    p.add_argument("run_dir", nargs="?", metavar="RUN_DIR", help="run folder written by python -m minarn.train")
    p.add_argument("--name", help="folder name under results/ (default: the run folder's name)")
    p.add_argument("--weights", action="store_true", help=f"also copy {WEIGHTS} (finished runs only)")
    p.add_argument("--interim", action="store_true",
                   help="a run in progress: evaluate the best weights of its checkpoint first and publish that")
    p.add_argument("--tables", action="store_true", help="regenerate the generated parts of results/README.md")
    p.add_argument("--check", action="store_true", help="exit 1 if the generated parts of README.md are out of date")
    p.add_argument("--results", type=Path, default=RESULTS, help="results folder (default: %(default)s)")
    p.add_argument("--zero-error-predictions", action="store_true",
                   help=f"write RUN_DIR/{PREDICTIONS} of a finished run without test errors or weights (needs "
                   "the data)")
    p.add_argument("--data", help="with --zero-error-predictions: the data, if not where config.json says")
    args = p.parse_args(argv)
    if not (args.run_dir or args.tables or args.check) or (args.run_dir and args.check):
        p.error("give RUN_DIR, --tables or --check")
    if (args.name or args.weights or args.interim) and not args.run_dir:
        p.error("--name, --weights and --interim need RUN_DIR")
    if args.zero_error_predictions and not args.run_dir:
        p.error("--zero-error-predictions needs RUN_DIR")
    try:
        if args.check:
            stale = outdated(args.results)
            if stale:
                print(f"{args.results / 'README.md'}: generated blocks out of date: {', '.join(stale)}; "
                      f"run python tools/publish.py --tables", file=sys.stderr)
                return 1
            print(f"{args.results / 'README.md'}: up to date")
            return 0
        if args.zero_error_predictions:
            write_zero_error_predictions(Path(args.run_dir), args.data)
            return 0
        if args.run_dir:
            publish(Path(args.run_dir), args.results, args.name, args.weights, args.interim)
            draw_comparisons(args.results, read_published(args.results))
        write_tables(args.results)
        return 0
    except PublishError as err:
        print(f"python tools/publish.py: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
