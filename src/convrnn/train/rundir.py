"""The run directory: resolved config, metrics CSV, TensorBoard events, checkpoints, log."""
from __future__ import annotations

import csv
import logging
import time
from datetime import datetime
from pathlib import Path
from typing import Optional

from convrnn.errors import ConfigError

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
        with open(self.metrics_csv, newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f))
        keep = [rows[0]] + [r for r in rows[1:] if r and int(r[0]) <= after_step]
        from convrnn.files import atomic_write_text
        import io
        buf = io.StringIO()
        csv.writer(buf).writerows(keep)
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
    """Rows of a run's metrics.csv as dicts with typed values."""
    p = Path(path)
    if p.is_dir():
        p = p / "metrics.csv"
    with open(p, newline="", encoding="utf-8") as f:
        return [{"step": int(r["step"]), "epoch": int(r["epoch"]), "split": r["split"], "metric": r["metric"],
                 "value": float(r["value"]), "time": float(r["time"])} for r in csv.DictReader(f)]
