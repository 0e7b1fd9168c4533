"""``python -m minarn.export MODEL OUT.onnx [--verify]``: a trained model as an ONNX file for ONNX Runtime.

MODEL is a ``model.npz`` written by ``python -m minarn.train`` (or its run folder). The ONNX graph
(:mod:`minarn.onnx_export`) takes ``image``, float32 (N, H, W, C) in [0, 1] (the preprocessing of training:
grayscale, resize, divide by 255), and gives ``probabilities`` (N, K). Its metadata holds the class names (from
the ``config.json`` beside MODEL, as ``python -m minarn.predict`` takes them), the input shape, and the
provenance: MODEL's file name and SHA-256 and the run's options, data identity, versions and test score.

``--verify`` then runs the file with ONNX Runtime and MODEL with minarn on the sample images shipped in minarn
(20 per class) and prints the largest difference in probability; more than 1e-5 is a failure (exit status 1).

Exit status: 0 written (and verified); 1 the verification failed; 2 bad usage, an unreadable or foreign model
file, a folder that does not exist, or a missing optional package (one line on stderr, never a traceback).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

import numpy as np

from minarn.cli import Parser
from minarn.data import sample_path
from minarn.model import ARNCNN, load_model
from minarn.onnx_model import load_onnx_model
from minarn.predict import class_names_for, input_size, load_image

try:
    from minarn import onnx_export
except ImportError as err:  # the optional onnx package: main() reports it as a usage error
    onnx_export = None  # type: ignore[assignment]
    _MISSING_ONNX = str(err)

__all__ = ["VERIFY_PER_CLASS", "VERIFY_TOLERANCE", "ExportError", "main", "verify"]

PROG = "python -m minarn.export"
VERIFY_PER_CLASS = 20  # sample images per class that --verify runs through both
VERIFY_TOLERANCE = 1e-5  # largest allowed difference in probability between ONNX Runtime and minarn


class ExportError(ValueError):
    """Bad usage, an unreadable model or an unwritable output: one line, exit status 2."""


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog=PROG, error_type=ExportError,
               description="Export a model trained by python -m minarn.train as an ONNX file "
                "(input 'image': float32 (N, H, W, C) in [0, 1]; output 'probabilities': (N, K)).")
    p.add_argument("model", metavar="MODEL", help="model.npz from python -m minarn.train (or its run folder)")
    p.add_argument("out", metavar="OUT.onnx", help="the ONNX file to write (its folder must exist)")
    p.add_argument("--verify", action="store_true",
                   help=f"run the file in ONNX Runtime and MODEL in minarn on {VERIFY_PER_CLASS} sample images per "
                        f"class and compare the probabilities (fails above {VERIFY_TOLERANCE:g})")
    return p


def _load(path: Path) -> tuple[ARNCNN, Path]:
    model_path = path / "model.npz" if path.is_dir() else path
    if not model_path.is_file():
        raise ExportError(f"model {path}: no such file" + (" (no model.npz in this folder)" if path.is_dir() else ""))
    if model_path.suffix.lower() == ".onnx":
        raise ExportError(f"model {path} is an ONNX file already; MODEL is a model.npz from python -m minarn.train")
    try:
        return load_model(model_path), model_path
    except ValueError as err:  # load_model reports a damaged or foreign file as ValueError
        raise ExportError(str(err)) from None


def _check_out(out: Path) -> None:
    if out.suffix.lower() != ".onnx":
        raise ExportError(f"OUT must name a .onnx file, got {out}")
    if not out.parent.is_dir():
        raise ExportError(f"folder {out.parent} does not exist (create it first)")
    if out.is_dir():
        raise ExportError(f"{out} is a folder; OUT must name a .onnx file")


def verify(model: ARNCNN, onnx_path: Path, per_class: int = VERIFY_PER_CLASS) -> tuple[int, float]:
    """Run ``per_class`` shipped sample images of each class through ``model`` (minarn) and ``onnx_path`` (ONNX
    Runtime), converted as predict converts them (grayscale or RGB, resized); returns (images, largest absolute
    difference in probability). Square inputs only (those ``python -m minarn.predict`` takes): ``ExportError``
    otherwise."""
    try:
        size = input_size(model)
    except ValueError as err:
        raise ExportError(f"--verify: {err}") from None
    files = [f for folder in sorted(sample_path().iterdir()) if folder.is_dir()
             for f in sorted(folder.iterdir())[:per_class]]
    images = np.stack([load_image(f, size, model.input_shape[2]) for f in files])
    ours = model.predict(images)
    theirs = load_onnx_model(onnx_path).predict(images)
    return len(images), float(np.abs(ours.astype(np.float64) - theirs).max())


def main(argv: Sequence[str] | None = None, stdout: TextIO | None = None, stderr: TextIO | None = None) -> int:
    """Run the command line; returns the exit status (0 written, 1 verification failed, 2 usage/model/output)."""
    out_stream = stdout or sys.stdout
    err_stream = stderr or sys.stderr
    try:
        args = build_parser().parse_args(argv)
        out = Path(args.out)
        _check_out(out)
        if onnx_export is None:
            raise ExportError(_MISSING_ONNX)
        model, model_path = _load(Path(args.model))
        names = class_names_for(model, model_path)
        try:
            written = onnx_export.to_onnx(model, out, names, onnx_export.file_provenance(model_path))
        except (TypeError, ValueError) as err:
            raise ExportError(str(err)) from None
        except OSError as err:
            raise ExportError(f"cannot write {out}: {err.strerror or err}") from None
        H, W, C = model.input_shape
        print(f"wrote {written} ({written.stat().st_size / 1e6:.1f} MB): input 'image' float32 (N, {H}, {W}, {C}) "
              f"in [0, 1], output 'probabilities' (N, {model.num_classes}): {', '.join(names)}", file=out_stream)
        if args.verify:
            try:
                n, diff = verify(model, written)
            except ImportError as err:
                raise ExportError(f"--verify: {err}") from None
    except ExportError as e:
        print(f"{PROG}: error: {e}", file=err_stream)
        return 2
    if args.verify:
        agree = diff <= VERIFY_TOLERANCE
        print(f"ONNX Runtime and minarn {'agree' if agree else 'DISAGREE'} on {n} sample images: largest difference "
              f"in probability {diff:.2g} (allowed {VERIFY_TOLERANCE:g})", file=out_stream if agree else err_stream)
        return 0 if agree else 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
