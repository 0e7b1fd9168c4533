"""Your own data (issue 17): split fractions, datasets that come split into train/valid/test folders, image size
and channels (RGB), any number of classes, unbalanced classes and balanced class weights, the smallest split.

The second real dataset is scikit-learn's digits (``sklearn.datasets.load_digits``, bundled with scikit-learn:
1,797 8x8 images of 10 digits, 0-16 grey levels), written out as PNG folders ``digit0/ ... digit9/``. Two short
training runs go end to end through train, evaluate and predict:

- grayscale at 28x28, unbalanced (class c holds 5 + 2c images), ``--split 0.6,0.2,0.2 --class-weight balanced``;
- RGB at 32x32 (each digit tinted with its own colour), already split into ``train/``, ``val/`` and ``test/``
  folders, ``--channels 3``.

Each is one epoch on about 100 images, a few seconds. BLAS and Numba run on one thread (as in test_train).
"""

from __future__ import annotations

import colorsys
import functools
import io
import json
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image
from run_fixture import assert_png

from minarn import data as D
from minarn import evaluate, kernels, predict, run, train
from minarn.data import DataError
from minarn.gradcheck import numeric_grad, rel_error
from minarn.losses import softmax_cross_entropy
from minarn.model import ARNCNN, load_model

RESULTS = Path(__file__).resolve().parents[1] / "results"


# ------------------------------------------------------------------------------------------------------------
# fixtures and helpers


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """BLAS and Numba on one thread each (see test_train); both put back afterwards."""
    try:
        import numba
    except ImportError:
        numba = None
    threads = numba.get_num_threads() if numba else None
    if numba:
        numba.set_num_threads(1)
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - threadpoolctl comes with scikit-learn (test extra)
        yield
    else:
        with threadpool_limits(limits=1, user_api="blas"):
            yield
    finally:
        if numba:
            numba.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _restore_kernel_backend():
    previous = kernels._active
    yield
    kernels._active = previous


@functools.cache
def _digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits as uint8 (1797, 8, 8) in 0..255 and labels (1797,)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    return np.round(digits.images * (255 / 16)).astype(np.uint8), digits.target.astype(np.int64)


def _tint(gray: np.ndarray, hue: float) -> np.ndarray:
    """A grayscale digit (H, W) uint8 coloured: ink of the given hue on black. Shape (H, W, 3) uint8."""
    colour = np.array(colorsys.hsv_to_rgb(hue, 0.8, 1.0))
    return np.round(gray[..., None] * colour).astype(np.uint8)


def write_png(path: Path, pixels: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels, "RGB" if pixels.ndim == 3 else "L").save(path, format="PNG")


def write_digits(root: Path, per_class: dict[int, int], rgb: bool = False,
                 parts: dict[str, int] | None = None) -> Path:
    """The first ``per_class[c]`` digits of each class c as ``root/digit<c>/<index>.png``; with ``parts``
    ({"train": 6, "val": 2, "test": 2}) split into those folders instead, that many images per class each."""
    images, labels = _digits()
    rng = np.random.default_rng(0)
    for c, n in per_class.items():
        members = np.flatnonzero(labels == c)[:n]
        folders = [""] * n if parts is None else [f"{p}/" for p, k in parts.items() for _ in range(k)]
        assert len(folders) == len(members), "parts must add up to per_class"
        for folder, i in zip(folders, members):
            pixels = _tint(images[i], rng.random()) if rgb else images[i]
            write_png(root / f"{folder}digit{c}" / f"{i:04d}.png", pixels)
    return root


def run_train(*argv: object, figures: tuple[str, ...] | None = None) -> tuple[int, str]:
    """``python -m minarn.train ARGV`` in-process; with ``figures`` its final evaluation draws only those
    (``minarn.figures.FIGURE_FILES`` keys): ten classes make the full set of figures take most of a run's time."""
    stream = io.StringIO()
    real = evaluate.evaluate_loaded_run

    def fewer_figures(*args: object, **kwargs: object) -> dict:
        return real(*args, **{**kwargs, "make_figures": figures})

    with pytest.MonkeyPatch.context() as patch:
        if figures is not None:
            patch.setattr(evaluate, "evaluate_loaded_run", fewer_figures)
        status = train.main([str(a) for a in argv], stream=stream)
    return status, stream.getvalue()


