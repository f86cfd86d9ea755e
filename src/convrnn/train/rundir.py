"""The run directory: resolved config, metrics CSV, TensorBoard events, checkpoints, log; the lock
a training holds on it, and the check that a checkpoint is the run's own."""
from __future__ import annotations

import csv
import errno
import glob
import itertools
import json
import logging
import os
import shutil
import threading
import time
import uuid
from datetime import datetime
from pathlib import Path
from typing import Callable, Optional, Sequence

from convrnn.errors import CheckpointError, ConfigError, DataError, WriteError
from convrnn.files import is_run_folder
from convrnn.train.config import read_run_config

try:
    import fcntl
except ImportError:  # pragma: no cover - no advisory locks (Windows): a run directory is not guarded
    fcntl = None

log = logging.getLogger(__name__)

METRIC_FIELDS = ["step", "epoch", "split", "metric", "value", "time"]


def metric_text(value) -> str:
    """A metric as ``metrics.csv`` holds it: a whole number in full (a count of lines or characters
    past a million would lose its last digits in 6 significant ones), anything else to 6 significant
    digits."""
    v = float(value)
    if v.is_integer() and abs(v) < 2 ** 53:
        return str(int(v))
    return f"{v:.6g}"


LOCK_FILE = ".lock"


def new_run_id() -> str:
    """A run's identity, recorded in its config.json and in every checkpoint it writes."""
    return uuid.uuid4().hex


class RunLock:
    """An advisory lock (``flock``) on ``RUN/.lock``, held by the process that trains the run.

    A second training, or a resume, of the same directory fails to take it and is refused in one line;
    reading the run (eval, report, predict) takes no lock. The operating system drops the lock when
    its process ends, however it ends, so a killed training never leaves a stale lock behind (only the
    empty file, which the next holder reuses). :meth:`release` removes the file while still holding the
    lock; :meth:`acquire` checks that the file it locked is still the one at ``RUN/.lock`` (not one a
    releasing holder just removed), so two processes never both hold a lock on the same run.
    """

    def __init__(self, path: Path, fd: Optional[int], made: list[Path]):
        self.path, self._fd = path, fd
        self.made = made  # the folders acquire made, the run directory first (a failed start removes them)

    @property
    def created(self) -> bool:
        """Whether acquire made the run directory (it did not exist before)."""
        return bool(self.made)

    @classmethod
    def acquire(cls, run: Path, *, resume: bool = False) -> "RunLock":
        """Lock the run directory ``run`` (made when missing); a run another process holds is a ConfigError."""
        run = Path(run)
        missing, p = [], run
        while not p.exists() and p != p.parent:
            missing.append(p)
            p = p.parent
        try:
            run.mkdir(parents=True)
        except FileExistsError:  # there before, or made by another process just now: not ours to remove
            missing = []
        except OSError as e:
            raise ConfigError(f"{run}: cannot create the run directory ({e.strerror or e})") from None
        created = missing
        if not run.is_dir():
            raise ConfigError(f"{run}: not a directory; give a run directory as --run-dir")
        lock = run / LOCK_FILE
        if fcntl is None:
            return cls(lock, None, created)
        while True:
            try:
                fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as e:
                raise ConfigError(f"{lock}: cannot create the run's lock file ({e.strerror or e})") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                os.close(fd)
                if e.errno in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EACCES):
                    what = f"--resume {run}" if resume else str(run)
                    then = "wait for it to end" if resume else "wait for it to end, or give another --run-dir"
                    raise ConfigError(f"{what}: another process is training this run directory right now "
                                      f"(it holds {lock}); {then}") from None
                # a file system without locks (some network mounts): train unguarded rather than not at all
                log.warning("%s: cannot lock the run directory (%s); a second training into it would not be "
                            "refused", run, e.strerror or e)
                return cls(lock, None, created)
            try:
                held = os.fstat(fd)
                now = os.stat(lock)
                same = (held.st_dev, held.st_ino) == (now.st_dev, now.st_ino)
            except FileNotFoundError:
                same = False
            if same:
                return cls(lock, fd, created)
            os.close(fd)  # its previous holder removed that file as it released it: lock the new one

    def release(self) -> None:
        """Remove the lock file and drop the lock (a no-op once released)."""
        if self._fd is None:
            return
        try:
            self.path.unlink()
        except OSError:  # the run directory was removed already (a failed start)
            pass
        os.close(self._fd)
        self._fd = None

    def discard(self) -> None:
        """A failed start: remove the run directory acquire made, and the empty folders made for it, then
        release the lock. A directory that was there before is left alone."""
        if self.made:
            shutil.rmtree(self.made[0], ignore_errors=True)
            for folder in self.made[1:]:
                try:
                    folder.rmdir()  # only while empty: another run may have been made in it since
                except OSError:
                    break
        self.release()

    def __enter__(self) -> "RunLock":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def check_checkpoint_of_run(ckpt: dict, checkpoint: Path, run: Path) -> None:
    """Refuse a checkpoint that is not the run's own: ``run``'s config.json records the run's id
    (``run_id``) and recipe, every checkpoint the run writes its id. A checkpoint of another recipe, or
    with another (or no) id where config.json has one, is a CheckpointError naming both files. A run
    without config.json, or one made before runs had an id, is checked by its recipe alone."""
    cfg_file = Path(run) / "config.json"
    if not cfg_file.is_file():
        return
    saved = read_run_config(cfg_file)
    if not isinstance(saved.get("recipe"), str):
        raise DataError(f"{cfg_file}: expected the run's JSON config, an object with a 'recipe' name")
    recipe = ckpt.get("recipe", "")
    if saved["recipe"] != recipe:
        raise CheckpointError(f"{checkpoint}: the checkpoint is of recipe {recipe!r} but {cfg_file} is of recipe "
                              f"{saved['recipe']!r}: one of them belongs to another run, or was edited")
    want, got = saved.get("run_id") or "", ckpt.get("run_id") or ""
    if want and got != want:
        whose = f"run {got}" if got else "a run without a run_id"
        raise CheckpointError(f"{checkpoint}: the checkpoint is of {whose}, not of the run {want} of {cfg_file}; "
                              f"it was copied in from another run: give that run's directory instead")


