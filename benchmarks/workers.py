"""One benchmark worker process per framework: the same ARN-CNN, one training step, one inference call.

``onnxruntime`` runs minarn's ONNX export of the network (``minarn.onnx_export``) in ONNX Runtime: inference
only, the deployment peer (it has no training step; its ready line says ``"trains": false``).

``run.py`` starts this file as a child process (``python benchmarks/workers.py FRAMEWORK``), so every
framework gets its own interpreter, its own thread pools and its own peak-memory counter. Thread counts are
fixed *before* any framework is imported (environment variables for OpenBLAS/OpenMP/Numba, then
``torch.set_num_threads`` / TF's intra-op setting).

Protocol (one line in, one JSON line out, on stdin/stdout):
    train B K        -> {"times": [...]}  K training steps (forward, backward, Adamax) on B images, seconds each
    infer B K        -> {"times": [...]}  K inference calls on a batch of B images
    layers K         -> {"forward": {...}, "backward": {...}, "kernels": {...}, "other": {...}}  (minarn only; ms)
    quit
The ready line carries ``versions``, ``threadpools`` (threadpoolctl's view: BLAS library, its version, threads
and the OpenBLAS core it runs, ``architecture``) and ``environment`` (the settings this process was started
with: allocator, OpenBLAS pinning, OpenMP binding), so the report shows what each framework really ran with.
``--memory N --batch B`` instead runs N training steps on B images and prints the peak resident set size
(``ru_maxrss``). ``python workers.py sgemm`` times NumPy's 2048^3 float32 matrix product (best of
``--repeats``), the machine's measured peak for the report; ``python workers.py flops`` prints the FLOPs of the
network's products per image (``benchmarks/fairness.py``).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time

FRAMEWORKS = ("minarn-numba", "minarn-numpy", "torch", "keras", "onnxruntime", "baseline-numba", "baseline-numpy")
BATCHES = (40, 256)  # training and inference are measured at both
# baseline-*: minarn imported from the directory in $MINARN_BASELINE_SRC (e.g. an unpacked older commit),
# to put a before/after comparison into one run.
BATCH = 40
SHAPE = (64, 64, 1)
CLASSES = 6
SGEMM_SIZE = 2048
# what the report shows of each child's environment (set by run.py / fairness.child_environment, or not)
REPORTED_ENV = ("GLIBC_TUNABLES", "OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "OMP_NUM_THREADS", "OMP_SCHEDULE",
                "OMP_PROC_BIND", "GOMP_CPU_AFFINITY", "TF_ENABLE_ONEDNN_OPTS", "OPENBLAS_THREAD_TIMEOUT")


def set_thread_env(threads: int, framework: str, openmp: str = "guide") -> None:
    """Fix every thread pool to ``threads`` before the libraries are imported, and give each framework its
    own recommended settings: PyTorch (``openmp="guide"``) the GNU OpenMP binding of its CPU tuning guide
    (``OMP_SCHEDULE=STATIC``, ``OMP_PROC_BIND=CLOSE``, ``GOMP_CPU_AFFINITY`` = the first ``threads`` CPUs this
    process may use); TensorFlow its oneDNN kernels (``TF_ENABLE_ONEDNN_OPTS=1``, its default on x86 Linux)."""
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
        os.environ[var] = str(threads)
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    if framework.startswith(("minarn-", "baseline-")):
        os.environ["MINARN_BACKEND"] = framework.split("-", 1)[1]
    if framework == "torch" and openmp == "guide":
        cpus = sorted(os.sched_getaffinity(0))[:threads]
        os.environ.update(OMP_SCHEDULE="STATIC", OMP_PROC_BIND="CLOSE",
                          GOMP_CPU_AFFINITY=" ".join(str(c) for c in cpus))
    if framework == "keras":
        os.environ["TF_ENABLE_ONEDNN_OPTS"] = "1"


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: kilobytes


def threadpools() -> list[dict]:
    """threadpoolctl's description of the thread pools loaded into this process (BLAS, OpenMP): library,
    version, threads and, for OpenBLAS, the core type it runs (``architecture``); [] without threadpoolctl."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return []
    keys = ("user_api", "internal_api", "version", "num_threads", "architecture", "threading_layer")
    return [{k: i[k] for k in keys if i.get(k) is not None} | {"library": os.path.basename(i.get("filepath", ""))}
            for i in threadpool_info()]


