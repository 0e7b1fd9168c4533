"""Medical MNIST (MedNIST): load, cache, split, find duplicates, and iterate in batches.

Layout read: ``<root>/<ClassName>/<file>.jpeg`` from a folder or straight from a ``.tar``, ``.tar.gz``
(``.tgz``, ``.tar.bz2``, ``.tar.xz``) or ``.zip`` archive. ``<root>`` may be the folder/archive itself or
one top folder inside it (the MONAI archive has ``MedNIST/``). Class indices follow the sorted class names:
AbdomenCT 0, BreastMRI 1, CXR 2, ChestCT 3, Hand 4, HeadCT 5 (as Keras' ``flow_from_dataframe`` and MONAI).
A dataset that comes split, ``<root>/train/<ClassName>/...``, ``<root>/valid/...`` (or ``val/``) and
``<root>/test/...``, keeps its parts (``Dataset.part``) and :func:`split_dataset` uses them as they are.
Images are decoded to grayscale (one channel) or RGB (three), at any square size.

The split reproduces the paper's template (``docs/training-spec.md`` section 2): sklearn's stratified
``train_test_split(train_size=0.9, random_state=123)``, then the remaining 10 % split 60/40 into validation
and test, re-implemented here in NumPy. On the full set: train 53,058 / valid 3,537 / test 2,359. Other
fractions (train, valid, test) split the same way: train first, then the rest valid : test.

Pixels: 8-bit images are read as they are (colour converted to luma by Pillow, ITU-R 601-2); 16-bit, 32-bit
integer and float images (PNG ``I;16``, TIFF ``I``/``F``) are scaled linearly from the image's own smallest to its
largest value onto 0..255 (a constant image gives 0); a float image with NaN or infinite values, or a mode that has
no grayscale conversion (``LAB``), is refused by name. Files over :data:`MAX_FILE_BYTES` and images over
:data:`MAX_IMAGE_PIXELS` are reported and not read; so are FIFOs, devices and sockets (nothing can block), links
that lead outside an archive and archive entries with unsafe paths (absolute, or through ``..``). Hard links and
symbolic links to files inside an archive are read; a symbolic link to a folder inside an archive is reported; in
a folder, symbolically linked class folders are followed (a link loop is not).

Without arguments :func:`load_mednist` reads the 600-image sample shipped in ``minarn/sample`` (see
:func:`sample_path`); :func:`minarn.download.download_mednist` fetches the full set.
"""

from __future__ import annotations

import hashlib
import io
import logging
import math
import os
import posixpath
import re
import stat
import tarfile
import time
import zipfile
import zlib
from collections import Counter
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image

from minarn.atomic import save_npz_atomic

__all__ = [
    "CACHE_ENV",
    "IMAGE_EXTENSIONS",
    "IMAGE_SIZE",
    "MAX_FILE_BYTES",
    "MAX_IMAGE_PIXELS",
    "MEDNIST_CLASSES",
    "SPLIT_FRACTIONS",
    "DataError",
    "Dataset",
    "Splits",
    "Batch",
    "balanced_class_weights",
    "batches",
    "count_table",
    "default_cache_dir",
    "describe_error",
    "file_problem",
    "duplicate_groups",
    "copies_in_train",
    "duplicates_in_train",
    "iterate_batches",
    "load_mednist",
    "one_hot",
    "remove_duplicates",
    "sample_path",
    "scale_images",
    "smallest_balanced_split",
    "split_dataset",
    "split_indices",
    "split_stages",
    "stratified_split",
]

logger = logging.getLogger(__name__)

IMAGE_SIZE = 64
MEDNIST_CLASSES = ("AbdomenCT", "BreastMRI", "CXR", "ChestCT", "Hand", "HeadCT")
# Decided by extension, not by sniffing: a README or .DS_Store is ignored, a broken "x.jpeg" is reported.
IMAGE_EXTENSIONS = frozenset(
    {".jpeg", ".jpg", ".jpe", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".pgm", ".ppm", ".pbm", ".pnm"}
)
CACHE_ENV = "MINARN_CACHE"
MAX_FILE_BYTES = 256 << 20  # one image file (or archive member) larger than this is reported and not read
MAX_IMAGE_PIXELS = 50_000_000  # an image with more pixels is reported and not decoded (Pillow's bomb limit is 89 M)
SPLIT_FRACTIONS = (0.9, 0.06, 0.04)  # the paper's train / valid / test
CHANNEL_MODES = {1: "L", 3: "RGB"}  # channels -> the Pillow mode images are converted to
# Folder names of a dataset that comes split (compared in lower case) -> the part they hold.
PART_FOLDERS = {"train": "train", "valid": "valid", "val": "valid", "validation": "valid", "test": "test"}
PARTS = ("train", "valid", "test")
_CACHE_VERSION = 2  # 2: 16-bit/float images scaled by their range, tar links read
_RESAMPLE = {"nearest": Image.Resampling.NEAREST, "bilinear": Image.Resampling.BILINEAR}
_TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")

Report = Callable[[str], None]


class DataError(ValueError):
    """The data source is missing, empty, corrupt or not laid out as ``<root>/<ClassName>/<image>``."""


# ----------------------------------------------------------------------------------------------------------
# Paths


def sample_path() -> Path:
    """Folder of the MedNIST sample shipped with minarn (100 images per class, CC BY-SA 4.0).

    Returns ``.../minarn/sample/MedNIST`` (it holds the six class folders); the default data source.
    """
    return Path(__file__).resolve().parent / "sample" / "MedNIST"


def default_cache_dir() -> Path:
    """Cache folder: ``$MINARN_CACHE`` if set, else ``~/.cache/minarn``. Holds decoded arrays and downloads."""
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "minarn"


# ----------------------------------------------------------------------------------------------------------
# The dataset container


