"""One benchmark worker process per framework: the same ARN-CNN, one training step, one inference call.

``onnxruntime`` runs minarn's ONNX export of the network (``minarn.onnx_export``) in ONNX Runtime: inference
only, the deployment peer (it has no training step; its ready line says ``"trains": false``).

``run.py`` starts this file as a child process (``python benchmarks/workers.py FRAMEWORK``), so every
framework gets its own interpreter, its own thread pools and its own peak-memory counter. Thread counts are
fixed *before* any framework is imported (environment variables for OpenBLAS/OpenMP/Numba, then
``torch.set_num_threads`` / TF's intra-op setting).

Protocol (one line in, one JSON line out, on stdin/stdout):
    train K          -> {"times": [...]}  K training steps (forward, backward, Adamax), seconds each
    infer B K        -> {"times": [...]}  K inference calls on a batch of B images
    layers K         -> {"forward": {...}, "backward": {...}, "kernels": {...}, "other": {...}}  (minarn only; ms)
    quit
``--memory N`` instead runs N training steps and prints the peak resident set size (``ru_maxrss``).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time

FRAMEWORKS = ("minarn-numba", "minarn-numpy", "torch", "keras", "onnxruntime", "baseline-numba", "baseline-numpy")
# baseline-*: minarn imported from the directory in $MINARN_BASELINE_SRC (e.g. an unpacked older commit),
# to put a before/after comparison into one run.
BATCH = 40
SHAPE = (64, 64, 1)
CLASSES = 6


def set_thread_env(threads: int, framework: str) -> None:
    """Pin every thread pool to ``threads`` before the libraries are imported."""
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
        os.environ[var] = str(threads)
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    if framework.startswith(("minarn-", "baseline-")):
        os.environ["MINARN_BACKEND"] = framework.split("-", 1)[1]


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: kilobytes


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
        self.x = {b: rng.random((b, *SHAPE), dtype=np.float32) for b in (BATCH, 256)}
        self.y = np.eye(CLASSES, dtype=np.float32)[rng.integers(0, CLASSES, BATCH)]
        import numpy

        self.versions = {"numpy": numpy.__version__, "backend": self.backend}
        try:
            import numba

            self.versions["numba"] = numba.__version__
        except ImportError:
            pass
        try:
            from threadpoolctl import threadpool_info

            self.versions["blas"] = ", ".join(
                f"{i.get('internal_api')} {i.get('version')} ({i.get('num_threads')} threads)"
                for i in threadpool_info() if i.get("user_api") == "blas"
            )
        except ImportError:
            pass

    def train_step(self) -> None:
        _, grads = self.model.loss_and_grads(self.x[BATCH], self.y)
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
            _, grads = self.model.loss_and_grads(self.x[BATCH], self.y)
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
        output) and, except for the first layer, an input-gradient product; Winograd layers: 16 of each;
        short-patch layers (the first one) run direct loops and have none."""
        from minarn import kernels
        from minarn.kernels import winograd
        from minarn.layers import Conv2D, Dense

        K = kernels.get_backend()
        self.model.loss_and_grads(self.x[BATCH], self.y)
        shapes = []
        for layer in self.model.layers:
            if not isinstance(layer, (Conv2D, Dense)):
                continue
            x = layer._cache[0]
            if isinstance(layer, Dense):
                m, k, f = x.shape[0], x.shape[1], layer.params["kernel"].shape[1]
            elif layer._is_shallow() and layer.fused_kind is not None:
                continue
            elif layer._is_winograd(K, x.shape):
                n, h, w, c = x.shape
                _, oh, ow, f = layer.compute_output_shape(x.shape)
                t = n * winograd.tiles(oh, ow)[0] * winograd.tiles(oh, ow)[1]
                t_in = n * winograd.tiles(h, w)[0] * winograd.tiles(h, w)[1]  # dx: a convolution of dz
                shapes += [((t, c), (c, f), False, 16, True), ((c, t), (t, f), True, 16, False),
                           ((t_in, f), (f, c), False, 16, False)]
                continue
            else:
                n, oh, ow, f = layer.compute_output_shape(x.shape)
                m, k = n * oh * ow, layer.kernel_size[0] * layer.kernel_size[1] * layer.in_channels
            shapes += [((m, k), (k, f), False, 1, True), ((k, m), (m, f), True, 1, False)]
            if layer is not self.model.conv_in:
                shapes.append(((m, f), (f, k), False, 1, False))
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
        self.torch = torch
        self.versions = {"torch": torch.__version__, "threads": torch.get_num_threads()}

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
            for b in (BATCH, 256)
        }
        self.y = torch.from_numpy(rng.integers(0, CLASSES, BATCH))

    def train_step(self) -> None:
        torch, m = self.torch, self.model
        m.train()
        self.opt.zero_grad(set_to_none=True)
        logits = m(self.x[BATCH])
        loss = torch.nn.functional.cross_entropy(logits, self.y)
        loss = loss + 0.016 * m.dense.weight.square().sum() + 0.006 * m.dense.bias.abs().sum()
        loss = loss + 0.006 * m.dense_out.abs().sum() / BATCH
        loss.backward()
        self.opt.step()

    def infer(self, batch: int) -> None:
        self.model.eval()
        with self.torch.inference_mode():
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
        self.x = {b: rng.random((b, *SHAPE), dtype=np.float32) for b in (BATCH, 256)}
        self.y = np.eye(CLASSES, dtype=np.float32)[rng.integers(0, CLASSES, BATCH)]

    def train_step(self) -> None:
        self.model.train_on_batch(self.x[BATCH], self.y)

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
                         "inter_op": 1}
        rng = np.random.default_rng(0)
        self.x = {b: rng.random((b, *SHAPE), dtype=np.float32) for b in (BATCH, 256)}

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
    ap.add_argument("framework", choices=FRAMEWORKS)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--memory", type=int, default=0, help="run N training steps, print peak RSS, exit")
    args = ap.parse_args()
    set_thread_env(args.threads, args.framework)
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    before = rss_mb()
    fw = make(args.framework, args.threads)
    if args.memory:
        built = rss_mb()
        for _ in range(args.memory):
            fw.train_step()
        print(json.dumps({"peak_rss_mb": rss_mb(), "after_build_mb": built, "at_start_mb": before}), flush=True)
        return
    trains = getattr(fw, "trains", True)
    for _ in range(args.warmup):
        if trains:
            fw.train_step()
        else:
            fw.infer(BATCH)
    fw.infer(BATCH)
    fw.infer(256)
    print(json.dumps({"ready": True, "versions": fw.versions, "trains": trains}), flush=True)
    for line in sys.stdin:
        cmd = line.split()
        if not cmd or cmd[0] == "quit":
            break
        if cmd[0] == "train":
            times = []
            for _ in range(int(cmd[1])):
                t = time.perf_counter()
                fw.train_step()
                times.append(time.perf_counter() - t)
            print(json.dumps({"times": times}), flush=True)
        elif cmd[0] == "infer":
            batch, times = int(cmd[1]), []
            for _ in range(int(cmd[2])):
                t = time.perf_counter()
                fw.infer(batch)
                times.append(time.perf_counter() - t)
            print(json.dumps({"times": times}), flush=True)
        elif cmd[0] == "layers":
            print(json.dumps(fw.layers(int(cmd[1])) if hasattr(fw, "layers") else {}), flush=True)


if __name__ == "__main__":
    main()
