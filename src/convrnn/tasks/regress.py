"""Integer-valued targets (digit sums, products, running sums): a regression or a classification head.

``RegressTask`` trains a real output with a masked mean squared error on standardised targets
(``(y - target_mean) / target_std``), so a head whose targets reach 36 or 81 starts on the scale of
its initial outputs. ``ValueClassifyTask`` treats each possible value ``0..V-1`` as a class
(cross-entropy; a value the head cannot represent, e.g. a longer sequence than it was trained on,
is ignored by the loss and counts as wrong). Both report the same metrics on the predicted *values*:
``mse``, ``mae``, ``exact`` (every valid step of a sequence right after rounding), ``exact_step``
(per step; equals ``exact`` for one target per sequence) and, per sequence length L,
``mse_lenL``, ``mae_lenL`` and ``exact_lenL``.

Shape:
    one target per sequence: ``out.y`` ``(B, 1)`` (regression) or ``(B, V)`` logits; ``batch["y_int"]`` ``(B,)``
    a target per step:        ``out.y`` ``(B, T, 1)`` or ``(B, T, V)``; ``batch["y_int"]`` ``(B, T)``, ``batch["mask"]`` ``(B, T)``
    ``batch["lengths"]`` ``(B,)``: sequence lengths, for the per-length breakdown.

    B batch, T time steps (digits), V possible values (classes).
"""
# B batch, T time steps, V possible values
from __future__ import annotations

import math
from collections import defaultdict

import torch
import torch.nn.functional as F

from convrnn.errors import DataError
from convrnn.tasks.base import MetricAccumulator, ModelOutput, Task

IGNORE = -100  # cross_entropy's ignore_index: targets the classification head cannot represent


