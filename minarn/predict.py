"""``python -m minarn.predict MODEL IMAGE [IMAGE ...] [--probabilities] [--score] [--gradcam OUT.png]``.

MODEL is a ``model.npz`` written by ``python -m minarn.train`` (or its run folder). Class names come from the
``config.json`` beside it; without one, a six-class model uses the MedNIST names and any other ``class 0``,
``class 1``, ... Every image is converted as in training, whatever its size or mode: decoded by Pillow, converted
to 8-bit grayscale ('L') or RGB as the model takes one or three channels (its ``input_shape``, which training
sets with ``--channels``; 16-bit and float images scaled from their smallest to their largest value), resized to
the model's input size (``--image-size``) with nearest-neighbour sampling only when the size differs, scaled to
[0, 1].

MODEL may also be a ``.onnx`` file from ``python -m minarn.export`` (needs ``onnxruntime``): ONNX Runtime runs it
(``minarn.onnx_model``) and its metadata gives the class names; ``--gradcam`` needs the ``model.npz``.

An IMAGE that is a folder stands for the image files anywhere below it (by the file extensions Pillow knows,
sorted by path). Images are decoded and classified ``CHUNK`` at a time and each line is printed as soon as its
chunk is done, so a folder of any size runs in bounded memory.

Output: one line per image, ``IMAGE<TAB>CLASS<TAB>PROBABILITY`` (probability of the predicted class, 4 decimals).
``--probabilities`` adds the probability of every class as further columns, under a header line
``image<TAB>class<TAB>probability<TAB>CLASS_1<TAB>...``. A file that is missing or not an image (or a folder
without image files) is reported on stderr and the others are still predicted.

``--score`` takes the name of each image's folder as its true class (``scans/Hand/x.png`` is a Hand image; images
in a folder that is no class name are left out of the score) and prints to stderr, after the predictions, the
paper's Table 2 (macro precision, recall, F1, accuracy, kappa, log loss) and the confusion matrix: the published
model's score on your own labelled images, laid out as MedNIST is.

``--gradcam OUT.png`` also writes the Grad-CAM overlays (conv2d_22, ``minarn.gradcam``) of the predicted class
(of the first 36 images), each under the input the model saw (64x64 for MedNIST models).

Under ``mpiexec -n N`` the files are sharded over the ranks, chunk by chunk: each rank decodes and classifies its
contiguous block of every chunk, rank 0 gathers the chunk's results (``gather_chunk``) and prints them, so the
output is the lines one process prints, in the same order, and each rank holds one chunk at a time.

Exit status: 0 all images predicted; 1 some file could not be read as an image; 2 bad usage or an unreadable
model (one line on stderr, never a traceback).
"""

from __future__ import annotations

import argparse
import json
import os
import stat
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

import numpy as np
from PIL import Image, UnidentifiedImageError

from minarn import distributed, kernels, metrics
from minarn.cli import Parser
from minarn.data import CHANNEL_MODES, MEDNIST_CLASSES, _decode, describe_error, file_problem
from minarn.model import ARNCNN, load_model
from minarn.onnx_model import OnnxModel, load_onnx_model

__all__ = ["PredictError", "class_names_for", "default_class_names", "expand_folders", "input_size", "load_image",
           "main", "predict_files", "resolve_model"]

PROG = "python -m minarn.predict"
MAX_GRADCAM = 36  # overlays in one --gradcam figure (6 per row)
CHUNK = 256  # images decoded and classified at a time (256 x 64 x 64 bytes at 64x64, in model.predict's batches)


class PredictError(ValueError):
    """Bad usage or an unreadable model: one line, exit status 2."""


def resolve_model(path: str | Path) -> tuple[ARNCNN | OnnxModel, list[str], Path]:
    """Load MODEL (a ``model.npz``, a run folder holding one, or a ``.onnx`` export); returns (model, class names,
    model path)."""
    path = Path(path)
    model_path = path / "model.npz" if path.is_dir() else path
    if not model_path.is_file():
        raise PredictError(f"model {path}: no such file" + (" (no model.npz in this folder)" if path.is_dir() else ""))
    if model_path.suffix.lower() == ".onnx":
        try:
            onnx_model = load_onnx_model(model_path)
        except (ImportError, ValueError) as err:
            raise PredictError(str(err)) from None
        return onnx_model, onnx_model.class_names, model_path
    try:
        model = load_model(model_path)
    except ValueError as err:  # load_model reports a damaged or foreign file as ValueError
        raise PredictError(str(err)) from None
    return model, class_names_for(model, model_path), model_path


