"""The run directory: resolved config, metrics CSV, TensorBoard events, checkpoints, log."""
from __future__ import annotations

import csv
import logging
import time
from datetime import datetime
from pathlib import Path
from typing import Optional

from convrnn.errors import ConfigError, DataError

log = logging.getLogger(__name__)

METRIC_FIELDS = ["step", "epoch", "split", "metric", "value", "time"]


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
        self._log_handler: Optional[logging.Handler] = None

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def metrics_csv(self) -> Path:
        return self.path / "metrics.csv"

    def attach_log(self) -> None:
        """Copy convrnn's log records into ``train.log`` for this run."""
        handler = logging.FileHandler(self.path / "train.log", encoding="utf-8")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logging.getLogger("convrnn").addHandler(handler)
        self._log_handler = handler

    def log_metrics(self, step: int, epoch: int, split: str, metrics: dict[str, float]) -> None:
        """Append one row per metric to ``metrics.csv`` and to TensorBoard as ``split/metric``."""
        new = not self.metrics_csv.exists()
        now = round(time.time(), 3)
        with open(self.metrics_csv, "a", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            if new:
                w.writerow(METRIC_FIELDS)
            for name, value in metrics.items():
                w.writerow([step, epoch, split, name, f"{float(value):.6g}", now])
        tb = self.tensorboard()
        if tb is not None:
            for name, value in metrics.items():
                tb.add_scalar(f"{split}/{name}", float(value), step)

    def truncate_metrics(self, after_step: int) -> None:
        """Drop metric rows logged after ``after_step`` (used when resuming from an older checkpoint)."""
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
        for r in rows:  # values as log_metrics writes them: re-formatting "%.6g" text gives the same text
            if r["step"] <= after_step:
                w.writerow([r["step"], r["epoch"], r["split"], r["metric"], f"{r['value']:.6g}", r["time"]])
        atomic_write_text(self.metrics_csv, buf.getvalue())

    def tensorboard(self):
        if self._tb is None and self._tb_wanted:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # pragma: no cover - tensorboard is a dependency
                log.warning("tensorboard is not installed; no event files will be written")
                self._tb_wanted = False
                return None
            self._tb = SummaryWriter(log_dir=str(self.path))
        return self._tb

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None
        if self._log_handler is not None:
            logging.getLogger("convrnn").removeHandler(self._log_handler)
            self._log_handler.close()
            self._log_handler = None


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