def labels(np, batch: int):
    """Fixed-seed one-hot labels for ``batch`` images (the same for every framework)."""
    return np.eye(CLASSES, dtype=np.float32)[np.random.default_rng(1).integers(0, CLASSES, batch)]


def sgemm_peak(repeats: int) -> dict:
    """Best GFLOP/s of NumPy's float32 ``SGEMM_SIZE``^3 product over ``repeats`` calls (after one warm-up)."""
    import numpy as np

    rng = np.random.default_rng(0)
    a, b = (rng.random((SGEMM_SIZE, SGEMM_SIZE), dtype=np.float32) for _ in range(2))
    out = a @ b
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        np.matmul(a, b, out=out)
        times.append(time.perf_counter() - t)
    return {"gflops": 2.0 * SGEMM_SIZE ** 3 / min(times) / 1e9, "times": times, "numpy": np.__version__,
            "threadpools": threadpools()}


# ----------------------------------------------------------------------------------------------------------
# minarn


class Minarn:
    def __init__(self, threads: int) -> None:
        import minarn  # noqa: F401 - before NumPy, as `python -m minarn.train` does (sets OPENBLAS_THREAD_TIMEOUT)
        # isort: split
        import numpy as np

        from minarn import kernels
        from minarn.model import ARNCNN
        from minarn.optim import Adamax

        self.np = np
        self.backend = kernels.get_backend().NAME
        self.model = ARNCNN(seed=0)
        self.opt = Adamax()
        rng = np.random.default_rng(0)
        self.x = {b: rng.random((b, *SHAPE), dtype=np.float32) for b in BATCHES}
        self.y = {b: labels(np, b) for b in BATCHES}
        self.versions = {"numpy": np.__version__, "backend": self.backend}
        try:
            import numba

            self.versions["numba"] = numba.__version__
        except ImportError:
            pass

    def train_step(self, batch: int = BATCH) -> None:
        _, grads = self.model.loss_and_grads(self.x[batch], self.y[batch])
        self.opt.apply(self.model.parameters(), grads)

    def infer(self, batch: int) -> None:
        self.model.predict(self.x[batch])  # streams the batch through in cache-sized chunks

    def layers(self, repeats: int) -> dict:
        """Per-layer forward/backward wall time (ms, median over ``repeats`` training steps)."""
        np = self.np
        fwd: dict[str, list[float]] = {}
        bwd: dict[str, list[float]] = {}
        wrapped = []

        def wrap(layer, method, table):
            original = getattr(layer, method)

            def timed(*args, **kwargs):
                t = time.perf_counter()
                out = original(*args, **kwargs)
                table.setdefault(layer.name, []).append(time.perf_counter() - t)
                return out

            setattr(layer, method, timed)
            wrapped.append((layer, method))

        for layer in self.model.layers:
            if layer is self.model.classifier:  # the model calls its *_linear methods
                wrap(layer, "forward_linear", fwd)
                wrap(layer, "backward_linear", bwd)
            else:
                wrap(layer, "forward", fwd)
                wrap(layer, "backward", bwd)
        m = self.model
        for att in [*m.stem_attention, m.block.attention, *m.mid_attention, *m.deep_attention]:
            if att is not None:  # the fused attention backward calls conv_b.backward_linear directly
                wrap(att.conv_b, "backward_linear", bwd)
        step, opt = [], []
        for _ in range(repeats):
            t0 = time.perf_counter()
            _, grads = self.model.loss_and_grads(self.x[BATCH], self.y[BATCH])
            t1 = time.perf_counter()
            self.opt.apply(self.model.parameters(), grads)
            t2 = time.perf_counter()
            step.append(t1 - t0)
            opt.append(t2 - t1)
        for layer, method in wrapped:
            delattr(layer, method)  # back to the class method
        ms = lambda v: 1000.0 * float(np.median(v))
        forward = {k: ms(v) for k, v in fwd.items()}
        backward = {k: ms(bwd.get(k, [0.0])) for k in fwd}  # 0: fused into the attention module's backward
        products_ms, gflop, count, forward_products_ms = self.products(repeats)
        return {"forward": forward, "backward": backward, "kernels": self.kernel_times(repeats),
                "other": {"forward+backward (whole step, no optimizer)": ms(step), "Adamax apply": ms(opt),
                          f"matrix products alone ({count} products, {gflop:.1f} GFLOP, timed one by one)":
                              products_ms,
                          "rate of the matrix products alone (GFLOP/s)": gflop / products_ms * 1000.0,
                          "matrix products of the forward pass alone (the floor under inference at batch 40)":
                              forward_products_ms}}

    def kernel_times(self, repeats: int) -> dict[str, list[float]]:
        """{backend kernel: [calls per step, ms per step]} over ``repeats`` training steps: the element-wise,
        im2col, pooling and Winograd passes, timed where the model calls them."""
        from minarn import kernels

        K = kernels.get_backend()
        names = list(kernels.KERNELS)  # those a step does not call are left out of the table
        seen: dict[str, list[float]] = {n: [] for n in names}

        def timed(name, original):
            def run(*args, **kwargs):
                t = time.perf_counter()
                out = original(*args, **kwargs)
                seen[name].append(time.perf_counter() - t)
                return out
            return run

        originals = {n: getattr(K, n) for n in names}
        for n in names:
            setattr(K, n, timed(n, originals[n]))
        try:
            for _ in range(repeats):
                self.train_step()
        finally:
            for n in names:
                setattr(K, n, originals[n])
        return {n: [len(v) / repeats, 1000.0 * sum(v) / repeats] for n, v in seen.items() if v}

    def product_shapes(self) -> list[tuple[tuple[int, int], tuple[int, int], bool, int, bool]]:
        """(a shape, b shape, a transposed, how many, in the forward pass) of every matrix product of one
        training step, read from
        the layers' caches. im2col layers: a forward product, a weight-gradient product (long reduction, small
        output) and, except for the first layer, an input-gradient product; Winograd layers: s^2 of each (36 for
        F(4x4, 3x3)); short-patch layers (the first one) run direct loops and have none."""
        from minarn import kernels
        from minarn.kernels import winograd
        from minarn.layers import Conv2D, Dense, conv

        K = kernels.get_backend()
        self.model.loss_and_grads(self.x[BATCH], self.y[BATCH])
        shapes = []
        for layer in self.model.layers:
            if not isinstance(layer, (Conv2D, Dense)):
                continue
            x = layer._cache[0]
            if isinstance(layer, Dense):
                m, k, f = x.shape[0], x.shape[1], layer.params["kernel"].shape[1]
            elif layer._is_shallow() and layer.fused_kind is not None:
                continue
            else:
                n, h, w, c = x.shape  # forward and gradients each by im2col or Winograd (Conv2D._is_winograd)
                _, oh, ow, f = layer.compute_output_shape(x.shape)
                tile, k = conv.WINOGRAD_VARIANT.m, conv.WINOGRAD_VARIANT.s ** 2
                t = n * winograd.tiles(oh, ow, tile)[0] * winograd.tiles(oh, ow, tile)[1]
                t_in = n * winograd.tiles(h, w, tile)[0] * winograd.tiles(h, w, tile)[1]  # dx: a convolution of dz
                m, kk = n * oh * ow, layer.kernel_size[0] * layer.kernel_size[1] * layer.in_channels
                if layer._is_winograd(K, x.shape):
                    shapes.append(((t, c), (c, f), False, k, True))
                else:
                    shapes.append(((m, kk), (kk, f), False, 1, True))
                if layer._is_winograd(K, x.shape, backward=True):
                    shapes += [((c, t), (t, f), True, k, False), ((t_in, f), (f, c), False, k, False)]
                    continue
                shapes.append(((kk, m), (m, f), True, 1, False))
                if layer is not self.model.conv_in:
                    shapes.append(((m, f), (f, kk), False, 1, False))
                continue
            shapes += [((m, k), (k, f), False, 1, True), ((k, m), (m, f), True, 1, False),
                       ((m, f), (f, k), False, 1, False)]
        return shapes

    def products(self, repeats: int) -> tuple[float, float, int, float]:
        """Time every matrix product of a training step on its own (same shapes, float32, same layouts):
        the floor that BLAS puts under a step. Returns (ms, GFLOP, number of products, ms of the forward ones:
        the floor under inference at batch 40)."""
        np = self.np
        rng = np.random.default_rng(0)
        total, flop, count, forward = 0.0, 0.0, 0, 0.0
        for a_shape, b_shape, transposed, times_used, in_forward in self.product_shapes():
            a = rng.random(a_shape[::-1] if transposed else a_shape, dtype=np.float32)
            a = a.T if transposed else a
            b = rng.random(b_shape, dtype=np.float32)
            a @ b  # warm-up
            times = []
            for _ in range(repeats):
                t = time.perf_counter()
                a @ b
                times.append(time.perf_counter() - t)
            total += times_used * float(np.median(times))
            forward += times_used * float(np.median(times)) if in_forward else 0.0
            flop += times_used * 2.0 * a_shape[0] * a_shape[1] * b_shape[1]
            count += times_used
        return 1000.0 * total, flop / 1e9, count, 1000.0 * forward


