"""TensorBoard pictures at validation time: the first convolution layer's kernels. ``RunDir`` already
writes the scalars; recipes add their own pictures (a language model's samples) with callbacks.

A trainer callback (a plain object with ``on_validation(trainer, metrics)``); the runner adds it to
every run. It draws nothing from the global random generators, so adding it changes no training
result and resumed runs stay bit-identical.

Shape:
    first convolution weights ``(F, C, KH, KW)`` -> one grayscale grid ``(H, W)`` in 0..1, a tile per
    (kernel, input channel), each tile scaled to its own min..max.
"""
# F filters, C input channels, KH kernel height, KW kernel width, H height, W width
from __future__ import annotations

import logging
import math
from typing import Optional

import numpy as np
import torch

log = logging.getLogger(__name__)


def kernel_grid(weights: np.ndarray, *, tile: int = 24, gap: int = 2, max_columns: int = 16) -> np.ndarray:
    """``(F, C, KH, KW)`` kernels -> a grayscale ``(H, W)`` image in 0..1: a tile per (kernel, channel),
    each scaled to its own min..max and enlarged (nearest neighbour) to about ``tile`` pixels."""
    w = np.asarray(weights, dtype=np.float32)
    if w.ndim != 4:
        raise ValueError(f"expected convolution weights (F, C, KH, KW), got shape {w.shape}")
    kernels = w.reshape(-1, w.shape[2], w.shape[3])  # (F, C, KH, KW) -> (F*C, KH, KW)
    lo = kernels.min(axis=(1, 2), keepdims=True)
    span = kernels.max(axis=(1, 2), keepdims=True) - lo
    kernels = np.where(span > 0, (kernels - lo) / np.where(span > 0, span, 1), 0.5)
    scale = max(1, tile // max(w.shape[2], w.shape[3]))
    kernels = kernels.repeat(scale, axis=1).repeat(scale, axis=2)  # (N, KH, KW) -> (N, KH*s, KW*s)
    n, kh, kw = kernels.shape
    cols = min(n, max_columns)
    rows = math.ceil(n / cols)
    grid = np.ones((rows * (kh + gap) - gap, cols * (kw + gap) - gap), dtype=np.float32)
    for k in range(n):  # a few dozen tiles; a copy per tile is clearer than a strided view
        r, c = divmod(k, cols)
        grid[r * (kh + gap): r * (kh + gap) + kh, c * (kw + gap): c * (kw + gap) + kw] = kernels[k]
    return grid


def first_conv(model: torch.nn.Module) -> Optional[torch.nn.Conv2d]:
    return next((m for m in model.modules() if isinstance(m, torch.nn.Conv2d)), None)


def markdown_block(text: str) -> str:
    """``text`` as a Markdown code block (TensorBoard renders text summaries as Markdown)."""
    return "\n".join("    " + line for line in text.split("\n"))


class TensorBoardFilters:
    """Trainer callback: the first convolution's kernels as an image in TensorBoard, at every
    ``every``-th validation. Recipes add their own pictures with callbacks of their own."""

    def __init__(self, *, every: int = 1):
        self.every = max(1, every)
        self._count = 0

    def on_validation(self, trainer, metrics: dict) -> None:
        writer = trainer.run_dir.tensorboard() if trainer.run_dir is not None else None
        self._count += 1
        if writer is None or (self._count - 1) % self.every:
            return
        conv = first_conv(trainer.model)
        if conv is not None:
            grid = kernel_grid(conv.weight.detach().float().cpu().numpy())
            writer.add_image("filters/first_conv", grid, trainer.pos.step, dataformats="HW")
            writer.flush()
