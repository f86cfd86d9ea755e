import math

import pytest
import torch

from convrnn.errors import ConfigError, TrainingDiverged
from convrnn.spec.builder import build_model
from convrnn.tasks.classify import ClassifyTask
from convrnn.train.checkpoint import load_checkpoint
from convrnn.train.config import TrainConfig
from convrnn.train.rundir import read_metrics
from convrnn.train.trainer import Trainer, lr_factor

from helpers import make_trainer, toy_batches


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
    assert t.result().stopped_by == "time"


@pytest.mark.parametrize("limits,reason,words", [
    ({"epochs": 2, "max_time": 3600.0}, "epochs", "the epoch limit (--epochs)"),
    ({"epochs": 1000, "max_time": 0.3}, "time", "the time limit (--max-time)"),
    ({"epochs": 10, "max_steps": 3}, "steps", "the step limit (--max-steps)"),
    ({"epochs": 50, "early_stopping": 1, "val_every": 1}, "early_stopping",
     "early stopping (validation stopped improving; train.early_stopping)")])
def test_the_result_names_the_limit_that_ended_training(tmp_path, limits, reason, words):
    # a time budget that outlasts the epoch limit still ends at the epochs: the result says which limit,
    # and so do train.log's last line and the results block the CLI prints, in the same words
    from convrnn.cli.train import results_block

    t = make_trainer(tmp_path, "run", **limits)
    t.fit()
    assert t.result().stopped_by == reason
    assert f"; stopped by {words.split(' (')[0]};" in t.describe_end() + ";"
    assert results_block(t.result())[1].endswith(f" s; stopped by {words}")


def test_lr_schedules():
    assert lr_factor("constant", 0.7, 10, 0) == 1.0
    assert lr_factor("cosine", 0.0, 0, 0) == pytest.approx(1.0)
    assert lr_factor("cosine", 1.0, 0, 0) == pytest.approx(0.0, abs=1e-9)
    assert lr_factor("cosine", 0.5, 0, 0) == pytest.approx(0.5)
    assert lr_factor("step", 0.5, 0, 0) == pytest.approx(0.1)
    assert lr_factor("constant", 0.0, 0, 10) == pytest.approx(0.1)  # warm-up: step 1 of 10
    assert math.isclose(lr_factor("onecycle", 0.3, 0, 0), 1.0)


def _conv_trainer(memory_format, spec="conv:8,3x3,relu bn pool:2x2 conv:16,3x3,relu bn pool:2x2"):
    """A Trainer (no run directory) of a small conv model on random 8x8 images."""
    torch.manual_seed(0)
    x = torch.randn(64, 1, 8, 8).numpy()
    y = (x[:, 0, :4].mean((1, 2)) > 0).astype("int64")
    model = build_model(f"{spec} flatten dense:2,linear", (1, 8, 8), 2)
    cfg = TrainConfig(epochs=2, batch_size=16, lr=1e-2, device="cpu", memory_format=memory_format)
    return Trainer(model, ClassifyTask(["a", "b"]), toy_batches(x, y), toy_batches(x, y, shuffle=False), cfg)


def test_memory_format_lays_out_conv_kernels_and_trains_to_the_same_weights():
    last, plain = _conv_trainer("auto"), _conv_trainer("contiguous")
    kernels = [n for n, p in last.model.named_parameters() if p.dim() == 4]
    assert len(kernels) == 2
    params = dict(last.model.named_parameters())
    assert all(params[n].is_contiguous(memory_format=torch.channels_last) for n in kernels)  # auto on the CPU
    assert not params[kernels[1]].is_contiguous()  # (with one input channel the first kernel is both layouts)
    assert all(p.is_contiguous() for p in plain.model.parameters())
    assert last.channels_last and not plain.channels_last  # what the progress line reports
    last.fit()
    plain.fit()
    a, b = last.model.state_dict(), plain.model.state_dict()
    for k in a:  # 8 Adam steps apart only by the summation order of the kernels
        torch.testing.assert_close(a[k], b[k], atol=1e-4, rtol=1e-4)
    fresh = build_model(last.model.spec, (1, 8, 8), 2).eval()  # a channels-last checkpoint loads into a plain model
    fresh.load_state_dict(a)
    x = torch.randn(3, 1, 8, 8)
    torch.testing.assert_close(fresh(x), last.model.eval()(x))