def one_error_line(capsys: pytest.CaptureFixture[str], prog: str = "python -m minarn.train") -> str:
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith(prog), lines[0]
    return lines[0]


def toy_dataset(counts: dict[str, int], part: list[str] | None = None) -> D.Dataset:
    """A Dataset of tiny random images, counts[name] per class, paths ``<name>/<i>.png``."""
    names = tuple(sorted(counts))
    labels = np.concatenate([np.full(counts[c], k) for k, c in enumerate(names)]).astype(np.int64)
    paths = np.array([f"{names[k]}/{i:04d}.png" for i, k in enumerate(labels)])
    rng = np.random.default_rng(1)
    return D.Dataset(images=rng.integers(0, 256, (len(labels), 4, 4, 1), dtype=np.uint8), labels=labels,
                     paths=paths, sha1=np.array([f"{i:040x}" for i in range(len(labels))]), class_names=names,
                     source="toy", part=None if part is None else np.array(part))


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cache")


UNBALANCED = {c: 5 + 2 * c for c in range(10)}  # 5 ... 23 images per digit


@pytest.fixture(scope="module")
def gray_run(tmp_path_factory: pytest.TempPathFactory, cache_dir: Path):
    """Digits, grayscale 28x28, unbalanced, --split 0.6,0.2,0.2, --class-weight balanced: one epoch."""
    base = tmp_path_factory.mktemp("gray")
    data = write_digits(base / "digits", UNBALANCED)
    out = base / "run"
    status, text = run_train("--data", data, "--out", out, "--cache-dir", cache_dir, "--epochs", 1,
                             "--batch-size", 10, "--image-size", 28, "--split", "0.6,0.2,0.2",
                             "--class-weight", "balanced", figures=("label_frequency",))
    assert status == 0, text
    return data, out, text


PARTS = {"train": 6, "val": 2, "test": 2}


@pytest.fixture(scope="module")
def rgb_run(tmp_path_factory: pytest.TempPathFactory, cache_dir: Path):
    """Tinted digits, RGB 32x32, in train/, val/ and test/ folders (6 / 2 / 2 per class): one epoch."""
    base = tmp_path_factory.mktemp("rgb")
    data = write_digits(base / "digits", {c: 10 for c in range(10)}, rgb=True, parts=PARTS)
    out = base / "run"
    status, text = run_train("--data", data, "--out", out, "--cache-dir", cache_dir, "--epochs", 1,
                             "--batch-size", 10, "--image-size", 32, "--channels", 3,
                             figures=("samples", "gradcam", "attention"))
    assert status == 0, text
    return data, out, text


# ------------------------------------------------------------------------------------------------------------
# split fractions


def test_default_fractions_are_exactly_the_papers_two_stages() -> None:
    assert D.SPLIT_FRACTIONS == (0.9, 0.06, 0.04)
    assert D.split_stages() == (0.9, 0.6)  # bit for bit the train_size / valid_of_rest the paper's split uses
    assert D.split_stages((0.8, 0.1, 0.1)) == (0.8, 0.5)


@given(counts=st.lists(st.integers(30, 120), min_size=2, max_size=8), seed=st.integers(0, 2**16))
def test_default_split_is_the_split_of_before(counts: list[int], seed: int) -> None:
    ds = toy_dataset({f"c{k}": n for k, n in enumerate(counts)})
    order = np.lexsort((ds.sha1, ds.paths))
    before = D.split_indices(ds.labels[order], seed=seed, train_size=0.9, valid_of_rest=0.6)
    for splits in (D.split_dataset(ds, seed=seed), D.split_dataset(ds, seed=seed, fractions=(0.9, 0.06, 0.04))):
        for part, idx in zip(splits, before):
            np.testing.assert_array_equal(part.paths, ds.paths[order[idx]])


