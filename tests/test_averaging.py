"""Weight averaging (train.ema): the moving average itself, and how the trainer validates and saves it."""
import pytest
import torch
from torch import nn

from convrnn.errors import ConfigError
from convrnn.tasks.classify import ClassifyTask
from convrnn.train.averaging import WeightAverage
from convrnn.train.checkpoint import load_checkpoint
from convrnn.train.config import TrainConfig
from convrnn.train.trainer import Trainer

from helpers import TinyNet, make_trainer


def test_average_follows_the_formula_and_swap_is_its_own_inverse():
    model = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    avg = WeightAverage(model, decay=0.5)
    w0 = model[0].weight.detach().clone()
    with torch.no_grad():
        model[0].weight.add_(1.0)
    avg.update()  # first update: d = min(0.5, 2/11) = 2/11
    expected = w0 * 2 / 11 + (w0 + 1.0) * 9 / 11
    assert torch.allclose(avg.shadow[0], expected)
    live = model[0].weight.detach().clone()
    avg.swap()
    assert torch.allclose(model[0].weight, expected) and avg.swapped
    averaged, raw = ({k: v.clone() for k, v in sd.items()} for sd in avg.state_dicts(model))  # (views, copied here)
    assert torch.allclose(averaged["0.weight"], expected) and torch.equal(raw["0.weight"], live)
    assert raw["1.num_batches_tracked"].dtype == torch.int64  # integer buffers are not averaged
    avg.swap()
    assert torch.equal(model[0].weight, live) and not avg.swapped
    averaged2, raw2 = avg.state_dicts(model)
    assert all(torch.equal(averaged[k], averaged2[k]) and torch.equal(raw[k], raw2[k]) for k in raw)


def test_tied_weights_are_averaged_once():
    emb, proj = nn.Embedding(5, 3), nn.Linear(3, 5)
    proj.weight = emb.weight
    model = nn.ModuleDict({"emb": emb, "proj": proj})
    avg = WeightAverage(model, decay=0.9)
    assert len(avg.tensors) == 2  # the shared matrix and the projection bias
    averaged, raw = avg.state_dicts(model)
    assert torch.equal(averaged["emb.weight"], averaged["proj.weight"])


def test_update_while_swapped_is_refused():
    avg = WeightAverage(nn.Linear(2, 2), decay=0.9)
    with avg, pytest.raises(RuntimeError, match="swapped"):
        avg.update()


def test_trainer_validates_saves_and_finishes_with_the_averaged_weights(tmp_path):
    t = make_trainer(tmp_path, "run", epochs=4, ema=0.9)
    metrics = t.fit()
    last = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    assert set(last) >= {"model", "train_model", "ema_updates"} and last["ema_updates"] == t.pos.step
    finished = t.model.state_dict()
    assert all(torch.equal(finished[k], last["model"][k]) for k in finished)  # the finished model is the average
    assert not all(torch.equal(last["model"][k], last["train_model"][k]) for k in finished)
    assert t.evaluate(t.val_data) == metrics  # its metrics are the ones validation reported
    best = load_checkpoint(tmp_path / "run")
    assert best["metrics"]["accuracy"] == t.pos.best


def test_training_without_averaging_keeps_the_old_checkpoint_layout(tmp_path):
    t = make_trainer(tmp_path, "run", epochs=1)
    t.fit()
    assert "train_model" not in load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")


@pytest.mark.parametrize("bad", [1.0, -0.1, 2.0])
def test_bad_decay_is_one_line_naming_the_key(bad):
    with pytest.raises(ConfigError, match=r"train\.ema: expected 0 \(off\) or a decay between 0 and 1"):
        Trainer(TinyNet(), ClassifyTask(["a", "b"]), None, None, TrainConfig(ema=bad))
