"""Writing files so that a crash at any moment leaves the old file or the new one, never half of one."""
from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable, Iterable

from convrnn.errors import ConfigError, WriteError


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


_KINDS = ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
          (stat.S_ISSOCK, "a socket"))


def write_target(path: str | os.PathLike) -> Path:
    """The file that writing ``path`` must replace: ``path`` itself, or the file its symlink(s) lead to.

    A symlink is followed so that the link stays a link and its target gets the new content (as a shell
    redirect does); renaming over the link itself would turn it into a regular file. Raises
    :class:`WriteError` naming ``path`` when it is (or leads to) something a rename must not replace: a
    folder, a device such as /dev/null, a FIFO, a socket; or when the symlinks loop.
    """
    path = Path(path)
    target = path
    if path.is_symlink():
        try:
            target = Path(os.path.realpath(path, strict=True))
        except FileNotFoundError:  # a dangling link: write the file it names (realpath resolves what it can)
            target = Path(os.path.realpath(path))
        except OSError as e:  # ELOOP: a cycle of links has no file at its end
            raise WriteError(f"{path}: cannot write, the symlink does not lead to a file ({e.strerror or e})") from None
    try:
        mode = os.stat(target).st_mode
    except (FileNotFoundError, NotADirectoryError):  # nothing there yet (the folder is made, or refused, later)
        return target
    except OSError as e:
        raise WriteError(f"{path}: cannot write ({e.strerror or e})") from None
    via = f" (the symlink leads to {target})" if target != path else ""
    if stat.S_ISDIR(mode):
        raise WriteError(f"{path}: cannot write, it is a folder{via}; give a file name")
    if not stat.S_ISREG(mode):
        kind = next((name for test, name in _KINDS if test(mode)), "a special file")
        raise WriteError(f"{path}: cannot write, not a regular file ({kind}){via}; "
                         f"it is left as it is, give a file name")
    return target


def check_writable(path: str | os.PathLike, *, keep: Iterable[str | os.PathLike] = (), png: bool = False) -> None:
    """Refuse an output file that cannot be written, before the work that makes its content.

    :func:`write_target` refuses a folder, FIFO, device or socket at ``path``; this also refuses a
    ``path`` whose folder cannot be made (a part of it is a regular file) or cannot be written in
    (read-only, no permission), a name ending in ``/``, one not named .png when ``png`` (what is
    written), and a file of ``keep`` (the command's inputs, a run's own files: written over, they would
    be lost), naming it in one :class:`WriteError`. Nothing is created: the folder is made when the file
    is written. Every command that writes a file calls it before its work.
    """
    if str(path).endswith(("/", os.sep)):  # a folder's name: written as a file, it would take that name
        raise WriteError(f"{path}: cannot write, a folder name (it ends with /); give a file name")
    target = write_target(path)
    if target.exists():
        for kept in keep:
            if os.path.exists(kept) and os.path.samefile(target, kept):
                same = "" if str(kept) == str(path) else f"the same file as {kept}, "
                raise WriteError(f"{path}: {same}a file this command reads; refusing to write over it, give "
                                 f"another file name")
    if png and Path(path).suffix.lower() not in ("", ".png"):  # PNG bytes under another name mislead viewers
        raise WriteError(f"{path}: this command writes a PNG image; give a name ending in .png")
    folder = target.parent
    while not os.path.lexists(folder) and folder != folder.parent:  # the deepest part that exists
        folder = folder.parent
    if os.path.lexists(folder) and not folder.is_dir():
        raise WriteError(f"{path}: cannot write, a part of its folder {folder} is a file, not a folder")
    if folder.is_dir() and not os.access(folder, os.W_OK | os.X_OK):
        raise WriteError(f"{path}: cannot write, the folder {folder} is read-only or not writable by this user")


def atomic_write_with(path: str | os.PathLike, write: Callable[[BinaryIO], object]) -> Path:
    """Call ``write(f)`` on a temporary file beside ``path``'s target, then rename it over the target.

    For content too large to hold twice in memory (``np.savez`` of a dataset cache);
    :func:`atomic_write_bytes` is this with ``f.write(data)``. The target is :func:`write_target`'s:
    a symlink keeps pointing at the (new) file, and a folder, device, FIFO or socket is refused, never
    replaced. The file gets the permissions a plain ``open()`` gives (0o666 less the umask), the bytes
    are fsynced before the rename and the folder after it, so a crash or power cut at any moment leaves
    the old file or the new one. On any failure the temporary file is removed and the old file is
    untouched; an OSError is raised as a one-line :class:`WriteError`, anything else ``write`` raises
    passes through. Returns the path written (the symlink's target where ``path`` is a symlink).
    """
    path = Path(path)
    target = write_target(path)
    folder = target.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise WriteError(f"{path}: cannot write, a part of its folder {folder} is a file, not a folder") from None
    except OSError as e:
        raise WriteError(f"{path}: cannot write ({e.strerror or e})") from None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=folder)
    except OSError as e:
        raise WriteError(f"{path}: cannot write ({e.strerror or e})") from None
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes files only the owner can read; plain files are not
        os.replace(tmp, target)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(e, OSError) and not isinstance(e, WriteError):
            raise WriteError(f"{path}: cannot write ({e.strerror or e}); the previous file is untouched") from None
        raise
    fsync_dir(folder)
    return target


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` so that a crash at any moment leaves either the old or the new file.

    The bytes go to a temporary file in the target's folder, are flushed and fsynced, and the file is
    renamed over the target; the folder is fsynced so the rename itself survives a power cut. A symlink
    is followed (its target gets the bytes, the link stays); a folder, device, FIFO or socket is refused
    with :class:`WriteError` and left as it is. See :func:`atomic_write_with`.
    """
    return atomic_write_with(path, lambda f: f.write(data))


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def is_run_folder(folder: Path) -> bool:
    """A convrnn run directory: config.json beside checkpoints/ or an ensemble's members/, or a run's
    lock file (a run in progress). What reads a folder of the user's data passes these over."""
    return ((folder / "config.json").is_file() and ((folder / "checkpoints").is_dir() or (folder / "members").is_dir())
            or (folder / ".lock").exists())


def cache_dir(name: str) -> Path:
    """Where convrnn caches ``name`` (rendered fonts, cut page lines): ``$CONVRNN_CACHE/name`` when the
    variable is set, else ``~/.cache/convrnn/name``."""
    given = os.environ.get("CONVRNN_CACHE")
    root = given or os.path.join(os.path.expanduser("~"), ".cache", "convrnn")
    if given and os.path.exists(given) and not os.path.isdir(given):  # every cache write would fail unseen
        raise ConfigError(f"CONVRNN_CACHE={given}: a file, not a folder; point it at a folder (made if missing)")
    return Path(root) / name