@dataclass(frozen=True, eq=False)
class Dataset:
    """Decoded images, labels and per-file provenance, in one fixed order (sorted by path after loading).

    Shapes: images (N, H, W, C) uint8, C = 1 (grayscale) or 3 (RGB); labels (N,) int64 in [0, num_classes);
    paths (N,) str, each relative to the dataset root, e.g. ``"CXR/001234.jpeg"``; sha1 (N,) str, hex SHA-1
    of the file's raw bytes (equal digests = byte-identical files). ``skipped`` lists ``(path, reason)`` for
    files that could not be decoded, ``ignored`` the files that are not images of the layout (README,
    .DS_Store, ...). ``part`` (N,) str, "train" / "valid" / "test", when the source came split into such
    folders (paths then start with the folder, ``"train/CXR/1.png"``); None otherwise.
    """

    images: np.ndarray
    labels: np.ndarray
    paths: np.ndarray
    sha1: np.ndarray
    class_names: tuple[str, ...]
    source: str = ""
    skipped: tuple[tuple[str, str], ...] = ()
    ignored: tuple[str, ...] = ()
    part: np.ndarray | None = None

    def __post_init__(self) -> None:
        n = len(self.images)
        if self.images.ndim != 4 or self.images.shape[-1] not in CHANNEL_MODES or self.images.dtype != np.uint8:
            raise ValueError(
                f"Dataset: images must be uint8 (N, H, W, 1 or 3), got {self.images.dtype} {self.images.shape}")
        for name in ("labels", "paths", "sha1") + (("part",) if self.part is not None else ()):
            if len(getattr(self, name)) != n:
                raise ValueError(f"Dataset: {name} has {len(getattr(self, name))} entries, images has {n}")

    def __len__(self) -> int:
        return len(self.images)

    def __repr__(self) -> str:
        counts = ", ".join(f"{c} {k}" for c, k in zip(self.class_names, self.class_counts()))
        return f"Dataset({len(self)} images {self.images.shape[1:]}, {counts}; source={self.source!r})"

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def class_counts(self) -> np.ndarray:
        """Images per class. Shape (num_classes,), int64."""
        return np.bincount(self.labels, minlength=self.num_classes).astype(np.int64)

    def subset(self, index: np.ndarray | Sequence[int]) -> Dataset:
        """The images at ``index`` (integer indices, in that order), with the same classes and source."""
        index = np.asarray(index, dtype=np.int64)
        return Dataset(
            images=self.images[index],
            labels=self.labels[index],
            paths=self.paths[index],
            sha1=self.sha1[index],
            class_names=self.class_names,
            source=self.source,
            skipped=self.skipped,
            ignored=self.ignored,
            part=None if self.part is None else self.part[index],
        )


# ----------------------------------------------------------------------------------------------------------
# Reading a folder or an archive


def _is_tar_name(path: Path) -> bool:
    return path.name.lower().endswith(_TAR_SUFFIXES)


def _parts(name: str) -> tuple[str, ...]:
    """Components of an archive/folder member name; "./MedNIST/x" and "MedNIST/x" give the same parts."""
    return tuple(p for p in name.split("/") if p not in ("", "."))


def _is_image_name(name: str) -> bool:
    parts = _parts(name)
    if not parts or any(p.startswith(".") or p == "__MACOSX" for p in parts):
        return False  # hidden files, macOS resource forks
    base = parts[-1]
    dot = base.rfind(".")
    return dot > 0 and base[dot:].lower() in IMAGE_EXTENSIONS


def _printable(name: str) -> str:
    """A file name as text that can be printed and written as UTF-8: bytes that are not UTF-8 (which Python keeps
    as lone surrogates) become ``\\xe9`` escapes. The file itself is still read under its real name."""
    try:
        return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:
        return name.encode("utf-8", "backslashreplace").decode("utf-8")


def _file_kind(mode: int) -> str:
    kinds = [(stat.S_ISFIFO, "FIFO (named pipe)"), (stat.S_ISCHR, "character device"), (stat.S_ISBLK, "block device"),
             (stat.S_ISSOCK, "socket"), (stat.S_ISDIR, "folder")]
    return next((name for test, name in kinds if test(mode)), "special file")


def file_problem(st: os.stat_result) -> str | None:
    """Why a file with status ``st`` is not read as an image (not a regular file, or over MAX_FILE_BYTES); None
    if it may be read. Checked before opening it, so that a FIFO or a device can never block a read."""
    if not stat.S_ISREG(st.st_mode):
        return f"not a regular file (a {_file_kind(st.st_mode)}): not read"
    return _size_problem(st.st_size)


def _size_problem(size: int) -> str | None:
    if size > MAX_FILE_BYTES:
        return (f"{size:,} bytes, more than the limit of {MAX_FILE_BYTES:,} for one image file "
                f"(minarn.data.MAX_FILE_BYTES): not read")
    return None


def _folder_listing(root: Path) -> tuple[list[tuple[str, str, int]], dict[str, str]]:
    """Every file under ``root``, symbolically linked folders followed (each real folder once, so a link loop
    ends): ([(posix path relative to root, stamp, size)] sorted by path, {path: why it is not read}).

    The stamp (size, mtime, ctime and inode) keys the cache: rewriting a file changes its ctime even when its
    size and mtime are put back. Costs one ``stat`` per file, as the size alone would.
    """
    out: list[tuple[str, str, int]] = []
    problems: dict[str, str] = {}
    visited = {os.path.realpath(root)}
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        keep = []
        for d in sorted(dirnames):
            real = os.path.realpath(os.path.join(dirpath, d))
            if real not in visited:
                visited.add(real)
                keep.append(d)
        dirnames[:] = keep
        for fname in filenames:
            full = os.path.join(dirpath, fname)
            rel = Path(os.path.relpath(full, root)).as_posix()
            try:
                st = os.stat(full)
            except OSError:  # dangling symlink: listed, and reported as unreadable when read
                out.append((rel, "missing", -1))
                continue
            problem = file_problem(st)
            if problem and not stat.S_ISREG(st.st_mode):
                problems[rel] = problem
            out.append((rel, f"{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}:{st.st_ino}", st.st_size))
    out.sort()
    return out, problems


