"""Download the public MedNIST archive (Project MONAI) into the cache folder: resumable, MD5-checked.

Only ``urllib`` is used. The file is written to ``<name>.part`` and linked to its final name only after
the size and the MD5 digest check out, so the final name never holds a partial or corrupt file. An
interrupted download keeps the ``.part`` and the next call resumes it with an HTTP Range request.

Nothing already there is deleted or overwritten: a file under the final name with another MD5 (the user's own
copy, another release) is kept, said so, and the download goes to a new name beside it
(``MedNIST-0bc7306e.tar.gz``: the expected MD5's first 8 digits after the stem).

Typical use::

    from minarn.data import load_mednist
    from minarn.download import download_mednist
    ds = load_mednist(download_mednist())      # ~/.cache/minarn/MedNIST.tar.gz, or $MINARN_CACHE
"""

from __future__ import annotations

import http.client
import os
import re
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from minarn.data import DataError, default_cache_dir, file_digest

__all__ = ["MEDNIST_MD5", "MEDNIST_URL", "DownloadError", "beside", "download_file", "download_mednist"]

MEDNIST_URL = "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/MedNIST.tar.gz"
MEDNIST_MD5 = "0bc7306e7427e00ad1c5526a6677552d"
_CHUNK = 1 << 16


class DownloadError(DataError):
    """The download failed (network or HTTP error, incomplete data, or a checksum mismatch)."""


class _Progress:
    """Progress on stderr: redrawn in place with ``\\r`` on a terminal, else a line every 10 % (or 10 MB)."""

    def __init__(self, label: str, total: int | None, done: int, enabled: bool = True) -> None:
        self.stream = sys.stderr
        self.enabled = enabled
        self.tty = enabled and bool(getattr(self.stream, "isatty", lambda: False)())
        self.label, self.total, self.start_bytes = label, total, done
        self.t0 = self.last_draw = time.monotonic()
        self.last_step = self._step(done)
        self.width = 0  # pad each redraw to the longest line so far: no stale characters at the end

    def _line(self, done: int) -> str:
        text = self._text(done)
        self.width = max(self.width, len(text))
        return text

    def _step(self, done: int) -> int:
        return done * 10 // self.total if self.total else done // (10 << 20)

    def _text(self, done: int) -> str:
        rate = (done - self.start_bytes) / max(time.monotonic() - self.t0, 1e-9) / 1e6
        if self.total:
            pct = 100 * done / self.total
            return f"{self.label}: {pct:5.1f}% {done / 1e6:.1f}/{self.total / 1e6:.1f} MB {rate:.1f} MB/s"
        return f"{self.label}: {done / 1e6:.1f} MB {rate:.1f} MB/s"

    def update(self, done: int) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if self.tty:
            if now - self.last_draw >= 0.1:
                self.stream.write("\r" + self._line(done).ljust(self.width))
                self.stream.flush()
                self.last_draw = now
        elif self._step(done) > self.last_step:
            self.last_step = self._step(done)
            self.stream.write(self._line(done) + "\n")
            self.stream.flush()

    def close(self, done: int) -> None:
        if self.enabled:
            line = self._line(done) + " done"
            self.stream.write(("\r" + line.ljust(self.width)) if self.tty else line)
            self.stream.write("\n")
            self.stream.flush()


def _content_range_start(value: str | None) -> tuple[int, int | None] | None:
    """(first byte, total size or None) from ``Content-Range: bytes 100-199/200``; None if unparsable."""
    m = re.fullmatch(r"\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*", value or "")
    if not m:
        return None
    return int(m.group(1)), (None if m.group(3) == "*" else int(m.group(3)))


