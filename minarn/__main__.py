"""``python -m minarn``: a one-minute tour (build ARN-CNN, print Figure 2, take a few training steps)."""

from __future__ import annotations

import time

import numpy as np

from minarn.model import ARNCNN


def main() -> int:
    model = ARNCNN(seed=0)
    model.summary()
    rng = np.random.default_rng(0)
    x = rng.random((40, 64, 64, 1), dtype=np.float32)
    y = np.eye(6, dtype=np.float32)[rng.integers(0, 6, 40)]
    for step in range(3):
        start = time.perf_counter()
        loss, grads = model.loss_and_grads(x, y)
        for key, p in model.parameters().items():
            p -= np.float32(1e-3) * grads[key]
        print(f"step {step + 1}: loss {loss:.4f} ({time.perf_counter() - start:.2f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
