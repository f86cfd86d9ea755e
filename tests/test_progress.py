"""Progress: the trainer's periodic log lines carry a rate and an ETA; the console shows a bar on a
terminal, a line a minute under --quiet, and never the records meant for train.log only."""
import io
import logging
from types import SimpleNamespace

import pytest

from convrnn.cli.progress import ConsoleFilter, TrainProgress
from convrnn.train.trainer import Trainer


def fake_trainer(step, train_time, *, epochs=2, max_steps=0, max_time=0.0, start=(0, 0.0)):
    t = SimpleNamespace(cfg=SimpleNamespace(epochs=epochs, max_steps=max_steps, max_time=max_time),
                        pos=SimpleNamespace(step=step, train_time=train_time, epoch=0), _fit_start=start,
                        later_members=0)
    t.eta = lambda info, start=None: Trainer.eta(t, info, start)
    t.progress_line = lambda info, loss, rate: Trainer.progress_line(t, info, loss, rate)
    return t


@pytest.mark.parametrize("limits, expected", [
    (dict(epochs=2), (2 * 10 - 4) * 0.5),                 # 16 steps left of 2 epochs of 10 batches
    (dict(epochs=2, max_steps=6), (6 - 4) * 0.5),          # max_steps comes first
    (dict(epochs=2, max_time=3.0), 3.0 - 2.0),             # the time limit comes first
])
def test_eta_is_the_first_limit_at_the_recent_seconds_per_step(limits, expected):
    trainer = fake_trainer(4, 2.0, **limits)  # 4 steps in 2 s: 0.5 s per step
    info = {"epoch": 0, "batch": 4, "batches": 10}
    assert trainer.eta(info, (0, 0.0)) == pytest.approx(expected)
    assert trainer.eta(info, (4, 2.0)) is None  # no step yet in this process: no estimate


@pytest.mark.parametrize("limits, later_each", [
    (dict(epochs=2), 2 * 10 * 0.5),              # a later member: 2 epochs of 10 batches at 0.5 s
    (dict(epochs=2, max_time=3.0), 3.0),          # ... or its time limit
])
def test_an_ensemble_members_eta_counts_the_members_after_it(limits, later_each):
    trainer = fake_trainer(4, 2.0, **limits)
    info = {"epoch": 0, "batch": 4, "batches": 10}
    own = trainer.eta(info, (0, 0.0))
    trainer.later_members = 2
    assert trainer.eta(info, (0, 0.0)) == pytest.approx(own + 2 * later_each)


def test_progress_lines_show_rate_and_eta():
    trainer = fake_trainer(5, 1.0, epochs=1)
    info = {"step": 5, "epoch": 0, "batch": 5, "batches": 10, "loss": 0.5, "rate": 80.0, "unit": "samples"}
    assert trainer.progress_line(info, 0.5, 80.0) == "step 5  epoch 1 batch 5/10  loss 0.5000  80 samples/s  eta 1 s"


def test_quiet_prints_plain_lines_once_a_minute_and_never_a_bar(monkeypatch):
    from convrnn.cli import progress as progress_module
    from convrnn.cli.progress import QUIET_EVERY, CountProgress

    clock = [1000.0]
    monkeypatch.setattr(progress_module.time, "monotonic", lambda: clock[0])
    out = io.StringIO()
    progress = TrainProgress(quiet=True, stream=out)
    assert not progress.fancy
    trainer = fake_trainer(1, 0.5, epochs=1)
    info = {"step": 1, "epoch": 0, "batch": 1, "batches": 10, "loss": 0.5, "rate": 80.0, "unit": "samples"}
    for seconds in (0.0, 10.0, QUIET_EVERY - 1, QUIET_EVERY + 1):  # lines at 0 s and after a minute only
        clock[0] = 1000.0 + seconds
        progress.on_step(trainer, info)
    lines = out.getvalue().strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith("step 1  epoch 1 batch 1/10  loss 0.5000")

    out = io.StringIO()
    count = CountProgress("rendering", quiet=True, stream=out)
    clock[0] = 2000.0
    count(10, 100)
    clock[0] = 2030.0
    count(50, 100)  # within the minute: no line
    clock[0] = 2070.0
    count(100, 100)
    lines = out.getvalue().strip().splitlines()
    assert len(lines) == 2 and lines[-1].startswith("rendering: 100/100 items")