def class_names_for(model: ARNCNN, model_path: Path) -> list[str]:
    """Names from ``config.json`` beside the model file when it matches the model, else defaults."""
    config = model_path.parent / "config.json"
    try:
        names = [str(n) for n in json.loads(config.read_text(encoding="utf-8"))["class_names"]]
        if len(names) == model.num_classes:
            return names
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return default_class_names(model.num_classes)


def default_class_names(num_classes: int) -> list[str]:
    """The MedNIST names for a six-class model, else ``class 0``, ``class 1``, ..."""
    if num_classes == len(MEDNIST_CLASSES):
        return list(MEDNIST_CLASSES)
    return [f"class {k}" for k in range(num_classes)]


def load_image(path: str | Path, size: int = 64, channels: int = 1) -> np.ndarray:
    """One image file as training sees it: uint8 (size, size, channels), grayscale for 1 channel, RGB for 3.

    Raises ``OSError`` (missing/unreadable file) or ``ValueError`` (not an image Pillow can decode).
    """
    st = os.stat(path)
    problem = None if stat.S_ISDIR(st.st_mode) else file_problem(st)  # a FIFO or a device is never opened
    if problem:
        raise ValueError(problem)
    data = Path(path).read_bytes()
    try:
        return _decode(data, size, Image.Resampling.NEAREST, channels).reshape(size, size, channels)
    except UnidentifiedImageError:
        raise ValueError("not an image (Pillow does not recognise the file format)") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise ValueError(f"not an image Pillow can decode ({describe_error(err, str(path))})") from None


def expand_folders(paths: Sequence[str | Path]) -> list[str]:
    """The paths with every folder replaced by the image files below it (sorted; extensions Pillow knows).

    A folder without image files stays in the list as it is, so that it is reported like an unreadable file.
    """
    known = {ext.lower() for ext in Image.registered_extensions()}
    out: list[str] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(str(f) for f in p.rglob("*") if f.suffix.lower() in known and f.is_file())
            out += found or [str(p)]
        else:
            out.append(str(p))
    return out


def input_size(model: ARNCNN | OnnxModel) -> int:
    """The side of the square images the model takes; ``PredictError`` for a model with non-square inputs or
    with other than 1 (grayscale) or 3 (RGB) channels."""
    H, W, C = model.input_shape
    if H != W:
        raise PredictError(f"the model takes {H}x{W} images; only square inputs are supported")
    if C not in CHANNEL_MODES:
        raise PredictError(f"the model takes images with {C} channels; only 1 (grayscale) or 3 (RGB) are supported")
    return H


def predict_files(model: ARNCNN | OnnxModel, paths: Sequence[str | Path]) -> tuple[list[str], np.ndarray, np.ndarray,
                                                                         list[tuple[str, str]]]:
    """Decode and classify image files.

    Returns (the paths that were read, their images (M, H, W, C) uint8, probabilities (M, K),
    [(path, reason)] for the files that could not be read).
    """
    H = W = input_size(model)
    C = model.input_shape[2]
    good: list[str] = []
    images: list[np.ndarray] = []
    failed: list[tuple[str, str]] = []
    for p in paths:
        try:
            images.append(load_image(p, H, C))
            good.append(str(p))
        except FileNotFoundError:
            failed.append((str(p), "no such file"))
        except IsADirectoryError:
            failed.append((str(p), "a folder without image files"))
        except (OSError, ValueError) as err:
            failed.append((str(p), str(err) if isinstance(err, ValueError) else f"cannot read: {err.strerror or err}"))
    stack = np.stack(images) if images else np.zeros((0, H, W, C), np.uint8)
    probs = model.predict(stack) if len(stack) else np.zeros((0, model.num_classes))
    return good, stack, probs, failed


