"""The run folder of ``python -m minarn.train``: what a run is, what it writes and how it is read back.

A run folder holds ``config.json`` (the run's options, data identity, split, versions, sessions),
``checkpoint.npz`` (model, optimizer, controller and :class:`RunState`, everything ``--resume`` needs),
``history.csv`` (one row per finished epoch, ``HISTORY_COLUMNS``), ``model.npz`` (the best weights), ``train.log``
and ``train.lock`` (held while a training uses the folder). This module builds a run's objects from its options
(``build_training``), selects and splits its data as every reader must (``select_and_split``), evaluates a model on
a split (``evaluate_split``) and saves and loads the checkpoint; ``minarn.train`` runs the training loop and its
command line on it, ``minarn.evaluate`` reads finished runs with it.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import platform
import socket
import subprocess
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import numpy as np

try:
    import fcntl
except ImportError:  # not POSIX: run folders are not locked
    fcntl = None  # type: ignore[assignment]

import minarn
from minarn import distributed, kernels
from minarn.atomic import save_npz_atomic
from minarn.cli import UsageError
from minarn.controller import EpochEndController
from minarn.data import IMAGE_SIZE, Dataset, Splits, scale_images, split_dataset
from minarn.losses import log_softmax, softmax
from minarn.model import ARNCNN
from minarn.optim import Optimizer, get_optimizer

SPLIT_SEED = 123  # the paper's split, whatever --seed is
UNBALANCED_RATIO = 1.5  # largest / smallest class in train from which the log calls the classes unbalanced
HISTORY_COLUMNS = ["epoch", "loss", "accuracy", "val_loss", "val_accuracy", "lr", "next_lr", "monitor",
                   "improvement", "duration"]


class CheckpointError(RuntimeError):
    """A checkpoint or history.csv could not be written (disk full, ...): reported as one line, exit status 1."""


LOCK_FILE = "train.lock"  # held (fcntl.flock) while a training uses the run folder
TEMP_PATTERNS = ("checkpoint.npz.*.tmp", "model.npz.*.tmp")  # what an interrupted save_npz_atomic can leave
RESUME_OPTIONS = ("data", "epochs", "batch_size", "lr", "seed", "attention", "residual", "dense_activation",
                  "optimizer", "augment", "dedupe", "limit_per_class")  # what a resumed run's config.json must hold
LEFTOVERS = ("history.csv", "model.npz")  # an earlier run's results, which a new run must not mix with


# -- evaluation on a split ---------------------------------------------------------------------------------
def evaluate_split(model: ARNCNN, images: np.ndarray, labels: np.ndarray, batch_size: int = 40,
                   comm: distributed.Communicator | None = None) -> tuple[float, float, np.ndarray]:
    """Loss as Keras reports ``val_loss`` (cross-entropy plus penalties, inference mode), accuracy, probabilities.

    Shapes: images (N, H, W, C) uint8, labels (N,) int -> loss, accuracy, probs (N, K).
    With a communicator of several ranks each takes a contiguous block of the images; the sums and the
    probabilities are gathered, so every rank returns the whole split's values.
    """
    comm = comm or distributed.SingleProcess()
    n = len(images)
    part = distributed.shard(n, comm.rank, comm.size)
    probs = np.empty((part.count, model.num_classes), dtype=model.dtype)
    ce_sum = activity_sum = 0.0
    for start in range(part.start, part.stop, batch_size):
        stop = min(start + batch_size, part.stop)
        x = scale_images(images[start:stop])
        logits = model.logits(x, training=False)
        probs[start - part.start : stop - part.start] = softmax(logits)
        log_p = log_softmax(logits)
        ce_sum -= float(log_p[np.arange(len(x)), labels[start:stop]].sum())
        activity_sum += model.penalties(1)["activity_l1"][0]  # factor * sum |dense output| of this batch
    if comm.size > 1:
        ce_sum, activity_sum = comm.allreduce(np.array([ce_sum, activity_sum])).tolist()
        probs = np.concatenate(comm.allgather(probs))
    pen = model.penalties(1)
    loss = (ce_sum + activity_sum) / max(n, 1) + pen["kernel_l2"][0] + pen["bias_l1"][0]
    accuracy = float(np.mean(probs.argmax(axis=1) == labels)) if n else float("nan")
    return loss, accuracy, probs


# -- run state ------------------------------------------------------------------------------------------
@dataclass
class RunState:
    """Where a run is: the next epoch and batch, running sums of the epoch in progress, the history."""

    epoch: int = 0  # 0-based epoch in progress (or next to start)
    batch: int = 0  # next batch of that epoch
    loss_sum: float = 0.0
    correct: int = 0
    seen: int = 0
    epoch_time: float = 0.0  # seconds already spent in this epoch before an interruption
    history: list[dict[str, Any]] = field(default_factory=list)
    finished: bool = False


def save_checkpoint(path: Path, model: ARNCNN, optimizer: Optimizer, controller: EpochEndController,
                    run: RunState) -> None:
    """Model, optimizer, controller and run state in one ``.npz``, written atomically."""
    arrays: dict[str, Any] = {f"model/{k}": v for k, v in model.state_dict().items()}
    arrays.update({f"optim/{k}": np.asarray(v) for k, v in optimizer.state_dict().items()})
    arrays.update({f"controller/{k}": np.asarray(v) for k, v in controller.state_dict().items()})
    run_json = {k: v for k, v in run.__dict__.items()}
    arrays["run"] = np.array(json.dumps(run_json))
    arrays["model_config"] = np.array(json.dumps(model.config))
    save_npz_atomic(path, arrays)


def load_checkpoint(path: Path, model: ARNCNN, optimizer: Optimizer, controller: EpochEndController) -> RunState:
    """Restore what ``save_checkpoint`` wrote into freshly built objects; returns the run state."""
    try:
        with np.load(path, allow_pickle=False) as data:
            groups: dict[str, dict[str, Any]] = {"model": {}, "optim": {}, "controller": {}}
            for key in data.files:
                group, _, rest = key.partition("/")
                if group in groups:
                    value = data[key]
                    groups[group][rest] = value.item() if value.ndim == 0 and value.dtype.kind in "iufbU" else value
            run = RunState(**json.loads(str(data["run"])))
        model.load_state_dict(groups["model"])
        optimizer.load_state_dict(groups["optim"])
        controller.load_state_dict(groups["controller"])
    except (OSError, EOFError, zipfile.BadZipFile, ValueError, KeyError, TypeError) as err:
        raise UsageError(f"cannot resume from {path}: {err}") from None
    return run


# -- history.csv ------------------------------------------------------------------------------------------
def append_history(path: Path, row: dict[str, Any]) -> None:
    """One finished epoch's row (``HISTORY_COLUMNS``) appended to history.csv, with its header when new."""
    new = not path.exists()
    with open(path, "a", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=HISTORY_COLUMNS)
        if new:
            writer.writeheader()
        # repr: the shortest text that reads back as the same float, so the table can be rebuilt exactly
        writer.writerow({k: (repr(v) if isinstance(v, float) else v) for k, v in row.items()})


