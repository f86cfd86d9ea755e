"""Writing files so that a crash at any moment leaves the old file or the new one, never half of one."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

from convrnn.errors import WriteError


def fsync_dir(directory: Path) -> None:
    """Make a rename in ``directory`` durable (POSIX); a no-op where directories cannot be opened."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that a crash at any moment leaves either the old or the new file.

    The bytes go to a temporary file in the same directory, are flushed and fsynced, and the file is
    renamed over ``path``; the directory is fsynced so the rename itself survives a power cut.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise WriteError(f"{path}: cannot write ({e.strerror or e})") from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes files only the owner can read; plain files are not
        os.replace(tmp, path)
    except OSError as e:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise WriteError(f"{path}: cannot write ({e.strerror or e}); the previous file is untouched") from None
    fsync_dir(path.parent)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def cache_dir(name: str) -> Path:
    """Where convrnn caches ``name`` (rendered fonts, cut page lines): ``$CONVRNN_CACHE/name`` when the
    variable is set, else ``~/.cache/convrnn/name``."""
    root = os.environ.get("CONVRNN_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "convrnn")
    return Path(root) / name
