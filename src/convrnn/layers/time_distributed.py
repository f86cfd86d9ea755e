"""Apply one module, with shared weights, to every step of a sequence by folding time into the batch."""
# B batch, T time steps, C channels, H height, W width
from __future__ import annotations

import copy
from typing import Optional, Sequence

import torch
from torch import nn

from convrnn.layers.base import Shape, Shaped


def _fold(b: Optional[int], t: Optional[int]) -> Optional[int]:
    return None if b is None or t is None else b * t


class TimeDistributed(nn.Module, Shaped):
    """Run ``module`` on each step of ``(B, T, ...)`` as one call on ``(B*T, ...)``.

    There is no Python loop over ``T``: the steps become extra batch rows, so the module sees
    ``B*T`` independent samples and its weights are shared across time.

    Padded steps (past each sequence's length) are computed too, but since every step is
    processed independently they influence nothing at valid steps; layers after this one
    (recurrent layers, heads) ignore them through the lengths. The exception is a module
    that mixes batch rows, such as BatchNorm in training mode, whose statistics include the
    padded steps.

    Shape:
        - Input: ``(B, T, *S)``, where ``*S`` is what ``module`` accepts without a batch axis
          (``(C, H, W)`` for a convolution).
        - Output: ``(B, T, *S')`` where ``(B*T, *S')`` is the module's output on ``(B*T, *S)``.
        - Lengths along ``T`` pass through unchanged.
    """

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module

    @property
    def activation_factor(self) -> float:
        """How many output-sized tensors the inner module keeps for backward (memory estimate)."""
        return float(getattr(self.module, "activation_factor", 1.0))

    @property
    def backward_workspace(self) -> float:
        """Output-sized buffers the inner module's backward allocates (memory estimate)."""
        return float(getattr(self.module, "backward_workspace", 1.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t = x.shape[:2]
        y = self.module(x.reshape(b * t, *x.shape[2:]))  # (B, T, *S) -> (B*T, *S) -> (B*T, *S')
        return y.reshape(b, t, *y.shape[1:])  # (B*T, *S') -> (B, T, *S')

    def output_shape(self, input_shape: Sequence[Optional[int]]) -> Shape:
        if len(input_shape) < 3:
            raise ValueError(f"TimeDistributed expects a sequence (B, T, ...), got shape {tuple(input_shape)}")
        b, t, *rest = input_shape
        folded = (_fold(b, t), *rest)  # (B, T, *S) -> (B*T, *S)
        inner = self._inner_shape(folded)
        return (b, t, *inner[1:])  # (B*T, *S') -> (B, T, *S')

    def _inner_shape(self, folded: Shape) -> Shape:
        if isinstance(self.module, Shaped):
            return tuple(self.module.output_shape(folded))
        return _dry_run_shape(self.module, folded)

    # Lengths are along T, which this layer leaves alone (the inner module's own
    # output_lengths would be about its W axis, so it is not consulted).
    def output_lengths(self, lengths: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
        return lengths


def _dry_run_shape(module: nn.Module, input_shape: Shape) -> Shape:
    """Output shape of a plain module, found by running a copy of it on a meta tensor (no memory, no compute)."""
    if any(s is None for s in input_shape[1:]):
        raise ValueError(
            f"cannot infer the output shape of {type(module).__name__} for input {tuple(input_shape)}: "
            "only the batch size may be unknown for modules that do not implement output_shape"
        )
    batch = 2 if input_shape[0] is None else input_shape[0]
    probe = copy.deepcopy(module).to("meta")
    with torch.no_grad():
        out = probe(torch.empty(batch, *input_shape[1:], device="meta"))
    return (input_shape[0], *out.shape[1:])
