"""Tests of minarn.download against an HTTP server started by the test on 127.0.0.1 (no real network)."""

from __future__ import annotations

import hashlib
import io
import re
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from minarn import download as DL
from minarn.data import DataError

PAYLOAD = np.random.default_rng(0).integers(0, 256, size=300_000, dtype=np.uint8).tobytes()
PAYLOAD_MD5 = hashlib.md5(PAYLOAD).hexdigest()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    mode = "normal"  # normal | error | ignore_range | truncate | wrong_range
    ranges: list[str | None]


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:  # http.server's name
        srv = self.server
        rng = self.headers.get("Range")
        srv.ranges.append(rng)
        if srv.mode == "error":
            self.send_error(500, "Internal Server Error")
            return
        body, status, extra = PAYLOAD, 200, {}
        if rng and srv.mode != "ignore_range":
            m = re.fullmatch(r"bytes=(\d+)-", rng)
            assert m, rng
            start = int(m.group(1))
            if start >= len(PAYLOAD):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(PAYLOAD)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            if srv.mode == "wrong_range":
                start = 0
            body, status = PAYLOAD[start:], 206
            extra = {"Content-Range": f"bytes {start}-{len(PAYLOAD) - 1}/{len(PAYLOAD)}"}
        self.send_response(status)
        self.send_header("Content-Type", "application/gzip")
        self.send_header("Content-Length", str(len(body)))
        for k, v in extra.items():
            self.send_header(k, v)
        self.end_headers()
        # "truncate": promise the whole body, send half, close (HTTP/1.0 closes after the handler)
        self.wfile.write(body[: len(body) // 2] if srv.mode == "truncate" else body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[_Server, str]]:
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    srv = _Server(("127.0.0.1", 0), _Handler)
    srv.ranges = []
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield srv, f"http://127.0.0.1:{srv.server_address[1]}/files/MedNIST.tar.gz"
    finally:
        srv.shutdown()
        srv.server_close()
        thread.join(5)


def test_fresh_download(server: tuple[_Server, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    srv, url = server
    out = DL.download_file(url, tmp_path / "dl" / "m.tar.gz", md5=PAYLOAD_MD5)
    assert out == tmp_path / "dl" / "m.tar.gz" and out.read_bytes() == PAYLOAD
    assert not (tmp_path / "dl" / "m.tar.gz.part").exists()
    assert srv.ranges == [None]
    err = capsys.readouterr().err
    assert "MedNIST.tar.gz" in err and "100.0%" in err and "\r" not in err  # lines, not a redrawn bar
    assert len(err.splitlines()) >= 5  # a line every 10 %
    # already there with the right checksum: no second request
    DL.download_file(url, out, md5=PAYLOAD_MD5)
    assert srv.ranges == [None]


def test_progress_redraws_in_place_on_a_tty(
    server: tuple[_Server, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    fake = Tty()
    monkeypatch.setattr("sys.stderr", fake)
    DL.download_file(server[1], tmp_path / "m", md5=PAYLOAD_MD5)
    text = fake.getvalue()
    assert text.startswith("\r") and text.count("\n") == 1 and "100.0%" in text


def test_progress_bar_updates(monkeypatch: pytest.MonkeyPatch) -> None:
    """Redrawn with \\r at most every 0.1 s on a terminal; one line per 10 % otherwise."""

    class Clock:
        t = 0.0

        def monotonic(self) -> float:
            return self.t

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    clock = Clock()
    monkeypatch.setattr(DL, "time", clock)
    for stream, want_lines in ((Tty(), 1), (io.StringIO(), 10 + 1)):
        monkeypatch.setattr("sys.stderr", stream)
        bar = DL._Progress("f", 1000, 0)
        for done in range(50, 1001, 50):
            clock.t += 0.06
            bar.update(done)
        bar.close(1000)
        text = stream.getvalue()
        assert text.count("\n") == want_lines, text
        if isinstance(stream, Tty):
            assert text.count("\r") == 10 + 1  # 20 updates 0.06 s apart: every second one redraws, + close
            assert "\rf:  30.0% 0.0/0.0 MB" in text
        else:
            assert [ln.split()[1] for ln in text.splitlines()[:3]] == ["10.0%", "20.0%", "30.0%"]


def test_no_progress_when_disabled(
    server: tuple[_Server, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    DL.download_file(server[1], tmp_path / "m", md5=PAYLOAD_MD5, progress=False)
    assert capsys.readouterr().err == ""


def test_resume_from_a_partial_file(server: tuple[_Server, str], tmp_path: Path) -> None:
    srv, url = server
    dest = tmp_path / "m.tar.gz"
    (tmp_path / "m.tar.gz.part").write_bytes(PAYLOAD[:123_456])
    assert DL.download_file(url, dest, md5=PAYLOAD_MD5, progress=False).read_bytes() == PAYLOAD
    assert srv.ranges == ["bytes=123456-"]


def test_interrupted_transfer_keeps_the_part_and_resumes(server: tuple[_Server, str], tmp_path: Path) -> None:
    srv, url = server
    dest = tmp_path / "m.tar.gz"
    part = tmp_path / "m.tar.gz.part"
    srv.mode = "truncate"
    with pytest.raises(DL.DownloadError, match=r"ended after 150000 of 300000 bytes.*resume"):
        DL.download_file(url, dest, md5=PAYLOAD_MD5, progress=False)
    assert not dest.exists() and part.read_bytes() == PAYLOAD[:150_000]
    srv.mode = "normal"
    assert DL.download_file(url, dest, md5=PAYLOAD_MD5, progress=False).read_bytes() == PAYLOAD
    assert srv.ranges == [None, "bytes=150000-"] and not part.exists()


def test_server_ignoring_range_restarts_cleanly(server: tuple[_Server, str], tmp_path: Path) -> None:
    srv, url = server
    srv.mode = "ignore_range"
    (tmp_path / "m.part").write_bytes(b"stale bytes that are not the start of the file")
    assert DL.download_file(url, tmp_path / "m", md5=PAYLOAD_MD5, progress=False).read_bytes() == PAYLOAD
    assert srv.ranges == ["bytes=46-"]


def test_unexpected_content_range_is_refused(server: tuple[_Server, str], tmp_path: Path) -> None:
    srv, url = server
    srv.mode = "wrong_range"
    part = tmp_path / "m.part"
    part.write_bytes(PAYLOAD[:1000])
    with pytest.raises(DL.DownloadError, match="Content-Range"):
        DL.download_file(url, tmp_path / "m", md5=PAYLOAD_MD5, progress=False)
    assert not part.exists() and not (tmp_path / "m").exists()


def test_complete_part_answered_416_is_verified(server: tuple[_Server, str], tmp_path: Path) -> None:
    srv, url = server
    (tmp_path / "m.part").write_bytes(PAYLOAD)
    assert DL.download_file(url, tmp_path / "m", md5=PAYLOAD_MD5, progress=False).read_bytes() == PAYLOAD
    assert srv.ranges == [f"bytes={len(PAYLOAD)}-"]


def test_bad_checksum_never_leaves_a_final_file(server: tuple[_Server, str], tmp_path: Path) -> None:
    _, url = server
    dest = tmp_path / "m.tar.gz"
    with pytest.raises(DL.DownloadError, match=rf"{re.escape(url)}: MD5 mismatch \(expected 0+, got {PAYLOAD_MD5}\)"):
        DL.download_file(url, dest, md5="0" * 32, progress=False)
    assert not dest.exists() and not (tmp_path / "m.tar.gz.part").exists()
    assert issubclass(DL.DownloadError, DataError)


def test_existing_file_with_wrong_checksum_is_kept(server: tuple[_Server, str], tmp_path: Path) -> None:
    dest = tmp_path / "m.tar.gz"
    dest.write_bytes(b"corrupt")
    got = DL.download_file(server[1], dest, md5=PAYLOAD_MD5, progress=False)
    assert got == tmp_path / f"m-{PAYLOAD_MD5[:8]}.tar.gz" == DL.beside(dest, PAYLOAD_MD5)
    assert got.read_bytes() == PAYLOAD and dest.read_bytes() == b"corrupt"
    assert not (tmp_path / f"{got.name}.part").exists()


def test_server_error(server: tuple[_Server, str], tmp_path: Path) -> None:
    srv, url = server
    srv.mode = "error"
    with pytest.raises(DL.DownloadError, match=rf"{re.escape(url)}: HTTP error 500"):
        DL.download_file(url, tmp_path / "m", md5=PAYLOAD_MD5, progress=False)
    assert list(tmp_path.iterdir()) == []
    part = tmp_path / "m.part"
    part.write_bytes(PAYLOAD[:10])
    with pytest.raises(DL.DownloadError, match="kept"):
        DL.download_file(url, tmp_path / "m", md5=PAYLOAD_MD5, progress=False)
    assert part.read_bytes() == PAYLOAD[:10]  # kept for a later resume


def test_connection_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(DL.DownloadError, match="cannot connect"):
        DL.download_file(f"http://127.0.0.1:{port}/x", tmp_path / "x", progress=False, timeout=5)


def test_download_mednist_into_the_cache(
    server: tuple[_Server, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, url = server
    out = DL.download_mednist(tmp_path / "c", url=url, md5=PAYLOAD_MD5, progress=False)
    assert out == tmp_path / "c" / "MedNIST.tar.gz" and out.read_bytes() == PAYLOAD
    monkeypatch.setenv("MINARN_CACHE", str(tmp_path / "env"))
    assert DL.download_mednist(url=url, md5=PAYLOAD_MD5, progress=False) == tmp_path / "env" / "MedNIST.tar.gz"
    assert DL.MEDNIST_URL.endswith("/0.8.1/MedNIST.tar.gz") and DL.MEDNIST_MD5 == "0bc7306e7427e00ad1c5526a6677552d"
