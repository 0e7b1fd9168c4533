"""Two rules for which layers run Winograd's algorithm, compared in one process, round by round.

    python benchmarks/winograd_rule.py [--batch 40] [--rounds 12] [--old 64,256,1] [--new 32,100,2]

A rule is ``WINOGRAD_MIN_CHANNELS,WINOGRAD_MIN_OUTPUT,WINOGRAD_MAX_WIDENING`` of ``minarn.layers.conv`` (the
defaults: conv2d_6 only, as before session 11, against the current rule). Every round times two training steps
(``loss_and_grads``) and two inference passes (``predict``) under each rule, in alternating order, on the same
model and batch; the figure that matters is the median over rounds of the paired ratio new / old, which a burst of
load from elsewhere on a shared machine hits alike. Runs in a child with the benchmark's settings (allocator
tuned, OpenBLAS unpinned; ``stage_times.run_as_benchmark_child``). Times only; nothing is asserted anywhere.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from stage_times import run_as_benchmark_child


def parse_rule(text: str) -> tuple[int, int, int]:
    channels, output, widening = (int(v) for v in text.split(","))
    return channels, output, widening


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=40)
    ap.add_argument("--rounds", type=int, default=12)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--old", type=parse_rule, default=(64, 256, 1))
    ap.add_argument("--new", type=parse_rule, default=(32, 100, 2))
    args = ap.parse_args()
    run_as_benchmark_child(args.threads)

    import numpy as np

    import minarn
    from minarn.layers import conv

    model = minarn.ARNCNN(seed=0)
    rng = np.random.default_rng(0)
    x = rng.random((args.batch, *model.input_shape), dtype=np.float32)
    y = np.eye(model.num_classes, dtype=np.float32)[rng.integers(model.num_classes, size=args.batch)]
    rules = {"old": args.old, "new": args.new}

    def use(rule: str) -> None:
        conv.WINOGRAD_MIN_CHANNELS, conv.WINOGRAD_MIN_OUTPUT, conv.WINOGRAD_MAX_WIDENING = rules[rule]

    def seconds(fn: object, calls: int) -> float:
        t = time.perf_counter()
        for _ in range(calls):
            fn()  # type: ignore[operator]
        return (time.perf_counter() - t) / calls

    times: dict[tuple[str, str], list[float]] = {(r, w): [] for r in rules for w in ("train", "infer")}
    for rule in rules:  # warm-up: compile, allocate the workspaces
        use(rule)
        model.loss_and_grads(x, y)
        model.predict(x, batch_size=args.batch)
    for round_ in range(args.rounds):
        for rule in ("old", "new") if round_ % 2 else ("new", "old"):
            use(rule)
            times[(rule, "train")].append(seconds(lambda: model.loss_and_grads(x, y), 2))
            times[(rule, "infer")].append(seconds(lambda: model.predict(x, batch_size=args.batch), 2))
    print(f"batch {args.batch}, {args.rounds} rounds, old rule {args.old}, new rule {args.new}")
    for what in ("train", "infer"):
        old, new = times[("old", what)], times[("new", what)]
        ratios = [n / o for n, o in zip(new, old, strict=True)]
        faster = sum(n < o for n, o in zip(new, old, strict=True))
        print(f"{what}: old {statistics.median(old) * 1e3:.1f} ms, new {statistics.median(new) * 1e3:.1f} ms, "
              f"median paired ratio new / old {statistics.median(ratios):.3f} (new faster in {faster} of "
              f"{len(ratios)} rounds)")


if __name__ == "__main__":
    main()
