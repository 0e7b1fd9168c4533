"""The sweep of bad and unusual inputs (issue 17): each case reproduces one defect a new user met, so the list only
grows. Add a case here for every input that once lost data, hung, allocated too much, gave a traceback or an
unclear message.

Groups: data loss (download, pixel modes, links in archives and folders, the run folder), resources (sizes,
FIFOs and devices), tracebacks turned into messages, unclear messages made clear, data identity and the cache.
Earlier cases of the same kind live beside the code they test: spoiled images and archives (test_data.py),
interrupted or corrupt downloads (test_download.py), usage errors, Ctrl-C and NaN losses (test_train.py),
unreadable images and models (test_predict.py), unusable run folders (test_evaluate.py).

Training runs here use a 2-class set of 33 sample images (train 29, batch 8) and stop after one epoch, or fail
before the first step.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import io
import json
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import tarfile
import threading
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_download import PAYLOAD, PAYLOAD_MD5, server  # noqa: F401 (the 127.0.0.1 server fixture)

from minarn import atomic, evaluate, kernels, predict, train
from minarn import data as D
from minarn import download as DL
from minarn.data import DataError, sample_path
from minarn.model import ARNCNN, load_model

CLASSES = ("CXR", "Hand")
PER_CLASS = 16
BATCH = 8


# ------------------------------------------------------------------------------------------------------------
# fixtures and helpers


@pytest.fixture(autouse=True)
def _no_home_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Nothing in this module touches ~/.cache/minarn."""
    monkeypatch.setenv(D.CACHE_ENV, str(tmp_path / "default-cache"))


