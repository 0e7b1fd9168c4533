"""Tests of minarn.data: loading (folders, archives, spoiled files), cache, split, duplicates, batches, sample.

Small image sets are generated in ``tmp_path``. The full-set tests use ``shared/data/MedNIST.tar.gz`` beside
the repository and are skipped when it is absent; it is decoded once per session into a temporary cache.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import shutil
import tarfile
import zipfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st
from PIL import Image

from minarn import data as D
from minarn.data import DataError

FULL_TARBALL = Path(__file__).resolve().parents[2] / "shared" / "data" / "MedNIST.tar.gz"
MEDNIST_COUNTS = {"AbdomenCT": 10000, "BreastMRI": 8954, "CXR": 10000, "ChestCT": 10000, "Hand": 10000, "HeadCT": 10000}


# ----------------------------------------------------------------------------------------------------------
# helpers


def _png(arr: np.ndarray, mode: str = "L") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr, mode=mode).save(buf, format="PNG")
    return buf.getvalue()


def _jpeg(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr, mode="L").save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def _random_gray(rng: np.random.Generator, size: int = 64) -> np.ndarray:
    return rng.integers(0, 256, size=(size, size), dtype=np.uint8)


def make_tree(root: Path, files: dict[str, bytes]) -> Path:
    for rel, blob in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(blob)
    return root


def basic_files(
    seed: int = 0, classes: tuple[str, ...] = ("Bravo", "Alpha", "Charlie"), per_class: int = 4
) -> dict[str, bytes]:
    """Lossless 64x64 grayscale PNGs: per_class images in each class folder."""
    rng = np.random.default_rng(seed)
    return {f"{c}/{i:03d}.png": _png(_random_gray(rng)) for c in classes for i in range(per_class)}


def make_tar(path: Path, files: dict[str, bytes], mode: str = "w", prefix: str = "", reverse: bool = False) -> Path:
    with tarfile.open(path, mode) as tf:
        for rel, blob in sorted(files.items(), reverse=reverse):
            info = tarfile.TarInfo(prefix + rel)
            info.size = len(blob)
            tf.addfile(info, io.BytesIO(blob))
    return path


def make_zip(path: Path, files: dict[str, bytes], prefix: str = "") -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for rel, blob in sorted(files.items()):
            zf.writestr(prefix + rel, blob)
    return path


def same_dataset(a: D.Dataset, b: D.Dataset) -> None:
    assert a.class_names == b.class_names
    np.testing.assert_array_equal(a.paths, b.paths)
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_array_equal(a.sha1, b.sha1)
    np.testing.assert_array_equal(a.images, b.images)


def fake_dataset(labels: np.ndarray, sha1: list[str] | None = None, paths: list[str] | None = None) -> D.Dataset:
    """A Dataset with tiny blank images, for split/duplicate logic that never looks at pixels."""
    n = len(labels)
    num_classes = int(np.max(labels)) + 1
    return D.Dataset(
        images=np.zeros((n, 2, 2, 1), np.uint8),
        labels=np.asarray(labels, np.int64),
        paths=np.array(paths if paths is not None else [f"c{labels[i]}/{i:06d}.png" for i in range(n)]),
        sha1=np.array(sha1 if sha1 is not None else [f"{i:040x}" for i in range(n)]),
        class_names=tuple(f"c{k}" for k in range(num_classes)),
    )


@pytest.fixture
def cache_dir(tmp_path: Path) -> Path:
    return tmp_path / "cache"


@pytest.fixture(autouse=True)
def _no_home_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No test writes to the user's ~/.cache: the default cache folder points into tmp_path."""
    monkeypatch.setenv(D.CACHE_ENV, str(tmp_path / "env-cache"))


# ----------------------------------------------------------------------------------------------------------
# loading


def test_load_folder_pixels_labels_paths_hashes(tmp_path: Path, cache_dir: Path) -> None:
    files = basic_files()
    root = make_tree(tmp_path / "data", files)
    ds = D.load_mednist(root, cache_dir=cache_dir)
    assert ds.class_names == ("Alpha", "Bravo", "Charlie")  # sorted, not listing order
    assert ds.images.shape == (12, 64, 64, 1) and ds.images.dtype == np.uint8
    assert ds.labels.dtype == np.int64
    assert list(ds.paths) == sorted(files)
    assert ds.skipped == () and ds.ignored == ()
    for i, rel in enumerate(ds.paths):
        assert ds.labels[i] == ds.class_names.index(rel.split("/")[0])
        assert ds.sha1[i] == hashlib.sha1(files[rel]).hexdigest()
        np.testing.assert_array_equal(ds.images[i, :, :, 0], np.asarray(Image.open(io.BytesIO(files[rel]))))
    np.testing.assert_array_equal(ds.class_counts(), [4, 4, 4])


