"""Plain progress lines (non-terminal, CI): training lines carry a rate and an ETA."""
import io
from types import SimpleNamespace

import pytest

from convrnn.progress import TrainProgress, train_eta


def fake_trainer(step, train_time, *, epochs=2, max_steps=0, max_time=0.0):
    return SimpleNamespace(cfg=SimpleNamespace(epochs=epochs, max_steps=max_steps, max_time=max_time),
                           pos=SimpleNamespace(step=step, train_time=train_time, epoch=0))


@pytest.mark.parametrize("limits, expected", [
    (dict(epochs=2), (2 * 10 - 4) * 0.5),                 # 16 steps left of 2 epochs of 10 batches
    (dict(epochs=2, max_steps=6), (6 - 4) * 0.5),          # max_steps comes first
    (dict(epochs=2, max_time=3.0), 3.0 - 2.0),             # the time limit comes first
])
def test_eta_is_the_first_limit_at_the_recent_seconds_per_step(limits, expected):
    trainer = fake_trainer(4, 2.0, **limits)  # 4 steps in 2 s: 0.5 s per step
    info = {"epoch": 0, "batch": 4, "batches": 10}
    assert train_eta(trainer, info, (0, 0.0)) == pytest.approx(expected)
    assert train_eta(trainer, info, (4, 2.0)) is None  # no step yet in this process: no estimate


def test_plain_lines_show_rate_and_eta():
    out = io.StringIO()
    progress = TrainProgress(fancy=False, every=0.0, stream=out)
    trainer = fake_trainer(0, 0.0, epochs=1)
    progress._start = (0, 0.0)
    trainer.pos.step, trainer.pos.train_time = 5, 1.0
    progress.on_step(trainer, {"step": 5, "epoch": 0, "batch": 5, "batches": 10, "loss": 0.5, "rate": 80.0,
                               "unit": "samples"})
    assert out.getvalue().strip() == "step 5  epoch 1 batch 5/10  loss 0.5000  80 samples/s  eta 1 s"


def test_quiet_prints_plain_lines_once_a_minute_and_never_a_bar(monkeypatch):
    from convrnn import progress as progress_module
    from convrnn.progress import QUIET_EVERY, CountProgress

    clock = [1000.0]
    monkeypatch.setattr(progress_module.time, "monotonic", lambda: clock[0])
    out = io.StringIO()
    progress = TrainProgress(quiet=True, every=10.0, stream=out)
    assert not progress.fancy and progress.every == QUIET_EVERY
    trainer = fake_trainer(0, 0.0, epochs=1)
    info = {"step": 1, "epoch": 0, "batch": 1, "batches": 10, "loss": 0.5, "rate": 80.0, "unit": "samples"}
    for seconds in (0.0, 10.0, 59.0, 61.0):  # lines at 0 s and 61 s only
        clock[0] = 1000.0 + seconds
        progress.on_step(trainer, info)
    assert len(out.getvalue().strip().splitlines()) == 2

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
