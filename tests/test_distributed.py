"""Data-parallel training on MPI (``minarn.distributed``): sharding, the one-process stand-in, the install hint,
and, under ``mpiexec -n 2`` (local ranks, each on one BLAS / Numba thread), the same training as one process.

"The same up to float32 round-off" is measured over the whole flattened gradient (or weights): a single weight
can differ far more, because ARN-CNN's max-pooling ties (black background) and ReLU kinks route the gradient by
the last bit; one process on the NumPy kernels differs from itself on the Numba kernels just as much (5 % on
one conv bias in a batch of 7). A wrong share, a missing all-reduce or unsynchronized batch norm moves the
whole gradient by 1e-2 and more.

The training runs use ``--optimizer sgd`` for the weights: Adamax's first steps move a weight whose gradient is
round-off noise (a bias before batch norm) by +-lr whatever the noise's size; its slots are compared one step
after the same gradients instead (``distributed_programs.py step``).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from minarn import distributed, train

ROOT = Path(__file__).resolve().parent.parent
PROGRAMS = Path(__file__).resolve().parent / "distributed_programs.py"
MPIEXEC = shutil.which("mpiexec") or (shutil.which("mpiexec", path=str(Path(sys.executable).parent)))
needs_mpiexec = pytest.mark.skipif(MPIEXEC is None, reason="mpiexec not found: pip install 'minarn[mpi]'")
TIMEOUT = 300  # seconds: a hang fails the test instead of blocking CI
FAULT_TIMEOUT = 120  # seconds for the fault tests' short runs (~10 s): a rank left waiting in a collective fails
RUN = ["--epochs", "1", "--batch-size", "8", "--limit-per-class", "21", "--image-size", "32", "--optimizer", "sgd"]


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in distributed.LAUNCHER_VARIABLES}
    env.update(PYTHONPATH=str(ROOT), OPENBLAS_NUM_THREADS="1", NUMBA_NUM_THREADS="1", OMP_NUM_THREADS="1")
    return env


def _command(argv: list[str], ranks: int) -> list[str]:
    return ([MPIEXEC, "-n", str(ranks)] if ranks > 1 else []) + [sys.executable] + argv


def _run(argv: list[str], ranks: int = 1, cwd: Path | None = None, timeout: float = TIMEOUT
         ) -> subprocess.CompletedProcess:
    return subprocess.run(_command(argv, ranks), capture_output=True, text=True, timeout=timeout, env=_env(), cwd=cwd)


def _train(out: Path, ranks: int, *extra: str) -> subprocess.CompletedProcess:
    done = _run(["-m", "minarn.train", "--out", str(out), *RUN, *extra], ranks)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return done


def _flat_difference(a: dict, b: dict, prefix: str) -> float:
    """||a - b|| / ||b|| over every float array whose key starts with ``prefix``."""
    keys = [k for k in b if k.startswith(prefix) and np.asarray(b[k]).dtype.kind == "f"]
    assert keys, f"no arrays {prefix}*"
    d = np.concatenate([(np.asarray(a[k], np.float64) - b[k]).ravel() for k in keys])
    r = np.concatenate([np.asarray(b[k], np.float64).ravel() for k in keys])
    return float(np.linalg.norm(d) / np.linalg.norm(r))


def _checkpoint(run: Path) -> dict[str, np.ndarray]:
    with np.load(run / "checkpoint.npz") as data:
        return {k: data[k] for k in data.files}


def _load_checkpoint(run: Path) -> train.RunState:
    """The run's checkpoint loaded as ``--resume`` loads it (a damaged file raises)."""
    options = json.loads((run / "config.json").read_text())["options"]
    model, optimizer, controller = train.build_training(options, 6)
    return train.load_checkpoint(run / "checkpoint.npz", model, optimizer, controller)


