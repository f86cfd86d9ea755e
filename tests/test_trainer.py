import math

import pytest
import torch

from convrnn.errors import TrainingDiverged
from convrnn.train.checkpoint import load_checkpoint
from convrnn.train.rundir import read_metrics
from convrnn.train.trainer import lr_factor

from helpers import make_trainer


def weights(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("stop_at,ema", [(5, 0.0), (6, 0.0), (13, 0.0), (5, 0.9)])  # mid-epoch, end of epoch
# (96/16 = 6 batches), later epoch; and with weight averaging (both the raw and the averaged weights resume)
def test_resume_equals_uninterrupted(tmp_path, stop_at, ema):
    straight = make_trainer(tmp_path, "straight", epochs=10, max_steps=2 * stop_at, ema=ema)
    straight.fit()

    first = make_trainer(tmp_path, "resumed", epochs=10, max_steps=stop_at, ema=ema)
    first.fit()
    assert first.pos.step == stop_at
    ckpt = load_checkpoint(tmp_path / "resumed" / "checkpoints" / "last.pt")
    torch.manual_seed(1234)  # a different global RNG: restore must bring back the saved one
    second = make_trainer(tmp_path, "resumed", epochs=10, max_steps=2 * stop_at, ema=ema)
    second.restore(ckpt)
    second.fit()

    assert second.pos.step == straight.pos.step == 2 * stop_at
    a, b = weights(straight.model), weights(second.model)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    if ema:
        a, b = (load_checkpoint(tmp_path / name / "checkpoints" / "last.pt")["train_model"] for name in ("straight", "resumed"))
        assert all(torch.equal(a[k], b[k]) for k in a)


def test_training_learns_and_writes_run_files(tmp_path):
    t = make_trainer(tmp_path, "run", epochs=15)
    metrics = t.fit()
    assert metrics["accuracy"] > 0.8
    rows = read_metrics(tmp_path / "run")
    assert {r["split"] for r in rows} == {"train", "val"}
    assert (tmp_path / "run" / "checkpoints" / "best.pt").exists()
    best = load_checkpoint(tmp_path / "run")
    assert best["recipe"] == "toy" and best["metrics"]["accuracy"] >= 0.0


def test_nonfinite_loss_stops_with_message_and_keeps_last_checkpoint(tmp_path):
    t = make_trainer(tmp_path, "nan", epochs=2)
    t.fit()
    before = load_checkpoint(tmp_path / "nan" / "checkpoints" / "last.pt")["step"]
    with torch.no_grad():
        t.model.net[0].weight.fill_(float("nan"))
    t.cfg.epochs = 4
    with pytest.raises(TrainingDiverged, match=r"became nan at step \d+ .*last good checkpoint.*lower learning rate"):
        t.fit()
    after = load_checkpoint(tmp_path / "nan" / "checkpoints" / "last.pt")
    assert after["step"] == before
    assert all(torch.isfinite(v).all() for v in after["model"].values())


def test_max_time_stops(tmp_path):
    t = make_trainer(tmp_path, "time", epochs=1000, max_time=0.3)
    t.fit()
    assert 0.3 <= t.pos.train_time < 5.0
    assert t.pos.epoch < 1000


def test_lr_schedules():
    assert lr_factor("constant", 0.7, 10, 0) == 1.0
    assert lr_factor("cosine", 0.0, 0, 0) == pytest.approx(1.0)
    assert lr_factor("cosine", 1.0, 0, 0) == pytest.approx(0.0, abs=1e-9)
    assert lr_factor("cosine", 0.5, 0, 0) == pytest.approx(0.5)
    assert lr_factor("step", 0.5, 0, 0) == pytest.approx(0.1)
    assert lr_factor("constant", 0.0, 0, 10) == pytest.approx(0.1)  # warm-up: step 1 of 10
    assert math.isclose(lr_factor("onecycle", 0.3, 0, 0), 1.0)
