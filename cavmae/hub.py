"""Resumable, verified file downloads into a local cache (standard library only).

``download`` streams a URL to ``DEST.part``, resumes an interrupted transfer with an HTTP
``Range`` request (and starts over when the server ignores it), checks the size and SHA-256
when they are known, and moves the file into place with an atomic ``os.replace``. Every
failure is a :class:`~cavmae.errors.DownloadError` whose message says what to do, in
particular when the machine is offline. Progress goes to an optional callback
``progress(bytes_done, bytes_total_or_None)``; the CLI wraps it in a tqdm bar.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import re
import socket
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path

from cavmae import __version__
from cavmae.errors import DownloadError

__all__ = ["cache_dir", "download", "sha256_file", "ProgressCallback"]

logger = logging.getLogger(__name__)

#: ``progress(bytes_done, bytes_total)``; ``bytes_total`` is None when the server does not say.
ProgressCallback = Callable[[int, int | None], None]

_CHUNK = 1 << 20  # 1 MiB per read
_USER_AGENT = f"cavmae-studio/{__version__}"
_CONTENT_RANGE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)")


def cache_dir() -> Path:
    """The download cache: ``$CAVMAE_CACHE`` if set, else ``$XDG_CACHE_HOME/cavmae``
    (``~/.cache/cavmae`` by default). The directory is not created here."""
    env = os.environ.get("CAVMAE_CACHE")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or "~/.cache"
    return Path(base).expanduser() / "cavmae"


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def download(
    url: str,
    dest: str | os.PathLike[str],
    *,
    sha256: str | None = None,
    size: int | None = None,
    progress: ProgressCallback | None = None,
    timeout: float = 30,
) -> Path:
    """Download ``url`` to ``dest`` (resuming a previous partial download).

    The data goes to ``dest`` + ``.part`` first. When that file exists, only the missing tail
    is requested (``Range: bytes=N-``); a server that answers with the whole file restarts the
    transfer. After the transfer the size and SHA-256 are checked when given, then the file is
    renamed atomically. A transfer that breaks off leaves the ``.part`` file for the next call.

    Args:
        url: http(s) URL (redirects are followed).
        dest: Final path; its parent directories are created.
        sha256: Expected hex digest, or None when unknown.
        size: Expected size in bytes, or None when unknown.
        progress: Called as ``progress(done, total)`` after every chunk (``total`` None if
            unknown).
        timeout: Seconds to wait for the connection and for each read.

    Returns:
        ``dest`` as a Path.

    Raises:
        DownloadError: When the host cannot be reached (offline), on an HTTP error, a
            truncated transfer, or a size or checksum mismatch (the bad file is deleted).
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    if size is not None and part.exists() and part.stat().st_size > size:
        logger.warning("%s is larger than the expected %d bytes; starting over", part, size)
        part.unlink()
    if size is not None and part.exists() and part.stat().st_size == size:
        logger.info("%s is already complete; verifying", part)
    else:
        _transfer(url, part, size=size, progress=progress, timeout=timeout)
    _verify(part, url, sha256=sha256, size=size)
    os.replace(part, dest)
    logger.info("downloaded %s -> %s", url, dest)
    return dest


def _transfer(
    url: str, part: Path, *, size: int | None, progress: ProgressCallback | None, timeout: float
) -> None:
    """Fetch ``url`` into ``part``, appending to what is already there when the server allows."""
    offset = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": _USER_AGENT, "Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    req = urllib.request.Request(url, headers=headers)
    try:
        resp = urllib.request.urlopen(req, timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and offset:
            # Range beyond the end: the partial file is unusable (or the server changed). Restart.
            logger.warning("server rejected resuming %s at byte %d; starting over", url, offset)
            e.close()
            part.unlink()
            return _transfer(url, part, size=size, progress=progress, timeout=timeout)
        raise DownloadError(f"downloading {url} failed: HTTP {e.code} {e.reason}") from e
    except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
        raise DownloadError(_unreachable_message(url, e)) from e

    with resp:
        status = getattr(resp, "status", 200)
        mode = "wb"
        if offset and status == 206:
            start = _range_start(resp.headers.get("Content-Range", ""))
            if start != offset:
                raise DownloadError(
                    f"downloading {url}: the server resumed at byte {start} instead of {offset}; "
                    f"delete {part} and try again"
                )
            mode = "ab"
            logger.info("resuming %s at byte %d", url, offset)
        elif offset:
            logger.info("server ignored the Range request for %s; starting over", url)
            offset = 0
        length = resp.headers.get("Content-Length")
        total = offset + int(length) if length and length.isdigit() else size
        done = offset
        try:
            with part.open(mode) as f:
                if progress is not None:
                    progress(done, total)
                while chunk := resp.read(_CHUNK):
                    f.write(chunk)
                    done += len(chunk)
                    if progress is not None:
                        progress(done, total)
        except (OSError, http.client.HTTPException) as e:
            raise DownloadError(
                f"downloading {url} broke off after {done} bytes ({e}); run the same command "
                f"again to resume from {part}"
            ) from e
    if length and length.isdigit() and done != offset + int(length):
        raise DownloadError(
            f"downloading {url} broke off after {done} of {offset + int(length)} bytes; run the "
            f"same command again to resume from {part}"
        )


def _verify(part: Path, url: str, *, sha256: str | None, size: int | None) -> None:
    """Check size and digest of the finished ``part``; delete it on a mismatch."""
    got = part.stat().st_size
    if size is not None and got != size:
        part.unlink()
        raise DownloadError(
            f"downloading {url} gave {got} bytes, expected {size}; the bad file was deleted, "
            "try again or download it by hand"
        )
    if sha256 is not None:
        digest = sha256_file(part)
        if digest.lower() != sha256.lower():
            part.unlink()
            raise DownloadError(
                f"checksum mismatch for {url}: SHA-256 {digest}, expected {sha256}; the bad "
                "file was deleted, try again or download it by hand"
            )


def _range_start(content_range: str) -> int | None:
    """First byte of a ``Content-Range: bytes A-B/N`` header, or None if absent/unparseable."""
    m = _CONTENT_RANGE.match(content_range.strip())
    return int(m.group(1)) if m else None


def _unreachable_message(url: str, err: BaseException) -> str:
    """A user-facing explanation of a connection failure."""
    host = urllib.parse.urlsplit(url).hostname or url
    reason = getattr(err, "reason", err)
    if isinstance(reason, socket.gaierror):
        why = "you appear to be offline (the name could not be resolved)"
    elif isinstance(reason, ConnectionRefusedError):
        why = "the connection was refused"
    elif isinstance(reason, (TimeoutError, socket.timeout)):
        why = "the connection timed out; you may be offline"
    else:
        why = f"{reason}; you may be offline"
    return f"cannot reach {host}: {why}. Download {url} by hand and pass its path instead"