# ----------------------------------------------------------------------------------------------------------
# PyTorch (eager, channels-last)


class Torch:
    def __init__(self, threads: int) -> None:
        import numpy as np
        import torch
        from torch import nn

        torch.set_num_threads(threads)
        torch.manual_seed(0)
        torch.autograd.set_detect_anomaly(False)  # the tuning guide's "disable debugging APIs" (the default)
        self.torch = torch
        self.versions = {"torch": torch.__version__, "threads": torch.get_num_threads(),
                         "cpu_capability": torch.backends.cpu.get_cpu_capability(),
                         "mkldnn": torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled,
                         "anomaly_detection": torch.is_anomaly_enabled(), "mode": "eager, channels-last"}

        def conv(cin, cout, k, padding=0):
            return nn.Conv2d(cin, cout, k, padding=padding)

        class Attention(nn.Module):
            def __init__(self, c):
                super().__init__()
                self.a, self.b = conv(c, c, 1), conv(c, c, 1)

            def forward(self, x):
                return x * torch.sigmoid(self.b(torch.relu(self.a(x))))

        class ARN(nn.Module):
            def __init__(self):
                super().__init__()
                self.conv_in = conv(1, 32, 3)
                self.stem = nn.Sequential(Attention(32), Attention(32))
                self.c1, self.bn1 = conv(32, 64, 3, 1), nn.BatchNorm2d(64, eps=1e-3, momentum=0.01)
                self.c2, self.bn2 = conv(64, 64, 3, 1), nn.BatchNorm2d(64, eps=1e-3, momentum=0.01)
                self.block_att, self.skip = Attention(64), conv(32, 64, 1)
                self.conv_mid, self.mid = conv(64, 64, 3), Attention(64)
                self.conv_deep = conv(64, 256, 3)
                self.deep = nn.Sequential(*[Attention(256) for _ in range(4)])
                self.conv_out = conv(256, 125, 1)
                self.dense = nn.Linear(3125, 256)
                self.drop = nn.Dropout(0.45)
                self.classifier = nn.Linear(256, CLASSES)

            def forward(self, x):
                h = self.stem(torch.max_pool2d(torch.relu(self.conv_in(x)), 2))
                b = self.bn1(torch.relu(self.c1(h)))
                b = self.block_att(self.bn2(torch.relu(self.c2(b))))
                h = torch.max_pool2d(torch.relu(b + self.skip(h)), 2)
                h = self.mid(torch.relu(self.conv_mid(h)))
                h = self.deep(torch.max_pool2d(torch.relu(self.conv_deep(h)), 2))
                h = torch.relu(self.conv_out(h)).permute(0, 2, 3, 1).flatten(1)  # channels-last flatten, as Keras
                self.dense_out = nn.functional.gelu(self.dense(h))
                return self.classifier(self.drop(self.dense_out))

        self.model = ARN().to(memory_format=torch.channels_last)
        self.opt = torch.optim.Adamax(self.model.parameters(), lr=1e-3, eps=1e-7)
        rng = np.random.default_rng(0)
        self.x = {
            b: torch.from_numpy(rng.random((b, 1, 64, 64), dtype=np.float32)).contiguous(
                memory_format=torch.channels_last)
            for b in BATCHES
        }
        self.y = {b: torch.from_numpy(labels(np, b).argmax(axis=1)) for b in BATCHES}

    def train_step(self, batch: int = BATCH) -> None:
        torch, m = self.torch, self.model
        m.train()
        self.opt.zero_grad(set_to_none=True)  # the tuning guide's "grad = None instead of zeroing"
        logits = m(self.x[batch])
        loss = torch.nn.functional.cross_entropy(logits, self.y[batch])
        loss = loss + 0.016 * m.dense.weight.square().sum() + 0.006 * m.dense.bias.abs().sum()
        loss = loss + 0.006 * m.dense_out.abs().sum() / batch
        loss.backward()
        self.opt.step()

    def infer(self, batch: int) -> None:
        self.model.eval()
        with self.torch.inference_mode():  # the tuning guide's "disable gradient calculation for inference"
            self.torch.softmax(self.model(self.x[batch]), dim=1)


