"""Where the time of one step goes: each stage of ARN-CNN timed alone, forward (inference and training) and
backward, with the same threads and allocator settings as ``run.py``'s minarn children.

    python benchmarks/stage_times.py [--batch 40] [--repeats 9] [--backend numba|numpy] [--threads 2]

A stage is one entry of ``ARNCNN.stages`` (a layer, an attention module, the residual block) or the dense head;
the residual block is also split into its layers (timed the same way, on the inputs they see inside the
block). Each figure is the median over ``--repeats`` calls in milliseconds, after two warm-up calls, with every
stage fed the activations the network really gives it (random weights, random images). The sum of the stages
is printed beside the whole step (``loss_and_grads``) and the whole inference pass (``predict``): the rest is
Python overhead between the stages and the loss. Times only; nothing here is asserted anywhere.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import fairness
import workers

_MARK = "MINARN_STAGE_TIMES_CHILD"


def run_as_benchmark_child(threads: int, backend: str = "numba") -> None:
    """Re-execute this script once with the environment ``run.py`` gives its minarn children, before NumPy is
    imported: ``fairness.child_environment`` (allocator tuned, OpenBLAS unpinned), then ``workers.set_thread_env``
    (``threads`` threads in every pool, the kernel backend)."""
    if os.environ.get(_MARK):
        return
    env, _ = fairness.child_environment(os.environ, "tuned")
    os.environ.clear()
    os.environ.update(env)
    workers.set_thread_env(threads, f"minarn-{backend}")
    os.environ[_MARK] = "1"
    os.execv(sys.executable, [sys.executable, *sys.argv])


def median_ms(fn: Callable[[], object], repeats: int) -> float:
    """Median wall-clock time of ``fn()`` in ms over ``repeats`` calls, after two warm-up calls."""
    for _ in range(2):
        fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=40)
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--backend", default="numba", choices=("numba", "numpy"))
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    run_as_benchmark_child(args.threads, args.backend)

    import numpy as np

    import minarn
    from minarn.layers.residual import ResidualBlock

    minarn.kernels.use_backend(args.backend)
    model = minarn.ARNCNN(seed=0)
    rng = np.random.default_rng(0)
    x = rng.random((args.batch, *model.input_shape), dtype=np.float32)
    y = np.eye(model.num_classes, dtype=np.float32)[rng.integers(model.num_classes, size=args.batch)]

    rows: list[tuple[str, float, float, float]] = []

    def time_layer(name: str, layer: minarn.layers.Layer, h: np.ndarray) -> np.ndarray:
        first = layer is model.stages[0]  # training skips the image gradient (``input_grad=False``)
        infer = median_ms(lambda: layer.forward(h, False), args.repeats)
        out = layer.forward(h, True)
        train = median_ms(lambda: layer.forward(h, True), args.repeats)
        dout = rng.standard_normal(out.shape).astype(out.dtype)
        back = median_ms(lambda: (layer.forward(h, True),
                                  layer.backward(dout, False) if first else layer.backward(dout)),
                         args.repeats) - train
        rows.append((name, infer, train, back))
        return out

    h = x
    for stage in model.stages:
        out = time_layer(stage.name, stage, h)
        if isinstance(stage, ResidualBlock):
            inner = h
            for layer in stage.main_path:
                inner = time_layer(f"  {layer.name}", layer, inner)
            if stage.skip is not None:
                time_layer(f"  {stage.skip.name} (skip)", stage.skip, h)
        h = out

    def head_infer() -> object:
        return model.classifier.forward_linear(model.dense.forward(model.flatten.forward(h, False), False), False)

    head = median_ms(head_infer, args.repeats)
    rows.append(("dense head (flatten, dense, dropout, dense)", head, head, float("nan")))
    step = median_ms(lambda: model.loss_and_grads(x, y), args.repeats)
    infer = median_ms(lambda: model.predict(x, batch_size=args.batch), args.repeats)

    top = [r for r in rows if not r[0].startswith("  ")]
    print(f"ARN-CNN, batch {args.batch}, backend {args.backend}, {args.threads} threads; medians of "
          f"{args.repeats} calls in ms ({os.cpu_count()} CPUs seen)")
    print(f"{'stage':46s} {'forward (infer)':>16s} {'forward (train)':>16s} {'backward':>9s}")
    for name, fi, ft, b in rows:
        print(f"{name:46s} {fi:16.1f} {ft:16.1f} {b:9.1f}")
    sum_infer = sum(r[1] for r in top)
    sum_step = sum(r[2] for r in top) + sum(r[3] for r in top if r[3] == r[3])
    print(f"{'sum of stages':46s} {sum_infer:16.1f} {sum_step:26.1f} (forward + backward)")
    print(f"whole inference pass (predict): {infer:.1f} ms = {args.batch / infer * 1e3:.1f} img/s")
    print(f"whole training step (loss_and_grads): {step:.1f} ms = {args.batch / step * 1e3:.1f} img/s")


if __name__ == "__main__":
    main()
