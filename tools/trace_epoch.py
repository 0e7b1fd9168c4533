"""Watch one epoch of a run from inside: validation loss every few batches, with and without batch norm lag.

Usage::

    python tools/trace_epoch.py RUN_DIR --out TRACE_DIR [--every 50] [--images 1000]

``RUN_DIR`` is a run folder of ``minarn.train`` whose ``checkpoint.npz`` sits at an epoch boundary (a run that
ended, e.g. one trained with ``--epochs 2``). The script trains the next epoch exactly as ``minarn.train
--resume`` would (same batches, dropout masks and controller; the probe changes nothing, tests/test_train.py
checks that), in ``TRACE_DIR`` (``RUN_DIR`` is not touched), and every ``--every`` batches measures on a fixed,
seeded sample of ``--images`` validation images:

- ``val_loss`` / ``val_accuracy``: inference as Keras does it, batch norm on its moving statistics;
- ``recomputed_loss`` / ``recomputed_accuracy``: the same weights with the moving statistics recomputed from
  ``--images`` training images (``minarn.bn_statistics``), i.e. without the lag of the moving average;
- ``mean_lag_<layer>``: the largest |moving mean - recomputed mean| / sqrt(recomputed variance + eps) over the
  channels, and ``var_lag_<layer>``: the largest |ln((moving variance + eps) / (recomputed variance + eps))|
  (0.69 means a factor of 2 between the variance inference divides by and the activations' own).

If the validation loss jumps while the recomputed loss stays low, the jump is batch norm's moving statistics
lagging the weights; if both jump, the weights themselves went somewhere bad. Writes ``trace.csv`` (a row per
probe, appended as it goes), ``trace.png`` and the epoch's row in ``history.csv`` as ``minarn.train`` prints it.
"""

from __future__ import annotations

import argparse
import csv
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np

from minarn.bn_statistics import (
    batchnorm_layers,
    moving_statistics,
    recompute_batchnorm_statistics,
    set_moving_statistics,
)
from minarn.controller import EpochEndController
from minarn.data import Dataset
from minarn.evaluate import EvaluationError, load_run_splits
from minarn.model import ARNCNN
from minarn.optim import Optimizer
from minarn.train import Reporter, RunState, build_training, evaluate_split, fit, load_checkpoint


def stratified_sample(labels: np.ndarray, n: int, seed: int) -> np.ndarray:
    """About ``n`` indices (all if fewer; per-class counts are rounded), each class in proportion to its count,
    sorted; seeded."""
    if n >= len(labels):
        return np.arange(len(labels))
    order = np.random.default_rng(seed).permutation(len(labels))
    picked = [order[labels[order] == c][: round(n * np.mean(labels == c))] for c in np.unique(labels)]
    return np.sort(np.concatenate(picked))