def run_files(run: str | Path) -> list[Path]:
    """The files a run directory keeps (config, log, metrics, checkpoints), which no output may replace;
    for a checkpoint file given in place of its run, that file and its run's."""
    path = Path(run)
    if path.is_file():
        return [path] + (run_files(path.parent.parent) if path.parent.name == "checkpoints" else [])
    names = [path / n for n in ("config.json", "train.log", "metrics.csv")]
    return (names + (sorted((path / "checkpoints").iterdir()) if (path / "checkpoints").is_dir() else [])
            + run_data_files(path))


DATA_FILES_LIMIT = 20000  # files looked at per data folder or pattern: a guard, not a scan of a whole disk


def run_data_files(run: str | Path) -> list[Path]:
    """The files a run's ``data`` config names: files, the files below named folders and a pattern's
    matches. ``eval`` and ``report`` read them again, so no output may replace them either."""
    try:
        data = json.loads((Path(run) / "config.json").read_text(encoding="utf-8")).get("data") or {}
    except (OSError, ValueError, AttributeError):
        return []
    values = [v for value in (data.values() if isinstance(data, dict) else [])
              for v in (value if isinstance(value, list) else [value]) if isinstance(v, str) and v]
    own = Path(run).absolute()
    found: list[Path] = []
    for value in values:
        path = Path(value).expanduser()
        try:
            if path.is_file():
                found.append(path)
            elif path.is_dir():
                found += itertools.islice(_data_folder_files(path), DATA_FILES_LIMIT)
            elif any(c in value for c in "*?["):
                matches = itertools.islice(glob.iglob(str(path), recursive=True), DATA_FILES_LIMIT)
                found += [Path(m) for m in matches if os.path.isfile(m) and not is_run_path(Path(m))]
        except OSError:
            continue
    # the run's own outputs (report.html, a plot) are written again by the commands that made them
    return [f for f in found if not f.absolute().is_relative_to(own)]


def is_run_path(path: Path) -> bool:
    """Whether ``path`` lies in a convrnn run directory (any folder above it is one)."""
    return any(is_run_folder(parent) for parent in path.absolute().parents)


def _data_folder_files(folder: Path):
    """The files below a data folder, run directories in it passed over (a charlm run trained with
    ``--data .`` keeps its runs there; none of their files is data)."""
    for root, dirs, names in os.walk(folder):
        dirs[:] = [d for d in dirs if not is_run_folder(Path(root) / d)]
        for name in names:
            yield Path(root) / name


