"""Language modelling: next-token cross entropy, bits per character, perplexity, next-char accuracy.

Shape:
    ``out.y``: ``(B, T, V)`` logits; ``batch["y"]``: ``(B, T)`` int64 next-token ids.
    B batch (streams), T time steps, V vocabulary size.
"""
# B batch, T time steps, V vocabulary
from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from convrnn.data.text import Vocab
from convrnn.errors import DataError
from convrnn.layers.base import ModelOutput
from convrnn.tasks.base import MetricAccumulator, Task


def _flat(out: ModelOutput, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    logits, target = out.y, batch["y"]
    if logits.dim() != 3 or logits.shape[:2] != target.shape:
        raise DataError(f"expected logits (B, T, V) matching targets (B, T) = {tuple(target.shape)}, "
                        f"got logits of shape {tuple(logits.shape)}")
    return logits.reshape(-1, logits.shape[-1]), target.reshape(-1)  # (B, T, V) -> (B*T, V); (B, T) -> (B*T,)


class LMMetrics(MetricAccumulator):
    """Token-weighted sums over batches; ``compute()`` gives nats, bits, perplexity and accuracy per token."""

    def __init__(self):
        self.nats = 0.0
        self.correct = 0
        self.tokens = 0

    @torch.no_grad()
    def update(self, out: ModelOutput, batch: dict) -> None:
        logits, target = _flat(out, batch)
        self.nats += F.cross_entropy(logits.float(), target, reduction="sum").item()
        self.correct += int((logits.argmax(dim=-1) == target).sum())
        self.tokens += target.numel()

    def compute(self) -> dict[str, float]:
        if self.tokens == 0:
            return {}
        nats = self.nats / self.tokens
        return {
            "loss": nats,                               # nats per token (char or byte)
            "bits_per_char": nats / math.log(2),
            "perplexity": math.exp(nats) if nats < 700 else math.inf,
            "accuracy": self.correct / self.tokens,     # next-token accuracy
        }


class LanguageModelTask(Task):
    """Next-token prediction over character or byte streams, trained with carried state (truncated BPTT).

    The loss is the mean cross entropy over all ``B * T`` positions. The task's ``state_dict`` holds the
    vocabulary (``{"vocab": vocab.to_dict()}``), enough to rebuild it with :meth:`from_state_dict`.
    """

    name = "lm"
    monitor = "loss"
    monitor_mode = "min"
    stateful = True

    output_ndim = 3  # next-token logits at every step

    def __init__(self, vocab: Vocab):
        self.vocab = vocab
        self.num_outputs = len(vocab)
        self.unit = "bytes" if vocab.is_bytes else "chars"  # what throughput counts: one per position

    def count(self, batch: dict) -> int:
        return int(batch["y"].numel())

    def loss(self, out: ModelOutput, batch: dict) -> torch.Tensor:
        logits, target = _flat(out, batch)
        return F.cross_entropy(logits, target)

    def new_metrics(self) -> LMMetrics:
        return LMMetrics()

    def decode(self, ids) -> str | bytes:
        return self.vocab.decode(ids)

    def state_dict(self) -> dict[str, Any]:
        return {"vocab": self.vocab.to_dict()}

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> "LanguageModelTask":
        return cls(Vocab.from_dict(state["vocab"]))