def test_memory_format_auto_leaves_narrow_convolutions_contiguous():
    narrow = _conv_trainer("auto", spec="conv:4,3x3,relu pool:2x2 conv:8,3x3,relu")
    assert all(p.is_contiguous() for p in narrow.model.parameters()) and not narrow.channels_last
    forced = _conv_trainer("channels_last", spec="conv:4,3x3,relu pool:2x2 conv:8,3x3,relu")
    assert not forced.model.layers[2].conv.weight.is_contiguous()  # the second kernel (4 input channels)


def test_memory_format_rejects_unknown_values():
    with pytest.raises(ConfigError, match=r"train.memory_format: expected one of auto, channels_last, contiguous, got 'nhwc'"):
        _conv_trainer("nhwc")


def test_best_checkpoint_breaks_ties_by_loss_then_by_the_later_step(tmp_path):
    """Once the accuracy saturates, best.pt follows the validation loss, and an exact tie keeps the
    later weights: the first perfect epoch is not what eval reads for the rest of the run."""
    t = make_trainer(tmp_path, "ties", epochs=1)
    sequence = [  # (step, accuracy, loss): is it the new best?
        (10, 0.9, 0.30, True),    # the first validation
        (20, 1.0, 0.20, True),    # better accuracy
        (30, 1.0, 0.25, False),   # a tie in accuracy, higher loss
        (40, 1.0, 0.10, True),    # a tie in accuracy, lower loss
        (50, 1.0, 0.10, True),    # a tie in both: the later step
        (60, 0.95, 0.01, False),  # lower accuracy, whatever the loss
    ]
    for step, accuracy, loss, expected in sequence:
        t.pos.step = step
        t.evaluate = lambda data, max_batches=0, a=accuracy, l=loss: {"loss": l, "accuracy": a, "errors": 0.0,
                                                                      "samples": 32.0}
        t._validate_current()
        t.save("last")  # best.pt is written with the step's last.pt, never before it
        assert (t.pos.best_step == step) == expected, (step, t.pos.best_step)
    assert (t.pos.best, t.pos.best_loss, t.pos.best_step) == (1.0, 0.10, 50)
    best = load_checkpoint(tmp_path / "ties" / "checkpoints" / "best.pt")
    assert best["step"] == 50 and best["metrics"]["loss"] == 0.10


def test_restore_applies_the_configs_optimizer_settings(tmp_path):
    """A resume keeps the optimizer's state but trains with the config's weight decay and momentum
    (RMSprop gets the momentum buffer it makes only for a momentum set from the start)."""
    first = make_trainer(tmp_path, "run", optimizer="rmsprop", momentum=0.0, max_steps=3)
    first.fit()
    ckpt = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    second = make_trainer(tmp_path, "run", optimizer="rmsprop", momentum=0.5, weight_decay=0.1, max_steps=6)
    second.restore(ckpt)
    assert [(g["momentum"], g["weight_decay"]) for g in second.optimizer.param_groups] == [(0.5, 0.1)]
    assert second.optimizer.state_dict()["state"][0]["step"] == ckpt["optimizer"]["state"][0]["step"]
    second.fit()
    assert second.pos.step == 6


def test_resume_refusal_names_what_a_checkpoint_cannot_continue_under():
    from convrnn.train.trainer import resume_refusal

    saved = {"train": {"optimizer": "adam", "batch_size": 16, "seed": 0, "epochs": 3, "max_steps": 4, "max_time": 0}}
    now = {"train": dict(saved["train"])}
    assert resume_refusal(saved, {"train": {**now["train"], "optimizer": "adamw"}}, epoch=2, batch_in_epoch=0) \
        .startswith("train.optimizer=adamw: the run trains with adam")
    for key, value in (("batch_size", 8), ("seed", 1)):
        changed = {"train": {**now["train"], key: value}}
        assert resume_refusal(saved, changed, epoch=0, batch_in_epoch=4).startswith(
            f"train.{key}={value}: the run stopped at batch 4 of epoch 1")
        assert resume_refusal(saved, changed, epoch=1, batch_in_epoch=0) == ""  # at an epoch's end
    limits = {"train": {**now["train"], "epochs": 9, "max_steps": 0, "max_time": 60.0}}
    assert resume_refusal(saved, limits, epoch=0, batch_in_epoch=4) == ""
    assert resume_refusal(None, now, epoch=0, batch_in_epoch=4) == ""  # a checkpoint without its config