def rewrite_history(path: Path, history: list[dict[str, Any]]) -> None:
    """On resume, history.csv is rewritten from the checkpoint (rows of epochs after it are dropped)."""
    path.unlink(missing_ok=True)
    for row in history:
        append_history(path, row)


# -- the run's data and objects -----------------------------------------------------------------------------
def limit_per_class(ds: Dataset, n: int, seed: int) -> Dataset:
    """At most ``n`` images per class (in each part of a split dataset), chosen with a seeded generator from the
    path-sorted list."""
    order = np.argsort(ds.paths, kind="stable")
    rng = np.random.default_rng(seed)
    keep = []
    parts = ds.part
    for part in [None] if parts is None else [p for p in ("train", "valid", "test") if p in parts]:
        in_part = order if part is None or parts is None else order[parts[order] == part]
        for c in range(ds.num_classes):
            members = in_part[ds.labels[in_part] == c]
            keep.append(np.sort(rng.permutation(members)[:n]) if len(members) > n else members)
    return ds.subset(np.sort(np.concatenate(keep)))


def select_and_split(ds: Dataset, options: dict[str, Any]) -> tuple[Dataset, Splits]:
    """The images a run uses and their train / valid / test split, from the run's options: at most
    ``limit_per_class`` images per class (seeded), then the stratified split with the fractions ``split``
    (None: the paper's; seed 123; byte-identical copies removed first with ``dedupe``), or the parts of a
    dataset that comes split into folders. Raises ValueError when a class is too small to split."""
    if options.get("limit_per_class"):
        ds = limit_per_class(ds, int(options["limit_per_class"]), seed=SPLIT_SEED)
    fractions = options.get("split")
    return ds, split_dataset(ds, seed=SPLIT_SEED, fractions=tuple(fractions) if fractions else None,
                             dedupe=bool(options.get("dedupe")))