# ----------------------------------------------------------------------------------------------------------
# Keras 3 on TensorFlow (compiled train step: train_on_batch runs the model's tf.function)


class Keras:
    def __init__(self, threads: int) -> None:
        import numpy as np
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(1)
        import keras

        keras.utils.set_random_seed(0)
        try:
            from minarn.interop import build_keras_model

            self.model = build_keras_model()
            built = "minarn.interop.build_keras_model"
        except ImportError:  # pragma: no cover - interop not there
            raise
        self.model.compile(optimizer=keras.optimizers.Adamax(learning_rate=1e-3),
                           loss="categorical_crossentropy")
        self.versions = {"tensorflow": tf.__version__, "keras": keras.__version__, "built_with": built,
                         "intra_op": threads, "inter_op": 1,
                         "jit_compile": str(getattr(self.model, "jit_compile", "?"))}
        rng = np.random.default_rng(0)
        self.x = {b: rng.random((b, *SHAPE), dtype=np.float32) for b in BATCHES}
        self.y = {b: labels(np, b) for b in BATCHES}

    def train_step(self, batch: int = BATCH) -> None:
        self.model.train_on_batch(self.x[batch], self.y[batch])

    def infer(self, batch: int) -> None:
        self.model.predict_on_batch(self.x[batch])


