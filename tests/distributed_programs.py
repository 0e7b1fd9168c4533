"""Programs that ``tests/test_distributed.py`` starts under ``mpiexec -n 2`` (not a test module).

``step OUT.npz``: on batches of 8, 7 and 1 images of the shipped sample (the last leaves rank 1 no rows), the
sharded forward and backward with synchronized batch norm, the gradient all-reduce and one Adamax step on every
rank, and on rank 0 the same on the whole batch in one process (no reducer); rank 0 saves both, keyed
``"<n>/dist/..."`` and ``"<n>/ref/..."`` (gradients, Adamax slots, batch-norm moving statistics, weights).
``fail RUN_DIR``: ``python -m minarn.train`` into RUN_DIR where rank 1 raises at its second training step.
``kill RUN_DIR``: ``python -m minarn.train --epochs 2`` into RUN_DIR (3 steps of 8 images an epoch) where rank 1 kills
itself with SIGKILL at its second step of epoch 2, after the checkpoint of epoch 1.
``term RUN_DIR``: the same training where rank 1 alone gets SIGTERM inside its second step, after the step's
all-reduces (the moment at which a rank deciding on its own flag would leave the other waiting).
``adamax STEPS OUT.npz``: STEPS Adamax steps on batches of 8 (32x32) on every rank, and on rank 0 the same in one
process, and again in one process on the other kernel backend (when Numba is installed); rank 0 saves the
weights, keyed ``"dist/..."``, ``"ref/..."`` and ``"other/..."``.
``predict CHUNK ARGS...``: ``python -m minarn.predict ARGS...`` with chunks of CHUNK images (instead of 256), so
that a few images make several chunks.
"""

from __future__ import annotations

import os
import signal
import sys

import numpy as np

from minarn import distributed, kernels, predict, train
from minarn.data import load_mednist, one_hot, scale_images
from minarn.model import ARNCNN
from minarn.optim import Optimizer, get_optimizer


def _arrays(model: ARNCNN, grads: dict[str, np.ndarray], optimizer, prefix: str) -> dict[str, np.ndarray]:
    out = {f"{prefix}/grad/{k}": g for k, g in grads.items()}
    out.update({f"{prefix}/weights/{k}": v for k, v in model.state_dict().items()})
    out.update({f"{prefix}/optim/{k}": np.asarray(v) for k, v in optimizer.state_dict().items()
                if isinstance(v, np.ndarray)})
    return out


def _other_backend() -> str:
    """The kernel backend not in use: the same arithmetic in another order, round-off's own yardstick."""
    return "numpy" if kernels.get_backend().NAME == "numba" else "numba"


def step(path: str) -> None:
    comm = distributed.communicator()
    ds = load_mednist()
    saved: dict[str, np.ndarray] = {}
    for n in (8, 7, 1):
        idx = np.random.default_rng(n).permutation(len(ds))[:n]
        x, y = scale_images(ds.images[idx]), one_hot(ds.labels[idx], ds.num_classes)
        part = distributed.shard(n, comm.rank, comm.size)
        rows = part.rows if part.count else slice(0, 1)  # no rows: the one-row stand-in, as train.fit does
        model = ARNCNN(num_classes=ds.num_classes, seed=3)
        optimizer = get_optimizer("adamax", 0.001, form="paper")
        model.dropout.set_generator(distributed.RowsOf(np.random.default_rng([7, n]), part))
        sync = distributed.synchronize_batch_norm(model, comm)
        sync.share, sync.contributes = part.share, part.count > 0
        _, grads = model.loss_and_grads(x[rows], y[rows])
        grads = distributed.allreduce_gradients(comm, grads, part.share)
        optimizer.apply(model.parameters(), grads)
        if comm.rank == 0:
            saved.update(_arrays(model, grads, optimizer, f"{n}/dist"))
            ref = ARNCNN(num_classes=ds.num_classes, seed=3)
            ref_opt = get_optimizer("adamax", 0.001, form="paper")
            ref.dropout.set_generator(np.random.default_rng([7, n]))
            _, ref_grads = ref.loss_and_grads(x, y)
            ref_opt.apply(ref.parameters(), ref_grads)
            saved.update(_arrays(ref, ref_grads, ref_opt, f"{n}/ref"))
            if kernels.numba_available():  # round-off's own size: the whole batch on the other backend
                with kernels.backend(_other_backend()):
                    other = ARNCNN(num_classes=ds.num_classes, seed=3)
                    other.dropout.set_generator(np.random.default_rng([7, n]))
                    _, other_grads = other.loss_and_grads(x, y)
                saved.update({f"{n}/other/grad/{k}": v for k, v in other_grads.items()})
    if comm.rank == 0:
        np.savez(path, **saved)