def test_top_folder_or_class_folders_directly_give_the_same_dataset(tmp_path: Path, cache_dir: Path) -> None:
    files = basic_files()
    direct = D.load_mednist(make_tree(tmp_path / "a", files), cache_dir=cache_dir)
    nested_files = {f"MedNIST/{k}": v for k, v in files.items()}
    nested = D.load_mednist(make_tree(tmp_path / "b", nested_files), cache_dir=cache_dir)
    same_dataset(direct, nested)


@pytest.mark.parametrize(
    "kind", ["tar", "tar.gz", "tar.gz-dot-prefix", "tar-no-top", "zip"],
)
def test_archives_match_the_folder(tmp_path: Path, cache_dir: Path, kind: str) -> None:
    files = basic_files(seed=1)
    folder = D.load_mednist(make_tree(tmp_path / "folder", files), cache_dir=cache_dir)
    if kind == "tar":
        arc = make_tar(tmp_path / "m.tar", files, "w", prefix="MedNIST/")
    elif kind == "tar.gz":
        # member order is irrelevant: written in reverse
        arc = make_tar(tmp_path / "m.tar.gz", files, "w:gz", prefix="MedNIST/", reverse=True)
    elif kind == "tar.gz-dot-prefix":  # what `tar czf m.tgz ./MedNIST` writes
        arc = make_tar(tmp_path / "m.tgz", files, "w:gz", prefix="./MedNIST/")
    elif kind == "tar-no-top":
        arc = make_tar(tmp_path / "m.tar", files, "w")
    else:
        arc = make_zip(tmp_path / "m.zip", files, prefix="MedNIST/")
    same_dataset(folder, D.load_mednist(arc, cache_dir=cache_dir))


def test_archive_with_unusual_suffix_is_sniffed(tmp_path: Path, cache_dir: Path) -> None:
    files = basic_files(seed=2)
    arc = make_tar(tmp_path / "data.bin", files, "w:gz", prefix="MedNIST/")
    assert len(D.load_mednist(arc, cache_dir=cache_dir)) == 12


def test_other_formats_rgb_and_resize(tmp_path: Path, cache_dir: Path) -> None:
    rng = np.random.default_rng(3)
    rgb = rng.integers(0, 256, size=(64, 64, 3), dtype=np.uint8)
    small = _random_gray(rng, 32)
    big_rgb = rng.integers(0, 256, size=(80, 100, 3), dtype=np.uint8)
    bmp = io.BytesIO()
    Image.fromarray(_random_gray(rng)).save(bmp, format="BMP")
    files = {
        "A/rgb.png": _png(rgb, "RGB"),
        "A/small.png": _png(small),
        "B/big.PNG": _png(big_rgb, "RGB"),  # upper-case extension
        "B/plain.bmp": bmp.getvalue(),
        "B/photo.jpg": _jpeg(_random_gray(rng)),
    }
    root = make_tree(tmp_path / "d", files)
    ds = D.load_mednist(root, cache_dir=cache_dir)
    assert len(ds) == 5 and ds.images.shape[1:] == (64, 64, 1)
    by_path = {p: ds.images[i, :, :, 0] for i, p in enumerate(ds.paths)}
    np.testing.assert_array_equal(by_path["A/rgb.png"], np.asarray(Image.fromarray(rgb).convert("L")))
    np.testing.assert_array_equal(by_path["A/small.png"], np.repeat(np.repeat(small, 2, 0), 2, 1))  # nearest x2
    want_big = Image.fromarray(big_rgb).convert("L").resize((64, 64), Image.NEAREST)
    np.testing.assert_array_equal(by_path["B/big.PNG"], np.asarray(want_big))
    # bilinear is a different, selectable filter; image_size changes the output size
    bil = D.load_mednist(root, cache_dir=cache_dir, resample="bilinear")
    i = list(bil.paths).index("B/big.PNG")
    want_bil = Image.fromarray(big_rgb).convert("L").resize((64, 64), Image.BILINEAR)
    np.testing.assert_array_equal(bil.images[i, :, :, 0], np.asarray(want_bil))
    assert not np.array_equal(want_bil, want_big)
    assert D.load_mednist(root, cache_dir=cache_dir, image_size=32).images.shape == (5, 32, 32, 1)
    with pytest.raises(ValueError, match="resample"):
        D.load_mednist(root, cache_dir=cache_dir, resample="bicubic")


