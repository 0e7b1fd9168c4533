"""Data-parallel training on MPI: the communicator, the broadcast, the gradient all-reduce, sharding, sync batch norm.

``mpiexec -n R python -m minarn.train ...`` runs R copies of the same program ("ranks"). Each step every rank
takes its rows of the global batch (``shard``), runs forward and backward on them, and the ranks add their
gradients (``allreduce_gradients``), so every rank applies the same update to the same weights. For R ranks
to compute the same training as one process:

- the weights, optimizer, controller and run state start equal (``broadcast_training`` from rank 0);
- the batch of ``n`` rows is cut into contiguous blocks of ``n // R`` or ``n // R + 1`` rows (rank r's share
  ``w_r = n_r / n``); each rank's loss is its block's mean, so the global gradient is sum_r w_r * g_r;
- batch normalization takes its batch statistics over all ranks' rows and, in backward, all-reduces the two
  sums the gradient needs (``SyncBatchNorm``, installed by ``synchronize_batch_norm``);
- every rank draws the whole batch's random numbers (shuffle, flips, dropout mask) from the same seeded
  generator and keeps its rows (``RowsOf``).

A rank with no rows (a last batch smaller than R) runs a one-row stand-in batch with share 0, so that it takes
part in every collective call and adds nothing.

Without ``mpiexec`` (or with one rank), ``communicator()`` returns ``SingleProcess``, a stand-in with the same
methods: the training code has one path, and a one-process run computes exactly what it did before.
``python -m minarn.distributed`` says which one a command would get (and how to install the ``mpi`` extra).
"""

from __future__ import annotations

import os
import sys
import time
import traceback
from dataclasses import dataclass
from types import ModuleType, TracebackType
from typing import Any

import numpy as np

from minarn.layers.norm import BatchNormalization

mpi4py: ModuleType | None
try:  # the ``mpi`` extra; importing mpi4py.MPI initialises MPI, so only where mpiexec started us (communicator)
    import mpi4py
except ImportError:  # pragma: no cover - depends on the installation
    mpi4py = None