# -- without mpiexec ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("total", [0, 1, 5, 7, 8, 40, 41])
@pytest.mark.parametrize("size", [1, 2, 3, 64])
def test_shards_cover_the_batch_once_in_order(total, size):
    parts = [distributed.shard(total, r, size) for r in range(size)]
    assert [p.start for p in parts] == [0] + [p.stop for p in parts[:-1]]
    assert parts[-1].stop == total
    assert max(p.count for p in parts) - min(p.count for p in parts) <= 1
    assert sum(p.share for p in parts) == pytest.approx(1.0 if total else 0.0)


def test_each_rank_draws_its_rows_of_the_whole_batchs_random_numbers():
    whole = np.random.default_rng([1, 2, 3])
    flips, mask = whole.random(7), whole.random((7, 256))
    for rank in range(3):
        part = distributed.shard(7, rank, 3)
        rng = distributed.RowsOf(np.random.default_rng([1, 2, 3]), part)
        np.testing.assert_array_equal(rng.random(part.count), flips[part.rows])
        np.testing.assert_array_equal(rng.random((part.count, 256), dtype=np.float64), mask[part.rows])


def test_the_one_process_stand_in_changes_nothing():
    comm = distributed.communicator()
    assert isinstance(comm, distributed.SingleProcess) and (comm.rank, comm.size) == (0, 1)
    grads = {"a/kernel": np.ones((2, 3), np.float32)}
    assert distributed.allreduce_gradients(comm, grads, 1.0) is grads
    assert comm.bcast(grads) is grads and comm.allgather(3) == [3]


