"""Benchmark minarn (NumPy and Numba kernels) against PyTorch and Keras on the ARN-CNN, in one run; ONNX Runtime
(on minarn's ONNX export) joins the inference columns as the deployment peer.

    python benchmarks/run.py [--quick] [--repeats R] [--threads 2] [--out benchmarks/RESULTS.md]

Every framework runs in its own child process (``workers.py``) with the same thread count. The children are
started once, warmed up, and then measured in interleaved rounds (round 1: every framework, round 2: every
framework, ...), so a burst of load from something else on the machine hits all of them alike. A figure is the
median over rounds of (images in the round / seconds in the round). Ratios are against the fastest peer
framework *of the same run*: PyTorch or Keras for training and memory, PyTorch, Keras or ONNX Runtime for
inference. Peak memory comes from separate children that only train (ONNX Runtime has no training step).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
WORKER = HERE / "workers.py"
BATCH = 40
PEERS = ("torch", "keras")  # training and memory
INFER_PEERS = ("torch", "keras", "onnxruntime")  # inference: ONNX Runtime is the deployment peer
ALL = ("minarn-numba", "minarn-numpy", "torch", "keras", "onnxruntime")
DATA = Path("/work/shared/data/MedNIST.tar.gz")


def installed(framework: str) -> bool:
    import importlib.util

    need = {"minarn-numba": "numba", "baseline-numba": "numba", "torch": "torch", "keras": "tensorflow",
            "onnxruntime": "onnxruntime"}.get(framework)
    ok = need is None or importlib.util.find_spec(need) is not None
    if framework in ("keras", "onnxruntime"):  # Keras needs its backend; ONNX Runtime the export's onnx package
        ok = ok and importlib.util.find_spec({"keras": "keras", "onnxruntime": "onnx"}[framework]) is not None
    return ok


class Worker:
    def __init__(self, framework: str, threads: int, warmup: int) -> None:
        self.framework = framework
        self.proc = subprocess.Popen(
            [sys.executable, str(WORKER), framework, "--threads", str(threads), "--warmup", str(warmup)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT,
        )
        self.info = self._read()

    def _read(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"worker {self.framework} died (exit code {self.proc.wait()})")
        return json.loads(line)

    def ask(self, command: str) -> dict:
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self) -> None:
        try:
            self.proc.stdin.write("quit\n")
            self.proc.stdin.flush()
        except BrokenPipeError:
            pass
        self.proc.wait(timeout=60)


def peak_memory(framework: str, threads: int, steps: int) -> dict:
    out = subprocess.run(
        [sys.executable, str(WORKER), framework, "--threads", str(threads), "--memory", str(steps)],
        capture_output=True, text=True, cwd=ROOT, check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def data_loading() -> dict | None:
    """Full decode of the MedNIST archive and the cached reload, through minarn.data if it is there."""
    try:
        from minarn import data
    except ImportError:
        return None
    if not hasattr(data, "load_mednist") or not DATA.exists():
        return None
    result = {}
    with tempfile.TemporaryDirectory() as cache:
        t = time.perf_counter()
        ds = data.load_mednist(DATA, cache=True, cache_dir=cache, report=lambda *a: None)
        result["full decode + write cache (s)"] = time.perf_counter() - t
        result["images"] = len(ds)
        t = time.perf_counter()
        ds = data.load_mednist(DATA, cache=True, cache_dir=cache, report=lambda *a: None)
        result["cached load (s)"] = time.perf_counter() - t
    return result


def fmt(v: float, digits: int = 1) -> str:
    return f"{v:,.{digits}f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer rounds and steps, no data loading")
    ap.add_argument("--repeats", type=int, default=None, help="timed rounds per measurement (default 7, quick 3)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--frameworks", default=",".join(ALL), help="comma list from " + ",".join(ALL))
    ap.add_argument("--no-memory", action="store_true")
    ap.add_argument("--no-data", action="store_true")
    ap.add_argument("--baseline", default=None, metavar="DIR",
                    help="also run the minarn found in DIR (e.g. `git archive <rev> minarn | tar -x -C DIR`) "
                         "as baseline-numba / baseline-numpy")
    ap.add_argument("--out", default=None, help="write the Markdown report here (e.g. benchmarks/RESULTS.md)")
    args = ap.parse_args()
    rounds = args.repeats or (3 if args.quick else 7)
    steps = 2 if args.quick else 4  # training steps per round
    infer_calls = {BATCH: 2 if args.quick else 5, 256: 1 if args.quick else 2}
    wanted = [f for f in args.frameworks.split(",") if f]
    if args.baseline:
        os.environ["MINARN_BASELINE_SRC"] = str(Path(args.baseline).resolve())
        wanted += ["baseline-numba", "baseline-numpy"]
    frameworks = [f for f in wanted if installed(f)]
    skipped = [f for f in wanted if f not in frameworks]
    for f in skipped:
        print(f"skipping {f}: not installed", file=sys.stderr)

    print(f"starting workers: {', '.join(frameworks)}", file=sys.stderr)
    workers = {f: Worker(f, args.threads, warmup=2 if args.quick else 3) for f in frameworks}
    samples: dict[str, dict[str, list[float]]] = {f: {"train": [], "infer40": [], "infer256": []} for f in frameworks}
    try:
        for r in range(rounds):
            for f, w in workers.items():
                time.sleep(0.2)  # let the previous worker's spinning threads go idle
                if w.info.get("trains", True):
                    t = w.ask(f"train {steps}")["times"]
                    samples[f]["train"].append(BATCH * len(t) / sum(t))
                for batch, key in ((BATCH, "infer40"), (256, "infer256")):
                    t = w.ask(f"infer {batch} {infer_calls[batch]}")["times"]
                    samples[f][key].append(batch * len(t) / sum(t))
            print(f"round {r + 1}/{rounds}: " + ", ".join(
                f"{f} {samples[f]['train'][-1]:.1f} train" if samples[f]["train"] else
                f"{f} {samples[f]['infer40'][-1]:.1f} infer b40" for f in frameworks) + " img/s", file=sys.stderr)
        layers = None
        for f in ("minarn-numba", "minarn-numpy"):
            if f in workers:
                layers = layers or {}
                layers[f] = workers[f].ask(f"layers {max(3, rounds)}")
        versions = {f: w.info.get("versions", {}) for f, w in workers.items()}
        trainers = [f for f, w in workers.items() if w.info.get("trains", True)]
    finally:
        for w in workers.values():
            w.close()

    memory = {}
    if not args.no_memory:
        for f in trainers:
            print(f"peak memory: {f}", file=sys.stderr)
            memory[f] = peak_memory(f, args.threads, 5 if args.quick else 10)
    data_result = None if (args.no_data or args.quick) else data_loading()

    med = {f: {k: statistics.median(v) for k, v in s.items() if v} for f, s in samples.items()}
    peers = {k: [f for f in (PEERS if k == "train" else INFER_PEERS) if k in med.get(f, {})]
             for k in ("train", "infer40", "infer256")}
    best = {k: max((med[p][k] for p in peers[k]), default=None) for k in peers}
    best_by = {k: max(peers[k], key=lambda p: med[p][k]) if peers[k] else None for k in peers}
    best_mem = min((memory[p]["peak_rss_mb"] for p in PEERS if p in memory), default=None)

    lines = ["# ARN-CNN benchmark: minarn vs PyTorch vs Keras (and ONNX Runtime for inference)", ""]
    command = [Path(sys.executable).name, "benchmarks/run.py", *sys.argv[1:]]
    lines += [f"Command: `{' '.join(shlex.quote(a) for a in command)}`  ",
              f"Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}  ",
              f"Machine: {platform.machine()} {cpu_name()}, {os.cpu_count()} logical CPUs (shared with other jobs), "
              f"Python {platform.python_version()}, {platform.system()} {platform.release()}  ",
              f"Threads: {args.threads} for everyone (OMP/OpenBLAS/MKL/Numba env vars; torch.set_num_threads; "
              f"TF intra-op {args.threads}, inter-op 1)  ",
              f"Protocol: batch {BATCH}, 64x64x1 float32 inputs, 6 classes; {rounds} interleaved rounds of {steps} "
              f"training steps (forward, backward, Adamax) and {infer_calls[BATCH]}x batch-40 / {infer_calls[256]}x "
              "batch-256 inference per framework, after warm-up; figures are medians over rounds. ONNX Runtime "
              "runs minarn's ONNX export (minarn.onnx_export) and only infers.", ""]
    lines += ["| framework | train img/s | vs best peer | infer b40 img/s | vs best | infer b256 img/s | vs best | "
              "peak RSS training (MB) | vs best peer |", "|---|---|---|---|---|---|---|---|---|"]
    for f in frameworks:
        row = [f]
        for k in ("train", "infer40", "infer256"):
            if k not in med[f]:  # ONNX Runtime: no training step
                row += ["-", "-"]
                continue
            row += [fmt(med[f][k]), f"{med[f][k] / best[k]:.2f}" if best[k] else "-"]
        if f in memory:
            row += [fmt(memory[f]["peak_rss_mb"], 0), f"{memory[f]['peak_rss_mb'] / best_mem:.2f}" if best_mem else "-"]
        else:
            row += ["-", "-"]
        lines.append("| " + " | ".join(row) + " |")
    lines += ["", "Best peer: " + ", ".join(f"{k} = {best_by[k]}" for k in best_by) + ". "
              "Peak RSS is `ru_maxrss` of a child that builds the model and runs "
              f"{5 if args.quick else 10} training steps (includes the framework's own import footprint).", ""]
    lines += ["Spread (min-max over rounds, img/s):", ""]
    for f in frameworks:
        lines.append(f"- {f}: " + "; ".join(
            f"{k} {fmt(min(v))}-{fmt(max(v))}" for k, v in samples[f].items() if v))
    if memory:
        lines += ["", "Memory detail (MB): " + "; ".join(
            f"{f} at start {m['at_start_mb']:.0f}, after build {m['after_build_mb']:.0f}, peak {m['peak_rss_mb']:.0f}"
            for f, m in memory.items())]
    lines += ["", "## Versions", ""]
    for f, v in versions.items():
        lines.append(f"- {f}: " + ", ".join(f"{k} {val}" for k, val in v.items()))
    if layers:
        for f, table in layers.items():
            lines += ["", f"## Per-layer time, {f} (ms per training step of batch {BATCH}, median)", "",
                      "| layer | forward | backward |", "|---|---|---|"]
            names = list(table["forward"])
            for n in names:
                lines.append(f"| {n} | {table['forward'][n]:.2f} | {table['backward'].get(n, float('nan')):.2f} |")
            tf_, tb = sum(table["forward"].values()), sum(table["backward"].values())
            lines.append(f"| **sum of layers** | **{tf_:.1f}** | **{tb:.1f}** |")
            for k, v in table["other"].items():
                lines.append(f"| {k} | {v:.1f} | |")
            if table.get("kernels"):
                lines += ["", f"Kernel calls of one training step, {f} (the passes other than matrix products, timed "
                          "where the model calls them):", "",
                          "| kernel | calls per step | ms per step |", "|---|---|---|"]
                for k, (calls, ms) in sorted(table["kernels"].items(), key=lambda kv: -kv[1][1]):
                    lines.append(f"| {k} | {calls:.0f} | {ms:.1f} |")
                total = sum(ms for _, ms in table["kernels"].values())
                lines.append(f"| **all these kernels** | | **{total:.1f}** |")
    if data_result is not None:
        lines += ["", "## Data loading (minarn.data.load_mednist on MedNIST.tar.gz)", ""]
        lines += [f"- {k}: {v:.2f}" if isinstance(v, float) else f"- {k}: {v}" for k, v in data_result.items()]
    elif not (args.no_data or args.quick):
        lines += ["", "Data loading: skipped (minarn.data.load_mednist or the archive is not available)."]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        Path(args.out).write_text(text)


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


if __name__ == "__main__":
    main()