def gather_chunk(comm: distributed.Communicator, model: ARNCNN | OnnxModel, chunk: Sequence[str],
                 keep_images: int = 0) -> tuple[list[str], np.ndarray, np.ndarray, list[tuple[str, str]]]:
    """``predict_files`` of ``chunk`` sharded over the ranks: rank r classifies its contiguous block and every rank
    gets the whole chunk's (paths read, the first ``keep_images`` images, probabilities (M, K), failures), in
    the chunk's order. With one process: ``predict_files(model, chunk)`` (its images cut to ``keep_images``)."""
    part = distributed.shard(len(chunk), comm.rank, comm.size)
    good, images, probs, failed = predict_files(model, chunk[part.rows])
    if comm.size == 1:
        return good, images[:keep_images], probs, failed
    parts = comm.allgather((good, images[:keep_images], probs, failed))
    good = [p for g, _, _, _ in parts for p in g]
    images = np.concatenate([i for _, i, _, _ in parts])[:keep_images]
    probs = np.concatenate([q for _, _, q, _ in parts])
    return good, images, probs, [f for _, _, _, fs in parts for f in fs]


def score_text(scored: Sequence[tuple[int, np.ndarray]], names: Sequence[str]) -> str:
    """Table 2 and the confusion matrix of the images whose true class is known (true class >= 0)."""
    labelled = [(t, p) for t, p in scored if t >= 0]
    left_out = len(scored) - len(labelled)
    note = (f" ({left_out} image{'s' * (left_out != 1)} in folders that are no class name left out)"
            if left_out else "")
    if not labelled:
        return (f"score: no image sits in a folder named after a class ({', '.join(names)}){note}\n")
    y = np.array([t for t, _ in labelled])
    probs = np.stack([p for _, p in labelled]).astype(np.float64)
    y_pred = probs.argmax(axis=1)
    present = np.union1d(y, y_pred)  # macro averages over the classes that occur (sklearn's default labels)
    prec, rec, f1, _ = metrics.precision_recall_f1_support(y, y_pred, len(names))
    values = {"precision": prec[present].mean(), "recall": rec[present].mean(), "f1": f1[present].mean(),
              "accuracy": metrics.accuracy(y, y_pred), "kappa": metrics.cohen_kappa(y, y_pred, len(names)),
              "log_loss": metrics.log_loss(y, probs)}
    C = metrics.confusion_matrix(y, y_pred, len(names))
    width = max(len(n) for n in names)
    rows = [" " * width + "  " + " ".join(f"{n[:9]:>9}" for n in names)]
    rows += [f"{n:>{width}}  " + " ".join(f"{c:>9d}" for c in C[k]) for k, n in enumerate(names)]
    wrong = int(len(y) - np.trace(C))
    return (f"score on {len(y):,} labelled images{note}: {wrong} wrong; macro averages over the "
            f"{len(present)} classes that occur\n"
            + metrics.summary_markdown(values)
            + "confusion matrix (rows: true class from the folder name, columns: predicted)\n"
            + "\n".join(rows) + "\n")


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog=PROG, error_type=PredictError,
               description="Classify image files with a model trained by python -m minarn.train; "
                "prints IMAGE, CLASS and PROBABILITY per image (tab-separated).")
    p.add_argument("model", metavar="MODEL", help="model.npz from python -m minarn.train (or its run folder), "
                   "or a .onnx file from python -m minarn.export")
    p.add_argument("images", nargs="+", metavar="IMAGE",
                   help="image files (any size or mode Pillow reads), or folders of them")
    p.add_argument("--probabilities", action="store_true",
                   help="also print the probability of every class (a header line names the columns)")
    p.add_argument("--score", action="store_true",
                   help="each image's folder name is its true class: print Table 2 and the confusion matrix")
    p.add_argument("--gradcam", metavar="OUT.png", help="also write the Grad-CAM overlays of the predictions here")
    return p