@pytest.fixture(autouse=True)
def _restore_kernel_backend():
    previous = kernels._active
    yield
    kernels._active = previous


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("data") / "MedNIST"
    for cls in CLASSES:
        (root / cls).mkdir(parents=True)
        for f in sorted((sample_path() / cls).iterdir())[:PER_CLASS]:
            shutil.copyfile(f, root / cls / f.name)
    return root


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def finished_run(tiny_data: Path, cache_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished one-epoch run on the tiny set (shared by the tests that only read it)."""
    out = tmp_path_factory.mktemp("finished") / "run"
    status, text = run_train(out, tiny_data, cache_dir, "--epochs", "1")
    assert status == 0, text
    return out


def run_train(out: Path, data: Path | None, cache_dir: Path, *extra: str) -> tuple[int, str]:
    stream = io.StringIO()
    argv = (["--data", str(data)] if data else []) + ["--cache-dir", str(cache_dir), "--batch-size", str(BATCH),
                                                      "--out", str(out), *extra]
    status = train.main(argv, stream=stream)
    return status, stream.getvalue()


def one_error_line(capsys: pytest.CaptureFixture[str], prog: str = "python -m minarn.train") -> str:
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got:\n{err}"
    assert "Traceback" not in err and lines[0].startswith(prog), lines[0]
    return lines[0]


def png_bytes(arr: np.ndarray, mode: str | None = None, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    (Image.fromarray(arr, mode=mode) if mode else Image.fromarray(arr)).save(buf, format=fmt)
    return buf.getvalue()


def gray(seed: int, size: int = 64) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(size, size), dtype=np.uint8)


def two_classes(root: Path, n: int = 3, extra: dict[str, bytes] | None = None) -> Path:
    """``root/A/*.png`` and ``root/B/*.png``, n random images each, plus ``extra`` files (relative path -> bytes)."""
    files = {f"{c}/{i}.png": png_bytes(gray(10 * k + i)) for k, c in enumerate("AB") for i in range(n)}
    files.update(extra or {})
    for rel, blob in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(blob)
    return root


def tar_of(folder: Path, path: Path) -> Path:
    with tarfile.open(path, "w:gz") as tf:
        for p in sorted(folder.rglob("*")):
            tf.add(p, arcname=p.relative_to(folder.parent).as_posix(), recursive=False)
    return path


# ------------------------------------------------------------------------------------------------------------
# data loss: --download


def test_download_keeps_an_archive_with_another_checksum(server, tmp_path: Path,  # noqa: F811
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    """The full MedNIST set named in the README has another MD5 than the pinned one: it used to be deleted."""
    _, url = server
    mine = tmp_path / "MedNIST.tar.gz"
    mine.write_bytes(b"the user's own copy of the data")
    got = DL.download_mednist(tmp_path, url=url, md5=PAYLOAD_MD5, progress=False)
    assert mine.read_bytes() == b"the user's own copy of the data"
    assert got == tmp_path / f"MedNIST-{PAYLOAD_MD5[:8]}.tar.gz" and got.read_bytes() == PAYLOAD
    err = capsys.readouterr().err
    found = hashlib.md5(b"the user's own copy of the data").hexdigest()
    assert f"{mine}: already there" in err and found in err and "kept" in err and str(got) in err
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([mine.name, got.name])
    # the next call finds the verified file beside it and downloads nothing
    assert DL.download_mednist(tmp_path, url=url, md5=PAYLOAD_MD5, progress=False) == got
    assert mine.read_bytes() == b"the user's own copy of the data"


def test_download_never_replaces_a_file_that_appears_meanwhile(server, tmp_path: Path,  # noqa: F811
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """The verified .part is linked to its final name, which fails instead of overwriting a file put there
    while the download ran."""
    _, url = server
    dest = tmp_path / "m.tar.gz"
    real_digest = DL.file_digest

    def digest_then_someone_writes(path, algorithm="sha1"):
        if str(path).endswith(".part"):
            dest.write_bytes(b"written by someone else")
        return real_digest(path, algorithm)

    monkeypatch.setattr(DL, "file_digest", digest_then_someone_writes)
    with pytest.raises(DL.DownloadError, match="appeared"):
        DL.download_file(url, dest, md5=PAYLOAD_MD5, progress=False)
    assert dest.read_bytes() == b"written by someone else"
    assert (tmp_path / "m.tar.gz.part").read_bytes() == PAYLOAD  # verified, kept for the next call


def test_download_refuses_when_the_file_beside_it_is_wrong_too(server, tmp_path: Path) -> None:  # noqa: F811
    _, url = server
    (tmp_path / "MedNIST.tar.gz").write_bytes(b"one")
    (tmp_path / f"MedNIST-{PAYLOAD_MD5[:8]}.tar.gz").write_bytes(b"two")
    with pytest.raises(DL.DownloadError, match="move"):
        DL.download_mednist(tmp_path, url=url, md5=PAYLOAD_MD5, progress=False)
    assert (tmp_path / "MedNIST.tar.gz").read_bytes() == b"one"
    assert (tmp_path / f"MedNIST-{PAYLOAD_MD5[:8]}.tar.gz").read_bytes() == b"two"


# ------------------------------------------------------------------------------------------------------------
# data loss: pixels of every image mode


def test_16_bit_png_is_scaled_by_its_range(tmp_path: Path) -> None:
    """A 16-bit PNG used to come out almost all white (values above 255 clipped)."""
    ramp = (np.arange(64 * 64, dtype=np.uint32).reshape(64, 64) * 4 + 1000).astype(np.uint16)  # 1000..17380
    root = two_classes(tmp_path / "d", extra={"A/deep.png": png_bytes(ramp)})
    assert Image.open(root / "A/deep.png").mode == "I;16"
    ds = D.load_mednist(root, cache=False, report=lambda m: None)
    got = ds.images[list(ds.paths).index("A/deep.png"), :, :, 0]
    want = np.round((ramp.astype(np.float64) - 1000) * 255 / (17380 - 1000)).astype(np.uint8)
    assert np.array_equal(got, want)
    assert got.min() == 0 and got.max() == 255 and len(np.unique(got)) == 256


def test_float_tiff_is_scaled_by_its_range(tmp_path: Path) -> None:
    """A float TIFF with values in [0, 1] used to come out all black."""
    ramp = np.linspace(0.0, 1.0, 64 * 64, dtype=np.float32).reshape(64, 64)
    root = two_classes(tmp_path / "d", extra={"B/float.tif": png_bytes(ramp, fmt="TIFF")})
    assert Image.open(root / "B/float.tif").mode == "F"
    ds = D.load_mednist(root, cache=False, report=lambda m: None)
    got = ds.images[list(ds.paths).index("B/float.tif"), :, :, 0]
    assert np.array_equal(got, np.round(ramp.astype(np.float64) * 255).astype(np.uint8))
    # predict converts the same way
    assert np.array_equal(predict.load_image(root / "B/float.tif")[..., 0], got)


def test_32_bit_integer_and_constant_images(tmp_path: Path) -> None:
    wide = (np.arange(64 * 64, dtype=np.int32).reshape(64, 64) - 2000) * 1000  # negative and large values
    flat = np.full((64, 64), 40000, dtype=np.uint16)
    root = two_classes(tmp_path / "d", extra={"A/wide.tif": png_bytes(wide, fmt="TIFF"),
                                              "A/flat.png": png_bytes(flat)})
    ds = D.load_mednist(root, cache=False, report=lambda m: None)
    paths = list(ds.paths)
    w = ds.images[paths.index("A/wide.tif"), :, :, 0]
    assert w[0, 0] == 0 and w[-1, -1] == 255 and np.all(np.diff(w.ravel().astype(int)) >= 0)
    assert np.all(ds.images[paths.index("A/flat.png")] == 0)  # a constant image has no range: black


def test_float_image_with_nan_and_an_unconvertible_mode_are_refused_by_name(tmp_path: Path) -> None:
    bad = np.zeros((64, 64), dtype=np.float32)
    bad[3, 3] = np.nan
    lab = io.BytesIO()
    Image.new("LAB", (64, 64)).save(lab, format="TIFF")
    root = two_classes(tmp_path / "d", extra={"A/nan.tif": png_bytes(bad, fmt="TIFF"), "B/lab.tif": lab.getvalue()})
    ds = D.load_mednist(root, cache=False, report=lambda m: None)
    reasons = dict(ds.skipped)
    assert set(reasons) == {"A/nan.tif", "B/lab.tif"}
    assert "NaN" in reasons["A/nan.tif"]
    assert "LAB" in reasons["B/lab.tif"]


# ------------------------------------------------------------------------------------------------------------
# data loss: hard links and symbolic links


def test_tar_hard_links_are_read(tmp_path: Path) -> None:
    """A tar made with hard links used to lose those members without a word (260 images loaded as 240)."""
    root = two_classes(tmp_path / "src" / "Data")
    os.link(root / "A/0.png", root / "A/linked.png")
    archive = tar_of(root, tmp_path / "d.tar.gz")
    with tarfile.open(archive) as tf:
        assert tf.getmember("Data/A/linked.png").islnk()
    ds = D.load_mednist(archive, cache=False, report=lambda m: None)
    assert "A/linked.png" in list(ds.paths) and len(ds) == 7 and not ds.skipped
    i, j = list(ds.paths).index("A/0.png"), list(ds.paths).index("A/linked.png")
    assert np.array_equal(ds.images[i], ds.images[j]) and ds.sha1[i] == ds.sha1[j]


def test_tar_symlinks_inside_are_read_and_others_reported(tmp_path: Path) -> None:
    root = two_classes(tmp_path / "src" / "Data")
    (root / "B/sym.png").symlink_to("../A/1.png")  # to a member of the archive: read
    (root / "B/outside.png").symlink_to("/etc/passwd")  # leads outside: never read, reported
    (root / "A2").symlink_to("A")  # a symlinked class folder inside a tar: reported
    archive = tar_of(root, tmp_path / "d.tar")
    messages: list[str] = []
    ds = D.load_mednist(archive, cache=False, report=messages.append)
    paths = list(ds.paths)
    assert "B/sym.png" in paths
    assert np.array_equal(ds.images[paths.index("B/sym.png")], ds.images[paths.index("A/1.png")])
    reasons = dict(ds.skipped)
    assert "not in the archive" in reasons["B/outside.png"] and "/etc/passwd" in reasons["B/outside.png"]
    assert any("Data/A2" in p and "folder" in r for p, r in ds.skipped)
    assert "A2" in "\n".join(messages)


def test_symlinked_class_folder_is_read_in_a_folder(tmp_path: Path) -> None:
    """A class folder that is a symbolic link used to be skipped silently (os.walk does not follow links)."""
    elsewhere = two_classes(tmp_path / "elsewhere", n=2)
    root = two_classes(tmp_path / "d", n=2)
    (root / "C").symlink_to(elsewhere / "A", target_is_directory=True)
    (root / "B" / "loop").symlink_to(root, target_is_directory=True)  # a loop is not followed forever
    ds = D.load_mednist(root, cache=False, report=lambda m: None)
    assert ds.class_names == ("A", "B", "C") and list(ds.class_counts()) == [2, 2, 2]


# ------------------------------------------------------------------------------------------------------------
# data loss: the run folder


def test_out_inside_data_is_refused(tiny_data: Path, cache_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--out inside --data used to write the run into the dataset (a new class "figures")."""
    before = sorted(p.relative_to(tiny_data) for p in tiny_data.rglob("*"))
    status, _ = run_train(tiny_data / "runs" / "r1", tiny_data, cache_dir, "--epochs", "1")
    assert status == 2
    line = one_error_line(capsys)
    assert "inside" in line and str(tiny_data) in line
    assert sorted(p.relative_to(tiny_data) for p in tiny_data.rglob("*")) == before
    status, _ = run_train(tiny_data, tiny_data, cache_dir, "--epochs", "1")  # the data folder itself
    assert status == 2 and "inside" in one_error_line(capsys)


def test_a_run_folder_in_use_is_locked(tiny_data: Path, cache_dir: Path, tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """Two trainings started together into one --out used to interleave their history."""
    out = tmp_path / "run"
    inner: dict[str, object] = {}
    original = train.fit

    def fit_and_start_a_second_training(*args, **kwargs):
        stream = io.StringIO()
        inner["status"] = train.main(["--data", str(tiny_data), "--cache-dir", str(cache_dir), "--out", str(out),
                                      "--epochs", "1"], stream=stream)
        inner["err"] = capsys.readouterr().err
        return original(*args, **kwargs)

    monkeypatch.setattr(train, "fit", fit_and_start_a_second_training)
    status, text = run_train(out, tiny_data, cache_dir, "--epochs", "1")
    assert status == 0, text
    assert inner["status"] == 2
    assert "in use by another training" in str(inner["err"]) and str(out) in str(inner["err"])
    assert len((out / "history.csv").read_text().splitlines()) == 2  # header and one epoch, no interleaving
    # released at the end
    with open(out / train.LOCK_FILE) as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)


def test_leftovers_of_a_failed_run_are_not_mixed_with_a_new_one(tiny_data: Path, cache_dir: Path, tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    """A re-run into a folder a failed run left behind used to append to its old history.csv."""
    out = tmp_path / "run"
    out.mkdir()
    old = "epoch,loss\n1,0.5\n2,0.4\n"
    (out / "history.csv").write_text(old)
    status, _ = run_train(out, tiny_data, cache_dir, "--epochs", "1")
    assert status == 2
    line = one_error_line(capsys)
    assert "history.csv" in line and "checkpoint" in line
    assert (out / "history.csv").read_text() == old


def test_stale_checkpoint_temp_files_are_removed_on_the_next_start(tiny_data: Path, cache_dir: Path, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """A killed run used to leave its checkpoint.npz.*.tmp (26 MB) for good."""
    out = tmp_path / "run"
    out.mkdir()
    stale = [out / "checkpoint.npz.abc123.tmp", out / "model.npz.x9.tmp"]
    for p in stale:
        p.write_bytes(b"half a checkpoint")
    keep = out / "notes.tmp"  # not one of minarn's temp files
    keep.write_text("mine")
    monkeypatch.setattr(train, "fit", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt))  # no training
    status, text = run_train(out, tiny_data, cache_dir, "--epochs", "1")
    assert status == 130, text
    assert not any(p.exists() for p in stale) and keep.read_text() == "mine"
    assert "removed 2 temporary file(s)" in text and "checkpoint.npz.abc123.tmp" in text


# ------------------------------------------------------------------------------------------------------------
# resources: sizes checked before reading, no read that blocks forever


def test_archive_member_over_the_size_limit_is_not_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A 3 GiB member in a 14 MB archive used to be read whole into memory; here the limit is made small."""
    root = two_classes(tmp_path / "src" / "Data", extra={"A/huge.png": b"\0" * 50_000})
    archive = tar_of(root, tmp_path / "d.tar.gz")
    monkeypatch.setattr(D, "MAX_FILE_BYTES", 20_000)
    read: list[str] = []
    original = tarfile.TarFile.extractfile

    def extractfile(self, member):
        read.append(member.name if isinstance(member, tarfile.TarInfo) else member)
        return original(self, member)

    monkeypatch.setattr(tarfile.TarFile, "extractfile", extractfile)
    ds = D.load_mednist(archive, cache=False, report=lambda m: None)
    assert "Data/A/huge.png" not in read and len(read) == 6
    reason = dict(ds.skipped)["A/huge.png"]
    assert "50,000 bytes" in reason and "20,000" in reason and "MAX_FILE_BYTES" in reason
    monkeypatch.undo()
    # the same limit for a zip member and a file in a folder
    monkeypatch.setattr(D, "MAX_FILE_BYTES", 20_000)
    with zipfile.ZipFile(tmp_path / "d.zip", "w") as zf:
        for p in sorted(root.rglob("*.png")):
            zf.write(p, p.relative_to(root.parent).as_posix())
    for source in (tmp_path / "d.zip", root):
        ds = D.load_mednist(source, cache=False, report=lambda m: None)
        assert "50,000 bytes" in dict(ds.skipped)["A/huge.png"]


def test_image_over_the_pixel_limit_is_refused_before_decoding(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    root = two_classes(tmp_path / "d", extra={"B/wide.png": png_bytes(np.zeros((100, 300), np.uint8))})
    monkeypatch.setattr(D, "MAX_IMAGE_PIXELS", 20_000)
    ds = D.load_mednist(root, cache=False, report=lambda m: None)
    reason = dict(ds.skipped)["B/wide.png"]
    assert "300x100" in reason and "30,000 pixels" in reason and "MAX_IMAGE_PIXELS" in reason
    with pytest.raises(ValueError, match="30,000 pixels"):
        predict.load_image(root / "B/wide.png")


def _blocked_call(fn, fifo: Path, seconds: float = 10.0):
    """Run ``fn()`` in a thread; if it blocks on the FIFO, open the FIFO's other end to release it."""
    result: dict[str, object] = {}

    def target() -> None:
        try:
            result["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            result["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    blocked = thread.is_alive()
    if blocked:
        fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        os.close(fd)
        thread.join(seconds)
    return blocked, result


def test_fifo_as_data_or_inside_it_does_not_block(tmp_path: Path) -> None:
    """--data a FIFO used to hang for good (and a FIFO named like an image inside a class folder, too)."""
    fifo = tmp_path / "data.tar"
    os.mkfifo(fifo)
    blocked, result = _blocked_call(lambda: D.load_mednist(fifo, cache=False), fifo)
    assert not blocked
    assert isinstance(result.get("error"), DataError) and "FIFO" in str(result["error"])
    root = two_classes(tmp_path / "d")
    os.mkfifo(root / "A" / "pipe.png")
    blocked, result = _blocked_call(lambda: D.load_mednist(root, cache=False, report=lambda m: None),
                                    root / "A" / "pipe.png")
    assert not blocked and "not a regular file" in dict(result["value"].skipped)["A/pipe.png"]
    blocked, result = _blocked_call(lambda: predict.load_image(root / "A" / "pipe.png"), root / "A" / "pipe.png")
    assert not blocked and "not a regular file" in str(result.get("error"))


def test_device_as_data_is_refused(tmp_path: Path) -> None:
    """--data /dev/zero used to read for ever."""
    assert stat.S_ISCHR(os.stat("/dev/zero").st_mode)
    code = ("from minarn import data\ntry:\n    data.load_mednist('/dev/zero', cache=False)\n"
            "except data.DataError as e:\n    print(e)\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(Path(D.__file__).parents[1]),
                                                                      os.environ.get("PYTHONPATH")]))}
    try:
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env)
    except subprocess.TimeoutExpired:
        pytest.fail("load_mednist('/dev/zero') still reading after 60 s")
    assert "/dev/zero" in done.stdout and "character device" in done.stdout, done.stderr


# ------------------------------------------------------------------------------------------------------------
# tracebacks and unclear messages in loading


def test_file_names_that_are_not_utf8(tmp_path: Path) -> None:
    """A file name that is not UTF-8 (folder or tar) used to end in a UnicodeEncodeError traceback."""
    root = two_classes(tmp_path / "src" / "Data")
    bad = os.path.join(os.fsencode(root / "A"), b"caf\xe9.png")
    with open(bad, "wb") as f:
        f.write(png_bytes(gray(99)))
    with open(os.path.join(os.fsencode(root / "B"), b"broken\xff.png"), "wb") as f:
        f.write(b"not an image")
    archive = tar_of(root, tmp_path / "d.tar.gz")
    for source in (root, archive):
        ds = D.load_mednist(source, cache_dir=tmp_path / "cache", report=lambda m: None)
        ds = D.load_mednist(source, cache_dir=tmp_path / "cache", report=lambda m: None)  # and from the cache
        assert "A/caf\\xe9.png" in list(ds.paths) and len(ds) == 7
        assert [p for p, _ in ds.skipped] == ["B/broken\\xff.png"]
        for text in [*ds.paths, *(r for s in ds.skipped for r in s)]:
            text.encode("utf-8")  # printable and writable to train.log


def test_unsafe_archive_paths_are_reported_as_such(tmp_path: Path) -> None:
    """Zip entries under ../ used to be reported as "no image files found"."""
    with zipfile.ZipFile(tmp_path / "evil.zip", "w") as zf:
        for i in range(3):
            zf.writestr(f"../A/{i}.png", png_bytes(gray(i)))
            zf.writestr(f"/abs/B/{i}.png", png_bytes(gray(i + 5)))
    with pytest.raises(DataError, match=r"6 entries with unsafe paths .*\.\./A/0\.png.*never read"):
        D.load_mednist(tmp_path / "evil.zip", cache=False)
    with zipfile.ZipFile(tmp_path / "mixed.zip", "w") as zf:
        for k, c in enumerate("AB"):
            for i in range(2):
                zf.writestr(f"Data/{c}/{i}.png", png_bytes(gray(10 * k + i)))
        zf.writestr("Data/A/../../../escape.png", png_bytes(gray(50)))
    ds = D.load_mednist(tmp_path / "mixed.zip", cache=False, report=lambda m: None)
    assert len(ds) == 4 and "unsafe path" in dict(ds.skipped)["Data/A/../../../escape.png"]


def test_skip_reasons_name_the_file_not_a_bytesio(tmp_path: Path) -> None:
    root = two_classes(tmp_path / "d", extra={"A/garbage.png": b"definitely not a PNG"})
    ds = D.load_mednist(root, cache=False, report=lambda m: None)
    reason = dict(ds.skipped)["A/garbage.png"]
    assert "BytesIO" not in reason and "A/garbage.png" in reason


def test_split_errors_name_the_classes_and_the_minimum(tmp_path: Path) -> None:
    """Split errors used to name classes by index and say "needs at least 2 samples" to a class holding 12."""
    labels = np.repeat([0, 1, 2], [12, 40, 3])
    ds = D.Dataset(images=np.zeros((len(labels), 2, 2, 1), np.uint8), labels=labels,
                   paths=np.array([f"{c}/{i}.png" for c, i in zip(labels, range(len(labels)))]),
                   sha1=np.array([f"{i:040x}" for i in range(len(labels))]), class_names=("Knee", "Lung", "Skull"))
    with pytest.raises(DataError) as info:
        D.split_dataset(ds)
    text = str(info.value)
    assert "too few in Knee 12, Skull 3" in text and "Lung" not in text and "[0" not in text
    need = int(re.search(r"has (\d+) images in each of the 3 classes", text).group(1))
    D.split_indices(np.repeat([0, 1, 2], need))  # that many split ...
    with pytest.raises(DataError):
        D.split_indices(np.repeat([0, 1, 2], need - 1))  # ... one fewer does not


# ------------------------------------------------------------------------------------------------------------
# the cache


def test_changed_file_with_same_size_and_mtime_is_decoded_again(tmp_path: Path) -> None:
    """The cache used to key a folder by names, sizes and mtimes only: a rewritten image kept its stale pixels."""
    root = two_classes(tmp_path / "d")
    target = root / "A" / "1.png"
    ds1 = D.load_mednist(root, cache_dir=tmp_path / "cache", report=lambda m: None)
    st = target.stat()
    new = png_bytes(255 - gray(1))
    assert len(new) == st.st_size
    target.write_bytes(new)
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert (target.stat().st_size, target.stat().st_mtime_ns) == (st.st_size, st.st_mtime_ns)
    ds2 = D.load_mednist(root, cache_dir=tmp_path / "cache", report=lambda m: None)
    i = list(ds2.paths).index("A/1.png")
    assert np.array_equal(ds2.images[i, :, :, 0], 255 - gray(1)) and ds2.sha1[i] != ds1.sha1[i]


# ------------------------------------------------------------------------------------------------------------
# training: tracebacks turned into messages with an exit status


@pytest.mark.parametrize("where", ["file", "proc"])
def test_out_that_cannot_be_created(where: str, tiny_data: Path, cache_dir: Path, tmp_path: Path,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "a file"
    out.write_text("not a folder")
    if where == "proc":
        out = Path("/proc/self/minarn-run")
    status, _ = run_train(out, tiny_data, cache_dir, "--epochs", "1")
    assert status == 2
    line = one_error_line(capsys)
    assert "cannot create the run folder" in line and str(out) in line


def test_seed_minus_one(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert train.main(["--seed", "-1", "--out", str(tmp_path / "run")], stream=io.StringIO()) == 2
    assert "--seed" in one_error_line(capsys) and not (tmp_path / "run").exists()


def test_disk_full_while_checkpointing(tiny_data: Path, cache_dir: Path, tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """Disk full while checkpointing used to print three chained tracebacks (the data stayed safe)."""
    out = tmp_path / "run"
    calls = {"n": 0}
    real_savez = np.savez

    def savez(f, **arrays):
        if "run" in arrays:  # a checkpoint (model files have no run state)
            calls["n"] += 1
            if calls["n"] == 2:  # the checkpoint after epoch 2: half written, then the disk is full
                f.write(b"PK\x03\x04 half a checkpoint")
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_savez(f, **arrays)

    monkeypatch.setattr(atomic.np, "savez", savez)
    status, text = run_train(out, tiny_data, cache_dir, "--epochs", "2")
    assert status == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and "Traceback" not in text
    errors = [line for line in text.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, text
    assert "No space left on device" in errors[0] and str(out / "checkpoint.npz") in errors[0]
    assert "epoch 1" in errors[0] and "--resume" in errors[0]
    assert sorted(p.name for p in out.glob("*.tmp")) == []
    with np.load(out / "checkpoint.npz") as z:  # the checkpoint of epoch 1, intact
        assert json.loads(str(z["run"]))["epoch"] == 1


def _write_options(out: Path, data_path: Path, **changes) -> None:
    options = {"data": str(data_path), "epochs": 1, "batch_size": BATCH, "lr": 0.001, "seed": 123, "attention": True,
               "residual": True, "dense_activation": "gelu", "optimizer": "adamax", "augment": "none",
               "dedupe": False, "limit_per_class": None}
    options.update(changes)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps({"options": {k: v for k, v in options.items() if v != "-"}}))


def test_resumed_config_without_data(tmp_path: Path, tiny_data: Path, cache_dir: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    _write_options(tmp_path, tiny_data, data="-")
    (tmp_path / "checkpoint.npz").write_bytes(b"")
    status = train.main(["--resume", "--out", str(tmp_path), "--cache-dir", str(cache_dir)], stream=io.StringIO())
    assert status == 2
    line = one_error_line(capsys)
    assert "config.json" in line and "data" in line


def test_ctrl_c_during_the_final_evaluation(tiny_data: Path, cache_dir: Path, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(evaluate, "evaluate_loaded_run", interrupted)
    out = tmp_path / "run"
    status, text = run_train(out, tiny_data, cache_dir, "--epochs", "1")
    assert status == 130 and "Traceback" not in capsys.readouterr().err
    assert "final evaluation" in text and f"python -m minarn.evaluate {out}" in text
    assert (out / "model.npz").is_file()


def test_resume_refuses_options_it_cannot_change(finished_run: Path, tmp_path: Path, cache_dir: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """--resume used to ignore --lr, --batch-size, --data, --no-attention and --optimizer without a word."""
    out = tmp_path / "run"
    shutil.copytree(finished_run, out)
    before = (out / "checkpoint.npz").read_bytes()
    status = train.main(["--resume", "--out", str(out), "--cache-dir", str(cache_dir), "--lr", "0.5",
                         "--batch-size", "3", "--no-attention", "--optimizer", "sgd", "--data", str(tmp_path),
                         "--image-size", "32", "--channels", "1", "--epochs", "2"], stream=io.StringIO())
    assert status == 2
    line = one_error_line(capsys)
    assert "--channels" not in line  # the run's own value: no change
    for flag in ("--lr", "--batch-size", "--no-attention", "--optimizer", "--data", "--image-size"):
        assert flag in line
    assert "--epochs" not in line.split("cannot change")[1].split(";")[0]
    assert (out / "checkpoint.npz").read_bytes() == before
    # a value equal to the run's own is no change
    status = train.main(["--resume", "--out", str(out), "--cache-dir", str(cache_dir), "--lr", "0.001",
                         "--batch-size", str(BATCH), "--epochs", "1"], stream=io.StringIO())
    assert status == 0


def test_diverging_in_the_first_epoch_names_no_missing_checkpoint(tiny_data: Path, cache_dir: Path,
                                                                  tmp_path: Path) -> None:
    """--lr 1e30 used to point to a checkpoint that does not exist."""
    out = tmp_path / "run"
    status, text = run_train(out, tiny_data, cache_dir, "--epochs", "1", "--lr", "1e30")
    assert status == 1 and not (out / "checkpoint.npz").exists()
    assert "no checkpoint was written" in text and "--lr" in text
    assert "last good checkpoint" not in text


def test_second_ctrl_c_says_what_happened(tiny_data: Path, cache_dir: Path, tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """A second Ctrl-C used to stop without a word."""
    original = ARNCNN.loss_and_grads
    calls = {"n": 0}

    def loss_and_grads(self, x, y):
        calls["n"] += 1
        if calls["n"] == 2:
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)
        return original(self, x, y)

    monkeypatch.setattr(ARNCNN, "loss_and_grads", loss_and_grads)
    out = tmp_path / "run"
    status, text = run_train(out, tiny_data, cache_dir, "--epochs", "1")
    assert status == 130
    assert "second" in text and "no checkpoint" in text


def test_oversized_batch_is_warned_about(tiny_data: Path, cache_dir: Path, tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    def stop(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(train, "fit", stop)
    status, text = run_train(tmp_path / "run", tiny_data, cache_dir, "--batch-size", "100")
    assert status == 130
    train_size = json.loads((tmp_path / "run" / "config.json").read_text())["split"]["train"]["total"]
    assert f"warning: --batch-size 100 is larger than the training split ({train_size} images)" in text


# ------------------------------------------------------------------------------------------------------------
# predict and evaluate: edited model files, backend, NaN weights, other data


def _edited_model(finished_run: Path, tmp_path: Path, config_change=None, weight_change=None) -> Path:
    with np.load(finished_run / "model.npz") as z:
        arrays = {k: z[k] for k in z.files}
    config = json.loads(str(arrays["__config__"]))
    if config_change:
        config_change(config)
    arrays["__config__"] = np.array(json.dumps(config))
    if weight_change:
        weight_change(arrays)
    path = tmp_path / "edited" / "model.npz"
    path.parent.mkdir(exist_ok=True)
    np.savez(path, **arrays)
    return path


@pytest.mark.parametrize("change, named", [
    (lambda c: c.update(colour="blue"), "colour"),
    (lambda c: c.pop("input_shape"), "input_shape"),
    (lambda c: c.update(dtype="complex128"), "complex128"),
    (lambda c: c.update(input_shape=[4000, 4000, 1]), "input_shape"),
    (lambda c: c.update(num_classes=10**8), "num_classes"),
    (lambda c: c.update(input_shape="64x64"), "input_shape"),
])
def test_edited_model_configs_in_predict(change, named: str, finished_run: Path, tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    """Edited configs used to give tracebacks, or (input_shape) allocate gigabytes before refusing."""
    model = _edited_model(finished_run, tmp_path, config_change=change)
    image = sorted((sample_path() / "CXR").iterdir())[0]
    tracemalloc.start()
    try:
        status = predict.main([str(model), str(image)], stdout=io.StringIO())
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert status == 2
    line = one_error_line(capsys, "python -m minarn.predict")
    assert named in line and str(model) in line
    assert peak < 200e6, f"{peak / 1e6:.0f} MB allocated before refusing"


def test_npz_member_declaring_more_than_it_holds_is_refused(finished_run: Path, tmp_path: Path) -> None:
    """A model file whose array header claims a huge shape is refused before numpy allocates it."""
    path = _edited_model(finished_run, tmp_path)
    with zipfile.ZipFile(path) as zf:
        members = {i.filename: zf.read(i) for i in zf.infolist()}
    name = next(n for n in members if n.startswith("dense_1"))
    blob = members[name]
    header_end = blob.index(b"\n") + 1
    header = blob[:header_end].decode("latin1")
    shape = re.search(r"'shape': \(([^)]*)\)", header).group(0)
    new_header = header.replace(shape, "'shape': (100000, 100000)")
    new_header = new_header[:-1].ljust(len(header) - 1) + "\n"
    members[name] = new_header.encode("latin1") + blob[header_end:]
    with zipfile.ZipFile(path, "w") as zf:
        for n, b in members.items():
            zf.writestr(n, b)
    with pytest.raises(ValueError, match=r"declares .*100000, 100000"):
        load_model(path)


def test_nan_weights_are_refused(finished_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """NaN weights used to print nan probabilities with exit status 0."""
    def poison(arrays):
        key = next(k for k in arrays if k.startswith("dense_1"))
        arrays[key] = arrays[key].copy()
        arrays[key].flat[0] = np.nan

    model = _edited_model(finished_run, tmp_path, weight_change=poison)
    image = sorted((sample_path() / "CXR").iterdir())[0]
    assert predict.main([str(model), str(image)], stdout=io.StringIO()) == 2
    line = one_error_line(capsys, "python -m minarn.predict")
    assert "NaN" in line and "dense_1" in line


@pytest.mark.parametrize("tool", ["predict", "evaluate"])
def test_bogus_backend_in_predict_and_evaluate(tool: str, finished_run: Path, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(kernels, "_active", None)
    monkeypatch.setenv(kernels.ENV_VAR, "bogus")
    image = sorted((sample_path() / "CXR").iterdir())[0]
    if tool == "predict":
        status = predict.main([str(finished_run), str(image)], stdout=io.StringIO())
    else:
        status = evaluate.main([str(finished_run), "--report-dir", str(tmp_path / "r"), "--no-figures"])
    assert status == 2
    line = one_error_line(capsys, f"python -m minarn.{tool}")
    assert "bogus" in line and kernels.ENV_VAR in line


def test_evaluate_warns_when_the_data_differ(finished_run: Path, tiny_data: Path, tmp_path: Path,
                                             cache_dir: Path) -> None:
    """evaluate --data on other data (the two classes' images swapped) used to give no warning."""
    swapped = tmp_path / "MedNIST"
    shutil.copytree(tiny_data / "CXR", swapped / "Hand")
    shutil.copytree(tiny_data / "Hand", swapped / "CXR")
    messages: list[str] = []
    result = evaluate.evaluate_run(finished_run, data=str(swapped), report=messages.append, cache_dir=str(cache_dir),
                                   make_figures=False, out_dir=tmp_path / "report")
    assert any("differ" in w and "data_identity" in w for w in result["warnings"])
    assert any(m.startswith("warning:") and "differ" in m for m in messages)
    same = evaluate.evaluate_run(finished_run, data=str(tiny_data), report=None, cache_dir=str(cache_dir),
                                 make_figures=False, out_dir=tmp_path / "report2")
    assert same["warnings"] == []


# ------------------------------------------------------------------------------------------------------------
# kept from the first sweep: what already held, so that it keeps holding


class _Payload:
    """Unpickling this creates ``marker``: code run from a file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_pickled_payloads_never_run(finished_run: Path, tmp_path: Path, tiny_data: Path, cache_dir: Path,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    """A model file, a checkpoint and a cache file holding a pickle: refused or ignored, the pickle never loaded."""
    marker = tmp_path / "code-ran"
    payload = np.array([_Payload(marker)], dtype=object)
    model = _edited_model(finished_run, tmp_path, weight_change=lambda a: a.update({"dense/bias": payload}))
    image = min((sample_path() / "CXR").iterdir())
    assert predict.main([str(model), str(image)], stdout=io.StringIO()) == 2
    assert "load_model" in one_error_line(capsys, "python -m minarn.predict")
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    with np.load(run / "checkpoint.npz") as z:
        arrays = {k: z[k] for k in z.files}
    arrays["run"] = payload
    np.savez(run / "checkpoint.npz", **arrays)
    assert train.main(["--resume", "--out", str(run), "--cache-dir", str(cache_dir), "--epochs", "2"],
                      stream=io.StringIO()) == 2
    assert "cannot resume" in one_error_line(capsys)
    cache = tmp_path / "cache"
    D.load_mednist(tiny_data, cache_dir=cache, report=lambda m: None)
    (cached,) = cache.glob("*.npz")
    with np.load(cached) as z:
        arrays = {k: z[k] for k in z.files}
    np.savez(cached, **{**arrays, "labels": payload})
    assert len(D.load_mednist(tiny_data, cache_dir=cache, report=lambda m: None)) == 2 * PER_CLASS
    assert not marker.exists()


def test_kill_9_while_saving_leaves_the_old_file_whole(tmp_path: Path) -> None:
    """A process killed (SIGKILL) in the middle of an atomic save leaves the previous file as it was, and only a
    temporary file beside it (which the next training start removes)."""
    target = tmp_path / "checkpoint.npz"
    np.savez(target, epoch=np.array(1))
    code = ("import sys, time, numpy as np\nfrom minarn import atomic\n"
            "def slow(f, **a):\n    f.write(b'PK half'); f.flush(); print('writing', flush=True); time.sleep(60)\n"
            "atomic.np.savez = slow\natomic.save_npz_atomic(sys.argv[1], {'epoch': np.array(2)})\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(Path(D.__file__).parents[1]),
                                                                      os.environ.get("PYTHONPATH")]))}
    proc = subprocess.Popen([sys.executable, "-c", code, str(target)], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stdout.readline().strip() == "writing"
        proc.kill()
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
        proc.stdout.close()
    with np.load(target) as z:
        assert int(z["epoch"]) == 1
    assert len(list(tmp_path.glob("checkpoint.npz.*.tmp"))) == 1
