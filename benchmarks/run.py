"""Benchmark minarn (NumPy and Numba kernels) against PyTorch and Keras on the ARN-CNN, in one run; ONNX Runtime
(on minarn's ONNX export) joins the inference columns as the deployment peer.

    python benchmarks/run.py [--quick] [--repeats R] [--threads 2] [--allocator tuned|default|both] [--out FILE]

Every framework runs in its own child process (``workers.py``) with the same thread count and its best known
CPU setting (``fairness.py``: glibc's allocator tuned, OpenBLAS unpinned; PyTorch with its tuning guide's
OpenMP binding), and the report says which settings each child really ran with. The children are started once,
warmed up, and then measured in interleaved rounds (round 1: every framework, round 2: every framework, ...), so
a burst of load from something else on the machine hits all of them alike. A figure is the median over rounds of
(images in the round / seconds in the round), training and inference at batch 40 and 256. Ratios are against
the fastest peer framework *of the same run*: PyTorch or Keras for training and memory, PyTorch, Keras or ONNX
Runtime for inference. Achieved GFLOP/s is the images/s times the FLOPs of the network's products per image
(``fairness.step_flops``), set against NumPy's measured float32 matrix-product peak on the same threads. Peak
memory comes from separate children that only train (ONNX Runtime has no training step).
"""

from __future__ import annotations

import argparse
import importlib.util
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

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root, as the workers use it

# Only pure helpers here: no NumPy or minarn in this process, whose RSS a child's ru_maxrss would inherit.
from benchmarks import fairness

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
WORKER = HERE / "workers.py"
BATCH = 40
BATCHES = (40, 256)
KEYS = ("train40", "train256", "infer40", "infer256")
TITLES = {"train40": "train b40", "train256": "train b256", "infer40": "infer b40", "infer256": "infer b256"}
PEERS = ("torch", "keras")  # training and memory
INFER_PEERS = ("torch", "keras", "onnxruntime")  # inference: ONNX Runtime is the deployment peer
ALL = ("minarn-numba", "minarn-numpy", "torch", "keras", "onnxruntime")
DATA = Path("/work/shared/data/MedNIST.tar.gz")
DEFAULT_MALLOC = "@default-malloc"
SGEMM = "2048^3"  # workers.SGEMM_SIZE  # label suffix of a framework run with glibc's allocator as shipped


def installed(framework: str) -> bool:
    need = {"minarn-numba": "numba", "baseline-numba": "numba", "torch": "torch", "keras": "tensorflow",
            "onnxruntime": "onnxruntime"}.get(framework)
    ok = need is None or importlib.util.find_spec(need) is not None
    if framework in ("keras", "onnxruntime"):  # Keras needs its backend; ONNX Runtime the export's onnx package
        ok = ok and importlib.util.find_spec({"keras": "keras", "onnxruntime": "onnx"}[framework]) is not None
    return ok


def framework_of(label: str) -> str:
    """``torch@default-malloc`` -> ``torch``."""
    return label.split("@", 1)[0]