def new_run_dir(recipe: str, root: str = "runs") -> Path:
    """``runs/<recipe>-<YYYYmmdd-HHMMSS>``, with a numeric suffix if that name is taken."""
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    base = Path(root) / f"{recipe}-{stamp}"
    path, n = base, 1
    while path.exists():
        n += 1
        path = base.with_name(f"{base.name}-{n}")
    return path


class RunDir:
    """Owns the files of one run. Only the process that writes (rank 0) creates one."""

    def __init__(self, path: Path, *, tensorboard: bool = True):
        self.path = Path(path)
        try:
            self.checkpoints.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ConfigError(f"{self.path}: cannot create the run directory ({e.strerror or e})") from None
        self._tb = None
        self._tb_wanted = tensorboard
        self._tb_purge_step: Optional[int] = None  # a resume's first step: later events of an earlier try are hidden
        self._log_handler: Optional[logging.Handler] = None

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def metrics_csv(self) -> Path:
        return self.path / "metrics.csv"

    def attach_log(self, earlier: Sequence[logging.LogRecord] = ()) -> None:
        """Copy convrnn's log records into ``train.log`` for this run, after the ``earlier`` ones (what
        was said before the run directory existed: the data read, its warnings)."""
        handler = logging.FileHandler(self.path / "train.log", encoding="utf-8")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        for record in earlier:
            handler.handle(record)
        logging.getLogger("convrnn").addHandler(handler)
        self._log_handler = handler

    def log_metrics(self, step: int, epoch: int, split: str, metrics: dict[str, float]) -> None:
        """Append one row per metric to ``metrics.csv`` and to TensorBoard as ``split/metric``."""
        new = not self.metrics_csv.exists()
        now = round(time.time(), 3)
        try:
            with open(self.metrics_csv, "a", newline="", encoding="utf-8") as f:
                w = csv.writer(f)
                if new:
                    w.writerow(METRIC_FIELDS)
                for name, value in metrics.items():
                    w.writerow([step, epoch, split, name, metric_text(value), now])
        except OSError as e:  # a full disk: one line; a row cut short is dropped on resume (read_metrics)
            raise WriteError(f"{self.metrics_csv}: cannot write ({e.strerror or e}); the run stops at its last "
                             f"checkpoint, which --resume continues once there is room") from None
        tb = self.tensorboard()
        if tb is not None:
            for name, value in metrics.items():
                tb.add_scalar(f"{split}/{name}", float(value), step)

    def truncate_metrics(self, after_step: int) -> None:
        """Drop metric rows logged after ``after_step`` (used when resuming from an older checkpoint), and
        have TensorBoard hide the events after it, which the resumed run logs again."""
        self._tb_purge_step = after_step + 1
        if not self.metrics_csv.exists():
            return
        # read_metrics drops a last line cut short by a crash (appending after it would glue two rows
        # into one) and names the line of any other row that does not parse
        rows = read_metrics(self.metrics_csv)
        from convrnn.files import atomic_write_text
        import io
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(METRIC_FIELDS)
        for r in rows:  # values as log_metrics writes them: re-formatting metric_text's text gives the same text
            if r["step"] <= after_step:
                w.writerow([r["step"], r["epoch"], r["split"], r["metric"], metric_text(r["value"]), r["time"]])
        atomic_write_text(self.metrics_csv, buf.getvalue())

    def tensorboard(self):
        if self._tb is None and self._tb_wanted:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # pragma: no cover - tensorboard is a dependency
                log.warning("tensorboard is not installed; no event files will be written")
                self._tb_wanted = False
                return None
            try:
                writer = SummaryWriter(log_dir=str(self.path), purge_step=self._tb_purge_step)
            except OSError as e:
                self._tb_failed(e)
                return None
            _quiet_tensorboard_thread()
            self._tb = _GuardedWriter(writer, self._tb_failed)
        return self._tb

    def _tb_failed(self, error: BaseException) -> None:
        """TensorBoard's event file cannot be written (a full disk): its logging stops with one warning,
        and training goes on (metrics.csv and the checkpoints say the same, and fail loudly themselves)."""
        if self._tb_wanted:
            log.warning("%s: TensorBoard events cannot be written (%s); TensorBoard logging stops here, "
                        "metrics.csv goes on", self.path, getattr(error, "strerror", None) or error)
        self._tb_wanted = False
        writer, self._tb = self._tb, None
        if writer is not None:
            try:
                writer.unguarded.close()
            except Exception:  # noqa: BLE001 - the same failure again, already said
                pass

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None
        if self._log_handler is not None:
            logging.getLogger("convrnn").removeHandler(self._log_handler)
            self._log_handler.close()
            self._log_handler = None