def download_file(
    url: str,
    dest: str | os.PathLike[str],
    *,
    md5: str | None = None,
    progress: bool = True,
    timeout: float = 60.0,
) -> Path:
    """Fetch ``url`` to ``dest`` via ``dest.part``, resuming a previous partial download.

    Parameters
    ----------
    url : http(s) URL. A server that ignores the Range header is handled (the download restarts).
    dest : final file name. If it already exists with the right MD5 nothing is downloaded; with another MD5
        it is kept as it is and the file is downloaded beside it (:func:`beside`), which is then returned.
    md5 : expected hex digest, checked before the rename; None skips the check.
    progress : show progress on stderr.

    Returns the path of the verified file. Raises :class:`DownloadError` naming the URL: HTTP or network
    error or an interrupted transfer (the ``.part`` is kept; call again to resume), or an MD5 mismatch
    (the ``.part`` is deleted, since resuming cannot repair it).
    """
    dest = Path(dest).expanduser()
    md5 = md5.lower() if md5 else None
    if dest.is_file():
        if md5 is None:
            return dest
        found = file_digest(dest, "md5")
        if found == md5:
            return dest
        other = beside(dest, md5)
        if other.is_file():
            if file_digest(other, "md5") == md5:
                return other
            raise DownloadError(f"{dest} and {other} are both there and neither has MD5 {md5}; both are kept: "
                                f"move one of them away, then call again")
        print(f"{dest}: already there with MD5 {found} ({dest.stat().st_size:,} bytes), not the expected {md5}: "
              f"kept as it is; downloading {url} to {other}", file=sys.stderr)
        dest = other
    part = dest.with_name(dest.name + ".part")
    dest.parent.mkdir(parents=True, exist_ok=True)

    offset = part.stat().st_size if part.is_file() else 0
    headers = {"User-Agent": "minarn-data-download"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    done, total = offset, None
    try:
        resp = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)
    except urllib.error.HTTPError as exc:
        if not (exc.code == 416 and offset):
            kept = f"; {offset} bytes kept in {part} for a later resume" if offset else ""
            raise DownloadError(f"{url}: HTTP error {exc.code} {exc.reason}{kept}") from exc
        # 416 Range Not Satisfiable: the .part already holds the whole file; verify it below.
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise DownloadError(f"{url}: cannot connect: {reason}") from exc
    else:
        with resp:
            length = resp.headers.get("Content-Length")
            if resp.status == 206:
                header = resp.headers.get("Content-Range")
                rng = _content_range_start(header)
                if rng is None or rng[0] != offset:
                    part.unlink(missing_ok=True)
                    raise DownloadError(
                        f"{url}: asked for bytes from {offset}, the server sent Content-Range {header!r}; "
                        f"deleted {part}, call again to start over"
                    )
                mode = "ab"
                total = rng[1] if rng[1] is not None else (offset + int(length) if length else None)
            else:  # a fresh download, or the server ignored the Range request: start over
                mode, done = "wb", 0
                total = int(length) if length else None
            label = Path(urllib.parse.urlsplit(url).path).name or dest.name
            bar = _Progress(label, total, done, progress)
            try:
                with open(part, mode) as f:
                    while chunk := resp.read(_CHUNK):
                        f.write(chunk)
                        done += len(chunk)
                        bar.update(done)
            except (OSError, http.client.HTTPException) as exc:
                raise DownloadError(
                    f"{url}: transfer interrupted after {done} bytes ({exc}); call again to resume from {part}"
                ) from exc
            bar.close(done)
        if total is not None and done != total:
            raise DownloadError(
                f"{url}: transfer ended after {done} of {total} bytes; call again to resume from {part}"
            )

    if md5 is not None:
        got = file_digest(part, "md5")
        if got != md5:
            part.unlink()
            raise DownloadError(f"{url}: MD5 mismatch (expected {md5}, got {got}); deleted {part}")
    try:  # a hard link never replaces a file: one that appeared under dest meanwhile stays
        os.link(part, dest)
    except FileExistsError:
        raise DownloadError(f"{dest} appeared while {url} was downloading; it is kept, and the verified download "
                            f"stays in {part}: move one of them, then call again") from None
    except OSError:  # a file system without hard links: rename, after one more look
        if dest.exists():
            raise DownloadError(f"{dest} appeared while {url} was downloading; it is kept, and the verified "
                                f"download stays in {part}") from None
        os.replace(part, dest)
    else:
        part.unlink()
    return dest


def beside(dest: str | os.PathLike[str], md5: str) -> Path:
    """Where a download goes when ``dest`` holds another file: the MD5's first 8 digits after the stem,
    ``MedNIST.tar.gz`` -> ``MedNIST-0bc7306e.tar.gz``."""
    dest = Path(dest)
    stem, dot, suffixes = dest.name.partition(".")
    return dest.with_name(f"{stem}-{md5[:8]}{dot}{suffixes}")


def download_mednist(
    cache_dir: str | os.PathLike[str] | None = None,
    *,
    url: str = MEDNIST_URL,
    md5: str | None = MEDNIST_MD5,
    progress: bool = True,
    timeout: float = 60.0,
) -> Path:
    """Download the full MedNIST archive (58,954 images, ~60 MB) unless already there; return its path.

    Saved as ``<cache_dir>/<file name of url>`` (default cache: ``$MINARN_CACHE`` or ``~/.cache/minarn``).
    ``url`` and ``md5`` default to MONAI's release (MEDNIST_URL, MEDNIST_MD5). See :func:`download_file`.
    Pass the result to :func:`minarn.data.load_mednist`.
    """
    folder = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    name = Path(urllib.parse.urlsplit(url).path).name or "MedNIST.tar.gz"
    return download_file(url, folder / name, md5=md5, progress=progress, timeout=timeout)