def _spoiled_files() -> dict[str, bytes]:
    files = basic_files(seed=4)
    good = _jpeg(np.full((64, 64), 100, np.uint8))
    files["Alpha/truncated.jpeg"] = good[: len(good) // 2]
    files["Bravo/notes.jpeg"] = b"this is a text file, not a JPEG\n"
    files["README.md"] = b"# readme\n"
    files["Alpha/.DS_Store"] = b"\x00\x01"
    files["Charlie/labels.csv"] = b"a,b\n"
    files["__MACOSX/Alpha/._000.png"] = b"resource fork"
    files["Bravo/._001.png"] = b"AppleDouble file beside the image"
    return files


@pytest.mark.parametrize("as_archive", [False, True])
def test_spoiled_files_are_skipped_and_reported(tmp_path: Path, cache_dir: Path, as_archive: bool) -> None:
    files = _spoiled_files()
    src = make_tar(tmp_path / "s.tar.gz", files, "w:gz") if as_archive else make_tree(tmp_path / "s", files)
    messages: list[str] = []
    ds = D.load_mednist(src, cache_dir=cache_dir, report=messages.append)
    assert len(ds) == 12 and list(ds.class_counts()) == [4, 4, 4]
    skipped = dict(ds.skipped)
    assert sorted(skipped) == ["Alpha/truncated.jpeg", "Bravo/notes.jpeg"]
    assert "truncated" in skipped["Alpha/truncated.jpeg"].lower()
    assert "cannot identify" in skipped["Bravo/notes.jpeg"].lower()
    for name in ("README.md", "Charlie/labels.csv", "Alpha/.DS_Store", "Bravo/._001.png", "__MACOSX/Alpha/._000.png"):
        assert name in ds.ignored
    text = "\n".join(messages)
    assert "skipped 2 file(s)" in text and "Alpha/truncated.jpeg" in text and "Bravo/notes.jpeg" in text
    # reported again when the result comes from the cache
    messages.clear()
    again = D.load_mednist(src, cache_dir=cache_dir, report=messages.append)
    assert again.skipped == ds.skipped and "from cache" in "\n".join(messages)
    assert "Bravo/notes.jpeg" in "\n".join(messages)


def test_zip_member_with_bad_crc_is_skipped(tmp_path: Path, cache_dir: Path) -> None:
    files = basic_files(seed=16)
    arc = make_zip(tmp_path / "m.zip", files)  # stored, not compressed: the image bytes appear verbatim
    raw = bytearray(arc.read_bytes())
    at = raw.find(files["Charlie/002.png"]) + 100
    raw[at] ^= 0xFF
    arc.write_bytes(bytes(raw))
    ds = D.load_mednist(arc, cache_dir=cache_dir)
    assert len(ds) == 11 and [p for p, _ in ds.skipped] == ["Charlie/002.png"]
    assert "CRC" in ds.skipped[0][1]


def test_skipped_files_go_to_the_logger_by_default(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = make_tree(tmp_path / "s", _spoiled_files())
    with caplog.at_level("WARNING", logger="minarn.data"):
        D.load_mednist(root, cache=False)
    assert "Alpha/truncated.jpeg" in caplog.text and "skipped 2" in caplog.text


def test_stray_images_outside_class_folders_are_ignored(tmp_path: Path, cache_dir: Path) -> None:
    files = {f"MedNIST/{k}": v for k, v in basic_files(seed=5).items()}
    files["MedNIST/preview.png"] = files["MedNIST/Alpha/000.png"]
    files["MedNIST/Alpha/nested/deep.png"] = files["MedNIST/Alpha/001.png"]
    ds = D.load_mednist(make_tree(tmp_path / "d", files), cache_dir=cache_dir)
    assert ds.class_names == ("Alpha", "Bravo", "Charlie") and len(ds) == 12
    assert {"MedNIST/preview.png", "MedNIST/Alpha/nested/deep.png"} <= set(ds.ignored)


def test_errors_name_the_path(tmp_path: Path, cache_dir: Path) -> None:
    def raises(src: Path, pattern: str) -> None:
        with pytest.raises(DataError, match=re.escape(str(src)) + ".*" + pattern):
            D.load_mednist(src, cache_dir=cache_dir)

    raises(tmp_path / "missing", "no such file")
    (tmp_path / "empty").mkdir()
    raises(tmp_path / "empty", "empty")
    raises(make_tree(tmp_path / "texts", {"A/readme.txt": b"x", "B/notes.md": b"y"}), "no image files")
    raises(make_tree(tmp_path / "flat", {"x.png": _png(np.zeros((4, 4), np.uint8))}), "not in class folders")
    one = {k: v for k, v in basic_files(seed=6).items() if k.startswith("Alpha/")}
    raises(make_tree(tmp_path / "one", one), "need at least two")
    raises(make_tar(tmp_path / "one.tar.gz", one, "w:gz"), "need at least two")
    dead = basic_files(seed=7)
    for k in [k for k in dead if k.startswith("Bravo/")]:
        dead[k] = b"not an image"
    raises(make_tree(tmp_path / "dead", dead), "Bravo")
    two_roots = {f"x/{k}": v for k, v in basic_files(seed=8, classes=("A", "B")).items()}
    two_roots |= {f"y/{k}": v for k, v in basic_files(seed=9, classes=("C", "D")).items()}
    raises(make_tree(tmp_path / "roots", two_roots), "several roots")
    # archives: garbage, truncated, not an archive at all, an empty tar
    garbage = tmp_path / "garbage.tar.gz"
    garbage.write_bytes(b"\x1f\x8b" + os.urandom(500))
    raises(garbage, "cannot read the archive")
    good = make_tar(tmp_path / "good.tar.gz", basic_files(seed=10, per_class=30), "w:gz", prefix="MedNIST/")
    cut = tmp_path / "cut.tar.gz"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size * 2 // 3])
    raises(cut, "cannot read the archive")
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    raises(text, "not a folder or a readable")
    raises(make_tar(tmp_path / "empty.tar", {}), "no image files")


def test_data_error_is_a_value_error() -> None:
    assert issubclass(DataError, ValueError)


# ----------------------------------------------------------------------------------------------------------
# cache


def test_second_load_hits_the_cache(tmp_path: Path, cache_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    files = basic_files(seed=11)
    for src in (make_tree(tmp_path / "f", files), make_tar(tmp_path / "a.tar.gz", files, "w:gz", prefix="MedNIST/")):
        messages: list[str] = []
        first = D.load_mednist(src, cache_dir=cache_dir, report=messages.append)
        assert "cached to" in messages[-1]
        with monkeypatch.context() as m:  # a second decode would now fail loudly
            m.setattr(D, "_decode", lambda *a: (_ for _ in ()).throw(AssertionError("decoded again")))
            m.setattr(D, "_read_archive", lambda *a: (_ for _ in ()).throw(AssertionError("read again")))
            second = D.load_mednist(src, cache_dir=cache_dir)
        same_dataset(first, second)
        assert second.source == str(src)
    npz = sorted(p.name for p in cache_dir.iterdir())
    assert len(npz) == 2 and all(n.endswith(".npz") for n in npz)  # one per source, no temp files left


def test_changed_source_invalidates_the_cache(tmp_path: Path, cache_dir: Path) -> None:
    files = basic_files(seed=12)
    root = make_tree(tmp_path / "f", files)
    first = D.load_mednist(root, cache_dir=cache_dir)
    # add an image
    (root / "Alpha" / "new.png").write_bytes(_png(np.zeros((64, 64), np.uint8)))
    second = D.load_mednist(root, cache_dir=cache_dir)
    assert len(second) == len(first) + 1
    # change the content of an image (same name)
    target = root / "Bravo" / "000.png"
    target.write_bytes(_png(np.full((64, 64), 7, np.uint8)))
    os.utime(target, ns=(1, 1))
    third = D.load_mednist(root, cache_dir=cache_dir)
    assert third.images[list(third.paths).index("Bravo/000.png")].max() == 7
    # an archive rewritten with other content, same path, same size, same mtime
    arc = make_tar(tmp_path / "a.tar", files, "w")
    st = arc.stat()
    a1 = D.load_mednist(arc, cache_dir=cache_dir)
    changed = dict(files)
    changed["Alpha/000.png"] = files["Alpha/001.png"]
    changed["Alpha/001.png"] = files["Alpha/000.png"]
    make_tar(arc, changed, "w")
    os.utime(arc, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert arc.stat().st_size == st.st_size
    a2 = D.load_mednist(arc, cache_dir=cache_dir)
    np.testing.assert_array_equal(a2.images[0], a1.images[1])
    # the image size is part of the key
    assert D.load_mednist(arc, cache_dir=cache_dir, image_size=16).images.shape[1] == 16


def test_cache_location_env_and_disabled(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = make_tree(tmp_path / "f", basic_files(seed=13))
    env_dir = tmp_path / "from-env"
    monkeypatch.setenv(D.CACHE_ENV, str(env_dir))
    assert D.default_cache_dir() == env_dir
    D.load_mednist(root)
    assert len(list(env_dir.glob("*.npz"))) == 1
    no_cache = tmp_path / "unused"
    D.load_mednist(root, cache=False, cache_dir=no_cache)
    assert not no_cache.exists()
    monkeypatch.delenv(D.CACHE_ENV)
    assert D.default_cache_dir() == Path.home() / ".cache" / "minarn"


def test_damaged_cache_file_is_rebuilt(tmp_path: Path, cache_dir: Path) -> None:
    root = make_tree(tmp_path / "f", basic_files(seed=14))
    first = D.load_mednist(root, cache_dir=cache_dir)
    (npz,) = cache_dir.glob("*.npz")
    npz.write_bytes(b"garbage")
    again = D.load_mednist(root, cache_dir=cache_dir)
    same_dataset(first, again)
    assert np.load(npz)["images"].shape == first.images.shape  # rewritten


def test_cache_write_is_atomic(tmp_path: Path, cache_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = make_tree(tmp_path / "f", basic_files(seed=15))

    def broken_savez(f: object, **arrays: object) -> None:
        f.write(b"half a file")  # type: ignore[attr-defined]
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", broken_savez)
    messages: list[str] = []
    ds = D.load_mednist(root, cache_dir=cache_dir, report=messages.append)  # loading still works
    assert len(ds) == 12 and "could not write the cache" in "\n".join(messages)
    assert list(cache_dir.iterdir()) == []  # neither a half-written .npz nor a temp file


# ----------------------------------------------------------------------------------------------------------
# split


@given(
    counts=st.lists(st.integers(2, 40), min_size=2, max_size=6),
    train_size=st.floats(0.05, 0.95),
    seed=st.integers(0, 2**32 - 1),
    perm_seed=st.integers(0, 2**16),
)
def test_stratified_split_equals_sklearn(counts: list[int], train_size: float, seed: int, perm_seed: int) -> None:
    model_selection = pytest.importorskip("sklearn.model_selection")
    labels = np.random.default_rng(perm_seed).permutation(np.repeat(np.arange(len(counts)), counts))
    n = len(labels)
    n_train = int(np.floor(train_size * n))
    assume(len(counts) <= n_train <= n - len(counts))
    idx = np.arange(n)
    want_train, want_test = model_selection.train_test_split(
        idx, train_size=train_size, shuffle=True, random_state=seed, stratify=labels
    )
    got_train, got_test = D.stratified_split(labels, train_size, seed)
    np.testing.assert_array_equal(got_train, want_train)
    np.testing.assert_array_equal(got_test, want_test)


def test_split_indices_equal_sklearn_two_stage_on_string_labels() -> None:
    model_selection = pytest.importorskip("sklearn.model_selection")
    rng = np.random.default_rng(0)
    labels = rng.permutation(np.repeat(np.array(["b", "a", "c"]), [50, 37, 41]))
    idx = np.arange(len(labels))
    tr, rest = model_selection.train_test_split(idx, train_size=0.9, shuffle=True, random_state=123, stratify=labels)
    va, te = model_selection.train_test_split(
        rest, train_size=0.6, shuffle=True, random_state=123, stratify=labels[rest]
    )
    got = D.split_indices(labels)
    for g, w in zip(got, (tr, va, te)):
        np.testing.assert_array_equal(g, w)


def test_split_counts_of_the_full_class_sizes() -> None:
    """The per-class counts of the paper's split follow from the class sizes alone."""
    labels = np.repeat(np.arange(6), list(MEDNIST_COUNTS.values()))
    parts = D.split_indices(labels, seed=123)
    got = [np.bincount(labels[p], minlength=6).tolist() for p in parts]
    assert got == [
        [9000, 8058, 9000, 9000, 9000, 9000],
        [600, 537, 600, 600, 600, 600],
        [400, 359, 400, 400, 400, 400],
    ]
    assert [len(p) for p in parts] == [53058, 3537, 2359]


@given(counts=st.lists(st.integers(30, 90), min_size=2, max_size=6), seed=st.integers(0, 2**31))
def test_split_partitions_and_stratifies(counts: list[int], seed: int) -> None:
    labels = np.random.default_rng(seed).permutation(np.repeat(np.arange(len(counts)), counts))
    n = len(labels)
    assume(int(0.1 * n) >= 3 * len(counts))  # both stages have room for every class
    train, valid, test = D.split_indices(labels, seed=seed)
    allidx = np.concatenate([train, valid, test])
    assert len(allidx) == n and len(np.unique(allidx)) == n  # disjoint and complete
    assert len(train) == int(np.floor(0.9 * n))
    assert len(valid) == int(np.floor(0.6 * (n - len(train))))
    counts_arr = np.array(counts)
    for part, frac in ((train, 0.9), (valid, 0.1 * 0.6), (test, 0.1 * 0.4)):
        per_class = np.bincount(labels[part], minlength=len(counts))
        assert np.all(np.abs(per_class - frac * counts_arr) < 2.0)  # proportional up to rounding (twice)


def test_split_is_deterministic_and_seed_dependent() -> None:
    labels = np.repeat(np.arange(3), [40, 50, 60])
    a = D.split_indices(labels, seed=123)
    b = D.split_indices(labels, seed=123)
    c = D.split_indices(labels, seed=7)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a[0], c[0])


def test_split_dataset_does_not_depend_on_listing_order() -> None:
    labels = np.repeat(np.arange(4), [30, 25, 41, 33])
    ds = fake_dataset(labels)
    ref = D.split_dataset(ds)
    for s in range(3):
        shuffled = ds.subset(np.random.default_rng(s).permutation(len(ds)))
        got = D.split_dataset(shuffled)
        for x, y in zip(ref, got):
            np.testing.assert_array_equal(x.paths, y.paths)
            np.testing.assert_array_equal(x.labels, y.labels)
    # and with a different seed the membership changes
    assert set(D.split_dataset(ds, seed=1).test.paths) != set(ref.test.paths)


def test_split_needs_two_per_class() -> None:
    with pytest.raises(DataError, match="at least 2"):
        D.split_indices(np.array([0, 0, 0, 1] + [0] * 40))
    with pytest.raises(DataError, match="cannot hold"):
        D.stratified_split(np.repeat(np.arange(5), 2), 0.9)


def test_count_table() -> None:
    splits = D.split_dataset(fake_dataset(np.repeat(np.arange(3), [1000, 900, 100])))
    text = D.count_table(splits)
    lines = text.splitlines()
    assert lines[0].split() == ["split", "total", "c0", "c1", "c2"]
    assert lines[1].split() == ["train", "1,800", "900", "810", "90"]
    assert lines[2].split() == ["valid", "120", "60", "54", "6"]
    assert lines[3].split() == ["test", "80", "40", "36", "4"]
    assert D.count_table({"all": splits.train}).splitlines()[1].split()[:2] == ["all", "1,800"]


# ----------------------------------------------------------------------------------------------------------
# duplicates


def _dup_files() -> dict[str, bytes]:
    """Three classes; known byte-identical groups: A/000=A/007=A/009, A/002=A/005, C/001=C/003."""
    files = basic_files(seed=20, classes=("A", "B", "C"), per_class=10)
    files["A/007.png"] = files["A/009.png"] = files["A/000.png"]
    files["A/005.png"] = files["A/002.png"]
    files["C/003.png"] = files["C/001.png"]
    return files


def test_duplicate_groups_and_removal(tmp_path: Path, cache_dir: Path) -> None:
    ds = D.load_mednist(make_tree(tmp_path / "d", _dup_files()), cache_dir=cache_dir)
    groups = [list(ds.paths[g]) for g in D.duplicate_groups(ds)]
    assert groups == [["A/000.png", "A/007.png", "A/009.png"], ["A/002.png", "A/005.png"], ["C/001.png", "C/003.png"]]
    clean = D.remove_duplicates(ds)
    assert len(clean) == len(ds) - 4
    assert {"A/007.png", "A/009.png", "A/005.png", "C/003.png"}.isdisjoint(clean.paths)
    assert {"A/000.png", "A/002.png", "C/001.png"} <= set(clean.paths)
    assert list(clean.paths) == sorted(clean.paths)
    assert D.duplicate_groups(clean) == []
    # keeping "the first by sorted path" holds whatever the order of the dataset
    shuffled = ds.subset(np.random.default_rng(0).permutation(len(ds)))
    assert set(D.remove_duplicates(shuffled).paths) == set(clean.paths)


def test_duplicates_in_train_and_dedupe_option() -> None:
    sha = [f"{i:040x}" for i in range(12)]
    train = fake_dataset(np.array([0, 0, 1, 1]), sha1=sha[0:4])
    valid = fake_dataset(np.array([0, 1, 1]), sha1=[sha[0], sha[5], sha[3]])
    test = fake_dataset(np.array([0, 1]), sha1=[sha[1], sha[9]])
    assert D.duplicates_in_train(D.Splits(train, valid, test)) == {"valid": 2, "test": 1}
    masks = D.copies_in_train(D.Splits(train, valid, test))
    assert masks["valid"].tolist() == [True, False, True] and masks["test"].tolist() == [True, False]
    # a set whose duplicates straddle the split: dedupe removes every overlap
    labels = np.repeat(np.arange(2), 100)
    digests = [f"{i % 70 if i < 100 else i:040x}" for i in range(200)]  # class 0: 70 distinct, 30 copies
    ds = fake_dataset(labels, sha1=digests)
    plain = D.split_dataset(ds)
    overlap = D.duplicates_in_train(plain)
    assert overlap["valid"] + overlap["test"] > 0
    deduped = D.split_dataset(ds, dedupe=True)
    assert D.duplicates_in_train(deduped) == {"valid": 0, "test": 0}
    assert sum(len(p) for p in deduped) == 170


# ----------------------------------------------------------------------------------------------------------
# batches


def test_scale_and_one_hot() -> None:
    x = np.array([[0, 51, 255]], np.uint8)
    s = D.scale_images(x)
    assert s.dtype == np.float32 and np.allclose(s, [[0.0, 0.2, 1.0]]) and s.max() == 1.0
    with pytest.raises(TypeError, match="uint8"):
        D.scale_images(s)
    np.testing.assert_array_equal(D.one_hot(np.array([2, 0]), 3), [[0, 0, 1], [1, 0, 0]])
    assert D.one_hot(np.array([1]), 2).dtype == np.float32
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        D.one_hot(np.array([3]), 3)


def _images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, 8, 6, 1), dtype=np.uint8)


def test_batches_in_order() -> None:
    images, labels = _images(10), np.arange(10) % 3
    batches = list(D.iterate_batches(images, labels, 4))
    assert [len(x) for x, _ in batches] == [4, 4, 2]
    x = np.concatenate([b[0] for b in batches])
    y = np.concatenate([b[1] for b in batches])
    assert x.dtype == np.float32 and y.dtype == np.float32 and x.shape == (10, 8, 6, 1) and y.shape == (10, 3)
    np.testing.assert_array_equal(x, images / np.float32(255))
    np.testing.assert_array_equal(y.argmax(1), labels)
    assert [len(x) for x, _ in D.iterate_batches(images, labels, 4, drop_last=True)] == [4, 4]
    assert next(D.iterate_batches(images, labels, 4, num_classes=5))[1].shape == (4, 5)


def test_batches_shuffle_is_seeded() -> None:
    images, labels = _images(30), np.arange(30) % 2

    def order(**kw: object) -> np.ndarray:
        xs = np.concatenate([x for x, _ in D.iterate_batches(images, labels, 7, **kw)])
        keys = images.reshape(30, -1).astype(np.float32) / 255
        return np.array([np.flatnonzero((keys == row.ravel()).all(1))[0] for row in xs])

    a, b, c = order(shuffle=True, rng=5), order(shuffle=True, rng=5), order(shuffle=True, rng=6)
    np.testing.assert_array_equal(a, b)
    assert sorted(a) == list(range(30)) and not np.array_equal(a, c) and not np.array_equal(a, np.arange(30))
    gen = np.random.default_rng(1)  # one Generator: a new order each epoch
    assert not np.array_equal(order(shuffle=True, rng=gen), order(shuffle=True, rng=gen))


def test_batches_horizontal_flip() -> None:
    images, labels = _images(200, seed=3), np.zeros(200, np.int64)
    x = np.concatenate([b[0] for b in D.iterate_batches(images, labels, 64, flip=True, rng=0)])
    plain = images / np.float32(255)
    mirrored = plain[:, :, ::-1, :]
    flipped = np.array([np.array_equal(x[i], mirrored[i]) for i in range(200)])
    kept = np.array([np.array_equal(x[i], plain[i]) for i in range(200)])
    assert np.all(flipped ^ kept)  # each image is either left alone or mirrored left-right
    assert 60 < flipped.sum() < 140
    again = np.concatenate([b[0] for b in D.iterate_batches(images, labels, 64, flip=True, rng=0)])
    np.testing.assert_array_equal(x, again)
    no_flip = np.concatenate([b[0] for b in D.iterate_batches(images, labels, 64, rng=0)])
    np.testing.assert_array_equal(no_flip, plain)


def test_per_batch_generators_let_an_epoch_resume_at_any_batch() -> None:
    """The training loop's batches: batch b flips with its own generator, so starting at batch 2 gives exactly the
    batches 2.. of the whole pass, and each batch hands on the generator its flips came from."""
    images, labels = _images(23, seed=4), np.arange(23) % 3
    order = np.random.default_rng(9).permutation(23)

    def epoch(start: int) -> list[D.Batch]:
        return list(D.batches(images, labels, 5, order=order, start=start, flip=True,
                              batch_rng=lambda b: np.random.default_rng([7, 0, b])))

    whole, resumed = epoch(0), epoch(2)
    assert [b.number for b in whole] == [0, 1, 2, 3, 4] and [b.number for b in resumed] == [2, 3, 4]
    for a, b in zip(whole[2:], resumed):
        np.testing.assert_array_equal(a.index, b.index)
        np.testing.assert_array_equal(a.x, b.x)
        np.testing.assert_array_equal(a.y, b.y)
        assert a.rng.random() == b.rng.random()  # the generators continue alike (the dropout masks)
    np.testing.assert_array_equal(np.concatenate([b.index for b in whole]), order)
    mirror = np.random.default_rng([7, 0, 1]).random(5) < 0.5
    np.testing.assert_array_equal(whole[1].x[mirror], images[order[5:10]][mirror][:, :, ::-1] / np.float32(255))


def test_iterate_batches_is_batches_with_one_generator() -> None:
    images, labels = _images(17, seed=5), np.arange(17) % 4
    pairs = list(D.iterate_batches(images, labels, 4, shuffle=True, flip=True, rng=3))
    gen = np.random.default_rng(3)
    direct = list(D.batches(images, labels, 4, order=gen.permutation(17), flip=True, batch_rng=gen))
    assert len(pairs) == len(direct) == 5
    for (x, y), batch in zip(pairs, direct):
        np.testing.assert_array_equal(x, batch.x)
        np.testing.assert_array_equal(y, batch.y)


def test_batches_reject_bad_input() -> None:
    with pytest.raises(ValueError, match="uint8"):
        next(D.iterate_batches(np.zeros((2, 4, 4, 1), np.float32), np.zeros(2, int), 1))
    with pytest.raises(ValueError, match="labels"):
        next(D.iterate_batches(np.zeros((2, 4, 4, 1), np.uint8), np.zeros(3, int), 1))


# ----------------------------------------------------------------------------------------------------------
# the shipped sample


def test_sample_ships_six_classes_of_100(cache_dir: Path) -> None:
    root = D.sample_path()
    assert root.is_dir() and root.name == "MedNIST"
    ds = D.load_mednist(cache_dir=cache_dir)  # the default source
    assert ds.source == str(root)
    assert ds.class_names == D.MEDNIST_CLASSES
    assert list(ds.class_counts()) == [100] * 6
    assert ds.skipped == () and ds.ignored == ()
    assert ds.images.shape == (600, 64, 64, 1)
    size = sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
    assert size < 1_500_000
    split = D.split_dataset(ds)
    assert [len(p) for p in split] == [540, 36, 24]


def test_sample_carries_its_licence() -> None:
    text = (D.sample_path().parent / "LICENSE.md").read_text(encoding="utf-8")
    needles = ("CC BY-SA 4.0", "Bradley J. Erickson", "Mayo Clinic", "creativecommons.org/licenses/by-sa/4.0", "MONAI")
    for needle in needles:
        assert needle in text


# ----------------------------------------------------------------------------------------------------------
# the full MedNIST set (skipped when shared/data/MedNIST.tar.gz is absent)


@pytest.fixture(scope="session")
def full_set(tmp_path_factory: pytest.TempPathFactory) -> tuple[D.Dataset, Path]:
    if not FULL_TARBALL.is_file():
        pytest.skip(f"full MedNIST archive not found at {FULL_TARBALL}")
    cache = tmp_path_factory.mktemp("full-cache")
    return D.load_mednist(FULL_TARBALL, cache_dir=cache), cache


@pytest.mark.slow
def test_full_set_counts_and_split(full_set: tuple[D.Dataset, Path]) -> None:
    ds, _ = full_set
    assert len(ds) == 58954 and ds.skipped == ()
    assert dict(zip(ds.class_names, ds.class_counts().tolist())) == MEDNIST_COUNTS
    splits = D.split_dataset(ds)
    assert [len(p) for p in splits] == [53058, 3537, 2359]
    assert [p.class_counts().tolist() for p in splits] == [
        [9000, 8058, 9000, 9000, 9000, 9000],
        [600, 537, 600, 600, 600, 600],
        [400, 359, 400, 400, 400, 400],
    ]
    assert "53,058" in D.count_table(splits)
    assert len(set(np.concatenate([p.paths for p in splits]))) == len(ds)


@pytest.mark.slow
def test_full_set_duplicates(full_set: tuple[D.Dataset, Path]) -> None:
    ds, _ = full_set
    groups = D.duplicate_groups(ds)
    assert len(groups) == 348 and sum(map(len, groups)) == 788
    extra = Counter(ds.class_names[ds.labels[g[0]]] for g in groups for _ in g[1:])
    assert extra == {"AbdomenCT": 346, "HeadCT": 93, "CXR": 1}
    assert all(len(set(ds.labels[g])) == 1 for g in groups)  # no image in two classes
    deduped = D.split_dataset(ds, dedupe=True)
    assert sum(len(p) for p in deduped) == 58954 - 440
    assert D.duplicates_in_train(deduped) == {"valid": 0, "test": 0}
    overlap = D.duplicates_in_train(D.split_dataset(ds))
    assert 0 < overlap["valid"] + overlap["test"] <= 440


@pytest.mark.slow
def test_full_set_second_load_from_cache(full_set: tuple[D.Dataset, Path]) -> None:
    ds, cache = full_set
    messages: list[str] = []
    again = D.load_mednist(FULL_TARBALL, cache_dir=cache, report=messages.append)
    assert "from cache" in messages[0]
    np.testing.assert_array_equal(again.sha1, ds.sha1)
    assert again.images.shape == (58954, 64, 64, 1)


@pytest.mark.slow
def test_sample_is_a_byte_copy_of_the_full_set(full_set: tuple[D.Dataset, Path]) -> None:
    ds, _ = full_set
    full = dict(zip(ds.paths.tolist(), ds.sha1.tolist()))
    root = D.sample_path()
    files = sorted(p for p in root.rglob("*") if p.is_file())
    assert len(files) == 600
    for p in files:
        rel = p.relative_to(root).as_posix()
        assert hashlib.sha1(p.read_bytes()).hexdigest() == full[rel], rel


def test_sample_folder_has_only_the_images() -> None:
    others = [p for p in D.sample_path().rglob("*") if p.is_file() and p.suffix != ".jpeg"]
    assert others == []
    assert sorted(p.name for p in D.sample_path().iterdir()) == sorted(D.MEDNIST_CLASSES)


def test_copying_a_folder_keeps_the_split(tmp_path: Path, cache_dir: Path) -> None:
    """Listing order and location do not matter: a copy of the sample splits identically."""
    copy = tmp_path / "copy" / "MedNIST"
    shutil.copytree(D.sample_path(), copy)
    a = D.split_dataset(D.load_mednist(cache_dir=cache_dir))
    b = D.split_dataset(D.load_mednist(copy.parent, cache_dir=cache_dir))
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x.paths, y.paths)
        np.testing.assert_array_equal(x.images, y.images)