def file_digest(path: Path, algorithm: str = "sha1") -> str:
    """Hex digest of a file's bytes (``hashlib`` algorithm name), read in 1 MB blocks."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _is_unsafe(name: str) -> bool:
    """An archive entry whose path is absolute or goes through ``..``: it would lead outside the archive."""
    return name.startswith(("/", "\\")) or bool(re.match(r"[A-Za-z]:", name)) or ".." in name.split("/")


def _read_tar_link(tf: tarfile.TarFile, member: tarfile.TarInfo) -> bytes | Exception:
    """The bytes a hard or symbolic link inside a tar stands for, looked up among the archive's own members
    (tarfile never follows a link onto the file system); a missing target, a folder or a loop is the reason."""
    kind = "hard link" if member.islnk() else "symbolic link"
    try:
        fobj = tf.extractfile(member)
        if fobj is None:
            return DataError(f"{kind} to the folder {member.linkname}: not followed")
        data = fobj.read(MAX_FILE_BYTES + 1)
    except KeyError:
        return DataError(f"{kind} to {member.linkname}, which is not in the archive: not read")
    except RecursionError:
        return DataError(f"{kind} to {member.linkname}: a loop of links, not read")
    return DataError(_size_problem(len(data)) or "") if len(data) > MAX_FILE_BYTES else data


def _zip_link_target(zf: zipfile.ZipFile, info: zipfile.ZipInfo, members: set[str]) -> str | None:
    """The member a zip symbolic link (Unix mode in ``external_attr``) points to, if it is in the archive."""
    target = zf.read(info).decode("utf-8", "replace")
    name = posixpath.normpath(posixpath.join(posixpath.dirname(info.filename), target))
    return name if name in members and not target.startswith("/") else None


def _read_archive(path: Path) -> tuple[list[str], dict[str, bytes | Exception], list[tuple[str, str]]]:
    """All file names of a tar/zip archive, the bytes of those that look like images, and (name, reason) of
    the links that are not read (to folders).

    Members over MAX_FILE_BYTES are not read (their reason is recorded instead), nor are entries with unsafe
    paths. Hard links and symbolic links to files are read from the archive's own members. Reading a member
    that fails in a zip (bad CRC) is recorded per file; a broken tar stream is an error for the whole archive,
    since nothing after the damage can be read.
    """
    names: list[str] = []
    blobs: dict[str, bytes | Exception] = {}
    notes: list[tuple[str, str]] = []
    try:
        if _is_tar_name(path) or (not path.name.lower().endswith(".zip") and tarfile.is_tarfile(path)):
            with tarfile.open(path, "r:*") as tf:
                links = []
                for member in tf:  # sequential: a .tar.gz is read in one pass
                    if member.islnk() or member.issym():
                        links.append(member)
                    elif not member.isfile():
                        continue
                    names.append(member.name)
                    if member.isfile() and _is_image_name(member.name) and not _is_unsafe(member.name):
                        too_big = _size_problem(member.size)
                        fobj = None if too_big else tf.extractfile(member)
                        blobs[member.name] = DataError(too_big) if too_big else (fobj.read() if fobj else b"")
                folders = {posixpath.normpath(m.name) for m in tf.getmembers() if m.isdir()}
                folders |= {posixpath.dirname(posixpath.normpath(m.name)) for m in tf.getmembers()}
                for member in links:
                    if _is_unsafe(member.name):
                        continue
                    if _is_image_name(member.name):
                        blobs[member.name] = _read_tar_link(tf, member)
                        continue
                    target = posixpath.normpath(posixpath.join(posixpath.dirname(member.name), member.linkname))
                    if member.issym() and target in folders and not _parts(member.name)[-1].startswith("."):
                        notes.append((_printable(member.name), f"symbolic link to the folder {member.linkname} "
                                      "inside the archive: not followed (unpack the archive, or put the folder "
                                      "in place of the link)"))
        elif zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as zf:
                members = {i.filename for i in zf.infolist()}
                for info in zf.infolist():
                    if info.is_dir():
                        continue
                    names.append(info.filename)
                    if _is_image_name(info.filename) and not _is_unsafe(info.filename):
                        try:
                            source = info
                            if stat.S_ISLNK(info.external_attr >> 16):
                                link_target = _zip_link_target(zf, info, members)
                                if link_target is None:
                                    raise DataError("symbolic link to a file that is not in the archive: not read")
                                source = zf.getinfo(link_target)
                            too_big = _size_problem(source.file_size)
                            blobs[info.filename] = DataError(too_big) if too_big else zf.read(source)
                        except (zipfile.BadZipFile, zlib.error, OSError, EOFError, DataError) as exc:
                            blobs[info.filename] = exc
        else:
            raise DataError(f"{path}: not a folder or a readable .tar, .tar.gz or .zip archive")
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, zlib.error, OSError) as exc:
        raise DataError(
            f"{path}: cannot read the archive (corrupt or truncated?): {type(exc).__name__}: {exc}"
        ) from exc
    return names, blobs, notes


def _split_parts(roots: Collection[tuple[str, ...]], where: str) -> dict[tuple[str, ...], str] | None:
    """The parts of a dataset that comes split: {class-folder root: "train" / "valid" / "test"} when the roots
    are sibling folders named after the parts (``PART_FOLDERS``), None when they are not."""
    parents = {r[:-1] for r in roots if r}
    if len(parents) != 1 or any(not r or r[-1].lower() not in PART_FOLDERS for r in roots):
        return None
    parts = {r: PART_FOLDERS[r[-1].lower()] for r in roots}
    seen = Counter(parts.values())
    twice = [p for p, k in seen.items() if k > 1]
    if twice:
        names = ", ".join(sorted(f"{r[-1]}/" for r, p in parts.items() if p in twice))
        raise DataError(f"{where}: the folders {names} are all the {twice[0]} part; keep one of them")
    missing = [p for p in PARTS if p not in seen]
    if missing:
        found = ", ".join(f"{r[-1]}/" for r in sorted(roots))
        wanted = " and ".join(f"{p}/" + (" (or val/)" if p == "valid" else "") for p in missing)
        raise DataError(f"{where}: has {found} with class folders but no {wanted}; a split dataset needs "
                        "train/, valid/ and test/, each holding <ClassName>/ folders (or point to one part)")
    return parts


def _layout(names: Sequence[str], where: str
            ) -> tuple[list[tuple[str, str, str, str]], list[str], list[tuple[str, str]]]:
    """Find the class folders among file names.

    Returns ([(path relative to the dataset root, class name, name in the source, part)] sorted by the
    relative path, [ignored names], [(name, reason)] of image entries with unsafe paths, which are never read).
    The dataset root is the parent of the class folders: the folder that
    holds the most image files two levels down; files elsewhere are ignored (and reported). When the class
    folders sit in sibling folders train/, valid/ (or val/) and test/, their parent is the root, the relative
    paths start with that folder and part says which it is; otherwise part is "". Paths and class names are
    made printable (_printable).
    """
    images: list[tuple[tuple[str, ...], str]] = []
    ignored: list[str] = []
    unsafe: list[str] = []
    for name in dict.fromkeys(names):  # a tar may hold a name twice; the last copy wins, as on extraction
        if _is_unsafe(name):
            unsafe.append(name)
        elif _is_image_name(name):
            images.append((_parts(name), name))
        else:
            ignored.append(_printable(name))
    if not images and unsafe:
        shown = ", ".join(_printable(n) for n in unsafe[:3]) + (", ..." if len(unsafe) > 3 else "")
        raise DataError(f"{where}: {len(unsafe)} entries with unsafe paths (absolute, or through ..: {shown}), "
                        "which minarn never reads, and no other image files")
    if not images:
        raise DataError(f"{where}: no image files found (expected <root>/<ClassName>/*.jpeg)")
    depths = Counter(len(parts) for parts, _ in images)
    depth = max(depths, key=lambda d: (depths[d], d))
    if depth < 2:
        raise DataError(f"{where}: the images are not in class folders (expected <root>/<ClassName>/*.jpeg)")
    roots = Counter(parts[: depth - 2] for parts, _ in images if len(parts) == depth)
    split_parts = _split_parts(roots, where) if len(roots) > 1 else {}
    if split_parts is None:
        found = ", ".join(sorted("/".join(r) or "." for r in roots))
        raise DataError(f"{where}: class folders under several roots ({found}); point to one of them")
    entries: dict[str, tuple[str, str, str, str]] = {}
    for parts, name in images:
        root = parts[: depth - 2]
        if len(parts) == depth and root in roots:
            rel = _printable("/".join(parts[-3:] if split_parts else parts[-2:]))
            # "./A/x" and "A/x" in a tar: one
            entries[rel] = (rel, _printable(parts[-2]), name, split_parts.get(root, ""))
        else:
            ignored.append(_printable(name))
    bad = [(_printable(n), "unsafe path (absolute, or through ..): not read") for n in unsafe
           if _is_image_name(posixpath.basename(n))]
    return sorted(entries.values()), sorted(ignored), bad


def _convert(img: Image.Image, mode: str = "L") -> Image.Image:
    """A decoded image in ``mode`` ('L' 8-bit grayscale or 'RGB'). 16-bit, 32-bit integer and float images are
    scaled linearly from their smallest to their largest value onto 0..255 (a constant image gives 0), then
    converted; a float image with NaN or infinite values and a mode without a conversion raise ValueError
    naming them."""
    if img.mode in ("I", "F") or img.mode.startswith("I;16"):
        a = np.asarray(img, dtype=np.float64)
        if not np.isfinite(a).all():
            raise ValueError(f"a {img.mode} (float) image with NaN or infinite pixel values")
        lo, hi = float(a.min()), float(a.max())
        scaled = (a - lo) * 255 / (hi - lo) if hi > lo else np.zeros_like(a)
        img = Image.fromarray(np.round(scaled).astype(np.uint8))
    if img.mode == mode:
        return img
    try:
        return img.convert(mode)
    except ValueError as err:
        raise ValueError(f"image mode {img.mode} has no conversion to {mode} ({err})") from None


def describe_error(exc: BaseException, name: str) -> str:
    """``"Type: message"`` of a decoding error, with Pillow's ``<_io.BytesIO object at 0x...>`` replaced by
    the file's name."""
    return re.sub(r"<_io\.BytesIO object at 0x[0-9a-fA-F]+>", repr(name), f"{type(exc).__name__}: {exc}")


