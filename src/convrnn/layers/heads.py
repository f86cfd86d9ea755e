"""Output heads: sequence classification/regression over valid steps, and per-step projections."""
# B batch, T time steps, F features, V classes/vocabulary, N regression outputs
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import nn

from convrnn.layers.base import Shape, Shaped, expect_rank

POOLS = ("last", "mean", "max")


def valid_mask(lengths: torch.Tensor, steps: int) -> torch.Tensor:
    """``(B,)`` lengths -> ``(B, T)`` bool, True at valid steps."""
    return torch.arange(steps, device=lengths.device)[None, :] < lengths[:, None]  # (1, T) < (B, 1) -> (B, T)


def pool_steps(x: torch.Tensor, lengths: Optional[torch.Tensor], mode: str, *,
               bidirectional_split: bool = False) -> torch.Tensor:
    """Pool ``(B, T, F)`` over the valid steps only -> ``(B, F)``; padded values never leak in.

    ``last`` takes the last valid step. With ``bidirectional_split`` the features are the two
    halves of a bidirectional recurrent output: the forward half is taken at the last valid step
    and the backward half at step 0, where each direction has seen the whole sequence.
    """
    b, t, f = x.shape
    if lengths is None:  # every step valid: no size baked in as a constant (traced ONNX export keeps T dynamic)
        if mode == "last":
            if not bidirectional_split:
                return x[:, -1]  # (B, T, F) -> (B, F)
            half = f // 2
            return torch.cat([x[:, -1, :half], x[:, 0, half:]], dim=1)  # forward (B, F/2) + backward (B, F/2)
        return x.mean(1) if mode == "mean" else x.amax(1)  # (B, T, F) -> (B, F)
    lengths = lengths.to(x.device)
    if mode == "last":
        last = x[torch.arange(b, device=x.device), (lengths - 1).clamp(0, t - 1)]  # (B, T, F) -> (B, F)
        if not bidirectional_split:
            return last
        half = f // 2
        return torch.cat([last[:, :half], x[:, 0, half:]], dim=1)  # forward (B, F/2) + backward (B, F/2)
    mask = valid_mask(lengths, t)[:, :, None]  # (B, T) -> (B, T, 1)
    if mode == "mean":
        total = torch.where(mask, x, torch.zeros((), dtype=x.dtype, device=x.device)).sum(1)  # (B, T, F) -> (B, F)
        return total / lengths[:, None].to(x.dtype)
    if mode == "max":
        return x.masked_fill(~mask, float("-inf")).amax(1)  # (B, T, F) -> (B, F)
    raise ValueError(f"pool must be one of {', '.join(POOLS)}, got {mode!r}")