def test_not_quiet_and_not_a_terminal_leaves_the_lines_to_the_log():
    out = io.StringIO()
    progress = TrainProgress(stream=out)
    info = {"step": 1, "epoch": 0, "batch": 1, "batches": 10, "loss": 0.5, "rate": 80.0, "unit": "samples"}
    progress.on_train_start(fake_trainer(0, 0.0))
    progress.on_step(fake_trainer(1, 0.5), info)
    progress.on_train_end(fake_trainer(1, 0.5), {})
    assert out.getvalue() == ""


def test_console_filter_hides_file_only_records_and_progress_lines_under_a_bar(monkeypatch):
    from convrnn.cli import progress as progress_module

    def record(**extra):
        r = logging.LogRecord("convrnn.x", logging.INFO, __file__, 1, "message", None, None)
        r.__dict__.update(extra)
        return r

    f = ConsoleFilter()
    assert f.filter(record()) and f.filter(record(progress=True))
    assert not f.filter(record(console=False))
    monkeypatch.setattr(progress_module, "_live", [object()])  # a bar is drawn
    assert not f.filter(record(progress=True)) and f.filter(record())


def test_bar_serves_one_training_after_another():
    """The members of an ensemble train one after another with one callback: each gets its own bar
    (the second used to remove a task of the first bar, a KeyError in a terminal)."""
    progress = TrainProgress(fancy=True, stream=io.StringIO())
    info = {"step": 1, "epoch": 0, "batch": 1, "batches": 10, "loss": 0.5, "rate": 80.0, "unit": "samples"}
    for member in range(2):
        progress.on_train_start(fake_trainer(0, 0.0))
        progress.on_step(fake_trainer(1, 0.5), info)
        progress.on_step(fake_trainer(11, 5.0), {**info, "epoch": 1})  # a new epoch replaces the task
        progress.on_train_end(fake_trainer(11, 5.0), {})
    assert progress._bar is None


def test_bar_shows_the_time_left_to_the_first_limit():
    """The bar is the epoch's, but its time left is the run's: with --max-time the limit comes first."""
    out = io.StringIO()
    progress = TrainProgress(fancy=True, stream=out)
    info = {"step": 4, "epoch": 0, "batch": 4, "batches": 100, "loss": 0.5, "rate": 80.0, "unit": "samples"}
    progress.on_train_start(fake_trainer(0, 0.0))
    progress.on_step(fake_trainer(4, 2.0, epochs=10, max_time=5.0), info)  # 0.5 s a step; 3 s of time left
    task = progress._bar.progress.tasks[0]
    assert task.fields["left"] == "0:00:03 left"
    progress.on_train_end(fake_trainer(4, 2.0), {})


def test_count_progress_times_each_phase_from_its_own_start(monkeypatch):
    """One callback counts the training pages, then the validation pages: the second count's rate is
    its own, not its items over the time since the first began."""
    from convrnn.cli import progress as progress_module
    from convrnn.cli.progress import CountProgress
    clock = [0.0]
    monkeypatch.setattr(progress_module.time, "monotonic", lambda: clock[0])
    stream = io.StringIO()
    progress = CountProgress("pages", every=0.0, stream=stream)
    for done, at in ((50, 50.0), (100, 100.0), (10, 101.0), (20, 102.0)):  # 1/s, then 10/s
        clock[0] = at
        progress(done, 100 if at <= 100 else 20)
    assert stream.getvalue().splitlines() == ["pages: 50/100 items (1/s, eta 50 s)", "pages: 100/100 items (1/s, eta 0 s)",
                                              "pages: 10/20 items (10/s, eta 1 s)", "pages: 20/20 items (10/s, eta 0 s)"]
