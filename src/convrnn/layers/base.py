"""The protocol every convrnn layer follows: it can say its output shape without running.

Shapes are tuples with the batch first; ``None`` stands for a size known only at run time
(the batch, a variable sequence length, a variable image width).
"""
# B batch, T time steps, C channels, H height, W width, F features
from __future__ import annotations

from typing import NamedTuple, Optional, Sequence

import torch

Shape = tuple  # e.g. (None, 1, 16, 64); None = known only at run time


class ModelOutput(NamedTuple):
    """What ``SpecModel.run`` returns: the output, the valid lengths along its time axis, carried state."""

    y: torch.Tensor
    lengths: Optional[torch.Tensor] = None
    state: Optional[list] = None
    # (K, *y.shape): an ensemble's member outputs, for a task that combines them itself (CTC decodes
    # the members jointly); None for single models
    members: Optional[torch.Tensor] = None


class Shaped:
    """Mixin for ``nn.Module`` layers that know their shapes.

    - ``output_shape(input_shape)`` returns the output shape for an input shape, without running.
    - ``output_lengths(lengths)`` maps valid lengths along the variable axis (``T`` for sequences,
      ``W`` for images) through the layer; identity unless the layer changes that axis.
    - ``uses_lengths``: when True, ``forward(x, lengths)`` is called with the input lengths.
    - ``stateful``: when True, ``forward(x, lengths, state, need_state=True)`` returns ``(y, new_state)``;
      with ``need_state=False`` the caller will not use ``new_state``, which may then be None.
    """

    uses_lengths: bool = False
    stateful: bool = False

    def output_shape(self, input_shape: Sequence[Optional[int]]) -> Shape:  # pragma: no cover - abstract
        raise NotImplementedError(f"{type(self).__name__} does not implement output_shape")

    def output_lengths(self, lengths: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
        return lengths


def conv_out(size: Optional[int], kernel: int, stride: int, padding: int, dilation: int = 1) -> Optional[int]:
    """Output size of a convolution or pooling along one axis (None stays None)."""
    if size is None:
        return None
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


def conv_out_lengths(lengths: Optional[torch.Tensor], kernel: int, stride: int, padding: int,
                     dilation: int = 1) -> Optional[torch.Tensor]:
    """``conv_out`` applied to a tensor of lengths, never below 1."""
    if lengths is None:
        return None
    out = torch.div(lengths + 2 * padding - dilation * (kernel - 1) - 1, stride, rounding_mode="floor") + 1
    return out.clamp(min=1)


def expect_rank(name: str, input_shape: Sequence, ranks: Sequence[int], what: str) -> None:
    """Raise ValueError unless ``len(input_shape)`` is one of ``ranks``."""
    if len(input_shape) not in ranks:
        raise ValueError(f"{name} expects {what}, got a tensor of shape {tuple(input_shape)}")