INSTALL_HINT = "pip install 'minarn[mpi]' (mpi4py >= 4 and the mpich wheel)"
# Variables that the MPI launchers set in every process they start: MPICH / Intel MPI (PMI), Open MPI, PMIx.
LAUNCHER_VARIABLES = ("PMI_RANK", "PMI_SIZE", "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "PMIX_RANK")
ABORT_GRACE_S = 1.0  # seconds between printing why a rank fails and ending the job (see MPICommunicator.abort)
THREAD_VARIABLES = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")


class DistributedError(RuntimeError):
    """MPI was asked for (or ``mpiexec`` started this process) but cannot be used."""


def launched_by_mpiexec() -> bool:
    """True when an MPI launcher started this process (one of ``LAUNCHER_VARIABLES`` is set)."""
    return any(v in os.environ for v in LAUNCHER_VARIABLES)


# -- communicators --------------------------------------------------------------------------------------
class SingleProcess:
    """The one-process stand-in: rank 0 of 1; every collective call returns its input unchanged."""

    rank, size, host_ranks = 0, 1, 1

    def allreduce(self, values: np.ndarray) -> np.ndarray:
        """Sum over ranks of a numeric array (here: the array itself)."""
        return values

    def bcast(self, obj: Any) -> Any:
        """Rank 0's object on every rank."""
        return obj

    def allgather(self, obj: Any) -> list[Any]:
        """Every rank's object, in rank order."""
        return [obj]

    def barrier(self) -> None:
        """Wait until every rank is here."""

    def abort(self, status: int) -> None:
        """End every rank of the job with ``status``."""
        raise SystemExit(status)

    def __repr__(self) -> str:
        return "SingleProcess()"


class MPICommunicator:
    """mpi4py's ``COMM_WORLD`` behind the methods of ``SingleProcess``.

    ``host_ranks`` is the number of ranks on this rank's machine (ranks sharing memory), for the thread default.
    """

    def __init__(self, comm: Any) -> None:
        self.comm = comm
        self.rank, self.size = comm.Get_rank(), comm.Get_size()
        from mpi4py import MPI

        self._MPI = MPI
        local = comm.Split_type(MPI.COMM_TYPE_SHARED)
        self.host_ranks = local.Get_size()
        local.Free()

    def allreduce(self, values: np.ndarray) -> np.ndarray:
        buf = np.ascontiguousarray(values).copy()
        self.comm.Allreduce(self._MPI.IN_PLACE, buf, op=self._MPI.SUM)
        return buf

    def bcast(self, obj: Any) -> Any:
        return self.comm.bcast(obj, root=0)

    def allgather(self, obj: Any) -> list[Any]:
        return self.comm.allgather(obj)

    def barrier(self) -> None:
        self.comm.Barrier()

    def abort(self, status: int) -> None:
        # MPI_Abort kills every rank at once, and mpiexec forwards each rank's output through a pipe: without a
        # moment's grace the message this rank printed just before can be lost with it (seen on a busy machine).
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        time.sleep(ABORT_GRACE_S)
        self.comm.Abort(status)

    def __repr__(self) -> str:
        return f"MPICommunicator(rank={self.rank}, size={self.size})"


Communicator = SingleProcess | MPICommunicator


def communicator(require: bool = False) -> Communicator:
    """MPI's ``COMM_WORLD`` when ``mpiexec`` started this process with more than one rank, else ``SingleProcess``.

    ``require``: the caller asked for MPI explicitly. Raises ``DistributedError`` with the install command when
    MPI is wanted (``require`` or started by ``mpiexec``) and mpi4py is missing."""
    if not (require or launched_by_mpiexec()):
        return SingleProcess()
    if mpi4py is None:
        how = "this process was started by mpiexec" if launched_by_mpiexec() else "MPI was asked for"
        raise DistributedError(f"{how}, but mpi4py is not installed: {INSTALL_HINT}")
    from mpi4py import MPI  # initialises MPI: only here, where a launcher (or the caller) wants it

    world = MPI.COMM_WORLD
    return MPICommunicator(world) if world.Get_size() > 1 else SingleProcess()


def abort_on_error(comm: Communicator) -> None:
    """Make an uncaught exception on any rank end the whole job at once (``comm.abort``) after printing it with
    the rank's number, instead of leaving the other ranks waiting forever in their next collective call."""
    if comm.size == 1:
        return

    def hook(kind: type[BaseException], err: BaseException, tb: TracebackType | None) -> None:
        text = "".join(traceback.format_exception(kind, err, tb))
        print(f"minarn: rank {comm.rank} of {comm.size} failed, ending the job:\n{text}", file=sys.stderr, flush=True)
        comm.abort(1)

    sys.excepthook = hook


def join_job() -> Communicator:
    """What a command line does first: ``communicator()``, then ``abort_on_error`` and ``limit_threads`` for it.
    Raises ``DistributedError`` as ``communicator`` does."""
    comm = communicator()
    abort_on_error(comm)  # several ranks: an uncaught error on one ends them all, naming it
    limit_threads(comm)
    return comm


def fail(comm: Communicator, message: str, status: int, stream: Any = None) -> int:
    """Report an error exit: print ``message``; with several ranks name the rank and end the whole job (the
    other ranks could be waiting for this one in a collective call); returns ``status``."""
    stream = stream or sys.stderr
    if comm.size == 1:
        print(message, file=stream, flush=True)
        return status
    print(f"rank {comm.rank} of {comm.size}: {message}", file=stream, flush=True)
    comm.abort(status)
    return status


def threads_per_rank(comm: Communicator, cores: int | None = None) -> int:
    """Default BLAS / Numba threads of a rank: the host's cores divided by the ranks on that host (at least 1)."""
    if cores is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, int(cores) // max(1, comm.host_ranks))


def limit_threads(comm: Communicator) -> int | None:
    """With several ranks, and no thread variable (``THREAD_VARIABLES``) set by the user, limit BLAS and Numba
    to ``threads_per_rank`` threads. Returns the limit set, or None."""
    if comm.size == 1 or any(v in os.environ for v in THREAD_VARIABLES):
        return None
    n = threads_per_rank(comm)
    try:
        import numba

        # numba.config sets its options at import through globals(), which mypy cannot see
        numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))  # type: ignore[attr-defined]
    except ImportError:
        pass
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # threadpoolctl comes with the mpi extra
        pass
    else:
        threadpool_limits(limits=n, user_api="blas")
    return n


# -- sharding ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Shard:
    """Rank ``rank``'s rows ``start:stop`` of a batch of ``total`` rows; ``share`` = rows / total."""

    start: int
    stop: int
    total: int

    @property
    def rows(self) -> slice:
        return slice(self.start, self.stop)

    @property
    def count(self) -> int:
        return self.stop - self.start

    @property
    def share(self) -> float:
        return self.count / self.total if self.total else 0.0


def shard(total: int, rank: int, size: int) -> Shard:
    """Contiguous blocks: the first ``total % size`` ranks get ``total // size + 1`` rows, the others one fewer."""
    base, extra = divmod(int(total), int(size))
    start = rank * base + min(rank, extra)
    return Shard(start, start + base + (rank < extra), int(total))


class RowsOf:
    """A generator that draws what ``rng`` would draw for the whole batch and keeps this rank's rows.

    ``random(shape)`` with ``shape[0]`` = the rank's row count draws ``(total, *shape[1:])`` and returns rows
    ``start:stop``; any other first dimension (a rank's one-row stand-in batch) draws the same and gives ones.
    Only the methods the training loop uses (``random``) are provided."""

    def __init__(self, rng: np.random.Generator, part: Shard) -> None:
        self.rng, self.part = rng, part

    def random(self, size: Any = None, dtype: Any = np.float64) -> np.ndarray:
        shape = (size,) if isinstance(size, int) else tuple(size)
        whole = self.rng.random((self.part.total, *shape[1:]), dtype=dtype)
        return whole[self.part.rows] if shape[0] == self.part.count else np.ones(shape, dtype=dtype)