def main(argv: Sequence[str] | None = None, stdout: TextIO | None = None, stderr: TextIO | None = None) -> int:
    """Run the command line; returns the exit status (0 all predicted, 1 some files failed, 2 usage/model)."""
    out = stdout or sys.stdout
    err = stderr or sys.stderr
    try:  # under mpiexec: MPI's ranks, which share the files out (python -m minarn.distributed tells which)
        comm = distributed.join_job()
    except distributed.DistributedError as e:
        print(f"{PROG}: error: {e}", file=err)
        return 2
    problem = None
    try:
        args = build_parser().parse_args(argv)
        if args.gradcam is not None:
            target = Path(args.gradcam)
            if target.suffix.lower() != ".png":
                raise PredictError(f"--gradcam must name a .png file, got {args.gradcam}")
            if not target.parent.is_dir():
                raise PredictError(f"--gradcam: folder {target.parent} does not exist")
        try:
            kernels.get_backend()
        except (ImportError, ValueError) as e:
            raise PredictError(f"{e} (from ${kernels.ENV_VAR})") from None
        model, names, _ = resolve_model(args.model)
        if args.gradcam is not None and not isinstance(model, ARNCNN):
            raise PredictError(f"--gradcam needs a model.npz (Grad-CAM runs minarn's backward pass), got {args.model}")
        input_size(model)  # checked before the first image is read
    except PredictError as e:
        problem = str(e)
    problems = comm.allgather(problem)  # a rank that cannot start (say, no model file on its host) stops them all
    if any(problems):
        if comm.rank == 0:
            rank = next(r for r, m in enumerate(problems) if m)
            print(f"{PROG}: error: " + ("" if rank == 0 else f"rank {rank} of {comm.size}: ") + problems[rank],
                  file=err)
        return 2
    root = comm.rank == 0
    if not root:  # rank 0 alone prints
        out = err = open(os.devnull, "w")  # closed when the process ends
    paths = comm.bcast(expand_folders(args.images) if root else None)
    if args.probabilities:
        print("\t".join(["image", "class", "probability", *names]), file=out)
    any_failed, n_good = False, 0
    scored: list[tuple[int, np.ndarray]] = []  # (true class or -1, probabilities) per image, for --score
    cam_paths: list[str] = []
    cam_images: list[np.ndarray] = []
    for start in range(0, len(paths), CHUNK):
        chunk = paths[start : start + CHUNK]
        room = MAX_GRADCAM - len(cam_paths)
        good, images, probs, failed = gather_chunk(comm, model, chunk, room if args.gradcam else 0)
        reasons = dict(failed)
        any_failed |= bool(failed)
        n_good += len(good)
        shown = iter(range(len(good)))
        for p in chunk:  # in the order given, failures in place
            if p in reasons and p not in good:
                print(f"{PROG}: {p}: {reasons[p]}", file=err)
                continue
            i = next(shown)
            k = int(probs[i].argmax())
            extra = "".join(f"\t{q:.4f}" for q in probs[i]) if args.probabilities else ""
            print(f"{p}\t{names[k]}\t{probs[i, k]:.4f}{extra}", file=out, flush=True)
            if args.score:
                folder = Path(p).parent.name
                scored.append((names.index(folder) if folder in names else -1, probs[i]))
        if args.gradcam and room > 0:
            cam_paths += good[:room]
            cam_images += list(images[:room])
    if args.score:
        print(score_text(scored, names), file=err, end="")
    if args.gradcam and cam_paths and root:
        from minarn import figures
        from minarn.gradcam import gradcam

        assert isinstance(model, ARNCNN)  # an .onnx model with --gradcam was refused above
        stack = np.stack(cam_images)
        try:
            figures.gradcam_grid(stack, gradcam(model, stack), names, args.gradcam,
                                 names=[Path(p).name for p in cam_paths],
                                 title="Grad-CAM on conv2d_22 of the predicted class (the "
                                 f"{stack.shape[1]}x{stack.shape[2]} input the model saw)")
        except OSError as e:
            print(f"{PROG}: error: cannot write {args.gradcam}: {e}", file=err)
            return 1
        more = f" (the first {MAX_GRADCAM} of {n_good} images)" if n_good > MAX_GRADCAM else ""
        print(f"Grad-CAM overlays: {args.gradcam}{more}", file=err)
    if args.gradcam and not cam_paths:
        print(f"{PROG}: no image could be read; {args.gradcam} not written", file=err)
    return 1 if any_failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