def input_format(options: dict[str, Any]) -> tuple[int, int]:
    """(image size, channels) of a run's model from its options; runs from before ``--image-size`` and
    ``--channels`` were 64x64 grayscale."""
    return int(options.get("image_size") or IMAGE_SIZE), int(options.get("channels") or 1)


def build_training(options: dict[str, Any], num_classes: int) -> tuple[ARNCNN, Optimizer, EpochEndController]:
    """A fresh run's model (initialised from ``seed``), optimizer (Adamax in the paper's form, Eq. 3-6) and
    epoch-end controller, from the run's options; ``load_checkpoint`` then puts a saved run's state into them."""
    size, channels = input_format(options)
    model = ARNCNN(num_classes=num_classes, input_shape=(size, size, channels), attention=options["attention"],
                   residual=options["residual"], dense_activation=options["dense_activation"], seed=options["seed"])
    extra = {"form": "paper"} if options["optimizer"] == "adamax" else {}
    optimizer = get_optimizer(options["optimizer"], options["lr"], **extra)
    return model, optimizer, EpochEndController(model.state_dict())


def class_balance(splits: Splits) -> list[str]:
    """Log lines on the class sizes: the smallest and largest class in train (unbalanced from a ratio of
    ``UNBALANCED_RATIO``), and any class missing from valid or test (a dataset split into folders)."""
    names = splits.train.class_names
    counts = splits.train.class_counts()
    lo, hi = int(counts.argmin()), int(counts.argmax())
    ratio = counts[hi] / max(int(counts[lo]), 1)
    line = (f"classes in train: smallest {names[lo]} {counts[lo]:,}, largest {names[hi]} {counts[hi]:,} "
            f"(ratio {ratio:.2f})" if ratio > 1 else f"classes in train: all {len(names)} hold {counts[lo]:,} images")
    if ratio >= UNBALANCED_RATIO:
        line += ("; unbalanced: accuracy favours the large classes; --class-weight balanced weights the loss by "
                 "n / (classes x n_class)")
    lines = [line]
    for name, part in (("valid", splits.valid), ("test", splits.test)):
        missing = [c for c, k in zip(names, part.class_counts()) if k == 0]
        if missing:
            lines.append(f"warning: the {name} part has no image of class(es) {', '.join(missing)}")
    return lines


def data_identity(ds: Dataset) -> str:
    """SHA-1 over the (relative path, file SHA-1) of every decoded image: same digest = same files."""
    h = hashlib.sha1()
    for path, digest in zip(ds.paths.tolist(), ds.sha1.tolist()):
        h.update(f"{path}\0{digest}\n".encode())
    return h.hexdigest()


# -- provenance (config.json) -------------------------------------------------------------------------------
def versions() -> dict[str, str]:
    """The versions of minarn, Python, NumPy (and Numba when installed) and the platform."""
    out = {"minarn": minarn.__version__, "python": platform.python_version(), "numpy": np.__version__,
           "platform": platform.platform()}
    try:
        import numba

        out["numba"] = numba.__version__
    except ImportError:
        pass
    return out