def _decode(data: bytes, size: int, resample: int, channels: int = 1) -> np.ndarray:
    """Decode one image file to grayscale 'L' (channels 1) or 'RGB' (channels 3) (:func:`_convert`), resized to
    (size, size) only if needed. Shape (size, size) uint8 for one channel, (size, size, 3) for three. An image
    over MAX_IMAGE_PIXELS raises ValueError before its pixels are decoded."""
    mode = CHANNEL_MODES[channels]
    with Image.open(io.BytesIO(data)) as img:
        w, h = img.size
        if w * h > MAX_IMAGE_PIXELS:
            raise ValueError(f"a {w}x{h} image, {w * h:,} pixels, more than the limit of {MAX_IMAGE_PIXELS:,} "
                             "(minarn.data.MAX_IMAGE_PIXELS): not decoded")
        img.load()  # decodes fully: a truncated JPEG raises here (LOAD_TRUNCATED_IMAGES stays False)
        converted = _convert(img, mode)
        if converted.size != (size, size):
            converted = converted.resize((size, size), resample)
        return np.asarray(converted, dtype=np.uint8)


# ----------------------------------------------------------------------------------------------------------
# Cache


def _cache_file(cache_dir: Path, key: str, image_size: int, channels: int = 1) -> Path:
    return cache_dir / f"mednist-{image_size}px-{'rgb-' if channels == 3 else ''}{key[:24]}.npz"


def _to_arrays(ds: Dataset, key: str) -> dict[str, np.ndarray]:
    return {
        "key": np.array(key),
        "images": ds.images,
        "labels": ds.labels,
        "paths": ds.paths,
        "sha1": ds.sha1,
        "class_names": np.array(ds.class_names, dtype=str),
        "skipped_paths": np.array([p for p, _ in ds.skipped], dtype=str),
        "skipped_reasons": np.array([r for _, r in ds.skipped], dtype=str),
        "ignored": np.array(ds.ignored, dtype=str),
        **({"part": ds.part} if ds.part is not None else {}),
    }