class Worker:
    def __init__(self, label: str, env: dict[str, str], threads: int, warmup: int, openmp: str) -> None:
        self.framework = label
        self.proc = subprocess.Popen(
            [sys.executable, str(WORKER), framework_of(label), "--threads", str(threads), "--warmup", str(warmup),
             "--openmp", openmp],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT, env=env,
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


def child_run(args: list[str], env: dict[str, str]) -> dict:
    """Run ``workers.py ARGS`` to completion; its last stdout line, parsed."""
    out = subprocess.run([sys.executable, str(WORKER), *args], capture_output=True, text=True, cwd=ROOT,
                         env=env, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def peak_memory(label: str, env: dict[str, str], threads: int, steps: int, batch: int, openmp: str) -> dict:
    return child_run([framework_of(label), "--threads", str(threads), "--memory", str(steps), "--batch", str(batch),
                      "--openmp", openmp], env)


def sgemm_peak(env: dict[str, str], threads: int, repeats: int) -> dict:
    return child_run(["sgemm", "--threads", str(threads), "--repeats", str(repeats)], env)


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


def blas_summary(pools: list[dict]) -> str:
    """'openblas 0.3.30 Zen (2 threads), openmp libgomp (2 threads)' from threadpoolctl's entries."""
    parts = []
    for p in pools:
        core = f" core {p['architecture']}" if p.get("architecture") else ""
        version = f" {p['version']}" if p.get("version") else ""
        parts.append(f"{p.get('internal_api', '?')}{version}{core} ({p.get('num_threads', '?')} threads, "
                     f"{p.get('library', '?')})")
    return ", ".join(parts) or "threadpoolctl not installed"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer rounds and steps, no data loading")
    ap.add_argument("--repeats", type=int, default=None, help="timed rounds per measurement (default 7, quick 3)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--frameworks", default=",".join(ALL), help="comma list from " + ",".join(ALL))
    ap.add_argument("--allocator", choices=("tuned", "default", "both"), default="tuned",
                    help="glibc malloc in the children: tuned (GLIBC_TUNABLES, see fairness.py), as shipped, or "
                         f"both (every framework twice, the second labelled {DEFAULT_MALLOC})")
    ap.add_argument("--torch-openmp", choices=("guide", "default"), default="guide",
                    help="PyTorch's OpenMP binding: its tuning guide's (OMP_SCHEDULE, OMP_PROC_BIND, "
                         "GOMP_CPU_AFFINITY) or none")
    ap.add_argument("--no-memory", action="store_true")
    ap.add_argument("--no-data", action="store_true")
    ap.add_argument("--baseline", default=None, metavar="DIR",
                    help="also run the minarn found in DIR (e.g. `git archive <rev> minarn | tar -x -C DIR`) "
                         "as baseline-numba / baseline-numpy")
    ap.add_argument("--out", default=None, help="write the Markdown report here (e.g. benchmarks/RESULTS.md)")
    args = ap.parse_args()
    rounds = args.repeats or (3 if args.quick else 7)
    calls = {"train40": 2 if args.quick else 4, "train256": 1,
             "infer40": 2 if args.quick else 5, "infer256": 1 if args.quick else 2}
    memory_steps = 3 if args.quick else 10
    wanted = [f for f in args.frameworks.split(",") if f]
    if args.baseline:
        os.environ["MINARN_BASELINE_SRC"] = str(Path(args.baseline).resolve())
        wanted += ["baseline-numba", "baseline-numpy"]
    frameworks = [f for f in wanted if installed(f)]
    for f in wanted:
        if f not in frameworks:
            print(f"skipping {f}: not installed", file=sys.stderr)
    allocators = ("tuned", "default") if args.allocator == "both" else (args.allocator,)
    envs, env_changes = {}, {}
    for a in allocators:
        envs[a], env_changes[a] = fairness.child_environment(os.environ, a)
    labels = {(f if a == allocators[0] else f + DEFAULT_MALLOC): a for a in allocators for f in frameworks}
    cpu = fairness.cpu_info(Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else "")
    forward_flops = child_run(["flops"], envs[allocators[0]])["forward_per_image"]
    flops = {k: fairness.step_flops(forward_flops, int(k[5:]), k.startswith("train")) for k in KEYS}
    openmp = {label: args.torch_openmp for label in labels}
    sgemm_repeats = 3 if args.quick else 5

    print("measuring the sgemm peak", file=sys.stderr)
    peaks = [sgemm_peak(envs[allocators[0]], args.threads, sgemm_repeats)]
    print(f"starting workers: {', '.join(labels)}", file=sys.stderr)
    workers = {label: Worker(label, envs[a], args.threads, 2 if args.quick else 3, openmp[label])
               for label, a in labels.items()}
    samples: dict[str, dict[str, list[float]]] = {f: {k: [] for k in KEYS} for f in labels}
    try:
        for r in range(rounds):
            for f, w in workers.items():
                for key in KEYS:
                    if key.startswith("train") and not w.info.get("trains", True):
                        continue
                    time.sleep(0.2)  # let the previous worker's spinning threads go idle
                    batch = int(key[5:])
                    t = w.ask(f"{key[:5]} {batch} {calls[key]}")["times"]
                    samples[f][key].append(batch * len(t) / sum(t))
            print(f"round {r + 1}/{rounds}: " + ", ".join(
                f"{f} {samples[f]['train40'][-1]:.1f} train" if samples[f]["train40"] else
                f"{f} {samples[f]['infer40'][-1]:.1f} infer b40" for f in labels) + " img/s", file=sys.stderr)
        layers = None
        for f in ("minarn-numba", "minarn-numpy"):
            if f in workers:
                layers = layers or {}
                layers[f] = workers[f].ask(f"layers {max(3, rounds)}")
        infos = {f: w.info for f, w in workers.items()}
        trainers = [f for f, w in workers.items() if w.info.get("trains", True)]
    finally:
        for w in workers.values():
            w.close()
    peaks.append(sgemm_peak(envs[allocators[0]], args.threads, sgemm_repeats))
    peak = max(p["gflops"] for p in peaks)

    memory: dict[str, dict[int, dict]] = {}
    if not args.no_memory:
        for f in trainers:
            for batch in BATCHES:
                print(f"peak memory: {f}, batch {batch}", file=sys.stderr)
                memory.setdefault(f, {})[batch] = peak_memory(f, envs[labels[f]], args.threads, memory_steps,
                                                              batch, openmp[f])
    data_result = None if (args.no_data or args.quick) else data_loading()

    med = {f: {k: statistics.median(v) for k, v in s.items() if v} for f, s in samples.items()}
    peers = {k: [f for f in labels if framework_of(f) in (PEERS if k.startswith("train") else INFER_PEERS)
                 and k in med[f]] for k in KEYS}
    best = {k: max((med[p][k] for p in peers[k]), default=None) for k in KEYS}
    best_by = {k: max(peers[k], key=lambda p: med[p][k]) if peers[k] else None for k in KEYS}
    mem_peers = [f for f in memory if framework_of(f) in PEERS]
    best_mem = {b: min((memory[p][b]["peak_rss_mb"] for p in mem_peers), default=None) for b in BATCHES}

    command = " ".join(shlex.quote(a) for a in [Path(sys.executable).name, "benchmarks/run.py", *sys.argv[1:]])
    flags = ", ".join(f"{f} {'yes' if on else 'no'}" for f, on in cpu["flags"].items())
    lines = ["# ARN-CNN benchmark: minarn vs PyTorch vs Keras (and ONNX Runtime for inference)", ""]
    lines += [f"Command: `{command}`  ",
              f"Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}  ",
              f"Machine: {platform.machine()} {cpu['model']} ({flags}), {os.cpu_count()} logical CPUs "
              f"({len(os.sched_getaffinity(0))} usable; shared with other jobs unless said otherwise), "
              f"Python {platform.python_version()}, {platform.system()} {platform.release()}, "
              f"glibc {platform.libc_ver()[1] or '?'}  ",
              f"Protocol: {rounds} interleaved rounds, each asking every framework for {calls['train40']} training "
              f"steps at batch 40 and {calls['train256']} at 256 (forward, backward, Adamax), {calls['infer40']} "
              f"inference calls at batch 40 and {calls['infer256']} at 256, after warm-up; 64x64x1 float32 "
              "inputs, 6 classes; figures are medians over rounds. ONNX Runtime runs minarn's ONNX export "
              "(minarn.onnx_export) and only infers.", ""]
    lines += ["## Settings", ""]
    for a in allocators:
        what = (f"tuned, `GLIBC_TUNABLES={fairness.TUNED_GLIBC}`" if a == "tuned" else "glibc's as shipped")
        which = f" (labels ending in `{DEFAULT_MALLOC}`)" if a != allocators[0] else ""
        changed = "; ".join(f"`{v}` {c}" for v, c in env_changes[a].items()) or "nothing to change"
        lines.append(f"- Allocator {what}{which}. Child environment: {changed}.")
    pinned = ", ".join(f"{v}={os.environ[v]}" for v in fairness.OPENBLAS_PINNING if v in os.environ) or "neither"
    binding = ("its tuning guide's (`OMP_SCHEDULE=STATIC`, `OMP_PROC_BIND=CLOSE`, `GOMP_CPU_AFFINITY`)"
               if args.torch_openmp == "guide" else "none (`--torch-openmp default`)")
    lines += [
        f"- OpenBLAS unpinned in every child: `{'`, `'.join(fairness.OPENBLAS_PINNING)}` removed (in this "
        f"parent: {pinned}). Tests and CI keep theirs.",
        f"- Threads: {args.threads} for everyone (OMP/OpenBLAS/MKL/Numba env vars; torch.set_num_threads; TF "
        f"intra-op {args.threads}, inter-op 1; ONNX Runtime intra-op {args.threads}, inter-op 1).",
        "- PyTorch: eager, channels-last, inference under `torch.inference_mode()`, gradients set to None, anomaly "
        f"detection off, oneDNN (mkldnn) on; OpenMP binding {binding}. Not used, because they change the code or "
        "leave eager mode: `torch.compile`, TorchScript with oneDNN Graph fusion; jemalloc / TCMalloc "
        "(`LD_PRELOAD`) are not installed here, glibc's tunables stand in for them.",
        "- Keras / TensorFlow: compiled `train_on_batch` step (no XLA on CPU), `TF_ENABLE_ONEDNN_OPTS=1`.",
        f"- Measured sgemm peak: **{fmt(peak)} GFLOP/s** (NumPy {SGEMM} float32 matrix product, best of "
        f"{sgemm_repeats}, {args.threads} threads; before the rounds {fmt(peaks[0]['gflops'])}, after "
        f"{fmt(peaks[1]['gflops'])}; {blas_summary(peaks[0]['threadpools'])}).",
        f"- Work counted: {forward_flops / 1e9:.3f} GFLOP of convolution and dense products per image forward, 3x "
        "that per training image (backward: input and weight gradients); a training step at batch 40 is "
        f"{flops['train40'] / 1e9:.1f} GFLOP.",
        "",
    ]
    lines += ["What each child ran with (its own environment and threadpoolctl's view of its thread pools):", "",
              "| framework | environment | thread pools (BLAS core in use) |", "|---|---|---|"]
    for f, info in infos.items():
        env = ", ".join(f"{k}={v}" for k, v in info.get("environment", {}).items() if k != "OMP_NUM_THREADS")
        lines.append(f"| {f} | {env or '-'} | {blas_summary(info.get('threadpools', []))} |")
    lines += ["", "## Throughput (images/s)", "",
              "| framework | " + " | ".join(f"{TITLES[k]} | vs best" for k in KEYS) + " |",
              "|---|" + "---|---|" * len(KEYS)]
    for f in labels:
        row = [f]
        for k in KEYS:
            row += ["-", "-"] if k not in med[f] else [fmt(med[f][k]), f"{med[f][k] / best[k]:.2f}" if best[k] else "-"]
        lines.append("| " + " | ".join(row) + " |")
    lines += ["", "Best peer: " + ", ".join(f"{TITLES[k]} = {best_by[k]}" for k in KEYS) + ".", ""]
    lines += ["## Achieved GFLOP/s and fraction of the sgemm peak", "",
              "| framework | " + " | ".join(f"{TITLES[k]} GFLOP/s | of peak" for k in KEYS) + " |",
              "|---|" + "---|---|" * len(KEYS)]
    for f in labels:
        row = [f]
        for k in KEYS:
            rate = med[f][k] * flops[k] / int(k[5:]) / 1e9 if k in med[f] else None
            row += ["-", "-"] if rate is None else [fmt(rate), f"{rate / peak:.0%}"]
        lines.append("| " + " | ".join(row) + " |")
    if memory:
        lines += ["", f"## Peak memory (MB, `ru_maxrss` of a child that builds the model and runs {memory_steps} "
                  "training steps; includes the framework's import footprint)", "",
                  "| framework | " + " | ".join(f"train b{b} | vs best peer" for b in BATCHES) + " | detail |",
                  "|---|" + "---|---|" * len(BATCHES) + "---|"]
        for f, by_batch in memory.items():
            row = [f]
            for b in BATCHES:
                mb = by_batch[b]["peak_rss_mb"]
                row += [fmt(mb, 0), f"{mb / best_mem[b]:.2f}" if best_mem[b] else "-"]
            m = by_batch[BATCH]
            row.append(f"at start {m['at_start_mb']:.0f}, after build {m['after_build_mb']:.0f}")
            lines.append("| " + " | ".join(row) + " |")
    lines += ["", "Spread (min-max over rounds, img/s):", ""]
    for f in labels:
        lines.append(f"- {f}: " + "; ".join(
            f"{TITLES[k]} {fmt(min(v))}-{fmt(max(v))}" for k, v in samples[f].items() if v))
    lines += ["", "## Versions", ""]
    for f, info in infos.items():
        lines.append(f"- {f}: " + ", ".join(f"{k} {val}" for k, val in info.get("versions", {}).items()))
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
                for k, (n_calls, ms) in sorted(table["kernels"].items(), key=lambda kv: -kv[1][1]):
                    lines.append(f"| {k} | {n_calls:.0f} | {ms:.1f} |")
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


if __name__ == "__main__":
    main()