def _targets_and_mask(batch: dict, per_step: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Integer targets and the mask of valid entries: ``(B,)`` or ``(B, T)`` each."""
    y = batch["y_int"] if "y_int" in batch else batch["y"].round().long()
    if per_step:
        if y.dim() != 2:
            raise DataError(f"expected per-step targets (B, T), got shape {tuple(y.shape)}")
        mask = batch.get("mask")
        if mask is None:
            mask = torch.ones_like(y, dtype=torch.bool)
        return y, mask.bool()
    if y.dim() != 1:
        raise DataError(f"expected one target per sequence (B,), got shape {tuple(y.shape)}")
    return y, torch.ones_like(y, dtype=torch.bool)


class ValueMetrics(MetricAccumulator):
    """Sums of squared and absolute errors and exact matches, overall and per sequence length."""

    def __init__(self, task: "RegressTask | ValueClassifyTask"):
        self.task = task
        self.loss_sum, self.loss_n = 0.0, 0
        self.totals = defaultdict(float)                       # key -> sum over all valid steps/sequences
        self.by_len = defaultdict(lambda: defaultdict(float))  # length -> key -> sum

    @torch.no_grad()
    def update(self, out: ModelOutput, batch: dict) -> None:
        y, mask = _targets_and_mask(batch, self.task.per_step)
        n_valid = int(mask.sum())
        self.loss_sum += float(self.task.loss(out, batch)) * n_valid
        self.loss_n += n_valid
        pred = self.task.values(out).double()               # (B,) or (B, T)
        truth = y.double()
        err = (pred - truth).masked_fill(~mask, 0.0)
        hit = (pred.round() == truth) | ~mask                # padding never counts against a sequence
        sq, ab = err.pow(2), err.abs()
        if self.task.per_step:
            steps = mask.sum(dim=1).double()                 # (B, T) -> (B,)
            seq_sq, seq_ab = sq.sum(dim=1), ab.sum(dim=1)
            seq_exact = hit.all(dim=1).double()
            step_hits = (hit & mask).sum(dim=1).double()
        else:
            steps = torch.ones_like(truth)
            seq_sq, seq_ab, seq_exact, step_hits = sq, ab, hit.double(), hit.double()
        lengths = batch.get("lengths")
        lengths = lengths.cpu() if lengths is not None else torch.ones(len(truth), dtype=torch.int64)
        rows = {"sq": seq_sq, "ab": seq_ab, "steps": steps, "exact": seq_exact, "step_hits": step_hits,
                "seqs": torch.ones_like(seq_sq)}
        for key, values in rows.items():
            self.totals[key] += float(values.sum())
        for length in lengths.unique().tolist():
            sel = (lengths == length).to(seq_sq.device)
            for key, values in rows.items():
                self.by_len[int(length)][key] += float(values[sel].sum())

    @staticmethod
    def _summary(t: dict) -> dict[str, float]:
        steps, seqs = max(t["steps"], 1.0), max(t["seqs"], 1.0)
        return {"mse": t["sq"] / steps, "mae": t["ab"] / steps, "exact": t["exact"] / seqs,
                "exact_step": t["step_hits"] / steps}

    def compute(self) -> dict[str, float]:
        metrics = {"loss": self.loss_sum / max(self.loss_n, 1), **self._summary(self.totals)}
        for length in sorted(self.by_len):
            s = self._summary(self.by_len[length])
            metrics.update({f"mse_len{length}": s["mse"], f"mae_len{length}": s["mae"],
                            f"exact_len{length}": s["exact"]})
        return metrics


class RegressTask(Task):
    """Masked MSE on standardised targets; predictions are ``out * target_std + target_mean``.

    Args:
        per_step: a target at every valid step (running sums) instead of one per sequence.
        target_mean, target_std: of the training targets (``make_digit_sequences``' meta); the head
            learns ``(y - mean) / std``.
    """

    name = "regress"
    monitor = "mse"
    monitor_mode = "min"
    unit = "sequences"

    def __init__(self, *, per_step: bool = False, target_mean: float = 0.0, target_std: float = 1.0):
        if not (math.isfinite(target_std) and target_std > 0):
            raise DataError(f"expected a positive, finite target_std, got {target_std}")
        self.per_step, self.target_mean, self.target_std = per_step, float(target_mean), float(target_std)

    def _raw(self, out: ModelOutput) -> torch.Tensor:
        y = out.y
        want = 3 if self.per_step else 2
        if y.dim() != want or y.shape[-1] != 1:
            kind = "(B, T, 1)" if self.per_step else "(B, 1)"
            raise DataError(f"expected a regression output {kind}, got shape {tuple(y.shape)}; "
                            f"use a reg:{'seq' if self.per_step else 'last'} head")
        return y.squeeze(-1).float()  # (B, 1) -> (B,); (B, T, 1) -> (B, T)

    def values(self, out: ModelOutput) -> torch.Tensor:
        """Predicted values in target units: ``(B,)`` or ``(B, T)``."""
        return self._raw(out) * self.target_std + self.target_mean

    def loss(self, out: ModelOutput, batch: dict) -> torch.Tensor:
        y, mask = _targets_and_mask(batch, self.per_step)
        z = (y.float() - self.target_mean) / self.target_std
        sq = (self._raw(out) - z).pow(2) * mask
        return sq.sum() / mask.sum().clamp(min=1)

    def new_metrics(self) -> ValueMetrics:
        return ValueMetrics(self)

    def count(self, batch: dict) -> int:
        return int(batch["x"].shape[0])

    def state_dict(self) -> dict:
        return {"per_step": self.per_step, "target_mean": self.target_mean, "target_std": self.target_std}


class ValueClassifyTask(Task):
    """A class per possible value ``0..num_values-1``; cross-entropy, argmax as the prediction.

    Targets outside the head (``>= num_values``) are ignored by the loss and always count as wrong.
    """

    name = "value_classify"
    monitor = "exact"
    monitor_mode = "max"
    unit = "sequences"

    def __init__(self, num_values: int, *, per_step: bool = False):
        if num_values < 2:
            raise DataError(f"expected at least 2 possible values, got {num_values}")
        self.num_values, self.per_step = int(num_values), per_step

    def _logits(self, out: ModelOutput) -> torch.Tensor:
        y = out.y
        want = 3 if self.per_step else 2
        if y.dim() != want or y.shape[-1] != self.num_values:
            kind = "(B, T, V)" if self.per_step else "(B, V)"
            raise DataError(f"expected logits {kind} with V = {self.num_values} values, got shape {tuple(y.shape)}")
        return y.float()

    def values(self, out: ModelOutput) -> torch.Tensor:
        return self._logits(out).argmax(dim=-1)  # (B, V) -> (B,); (B, T, V) -> (B, T)

    def loss(self, out: ModelOutput, batch: dict) -> torch.Tensor:
        y, mask = _targets_and_mask(batch, self.per_step)
        target = y.masked_fill(~mask | (y >= self.num_values) | (y < 0), IGNORE)
        logits = self._logits(out)
        if (target == IGNORE).all():
            return logits.sum() * 0.0  # nothing representable in this batch: a zero loss that keeps the graph
        return F.cross_entropy(logits.reshape(-1, self.num_values), target.reshape(-1),  # (B[, T], V) -> (N, V)
                               ignore_index=IGNORE)

    def new_metrics(self) -> ValueMetrics:
        return ValueMetrics(self)

    def count(self, batch: dict) -> int:
        return int(batch["x"].shape[0])

    def state_dict(self) -> dict:
        return {"num_values": self.num_values, "per_step": self.per_step}
