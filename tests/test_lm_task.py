"""LanguageModelTask: loss and metrics against hand-computed values."""
# B batch, T time steps, V vocabulary
from __future__ import annotations

import io
import math

import pytest
import torch

from convrnn.data.text import Vocab
from convrnn.errors import DataError
from convrnn.layers.base import ModelOutput
from convrnn.tasks.base import Task
from convrnn.tasks.lm import LanguageModelTask


def hand_example():
    """Two batches over V=3 whose per-token probabilities are easy to write down."""
    ln = math.log
    # logits = log-probabilities, so softmax gives them back exactly
    p1 = torch.tensor([[[0.5, 0.25, 0.25], [0.1, 0.8, 0.1]]])            # (B=1, T=2, V=3)
    y1 = torch.tensor([[0, 2]])                                          # p = .5 (argmax hit), .1 (miss)
    p2 = torch.tensor([[[0.2, 0.2, 0.6]], [[0.7, 0.2, 0.1]]])            # (B=2, T=1, V=3)
    y2 = torch.tensor([[2], [1]])                                        # p = .6 (hit), .2 (miss)
    batches = [(ModelOutput(p1.log()), {"y": y1}), (ModelOutput(p2.log()), {"y": y2})]
    nats = -(ln(0.5) + ln(0.1) + ln(0.6) + ln(0.2)) / 4                  # token-weighted mean
    return batches, nats, 2 / 4


def test_metrics_match_hand_computation():
    task = LanguageModelTask(Vocab.from_text("abc"))
    batches, nats, accuracy = hand_example()
    metrics = task.new_metrics()
    for out, batch in batches:
        metrics.update(out, batch)
    got = metrics.compute()
    assert got["loss"] == pytest.approx(nats, rel=1e-6)
    assert got["bits_per_char"] == pytest.approx(nats / math.log(2), rel=1e-6)
    assert got["perplexity"] == pytest.approx(math.exp(nats), rel=1e-6)
    assert got["accuracy"] == accuracy


def test_loss_is_the_mean_over_all_positions():
    task = LanguageModelTask(Vocab.from_text("abc"))
    (out1, batch1), (out2, batch2) = hand_example()[0]
    ln = math.log
    assert task.loss(out1, batch1).item() == pytest.approx(-(ln(0.5) + ln(0.1)) / 2, rel=1e-6)
    assert task.loss(out2, batch2).item() == pytest.approx(-(ln(0.6) + ln(0.2)) / 2, rel=1e-6)
    logits = torch.randn(2, 3, 3, requires_grad=True)
    task.loss(ModelOutput(logits), {"y": torch.zeros(2, 3, dtype=torch.int64)}).backward()
    assert logits.grad is not None


def test_task_contract_and_state_dict_round_trip():
    vocab = Vocab.from_text("hello world")
    task = LanguageModelTask(vocab)
    assert isinstance(task, Task) and task.stateful and task.monitor == "loss" and task.monitor_mode == "min"
    buf = io.BytesIO()
    torch.save({"task": task.state_dict()}, buf)
    buf.seek(0)
    rebuilt = LanguageModelTask.from_state_dict(torch.load(buf, weights_only=True)["task"])
    assert rebuilt.vocab == vocab
    assert rebuilt.decode(torch.tensor([3, 2])) == "he"
    assert task.new_metrics().compute() == {}


def test_shape_mismatch_is_a_data_error():
    task = LanguageModelTask(Vocab.from_text("abc"))
    with pytest.raises(DataError, match="expected logits"):
        task.loss(ModelOutput(torch.zeros(2, 4, 3)), {"y": torch.zeros(2, 5, dtype=torch.int64)})
