"""``python -m minarn.train``: the paper's training run on Medical MNIST, on a CPU.

Batch 40, Adamax 0.001 (paper form, Eq. 3-6), cross-entropy plus the dense head's penalties, up to 100 epochs,
the epoch-end controller (``minarn.controller``), one table row per epoch with the paper's columns, and the best
weights restored at the end. With no ``--data`` it trains on the sample shipped inside the package.

Outputs in ``--out`` (default ``runs/<timestamp>``): ``model.npz`` (best weights, ``minarn.load_model``),
``checkpoint.npz`` (everything needed to ``--resume``, written atomically after every epoch and on Ctrl-C or
SIGTERM), ``history.csv``, ``train.log``, ``config.json`` and ``train.lock`` (held while a training uses the folder).

Randomness: the model is initialised from ``--seed``; the shuffling of epoch ``e`` comes from the generator
seeded ``[seed, e]`` and the dropout mask and flips of batch ``b`` from ``[seed, e, b]``, so a run resumed at any
batch boundary continues exactly as an uninterrupted one.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import signal
import sys
import time
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path
from typing import Any, TextIO

import numpy as np

import minarn
from minarn import distributed, evaluate, kernels
from minarn.cli import Parser, UsageError
from minarn.controller import EpochEndController
from minarn.data import (
    CHANNEL_MODES,
    IMAGE_SIZE,
    SPLIT_FRACTIONS,
    DataError,
    Dataset,
    Splits,
    balanced_class_weights,
    batches,
    count_table,
    duplicate_groups,
    duplicates_in_train,
    load_mednist,
    sample_path,
    split_stages,
)
from minarn.download import download_mednist
from minarn.model import ARNCNN, DENSE_ACTIVATIONS
from minarn.optim import Optimizer
from minarn.run import (
    HISTORY_COLUMNS,
    LEFTOVERS,
    LOCK_FILE,
    RESUME_OPTIONS,
    SPLIT_SEED,
    CheckpointError,
    RunLock,
    RunState,
    append_history,
    build_training,
    check_out_outside_data,
    class_balance,
    data_identity,
    evaluate_split,
    input_format,
    load_checkpoint,
    previous_sessions,
    remove_stale_temp_files,
    rewrite_history,
    run_config,
    save_checkpoint,
    select_and_split,
    session,
)

# The run folder's names (minarn.run) stay importable from here, as the training's own.
__all__ = ["HISTORY_COLUMNS", "LOCK_FILE", "RESUME_OPTIONS", "CheckpointError", "Interrupted", "Reporter", "RunState",
           "TrainingDiverged", "UsageError", "build_parser", "build_training", "data_identity", "evaluate_split", "fit",
           "format_row", "input_format", "load_checkpoint", "main", "save_checkpoint", "select_and_split"]

# Defaults on the 600-image sample shipped in the package: a few minutes on 2 cores. Batch 5 gives batch norm's
# moving statistics (momentum 0.99) ~860 updates in 8 epochs (0.99^860 < 2e-4, so the initial variance of 1 has
# faded below epsilon); at the paper's batch 40 they would get ~110, too
# few for inference-mode predictions to mean anything. The full data use the paper's batch 40 and 100 epochs.
SAMPLE_EPOCHS = 8
SAMPLE_BATCH_SIZE = 5
PAPER_BATCH_SIZE = 40
PAPER_EPOCHS = 100
MIN_IMAGE_SIZE = 26  # smaller inputs shrink below a 3x3 kernel or 2x2 pooling window inside the network
MAX_IMAGE_SIZE = 512  # at 512 the dense(256) layer alone holds 500 million weights


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite."""


