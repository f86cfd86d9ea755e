"""Progress for long work: a rich bar on a terminal, plain periodic lines elsewhere (CI, pipes, --quiet).

``quiet`` never draws a bar and prints its plain lines less often (every ``QUIET_EVERY`` seconds), so a
long run under ``--quiet`` still shows that it is alive, with its rate and ETA.

Used by the CLI only; library code reports through callbacks and ``logging``.
"""
from __future__ import annotations

import logging
import sys
import time
from typing import Optional

QUIET_EVERY = 60.0  # seconds between plain progress lines under --quiet

_live: list["_Bar"] = []  # rich bars on screen now: progress lines in the log are not echoed meanwhile


class ConsoleFilter(logging.Filter):
    """What the console handler shows of convrnn's log: not the records meant for ``train.log`` only
    (``extra={"console": False}``), nor the periodic progress lines (``extra={"progress": True}``)
    while a progress bar shows the same thing."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "console", True) is False:
            return False
        return not (getattr(record, "progress", False) and _live)


def _console(stream):
    """A rich Console writing to ``stream``: ``Progress(console=...)`` is the form every rich version
    accepts (``Progress(file=...)`` was removed)."""
    from rich.console import Console
    return Console(file=stream, highlight=False)


class _Bar:
    """A rich Progress that lists itself in ``_live`` while started."""

    def __init__(self, *columns, stream, transient: bool):
        from rich.progress import Progress
        self.progress = Progress(*columns, transient=transient, console=_console(stream))

    def start(self):
        self.progress.start()
        _live.append(self)
        return self.progress

    def stop(self) -> None:
        if self in _live:
            _live.remove(self)
            self.progress.stop()


def stop_all() -> None:
    """Stop every bar still drawn (a command that ends in an error must leave a clean terminal)."""
    for bar in list(_live):
        bar.stop()


def _clock(seconds: float) -> str:
    """``0:04:05`` for 245 seconds."""
    s = int(round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


class TrainProgress:
    """Trainer callback for the console: a rich progress bar on a terminal (``fancy``); under ``quiet``
    a plain line every ``QUIET_EVERY`` seconds. Otherwise it shows nothing itself: the trainer's log
    (start, a progress line every few seconds, validations) is what a pipe or CI sees."""

    def __init__(self, *, fancy: Optional[bool] = None, quiet: bool = False, stream=None):
        self.stream = stream or sys.stderr
        self.fancy = (self.stream.isatty() and not quiet) if fancy is None else fancy
        self.quiet = quiet
        self._last_print: Optional[float] = None
        self._bar: Optional[_Bar] = None
        self._task = None
        self._task_epoch = -1
        self._ema: Optional[float] = None
        self._rate: Optional[float] = None

    def on_train_start(self, trainer) -> None:
        # one callback serves every member of an ensemble, each a training of its own: start afresh
        self._task, self._task_epoch, self._ema, self._rate = None, -1, None, None
        if self.fancy:
            from rich.progress import BarColumn, TextColumn, TimeElapsedColumn
            # the bar is the epoch's; the time left is the run's, to whichever limit (epochs, --max-steps,
            # --max-time) comes first, as in the log's progress lines
            self._bar = _Bar(TextColumn("[bold]epoch {task.fields[epoch]}"), BarColumn(),
                             TextColumn("{task.completed}/{task.total}"), TextColumn("{task.fields[info]}"),
                             TimeElapsedColumn(), TextColumn("[cyan]{task.fields[left]}"), stream=self.stream,
                             transient=False)
            self._bar.start()

    def on_step(self, trainer, info: dict) -> None:
        a = 0.1
        self._ema = info["loss"] if self._ema is None else (1 - a) * self._ema + a * info["loss"]
        self._rate = info["rate"] if self._rate is None else (1 - a) * self._rate + a * info["rate"]
        if self._bar is not None:
            bar = self._bar.progress
            if self._task is None or self._task_epoch != info["epoch"]:  # a new bar for each epoch
                if self._task is not None:
                    bar.remove_task(self._task)
                self._task = bar.add_task("train", total=info["batches"], epoch=info["epoch"] + 1, info="", left="")
                self._task_epoch = info["epoch"]
            eta = trainer.eta(info)
            bar.update(self._task, completed=info["batch"], left="" if eta is None else f"{_clock(eta)} left",
                       info=f"loss {self._ema:.4f}  {self._rate:,.0f} {info['unit']}/s")
            return
        if not self.quiet:
            return
        now = time.monotonic()
        if self._last_print is None or now - self._last_print >= QUIET_EVERY:
            self._last_print = now
            print(trainer.progress_line(info, self._ema, self._rate), file=self.stream, flush=True)

    def on_train_end(self, trainer, metrics: dict) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None


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
        self._phase: Optional[tuple[int, int]] = None  # the last (done, total) seen

    def __call__(self, done: int, total: int) -> None:
        if self.fancy:
            if self._bar is None:
                from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn
                self._bar = _Bar(TextColumn(self.label), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                                 stream=self.stream, transient=True)
                self._task = self._bar.start().add_task(self.label, total=total)
            self._bar.progress.update(self._task, completed=done)
            if done >= total:
                self._bar.stop()
                self._bar = None
            return
        now = time.monotonic()
        if self._phase is not None and (total != self._phase[1] or done < self._phase[0]):
            # counting started again (the validation pages after the training pages): so does the clock,
            # from the previous call, when the new phase's work began
            self._t0 = self._at
        self._phase, self._at = (done, total), now
        if now - self._last < self.every and (done < total or self.quiet):
            return
        self._last = now
        rate = done / max(now - self._t0, 1e-9)
        eta = (total - done) / rate if rate > 0 else float("inf")
        print(f"{self.label}: {done}/{total} {self.unit} ({rate:,.0f}/s, eta {eta:.0f} s)", file=self.stream, flush=True)