def test_other_fractions_split_train_first_then_the_rest() -> None:
    ds = toy_dataset({"a": 100, "b": 60, "c": 40})
    train_part, valid, test = D.split_dataset(ds, fractions=(0.5, 0.3, 0.2))
    assert (len(train_part), len(valid), len(test)) == (100, 60, 40)
    assert train_part.class_counts().tolist() == [50, 30, 20]
    assert sorted(np.concatenate([train_part.paths, valid.paths, test.paths])) == sorted(ds.paths)


@pytest.mark.parametrize("bad, named", [((0.9, 0.1, 0.1), "sum to 1"), ((0.9, 0.1, 0.0), "> 0"),
                                        ((1.2, -0.1, -0.1), "> 0"), (("x", 0.5, 0.5), "three numbers")])
def test_bad_fractions_are_refused(bad: tuple, named: str) -> None:
    with pytest.raises(DataError, match=named):
        D.split_stages(bad)


@pytest.mark.parametrize("value", ["0.5,0.5", "0.9,0.1,0.1", "0.9,0.1,0", "a,b,c", "0.5,0.5,-0", "1/0,0,0"])
def test_split_option_refuses_bad_values_in_one_line(value: str, capsys: pytest.CaptureFixture[str],
                                                     tmp_path: Path) -> None:
    assert train.main(["--split", value, "--out", str(tmp_path / "run")], stream=io.StringIO()) == 2
    line = one_error_line(capsys)
    assert "--split" in line and value in line
    assert not (tmp_path / "run").exists()


def test_split_option_takes_fractions_and_ratios() -> None:
    parse = train.build_parser().parse_args
    assert parse(["--split", "0.8,0.1,0.1"]).split == [0.8, 0.1, 0.1]
    assert parse(["--split", "1/3, 1/3, 1/3"]).split == pytest.approx([1 / 3] * 3)
    assert parse([]).split is None


@pytest.mark.parametrize("classes, fractions", [(2, D.SPLIT_FRACTIONS), (3, D.SPLIT_FRACTIONS),
                                                (6, D.SPLIT_FRACTIONS), (10, D.SPLIT_FRACTIONS),
                                                (10, (0.6, 0.2, 0.2)), (4, (0.98, 0.01, 0.01))])
def test_smallest_balanced_split_is_the_smallest(classes: int, fractions: tuple[float, ...]) -> None:
    k = D.smallest_balanced_split(classes, fractions)
    assert k is not None

    def splits(per_class: int) -> bool:
        try:
            parts = D.split_dataset(toy_dataset({f"c{i}": per_class for i in range(classes)}), fractions=fractions)
        except DataError:
            return False
        return all(p.class_counts().min() > 0 for p in parts)

    assert splits(k) and not splits(k - 1)


def test_smallest_sets_of_the_papers_split_as_the_readme_gives_them() -> None:
    assert [D.smallest_balanced_split(k) for k in (2, 6, 10)] == [16, 21, 23]


def test_too_small_a_set_names_the_smallest_split_per_class() -> None:
    ds = toy_dataset({"Ant": 12, "Bee": 14, "Cat": 40})
    need = D.smallest_balanced_split(3)
    with pytest.raises(DataError) as err:
        D.split_dataset(ds)
    text = str(err.value)
    assert f"{need} images in each of the 3 classes" in text
    assert "Ant 12, Bee 14" in text and "Cat" not in text  # by name, with what each holds
    assert "[" not in text  # no class indices
    assert "--split" in text and "train/, valid/ and test/ folders" in text


