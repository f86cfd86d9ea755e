"""Download the MNIST files: resumable, checksummed, atomic. Only runs when the user asks.

``download_mnist(to)`` fetches each file of a table (the four official ones by default) into
``to/NAME.part``, resuming an earlier ``.part`` with an HTTP Range request, retries a cut
connection from where it stopped, checks the MD5, fsyncs and only then renames the part to
``NAME``: a final name never holds half a file. Files already present with the right checksum
are skipped. urllib only; proxies come from the usual environment variables.
"""
from __future__ import annotations

import errno
import http.client
import logging
import os
import re
import shutil
import socket
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from convrnn import __version__
from convrnn.data.mnist import OFFICIAL_FILES, md5_file
from convrnn.files import atomic_write_with, check_writable, fsync_dir, write_target
from convrnn.errors import DataError, WriteError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RemoteFile:
    """One file to fetch: its name under the base URL (and on disk) and its MD5."""

    name: str
    md5: str


MNIST_FILES: tuple[RemoteFile, ...] = tuple(RemoteFile(name, md5) for name, (md5, _) in OFFICIAL_FILES.items())
# The mirror torchvision tries first (yann.lecun.com often refuses scripted downloads), then the original.
MIRRORS: tuple[str, ...] = ("https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/")
CHUNK_SIZE = 1 << 16

# progress(name, done_bytes, total_bytes); total_bytes is None when the server does not say
ProgressFn = Callable[[str, int, "int | None"], None]


class _CutShort(Exception):
    """The body ended before the announced length (a cut connection); resume from the .part size."""


class _RestartNeeded(Exception):
    """The server answered a different range than asked; start the file over."""


class _TransferFailed(Exception):
    """A mirror could not deliver the file even after retries; the next mirror may."""


_RETRYABLE = (_CutShort, _RestartNeeded, http.client.HTTPException, ConnectionError, TimeoutError,
              urllib.error.URLError)


def download_mnist(to: str | os.PathLike, *, base_url: str | Sequence[str] = MIRRORS,
                   files: Sequence[RemoteFile] = MNIST_FILES, progress: ProgressFn | None = None,
                   timeout: float = 30, retries: int = 3, retry_wait: float = 1.0) -> list[Path]:
    """Download ``files`` from ``base_url`` (one URL or mirrors tried in order) into directory ``to``.

    Returns the final paths, in the order of ``files``. Raises ``DataError`` when a file's MD5 does
    not match (the partial file is deleted) or when no mirror could deliver it.
    """
    directory = Path(to).expanduser()
    directory.mkdir(parents=True, exist_ok=True)
    mirrors = [base_url] if isinstance(base_url, str) else list(base_url)
    if not mirrors:
        raise DataError("expected at least one base URL to download from, got none")
    options = dict(progress=progress, timeout=timeout, retries=retries, retry_wait=retry_wait)
    return [_download_one(remote, directory, mirrors, **options) for remote in files]


def _download_one(remote: RemoteFile, directory: Path, mirrors: list[str], **options) -> Path:
    final = directory / remote.name
    check_writable(final)  # a folder, FIFO, device or unwritable folder is refused before downloading
    if final.is_file():
        actual = md5_file(final)
        if actual == remote.md5:
            logger.info("%s: already present and verified, skipped", final)
            if options["progress"] is not None:
                size = final.stat().st_size
                options["progress"](remote.name, size, size)
            return final
        logger.warning("%s: present but MD5 %s, expected %s: downloading it again", final, actual, remote.md5)
    failures = []
    for base in mirrors:
        url = base.rstrip("/") + "/" + remote.name
        try:
            _fetch_verified(url, remote, final, **options)
            return final
        except _TransferFailed as e:
            failures.append(f"{url}: {e}")
            logger.warning("%s: %s", url, e)
    raise DataError(f"{remote.name}: expected a download from one of {len(mirrors)} mirror(s), "
                    f"found only failures: {'; '.join(failures)}")