def test_trainer_refuses_parts_that_would_fail_later_and_its_checkpoints_rebuild_alone(tmp_path):
    from helpers import toy_batches, toy_classification
    from convrnn.errors import CheckpointError
    from convrnn.infer.run import load_model, load_run

    x, y = toy_classification()
    x = x.reshape(len(x), 1, 2, 3)  # six features as a 2x3 image
    batches = toy_batches(x, y)
    model = build_model("cols lstm:8 cls:last", (1, 2, 3), 3)
    config = TrainConfig(epochs=1, batch_size=16)
    with pytest.raises(ConfigError, match="gives 3 outputs per input where the classify task needs 2"):
        Trainer(model, ClassifyTask(["a", "b"]), batches, None, config)
    with pytest.raises(TypeError, match="a model with run"):
        Trainer(torch.nn.Linear(2, 2), ClassifyTask(["a", "b", "c"]), batches, None, config)
    with pytest.raises(TypeError, match="train batches must be a convrnn BatchSource"):
        Trainer(model, ClassifyTask(["a", "b", "c"]), [{"x": x, "y": y}], None, config)
    with pytest.raises(TypeError, match="must be a convrnn.train.config.TrainConfig"):
        Trainer(model, ClassifyTask(["a", "b", "c"]), batches, None, {"epochs": 1})
    # a path is taken as the run directory; the spec model's own description goes into every checkpoint
    Trainer(model, ClassifyTask(["a", "b", "c"]), batches, None, config, run_dir=tmp_path / "run").fit()
    again, _ = load_model(tmp_path / "run" / "checkpoints" / "last.pt")
    torch.testing.assert_close(again(torch.from_numpy(x[:4])), model.eval()(torch.from_numpy(x[:4])))
    with pytest.raises(CheckpointError, match="names no recipe.*load_model"):
        load_run(tmp_path / "run" / "checkpoints" / "last.pt")
    with pytest.raises(ValueError, match=r"expected logits of shape \(B, 3\), one per class, got \(2, 4\)"):
        ClassifyTask(["a", "b", "c"]).predict(torch.zeros(2, 4))


def test_best_checkpoint_follows_its_last_checkpoint_and_a_resume_mends_a_missing_one(tmp_path, monkeypatch, caplog):
    """A kill between a step's last.pt and its best.pt leaves a resumable run; its resume writes the
    best.pt the interrupted attempt had not (the resumed checkpoint is that best)."""
    import logging
    from convrnn.train import trainer as trainer_module

    t = make_trainer(tmp_path, "order", epochs=1)
    order = []
    real_rotating, real_save = trainer_module.save_rotating, trainer_module.save_checkpoint
    monkeypatch.setattr(trainer_module, "save_rotating", lambda d, c, step, keep: order.append(("last", step))
                        or real_rotating(d, c, step, keep))
    monkeypatch.setattr(trainer_module, "save_checkpoint", lambda path, c: order.append((path.name, c["step"]))
                        or real_save(path, c))
    t.fit()
    firsts = [order.index(("best.pt", step)) for name, step in order if name == "best.pt"]
    assert firsts and all(order.index(("last", order[k][1])) < k for k in firsts)
    ckdir = tmp_path / "order" / "checkpoints"
    (ckdir / "best.pt").unlink()  # as a kill right after last.pt leaves it
    last = load_checkpoint(ckdir / "last.pt")
    assert last["best_step"] == last["step"]  # the toy run's last validation is its best
    (ckdir / ".step-00000099.pt.k2j3h4.tmp").write_bytes(b"x" * 1000)  # a killed atomic write's file
    resumed = make_trainer(tmp_path, "order", epochs=1)
    with caplog.at_level(logging.INFO):
        resumed.restore(last)
    assert load_checkpoint(ckdir / "best.pt")["step"] == last["step"]
    assert "best.pt: set to the resumed checkpoint" in caplog.text
    assert not list(ckdir.glob(".*")) and "removed 1 temporary file" in caplog.text
