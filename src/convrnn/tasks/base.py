"""What every task provides: a loss, metrics that accumulate over batches, and a monitor metric."""
# B batch, T time steps, V classes/vocabulary
from __future__ import annotations

from typing import Any, NamedTuple, Optional

import torch


class ModelOutput(NamedTuple):
    """What ``SpecModel.run`` returns: the output, the valid lengths along its time axis, carried state."""

    y: torch.Tensor
    lengths: Optional[torch.Tensor] = None
    state: Optional[list] = None
    # (K, *y.shape): an ensemble's member outputs, for a task that combines them itself (CTC decodes
    # the members jointly); None for single models
    members: Optional[torch.Tensor] = None


class MetricAccumulator:
    """Sums per-batch statistics; ``compute()`` turns them into named floats."""

    def update(self, out: ModelOutput, batch: dict) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def compute(self) -> dict[str, float]:  # pragma: no cover - abstract
        raise NotImplementedError


class Task:
    """Loss + metrics + decoding for one kind of output.

    ``monitor`` names the validation metric that selects the ``best`` checkpoint and
    ``monitor_mode`` says whether larger (``"max"``) or smaller (``"min"``) is better.
    ``stateful`` tasks (language models trained with truncated BPTT) have the trainer carry the
    recurrent state from one batch to the next.
    ``ensemble_combine`` says how an ensemble averages its members' outputs (convrnn.ensemble):
    ``probs`` for logits (the softmax over the last axis is averaged), ``mean`` for values,
    ``labellings`` for CTC (the members' log-probabilities go to ``ModelOutput.members`` and the
    task decodes them jointly).
    """

    name: str = "task"
    monitor: str = "loss"
    monitor_mode: str = "min"
    stateful: bool = False
    ensemble_combine: str = "probs"

    def loss(self, out: ModelOutput, batch: dict) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def new_metrics(self) -> MetricAccumulator:  # pragma: no cover - abstract
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        """Anything the task needs to rebuild itself from a checkpoint (class names, vocabulary)."""
        return {}
