"""Profile minarn's training step with cProfile: where the Python-level time goes, step by step.

    python benchmarks/profile_step.py [--steps 5] [--backend numba|numpy] [--top 25]

Prints cProfile's table sorted by ``tottime`` for ``--steps`` training steps (forward, loss, backward, Adamax) at
batch 40 after three warm-up steps, then the time spent inside the matrix products: a NumPy ``@`` or
``np.matmul`` is not a Python call, so it shows up as ``tottime`` of the function that wrote it
(``Conv2D.forward`` / ``backward_linear``, ``winograd.forward`` / ``backward``, ``Dense``).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import minarn  # before NumPy, as `python -m minarn.train` does

# isort: split
import numpy as np

# Functions whose own time (tottime) is their matrix products: they do nothing else heavy in Python.
PRODUCT_HOSTS = (("conv.py", "forward"), ("conv.py", "backward_linear"), ("winograd.py", "forward"),
                 ("winograd.py", "backward"), ("dense.py", "forward_linear"), ("dense.py", "backward_linear"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--backend", default=None, help="numba or numpy (default: minarn's choice)")
    ap.add_argument("--top", type=int, default=25)
    args = ap.parse_args()
    if args.backend:
        minarn.kernels.use_backend(args.backend)
    rng = np.random.default_rng(0)
    x = rng.random((40, 64, 64, 1), dtype=np.float32)
    y = np.eye(6, dtype=np.float32)[rng.integers(0, 6, 40)]
    model, opt = minarn.ARNCNN(seed=0), minarn.optim.Adamax()

    def step() -> None:
        _, grads = model.loss_and_grads(x, y)
        opt.apply(model.parameters(), grads)

    for _ in range(3):
        step()
    profile = cProfile.Profile()
    profile.enable()
    for _ in range(args.steps):
        step()
    profile.disable()
    text = io.StringIO()
    stats = pstats.Stats(profile, stream=text)
    stats.sort_stats("tottime").print_stats(args.top)
    print(text.getvalue())
    total = stats.total_tt
    products = sum(v[2] for (path, _, name), v in stats.stats.items()
                   if any(path.endswith(f) and name == n for f, n in PRODUCT_HOSTS))
    print(f"backend {minarn.kernels.get_backend().NAME}: {1000 * total / args.steps:.1f} ms per step, of which "
          f"{1000 * products / args.steps:.1f} ms inside the matrix products (tottime of {len(PRODUCT_HOSTS)} "
          "host functions)")


if __name__ == "__main__":
    main()