def test_too_small_a_set_on_the_command_line(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    status = train.main(["--limit-per-class", "12", "--out", str(tmp_path / "run"), "--cache-dir", str(tmp_path)],
                        stream=io.StringIO())
    assert status == 2
    line = one_error_line(capsys)
    need = D.smallest_balanced_split(6)
    assert f"{need} images in each of the 6 classes" in line and "--limit-per-class 12" in line
    for name in D.MEDNIST_CLASSES:
        assert f"{name} 12" in line


# ------------------------------------------------------------------------------------------------------------
# datasets that come split into folders


def test_train_val_test_folders_are_used_as_they_are(tmp_path: Path, cache_dir: Path) -> None:
    data = write_digits(tmp_path / "d", {0: 7, 1: 7, 2: 7}, parts={"train": 4, "val": 2, "test": 1})
    ds = D.load_mednist(data, cache_dir=cache_dir)
    assert ds.class_names == ("digit0", "digit1", "digit2")
    assert sorted(set(ds.part.tolist())) == ["test", "train", "valid"]
    splits = D.split_dataset(ds)
    for name, part, folder in zip(("train", "valid", "test"), splits, ("train", "val", "test")):
        on_disk = sorted(p.relative_to(data).as_posix() for p in (data / folder).rglob("*.png"))
        assert sorted(part.paths.tolist()) == on_disk, name
    assert [len(p) for p in splits] == [12, 6, 3]
    again = D.load_mednist(data, cache_dir=cache_dir)  # from the cache, parts included
    np.testing.assert_array_equal(again.part, ds.part)


def test_split_folders_in_an_archive_and_in_any_case(tmp_path: Path, cache_dir: Path) -> None:
    folder = write_digits(tmp_path / "top" / "mine", {0: 4, 1: 4}, parts={"Train": 2, "VALID": 1, "Test": 1})
    archive = tmp_path / "mine.tar.gz"
    with tarfile.open(archive, "w:gz") as tf:
        tf.add(folder, arcname="mine")
    from_folder, from_tar = D.load_mednist(folder, cache_dir=cache_dir), D.load_mednist(archive, cache_dir=cache_dir)
    np.testing.assert_array_equal(from_folder.paths, from_tar.paths)
    np.testing.assert_array_equal(from_folder.part, from_tar.part)
    assert from_tar.paths[0].startswith("Test/") and set(from_tar.part.tolist()) == {"train", "valid", "test"}


def test_split_folders_missing_a_part_or_doubled_are_refused(tmp_path: Path, cache_dir: Path) -> None:
    no_test = write_digits(tmp_path / "a", {0: 3, 1: 3}, parts={"train": 2, "val": 1})
    with pytest.raises(DataError, match=r"no test/"):
        D.load_mednist(no_test, cache_dir=cache_dir)
    doubled = write_digits(tmp_path / "b", {0: 4, 1: 4}, parts={"train": 1, "val": 1, "valid": 1, "test": 1})
    with pytest.raises(DataError, match=r"val/, valid/ are all the valid part"):
        D.load_mednist(doubled, cache_dir=cache_dir)


def test_a_class_missing_from_train_is_refused_by_name(tmp_path: Path, cache_dir: Path) -> None:
    data = write_digits(tmp_path / "d", {0: 3, 1: 3}, parts={"train": 1, "val": 1, "test": 1})
    shutil.rmtree(data / "train" / "digit1")
    ds = D.load_mednist(data, cache_dir=cache_dir)
    with pytest.raises(DataError, match=r"train part has no image of class\(es\) digit1"):
        D.split_dataset(ds)


def test_fractions_do_not_apply_to_split_folders(tmp_path: Path, cache_dir: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    data = write_digits(tmp_path / "d", {0: 3, 1: 3}, parts={"train": 1, "val": 1, "test": 1})
    with pytest.raises(DataError, match="used as they are"):
        D.split_dataset(D.load_mednist(data, cache_dir=cache_dir), fractions=(0.8, 0.1, 0.1))
    status = train.main(["--data", str(data), "--split", "0.8,0.1,0.1", "--out", str(tmp_path / "run"),
                         "--cache-dir", str(cache_dir)], stream=io.StringIO())
    assert status == 2 and "used as they are" in one_error_line(capsys)


def test_dedupe_keeps_the_training_copy_of_split_folders() -> None:
    ds = toy_dataset({"a": 3, "b": 3}, part=["test", "train", "valid"] * 2)
    sha1 = ds.sha1.copy()
    sha1[[0, 1]] = "f" * 40  # a/0000 (test) and a/0001 (train) are byte-identical
    ds = D.Dataset(ds.images, ds.labels, ds.paths, sha1, ds.class_names, part=ds.part)
    kept = D.remove_duplicates(ds)
    assert "a/0001.png" in kept.paths and "a/0000.png" not in kept.paths and len(kept) == 5


def test_a_class_missing_from_valid_or_test_is_a_warning() -> None:
    ds = toy_dataset({"a": 4, "b": 4}, part=["train", "train", "valid", "test", "train", "train", "train", "test"])
    splits = D.split_dataset(ds)
    lines = train.class_balance(splits)
    assert lines == ["classes in train: smallest a 2, largest b 3 (ratio 1.50); unbalanced: accuracy favours the "
                     "large classes; --class-weight balanced weights the loss by n / (classes x n_class)",
                     "warning: the valid part has no image of class(es) b"]


def test_limit_per_class_applies_to_each_part() -> None:
    ds = toy_dataset({"a": 12, "b": 12}, part=(["train"] * 8 + ["valid"] * 2 + ["test"] * 2) * 2)
    limited = run.limit_per_class(ds, 3, seed=123)
    for part, n in (("train", 3), ("valid", 2), ("test", 2)):
        assert np.bincount(limited.labels[limited.part == part]).tolist() == [n, n], part
    unsplit = toy_dataset({"a": 12, "b": 12})
    assert len(run.limit_per_class(unsplit, 3, seed=123)) == 6


# ------------------------------------------------------------------------------------------------------------
# image size and channels


def test_min_image_size_is_the_networks() -> None:
    ARNCNN(input_shape=(train.MIN_IMAGE_SIZE,) * 2 + (1,))
    with pytest.raises(ValueError, match="too small"):
        ARNCNN(input_shape=(train.MIN_IMAGE_SIZE - 1,) * 2 + (1,))


@pytest.mark.parametrize("argv, named", [(["--image-size", "25"], "--image-size"),
                                         (["--image-size", "513"], "--image-size"),
                                         (["--image-size", "3.5"], "--image-size"),
                                         (["--channels", "2"], "--channels")])
def test_bad_image_size_or_channels(argv: list[str], named: str, capsys: pytest.CaptureFixture[str],
                                    tmp_path: Path) -> None:
    assert train.main([*argv, "--out", str(tmp_path / "run")], stream=io.StringIO()) == 2
    assert named in one_error_line(capsys)


def test_channels_decode_rgb_exactly_and_grayscale_as_pillow(tmp_path: Path, cache_dir: Path) -> None:
    rng = np.random.default_rng(3)
    rgb = {f"{c}/{i}.png": rng.integers(0, 256, (20, 20, 3), dtype=np.uint8) for c in ("x", "y") for i in range(2)}
    for rel, pixels in rgb.items():
        write_png(tmp_path / "d" / rel, pixels)
    write_png(tmp_path / "d" / "y" / "gray.png", np.full((20, 20), 77, np.uint8))
    colour = D.load_mednist(tmp_path / "d", image_size=20, channels=3, cache_dir=cache_dir)
    gray = D.load_mednist(tmp_path / "d", image_size=20, cache_dir=cache_dir)
    assert colour.images.shape == (5, 20, 20, 3) and gray.images.shape == (5, 20, 20, 1)
    for i, rel in enumerate(colour.paths):
        if rel in rgb:
            np.testing.assert_array_equal(colour.images[i], rgb[rel])
            expected = np.asarray(Image.fromarray(rgb[rel], "RGB").convert("L"))
            np.testing.assert_array_equal(gray.images[i, ..., 0], expected)
        else:  # a grayscale file in an RGB set: three equal channels
            assert (colour.images[i] == 77).all()
    small = D.load_mednist(tmp_path / "d", image_size=10, channels=3, cache_dir=cache_dir)
    assert small.images.shape == (5, 10, 10, 3)


def test_colour_is_kept_where_grayscale_loses_it(tmp_path: Path, cache_dir: Path) -> None:
    """Two classes that differ only in colour, of equal luminance: identical in grayscale, apart in RGB."""
    shape = np.zeros((16, 16), np.uint8)
    shape[4:12, 6:10] = 1
    for name, colour in (("red", (255, 0, 0)), ("green", (0, 130, 0))):  # both 'L' 76
        for i in range(2):
            write_png(tmp_path / "d" / name / f"{i}.png", (shape[..., None] * np.array(colour)).astype(np.uint8))
    gray = D.load_mednist(tmp_path / "d", image_size=16, cache_dir=cache_dir)
    colour = D.load_mednist(tmp_path / "d", image_size=16, channels=3, cache_dir=cache_dir)
    first = {c: np.flatnonzero(gray.labels == k)[0] for k, c in enumerate(gray.class_names)}
    np.testing.assert_array_equal(gray.images[first["red"]], gray.images[first["green"]])
    assert not np.array_equal(colour.images[first["red"]], colour.images[first["green"]])


def test_cache_is_kept_apart_per_channels(tmp_path: Path) -> None:
    write_digits(tmp_path / "d", {0: 2, 1: 2})
    cache = tmp_path / "cache"
    messages: list[str] = []
    for channels in (1, 3, 1, 3):
        ds = D.load_mednist(tmp_path / "d", image_size=28, channels=channels, cache_dir=cache, report=messages.append)
        assert ds.images.shape == (4, 28, 28, channels)
    files = sorted(p.name for p in cache.iterdir())
    assert len(files) == 2 and sum("-rgb-" in f for f in files) == 1
    assert sum("loaded from cache" in m for m in messages) == 2  # the second load of each


# ------------------------------------------------------------------------------------------------------------
# class weights


def test_balanced_class_weights_are_sklearns() -> None:
    from sklearn.utils.class_weight import compute_class_weight

    labels = np.repeat([0, 1, 2, 3], [50, 10, 25, 5])
    expected = compute_class_weight("balanced", classes=np.arange(4), y=labels)
    np.testing.assert_allclose(D.balanced_class_weights(labels, 4), expected, rtol=1e-15)
    np.testing.assert_allclose(D.balanced_class_weights(labels, 4), len(labels) / (4 * np.array([50, 10, 25, 5])))
    with pytest.raises(ValueError, match=r"\[4\]"):
        D.balanced_class_weights(labels, 5)


def test_weighted_cross_entropy_value_and_gradient() -> None:
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((7, 4))
    y = np.eye(4)[rng.integers(0, 4, 7)]
    w = np.array([0.5, 2.0, 1.0, 3.0])
    loss, grad = softmax_cross_entropy(logits, y, w)
    p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    per_image = -np.log((p * y).sum(axis=1))
    assert loss == pytest.approx(float(np.mean(w[y.argmax(axis=1)] * per_image)), rel=1e-12)  # Keras: sum / N
    numeric = numeric_grad(lambda: np.array(softmax_cross_entropy(logits, y, w)[0]), logits, np.array(1.0))
    assert rel_error(grad, numeric) < 1e-8
    assert softmax_cross_entropy(logits, y, np.ones(4))[0] == pytest.approx(softmax_cross_entropy(logits, y)[0])
    with pytest.raises(ValueError, match=r"\(4,\)"):
        softmax_cross_entropy(logits, y, np.ones(3))


def test_class_weights_in_the_models_loss_are_gradient_checked() -> None:
    model = ARNCNN(num_classes=3, input_shape=(26, 26, 1), seed=0, dtype=np.float64)
    rng = np.random.default_rng(1)
    x = rng.random((3, 26, 26, 1))
    y = np.eye(3)[[0, 2, 2]]
    w = np.array([0.4, 1.0, 2.5])

    def loss(weights: np.ndarray | None) -> tuple[float, dict[str, np.ndarray]]:
        model.dropout.set_generator(np.random.default_rng(7))  # the same dropout mask every call
        return model.loss_and_grads(x, y, weights)

    value, grads = loss(w)
    plain, plain_grads = loss(None)
    ce = model.last_terms["crossentropy"]
    penalties = plain - ce
    assert value - penalties == pytest.approx(float(np.mean(w[[0, 2, 2]] * _per_image_ce(model, x, y))), rel=1e-10)
    bias = model.classifier.params["bias"]
    numeric = numeric_grad(lambda: np.array(loss(w)[0]), bias, np.array(1.0))
    assert rel_error(grads[f"{model.classifier.name}/bias"], numeric) < 1e-7
    assert rel_error(grads[f"{model.classifier.name}/bias"], plain_grads[f"{model.classifier.name}/bias"]) > 1e-2


def _per_image_ce(model: ARNCNN, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    model.dropout.set_generator(np.random.default_rng(7))
    logits = model.logits(x, training=True)
    z = logits - logits.max(axis=1, keepdims=True)
    return -(y * (z - np.log(np.exp(z).sum(axis=1, keepdims=True)))).sum(axis=1)


# ------------------------------------------------------------------------------------------------------------
# end to end on the digits: grayscale, unbalanced, split fractions, class weights


def test_digits_grayscale_run_records_its_own_data_options(gray_run) -> None:
    data, out, text = gray_run
    config = json.loads((out / "config.json").read_text())
    assert config["class_names"] == [f"digit{c}" for c in range(10)]
    assert config["options"]["split"] == [0.6, 0.2, 0.2] and config["options"]["image_size"] == 28
    assert "channels" not in config["options"]  # the default is not recorded (as in the published runs)
    assert config["model"]["input_shape"] == [28, 28, 1] and config["split_from"] == "stratified"
    counts = {k: config["split"][k]["total"] for k in ("train", "valid", "test")}
    assert sum(counts.values()) == sum(UNBALANCED.values())
    assert counts["train"] == int(0.6 * sum(UNBALANCED.values()))
    train_counts = np.array([config["split"]["train"][f"digit{c}"] for c in range(10)])
    expected = train_counts.sum() / (10 * train_counts)
    np.testing.assert_allclose([config["class_weights"][f"digit{c}"] for c in range(10)], expected)
    assert "split: stratified 0.6/0.2/0.2, seed 123" in text and "28x28 grayscale" in text
    assert f"smallest digit0 {train_counts[0]}, largest digit9 {train_counts[9]}" in text and "unbalanced" in text
    assert "class weights (balanced" in text
    model = load_model(out / "model.npz")
    assert model.input_shape == (28, 28, 1) and model.num_classes == 10
    report = (out / "report.md").read_text()
    assert "stratified 60 / 20 / 20 %, seed 123" in report and "images 28x28 grayscale" in report


def test_digits_evaluate_and_predict_follow_the_model(gray_run, cache_dir: Path, tmp_path: Path) -> None:
    data, out, _ = gray_run
    result = evaluate.evaluate_run(out, report=None, cache_dir=str(cache_dir), make_figures=False,
                                   out_dir=tmp_path / "check")
    splits, _, _, _ = evaluate.load_run_splits(out, cache_dir=str(cache_dir))
    assert splits.test.images.shape[1:] == (28, 28, 1) and result["n_test"] == len(splits.test)
    files = [str(data / p) for p in splits.test.paths]
    stdout, stderr = io.StringIO(), io.StringIO()
    assert predict.main([str(out), *files, "--probabilities", "--score"], stdout=stdout, stderr=stderr) == 0
    rows = [line.split("\t") for line in stdout.getvalue().splitlines()[1:]]
    probs = np.array([[float(v) for v in row[3:]] for row in rows])
    _, _, expected = train.evaluate_split(load_model(out / "model.npz"), splits.test.images, splits.test.labels)
    np.testing.assert_allclose(probs, expected, atol=6e-5)
    assert f"score on {len(files)} labelled images" in stderr.getvalue()


# ------------------------------------------------------------------------------------------------------------
# end to end on tinted digits: RGB, already split into folders


def test_digits_rgb_run_uses_the_folders_and_three_channels(rgb_run) -> None:
    data, out, text = rgb_run
    config = json.loads((out / "config.json").read_text())
    assert config["options"]["channels"] == 3 and config["model"]["input_shape"] == [32, 32, 3]
    assert config["split_from"] == "folders" and "split" not in config["options"]
    assert {k: config["split"][k]["total"] for k in ("train", "valid", "test")} == {"train": 60, "valid": 20,
                                                                                      "test": 20}
    assert "split: the dataset's own train/, valid/ and test/ folders" in text and "32x32 RGB" in text
    assert "classes in train: all 10 hold 6 images" in text
    assert load_model(out / "model.npz").input_shape == (32, 32, 3)
    report = (out / "report.md").read_text()
    assert "the dataset's own train/, valid/ and test/ folders" in report and "images 32x32 RGB" in report
    for name in ("fig5_samples", "fig9_gradcam", "fig3_attention"):  # drawn from RGB images
        assert_png(out / "figures" / f"{name}.png")


def test_predict_converts_rgb_as_training_did(rgb_run, cache_dir: Path, tmp_path: Path) -> None:
    data, out, _ = rgb_run
    model = load_model(out / "model.npz")
    ds = D.load_mednist(data, image_size=32, channels=3, cache_dir=cache_dir)
    test_part = D.split_dataset(ds).test
    for rel, pixels in zip(test_part.paths, test_part.images):
        np.testing.assert_array_equal(predict.load_image(data / rel, 32, 3), pixels)
    stdout, stderr = io.StringIO(), io.StringIO()
    status = predict.main([str(out / "model.npz"), str(data / "test"), "--probabilities", "--score"],
                          stdout=stdout, stderr=stderr)
    assert status == 0, stderr.getvalue()
    rows = [line.split("\t") for line in stdout.getvalue().splitlines()[1:]]
    assert [Path(r[0]).relative_to(data).as_posix() for r in rows] == sorted(test_part.paths.tolist())
    probs = np.array([[float(v) for v in row[3:]] for row in rows])
    order = np.argsort(test_part.paths)
    np.testing.assert_allclose(probs, model.predict(test_part.images[order]), atol=6e-5)
    assert "score on 20 labelled images" in stderr.getvalue()
    cam = tmp_path / "cam.png"
    two = [str(data / rel) for rel in test_part.paths[:2]]
    assert predict.main([str(out), *two, "--gradcam", str(cam)], stdout=io.StringIO(), stderr=stderr) == 0
    assert_png(cam, min_size=(200, 200))


def test_evaluate_cli_on_the_rgb_run(rgb_run, cache_dir: Path, tmp_path: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    _, out, _ = rgb_run
    status = evaluate.main([str(out), "--cache-dir", str(cache_dir), "--report-dir", str(tmp_path / "r"),
                            "--no-figures"])
    assert status == 0, capsys.readouterr().err
    assert "images 32x32 RGB" in (tmp_path / "r" / "report.md").read_text()


def test_evaluate_refuses_a_model_that_does_not_match_its_config(rgb_run, cache_dir: Path, tmp_path: Path) -> None:
    _, out, _ = rgb_run
    run = tmp_path / "run"
    shutil.copytree(out, run, ignore=shutil.ignore_patterns("figures", "report.md"))
    ARNCNN(num_classes=10, input_shape=(32, 32, 1), seed=0).save(run / "model.npz")
    with pytest.raises(evaluate.EvaluationError, match=r"takes \(32, 32, 1\) images"):
        evaluate.evaluate_run(run, report=None, cache_dir=str(cache_dir), make_figures=False)


# ------------------------------------------------------------------------------------------------------------
# old run folders and model files


def test_old_options_mean_64x64_grayscale_and_the_papers_split() -> None:
    config = json.loads((RESULTS / "default-seed123" / "config.json").read_text())
    for key in ("split", "image_size", "channels", "class_weight"):
        assert key not in config["options"]
    assert train.input_format(config["options"]) == (64, 1)
    assert evaluate._model_input(config) == (64, 1)
    assert evaluate._model_input({"options": {}, "model": {}}) == (64, 1)


def test_published_model_file_loads_and_predicts_as_before() -> None:
    model_path = RESULTS / "default-seed123" / "model.npz"
    model = load_model(model_path)
    assert model.input_shape == (64, 64, 1) and model.num_classes == 6
    files = [str(min((D.sample_path() / c).iterdir())) for c in D.MEDNIST_CLASSES]
    stdout, stderr = io.StringIO(), io.StringIO()
    assert predict.main([str(model_path), *files], stdout=stdout, stderr=stderr) == 0, stderr.getvalue()
    predicted = [line.split("\t")[1] for line in stdout.getvalue().splitlines()]
    assert predicted == list(D.MEDNIST_CLASSES)  # each sample image's class folder