class _PooledHead(nn.Module, Shaped):
    """Shared by Classify and Regress: pool a sequence over valid steps, then a linear layer."""

    uses_lengths = True
    pools = POOLS

    def __init__(self, in_features: int, out_features: int, pool: str, bidirectional_split: bool):
        super().__init__()
        if pool not in self.pools:
            raise ValueError(f"pool must be one of {', '.join(self.pools)}, got {pool!r}")
        if bidirectional_split and in_features % 2:
            raise ValueError(f"bidirectional_split needs an even feature count, got {in_features}")
        self.pool, self.bidirectional_split = pool, bidirectional_split
        self.linear = nn.Linear(in_features, out_features)

    def extra_repr(self) -> str:
        return f"pool={self.pool!r}, bidirectional_split={self.bidirectional_split}"

    def forward(self, x: torch.Tensor, lengths: Optional[torch.Tensor] = None) -> torch.Tensor:
        if x.dim() == 3 and self.pool != "seq":
            x = pool_steps(x, lengths, self.pool, bidirectional_split=self.bidirectional_split)
        return self.linear(x)

    def output_shape(self, input_shape: Sequence[Optional[int]]) -> Shape:
        name = type(self).__name__.lower()
        expect_rank(name, input_shape, [2, 3], "a feature sequence (B, T, F) or a vector (B, F)")
        if input_shape[-1] is not None and input_shape[-1] != self.linear.in_features:
            raise ValueError(f"{name} expects {self.linear.in_features} input features, got {input_shape[-1]}")
        if len(input_shape) == 3 and self.pool == "seq":
            return (input_shape[0], input_shape[1], self.linear.out_features)
        return (input_shape[0], self.linear.out_features)

    def output_lengths(self, lengths: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
        return lengths if self.pool == "seq" else None


class Classify(_PooledHead):
    """Class logits for a whole sequence: pool the valid steps, then a linear layer.

    For a bidirectional recurrent input, plain ``last`` takes both directions at the last valid
    step, where the backward direction has seen only that step; prefer ``mean``/``max``, or set
    ``bidirectional_split`` (the spec builder does so after a bidirectional layer) to take the
    backward half at step 0 instead.

    Shape:
        - Input: ``(B, T, F)`` with lengths ``(B,)``, or ``(B, F)``.
        - Output: ``(B, num_classes)`` logits; no lengths.
    """

    def __init__(self, in_features: int, num_classes: int, *, pool: str = "last", bidirectional_split: bool = False):
        super().__init__(in_features, num_classes, pool, bidirectional_split)


class Regress(_PooledHead):
    """Real-valued outputs for a sequence (``last``/``mean``/``max``/``sum``) or for every step (``seq``).

    ``sum`` applies the linear layer at every step and adds the outputs of the valid steps (bias
    included, once per step): the value of a sequence is a sum of per-step values, the right shape
    for additive targets such as a sum of digits.

    Shape:
        - Input: ``(B, T, F)`` with lengths ``(B,)``, or ``(B, F)``.
        - Output: ``(B, num_outputs)``, or ``(B, T, num_outputs)`` for ``pool='seq'`` (lengths pass through).
    """

    pools = POOLS + ("sum", "seq")

    def __init__(self, in_features: int, num_outputs: int = 1, *, pool: str = "last",
                 bidirectional_split: bool = False):
        super().__init__(in_features, num_outputs, pool, bidirectional_split)

    def forward(self, x: torch.Tensor, lengths: Optional[torch.Tensor] = None) -> torch.Tensor:
        if self.pool != "sum" or x.dim() != 3:
            return super().forward(x, lengths)
        y = self.linear(x)  # (B, T, F) -> (B, T, N)
        if lengths is None:
            return y.sum(1)  # (B, T, N) -> (B, N)
        mask = valid_mask(lengths.to(x.device), x.shape[1])[:, :, None]  # (B, T) -> (B, T, 1)
        return torch.where(mask, y, torch.zeros((), dtype=y.dtype, device=y.device)).sum(1)  # -> (B, N)


class Project(nn.Module, Shaped):
    """Per-step logits, for CTC (symbols incl. blank) and language models (next token).

    ``tie(embedding)`` shares the weight matrix with an input ``Embedding`` of the same sizes.

    Shape:
        - Input: ``(B, T, F)`` with ``F = in_features``.
        - Output: ``(B, T, num_outputs)``; lengths pass through.
    """

    def __init__(self, in_features: int, num_outputs: int):
        super().__init__()
        self.linear = nn.Linear(in_features, num_outputs)

    def tie(self, embedding: nn.Module) -> None:
        """Use ``embedding.weight`` ``(V, F)`` as this projection's weight (weight tying)."""
        weight = embedding.weight
        if tuple(weight.shape) != tuple(self.linear.weight.shape):
            raise ValueError(f"cannot tie: embedding weight is {tuple(weight.shape)}, "
                             f"projection weight is {tuple(self.linear.weight.shape)}")
        self.linear.weight = weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x)

    def output_shape(self, input_shape: Sequence[Optional[int]]) -> Shape:
        expect_rank("projection", input_shape, [3], "a feature sequence (B, T, F)")
        if input_shape[-1] is not None and input_shape[-1] != self.linear.in_features:
            raise ValueError(f"projection expects {self.linear.in_features} input features, got {input_shape[-1]}")
        return (input_shape[0], input_shape[1], self.linear.out_features)
