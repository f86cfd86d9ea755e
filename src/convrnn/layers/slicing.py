"""Image -> sequence: blocks of a fixed width (the FWTK way) or columns (the CRNN way)."""
# B batch, T time steps, C channels, H height, W width, F features
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import nn

from convrnn.layers.base import Shape, Shaped, expect_rank


class Blocks(nn.Module, Shaped):
    """Cut an image into blocks of ``width`` pixels, left to right, every ``stride`` pixels.

    Block ``t`` is ``x[..., t*stride : t*stride + width]``; a right margin narrower than a block
    is dropped. Blocks overlap when ``stride < width`` and skip pixels when ``stride > width``.

    Shape:
        - Input: ``(B, C, H, W)`` with ``W >= width``.
        - Output: ``(B, T, C, H, width)`` with ``T = (W - width) // stride + 1``.
        - Lengths: valid widths in pixels become the number of complete blocks (at least 1).
    """

    def __init__(self, width: int, stride: Optional[int] = None):
        super().__init__()
        stride = width if stride is None else stride
        if width < 1 or stride < 1:
            raise ValueError(f"Blocks needs width >= 1 and stride >= 1, got width={width}, stride={stride}")
        self.width, self.stride = width, stride

    def extra_repr(self) -> str:
        return f"width={self.width}, stride={self.stride}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] < self.width:
            raise ValueError(f"Blocks of width {self.width} need images at least {self.width} wide, got width {x.shape[-1]}")
        blocks = x.unfold(3, self.width, self.stride)  # (B, C, H, W) -> (B, C, H, T, width)
        return blocks.permute(0, 3, 1, 2, 4)  # (B, C, H, T, width) -> (B, T, C, H, width)

    def output_shape(self, input_shape: Sequence[Optional[int]]) -> Shape:
        expect_rank("blocks", input_shape, [4], "an image (B, C, H, W)")
        b, c, h, w = input_shape
        if w is not None and w < self.width:
            raise ValueError(f"blocks of width {self.width} do not fit in an image of width {w}")
        t = None if w is None else (w - self.width) // self.stride + 1
        return (b, t, c, h, self.width)

    def output_lengths(self, lengths: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
        if lengths is None:
            return None
        return (torch.div(lengths - self.width, self.stride, rounding_mode="floor") + 1).clamp(min=1)


class Columns(nn.Module, Shaped):
    """Turn each pixel column of a feature map into one time step (CRNN's map-to-sequence).

    Shape:
        - Input: ``(B, C, H, W)``.
        - Output: ``(B, W, C*H)``: step ``t`` holds column ``t``, channels major, height minor.
        - Lengths: valid widths become valid time lengths unchanged.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        return x.permute(0, 3, 1, 2).reshape(b, w, c * h)  # (B, C, H, W) -> (B, W, C, H) -> (B, W, C*H)

    def output_shape(self, input_shape: Sequence[Optional[int]]) -> Shape:
        expect_rank("cols", input_shape, [4], "an image (B, C, H, W)")
        b, c, h, w = input_shape
        return (b, w, None if c is None or h is None else c * h)