def session(argv: list[str], run: RunState) -> dict[str, Any]:
    """Provenance of one start of a run (a resume starts another session): when, the command, the minarn
    source revision when it is a git checkout, and the thread settings (float32 sums depend on them)."""
    commit = None
    package = Path(minarn.__file__).resolve().parent
    try:
        top, rev = subprocess.run(["git", "rev-parse", "--show-toplevel", "--short", "HEAD"], cwd=package,
                                  capture_output=True, text=True, timeout=10, check=True).stdout.split()
        if (Path(top) / "minarn").resolve() == package:  # minarn's own checkout, not a repo it is installed in
            commit = rev
    except (OSError, ValueError, subprocess.SubprocessError):
        pass
    thread_variables = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "NUMBA_NUM_THREADS")
    threads: dict[str, Any] = {v: os.environ[v] for v in thread_variables if v in os.environ}
    try:
        import numba

        threads["numba"] = numba.get_num_threads()
    except ImportError:
        pass
    return {"started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "command": "python -m minarn.train " + " ".join(argv),
            "from": f"epoch {run.epoch + 1}, batch {run.batch + 1}" if run.epoch or run.batch else "the start",
            "minarn_commit": commit, "backend": kernels.get_backend().NAME, "threads": threads}


def previous_sessions(out: Path) -> list[dict[str, Any]]:
    """The sessions recorded in ``out/config.json`` (none when it is missing or unreadable)."""
    try:
        return list(json.loads((out / "config.json").read_text()).get("sessions", []))
    except (OSError, ValueError, AttributeError):
        return []


def run_config(options: dict[str, Any], ds: Dataset, splits: Splits, source: str, leaks: dict[str, int],
               class_weights: np.ndarray | None, model: ARNCNN, sessions: list[dict[str, Any]]) -> dict[str, Any]:
    """config.json of a run: its options, classes, data source and identity, split counts, duplicate leakage
    (``leaks``: images of valid and test with a copy in train), skipped files, class weights, versions, backend,
    model configuration and sessions; the final evaluation adds ``test``."""
    return {"options": options, "class_names": list(ds.class_names), "data_source": source,
            "data_identity": data_identity(ds),
            "split": {k: {"total": len(d), **dict(zip(ds.class_names, map(int, d.class_counts())))}
                      for k, d in splits._asdict().items()},
            "duplicates_in_train": leaks, "skipped_files": [list(s) for s in ds.skipped],
            "split_from": "folders" if ds.part is not None else "stratified",
            "class_weights": None if class_weights is None else dict(zip(ds.class_names, class_weights.tolist())),
            "versions": versions(), "backend": kernels.get_backend().NAME, "model": model.config,
            "sessions": sessions}


# -- the run folder -----------------------------------------------------------------------------------------
def check_out_outside_data(out: Path, data: Path) -> None:
    """A run folder inside the data folder would become part of the data (its figures/ a class): refused."""
    try:
        data_dir, run_dir = data.expanduser().resolve(), out.expanduser().resolve()
    except OSError:
        return
    if data_dir.is_dir() and (run_dir == data_dir or data_dir in run_dir.parents):
        raise UsageError(f"--out {out} is inside the data folder {data}: the run's files would become part of the "
                         "data (its figures/ a class); choose a run folder outside it")


class RunLock:
    """An exclusive ``fcntl.flock`` on ``RUN/train.lock`` while a training uses the run folder: a second training
    into the same folder stops with a UsageError instead of interleaving its files. The lock goes with the
    process (also on kill -9); the file stays, holding the last holder's pid."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.file: TextIO | None = None

    def __enter__(self) -> RunLock:
        if fcntl is None:
            return self
        try:
            file = open(self.out / LOCK_FILE, "a+", encoding="utf-8")
        except OSError as err:
            raise UsageError(f"cannot create the run folder's lock file {self.out / LOCK_FILE}: "
                             f"{err.strerror or err}") from None
        try:
            fcntl.flock(file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            file.seek(0)
            holder = file.read().strip()
            file.close()
            raise UsageError(f"{self.out} is in use by another training ({holder or 'its lock is held'}); wait for "
                             "it to end, or choose another --out") from None
        file.seek(0)
        file.truncate()
        file.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
        file.flush()
        self.file = file
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.file is not None:
            self.file.close()  # releases the lock


def remove_stale_temp_files(out: Path) -> list[str]:
    """Delete the temporary files an interrupted atomic save left (``checkpoint.npz.*.tmp``, ``model.npz.*.tmp``);
    safe only while the run folder is locked, so that no other training is writing them. Returns their names."""
    removed = []
    for pattern in TEMP_PATTERNS:
        for path in sorted(out.glob(pattern)):
            try:
                path.unlink()
            except OSError:
                continue
            removed.append(path.name)
    return removed

