"""A tiny trained run shared by the Grad-CAM, figure, evaluate and predict tests, trained once per test session.

``python -m minarn.train --limit-per-class 25 --epochs 1`` on the shipped sample: 150 images, split 135 / 9 / 6
(25 per class is the smallest limit whose validation and test parts still hold every class). About a minute on
two cores. Import the fixture into a test module with ``from run_fixture import tiny_run  # noqa: F401``.
"""

from __future__ import annotations

import functools
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

TINY_LIMIT_PER_CLASS = 25


@functools.cache
def train_tiny_run(base: str) -> Path:
    """Train the tiny run under ``base`` (once per base folder); returns the run folder."""
    from minarn.train import main

    out = Path(base) / "tiny-run"
    cache = Path(base) / "cache"
    log = io.StringIO()
    status = main(["--limit-per-class", str(TINY_LIMIT_PER_CLASS), "--epochs", "1", "--out", str(out),
                   "--cache-dir", str(cache)], stream=log)
    assert status == 0, log.getvalue()
    assert (out / "model.npz").is_file() and (out / "config.json").is_file()
    return out


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Folder of a finished one-epoch run (model.npz, config.json, history.csv, ...). Do not modify it."""
    return train_tiny_run(str(tmp_path_factory.getbasetemp()))


def tiny_cache(run: Path) -> str:
    """The cache folder the tiny run decoded its images into (pass it as ``cache_dir`` / ``--cache-dir``)."""
    return str(run.parent / "cache")


def assert_png(path: Path, min_size: tuple[int, int] = (300, 200), max_size: tuple[int, int] = (4000, 4000)) -> None:
    """``path`` is a readable PNG of a sensible size (width, height) that is not a blank canvas."""
    path = Path(path)
    assert path.is_file(), f"{path} was not written"
    with Image.open(path) as img:
        assert img.format == "PNG", f"{path}: {img.format}"
        img.load()
        w, h = img.size
        pixels = np.asarray(img.convert("L"), dtype=np.float64)
    assert min_size[0] <= w <= max_size[0] and min_size[1] <= h <= max_size[1], f"{path}: {w}x{h}"
    assert pixels.std() > 5, f"{path} looks blank"
