"""``python -m minarn.train`` run in-process on a tiny real dataset: outputs, resume, Ctrl-C, NaN, usage errors,
options, the Reporter, and the loss ``evaluate_split`` reports.

The data set is a folder of 33 MedNIST images copied from the shipped sample: two classes (CXR 17, Hand 16; one
CXR file is a byte-identical copy of another, so ``--dedupe`` has something to remove). The template's split
(90 % train, then 60/40 of the rest) needs, in the second split, at least one image of every class in both
parts, so the smallest sets that split are 2 classes x 16 (train 28 / valid 2 / test 2) or, on the 6-class
sample, ``--limit-per-class 21`` (train 113 / valid 7 / test 6); ``--limit-per-class 10`` on the sample fails.
Here: train 29 (CXR 15, Hand 14), valid 2, test 2; batch 8 gives 4 steps per epoch (8, 8, 8, 5).

BLAS and Numba run on one thread each: with two threads on a busy 2-core machine every small matrix product
and kernel call waits for the other thread (a step of 8 images took 1.4 s instead of 0.05 s at 32x32); one
thread also keeps every run in this file on the same arithmetic path.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
import re
import shutil
import signal
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

import minarn
from minarn import kernels, train
from minarn.controller import EpochEndController
from minarn.data import Dataset, load_mednist, sample_path, split_dataset
from minarn.model import ARNCNN
from minarn.optim import get_optimizer

BATCH = 8
CLASSES = ("CXR", "Hand")
PER_CLASS = 16


# ------------------------------------------------------------------------------------------------------------
# fixtures and helpers


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """BLAS and Numba on one thread each (see the module docstring); both put back afterwards."""
    try:
        import numba
    except ImportError:
        numba = None
    threads = numba.get_num_threads() if numba else None
    if numba:
        numba.set_num_threads(1)
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - threadpoolctl comes with scikit-learn (test extra)
        yield
    else:
        with threadpool_limits(limits=1, user_api="blas"):
            yield
    finally:
        if numba:
            numba.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _restore_kernel_backend():
    """``main`` selects the kernel backend for the whole process; put the previous one back."""
    previous = kernels._active
    yield
    kernels._active = previous


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data") / "MedNIST"
    for cls in CLASSES:
        (root / cls).mkdir(parents=True)
        for f in sorted((sample_path() / cls).iterdir())[:PER_CLASS]:
            shutil.copyfile(f, root / cls / f.name)
    first = min((root / "CXR").iterdir())
    shutil.copyfile(first, root / "CXR" / "zz_copy.jpeg")
    return root


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def cli(tiny_data, cache_dir):
    """``cli(out, *extra, stream=None) -> (status, printed text)``: a run on the tiny set, batch 8."""

    def run(out: Path, *extra: str, stream: io.StringIO | None = None, data: bool = True) -> tuple[int, str]:
        stream = stream if stream is not None else io.StringIO()
        argv = (["--data", str(tiny_data)] if data else []) + ["--cache-dir", str(cache_dir),
                                                                "--batch-size", str(BATCH), "--out", str(out)]
        status = train.main(argv + [str(a) for a in extra], stream=stream)
        return status, stream.getvalue()

    return run


@pytest.fixture(scope="module")
def reference(cli, tmp_path_factory):
    """An uninterrupted 3-epoch run, shared by the tests that compare against it."""
    out = tmp_path_factory.mktemp("reference") / "run"
    status, text = cli(out, "--epochs", 3)
    assert status == 0, text
    return SimpleNamespace(out=out, text=text, history=read_history(out), config=read_config(out))


def read_config(out: Path) -> dict:
    return json.loads((out / "config.json").read_text())


def read_history(out: Path) -> list[dict[str, str]]:
    with open(out / "history.csv", newline="") as f:
        return list(csv.DictReader(f))


def npz(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def checkpoint_run(out: Path) -> dict:
    return json.loads(str(npz(out / "checkpoint.npz")["run"]))


def steps_per_epoch(config: dict) -> int:
    return math.ceil(config["split"]["train"]["total"] / BATCH)


def assert_arrays_identical(a: dict[str, np.ndarray], b: dict[str, np.ndarray], what: str) -> None:
    assert a.keys() == b.keys(), what
    for k, v in a.items():
        assert v.dtype == b[k].dtype and v.shape == b[k].shape, f"{what}: {k}"
        assert np.array_equal(v, b[k]), f"{what}: {k} differs"


def assert_same_run(out: Path, ref: Path) -> None:
    """Bit for bit: best model, every checkpoint array, the run state and history apart from wall-clock times."""
    assert_arrays_identical(npz(out / "model.npz"), npz(ref / "model.npz"), "model.npz")
    ck, ck_ref = npz(out / "checkpoint.npz"), npz(ref / "checkpoint.npz")
    run, run_ref = json.loads(str(ck.pop("run"))), json.loads(str(ck_ref.pop("run")))
    assert_arrays_identical(ck, ck_ref, "checkpoint.npz")
    assert any(k.startswith("model/") for k in ck) and any(k.startswith("optim/") for k in ck)

    def timeless(r: dict) -> dict:
        r = dict(r, history=[{k: v for k, v in row.items() if k != "duration"} for row in r["history"]])
        r.pop("epoch_time")
        return r

    assert timeless(run) == timeless(run_ref)
    strip = lambda rows: [{k: v for k, v in row.items() if k != "duration"} for row in rows]
    assert strip(read_history(out)) == strip(read_history(ref))


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got:\n{err}"
    assert "Traceback" not in err
    assert lines[0].startswith("python -m minarn.train"), lines[0]
    return lines[0]


# ------------------------------------------------------------------------------------------------------------
# a complete run and its outputs


def test_outputs_of_a_run(reference, tiny_data, cache_dir):
    out, config = reference.out, reference.config
    # config.json: options, versions, split counts, data identity
    opts = config["options"]
    assert opts["epochs"] == 3 and opts["batch_size"] == BATCH and opts["lr"] == 0.001 and opts["seed"] == 123
    assert opts["data"] == str(tiny_data) and opts["optimizer"] == "adamax" and opts["augment"] == "none"
    assert opts["attention"] and opts["residual"] and opts["dense_activation"] == "gelu" and not opts["dedupe"]
    assert {"minarn", "python", "numpy", "platform"} <= config["versions"].keys()
    assert config["versions"]["minarn"] == minarn.__version__ and config["versions"]["numpy"] == np.__version__
    assert config["split"] == {"train": {"total": 29, "CXR": 15, "Hand": 14},
                               "valid": {"total": 2, "CXR": 1, "Hand": 1},
                               "test": {"total": 2, "CXR": 1, "Hand": 1}}
    assert config["class_names"] == list(CLASSES)
    ds = load_mednist(tiny_data, cache_dir=cache_dir)
    h = hashlib.sha1()
    for p, d in zip(ds.paths.tolist(), ds.sha1.tolist()):
        h.update(f"{p}\0{d}\n".encode())
    assert config["data_identity"] == h.hexdigest()
    assert config["backend"] == kernels.get_backend().NAME
    assert config["model"]["num_classes"] == 2

    # model.npz: the best epoch's weights, loadable, predicts the test split
    model = minarn.load_model(out / "model.npz")
    test = split_dataset(ds).test
    probs = model.predict(test.images)
    assert probs.shape == (2, 2)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
    ck = npz(out / "checkpoint.npz")
    best = {k[len("controller/best/"):]: v for k, v in ck.items() if k.startswith("controller/best/")}
    saved = npz(out / "model.npz")
    assert json.loads(str(saved.pop("__config__"))) == json.loads(str(ck["model_config"]))
    assert_arrays_identical(saved, best, "model.npz vs the controller's best weights")
    assert config["test"]["best_epoch"] == int(ck["controller/best_epoch"])
    assert config["test"]["accuracy"] == float(np.mean(probs.argmax(1) == test.labels))
    assert config["test"]["images"] == 2 and {"precision", "recall", "f1", "kappa", "log_loss"} <= config["test"].keys()
    assert set(config["test"]["uncertainty"]) == set(CLASSES)
    assert sum(u["count"] for u in config["test"]["uncertainty"].values()) == 2

    # config.json "sessions": one start, with its command line and thread settings
    (session,) = config["sessions"]
    assert session["from"] == "the start" and session["command"].startswith("python -m minarn.train ")
    assert "--epochs 3" in session["command"] and session["backend"] == kernels.get_backend().NAME
    assert isinstance(session["threads"], dict) and session["started"].endswith("Z")

    # checkpoint.npz: the run is complete
    run = json.loads(str(ck["run"]))
    assert (run["epoch"], run["batch"], len(run["history"])) == (3, 0, 3)
    assert {k.split("/")[0] for k in ck} == {"model", "optim", "controller", "run", "model_config"}

    # history.csv: the table's columns, one row per epoch, the checkpoint's values exactly
    with open(out / "history.csv", newline="") as f:
        assert next(csv.reader(f)) == train.HISTORY_COLUMNS == [
            "epoch", "loss", "accuracy", "val_loss", "val_accuracy", "lr", "next_lr", "monitor", "improvement",
            "duration"]
    assert [r["epoch"] for r in reference.history] == ["1", "2", "3"]
    for row, full in zip(reference.history, run["history"]):
        for k in train.HISTORY_COLUMNS:
            if k == "monitor":
                assert row[k] == full[k] in ("accuracy", "val_loss")
            else:
                assert float(row[k]) == full[k], k

    # train.log: header and rows, no progress lines; the terminal (a file here) had progress lines too
    log = (out / "train.log").read_text()
    assert train.TABLE_HEADER in log.splitlines()
    for row in run["history"]:
        assert train.format_row(row, 3) in log.splitlines()
        assert train.format_row(row, 3) in reference.text.splitlines()
    assert "img/s" not in log and "\r" not in log and "\033" not in log
    assert "epoch 1/3  batch 1/4" in reference.text and "img/s" in reference.text
    assert f"model is set with weights from epoch {config['test']['best_epoch']}" in log
    assert re.search(r"\(this session trained for \d+ min \d\d s\)", log)  # a length, not a clock time


def test_history_follows_the_controller(reference):
    """Replaying the recorded (accuracy, val_loss, lr) through a fresh controller gives the recorded decisions."""
    rows = checkpoint_run(reference.out)["history"]
    c = EpochEndController({})
    for epoch, row in enumerate(rows):
        d = c.on_epoch_end(epoch, row["accuracy"], row["val_loss"], row["lr"], snapshot=dict)
        assert (d.monitor, d.improvement, d.next_lr) == (row["monitor"], row["improvement"], row["next_lr"])
        if epoch + 1 < len(rows):
            assert rows[epoch + 1]["lr"] == d.next_lr
    assert rows[0]["improvement"] == 0.0 and rows[0]["lr"] == 0.001


def test_format_row_reproduces_the_papers_table():
    row = {"epoch": 2, "loss": 0.117, "accuracy": 0.99945, "val_loss": 0.08788, "val_accuracy": 0.99943,
           "lr": 0.001, "next_lr": 0.001, "monitor": "val_loss", "improvement": 32.30105, "duration": 93.52}
    assert train.format_row(row, 100).split() == ["2/100", "0.117", "99.945", "0.08788", "99.943", "0.00100",
                                                  "0.00100", "val_loss", "32.30", "93.52"]
    assert train.TABLE_HEADER.split() == ["Epoch", "Loss", "Accuracy", "V_loss", "V_acc", "LR", "Next", "LR",
                                          "Monitor", "%", "Improv", "Duration"]


def test_durations_read_as_lengths_of_time():
    assert [train._format_duration(s) for s in (5, 125.4, 3600, 28872)] == ["00:05", "02:05", "1:00:00", "8:01:12"]
    assert [train._spelled_duration(s) for s in (5, 877, 3600, 28872)] == ["0 min 05 s", "14 min 37 s",
                                                                          "1 h 00 min", "8 h 01 min"]


def test_fit_applies_the_controllers_decisions(tmp_path, monkeypatch):
    """LR cuts reach the optimizer, dwell puts the best epoch's weights back, the third cut stops training.

    A small model (32x32 input, 8 images, 2 steps per epoch) and a scripted training accuracy: 0.5 and 0.6
    improve, then three epochs at 0.4 do not.
    """
    rng = np.random.default_rng(0)
    n = 8
    ds = Dataset(images=rng.integers(0, 256, (n, 32, 32, 1), dtype=np.uint8), labels=np.arange(n) % 2,
                 paths=np.array([f"{'AB'[i % 2]}/{i}.png" for i in range(n)]),
                 sha1=np.array([f"{i:040x}" for i in range(n)]), class_names=("A", "B"))
    model = ARNCNN(num_classes=2, input_shape=(32, 32, 1), seed=1)
    optimizer = get_optimizer("adamax", 0.001, form="paper")
    controller = EpochEndController(model.state_dict())
    scripted = iter([0.5, 0.6, 0.4, 0.4, 0.4, 0.4, 0.4])
    decided, started = [], []  # the weights when each epoch was judged / when each epoch began
    decide, step = EpochEndController.on_epoch_end, ARNCNN.loss_and_grads

    def on_epoch_end(self, epoch, acc, v_loss, lr, snapshot):
        decided.append(model.state_dict())
        return decide(self, epoch, next(scripted), v_loss, lr, snapshot)

    def loss_and_grads(self, x, y):
        if len(started) == len(decided):  # first batch of a new epoch
            started.append(self.state_dict())
        return step(self, x, y)

    monkeypatch.setattr(EpochEndController, "on_epoch_end", on_epoch_end)
    monkeypatch.setattr(ARNCNN, "loss_and_grads", loss_and_grads)
    stream = io.StringIO()
    run = train.fit(model, optimizer, controller, ds, ds.subset([0, 1]), epochs=10, batch_size=4, seed=3,
                    augment="none", run=train.RunState(), out=tmp_path, report=train.Reporter(None, stream))

    assert run.finished and run.epoch == 5 and len(run.history) == 5
    assert "training stopped at epoch 5" in stream.getvalue()
    assert [r["lr"] for r in run.history] == [0.001, 0.001, 0.001, 0.0005, 0.00025]
    assert [r["next_lr"] for r in run.history] == [0.001, 0.001, 0.0005, 0.00025, 0.000125]
    assert optimizer.learning_rate == 0.000125
    assert controller.best_epoch == 2
    same = lambda a, b: all(np.array_equal(a[k], b[k]) for k in a)
    # epochs 4 and 5 started from epoch 2's weights (the best), not from epoch 3's or 4's
    assert same(started[3], decided[1]) and not same(started[3], decided[2])
    assert same(started[4], decided[1]) and not same(started[4], decided[3])
    assert same(model.state_dict(), decided[1])  # and so does the model after the last (restoring) epoch
    assert len(read_history(tmp_path)) == 5 and checkpoint_run(tmp_path)["finished"] is True


def test_on_batch_sees_every_step_and_a_probe_inside_it_changes_nothing(tmp_path):
    """fit calls on_batch after each optimizer step; evaluating (with recomputed batch norm statistics, put
    back afterwards) inside it leaves the run bit for bit the same as a run without the callback."""
    from minarn.bn_statistics import recompute_batchnorm_statistics, set_moving_statistics

    rng = np.random.default_rng(0)
    n = 8
    ds = Dataset(images=rng.integers(0, 256, (n, 32, 32, 1), dtype=np.uint8), labels=np.arange(n) % 2,
                 paths=np.array([f"{'AB'[i % 2]}/{i}.png" for i in range(n)]),
                 sha1=np.array([f"{i:040x}" for i in range(n)]), class_names=("A", "B"))

    def one_run(folder, on_batch=None):
        model = ARNCNN(num_classes=2, input_shape=(32, 32, 1), seed=1)
        optimizer = get_optimizer("adamax", 0.001, form="paper")
        controller = EpochEndController(model.state_dict())
        folder.mkdir()
        run = train.fit(model, optimizer, controller, ds, ds.subset([0, 1]), epochs=2, batch_size=3, seed=3,
                        augment="hflip", run=train.RunState(), out=folder, report=train.Reporter(None, io.StringIO()),
                        on_batch=None if on_batch is None else lambda r: on_batch(model, r))
        return model.state_dict(), [{k: v for k, v in row.items() if k != "duration"} for row in run.history]

    seen = []

    def probe(model, run):
        seen.append((run.epoch, run.batch))
        old = recompute_batchnorm_statistics(model, ds.images[:5], batch_size=2)
        train.evaluate_split(model, ds.images, ds.labels, batch_size=4)
        set_moving_statistics(model, old)

    plain, probed = one_run(tmp_path / "plain"), one_run(tmp_path / "probed", probe)
    assert seen == [(0, 1), (0, 2), (0, 3), (1, 1), (1, 2), (1, 3)]
    assert plain[1] == probed[1]
    for k, v in plain[0].items():
        np.testing.assert_array_equal(probed[0][k], v, err_msg=k)


# ------------------------------------------------------------------------------------------------------------
# resume


def test_resume_2_then_3_equals_3_epochs(cli, reference, tmp_path, cache_dir):
    out = tmp_path / "run"
    status, _ = cli(out, "--epochs", 2)
    assert status == 0
    assert len(read_history(out)) == 2
    with open(out / "history.csv", "a") as f:  # a row the checkpoint does not know about: dropped on resume
        f.write("3,9,9,9,9,9,9,accuracy,9,9\n")
    stream = io.StringIO()
    status = train.main(["--resume", "--out", str(out), "--epochs", "3", "--cache-dir", str(cache_dir)],
                        stream=stream)
    assert status == 0, stream.getvalue()
    assert "resumed from" in stream.getvalue() and "at epoch 3, batch 1" in stream.getvalue()
    assert read_config(out)["options"]["epochs"] == 3
    first, second = read_config(out)["sessions"]  # the resume added a session, the first one is kept
    assert first["from"] == "the start" and "--epochs 2" in first["command"]
    assert second["from"] == "epoch 3, batch 1" and second["command"].startswith("python -m minarn.train --resume")
    assert_same_run(out, reference.out)


def signals_during_step(monkeypatch, step: int, *signals: int) -> dict[str, int]:
    """Send ``signals`` to this process while training step ``step`` (1-based, over all epochs) is computed,
    as Ctrl-C or ``kill`` would; returns the step counter, {"n": steps started}."""
    calls = {"n": 0}
    original = ARNCNN.loss_and_grads

    def loss_and_grads(self, x, y):
        calls["n"] += 1
        if calls["n"] == step:
            for sig in signals:
                assert signal.getsignal(sig) not in (signal.default_int_handler, signal.SIG_DFL), "no handler"
                os.kill(os.getpid(), sig)
        return original(self, x, y)

    monkeypatch.setattr(ARNCNN, "loss_and_grads", loss_and_grads)
    return calls


def test_ctrl_c_mid_epoch_then_resume_equals_uninterrupted(cli, reference, tmp_path, monkeypatch):
    out = tmp_path / "run"
    steps = steps_per_epoch(reference.config)
    stop_at = steps + 2  # epoch 2, batch 2
    handler_before = signal.getsignal(signal.SIGINT)
    calls = signals_during_step(monkeypatch, stop_at, signal.SIGINT)
    status, text = cli(out, "--epochs", 3)
    assert status == 130
    assert calls["n"] == stop_at  # the batch in progress finished, no further batch started
    assert signal.getsignal(signal.SIGINT) is handler_before
    assert f"Interrupted at epoch 2, batch 2/{steps}" in text and f"--resume --out {out}" in text
    run = checkpoint_run(out)
    assert (run["epoch"], run["batch"], run["seen"], len(run["history"])) == (1, 2, 2 * BATCH, 1)
    assert len(read_history(out)) == 1 and not (out / "model.npz").exists()

    monkeypatch.undo()
    stream = io.StringIO()
    status = train.main(["--resume", "--out", str(out), "--cache-dir", str(tmp_path)], stream=stream)
    assert status == 0, stream.getvalue()
    assert "at epoch 2, batch 3" in stream.getvalue()
    assert_same_run(out, reference.out)


def test_ctrl_c_in_the_last_batch_stops_after_the_epoch(cli, reference, tmp_path, monkeypatch):
    out = tmp_path / "run"
    steps = steps_per_epoch(reference.config)
    calls = signals_during_step(monkeypatch, steps, signal.SIGINT)  # the last batch of epoch 1
    status, text = cli(out, "--epochs", 3)
    assert status == 130 and calls["n"] == steps
    assert "Interrupted after epoch 1" in text
    run = checkpoint_run(out)
    assert (run["epoch"], run["batch"], run["seen"], len(run["history"])) == (1, 0, 0, 1)
    assert len(read_history(out)) == 1

    monkeypatch.undo()
    status = train.main(["--resume", "--out", str(out), "--cache-dir", str(tmp_path)], stream=io.StringIO())
    assert status == 0
    assert_same_run(out, reference.out)


def test_second_ctrl_c_stops_at_once(cli, tmp_path, monkeypatch):
    out = tmp_path / "run"
    handler_before = signal.getsignal(signal.SIGINT)
    calls = signals_during_step(monkeypatch, 2, signal.SIGINT, signal.SIGINT)
    status, _ = cli(out, "--epochs", 1)
    assert status == 130 and calls["n"] == 2
    assert not (out / "checkpoint.npz").exists()  # stopped inside batch 2 of epoch 1: nothing to save
    assert signal.getsignal(signal.SIGINT) is handler_before


def test_sigterm_checkpoints_like_ctrl_c_with_status_143(cli, reference, tmp_path, monkeypatch):
    out = tmp_path / "run"
    steps = steps_per_epoch(reference.config)
    handlers_before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    calls = signals_during_step(monkeypatch, steps + 2, signal.SIGTERM)  # "kill PID", "timeout", a job scheduler
    status, text = cli(out, "--epochs", 3)
    assert status == 128 + signal.SIGTERM and calls["n"] == steps + 2
    assert f"Interrupted at epoch 2, batch 2/{steps}" in text
    run = checkpoint_run(out)
    assert (run["epoch"], run["batch"], len(run["history"])) == (1, 2, 1)
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == handlers_before


def test_nan_loss_stops_with_status_1_and_keeps_the_last_checkpoint(cli, tmp_path, monkeypatch):
    out = tmp_path / "run"
    original = ARNCNN.loss_and_grads
    seen = {}

    def loss_and_grads(self, x, y):
        loss, grads = original(self, x, y)
        if (out / "checkpoint.npz").exists():  # epoch 1 is done and checkpointed
            seen["checkpoint"] = (out / "checkpoint.npz").read_bytes()
            return float("nan"), grads
        return loss, grads

    monkeypatch.setattr(ARNCNN, "loss_and_grads", loss_and_grads)
    status, text = cli(out, "--epochs", 2)
    assert status == 1
    assert "loss became nan at epoch 2, batch 1" in text and str(out / "checkpoint.npz") in text
    assert "loss became nan" in (out / "train.log").read_text()
    assert (out / "checkpoint.npz").read_bytes() == seen["checkpoint"]
    assert not (out / "model.npz").exists()
    assert len(read_history(out)) == 1

    model = ARNCNN(num_classes=2, seed=123)
    optimizer = get_optimizer("adamax", 0.001, form="paper")
    controller = EpochEndController(model.state_dict())
    run = train.load_checkpoint(out / "checkpoint.npz", model, optimizer, controller)
    assert (run.epoch, run.batch, len(run.history)) == (1, 0, 1)
    assert all(np.isfinite(v).all() for v in model.state_dict().values())
    assert optimizer.state_dict()["iterations"] == steps_per_epoch(read_config(out))


# ------------------------------------------------------------------------------------------------------------
# usage errors: status 2, one line on stderr


@pytest.mark.parametrize(
    "argv, named",
    [
        (["--epochs", "0"], "--epochs"),
        (["--epochs", "x"], "--epochs"),
        (["--lr", "-1"], "--lr"),
        (["--lr", "nan"], "--lr"),
        (["--batch-size", "0"], "--batch-size"),
        (["--dense-activation", "foo"], "foo"),
        (["--optimizer", "bogus"], "bogus"),
        (["--backend", "bogus"], "bogus"),
        (["--augment", "rotate"], "rotate"),
        (["--limit-per-class", "-3"], "--limit-per-class"),
        (["--bogus-flag"], "--bogus-flag"),
        (["--resume"], "--out"),
    ],
)
def test_bad_command_line_values(argv, named, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert train.main(argv, stream=io.StringIO()) == 2
    assert named in one_error_line(capsys)
    assert not (tmp_path / "runs").exists()


def test_missing_data(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    missing = tmp_path / "nonexistent"
    assert train.main(["--data", str(missing), "--out", str(tmp_path / "run")], stream=io.StringIO()) == 2
    assert str(missing) in one_error_line(capsys)


def test_too_small_limit_per_class_on_the_sample(capsys, tmp_path):
    status = train.main(["--limit-per-class", "10", "--out", str(tmp_path / "run"), "--cache-dir", str(tmp_path)],
                        stream=io.StringIO())
    assert status == 2
    line = one_error_line(capsys)
    assert "split" in line and "--limit-per-class 10" in line


def test_resume_needs_a_checkpoint(capsys, tmp_path):
    (tmp_path / "empty").mkdir()
    assert train.main(["--resume", "--out", str(tmp_path / "empty")], stream=io.StringIO()) == 2
    assert "checkpoint" in one_error_line(capsys)


def test_out_holding_a_run_needs_resume(capsys, tmp_path):
    (tmp_path / "checkpoint.npz").write_bytes(b"")
    assert train.main(["--out", str(tmp_path), "--epochs", "1"], stream=io.StringIO()) == 2
    assert "already holds a run" in one_error_line(capsys)
    assert (tmp_path / "checkpoint.npz").read_bytes() == b""


def test_resume_without_config_json(capsys, tmp_path):
    (tmp_path / "checkpoint.npz").write_bytes(b"")
    assert train.main(["--resume", "--out", str(tmp_path)], stream=io.StringIO()) == 2
    assert "config.json" in one_error_line(capsys)


def _write_config(out: Path, data: Path, **changes) -> None:
    options = {"data": str(data), "epochs": 1, "batch_size": BATCH, "lr": 0.001, "seed": 123, "attention": True,
               "residual": True, "dense_activation": "gelu", "optimizer": "adamax", "augment": "none",
               "dedupe": False, "limit_per_class": None}
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps({"options": {**options, **changes}}))


def test_resume_from_a_damaged_checkpoint(capsys, tmp_path, tiny_data, cache_dir):
    _write_config(tmp_path, tiny_data)
    (tmp_path / "checkpoint.npz").write_bytes(b"PK\x03\x04 not really a zip file")
    status = train.main(["--resume", "--out", str(tmp_path), "--cache-dir", str(cache_dir)], stream=io.StringIO())
    assert status == 2
    assert "cannot resume from" in one_error_line(capsys)


def test_resume_from_a_checkpoint_of_another_model(capsys, tmp_path, tiny_data, cache_dir, reference):
    _write_config(tmp_path, tiny_data, attention=False)
    shutil.copyfile(reference.out / "checkpoint.npz", tmp_path / "checkpoint.npz")
    status = train.main(["--resume", "--out", str(tmp_path), "--cache-dir", str(cache_dir)], stream=io.StringIO())
    assert status == 2
    assert "cannot resume from" in one_error_line(capsys)


def test_backend_from_the_environment(capsys, tmp_path, monkeypatch):
    monkeypatch.setattr(kernels, "_active", None)
    monkeypatch.setenv(kernels.ENV_VAR, "numpy")
    stream = io.StringIO()
    assert train.main(["--data", str(tmp_path / "missing"), "--out", str(tmp_path / "run")], stream=stream) == 2
    assert "kernels: numpy" in stream.getvalue()  # the README's MINARN_BACKEND is honoured without --backend
    capsys.readouterr()
    monkeypatch.setattr(kernels, "_active", None)
    monkeypatch.setenv(kernels.ENV_VAR, "bogus")
    assert train.main(["--out", str(tmp_path / "run2")], stream=io.StringIO()) == 2
    assert "bogus" in one_error_line(capsys)


# ------------------------------------------------------------------------------------------------------------
# options: one short epoch each, recorded in config.json, and visible in what the run did


class FakeTTY(io.StringIO):
    def isatty(self) -> bool:
        return True


def _first_row(out: Path) -> dict[str, float]:
    return checkpoint_run(out)["history"][0]


def test_option_hflip(cli, reference, tmp_path, monkeypatch, tiny_data, cache_dir):
    batches = []
    original = ARNCNN.loss_and_grads

    def spy(self, x, y):
        batches.append(x.copy())
        return original(self, x, y)

    monkeypatch.setattr(ARNCNN, "loss_and_grads", spy)
    status, _ = cli(tmp_path / "run", "--epochs", 1, "--augment", "hflip")
    assert status == 0 and read_config(tmp_path / "run")["options"]["augment"] == "hflip"
    images = split_dataset(load_mednist(tiny_data, cache_dir=cache_dir)).train.images.astype(np.float32) / 255
    originals = {im.tobytes() for im in images}
    mirrors = {im[:, ::-1].tobytes() for im in images} - originals
    seen = [im.tobytes() for im in np.concatenate(batches)]
    assert len(seen) == len(images)
    assert all(s in originals or s in mirrors for s in seen)
    flipped = sum(s in mirrors for s in seen)
    assert 0 < flipped < len(seen)


def test_option_no_attention(cli, reference, tmp_path):
    status, _ = cli(tmp_path / "run", "--epochs", 1, "--no-attention")
    assert status == 0 and read_config(tmp_path / "run")["options"]["attention"] is False
    model, full = minarn.load_model(tmp_path / "run" / "model.npz"), minarn.load_model(reference.out / "model.npz")
    assert model.config["attention"] is False and not model.stem_attention and not model.deep_attention
    assert model.count_params() < full.count_params()
    assert not any(k.startswith("multiply") for k in npz(tmp_path / "run" / "model.npz"))


def test_option_no_residual_and_progress_on_a_terminal(cli, reference, tmp_path):
    stream = FakeTTY()
    status, text = cli(tmp_path / "run", "--epochs", 1, "--no-residual", stream=stream)
    assert status == 0 and read_config(tmp_path / "run")["options"]["residual"] is False
    model, full = minarn.load_model(tmp_path / "run" / "model.npz"), minarn.load_model(reference.out / "model.npz")
    assert model.config["residual"] is False and model.block.add is None and model.block.skip is None
    assert full.count_params() - model.count_params() == 32 * 64 + 64  # the 1x1 skip convolution
    # on a terminal: every batch updates one line in place, cleared before the next table row
    assert text.count("\r" + "epoch 1/1  batch") == steps_per_epoch(reference.config)
    assert "\033[K\r\033[K" in text
    log = (tmp_path / "run" / "train.log").read_text()
    assert "batch 1/" not in log and "\r" not in log and "\033" not in log
    assert train.TABLE_HEADER in log


def test_option_dense_activation_relu(cli, reference, tmp_path):
    status, _ = cli(tmp_path / "run", "--epochs", 1, "--dense-activation", "relu")
    assert status == 0 and read_config(tmp_path / "run")["options"]["dense_activation"] == "relu"
    assert minarn.load_model(tmp_path / "run" / "model.npz").config["dense_activation"] == "relu"
    assert _first_row(tmp_path / "run")["loss"] != _first_row(reference.out)["loss"]


def test_option_optimizer_sgd(cli, reference, tmp_path):
    status, text = cli(tmp_path / "run", "--epochs", 1, "--optimizer", "sgd")
    assert status == 0 and read_config(tmp_path / "run")["options"]["optimizer"] == "sgd"
    ck = npz(tmp_path / "run" / "checkpoint.npz")
    assert str(ck["optim/name"]).lower() == "sgd" and "SGD(" in text
    assert not any(k.startswith("optim/m/") for k in ck)
    assert any(k.startswith("optim/m/") for k in npz(reference.out / "checkpoint.npz"))
    assert _first_row(tmp_path / "run")["loss"] != _first_row(reference.out)["loss"]


def test_option_dedupe(cli, reference, tmp_path):
    status, text = cli(tmp_path / "run", "--epochs", 1, "--dedupe")
    config = read_config(tmp_path / "run")
    assert status == 0 and config["options"]["dedupe"] is True
    assert "(removed before splitting)" in text
    total = lambda c: sum(part["total"] for part in c["split"].values())
    assert total(reference.config) == 2 * PER_CLASS + 1 and total(config) == 2 * PER_CLASS


def test_option_limit_per_class(cli, tmp_path):
    status, _ = cli(tmp_path / "run", "--epochs", 1, "--limit-per-class", PER_CLASS)
    config = read_config(tmp_path / "run")
    assert status == 0 and config["options"]["limit_per_class"] == PER_CLASS
    assert config["split"]["train"]["total"] == 28 and config["split"]["valid"]["total"] == 2
    assert all(sum(config["split"][p][c] for p in ("train", "valid", "test")) == PER_CLASS for c in CLASSES)


def test_option_backend_numpy(cli, reference, tmp_path):
    status, text = cli(tmp_path / "run", "--epochs", 1, "--backend", "numpy")
    assert status == 0 and read_config(tmp_path / "run")["backend"] == "numpy"
    assert "kernels: numpy" in text
    row, ref = _first_row(tmp_path / "run"), _first_row(reference.out)
    for k in ("loss", "accuracy", "val_loss", "val_accuracy"):  # the same computation, other kernels
        assert row[k] == pytest.approx(ref[k], rel=1e-4), k


# ------------------------------------------------------------------------------------------------------------
# the Reporter


def test_reporter_on_a_terminal(tmp_path):
    stream = FakeTTY()
    report = train.Reporter(tmp_path / "train.log", stream)
    assert report.tty
    report.progress("batch 1")
    report.progress("batch 2")
    report("row 1", color=train.Reporter.GREEN)
    report("row 2")
    report.close()
    assert stream.getvalue() == ("\rbatch 1\033[K\rbatch 2\033[K\r\033[K"
                                 f"{train.Reporter.GREEN}row 1{train.Reporter.RESET}\nrow 2\n")
    assert (tmp_path / "train.log").read_text() == "row 1\nrow 2\n"


def test_reporter_to_a_file_prints_progress_only_now_and_then(tmp_path, monkeypatch):
    now = {"t": 1000.0}
    monkeypatch.setattr(train, "time", SimpleNamespace(monotonic=lambda: now["t"]))
    stream = io.StringIO()
    report = train.Reporter(tmp_path / "train.log", stream)
    assert not report.tty
    for t, text, final in [(1000, "p1", False), (1010, "p2", False), (1029.9, "p3", False), (1030.5, "p4", False),
                           (1031, "p5", False), (1032, "p6", True)]:
        now["t"] = t
        report.progress(text, final=final)
    report("row", color=train.Reporter.ORANGE)
    report.close()
    assert stream.getvalue() == "p1\np4\np6\nrow\n"  # at most one every 30 s, and the final one
    assert (tmp_path / "train.log").read_text() == "row\n"


# ------------------------------------------------------------------------------------------------------------
# evaluate_split


def test_evaluate_split_loss_is_crossentropy_plus_penalties():
    rng = np.random.default_rng(7)
    model = ARNCNN(num_classes=3, input_shape=(32, 32, 1), seed=5)
    model.dense.params["bias"][...] = rng.normal(0, 0.1, model.dense.params["bias"].shape)  # non-zero bias L1
    images = rng.integers(0, 256, (7, 32, 32, 1), dtype=np.uint8)
    labels = np.array([0, 1, 2, 0, 1, 2, 2])

    loss, acc, probs = train.evaluate_split(model, images, labels, batch_size=3)  # batches of 3, 3, 1

    x = images.astype(np.float64) / 255
    dense_out = model.dense.forward(model.features(x.astype(np.float32)).reshape(7, -1)).astype(np.float64)
    logits = dense_out @ model.classifier.params["kernel"].astype(np.float64) + model.classifier.params["bias"]
    log_p = logits - logits.max(1, keepdims=True)
    log_p -= np.log(np.exp(log_p).sum(1, keepdims=True))
    ce = -np.mean(log_p[np.arange(7), labels])
    kernel_l2 = 0.016 * np.sum(model.dense.params["kernel"].astype(np.float64) ** 2)
    bias_l1 = 0.006 * np.sum(np.abs(model.dense.params["bias"].astype(np.float64)))
    activity_l1 = 0.006 * np.sum(np.abs(dense_out)) / 7  # per-sample mean (tf.keras 2)
    assert activity_l1 > 1e-3 and bias_l1 > 1e-3  # both terms matter at the tolerance below
    assert loss == pytest.approx(ce + kernel_l2 + bias_l1 + activity_l1, rel=1e-5)
    np.testing.assert_allclose(probs, np.exp(log_p), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(probs, model.predict(images), rtol=1e-5, atol=1e-7)
    assert acc == np.mean(np.exp(log_p).argmax(1) == labels)
    # the batch size does not change the result
    assert train.evaluate_split(model, images, labels, batch_size=7)[0] == pytest.approx(loss, rel=1e-6)

