"""Run an ONNX file that minarn exported (``python -m minarn.export``) with ONNX Runtime, as ARNCNN.predict runs.

:class:`OnnxModel` offers the part of :class:`~minarn.model.ARNCNN` that prediction uses (``predict``,
``num_classes``, ``input_shape``) plus the ``class_names`` the file carries, so ``python -m minarn.predict``
takes a ``model.onnx`` as it takes a ``model.npz``. Only files whose ``producer_name`` is minarn's are accepted:
their input, output and metadata are known (:mod:`minarn.onnx_export`).

Needs the optional ``onnxruntime`` package (``pip install onnxruntime``); minarn imports it only when this
module is used, and :func:`load_onnx_model` says how to install it when it is missing.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from minarn.layers.base import shape_str

try:
    import onnxruntime
except ImportError:  # optional: load_onnx_model says how to install it
    onnxruntime = None

__all__ = ["OnnxModel", "load_onnx_model"]

PRODUCER = "minarn"  # the producer_name minarn.onnx_export writes: how its files are told from others
INSTALL_HINT = "pip install onnxruntime"


class OnnxModel:
    """An exported ARN-CNN in an ONNX Runtime session (CPU, ``threads`` intra-op threads; 0: ONNX Runtime's choice).

    Shapes: ``predict`` takes (N, H, W, C) float in [0, 1] or uint8 in [0, 255] (scaled for you, as ARNCNN does)
    and returns the probabilities (N, K) float32.
    """

    def __init__(self, session: Any, path: Path, class_names: list[str], input_shape: tuple[int, int, int]) -> None:
        self.session, self.path = session, path
        self.class_names = class_names
        self.num_classes = len(class_names)
        self.input_shape = input_shape
        self.input_name = session.get_inputs()[0].name
        self.output_name = session.get_outputs()[0].name

    def predict(self, x: np.ndarray, batch_size: int = 64) -> np.ndarray:
        """Class probabilities (N, K), ``batch_size`` images per ONNX Runtime call."""
        x = np.asarray(x)
        if x.ndim != 4 or x.shape[1:] != self.input_shape:
            raise ValueError(f"{self.path.name}: expected input of shape (N, {', '.join(map(str, self.input_shape))}),"
                             f" got {shape_str(x.shape)}")
        if batch_size < 1:
            raise ValueError(f"OnnxModel.predict: batch_size must be >= 1, got {batch_size}")
        x = x / np.float32(255) if x.dtype == np.uint8 else x
        x = x.astype(np.float32, copy=False)
        parts = [self.session.run([self.output_name], {self.input_name: x[i : i + batch_size]})[0]
                 for i in range(0, len(x), batch_size)]
        return np.concatenate(parts) if parts else np.zeros((0, self.num_classes), np.float32)


def load_onnx_model(path: str | os.PathLike[str], threads: int = 0) -> OnnxModel:
    """Open an ONNX file written by ``minarn.onnx_export`` in ONNX Runtime.

    Raises
    ------
    ImportError when onnxruntime is not installed (the message says how to install it);
    ValueError when the file is not an ONNX model ONNX Runtime can load, or was not exported by minarn.
    """
    path = Path(path)
    if onnxruntime is None:
        raise ImportError(f"running {path.name} needs ONNX Runtime; install it with: {INSTALL_HINT}")
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = int(threads)
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # errors only; its warnings are not the user's concern
    try:
        session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as err:  # noqa: BLE001 - ONNX Runtime raises its own types (InvalidProtobuf, Fail, ...)
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"{path}: not an ONNX model ONNX Runtime can load ({first[:300]})") from None
    meta = session.get_modelmeta()
    if meta.producer_name != PRODUCER:
        raise ValueError(f"{path}: not an ONNX model exported by minarn (its producer is "
                         f"{meta.producer_name or 'not named'!r}); export one with python -m minarn.export")
    props = meta.custom_metadata_map
    try:
        names = [str(n) for n in json.loads(props["class_names"])]
        input_shape = tuple(int(s) for s in json.loads(props["input_shape"]))
    except (KeyError, ValueError, TypeError) as err:
        raise ValueError(f"{path}: the minarn metadata class_names / input_shape is missing or damaged ({err})") \
            from None
    if len(input_shape) != 3 or len(session.get_inputs()) != 1 or len(session.get_outputs()) != 1:
        raise ValueError(f"{path}: not laid out as a minarn export (one image input (N, H, W, C), one output)")
    return OnnxModel(session, path, names, input_shape)