def _load_cached(path: Path, key: str, source: str, shape: tuple[int, int, int]) -> Dataset | None:
    """The cached dataset if ``path`` holds one for ``key`` with images of ``shape`` (H, W, C); None if absent,
    stale or unreadable."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            if str(z["key"]) != key:
                return None
            images = z["images"]
            if images.shape[1:] != shape:
                return None
            return Dataset(
                images=images,
                labels=z["labels"].astype(np.int64),
                paths=z["paths"],
                sha1=z["sha1"],
                class_names=tuple(str(c) for c in z["class_names"]),
                source=source,
                skipped=tuple(zip(map(str, z["skipped_paths"]), map(str, z["skipped_reasons"]))),
                ignored=tuple(str(s) for s in z["ignored"]),
                part=z["part"] if "part" in z.files else None,
            )
    except Exception as exc:  # noqa: BLE001 - a damaged cache is never fatal: decode again and overwrite it
        logger.warning("minarn.data: ignoring unreadable cache file %s (%s)", path, exc)
        return None


# ----------------------------------------------------------------------------------------------------------
# Loading


def _reporters(report: Report | None) -> tuple[Report, Report]:
    """(info, warning) callbacks: both ``report`` if given, else the module logger."""
    if report is not None:
        return report, report
    return logger.info, logger.warning


def _report_problems(ds: Dataset, warn: Report, info: Report) -> None:
    if ds.skipped:
        shown = [f"  {p}: {r}" for p, r in ds.skipped[:50]]
        more = [f"  ... and {len(ds.skipped) - 50} more (see Dataset.skipped)"] if len(ds.skipped) > 50 else []
        warn("\n".join([f"{ds.source}: skipped {len(ds.skipped)} file(s) that could not be decoded:", *shown, *more]))
    if ds.ignored:
        examples = ", ".join(ds.ignored[:5]) + (", ..." if len(ds.ignored) > 5 else "")
        info(f"{ds.source}: ignored {len(ds.ignored)} file(s) that are not images in class folders: {examples}")


def load_mednist(
    source: str | os.PathLike[str] | None = None,
    *,
    image_size: int = IMAGE_SIZE,
    channels: int = 1,
    resample: str = "nearest",
    cache: bool = True,
    cache_dir: str | os.PathLike[str] | None = None,
    report: Report | None = None,
) -> Dataset:
    """Load a MedNIST-style image set: decode, convert to grayscale (or RGB), and cache the arrays.

    Parameters
    ----------
    source : folder or .tar/.tar.gz/.zip archive laid out as ``[<top>/]<ClassName>/<image>``, or split into
        ``[<top>/]train|valid|val|test/<ClassName>/<image>`` (``Dataset.part``); default: the shipped sample
        (:func:`sample_path`). Any format Pillow reads by extension (IMAGE_EXTENSIONS).
    image_size : side of the square output. Images are converted to 'L' (``channels`` 1) or 'RGB'
        (``channels`` 3; grayscale files get three equal channels) and resized only when their size
        differs, with ``resample`` = "nearest" (default: what Keras' ``load_img`` uses in the paper's
        template) or "bilinear". The MedNIST files are all 64x64, so nothing is resampled there.
    cache, cache_dir : keep the decoded arrays in ``cache_dir`` (default :func:`default_cache_dir`) as an
        uncompressed .npz, keyed by the source (archive: SHA-1 of its bytes; folder: its path and every
        file's name, size, mtime, ctime and inode) and by image_size/channels/resample. A changed source is decoded
        again.
    report : callback for messages (e.g. ``print``); default: the ``minarn.data`` logger (skipped files
        as warnings).

    Returns
    -------
    Dataset, sorted by relative path: images (N, image_size, image_size, channels) uint8, labels (N,) int64.
    Files that fail to decode are left out and listed in ``Dataset.skipped`` (path, reason).

    Raises
    ------
    DataError : the source is missing, empty, not an archive, corrupt, or has fewer than two classes;
        or a class folder none of whose images decode.
    """
    info, warn = _reporters(report)
    if resample not in _RESAMPLE:
        raise ValueError(f"load_mednist: resample must be one of {sorted(_RESAMPLE)}, got {resample!r}")
    if int(image_size) < 1:
        raise ValueError(f"load_mednist: image_size must be positive, got {image_size!r}")
    if channels not in CHANNEL_MODES:
        raise ValueError(f"load_mednist: channels must be 1 (grayscale) or 3 (RGB), got {channels!r}")
    image_size = int(image_size)
    src = sample_path() if source is None else Path(source).expanduser()
    where = str(src)
    try:
        mode = src.stat().st_mode
    except FileNotFoundError:
        raise DataError(f"{where}: no such file or folder") from None
    except OSError as exc:
        raise DataError(f"{where}: cannot read: {exc}") from None
    if not (stat.S_ISDIR(mode) or stat.S_ISREG(mode)):
        raise DataError(f"{where}: a {_file_kind(mode)}, not a folder or an archive file; expected a folder or a "
                        ".tar/.tar.gz/.zip archive (nothing was read from it)")

    listing: list[tuple[str, str, int]] = []
    problems: dict[str, str] = {}
    if src.is_dir():
        listing, problems = _folder_listing(src)
        if not listing:
            raise DataError(f"{where}: the folder is empty (expected <root>/<ClassName>/*.jpeg)")
        ident = hashlib.sha1(f"folder\0{src.resolve()}".encode("utf-8", "surrogateescape"))
        for rel, stamp, _ in listing:
            ident.update(f"\0{rel}\0{stamp}".encode("utf-8", "surrogateescape"))
        identity = ident.hexdigest()
    else:
        try:
            identity = "archive\0" + file_digest(src)
        except OSError as exc:
            raise DataError(f"{where}: cannot read: {exc}") from exc
    color = "" if channels == 1 else f"\0{CHANNEL_MODES[channels]}"  # grayscale keeps the keys of earlier caches
    key = hashlib.sha1(f"v{_CACHE_VERSION}\0{identity}\0{image_size}\0{resample}{color}".encode()).hexdigest()

    cache_path = _cache_file(Path(cache_dir).expanduser() if cache_dir else default_cache_dir(), key, image_size,
                             channels)
    if cache:
        t0 = time.perf_counter()
        cached = _load_cached(cache_path, key, where, (image_size, image_size, channels))
        if cached is not None:
            info(f"{where}: {len(cached)} images loaded from cache {cache_path} in {time.perf_counter() - t0:.1f} s")
            _report_problems(cached, warn, info)
            return cached

    t0 = time.perf_counter()
    from_folder = src.is_dir()
    blobs: dict[str, bytes | Exception] = {}
    notes: list[tuple[str, str]] = []
    sizes = {rel: size for rel, _, size in listing}
    if from_folder:
        names = [rel for rel, _, _ in listing]
    else:  # read in one pass; the layout is only known once every name has been seen
        names, blobs, notes = _read_archive(src)
    entries, ignored, unsafe = _layout(names, where)
    class_names = tuple(sorted({cls for _, cls, _, _ in entries}))
    if len(class_names) < 2:
        raise DataError(f"{where}: found {len(class_names)} class folder ({class_names[0]}); need at least two")

    images = np.empty((len(entries), image_size, image_size, channels), dtype=np.uint8)
    class_index = {c: i for i, c in enumerate(class_names)}
    labels: list[int] = []
    paths: list[str] = []
    digests: list[str] = []
    parts: list[str] = []
    skipped: list[tuple[str, str]] = [*notes, *unsafe]
    resample_filter = _RESAMPLE[resample]
    for rel, cls, name, part in entries:
        data: bytes | Exception
        try:
            if from_folder:
                problem = problems.get(name) or _size_problem(sizes.get(name, 0))
                if problem:  # a FIFO or a device is never opened; a file over the limit never read
                    raise DataError(problem)
                data = (src / name).read_bytes()
            else:
                data = blobs[name]
            if isinstance(data, Exception):  # a zip member that failed its CRC check, a member not read
                raise data
            images[len(labels)] = _decode(data, image_size, resample_filter, channels).reshape(images.shape[1:])
        except DataError as exc:  # minarn's own reason: as it is
            skipped.append((rel, str(exc)))
            continue
        except Exception as exc:  # noqa: BLE001 - anything Pillow or the file system raises: skip this file, say why
            skipped.append((rel, describe_error(exc, rel)))
            continue
        labels.append(class_index[cls])
        paths.append(rel)
        digests.append(hashlib.sha1(data).hexdigest())
        parts.append(part)

    n = len(labels)
    ds = Dataset(
        images=images[:n] if n < len(entries) else images,
        labels=np.array(labels, dtype=np.int64),
        paths=np.array(paths, dtype=str),
        sha1=np.array(digests, dtype="<U40"),
        class_names=class_names,
        source=where,
        skipped=tuple(skipped),
        ignored=tuple(ignored),
        part=np.array(parts, dtype="<U5") if entries and entries[0][3] else None,
    )
    _report_problems(ds, warn, info)
    if n == 0:
        raise DataError(f"{where}: none of the {len(entries)} image files could be decoded")
    empty = [c for c, k in zip(class_names, ds.class_counts()) if k == 0]
    if empty:
        raise DataError(f"{where}: no image in class folder(s) {', '.join(empty)} could be decoded")
    info(f"{where}: decoded {n} images in {len(class_names)} classes in {time.perf_counter() - t0:.1f} s")

    if cache:
        try:
            save_npz_atomic(cache_path, _to_arrays(ds, key))
            info(f"{where}: cached to {cache_path}")
        except OSError as exc:  # read-only home, full disk: loading still worked
            warn(f"{where}: could not write the cache file {cache_path}: {exc}")
    return ds


# ----------------------------------------------------------------------------------------------------------
# Splitting (sklearn's stratified train_test_split, in NumPy)


def _approximate_mode(class_counts: np.ndarray, n_draws: int, rng: np.random.RandomState) -> np.ndarray:
    """Per-class sizes of a stratified draw of ``n_draws``: floor of the proportional share, then the
    leftover draws go to the largest remainders, ties broken by ``rng`` (sklearn's ``_approximate_mode``).
    Shapes: class_counts (C,) -> (C,) int, summing to n_draws."""
    continuous = class_counts / class_counts.sum() * n_draws
    floored = np.floor(continuous)
    need_to_add = int(n_draws - floored.sum())
    if need_to_add > 0:
        remainder = continuous - floored
        for value in np.sort(np.unique(remainder))[::-1]:
            (inds,) = np.where(remainder == value)
            add_now = min(len(inds), need_to_add)
            inds = rng.choice(inds, size=add_now, replace=False)
            floored[inds] += 1
            need_to_add -= add_now
            if need_to_add == 0:
                break
    return floored.astype(np.int64)


def stratified_split(
    labels: np.ndarray | Sequence[int], train_size: float, seed: int = 123
) -> tuple[np.ndarray, np.ndarray]:
    """Shuffled, stratified two-way split with the semantics of sklearn's
    ``train_test_split(train_size=train_size, shuffle=True, stratify=labels, random_state=seed)``.

    Sizes: n_train = floor(train_size * N), the rest goes to the second part; per class, the proportional
    share rounded down, leftovers to the classes with the largest remainders. The random stream is NumPy's
    legacy ``RandomState(seed)``, whose output NumPy keeps fixed across versions, used in sklearn's order.

    Shapes: labels (N,) any sortable values -> (train indices (n_train,), rest indices (N - n_train,)),
    both int64, each in shuffled order.
    """
    labels = np.asarray(labels)
    n = len(labels)
    if not 0.0 < train_size < 1.0:
        raise ValueError(f"stratified_split: train_size must be in (0, 1), got {train_size!r}")
    n_train = math.floor(train_size * n)
    n_test = n - n_train
    classes, y, counts = np.unique(labels, return_inverse=True, return_counts=True)
    if n == 0 or counts.min() < 2:
        few = classes[counts < 2].tolist() if n else []
        raise DataError(f"stratified_split: every class needs at least 2 samples; too few in class(es) {few}")
    if n_train < len(classes) or n_test < len(classes):
        raise DataError(
            f"stratified_split: {n} samples split {n_train}/{n_test} cannot hold all {len(classes)} classes "
            "in both parts"
        )
    class_indices = np.split(np.argsort(y.ravel(), kind="stable"), np.cumsum(counts)[:-1])
    rng = np.random.RandomState(seed)
    n_i = _approximate_mode(counts, n_train, rng)
    t_i = _approximate_mode(counts - n_i, n_test, rng)
    train: list[int] = []
    test: list[int] = []
    for i in range(len(classes)):
        perm = class_indices[i][rng.permutation(counts[i])]
        train.extend(perm[: n_i[i]])
        test.extend(perm[n_i[i] : n_i[i] + t_i[i]])
    return rng.permutation(np.array(train, dtype=np.int64)), rng.permutation(np.array(test, dtype=np.int64))


def split_indices(
    labels: np.ndarray | Sequence[int], *, seed: int = 123, train_size: float = 0.9, valid_of_rest: float = 0.6
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Train / validation / test indices: ``stratified_split(labels, train_size, seed)``, then the rest
    split again with ``valid_of_rest`` (the first part is validation, the second test), same seed.

    Shapes: labels (N,) -> three int64 index arrays into ``labels`` (disjoint, together 0..N-1).
    Defaults give 90 % / 6 % / 4 %. The result depends on the order of ``labels``; :func:`split_dataset`
    sorts by path first so that it does not depend on file-system listing order.
    """
    labels = np.asarray(labels)
    train, rest = stratified_split(labels, train_size, seed)
    valid_r, test_r = stratified_split(labels[rest], valid_of_rest, seed)
    return train, rest[valid_r], rest[test_r]


class Splits(NamedTuple):
    """The three parts of a split, each a :class:`Dataset`."""

    train: Dataset
    valid: Dataset
    test: Dataset


def split_stages(fractions: Sequence[float] = SPLIT_FRACTIONS) -> tuple[float, float]:
    """(train_size, valid_of_rest) of :func:`split_indices` for (train, valid, test) fractions.

    Math: train_size = t / (t + v + e), valid_of_rest = v / (v + e), computed on the decimal values the
    floats print as, so the paper's (0.9, 0.06, 0.04) gives exactly (0.9, 0.6). Each fraction must be > 0 and
    they must sum to 1 (within 1e-6); ``DataError`` otherwise.
    """
    shown = ",".join(str(f) for f in fractions)
    try:
        t, v, e = (Fraction(repr(float(f))) for f in fractions)
    except (TypeError, ValueError, OverflowError):
        raise DataError(f"split fractions must be three numbers TRAIN,VALID,TEST, got {shown}") from None
    if min(t, v, e) <= 0:
        raise DataError(f"split fractions must all be > 0, got {shown} (e.g. 0.8,0.1,0.1)")
    if abs(t + v + e - 1) > Fraction(1, 10**6):
        raise DataError(f"split fractions must sum to 1, got {shown} (sum {float(t + v + e):g}; e.g. 0.8,0.1,0.1)")
    return float(t / (t + v + e)), float(v / (v + e))


def smallest_balanced_split(num_classes: int, fractions: Sequence[float] = SPLIT_FRACTIONS, seed: int = 123,
                            most: int = 100_000) -> int | None:
    """The fewest images per class with which ``num_classes`` equal classes split into train / valid / test
    (each part holding every class), found by trying the split itself; None if not even ``most`` do.
    The paper's split needs 16 per class for 2 classes, 21 for 6, 23 for 10."""
    train_size, valid_of_rest = split_stages(fractions)
    # Valid and test must each hold num_classes images, so k * min(fraction) >= (K - 1) / K >= 1/2 (up to rounding).
    start = max(2, int(0.5 / min(float(f) for f in fractions)))
    for k in range(start, most + 1):
        labels = np.repeat(np.arange(num_classes), k)
        try:
            parts = split_indices(labels, seed=seed, train_size=train_size, valid_of_rest=valid_of_rest)
        except DataError:
            continue
        if all(len(np.unique(labels[p])) == num_classes for p in parts):
            return k
    return None


def _split_too_small(ds: Dataset, fractions: Sequence[float], seed: int) -> str:
    """Why ``ds`` cannot be split with ``fractions``: the smallest set the split holds, and per class by name
    the images there are."""
    counts = ds.class_counts()
    shown = ",".join(f"{f:g}" for f in fractions)
    need = smallest_balanced_split(ds.num_classes, fractions, seed)
    what = (f"the smallest set it holds has {need} images in each of the {ds.num_classes} classes "
            f"({need * ds.num_classes:,} in all)" if need else "no set of equal classes up to 100,000 each splits")
    small = [(c, int(k)) for c, k in zip(ds.class_names, counts) if need and k < need]
    listed = small or list(zip(ds.class_names, map(int, counts)))
    per_class = ", ".join(f"{c} {k}" for c, k in listed)
    return (f"{len(ds):,} images are too few for the split {shown} (stratified, every class in train, valid and "
            f"test): {what}; " + (f"too few in {per_class}" if small else f"the classes hold {per_class}")
            + "; use more images, larger valid and test fractions (--split), or train/, valid/ and test/ folders")


def _split_by_folders(ds: Dataset) -> Splits:
    """The parts a split dataset came in (``ds.part``), each in path order; every class must be in train."""
    assert ds.part is not None
    order = np.lexsort((ds.sha1, ds.paths))
    splits = Splits(*(ds.subset(order[ds.part[order] == p]) for p in PARTS))
    missing = [c for c, k in zip(ds.class_names, splits.train.class_counts()) if k == 0]
    if missing:
        raise DataError(f"{ds.source}: the train part has no image of class(es) {', '.join(missing)} (they are only "
                        "in valid/ or test/); the network cannot learn a class it never sees")
    return splits


def split_dataset(
    ds: Dataset,
    *,
    seed: int = 123,
    fractions: Sequence[float] | None = None,
    dedupe: bool = False,
) -> Splits:
    """Split into train / valid / test as the paper's template does (90 / 6 / 4 %, stratified, seed 123).

    ``fractions`` (train, valid, test) changes the shares (:func:`split_stages`; None: the paper's
    ``SPLIT_FRACTIONS``). A dataset that came split into train/, valid/ and test/ folders (``ds.part``) keeps
    those parts (giving ``fractions`` then is an error). The images are first put in order of their relative
    path (so the listing order of the source does not matter); with ``dedupe`` byte-identical copies are
    removed first (:func:`remove_duplicates`). On the full MedNIST set: train 53,058, valid 3,537, test 2,359
    (per class 9000/600/400, BreastMRI 8058/537/359). A set too small for the split raises ``DataError``
    naming the smallest set the split holds and the classes below it.
    """
    if dedupe:
        ds = remove_duplicates(ds)
    if ds.part is not None:
        if fractions is not None:
            raise DataError(f"{ds.source} comes split into train/, valid/ and test/ folders, which are used as "
                            "they are; split fractions do not apply")
        return _split_by_folders(ds)
    fractions = tuple(SPLIT_FRACTIONS if fractions is None else fractions)
    train_size, valid_of_rest = split_stages(fractions)
    order = np.lexsort((ds.sha1, ds.paths))  # by path; sha1 only breaks ties between equal paths
    try:
        train, valid, test = split_indices(ds.labels[order], seed=seed, train_size=train_size,
                                           valid_of_rest=valid_of_rest)
    except DataError:
        raise DataError(_split_too_small(ds, fractions, seed)) from None
    return Splits(ds.subset(order[train]), ds.subset(order[valid]), ds.subset(order[test]))


def count_table(splits: Splits | Mapping[str, Dataset]) -> str:
    """Per-class image counts of each part as a text table (one row per part, one column per class)."""
    parts = splits._asdict() if isinstance(splits, Splits) else dict(splits)
    if not parts:
        return ""
    class_names = next(iter(parts.values())).class_names
    header = ["split", "total", *class_names]
    rows = [[name, f"{len(d):,}", *(f"{k:,}" for k in d.class_counts())] for name, d in parts.items()]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = [
        "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
        for r in [header, *rows]
    ]
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------------
# Duplicates


def duplicate_groups(ds: Dataset) -> list[np.ndarray]:
    """Groups of byte-identical images (same SHA-1), each of size >= 2.

    Returns a list of int64 index arrays into ``ds``; inside a group the indices are in path order, and
    the groups are ordered by their first path. Extra copies = sum(len(g) - 1).
    """
    order = np.lexsort((ds.paths, ds.sha1))  # by digest, then path
    digests = ds.sha1[order]
    starts = np.flatnonzero(np.r_[True, digests[1:] != digests[:-1]])
    groups = [g for g in np.split(order, starts[1:]) if len(g) > 1]
    return sorted((g.astype(np.int64) for g in groups), key=lambda g: ds.paths[g[0]])


def remove_duplicates(ds: Dataset) -> Dataset:
    """The dataset without extra copies: of each group of byte-identical files, the one whose path sorts
    first is kept (in a dataset split into folders, the one in train, else valid, else test, then by path).
    Order of the kept images is unchanged."""
    drop = np.zeros(len(ds), dtype=bool)
    for g in duplicate_groups(ds):
        if ds.part is not None:
            g = g[np.argsort([PARTS.index(p) for p in ds.part[g]], kind="stable")]
        drop[g[1:]] = True
    return ds.subset(np.flatnonzero(~drop))


def copies_in_train(splits: Splits) -> dict[str, np.ndarray]:
    """Which validation and test images have a byte-identical copy in the training part.

    Returns {"valid": mask, "test": mask}: (len(part),) bool, True where the image's SHA-1 also occurs in
    ``splits.train``.
    """
    seen = set(splits.train.sha1.tolist())
    return {name: np.array([h in seen for h in part.sha1.tolist()], dtype=bool)
            for name, part in (("valid", splits.valid), ("test", splits.test))}


def duplicates_in_train(splits: Splits) -> dict[str, int]:
    """How many validation and test images have a byte-identical copy in the training part: {"valid": n,
    "test": n}, the counts of :func:`copies_in_train`."""
    return {name: int(mask.sum()) for name, mask in copies_in_train(splits).items()}


# ----------------------------------------------------------------------------------------------------------
# Batches


def scale_images(x: np.ndarray) -> np.ndarray:
    """uint8 pixels to float32 in [0, 1] (x / 255). Shapes: any -> same shape, float32."""
    if x.dtype != np.uint8:
        raise TypeError(f"scale_images: expected uint8 pixels, got {x.dtype}")
    return np.divide(x, np.float32(255.0), dtype=np.float32)


def balanced_class_weights(labels: np.ndarray | Sequence[int], num_classes: int) -> np.ndarray:
    """Keras users' ``class_weight`` "balanced" (sklearn's ``compute_class_weight``): w_c = N / (K * n_c).

    Shapes: labels (N,) ints in [0, num_classes) -> (num_classes,) float64; equal classes all get 1, a class
    half as large as the others about 2. ``ValueError`` names a class with no image (its weight is undefined).
    """
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=num_classes)
    if len(counts) != num_classes or counts.min() == 0:
        raise ValueError(f"balanced_class_weights: class(es) {np.flatnonzero(counts == 0).tolist()} have no label")
    return counts.sum() / (num_classes * counts.astype(np.float64))


def one_hot(labels: np.ndarray | Sequence[int], num_classes: int) -> np.ndarray:
    """One-hot rows. Shapes: labels (N,) ints in [0, num_classes) -> (N, num_classes) float32."""
    labels = np.asarray(labels)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"one_hot: labels must be a 1-D integer array, got {labels.dtype} {labels.shape}")
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"one_hot: labels must be in [0, {num_classes}), got [{labels.min()}, {labels.max()}]")
    out = np.zeros((len(labels), num_classes), dtype=np.float32)
    out[np.arange(len(labels)), labels] = 1.0
    return out


