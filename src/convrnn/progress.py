"""Progress for long work: a rich bar on a terminal, plain periodic lines elsewhere (CI, pipes, --quiet).

``quiet`` never draws a bar and prints its plain lines less often (every ``QUIET_EVERY`` seconds), so a
long run under ``--quiet`` still shows that it is alive, with its rate and ETA.

Used by the CLI only; library code reports through callbacks and ``logging``.
"""
from __future__ import annotations

import sys
import time
from typing import Optional

QUIET_EVERY = 60.0  # seconds between plain progress lines under --quiet


def _fmt_metrics(metrics: dict) -> str:
    parts = []
    for k, v in metrics.items():
        if k.endswith("_per_s"):
            continue
        parts.append(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}")
    return "  ".join(parts)


def _console(stream):
    """A rich Console writing to ``stream``: ``Progress(console=...)`` is the form every rich version
    accepts (``Progress(file=...)`` was removed)."""
    from rich.console import Console
    return Console(file=stream)


class TrainProgress:
    """Trainer callback. ``fancy`` draws a rich progress bar; otherwise a line every ``every`` seconds."""

    def __init__(self, *, fancy: Optional[bool] = None, every: float = 10.0, quiet: bool = False, stream=None):
        self.stream = stream or sys.stderr
        self.fancy = (self.stream.isatty() and not quiet) if fancy is None else fancy
        self.quiet, self.every = quiet, max(every, QUIET_EVERY) if quiet else every
        self._last_print = 0.0
        self._bar = None
        self._task = None
        self._task_epoch = -1
        self._ema: Optional[float] = None
        self._rate: Optional[float] = None
        self._start = (0, 0.0)  # (step, training seconds) when this process started training

    def _print(self, text: str) -> None:
        if self._bar is not None:
            self._bar.console.print(text)
        else:
            print(text, file=self.stream, flush=True)

    def on_train_start(self, trainer) -> None:
        from convrnn.train.trainer import Trainer  # noqa: F401  (for type readers)
        cfg = trainer.cfg
        self._start = (trainer.pos.step, trainer.pos.train_time)
        where = trainer.run_dir.path if trainer.run_dir else "(no run directory)"
        limits = [f"{cfg.epochs} epochs"]
        if cfg.max_steps:
            limits.append(f"{cfg.max_steps} steps")
        if cfg.max_time:
            limits.append(f"{cfg.max_time:g} s")
        params = sum(p.numel() for p in trainer.model.parameters())
        layout = " (channels-last convolutions)" if getattr(trainer, "channels_last", False) else ""
        self._print(f"training {getattr(trainer.model, 'spec', type(trainer.model).__name__)!s} "
                    f"({params:,} parameters) on {trainer.device}{layout}, up to {', '.join(limits)}; run {where}")
        if self.fancy:
            from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
            self._bar = Progress(TextColumn("[bold]epoch {task.fields[epoch]}"), BarColumn(),
                                 TextColumn("{task.completed}/{task.total}"), TextColumn("{task.fields[info]}"),
                                 TimeElapsedColumn(), TimeRemainingColumn(), transient=False,
                                 console=_console(self.stream))
            self._bar.start()

    def on_step(self, trainer, info: dict) -> None:
        a = 0.1
        self._ema = info["loss"] if self._ema is None else (1 - a) * self._ema + a * info["loss"]
        self._rate = info["rate"] if self._rate is None else (1 - a) * self._rate + a * info["rate"]
        text = f"loss {self._ema:.4f}  {self._rate:,.0f} {info['unit']}/s"
        if self._bar is not None:
            if self._task is None or self._task_epoch != info["epoch"]:  # a new bar for each epoch
                if self._task is not None:
                    self._bar.remove_task(self._task)
                self._task = self._bar.add_task("train", total=info["batches"], epoch=info["epoch"] + 1, info="")
                self._task_epoch = info["epoch"]
            self._bar.update(self._task, completed=info["batch"], info=text)
            return
        now = time.monotonic()
        if now - self._last_print >= self.every:
            self._last_print = now
            eta = train_eta(trainer, info, self._start)
            eta_text = f"  eta {eta:.0f} s" if eta is not None else ""
            self._print(f"step {info['step']}  epoch {info['epoch'] + 1} batch {info['batch']}/{info['batches']}  "
                        f"{text}{eta_text}")

    def on_validation(self, trainer, metrics: dict) -> None:
        self._print(f"validation at step {trainer.pos.step} (epoch {trainer.pos.epoch}): {_fmt_metrics(metrics)}")

    def on_train_end(self, trainer, metrics: dict) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
        where = trainer.run_dir.path if trainer.run_dir else ""
        self._print(f"done: {trainer.pos.step} steps in {trainer.pos.train_time:.1f} s of training; "
                    f"{_fmt_metrics(metrics) or 'no validation'}; run {where}")


def train_eta(trainer, info: dict, start: tuple[int, float]) -> Optional[float]:
    """Training seconds left until the first limit (epochs, max_steps, max_time), from the seconds per
    step since ``start`` (step, training seconds); None before the first step. Validation is not counted."""
    cfg, pos = trainer.cfg, trainer.pos
    steps = pos.step - start[0]
    if steps <= 0:
        return None
    per_step = (pos.train_time - start[1]) / steps
    left = (cfg.epochs - info["epoch"]) * info["batches"] - info["batch"]  # epochs of this epoch's size
    if cfg.max_steps:
        left = min(left, cfg.max_steps - pos.step)
    eta = max(left, 0) * per_step
    if cfg.max_time:
        eta = min(eta, max(cfg.max_time - pos.train_time, 0.0))
    return eta


class CountProgress:
    """``progress(done, total)`` callback for rendering/downloading: a bar or periodic lines."""

    def __init__(self, label: str, *, quiet: bool = False, every: float = 5.0, stream=None, unit: str = "items"):
        self.stream = stream or sys.stderr
        self.label, self.quiet, self.unit = label, quiet, unit
        self.every = max(every, QUIET_EVERY) if quiet else every
        self.fancy = self.stream.isatty() and not quiet
        self._bar = None
        self._task = None
        self._t0 = time.monotonic()
        self._last = 0.0

    def __call__(self, done: int, total: int) -> None:
        if self.fancy:
            if self._bar is None:
                from rich.progress import Progress
                self._bar = Progress(transient=True, console=_console(self.stream))
                self._bar.start()
                self._task = self._bar.add_task(self.label, total=total)
            self._bar.update(self._task, completed=done)
            if done >= total:
                self._bar.stop()
            return
        now = time.monotonic()
        if now - self._last < self.every and (done < total or self.quiet):
            return
        self._last = now
        rate = done / max(now - self._t0, 1e-9)
        eta = (total - done) / rate if rate > 0 else float("inf")
        print(f"{self.label}: {done}/{total} {self.unit} ({rate:,.0f}/s, eta {eta:.0f} s)", file=self.stream, flush=True)
