"""hub.download against a local HTTP server on 127.0.0.1 (never the internet)."""

from __future__ import annotations

import hashlib
import http.server
import os
import re
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from cavmae import hub
from cavmae.errors import DownloadError

PAYLOAD = os.urandom(3 * 1024 * 1024 + 123)  # a few chunks plus a tail
SHA = hashlib.sha256(PAYLOAD).hexdigest()


@dataclass
class ServerState:
    """What the test server serves and what it saw."""

    support_range: bool = True
    truncate_at: int | None = None  # stop sending after this many bytes of the body
    ranges: list[str | None] = field(default_factory=list)


def _handler(state: ServerState) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:  # keep test output quiet
            pass

        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            if self.path.startswith("/redirect"):
                self.send_response(302)
                self.send_header("Location", "/file.bin")
                self.end_headers()
                return
            if not self.path.startswith("/file.bin"):
                self.send_error(404, "Not Found")
                return
            rng = self.headers.get("Range")
            state.ranges.append(rng)
            start = 0
            m = re.fullmatch(r"bytes=(\d+)-", rng or "")
            if state.support_range and m:
                start = int(m.group(1))
                if start >= len(PAYLOAD):
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(PAYLOAD)}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(206)
                self.send_header(
                    "Content-Range", f"bytes {start}-{len(PAYLOAD) - 1}/{len(PAYLOAD)}"
                )
            else:
                self.send_response(200)
            body = PAYLOAD[start:]
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if state.truncate_at is not None:
                body = body[: state.truncate_at]
            self.wfile.write(body)

    return Handler


@pytest.fixture()
def server() -> Iterator[tuple[str, ServerState]]:
    state = ServerState()
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    thread = threading.Thread(
        target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    )
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", state
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()


def test_full_download_with_progress_and_checks(
    server: tuple[str, ServerState], tmp_path: Path
) -> None:
    base, state = server
    calls: list[tuple[int, int | None]] = []
    dest = hub.download(
        f"{base}/file.bin",
        tmp_path / "sub" / "f.bin",
        sha256=SHA,
        size=len(PAYLOAD),
        progress=lambda d, t: calls.append((d, t)),
    )
    assert dest.read_bytes() == PAYLOAD
    assert not (tmp_path / "sub" / "f.bin.part").exists()
    assert state.ranges == [None]
    assert calls[0] == (0, len(PAYLOAD)) and calls[-1] == (len(PAYLOAD), len(PAYLOAD))
    assert [d for d, _ in calls] == sorted(d for d, _ in calls)


def test_redirect_is_followed(server: tuple[str, ServerState], tmp_path: Path) -> None:
    base, _ = server
    assert hub.download(f"{base}/redirect", tmp_path / "f.bin", sha256=SHA).read_bytes() == PAYLOAD


def test_resume_survives_a_redirect(server: tuple[str, ServerState], tmp_path: Path) -> None:
    base, state = server  # Dropbox answers ?dl=1 with a redirect to its content host
    (tmp_path / "f.bin.part").write_bytes(PAYLOAD[:12345])
    hub.download(f"{base}/redirect", tmp_path / "f.bin", sha256=SHA)
    assert state.ranges == ["bytes=12345-"]


def test_resume_after_partial_file(server: tuple[str, ServerState], tmp_path: Path) -> None:
    base, state = server
    dest = tmp_path / "f.bin"
    (tmp_path / "f.bin.part").write_bytes(PAYLOAD[:1_000_000])
    calls: list[tuple[int, int | None]] = []
    hub.download(f"{base}/file.bin", dest, sha256=SHA, progress=lambda d, t: calls.append((d, t)))
    assert dest.read_bytes() == PAYLOAD
    assert state.ranges == ["bytes=1000000-"]
    assert calls[0] == (1_000_000, len(PAYLOAD))