def build(run_dir: Path, trace_dir: Path, report: Reporter, cache_dir: str | None = None
          ) -> tuple[ARNCNN, Optimizer, EpochEndController, RunState, Dataset, Dataset, dict[str, Any]]:
    """Model, optimizer, controller and run state from ``run_dir``'s checkpoint, and the run's splits, all
    built as ``python -m minarn.train --resume`` builds them."""
    if not (run_dir / "checkpoint.npz").is_file():
        raise SystemExit(f"trace_epoch: {run_dir} has no checkpoint.npz")
    try:
        splits, _, config, warnings = load_run_splits(run_dir, cache_dir=cache_dir, report=lambda msg: report(msg))
    except EvaluationError as err:
        raise SystemExit(f"trace_epoch: {err}") from None
    for warning in warnings:
        report(f"warning: {warning}")
    options = config["options"]
    model, optimizer, controller = build_training(options, len(config["class_names"]))
    run = load_checkpoint(run_dir / "checkpoint.npz", model, optimizer, controller)
    if run.batch != 0:
        raise SystemExit(f"trace_epoch: the checkpoint in {run_dir} is in the middle of epoch {run.epoch + 1} "
                         f"(batch {run.batch}); trace from an epoch boundary")
    for name in ("config.json", "history.csv"):
        if (run_dir / name).is_file():
            shutil.copyfile(run_dir / name, trace_dir / name)
    run.finished = False
    return model, optimizer, controller, run, splits.train, splits.valid, options


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--out", type=Path, required=True, help="folder for trace.csv, trace.png, history.csv")
    parser.add_argument("--every", type=int, default=50, help="batches between probes (default 50)")
    parser.add_argument("--images", type=int, default=1000,
                        help="validation images per probe, and training images for the recomputed statistics")
    parser.add_argument("--cache-dir", help="decoded-image cache, as minarn.train's --cache-dir")
    args = parser.parse_args(argv)
    if args.every < 1 or args.images < 1:
        parser.error("--every and --images must be >= 1")
    if args.out.resolve() == args.run_dir.resolve():
        parser.error("--out must differ from RUN_DIR (the run is not touched)")
    args.out.mkdir(parents=True, exist_ok=True)
    report = Reporter(args.out / "trace.log")
    model, optimizer, controller, run, train, valid, options = build(args.run_dir, args.out, report, args.cache_dir)
    val_idx = stratified_sample(valid.labels, args.images, seed=0)
    fit_idx = np.random.default_rng(1).choice(len(train), size=min(args.images, len(train)), replace=False)
    val_images, val_labels, fit_images = valid.images[val_idx], valid.labels[val_idx], train.images[np.sort(fit_idx)]
    steps = -(-len(train) // options["batch_size"])
    eps = {bn.name: bn.epsilon for bn in batchnorm_layers(model)}
    layers = list(eps)
    columns = ["epoch", "batch", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "recomputed_loss",
               "recomputed_accuracy"] + [f"{kind}_lag_{name}" for kind in ("mean", "var") for name in layers]
    trace_path = args.out / "trace.csv"
    with open(trace_path, "w", newline="") as f:
        csv.writer(f).writerow(columns)

    def probe(state: RunState) -> None:
        if state.batch % args.every and state.batch != steps:
            return
        v_loss, v_acc, _ = evaluate_split(model, val_images, val_labels, options["batch_size"])
        moving = recompute_batchnorm_statistics(model, fit_images, options["batch_size"])  # returns the old ones
        recomputed = moving_statistics(model)
        r_loss, r_acc, _ = evaluate_split(model, val_images, val_labels, options["batch_size"])
        set_moving_statistics(model, moving)
        lags = [float(np.max(np.abs(moving[n][0] - recomputed[n][0]) / np.sqrt(recomputed[n][1] + eps[n])))
                for n in layers]
        lags += [float(np.max(np.abs(np.log((moving[n][1] + eps[n]) / (recomputed[n][1] + eps[n])))))
                 for n in layers]
        nan = float("nan")  # no training batch yet at batch 0
        row = [state.epoch + 1, state.batch, state.loss_sum / state.seen if state.seen else nan,
               state.correct / state.seen if state.seen else nan, v_loss, v_acc, r_loss, r_acc, *lags]
        with open(trace_path, "a", newline="") as f:
            csv.writer(f).writerow([repr(float(v)) if isinstance(v, float) else v for v in row])
        report(f"epoch {state.epoch + 1} batch {state.batch}/{steps}: val loss {v_loss:.4f} (acc {100 * v_acc:.2f}%), "
               f"recomputed statistics {r_loss:.4f} ({100 * r_acc:.2f}%), lag (mean, var) "
               + ", ".join(f"{n} ({lags[i]:.2f}, {lags[i + len(layers)]:.2f})" for i, n in enumerate(layers)))

    report(f"tracing epoch {run.epoch + 1} of {args.run_dir}: a probe every {args.every} of {steps} batches, "
           f"{len(val_idx)} validation images, statistics from {len(fit_idx)} training images")
    probe(run)  # batch 0: the weights the epoch starts from
    fit(model, optimizer, controller, train, valid, epochs=run.epoch + 1, batch_size=options["batch_size"],
        seed=options["seed"], augment=options["augment"], run=run, out=args.out, report=report, on_batch=probe)
    (args.out / "checkpoint.npz").unlink(missing_ok=True)  # the trace is the product, not a run to resume
    plot(trace_path, args.out / "trace.png")
    report(f"wrote {trace_path} and {args.out / 'trace.png'}")
    report.close()
    return 0


def plot(trace_path: Path, png: Path) -> None:
    """Validation loss with moving vs recomputed statistics, and the lag, against the batch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(trace_path, newline="") as f:
        rows = list(csv.DictReader(f))
    batch = [int(r["batch"]) for r in rows]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 6), sharex=True)
    top.plot(batch, [float(r["val_loss"]) for r in rows], "o-", label="validation loss, moving statistics")
    top.plot(batch, [float(r["recomputed_loss"]) for r in rows], "s-", label="validation loss, recomputed statistics")
    top.plot(batch, [float(r["train_loss"]) for r in rows], "--", label="training loss (running mean)")
    top.set_yscale("log")
    top.set_ylabel("loss (with penalties)")
    top.legend(fontsize=8)
    top.set_title(f"epoch {rows[0]['epoch']} from inside" if rows else "no probes")
    for key in (k for k in (rows[0] if rows else {}) if "_lag_" in k):
        kind, _, layer = key.partition("_lag_")
        bottom.plot(batch, [float(r[key]) for r in rows], "o-" if kind == "mean" else "s--",
                    label=f"{layer}: " + ("|mean shift| / std" if kind == "mean" else "|ln variance ratio|"))
    bottom.set_ylabel("largest over the channels")
    bottom.set_xlabel("batch")
    bottom.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