def _fetch_verified(url: str, remote: RemoteFile, final: Path, **options) -> None:
    """Fill ``final.part`` (resuming), verify its MD5, and rename it to ``final`` (its target when
    ``final`` is a symlink: the link stays and its file gets the download)."""
    part = final.with_name(final.name + ".part")
    if part.is_symlink() or (os.path.lexists(part) and not part.is_file()):
        # appending to it would write wherever it leads (or block on a FIFO); renaming it would move it
        raise WriteError(f"{part}: cannot resume a download into it, it is not a regular file; remove it")
    resumed = part.is_file() and part.stat().st_size > 0
    _transfer(url, part, remote.name, **options)
    actual = md5_file(part)
    if actual != remote.md5 and resumed:
        # The old .part may have come from another file or a corrupted run: one clean start.
        logger.warning("%s: MD5 %s after resuming an earlier partial download; starting over", remote.name, actual)
        part.unlink()
        _transfer(url, part, remote.name, **options)
        actual = md5_file(part)
    if actual != remote.md5:
        part.unlink(missing_ok=True)
        raise DataError(f"{remote.name}: expected MD5 {remote.md5}, downloaded file has MD5 {actual} "
                        f"(from {url}); deleted the partial file")
    # Only the final placement goes through files.write_target: the .part stays a plain file that is
    # appended to across runs (atomic_write_* would rewrite it whole), and the rename must not
    # replace a folder, FIFO or device that appeared under the final name meanwhile.
    target = write_target(final)
    try:
        os.replace(part, target)
        fsync_dir(target.parent)
    except OSError as e:
        if e.errno != errno.EXDEV:  # no permission, a read-only folder...
            raise WriteError(f"{final}: cannot write ({e.strerror or e}); the verified download is kept "
                             f"in {part}") from None
        # a symlink leading to another filesystem: a rename cannot cross it, an atomic copy can
        with open(part, "rb") as src:
            atomic_write_with(final, lambda f: shutil.copyfileobj(src, f, CHUNK_SIZE))
        part.unlink()
    logger.info("%s: downloaded and verified (MD5 %s)", final, actual)


_NO_SUCH_HOST = {code for code in (getattr(socket, "EAI_NONAME", None), getattr(socket, "EAI_NODATA", None))
                 if code is not None}


def _transfer(url: str, part: Path, name: str, *, progress: ProgressFn | None, timeout: float,
              retries: int, retry_wait: float) -> None:
    """Bring ``part`` to the complete remote content, retrying cut connections from its current size."""
    for attempt in range(retries + 1):
        offset = part.stat().st_size if part.is_file() else 0
        try:
            _transfer_once(url, part, name, offset, progress, timeout)
            return
        except urllib.error.HTTPError as e:
            if e.code == 416 and offset > 0:
                logger.info("%s: server has nothing past byte %d; checking the partial file as is", name, offset)
                return
            raise _TransferFailed(f"HTTP {e.code} {e.reason}") from e
        except _RETRYABLE as e:
            if (isinstance(e, urllib.error.URLError) and isinstance(e.reason, socket.gaierror)
                    and e.reason.errno in _NO_SUCH_HOST):
                # the host's name does not resolve: no network (or no DNS) here; retrying will not help
                # (a temporary failure, EAI_AGAIN, is retried as a cut connection is)
                raise _TransferFailed(f"cannot resolve its host ({e.reason.strerror or e.reason}): no network "
                                      f"here?") from e
            if isinstance(e, _RestartNeeded):
                part.unlink(missing_ok=True)
            if attempt == retries:
                raise _TransferFailed(f"{type(e).__name__}: {e} (gave up after {retries} retries)") from e
            size = part.stat().st_size if part.is_file() else 0
            logger.warning("%s: transfer interrupted at %d bytes (%s: %s); resuming, retry %d of %d",
                           name, size, type(e).__name__, e, attempt + 1, retries)
            time.sleep(retry_wait * 2 ** attempt)


def _parse_content_range(value: str | None) -> tuple[int, int | None]:
    """``bytes START-END/TOTAL`` -> (START, TOTAL or None when ``*``)."""
    match = re.fullmatch(r"\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*", value or "")
    if match is None:
        raise _RestartNeeded(f"expected a Content-Range 'bytes START-END/TOTAL', got {value!r}")
    total = match.group(3)
    return int(match.group(1)), None if total == "*" else int(total)


def _transfer_once(url: str, part: Path, name: str, offset: int, progress: ProgressFn | None,
                   timeout: float) -> None:
    headers = {"User-Agent": f"convrnn/{__version__}"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout) as response:
        length = response.headers.get("Content-Length")
        length = int(length) if length is not None and length.isdigit() else None
        if offset and response.status == 206:
            start, total = _parse_content_range(response.headers.get("Content-Range"))
            if start != offset:
                raise _RestartNeeded(f"asked for bytes from {offset}, server sent them from {start}")
            if total is None and length is not None:
                total = offset + length
            mode, done = "ab", offset
        else:
            if offset:
                logger.info("%s: server ignored the Range request (status %d): restarting from byte 0",
                            name, response.status)
            mode, done, total = "wb", 0, length
        if progress is not None:
            progress(name, done, total)
        try:
            f = open(part, mode)
        except OSError as e:  # a read-only or full folder: one line, not a traceback
            raise WriteError(f"{part}: cannot write the download ({e.strerror or e})") from None
        with f:
            while chunk := response.read(CHUNK_SIZE):
                f.write(chunk)
                done += len(chunk)
                if progress is not None:
                    progress(name, done, total)
            f.flush()
            os.fsync(f.fileno())
    if total is not None and done < total:
        raise _CutShort(f"connection closed after {done} of {total} bytes")