class Batch(NamedTuple):
    """One mini-batch of :func:`batches`: its ``number`` in the epoch (0-based), ``index`` (B,) the rows of the
    images and labels it holds, ``x`` (B, H, W, C) float32 in [0, 1], ``y`` (B, K) one-hot float32, and ``rng``,
    the generator its flips were drawn from (training hands it on to the dropout layer)."""

    number: int
    # the public name of the rows (train.py, tests); as a NamedTuple field it hides tuple.index, which mypy rejects
    index: np.ndarray  # type: ignore[assignment]
    x: np.ndarray
    y: np.ndarray
    rng: np.random.Generator


def batches(
    images: np.ndarray,
    labels: np.ndarray,
    batch_size: int = 40,
    *,
    num_classes: int | None = None,
    order: np.ndarray | None = None,
    start: int = 0,
    batch_rng: np.random.Generator | Callable[[int], np.random.Generator] | None = None,
    flip: bool = False,
    drop_last: bool = False,
) -> Iterator[Batch]:
    """The mini-batches of one pass over the images, in ``order``, from batch number ``start`` on.

    Shapes: images (N, H, W, C) uint8, labels (N,) int, order (N,) a permutation of 0..N-1 (None: 0..N-1);
    batch b holds ``order[b * batch_size : (b + 1) * batch_size]`` (the last one smaller unless ``drop_last``).
    ``num_classes`` defaults to max(labels) + 1; pass it for subsets that may miss the last class.
    ``flip`` mirrors each image left-right with probability 1/2 (Keras ``horizontal_flip``), drawn from the
    batch's generator: ``batch_rng(b)`` when ``batch_rng`` is a function of the batch number (the training
    loop's ``default_rng([seed, epoch, b])``, so that a batch's draws do not depend on the batches before it and
    an epoch can be resumed at any batch), else the one Generator given (None: seed 0) for every batch.
    """
    if images.ndim != 4 or images.dtype != np.uint8:
        raise ValueError(f"iterate_batches: images must be uint8 (N, H, W, C), got {images.dtype} {images.shape}")
    labels = np.asarray(labels)
    if len(labels) != len(images):
        raise ValueError(f"iterate_batches: {len(images)} images but {len(labels)} labels")
    if batch_size < 1:
        raise ValueError(f"iterate_batches: batch_size must be >= 1, got {batch_size}")
    if num_classes is None:
        num_classes = int(labels.max()) + 1 if len(labels) else 0
    rng_of: Callable[[int], np.random.Generator]
    if callable(batch_rng):
        rng_of = batch_rng
    else:
        shared = np.random.default_rng(0) if batch_rng is None else batch_rng
        rng_of = lambda b: shared
    n = len(images)
    order = np.arange(n) if order is None else order
    steps = n // batch_size if drop_last else math.ceil(n / batch_size)
    for b in range(start, steps):
        idx = order[b * batch_size : (b + 1) * batch_size]
        rng = rng_of(b)
        x = scale_images(images[idx])
        if flip:
            mirror = rng.random(len(idx)) < 0.5
            x[mirror] = x[mirror, :, ::-1, :]
        yield Batch(b, idx, x, one_hot(labels[idx], num_classes), rng)