def test_without_mpi4py_mpiexec_says_how_to_install_it(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(distributed, "mpi4py", None)
    monkeypatch.setenv("PMI_RANK", "0")
    monkeypatch.setenv("PMI_SIZE", "2")
    assert train.main(["--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "started by mpiexec" in err and "pip install 'minarn[mpi]'" in err
    assert not (tmp_path / "run").exists()
    monkeypatch.delenv("PMI_RANK")
    monkeypatch.delenv("PMI_SIZE")
    with pytest.raises(distributed.DistributedError, match=r"asked for.*minarn\[mpi\]"):
        distributed.communicator(require=True)


def test_a_rank_other_than_0_takes_its_share_of_the_test_split_and_writes_nothing(monkeypatch, tmp_path):
    """After training every rank runs the test split's forward passes with its communicator (the shares are
    gathered, see below); rank 0 alone writes."""
    class Rank1(distributed.SingleProcess):
        rank, size = 1, 2

    calls = []

    def evaluate_split(model, images, labels, batch_size=40, comm=None):
        calls.append((len(images), batch_size, comm))
        return 0.5, 0.5, np.full((len(images), 6), 1 / 6)

    monkeypatch.setattr(train, "evaluate_split", evaluate_split)
    comm = Rank1()
    model = SimpleNamespace(load_state_dict=lambda weights: None)
    controller = SimpleNamespace(best_weights={}, best_epoch=1)
    splits = SimpleNamespace(test=SimpleNamespace(images=np.zeros((7, 8, 8, 1), np.uint8), labels=np.zeros(7, int)))
    config = {"options": {"batch_size": 5}}
    status = train._finish(model, controller, config, tmp_path, "data", splits, None, SimpleNamespace(comm=comm),
                           lambda *a, **k: None, 0.0)
    assert status == 0 and calls == [(7, 5, comm)]
    assert list(tmp_path.iterdir()) == []


# -- under mpiexec -n 2 -----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """One epoch (15 steps, the last of 1 image: rank 1 gets none) on the sample in 1 process and on 2 ranks."""
    if MPIEXEC is None:
        pytest.skip("mpiexec not found: pip install 'minarn[mpi]'")
    base = tmp_path_factory.mktemp("distributed")
    out = {"one": base / "one", "two": base / "two"}
    _train(out["one"], 1)  # first: it also fills the data cache the two ranks then read
    out["two_log"] = base / "two.log"
    done = _train(out["two"], 2)
    out["two_log"].write_text(done.stdout)
    return out


@needs_mpiexec
def test_one_step_on_2_ranks_equals_the_whole_batch_in_one_process(tmp_path):
    """Gradients and Adamax slots of one step agree to 1e-4, or to round-off's own size where that is larger: the
    whole batch on the other kernel backend. Round-off can move a ReLU's or a pooling window's choice at a tie (the
    images' black background), which moves a gradient by a whole term: measured on one machine, 8 images on 2 ranks
    1.7e-4 from one process and 1.7e-3 on the other backend (the rest 1e-6 and less)."""
    done = _run([str(PROGRAMS), "step", str(tmp_path / "step.npz")], ranks=2)
    assert done.returncode == 0, done.stderr[-3000:]
    with np.load(tmp_path / "step.npz") as data:
        saved = {k: data[k] for k in data.files}
    for n in (8, 7, 1):  # 4 + 4, 4 + 3 and 1 + none
        dist = {k.replace(f"{n}/dist/", ""): v for k, v in saved.items() if k.startswith(f"{n}/dist/")}
        ref = {k.replace(f"{n}/ref/", ""): v for k, v in saved.items() if k.startswith(f"{n}/ref/")}
        other = {k.replace(f"{n}/other/", ""): v for k, v in saved.items() if k.startswith(f"{n}/other/")}
        limit = max(1e-4, _flat_difference(other, ref, "grad/")) if other else 1e-4
        assert _flat_difference(dist, ref, "grad/") < limit, n
        assert _flat_difference(dist, ref, "optim/m/") < limit, n
        assert _flat_difference(dist, ref, "optim/u/") < limit, n
        for key in ref:
            if "moving_" in key:  # batch statistics over both ranks' rows
                np.testing.assert_allclose(dist[key], ref[key], rtol=1e-6, atol=1e-9, err_msg=f"{n} {key}")


@needs_mpiexec
@pytest.mark.parametrize("steps", [1, 15])
def test_adamax_steps_on_2_ranks_differ_from_one_process_as_round_off_does(tmp_path, steps):
    """Adamax turns round-off-level gradients (ties, kinks, biases before batch norm) into +-lr steps, and the
    weights' gaps then grow with the steps whatever their source. So 2 ranks are held against round-off itself:
    one process on the other kernel backend, the same arithmetic in another order. Measured (flattened weights):
    after 1 step 1.1e-6 (2 ranks) and 3.9e-7 (other backend), after 15 steps 2.5e-3 and 1.7e-3 (moving statistics
    1.1e-4 and 7e-5); a wrong share or a missing reduction gives 1e-2 and more."""
    done = _run([str(PROGRAMS), "adamax", str(steps), str(tmp_path / "adamax.npz")], ranks=2)
    assert done.returncode == 0, done.stderr[-3000:]
    with np.load(tmp_path / "adamax.npz") as data:
        saved = {k: data[k] for k in data.files}
    part = {p: {k[len(p) + 1:]: v for k, v in saved.items() if k.startswith(p + "/")} for p in ("dist", "ref", "other")}
    for moving in (False, True):  # the weights, then batch norm's moving statistics (their gaps lr-damped)
        ref = {k: v for k, v in part["ref"].items() if ("moving_" in k) == moving}
        gap = _flat_difference(part["dist"], ref, "")
        print(f"{steps} steps, {'moving statistics' if moving else 'weights'}: 2 ranks {gap:.2g}", end="")
        assert gap < (1e-5 if steps == 1 else 1e-2)  # float32 round-off; a wrong share: 1e-2 and more
        assert gap > 0 or moving  # not the same computation twice (the first step's statistics can agree)
        if part["other"]:
            round_off = _flat_difference(part["other"], ref, "")
            print(f", the other backend {round_off:.2g}")
            assert gap <= 5 * round_off


@needs_mpiexec
def test_2_ranks_train_as_one_process(runs):
    one, two = _checkpoint(runs["one"]), _checkpoint(runs["two"])
    assert _flat_difference(two, one, "model/") < 1e-5
    for key in one:  # batch-norm moving statistics, each array
        if "moving_" in key:
            np.testing.assert_allclose(two[key], one[key], rtol=1e-4, atol=1e-6, err_msg=key)
    assert two["optim/iterations"] == one["optim/iterations"] == 15
    log = runs["two_log"].read_text()
    assert log.count("Training is completed") == 1  # rank 0 alone prints
    assert sorted(p.name for p in runs["two"].iterdir()) == sorted(p.name for p in runs["one"].iterdir())


@needs_mpiexec
def test_2_ranks_evaluate_the_test_split_as_one_process(runs):
    """The final test evaluation is sharded over the ranks and gathered (a rank that left it out would leave
    rank 0 waiting in the gather): the same predictions, in the same order, as one process."""
    def rows(run: Path) -> list[list[str]]:
        return [line.split(",") for line in (run / "test_predictions.csv").read_text().splitlines()]

    one, two = rows(runs["one"]), rows(runs["two"])
    assert one[0] == two[0] == ["path", "label", "predicted", "p_true"]
    test_one, test_two = (json.loads((runs[k] / "config.json").read_text())["test"] for k in ("one", "two"))
    assert len(one) == 1 + test_one["images"] and [r[:3] for r in two] == [r[:3] for r in one]
    p_one, p_two = (np.array([float(r[3]) for r in rows[1:]]) for rows in (one, two))
    # the 1-epoch model is near uniform (p ~ 1/6, apart by ~1e-4 between images): a row out of place shows
    np.testing.assert_allclose(p_two, p_one, atol=1e-6)
    assert test_two["images"] == test_one["images"] and test_two["errors"] == test_one["errors"]
    assert abs(test_two["log_loss"] - test_one["log_loss"]) < 1e-4


@needs_mpiexec
def test_resume_with_another_number_of_ranks(runs, tmp_path):
    """A 2-rank checkpoint continued in 1 process and a 1-process one on 2 ranks reach the same second epoch."""
    two_then_one, one_then_two = tmp_path / "two_then_one", tmp_path / "one_then_two"
    shutil.copytree(runs["two"], two_then_one)
    shutil.copytree(runs["one"], one_then_two)
    _train(two_then_one, 1, "--resume", "--epochs", "2")
    _train(one_then_two, 2, "--resume", "--epochs", "2")
    a, b = _checkpoint(two_then_one), _checkpoint(one_then_two)
    assert a["optim/iterations"] == b["optim/iterations"] == 30
    assert _flat_difference(a, b, "model/") < 1e-5
    assert _flat_difference(a, _checkpoint(runs["one"]), "model/") > 1e-4  # the second epoch did train


@needs_mpiexec
def test_a_failing_rank_ends_the_job_naming_it(tmp_path):
    done = _run([str(PROGRAMS), "fail", str(tmp_path / "run")], ranks=2)  # TIMEOUT: a hang fails
    assert done.returncode != 0
    assert "rank 1 of 2 failed" in done.stderr and "injected failure" in done.stderr


@needs_mpiexec
def test_a_rank_killed_mid_epoch_ends_the_job_and_the_checkpoint_stays_valid(tmp_path):
    """Rank 1 SIGKILLs itself in epoch 2 (MPICH's mpiexec then ends rank 0, which waits in an all-reduce)."""
    done = _run([str(PROGRAMS), "kill", str(tmp_path / "run")], ranks=2, timeout=FAULT_TIMEOUT)
    output = done.stdout + done.stderr
    assert done.returncode != 0 and "Killed (signal 9)" in output, output[-3000:]
    pid = output.split("rank 1 PID ")[1].split()[0]  # the log names the PID that mpiexec reports dead
    assert f"PID {pid} RUNNING AT" in output
    run = _load_checkpoint(tmp_path / "run")
    assert (run.epoch, run.batch, len(run.history)) == (1, 0, 1)  # the checkpoint of epoch 1
    assert "Training is completed" not in output


@needs_mpiexec
def test_sigterm_to_mpiexec_checkpoints_on_every_rank_and_stops(tmp_path):
    """SIGTERM to mpiexec (a scheduler's notice; Ctrl-C sends it SIGINT and works the same) reaches the ranks,
    which agree to stop at the same batch: a checkpoint, exit status 143 and the message, no rank left waiting."""
    out = tmp_path / "run"
    argv = ["-m", "minarn.train", "--out", str(out), "--epochs", "50", "--batch-size", "8", "--limit-per-class",
            "8", "--split", "0.5,0.25,0.25", "--image-size", "32"]
    job = subprocess.Popen(_command(argv, 2), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                           env=_env())
    lines = []
    watchdog = threading.Timer(FAULT_TIMEOUT, job.kill)  # a hang fails (mpiexec killed takes its ranks along)
    watchdog.start()
    try:
        for line in job.stdout:
            lines.append(line)
            if line.strip().startswith("1/50"):  # the first epoch's row: training is under way
                job.send_signal(signal.SIGTERM)
        job.wait(timeout=FAULT_TIMEOUT)
    finally:
        watchdog.cancel()
        if job.poll() is None:
            job.kill()
    output = "".join(lines)
    assert job.returncode == 143, output[-3000:]
    assert output.count("Interrupted ") == 1 and "checkpoint saved" in output
    run = _load_checkpoint(out)
    assert run.epoch >= 1 and not run.finished and "Training is completed" not in output


@needs_mpiexec
def test_a_signal_to_one_rank_after_the_steps_all_reduce_stops_both_at_the_next(tmp_path):
    done = _run([str(PROGRAMS), "term", str(tmp_path / "run")], ranks=2, timeout=FAULT_TIMEOUT)
    assert done.returncode in (130, 143), done.stdout[-2000:] + done.stderr[-2000:]  # rank 0 had no signal
    assert "Interrupted after epoch 1: checkpoint saved" in done.stdout  # step 2 of 3: stopped after step 3
    run = _load_checkpoint(tmp_path / "run")
    assert (run.epoch, run.batch) == (1, 0)


# -- prediction under mpiexec -n 2 --------------------------------------------------------------------------------
@needs_mpiexec
def test_prediction_on_2_ranks_prints_what_one_process_prints(tmp_path):
    """The published model on 6 sample images per class, a file that is no image and a missing one, in chunks
    of 10 (5 chunks, the last of 4): the same stdout (every class probability) and stderr (the failures in
    place, Table 2 of --score) byte for byte."""
    images = tmp_path / "images"
    for folder in sorted((ROOT / "minarn" / "sample" / "MedNIST").iterdir()):
        (images / folder.name).mkdir(parents=True)
        for f in sorted(folder.iterdir())[:6]:
            shutil.copy(f, images / folder.name / f.name)
    (images / "Hand" / "notes.png").write_text("not an image")
    argv = [str(PROGRAMS), "predict", "10", str(ROOT / "results" / "default-seed123" / "model.npz"),
            str(images / "CXR" / min(os.listdir(images / "CXR"))), str(tmp_path / "missing.png"), str(images),
            "--score", "--probabilities"]
    one, two = _run(argv), _run(argv, ranks=2)
    assert one.returncode == two.returncode == 1  # some files could not be read
    assert two.stdout == one.stdout and two.stderr == one.stderr
    lines = one.stdout.splitlines()
    assert len(lines) == 1 + 1 + 36 and lines[0].startswith("image\tclass\tprobability\tAbdomenCT")
    assert "missing.png: no such file" in one.stderr and "notes.png: not an image" in one.stderr
    assert "score on 37 labelled images: 0 wrong" in one.stderr


@needs_mpiexec
def test_prediction_on_2_ranks_reports_a_bad_model_once(tmp_path):
    done = _run(["-m", "minarn.predict", str(tmp_path / "model.npz"), str(tmp_path)], ranks=2)
    assert done.returncode == 2
    assert done.stderr.count("error: model") == 1 and "no such file" in done.stderr and not done.stdout