def fail(run_dir: str) -> int:
    comm = distributed.communicator()
    calls = []
    original = ARNCNN.loss_and_grads

    def failing(self, *args, **kwargs):
        calls.append(1)
        if comm.rank == 1 and len(calls) == 2:
            raise RuntimeError("injected failure in the second training step")
        return original(self, *args, **kwargs)

    ARNCNN.loss_and_grads = failing
    return train.main(["--out", run_dir, "--epochs", "1", "--batch-size", "8", "--limit-per-class", "21",
                       "--image-size", "32"])


def adamax(count: int, path: str) -> None:
    comm = distributed.communicator()
    ds = load_mednist(image_size=32)

    def steps(size: int, rank: int, c) -> dict[str, np.ndarray]:
        model = ARNCNN(num_classes=ds.num_classes, seed=3, input_shape=(32, 32, 1))
        optimizer = get_optimizer("adamax", 0.001, form="paper")
        sync = distributed.synchronize_batch_norm(model, c)
        for s in range(count):
            idx = np.random.default_rng([5, s]).permutation(len(ds))[:8]
            x, y = scale_images(ds.images[idx]), one_hot(ds.labels[idx], ds.num_classes)
            part = distributed.shard(8, rank, size)
            model.dropout.set_generator(distributed.RowsOf(np.random.default_rng([7, s]), part))
            if sync is not None:
                sync.share, sync.contributes = part.share, True
            _, grads = model.loss_and_grads(x[part.rows], y[part.rows])
            optimizer.apply(model.parameters(), distributed.allreduce_gradients(c, grads, part.share))
        return model.state_dict()

    dist = steps(comm.size, comm.rank, comm)
    if comm.rank == 0:
        ref = steps(1, 0, distributed.SingleProcess())
        saved = {**{f"dist/{k}": v for k, v in dist.items()}, **{f"ref/{k}": v for k, v in ref.items()}}
        if kernels.numba_available():
            with kernels.backend(_other_backend()):
                saved.update({f"other/{k}": v for k, v in steps(1, 0, distributed.SingleProcess()).items()})
        np.savez(path, **saved)


def _small_run(run_dir: str) -> int:
    return train.main(["--out", run_dir, "--epochs", "2", "--batch-size", "8", "--limit-per-class", "8",
                       "--split", "0.5,0.25,0.25", "--image-size", "32"])


def kill(run_dir: str) -> int:
    comm = distributed.communicator()
    calls = []
    original = ARNCNN.loss_and_grads

    def killed(self, *args, **kwargs):
        calls.append(1)
        if comm.rank == 1 and len(calls) == 3 + 2:
            os.kill(os.getpid(), signal.SIGKILL)
        return original(self, *args, **kwargs)

    ARNCNN.loss_and_grads = killed
    return _small_run(run_dir)


def term(run_dir: str) -> int:
    comm = distributed.communicator()
    calls = []
    original = Optimizer.apply

    def signalled(self, *args, **kwargs):  # called after the step's all-reduces
        calls.append(1)
        if comm.rank == 1 and len(calls) == 2:
            os.kill(os.getpid(), signal.SIGTERM)
        return original(self, *args, **kwargs)

    Optimizer.apply = signalled
    return _small_run(run_dir)


if __name__ == "__main__":
    if sys.argv[1] == "step":
        step(sys.argv[2])
    elif sys.argv[1] == "fail":
        raise SystemExit(fail(sys.argv[2]))
    elif sys.argv[1] == "kill":
        raise SystemExit(kill(sys.argv[2]))
    elif sys.argv[1] == "term":
        raise SystemExit(term(sys.argv[2]))
    elif sys.argv[1] == "adamax":
        adamax(int(sys.argv[2]), sys.argv[3])
    elif sys.argv[1] == "predict":
        predict.CHUNK = int(sys.argv[2])
        raise SystemExit(predict.main(sys.argv[3:]))
    else:
        raise SystemExit(f"unknown program {sys.argv[1]!r}: expected step, fail, kill, term, adamax or predict")
