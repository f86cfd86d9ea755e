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
from typing import Optional

import torch
import torch.nn.functional as F

from convrnn.errors import DataError
from convrnn.layers.heads import valid_mask
from convrnn.layers.base import ModelOutput
from convrnn.tasks.base import MetricAccumulator, Task

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
    ensemble_combine = "mean"  # the outputs are values, not logits

    def __init__(self, *, per_step: bool = False, target_mean: float = 0.0, target_std: float = 1.0):
        if not (math.isfinite(target_std) and target_std > 0):
            raise DataError(f"expected a positive, finite target_std, got {target_std}")
        self.per_step, self.target_mean, self.target_std = per_step, float(target_mean), float(target_std)
        self.output_ndim, self.num_outputs = (3 if per_step else 2), 1

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
        self.output_ndim, self.num_outputs = (3 if per_step else 2), self.num_values

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

    def state_dict(self) -> dict:
        return {"num_values": self.num_values, "per_step": self.per_step}


# log-probability of a sum that cannot happen: finite, so that a window holding only impossible sums
# (past the end of a shorter sequence) has a finite gradient; exp() of it is exactly 0 in float32
IMPOSSIBLE = -1e9


def sum_log_distribution(logp: torch.Tensor, lengths: Optional[torch.Tensor]) -> torch.Tensor:
    """Log-probabilities of the sum of independent per-step values, by exact convolution.

    Step t of sequence b takes the value k with probability ``exp(logp[b, t, k])``; steps at or past
    ``lengths[b]`` add nothing. Computed in log space (one ``logsumexp`` per step), so confident
    steps never underflow.

    Shape:
        ``logp`` ``(B, T, K)`` (log-softmax over K values 0..K-1), ``lengths`` ``(B,)`` or None ->
        ``(B, (K - 1) * T + 1)``: entry s is log P(sum = s).
    """
    b, t, k = logp.shape
    dist = logp.new_full((b, 1), 0.0)  # log P(empty sum = 0) = 0
    flipped = logp.flip(-1)  # value k at index K-1-k, to line up with the sliding windows below
    for step in range(t):
        padded = F.pad(dist, (k - 1, k - 1), value=IMPOSSIBLE)  # (B, S) -> (B, S + 2K - 2)
        windows = padded.unfold(1, k, 1)  # (B, S + K - 1, K): window j holds dist[j-K+1 .. j]
        new = torch.logsumexp(windows + flipped[:, step, None, :], dim=-1)  # (B, S + K - 1)
        if lengths is not None:
            keep = F.pad(dist, (0, k - 1), value=IMPOSSIBLE)  # a padded step leaves the sum as it was
            new = torch.where((lengths > step)[:, None].to(new.device), new, keep)
        dist = new
    return dist


class SumOfValuesTask(Task):
    """A sequence's target is the sum of per-step values 0..K-1 (digits): the model gives a distribution
    per step, the distribution of the sum is their convolution, and the loss is ``-log P(sum = y)``.

    The sum's likelihood is a much stronger training signal than a squared error on the total: the
    model is told which totals are possible and how each step's belief moves them. The prediction is
    the expected sum (what minimises the squared error under the model's beliefs), so ``mse``,
    ``mae`` and ``exact`` are measured as for ``RegressTask``.

    Shape:
        ``out.y`` ``(B, T, K)`` per-step logits with ``out.lengths`` ``(B,)`` (a ``reg:seq,K`` head);
        ``batch["y_int"]`` ``(B,)``.
    """

    name = "value_sum"
    monitor = "mse"
    monitor_mode = "min"
    unit = "sequences"
    per_step = False
    output_ndim = 3  # a distribution per step

    def __init__(self, num_values: int = 10):
        if num_values < 2:
            raise DataError(f"expected at least 2 values per step, got {num_values}")
        self.num_values = self.num_outputs = int(num_values)

    def _log_probs(self, out: ModelOutput) -> torch.Tensor:
        y = out.y
        if y.dim() != 3 or y.shape[-1] != self.num_values:
            raise DataError(f"expected per-step logits (B, T, {self.num_values}) from a reg:seq,{self.num_values} "
                            f"head, got shape {tuple(y.shape)}")
        return F.log_softmax(y.float(), dim=-1)

    def values(self, out: ModelOutput) -> torch.Tensor:
        """The expected sum ``(B,)``: the per-step expected values added over valid steps."""
        p = self._log_probs(out).exp()  # (B, T, K)
        per_step = (p * torch.arange(self.num_values, device=p.device, dtype=p.dtype)).sum(-1)  # (B, T)
        if out.lengths is not None:
            per_step = per_step * valid_mask(out.lengths.to(p.device), per_step.shape[1])
        return per_step.sum(1)

    def loss(self, out: ModelOutput, batch: dict) -> torch.Tensor:
        y, _ = _targets_and_mask(batch, per_step=False)
        dist = sum_log_distribution(self._log_probs(out), out.lengths)  # (B, S)
        ok = (y >= 0) & (y < dist.shape[1])  # a total no sum of these steps can reach is ignored
        if not bool(ok.any()):
            return dist.sum() * 0.0
        picked = dist.gather(1, y.clamp(0, dist.shape[1] - 1)[:, None].to(dist.device)).squeeze(1)  # (B,)
        return -(picked[ok.to(dist.device)]).mean()

    def new_metrics(self) -> ValueMetrics:
        return ValueMetrics(self)

    def state_dict(self) -> dict:
        return {"num_values": self.num_values}