# ----------------------------------------------------------------------------------------------------------
# ONNX Runtime on minarn's export (inference only)


class OnnxRuntime:
    trains = False

    def __init__(self, threads: int) -> None:
        import numpy as np
        import onnx
        import onnxruntime

        from minarn.model import ARNCNN
        from minarn.onnx_export import IR_VERSION, OPSET, build_onnx

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        graph = build_onnx(ARNCNN(seed=0)).SerializeToString()  # the graph python -m minarn.export writes
        self.session = onnxruntime.InferenceSession(graph, options, providers=["CPUExecutionProvider"])
        self.versions = {"onnxruntime": onnxruntime.__version__, "onnx": onnx.__version__,
                         "graph": f"minarn.onnx_export, IR {IR_VERSION}, opset {OPSET}", "intra_op": threads,
                         "inter_op": 1, "graph_optimization": str(options.graph_optimization_level)}
        rng = np.random.default_rng(0)
        self.x = {b: rng.random((b, *SHAPE), dtype=np.float32) for b in BATCHES}

    def infer(self, batch: int) -> None:
        self.session.run(["probabilities"], {"image": self.x[batch]})


def make(framework: str, threads: int):
    if framework.startswith("baseline-"):
        sys.path.insert(0, os.environ["MINARN_BASELINE_SRC"])
        return Minarn(threads)
    if framework.startswith("minarn-"):
        return Minarn(threads)
    return {"torch": Torch, "keras": Keras, "onnxruntime": OnnxRuntime}[framework](threads)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("framework", choices=(*FRAMEWORKS, "sgemm", "flops"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--memory", type=int, default=0, help="run N training steps, print peak RSS, exit")
    ap.add_argument("--batch", type=int, default=BATCH, choices=BATCHES, help="batch of the --memory steps")
    ap.add_argument("--repeats", type=int, default=5, help="sgemm: timed products")
    ap.add_argument("--openmp", choices=("guide", "default"), default="guide",
                    help="torch: the tuning guide's OpenMP binding, or none")
    args = ap.parse_args()
    set_thread_env(args.threads, args.framework, args.openmp)
    if args.framework == "sgemm":
        print(json.dumps(sgemm_peak(args.repeats)), flush=True)
        return
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    if args.framework == "flops":  # the products of the network, counted by benchmarks/fairness.py
        from benchmarks import fairness
        from minarn.model import ARNCNN

        products = fairness.arn_cnn_products(ARNCNN(seed=0))
        print(json.dumps({"forward_per_image": sum(f for _, f in products), "products": products}), flush=True)
        return
    before = rss_mb()
    fw = make(args.framework, args.threads)
    if args.memory:
        built = rss_mb()
        for _ in range(args.memory):
            fw.train_step(args.batch)
        print(json.dumps({"peak_rss_mb": rss_mb(), "after_build_mb": built, "at_start_mb": before}), flush=True)
        return
    trains = getattr(fw, "trains", True)
    for _ in range(args.warmup):
        if trains:
            fw.train_step(BATCH)
        else:
            fw.infer(BATCH)
    if trains:
        fw.train_step(256)  # Keras traces its step again for a new batch shape
    fw.infer(BATCH)
    fw.infer(256)
    environment = {v: os.environ[v] for v in REPORTED_ENV if v in os.environ}
    if fw.versions.get("backend") == "numba":  # the layer starts with the first parallel kernel, in warm-up
        import numba

        fw.versions["numba threading layer"] = numba.threading_layer()
    print(json.dumps({"ready": True, "versions": fw.versions, "trains": trains, "threadpools": threadpools(),
                      "environment": environment}), flush=True)
    for line in sys.stdin:
        cmd = line.split()
        if not cmd or cmd[0] == "quit":
            break
        if cmd[0] in ("train", "infer"):
            run = fw.train_step if cmd[0] == "train" else fw.infer
            batch, times = int(cmd[1]), []
            for _ in range(int(cmd[2])):
                t = time.perf_counter()
                run(batch)
                times.append(time.perf_counter() - t)
            print(json.dumps({"times": times}), flush=True)
        elif cmd[0] == "layers":
            print(json.dumps(fw.layers(int(cmd[1])) if hasattr(fw, "layers") else {}), flush=True)


if __name__ == "__main__":
    main()