# -- output ---------------------------------------------------------------------------------------------
class Reporter:
    """Prints to the terminal and appends to ``train.log``; progress lines only go to the terminal."""

    GREEN, ORANGE, RESET = "\033[32m", "\033[38;5;208m", "\033[0m"

    def __init__(self, log_path: Path | None, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stdout
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.log = open(log_path, "a", encoding="utf-8") if log_path else None
        self._progress_shown = False
        self._last_plain = 0.0

    def __call__(self, text: str = "", color: str | None = None) -> None:
        self._end_progress()
        shown = f"{color}{text}{self.RESET}" if color and self.tty else text
        print(shown, file=self.stream, flush=True)
        if self.log:
            self.log.write(text + "\n")
            self.log.flush()

    def progress(self, text: str, final: bool = False) -> None:
        """In place on a terminal; when the output is a file, a plain line at most every 30 s."""
        if self.tty:
            print("\r" + text + "\033[K", end="", file=self.stream, flush=True)
            self._progress_shown = True
        elif final or time.monotonic() - self._last_plain >= 30:
            print(text, file=self.stream, flush=True)
            self._last_plain = time.monotonic()

    def _end_progress(self) -> None:
        if self._progress_shown:
            print("\r\033[K", end="", file=self.stream, flush=True)
            self._progress_shown = False

    def close(self) -> None:
        if self.log:
            self.log.close()


def _format_duration(seconds: float) -> str:
    """'02:05' (min:s), or '8:01:12' (h:min:s) from an hour on: the ETA of the progress line."""
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}" if seconds >= 3600 else \
        f"{seconds // 60:02d}:{seconds % 60:02d}"


def _spelled_duration(seconds: float) -> str:
    """'14 min 37 s', or '8 h 01 min' from an hour on: a length of time that cannot be read as a clock time."""
    seconds = int(round(seconds))
    return f"{seconds // 3600} h {seconds // 60 % 60:02d} min" if seconds >= 3600 else \
        f"{seconds // 60} min {seconds % 60:02d} s"


TABLE_HEADER = (f"{'Epoch':^8s}{'Loss':^10s}{'Accuracy':^10s}{'V_loss':^10s}{'V_acc':^10s}{'LR':^9s}"
                f"{'Next LR':^9s}{'Monitor':^10s}{'% Improv':^10s}{'Duration':^10s}")


def format_row(row: dict[str, Any], epochs: int) -> str:
    """One line of the per-epoch table, with the paper's precision (accuracy in percent)."""
    return (f"{str(row['epoch']) + '/' + str(epochs):^8s}{row['loss']:^10.3f}{100 * row['accuracy']:^10.3f}"
            f"{row['val_loss']:^10.5f}{100 * row['val_accuracy']:^10.3f}{row['lr']:^9.5f}{row['next_lr']:^9.5f}"
            f"{row['monitor']:^10s}{row['improvement']:^10.2f}{row['duration']:^10.2f}")


# -- the training loop ---------------------------------------------------------------------------------
class Interrupted(KeyboardInterrupt):
    """Training stopped by a signal (``signum``); the exit status is 128 + signum (130 Ctrl-C, 143 SIGTERM)."""

    def __init__(self, signum: int = signal.SIGINT, immediate: bool = False) -> None:
        super().__init__(signum)
        self.signum = int(signum)
        self.immediate = immediate  # a second signal: stopped inside a batch, without a checkpoint


class _Interrupt:
    """First Ctrl-C (SIGINT) or SIGTERM (``kill``, ``timeout``, a job scheduler's notice): finish the current
    batch, checkpoint, stop. A second signal: stop at once. ``signum`` is the first signal's number."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.requested = False
        self.signum: int = signal.SIGINT
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> _Interrupt:
        def handler(signum: int, frame: Any) -> None:
            if self.requested:
                raise Interrupted(signum, immediate=True)
            self.requested, self.signum = True, signum

        try:
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, handler)
        except ValueError:  # not in the main thread: no handler, Ctrl-C behaves as usual
            self.__exit__()
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous = {}


def fit(
    model: ARNCNN,
    optimizer: Optimizer,
    controller: EpochEndController,
    train: Dataset,
    valid: Dataset,
    *,
    epochs: int,
    batch_size: int,
    seed: int,
    augment: str,
    run: RunState,
    out: Path,
    report: Reporter,
    on_batch: Callable[[RunState], None] | None = None,
    class_weights: np.ndarray | None = None,
    comm: distributed.Communicator | None = None,
) -> RunState:
    """Train until ``epochs`` or the controller stops; checkpoint after every epoch (and on Ctrl-C or SIGTERM).

    ``on_batch(run)``, when given, is called after every optimizer step (``run.batch`` is then the number of
    batches done in epoch ``run.epoch``); it lets a probe watch an epoch from inside (tools/trace_epoch.py).
    ``class_weights`` (K,) weight the training cross-entropy per class (``--class-weight balanced``).
    ``comm`` (``minarn.distributed``): with several ranks each runs its rows of every batch and only rank 0
    writes; every rank's model, optimizer and state stay equal to rank 0's."""
    comm = comm or distributed.SingleProcess()
    root = comm.rank == 0
    sync_bn = distributed.synchronize_batch_norm(model, comm)
    n = len(train)
    steps = math.ceil(n / batch_size)
    history_path = out / "history.csv"
    checkpoint = out / "checkpoint.npz"
    saved = {"at": f"epoch {run.epoch}, batch {run.batch}" if run.batch else f"epoch {run.epoch}"} \
        if checkpoint.exists() else {}

    def write_checkpoint() -> None:
        try:
            save_checkpoint(checkpoint, model, optimizer, controller, run)
        except OSError as err:
            last = (f"the last checkpoint written (after {saved['at']}) is intact: free some space, then continue "
                    f"with --resume --out {out}") if saved else "no checkpoint was written yet"
            raise CheckpointError(f"cannot write the checkpoint {checkpoint}: {err.strerror or err}; {last}") from None
        saved["at"] = f"epoch {run.epoch}, batch {run.batch}" if run.batch else f"epoch {run.epoch}"

    with _Interrupt() as interrupt:
        while run.epoch < epochs and not run.finished:
            order = np.random.default_rng([seed, run.epoch]).permutation(n)
            lr = optimizer.learning_rate
            started = time.perf_counter() - run.epoch_time
            epoch_batches = batches(train.images, train.labels, batch_size, num_classes=model.num_classes,
                                    order=order, start=run.batch, flip=augment == "hflip",
                                    batch_rng=lambda b: np.random.default_rng([seed, run.epoch, b]))
            for b, batch_idx, batch_x, batch_y, batch_rng in epoch_batches:
                part = distributed.shard(len(batch_idx), comm.rank, comm.size)  # this rank's rows of the batch
                rows = part.rows if part.count else slice(0, 1)  # no rows: a one-row stand-in
                idx, x, y = batch_idx[rows], batch_x[rows], batch_y[rows]
                model.dropout.set_generator(distributed.RowsOf(batch_rng, part))  # the masks of this rank's rows
                if sync_bn is not None:
                    sync_bn.share, sync_bn.contributes = part.share, part.count > 0
                loss, grads = (model.loss_and_grads(x, y) if class_weights is None else
                               model.loss_and_grads(x, y, class_weights))
                grads = distributed.allreduce_gradients(comm, grads, part.share)  # sum_r share_r * grads_r
                assert model.last_probs is not None  # loss_and_grads keeps the batch's probabilities
                correct = int(np.sum(model.last_probs.argmax(axis=1) == train.labels[idx])) if part.count else 0
                if comm.size > 1:  # the batch's loss and hits, and whether any rank was asked to stop
                    loss_sum, correct, stop = comm.allreduce(np.array([loss * part.count, correct,
                                                                       interrupt.requested])).tolist()
                    loss, correct = loss_sum / len(batch_idx), int(correct)
                if not math.isfinite(loss):
                    where = (f"the last good checkpoint is {checkpoint}" if checkpoint.exists() else
                             f"no checkpoint was written (it diverged in the first epoch; try a smaller --lr than "
                             f"{optimizer.learning_rate:g})")
                    raise TrainingDiverged(
                        f"loss became {loss} at epoch {run.epoch + 1}, batch {b + 1}: training stopped; {where}")
                optimizer.apply(model.parameters(), grads)
                run.loss_sum += loss * len(batch_idx)
                run.correct += correct
                run.seen += len(batch_idx)
                run.batch = b + 1
                if on_batch is not None:
                    on_batch(run)
                elapsed = time.perf_counter() - started
                rate = (run.seen) / max(elapsed, 1e-9)
                eta = (n - run.seen) / max(rate, 1e-9)
                report.progress(
                    f"epoch {run.epoch + 1}/{epochs}  batch {b + 1}/{steps}  loss {run.loss_sum / run.seen:.4f}  "
                    f"accuracy {100 * run.correct / run.seen:.3f}  {rate:.0f} img/s  ETA {_format_duration(eta)}",
                    final=b + 1 == steps)
                # several ranks decide on the all-reduced flag (a signal handled after it counts at the next one)
                if (stop > 0 if comm.size > 1 else interrupt.requested) and b + 1 < steps:
                    run.epoch_time = time.perf_counter() - started
                    if root:
                        write_checkpoint()
                    report(f"Interrupted at epoch {run.epoch + 1}, batch {b + 1}/{steps}: checkpoint saved to "
                           f"{checkpoint}; continue with --resume --out {out}")
                    raise Interrupted(interrupt.signum)
            acc, train_loss = run.correct / max(run.seen, 1), run.loss_sum / max(run.seen, 1)
            v_loss, v_acc, _ = evaluate_split(model, valid.images, valid.labels, batch_size, comm)
            decision = controller.on_epoch_end(run.epoch, acc, v_loss, lr, snapshot=model.state_dict)
            if decision.next_lr != lr:
                optimizer.learning_rate = decision.next_lr
            if decision.restore:
                model.load_state_dict(controller.best_weights)
            row = dict(epoch=run.epoch + 1, loss=train_loss, accuracy=acc, val_loss=v_loss, val_accuracy=v_acc,
                       lr=lr, next_lr=decision.next_lr, monitor=decision.monitor,
                       improvement=decision.improvement, duration=time.perf_counter() - started)
            color = Reporter.GREEN if decision.improved else (Reporter.ORANGE if decision.next_lr != lr else None)
            report(format_row(row, epochs), color=color)
            run.history.append(row)
            if root:
                try:
                    append_history(history_path, row)
                except OSError as err:
                    raise CheckpointError(f"cannot write {history_path}: {err.strerror or err}; the checkpoint of "
                                          f"the epoch before is intact: free some space, then --resume --out {out}"
                                          ) from None
            run.epoch, run.batch, run.loss_sum, run.correct, run.seen, run.epoch_time = run.epoch + 1, 0, 0.0, 0, 0, 0.0
            if decision.stop:
                report(f"training stopped at epoch {row['epoch']}: {controller.stop_patience} learning-rate cuts "
                       f"without improvement")
                run.finished = True
            # a signal may reach the ranks at different moments: all stop here, or none
            stopping = (comm.allreduce(np.array([interrupt.requested], np.float64))[0] > 0 if comm.size > 1
                        else interrupt.requested)
            if root:
                write_checkpoint()
            if stopping:
                report(f"Interrupted after epoch {row['epoch']}: checkpoint saved; continue with --resume --out {out}")
                raise Interrupted(interrupt.signum)
    return run


# -- command line ----------------------------------------------------------------------------------------
def _number(text: str, convert: Callable[[str], Any], ok: Callable[[Any], bool], expected: str) -> Any:
    """``convert(text)`` if that works and passes ``ok``; else argparse's error "expected ..., got 'text'"."""
    try:
        value = convert(text)
    except ValueError:
        value = None
    if value is None or not ok(value):
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
    return value


def _positive_int(text: str) -> int:
    return int(_number(text, int, lambda v: v >= 1, "a positive integer"))


def _nonnegative_int(text: str) -> int:
    return int(_number(text, int, lambda v: v >= 0, "an integer >= 0"))


def _positive_float(text: str) -> float:
    return float(_number(text, float, lambda v: v > 0 and math.isfinite(v), "a positive number"))


def _split_fractions(text: str) -> list[float]:
    try:
        fractions = [float(Fraction(part.strip())) for part in text.split(",")]
    except (ValueError, ZeroDivisionError):
        raise argparse.ArgumentTypeError(f"expected three fractions TRAIN,VALID,TEST such as 0.8,0.1,0.1, "
                                         f"got {text!r}") from None
    if len(fractions) != 3:
        raise argparse.ArgumentTypeError(f"expected three fractions TRAIN,VALID,TEST such as 0.8,0.1,0.1, got "
                                         f"{len(fractions)} in {text!r}")
    try:
        split_stages(fractions)
    except DataError as err:
        said = str(err)  # names the fractions as floats; the text as given when that reads differently
        raise argparse.ArgumentTypeError(said if text.replace(" ", "") in said else f"{said} (from {text!r})") from None
    return fractions


def _image_size(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number of pixels, got {text!r}") from None
    if not MIN_IMAGE_SIZE <= value <= MAX_IMAGE_SIZE:
        raise argparse.ArgumentTypeError(
            f"expected {MIN_IMAGE_SIZE} to {MAX_IMAGE_SIZE} pixels, got {value} (below {MIN_IMAGE_SIZE} the network's "
            f"poolings and 3x3 convolutions leave nothing to convolve; above {MAX_IMAGE_SIZE} the dense layer "
            "outgrows a CPU's memory)")
    return value


EPILOG = """examples:
  python -m minarn.train                                          the shipped 600-image sample, a few minutes
  python -m minarn.train --data MedNIST.tar.gz                    the paper's run on the full set
  python -m minarn.train --resume --out runs/20261124-001500      continue an interrupted run where it stopped
  python -m minarn.train --data MedNIST.tar.gz --no-attention --epochs 6    a Table 6 ablation
  python -m minarn.train --data my_images/ --split 0.7,0.15,0.15 --channels 3   your own images, here RGB

threads: minarn uses every core by default; to share the machine set NUMBA_NUM_THREADS and
OPENBLAS_NUM_THREADS (e.g. both 1 for two runs side by side on two cores) before starting."""


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="python -m minarn.train", description=__doc__.split("\n\n")[0], epilog=EPILOG,
                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", help="MedNIST folder or .tar/.tar.gz/.zip (default: the sample shipped in minarn)")
    p.add_argument("--download", action="store_true", help="download the public MedNIST archive into the cache")
    p.add_argument("--cache-dir", help="where decoded datasets and downloads are cached (default: ~/.cache/minarn)")
    p.add_argument("--epochs", type=_positive_int,
                   help=f"maximum epochs (default: {PAPER_EPOCHS}; {SAMPLE_EPOCHS} on the shipped sample)")
    p.add_argument("--batch-size", type=_positive_int,
                   help=f"images per step (default: {PAPER_BATCH_SIZE}, the paper's; {SAMPLE_BATCH_SIZE} on the "
                   "shipped sample)")
    p.add_argument("--lr", type=_positive_float, default=0.001, help="initial learning rate (default: %(default)s)")
    p.add_argument("--seed", type=_nonnegative_int, default=123,
                   help="model initialisation, shuffling, dropout (default: %(default)s; the split always uses 123)")
    p.add_argument("--out", help="run folder (default: runs/<timestamp>)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    p.add_argument("--no-attention", action="store_true", help="ablation: no attention modules (Table 6)")
    p.add_argument("--no-residual", action="store_true", help="ablation: no skip connection (Table 6)")
    p.add_argument("--dense-activation", default="gelu", choices=DENSE_ACTIVATIONS, metavar="NAME",
                   help=f"activation of the dense(256) layer, one of {', '.join(DENSE_ACTIVATIONS)} "
                   "(default: %(default)s, the paper's; Fig. 10 compares them)")
    p.add_argument("--optimizer", default="adamax", choices=["adamax", "adam", "sgd"],
                   help="adamax (the paper's Eq. 3-6), adam or sgd (default: %(default)s)")
    p.add_argument("--backend", choices=list(kernels.BACKENDS),
                   help=f"kernel backend (default: ${kernels.ENV_VAR}, else auto: Numba when installed)")
    p.add_argument("--augment", default="none", choices=["none", "hflip"],
                   help="training-time augmentation: none (the paper's) or random horizontal flips "
                   "(default: %(default)s)")
    p.add_argument("--dedupe", action="store_true", help="remove byte-identical duplicates before splitting")
    p.add_argument("--limit-per-class", type=_positive_int, metavar="N",
                   help="use at most N images per class (quick runs; in each part of a split dataset)")
    p.add_argument("--split", type=_split_fractions, metavar="TRAIN,VALID,TEST",
                   help="fractions of the stratified split (default: the paper's "
                   f"{','.join(map(str, SPLIT_FRACTIONS))}); a dataset with train/, valid/ (or val/) and test/ "
                   "folders is used as it is")
    p.add_argument("--image-size", type=_image_size, metavar="N",
                   help=f"images are resized to NxN, the model's input (default: {IMAGE_SIZE}, MedNIST's size)")
    p.add_argument("--channels", type=int, choices=sorted(CHANNEL_MODES),
                   help="1: images converted to grayscale (default, the paper's); 3: RGB")
    p.add_argument("--class-weight", choices=["none", "balanced"],
                   help="balanced: each class's cross-entropy weighted by n_train / (classes x its images), as "
                   "Keras' class_weight (default: none)")
    return p



def _options_from_args(args: argparse.Namespace, data_source: str) -> dict[str, Any]:
    """The run's options (config.json). Those for your own data (split, image_size, channels, class_weight) are
    recorded only when they differ from the defaults, so a default run's options read as the published runs'
    (which predate them); readers use ``options.get`` with the defaults (``input_format``, ``select_and_split``)."""
    own_data = dict(split=args.split, image_size=args.image_size, channels=args.channels,
                    class_weight=None if args.class_weight == "none" else args.class_weight)
    own_defaults = dict(split=None, image_size=IMAGE_SIZE, channels=1, class_weight=None)
    return dict(data=data_source, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                attention=not args.no_attention, residual=not args.no_residual,
                dense_activation=args.dense_activation, optimizer=args.optimizer, augment=args.augment,
                dedupe=args.dedupe, limit_per_class=args.limit_per_class,
                **{k: v for k, v in own_data.items() if v is not None and v != own_defaults[k]})


def main(argv: list[str] | None = None, stream: TextIO | None = None) -> int:
    """Run the command line; returns the exit status (0 done, 1 training failed, 2 bad usage, 130 interrupted by
    Ctrl-C, 143 by SIGTERM)."""
    err = sys.stderr
    argv = sys.argv[1:] if argv is None else list(argv)
    try:  # under mpiexec: MPI's ranks (python -m minarn.distributed tells which)
        comm = distributed.join_job()
    except distributed.DistributedError as e:
        print(f"python -m minarn.train: error: {e}", file=err)
        return 2
    try:
        args = build_parser().parse_args(argv)
        args.argv, args.comm = argv, comm
        return _main(args, stream)
    except UsageError as e:
        return distributed.fail(comm, f"python -m minarn.train: error: {e}", 2, err)
    except DataError as e:
        return distributed.fail(comm, f"python -m minarn.train: data error: {e}", 2, err)
    except OSError as e:  # writing the run's files (disk full, permissions): one line, not a traceback
        return distributed.fail(comm, f"python -m minarn.train: error: {e}", 1, err)


def _main(args: argparse.Namespace, stream: TextIO | None) -> int:
    try:
        if args.backend:
            kernels.use_backend(args.backend)
        else:  # no --backend: $MINARN_BACKEND decides, as the README says
            kernels.get_backend()
    except (ImportError, ValueError) as e:
        raise UsageError(str(e) if args.backend else f"{e} (from ${kernels.ENV_VAR})") from None
    comm = args.comm
    out = Path(args.out) if args.out else Path("runs") / comm.bcast(time.strftime("%Y%m%d-%H%M%S"))
    if args.resume:
        if not args.out:
            raise UsageError("--resume needs --out RUN_DIR (the folder of the run to continue)")
        if not (out / "checkpoint.npz").exists():
            raise UsageError(f"--resume: no checkpoint.npz in {out}")
        try:
            saved = json.loads((out / "config.json").read_text())["options"]
            missing = [k for k in RESUME_OPTIONS if k not in saved]
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise UsageError(f"--resume: cannot read the run's options from {out / 'config.json'}: {err!r}") from None
        if missing:
            raise UsageError(f"--resume: {out / 'config.json'} lacks the option(s) {', '.join(missing)} (edited, or "
                             "not written by minarn.train): the run cannot be continued; start a new one")
        changed = _changed_on_resume(args, saved)
        if changed:
            raise UsageError(f"--resume continues the run in {out} with its own options and cannot change "
                             f"{', '.join(changed)}; drop them (only --epochs, --cache-dir and --backend can be "
                             "given), or start a new run with another --out")
        options = {**saved, "epochs": args.epochs or saved["epochs"]}
    else:
        if (out / "checkpoint.npz").exists():
            raise UsageError(f"{out} already holds a run; use --resume to continue it or another --out")
        leftovers = [name for name in LEFTOVERS if (out / name).exists()]
        if leftovers:
            raise UsageError(f"{out} holds {' and '.join(leftovers)} of an earlier run but no checkpoint.npz to "
                             "resume it from; a new run there would mix with them: move them away or choose "
                             "another --out")
        check_out_outside_data(out, Path(args.data) if args.data else sample_path())
        source = args.data
        if args.download:
            source = comm.bcast(str(download_mednist(args.cache_dir)) if comm.rank == 0 else None)
        options = _options_from_args(args, source or "")
        options["epochs"] = args.epochs or (PAPER_EPOCHS if source else SAMPLE_EPOCHS)
        options["batch_size"] = args.batch_size or (PAPER_BATCH_SIZE if source else SAMPLE_BATCH_SIZE)
    root = comm.rank == 0  # rank 0 alone writes the run folder and prints
    if root:
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise UsageError(f"cannot create the run folder {out}: {err.strerror or err}") from None
    with RunLock(out) if root else contextlib.nullcontext():
        removed = remove_stale_temp_files(out) if root else []
        report = Reporter(out / "train.log", stream) if root else Reporter(None, open(os.devnull, "w"))
        try:
            if removed:
                report(f"removed {len(removed)} temporary file(s) that an interrupted run left in {out}: "
                       f"{', '.join(removed)}")
            return _run(options, args, out, report)
        finally:
            report.close()


def _changed_on_resume(args: argparse.Namespace, saved: dict[str, Any]) -> list[str]:
    """The options given with --resume that differ from the run's own (each as ``--flag value (the run's:
    value)``); --epochs, --cache-dir, --backend and --out may be given."""
    quiet = build_parser()  # the same parser without defaults: only what the command line gave
    for action in quiet._actions:  # (set_defaults would also put its values into the namespace)
        action.default = argparse.SUPPRESS
    given = vars(quiet.parse_args(getattr(args, "argv", [])))
    mine = json.loads(json.dumps(_options_from_args(args, args.data or ""), default=str))  # as config.json has them
    keys = {"no_attention": "attention", "no_residual": "residual"}
    changed = []
    for dest, value in given.items():
        key = keys.get(dest, dest)
        if key == "epochs" or key not in mine and key not in saved:
            continue
        if key == "data":
            same = Path(value).resolve() == Path(saved.get("data") or sample_path()).resolve()
        else:
            same = mine.get(key) == saved.get(key)
        if not same:
            flag = "--" + dest.replace("_", "-")
            changed.append(flag if isinstance(value, bool) else f"{flag} {value} (the run's: {saved.get(key)})")
    if "download" in given:
        changed.append("--download")
    return changed



def _run(options: dict[str, Any], args: argparse.Namespace, out: Path, report: Reporter) -> int:
    comm = args.comm
    root = comm.rank == 0
    source = options["data"] or str(sample_path())
    report(f"minarn {minarn.__version__}: ARN-CNN training, kernels: {kernels.get_backend().NAME}, run folder: {out}")
    size, channels = input_format(options)
    ds = load_mednist(source, image_size=size, channels=channels, cache_dir=args.cache_dir,
                      report=lambda msg: report(msg))
    report(f"data: {source} ({len(ds):,} images, {ds.num_classes} classes"
           + (f", {len(ds.skipped)} files skipped" if ds.skipped else "") + f"; {size}x{size} "
           + ("grayscale" if channels == 1 else "RGB") + ")")
    try:
        ds, splits = select_and_split(ds, options)
    except ValueError as e:
        hint = f" (--limit-per-class {options['limit_per_class']} leaves too few images)" \
            if options["limit_per_class"] else ""
        raise UsageError(f"cannot split {source} into train/valid/test{hint}: {e}") from None
    report("split: the dataset's own train/, valid/ and test/ folders" if ds.part is not None else
           "split: stratified " + "/".join(f"{f:g}" for f in options.get("split") or SPLIT_FRACTIONS)
           + f", seed {SPLIT_SEED}")
    report(count_table(splits))
    if options["batch_size"] > len(splits.train):
        report(f"warning: --batch-size {options['batch_size']} is larger than the training split "
               f"({len(splits.train)} images): every epoch is one step of {len(splits.train)} images")
    for line in class_balance(splits):
        report(line)
    class_weights = None
    if options.get("class_weight") == "balanced":
        class_weights = balanced_class_weights(splits.train.labels, ds.num_classes)
        report("class weights (balanced, n / (classes x n_class) on train): "
               + ", ".join(f"{c} {w:.3f}" for c, w in zip(ds.class_names, class_weights)))
    groups = duplicate_groups(ds)
    leaks = duplicates_in_train(splits)
    report(f"exact duplicates: {sum(len(g) - 1 for g in groups)} extra copies in {len(groups)} groups"
           + (" (removed before splitting)" if options["dedupe"] else "")
           + f"; images with an identical copy in train: valid {leaks['valid']}, test {leaks['test']}")
    model, optimizer, controller = build_training(options, ds.num_classes)
    if args.resume:
        run = load_checkpoint(out / "checkpoint.npz", model, optimizer, controller)
        run.finished = run.finished and options["epochs"] <= run.epoch
        if root:
            rewrite_history(out / "history.csv", run.history)
        report(f"resumed from {out / 'checkpoint.npz'} at epoch {run.epoch + 1}, batch {run.batch + 1}")
    else:
        run = RunState()
    run = distributed.broadcast_training(comm, model, optimizer, controller, run)  # several ranks: rank 0's
    sessions = previous_sessions(out) if args.resume else []
    sessions.append(session(getattr(args, "argv", []), run))
    if comm.size > 1:
        sessions[-1].update(ranks=comm.size, ranks_on_host=comm.host_ranks)
        where = comm.allgather(f"{os.getpid()} on {os.uname().nodename}")  # mpiexec names a dead rank by its PID
        report(f"{comm.size} ranks: " + ", ".join(f"rank {r} PID {w}" for r, w in enumerate(where)))
    config = run_config(options, ds, splits, source, leaks, class_weights, model, sessions)
    if root:
        (out / "config.json").write_text(json.dumps(config, indent=2, default=str))
    report(f"{model.count_params():,} weights; optimizer {optimizer!r}; batch {options['batch_size']}; "
           f"up to {options['epochs']} epochs")
    report(TABLE_HEADER)
    for row in run.history:
        report(format_row(row, options["epochs"]))
    t0 = time.perf_counter()
    try:
        run = fit(model, optimizer, controller, splits.train, splits.valid, epochs=options["epochs"],
                  batch_size=options["batch_size"], seed=options["seed"], augment=options["augment"],
                  run=run, out=out, report=report, class_weights=class_weights, comm=comm)
    except (TrainingDiverged, CheckpointError) as e:
        report(f"error: {e}")
        if isinstance(e, CheckpointError) and comm.size > 1:
            comm.abort(1)  # rank 0 alone writes: the others would wait for it in their next step
        return 1
    except KeyboardInterrupt as stop:  # Interrupted, or Ctrl-C outside the handler's reach
        if isinstance(stop, Interrupted) and stop.immediate:
            checkpoint = out / "checkpoint.npz"
            report(f"Stopped at once by a second {signal.Signals(stop.signum).name}: no checkpoint of the epoch in "
                   "progress; " + (f"the last checkpoint is {checkpoint}; continue with --resume --out {out}"
                                   if checkpoint.exists() else "no checkpoint was written yet"))
            if comm.size > 1:  # this rank alone left its batch: the others would wait for it
                comm.abort(128 + stop.signum)
        return 128 + (stop.signum if isinstance(stop, Interrupted) else signal.SIGINT)
    try:
        return _finish(model, controller, config, out, source, splits, ds, args, report, t0)
    except KeyboardInterrupt:
        where = (f"the best weights are saved in {out / 'model.npz'}; evaluate them with python -m minarn.evaluate "
                 f"{out}" if (out / "model.npz").exists() else
                 f"the checkpoint holds the run; continue with --resume --out {out}")
        report(f"Interrupted during the final evaluation: {where}")
        return 128 + signal.SIGINT


def _finish(model: ARNCNN, controller: EpochEndController, config: dict[str, Any], out: Path, source: str,
            splits: Splits, ds: Dataset, args: argparse.Namespace, report: Reporter, t0: float) -> int:
    """After training: the best weights restored and saved, evaluated on the test split (the model, split and
    data in hand: ``minarn.evaluate.evaluate_loaded_run``, report.md and figures/), config.json updated."""
    comm = args.comm
    model.load_state_dict(controller.best_weights)
    report(f"Training is completed - model is set with weights from epoch {controller.best_epoch} "
           f"(this session trained for {_spelled_duration(time.perf_counter() - t0)})")
    batch = int(config["options"].get("batch_size") or 40)
    # the test split's forward passes, sharded over the ranks and gathered; the rest is rank 0's alone
    test_loss, _, test_probs = evaluate_split(model, splits.test.images, splits.test.labels, batch, comm)
    if comm.rank != 0:  # the others are done: rank 0 alone saves the model and writes the report
        return 0
    model.save(out / "model.npz")
    config["test"] = {"best_epoch": controller.best_epoch}
    (out / "config.json").write_text(json.dumps(config, indent=2, default=str))
    trained = evaluate.LoadedRun(out, model, out / "model.npz", splits, ds, config, source, controller.best_epoch)
    try:
        result = evaluate.evaluate_loaded_run(trained, report, test_scores=(test_loss, test_probs))
    except (evaluate.EvaluationError, DataError) as e:
        report(f"error: evaluation of the trained model failed: {e}")
        return 1
    summary, confusion = result["summary"], result["confusion_matrix"]
    config["test"].update(accuracy=summary["accuracy"], log_loss=summary["log_loss"], kappa=summary["kappa"],
                          f1=summary["f1"], precision=summary["precision"], recall=summary["recall"],
                          errors=int(confusion.sum() - np.trace(confusion)), images=int(confusion.sum()),
                          loss_with_penalties=result["loss_with_penalties"], ece=result["ece"],
                          uncertainty={u.name: {"count": u.count, "mean_entropy": u.mean_entropy,
                                                "std_max_prob": u.std_max_prob, "label": u.label}
                                       for u in result["uncertainty"]})
    (out / "config.json").write_text(json.dumps(config, indent=2, default=str))
    report(f"best model: {out / 'model.npz'} (python -c \"import minarn; minarn.load_model('{out / 'model.npz'}')\")")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