# -- parameters, gradients, state --------------------------------------------------------------------------
def allreduce_gradients(comm: Communicator, grads: dict[str, np.ndarray], share: float) -> dict[str, np.ndarray]:
    """The global batch's gradient: sum over ranks of ``share * grads`` in one flat float32 buffer.

    Shapes: grads {name: array} -> same keys and shapes (float32). With one process: ``grads`` unchanged."""
    if comm.size == 1:
        return grads
    flat = np.concatenate([np.asarray(g, dtype=np.float32).ravel() for g in grads.values()])
    flat *= np.float32(share)
    total = comm.allreduce(flat)
    out, offset = {}, 0
    for key, g in grads.items():
        out[key] = total[offset : offset + g.size].reshape(g.shape)
        offset += g.size
    return out


def broadcast_training(comm: Communicator, model: Any, optimizer: Any, controller: Any, run: Any) -> Any:
    """Rank 0's weights (batch-norm statistics included), optimizer, controller and run state on every rank;
    returns the run state. With one process nothing changes."""
    if comm.size == 1:
        return run
    model.load_state_dict(comm.bcast(model.state_dict()))
    optimizer.load_state_dict(comm.bcast(optimizer.state_dict()))
    controller.load_state_dict(comm.bcast(controller.state_dict()))
    return comm.bcast(run)


# -- synchronized batch normalization ----------------------------------------------------------------------
class SyncBatchNorm:
    """Batch statistics and backward sums over every rank's rows: ``BatchNormalization.reducer``.

    Provides the two kernels with batch-wide sums, with the signatures of ``minarn.kernels``' ones:
    ``channel_moments(x)`` (rows, C) -> mean, biased variance over all ranks' rows (two passes, float64 sums:
    the global mean first, then the sum of squared deviations from it);
    ``batchnorm_backward(dout, x, mean, inv_std, gamma)`` -> dx, dgamma, dbeta. Rank r's ``dout`` is the gradient
    of its own loss (its rows' mean), 1 / w_r times that of the global loss; the global sums are
    S_b = sum_r w_r sum dout, S_g = sum_r w_r sum dout * x_hat, and dx = gamma * inv_std *
    (dout - (S_b / w_r) / m - x_hat * (S_g / w_r) / m), m = all ranks' rows: the one-process dx, again in
    rank r's scale. dgamma and dbeta are rank r's own sums, which ``allreduce_gradients`` weights and adds.
    ``share`` (w_r) and ``contributes`` (False for a one-row stand-in batch) are set by the loop every step.
    """

    def __init__(self, comm: Communicator) -> None:
        self.comm = comm
        self.share = 1.0
        self.contributes = True

    def channel_moments(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        C = x.shape[1]
        keep = 1.0 if self.contributes else 0.0
        first = np.concatenate([[keep * x.shape[0]], keep * x.sum(axis=0, dtype=np.float64)])
        total = self.comm.allreduce(first)
        rows, mean = total[0], total[1:] / max(total[0], 1)
        sq = keep * np.square(x - mean, dtype=np.float64).sum(axis=0)
        var = self.comm.allreduce(sq) / max(rows, 1)
        assert var.shape == (C,)
        return mean.astype(x.dtype), var.astype(x.dtype)

    def batchnorm_backward(self, dout: np.ndarray, x: np.ndarray, mean: np.ndarray, inv_std: np.ndarray,
                           gamma: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        keep = 1.0 if self.contributes else 0.0
        x_hat = (x - mean) * inv_std
        dbeta = dout.sum(axis=0, dtype=np.float64)
        dgamma = (dout * x_hat).sum(axis=0, dtype=np.float64)
        w = keep * self.share
        total = self.comm.allreduce(np.concatenate([[keep * x.shape[0]], w * dbeta, w * dgamma]))
        m, C = total[0], x.shape[1]
        if w == 0.0:
            dx = np.zeros_like(dout)
        else:
            b = (total[1 : 1 + C] / (w * m)).astype(dout.dtype)
            c = (total[1 + C :] / (w * m)).astype(dout.dtype)
            dx = ((gamma * inv_std) * (dout - b - x_hat * c)).astype(dout.dtype, copy=False)
        return dx, (keep * dgamma).astype(dout.dtype), (keep * dbeta).astype(dout.dtype)


def synchronize_batch_norm(model: Any, comm: Communicator) -> SyncBatchNorm | None:
    """Give every batch-norm layer of ``model`` one ``SyncBatchNorm`` (returned) as its ``reducer``; with one
    process nothing is installed (None): the layers keep their own kernels and results."""
    if comm.size == 1:
        return None
    sync = SyncBatchNorm(comm)
    for layer in model.layers:
        if isinstance(layer, BatchNormalization):
            layer.reducer = sync
    return sync


def main() -> int:
    """``python -m minarn.distributed``: which communicator this process gets (under mpiexec, one line per rank)."""
    try:
        comm = communicator(require=True)
    except DistributedError as e:
        print(f"python -m minarn.distributed: {e}", file=sys.stderr)
        return 2
    host = os.uname().nodename
    print(f"rank {comm.rank} of {comm.size} on {host} ({comm.host_ranks} on this host), "
          f"{threads_per_rank(comm)} threads per rank by default", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