def test_interrupted_transfer_keeps_part_then_resumes(
    server: tuple[str, ServerState], tmp_path: Path
) -> None:
    base, state = server
    dest = tmp_path / "f.bin"
    state.truncate_at = 500_000
    with pytest.raises(DownloadError, match="resume"):
        hub.download(f"{base}/file.bin", dest, sha256=SHA)
    part = tmp_path / "f.bin.part"
    assert part.stat().st_size == 500_000 and not dest.exists()
    state.truncate_at = None
    hub.download(f"{base}/file.bin", dest, sha256=SHA)
    assert dest.read_bytes() == PAYLOAD
    assert state.ranges == [None, "bytes=500000-"]


def test_server_without_range_support_restarts(
    server: tuple[str, ServerState], tmp_path: Path
) -> None:
    base, state = server
    state.support_range = False
    (tmp_path / "f.bin.part").write_bytes(b"garbage that must not be kept" * 100)
    dest = hub.download(f"{base}/file.bin", tmp_path / "f.bin", sha256=SHA, size=len(PAYLOAD))
    assert dest.read_bytes() == PAYLOAD
    assert state.ranges == ["bytes=2900-"]


def test_complete_part_with_unknown_size_restarts_after_416(
    server: tuple[str, ServerState], tmp_path: Path
) -> None:
    base, state = server
    (tmp_path / "f.bin.part").write_bytes(PAYLOAD)
    hub.download(f"{base}/file.bin", tmp_path / "f.bin", sha256=SHA)
    assert (tmp_path / "f.bin").read_bytes() == PAYLOAD
    assert state.ranges == [f"bytes={len(PAYLOAD)}-", None]


def test_complete_part_with_known_size_is_not_fetched(
    server: tuple[str, ServerState], tmp_path: Path
) -> None:
    base, state = server
    (tmp_path / "f.bin.part").write_bytes(PAYLOAD)
    hub.download(f"{base}/file.bin", tmp_path / "f.bin", sha256=SHA, size=len(PAYLOAD))
    assert state.ranges == []


def test_sha_mismatch_deletes_file(server: tuple[str, ServerState], tmp_path: Path) -> None:
    base, _ = server
    with pytest.raises(DownloadError, match="checksum mismatch"):
        hub.download(f"{base}/file.bin", tmp_path / "f.bin", sha256="0" * 64)
    assert list(tmp_path.iterdir()) == []


def test_size_mismatch_deletes_file(server: tuple[str, ServerState], tmp_path: Path) -> None:
    base, _ = server
    with pytest.raises(DownloadError, match="expected 10"):
        hub.download(f"{base}/file.bin", tmp_path / "f.bin", size=10)
    assert list(tmp_path.iterdir()) == []


def test_http_404(server: tuple[str, ServerState], tmp_path: Path) -> None:
    base, _ = server
    with pytest.raises(DownloadError, match="HTTP 404"):
        hub.download(f"{base}/missing.pth", tmp_path / "f.bin")
    assert list(tmp_path.iterdir()) == []


def test_connection_refused_is_a_clear_error(tmp_path: Path) -> None:
    with socket.socket() as s:  # a port that nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(DownloadError, match=r"cannot reach 127\.0\.0\.1.*refused.*by hand"):
        hub.download(f"http://127.0.0.1:{port}/x.pth", tmp_path / "x.pth", timeout=2)


def test_offline_message_names_host() -> None:
    err = OSError("boom")
    msg = hub._unreachable_message(
        "https://www.dropbox.com/s/k/f.pth?dl=1", socket.gaierror(-3, "fail")
    )
    assert msg.startswith("cannot reach www.dropbox.com: you appear to be offline")
    assert "by hand" in msg
    assert "boom" in hub._unreachable_message("https://h/x", err)


def test_cache_dir_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CAVMAE_CACHE", str(tmp_path / "c"))
    assert hub.cache_dir() == tmp_path / "c"
    monkeypatch.delenv("CAVMAE_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert hub.cache_dir() == tmp_path / "xdg" / "cavmae"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert hub.cache_dir() == Path("~/.cache/cavmae").expanduser()


def test_sha256_file(tmp_path: Path) -> None:
    p = tmp_path / "x"
    p.write_bytes(PAYLOAD)
    assert hub.sha256_file(p) == SHA