class _GuardedWriter:
    """TensorBoard's SummaryWriter whose calls, on failure, call ``failed(error)`` and return None."""

    def __init__(self, writer, failed: Callable[[BaseException], None]):
        self.unguarded, self._failed = writer, failed

    def __getattr__(self, name: str):
        attr = getattr(self.unguarded, name)
        if not callable(attr):
            return attr

        def guarded(*args, **kwargs):
            try:
                return attr(*args, **kwargs)
            except Exception as e:  # noqa: BLE001 - its own writer thread's failure, raised again here
                self._failed(e)
                return None
        return guarded


_TB_THREAD_HOOKED = False


def _quiet_tensorboard_thread() -> None:
    """TensorBoard writes from a thread of its own, which prints a traceback when a write fails (a full
    disk) and then raises the error again at the writer's next call, where :class:`_GuardedWriter`
    turns it into one warning: the thread's own traceback is left out."""
    global _TB_THREAD_HOOKED
    if _TB_THREAD_HOOKED:
        return
    previous = threading.excepthook

    def hook(args) -> None:
        if type(args.thread).__name__ == "_AsyncWriterThread" and isinstance(args.exc_value, OSError):
            return
        previous(args)

    threading.excepthook = hook
    _TB_THREAD_HOOKED = True


def read_metrics(path: Path) -> list[dict]:
    """Rows of a run's metrics.csv (or of the run directory ``path``) as dicts with typed values.

    The one reader of metrics.csv (``plot curves``, the report, resuming). A last line without its line
    end is what a crash in the middle of :meth:`RunDir.log_metrics` leaves: it is skipped with a warning
    naming the file and line (its numbers may be cut short). A header without the columns of
    ``METRIC_FIELDS``, or any other row that does not parse, is a one-line :class:`DataError` naming
    the file and the line. An empty file has no rows.
    """
    p = Path(path)
    if p.is_dir():
        p = p / "metrics.csv"
    try:
        raw = p.read_bytes()
    except FileNotFoundError:  # callers tell "no metrics yet" from an unreadable file by this
        raise
    except OSError as e:
        raise DataError(f"{p}: cannot read ({e.strerror or e})") from None
    expected = f"{p}: expected columns {','.join(METRIC_FIELDS)} with numbers"
    lines = raw.splitlines(keepends=True)
    if lines and not lines[-1].endswith((b"\n", b"\r")):  # cut short by a crash while it was written
        log.warning("%s line %d: skipped, the line is cut short (no line end: a crash while it was written?)",
                    p, len(lines))
        lines.pop()
    columns: dict[str, int] = {}
    rows = []
    for number, line in enumerate(lines, 1):
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError:
            raise DataError(f"{expected}; line {number} is not UTF-8 text") from None
        if not text.strip():
            continue  # csv.writer never writes blank lines; one typed by hand means nothing
        fields = next(csv.reader([text]))
        if not columns:  # the header
            missing = [name for name in METRIC_FIELDS if name not in fields]
            if missing:
                raise DataError(f"{expected}; line {number} (the header) has no column {missing[0]!r}: "
                                f"{text.strip()[:80]!r}")
            columns = {name: fields.index(name) for name in METRIC_FIELDS}
            width = len(fields)
            continue
        if len(fields) != width:
            raise DataError(f"{expected}; line {number} has {len(fields)} fields, not {width}: {text.strip()[:80]!r}")
        row: dict = {}
        for name, kind in (("step", int), ("epoch", int), ("split", str), ("metric", str), ("value", float),
                           ("time", float)):
            cell = fields[columns[name]]
            try:
                row[name] = kind(cell)
            except ValueError:
                raise DataError(f"{expected}; line {number} has {name} {cell!r}, not a number: "
                                f"{text.strip()[:80]!r}") from None
        rows.append(row)
    return rows