def iterate_batches(
    images: np.ndarray,
    labels: np.ndarray,
    batch_size: int = 40,
    *,
    num_classes: int | None = None,
    shuffle: bool = False,
    rng: int | np.random.Generator | None = None,
    flip: bool = False,
    drop_last: bool = False,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield ``(x, y)`` mini-batches: x = images / 255, y = one-hot labels (the ``x`` and ``y`` of :func:`batches`).

    Shapes: images (N, H, W, C) uint8, labels (N,) int -> x (B, H, W, C) float32 in [0, 1],
    y (B, num_classes) float32; B = batch_size except a smaller last batch (dropped with ``drop_last``).
    ``num_classes`` defaults to max(labels) + 1; pass it for subsets that may miss the last class.
    ``shuffle`` permutes the order; ``flip`` mirrors each image left-right with probability 1/2 (Keras
    ``horizontal_flip``). Both draw from ``rng`` (a Generator, used as is, or a seed; None means seed 0):
    pass one Generator for a whole training run so each epoch gets a new order.
    """
    gen = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(0 if rng is None else rng)
    order = gen.permutation(len(images)) if shuffle else None
    for batch in batches(images, labels, batch_size, num_classes=num_classes, order=order, batch_rng=gen, flip=flip,
                         drop_last=drop_last):
        yield batch.x, batch.y
