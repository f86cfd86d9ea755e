"""Multidirectional 2-D LSTM (Graves, Fernandez, Schmidhuber 2007) and the layers around it.

``MDLSTM2d`` scans an image from up to four corners. The cell at ``(i, j)`` depends on its left
neighbour ``(i, j-1)`` and its upper neighbour ``(i-1, j)``, so all cells of one anti-diagonal
``i + j = d`` are independent: the loop runs ``H + W - 1`` steps, each a batched matmul over
every cell of the diagonal, every image of the batch and every direction at once.

``SeparableLSTM2d`` is the cheap variant (1-D bidirectional LSTMs over rows, then over columns),
``Tile`` (space-to-depth) and ``Collapse`` (height collapse into a sequence) complete the
handwriting model of Pham et al. (2014). See docs/mdlstm.md.
"""
# B batch, C channels, H height, W width, D directions, L cells on one anti-diagonal,
# G gates (5 * hidden), N hidden units, T time steps (= W after Collapse)
from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from convrnn.layers.base import Shaped, expect_rank

# Scanning directions as (flip H, flip W); the first `directions` are used.
# 1: from the top-left; 2: from the top-left and the top-right (left-to-right and right-to-left,
# both top-down); 4: from all four corners.
SCAN_DIRECTIONS = ((False, False), (False, True), (True, False), (True, True))
COMBINE_MODES = ("concat", "sum")


def _flip(x: torch.Tensor, flip_h: bool, flip_w: bool, width_index: Optional[torch.Tensor]) -> torch.Tensor:
    """Mirror (B, C, H, W) along H and/or W. With ``width_index`` (B, W) only the valid columns are
    mirrored (padding stays on the right), so a right-to-left scan starts at the last valid column."""
    if flip_h:
        x = x.flip(2)
    if flip_w:
        if width_index is None:
            x = x.flip(3)
        else:
            index = width_index[:, None, None, :].expand_as(x)  # (B, W) -> (B, C, H, W)
            x = x.gather(3, index)
    return x


def _mirrored_columns(lengths: torch.Tensor, width: int) -> torch.Tensor:
    """(B,) valid widths -> (B, W) column permutation: j -> len-1-j for j < len, j otherwise (an involution)."""
    j = torch.arange(width, device=lengths.device)[None, :]
    lengths = lengths.to(j.device)[:, None]
    return torch.where(j < lengths, lengths - 1 - j, j)


def image_of_size(layer: nn.Module, input_shape: Sequence[Optional[int]], channels: int) -> tuple:
    """The output shape of a 2-D recurrent ``layer`` that keeps its input's height and width:
    ``(B, layer.input_size, H, W)`` -> ``(B, channels, H, W)``, checked."""
    name = type(layer).__name__
    expect_rank(name, input_shape, (4,), "images (B, C, H, W)")
    b, c, h, w = input_shape
    if c is not None and c != layer.input_size:
        raise ValueError(f"{name} expects {layer.input_size} input channels, got {c}")
    return (b, channels, h, w)


class MDLSTM2d(nn.Module, Shaped):
    """Multidirectional 2-D LSTM computed along anti-diagonals.

    For each direction the cell at ``(i, j)`` of the (mirrored) image computes, with gates in the
    order ``i, f_left, f_up, o, g`` (input, two forget, output, cell candidate)::

        z = W x[i,j] + U_left h[i,j-1] + U_up h[i-1,j] + b
        c[i,j] = f_left * c[i,j-1] + f_up * c[i-1,j] + i * g
        h[i,j] = o * tanh(c[i,j])

    with zero states outside the image. Direction ``k`` scans from corner ``SCAN_DIRECTIONS[k]``:
    0 top-left, 1 top-right, 2 bottom-left, 3 bottom-right; ``directions=2`` means top-left and
    top-right (left-to-right and right-to-left, both top-down).

    Args:
        input_size: channels ``C`` of the input.
        hidden_size: units ``N`` per direction.
        directions: 1, 2 or 4 scanning directions.
        combine: ``'concat'`` (output ``D*N`` channels, direction-major) or ``'sum'`` (``N`` channels).
        dropout: dropout probability on the output (the paper drops LSTM outputs only).

    Shape:
        - Input: ``(B, C, H, W)``; optional ``lengths`` ``(B,)`` valid widths (padding on the right).
          With lengths, right-to-left directions start at each image's last valid column, so the
          valid outputs do not depend on the padding.
        - Output: ``(B, D*N, H, W)`` for ``'concat'``, ``(B, N, H, W)`` for ``'sum'``.

    Parameters ``weight_ih (D, 5N, C)``, ``weight_hh_left (D, 5N, N)``, ``weight_hh_up (D, 5N, N)``,
    ``bias (D, 5N)``, initialised like ``nn.LSTM`` (uniform in ``±1/sqrt(N)``).
    """

    uses_lengths = True
    # per cell and direction the wavefront keeps ~30N values per N outputs for backward (input and
    # neighbour projections, 5 gates before and after their nonlinearities, cell, output, the
    # stacked diagonals); measured on CPU for pham2014 (tests/test_memory.py, docs/spec.md)
    activation_factor = 30

    # the scan is a Python loop over the anti-diagonals, as many as the image has: a traced graph
    # (ONNX export) would hold the loop of one image size only
    exports_with_any_size = False

    def __init__(self, input_size: int, hidden_size: int, *, directions: int = 4,
                 combine: str = "concat", dropout: float = 0.0):
        super().__init__()
        if directions not in (1, 2, 4):
            raise ValueError(f"MDLSTM2d directions must be 1, 2 or 4, got {directions}")
        if combine not in COMBINE_MODES:
            raise ValueError(f"MDLSTM2d combine must be one of {COMBINE_MODES}, got {combine!r}")
        if input_size < 1 or hidden_size < 1:
            raise ValueError(f"MDLSTM2d expects positive sizes, got input_size={input_size}, "
                             f"hidden_size={hidden_size}")
        self.input_size, self.hidden_size = input_size, hidden_size
        self.directions, self.combine = directions, combine
        gates = 5 * hidden_size
        self.weight_ih = nn.Parameter(torch.empty(directions, gates, input_size))
        self.weight_hh_left = nn.Parameter(torch.empty(directions, gates, hidden_size))
        self.weight_hh_up = nn.Parameter(torch.empty(directions, gates, hidden_size))
        self.bias = nn.Parameter(torch.empty(directions, gates))
        self.dropout = nn.Dropout(dropout)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        bound = 1.0 / math.sqrt(self.hidden_size)
        for p in self.parameters():
            nn.init.uniform_(p, -bound, bound)

    @property
    def out_channels(self) -> int:
        return self.hidden_size * (self.directions if self.combine == "concat" else 1)

    def output_shape(self, input_shape: Sequence[Optional[int]]) -> tuple:
        return image_of_size(self, input_shape, self.out_channels)

    def forward(self, x: torch.Tensor, lengths: Optional[torch.Tensor] = None) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.input_size:
            raise ValueError(f"MDLSTM2d expects images (B, {self.input_size}, H, W), got shape {tuple(x.shape)}")
        width_index = None if lengths is None else _mirrored_columns(lengths, x.shape[3])
        scans = [_flip(x, fh, fw, width_index) for fh, fw in SCAN_DIRECTIONS[:self.directions]]
        x_dirs = torch.stack(scans)  # D x (B, C, H, W) -> (D, B, C, H, W)
        h_dirs = self._scan(x_dirs)  # (D, B, C, H, W) -> (D, B, N, H, W)
        outs = [_flip(h_dirs[k], fh, fw, width_index)  # mirroring is its own inverse
                for k, (fh, fw) in enumerate(SCAN_DIRECTIONS[:self.directions])]
        y = torch.cat(outs, dim=1) if self.combine == "concat" else torch.stack(outs).sum(0)
        return self.dropout(y)  # (B, D*N or N, H, W)

    def _scan(self, x: torch.Tensor) -> torch.Tensor:
        """One top-left-to-bottom-right pass for every direction at once: (D, B, C, H, W) -> (D, B, N, H, W).

        The image is skewed (row ``i`` shifted right by ``i``), so anti-diagonal ``d`` becomes
        column ``d`` of an ``H x (W+H-1)`` grid: the left neighbour of a cell is the same row of the
        previous column and the upper neighbour the row above in the previous column. Each step
        updates one whole column (``H`` cells, those outside the image are held at zero) with one
        batched matmul; states live as (D, N, H, B) so every elementwise op runs on contiguous rows.
        """
        d_, b_, c_, h_, w_ = x.shape
        n = self.hidden_size
        # Skew the input and cut it into columns (one per anti-diagonal), with an all-ones channel
        # that carries the bias: (D, B, C, H, W) -> (D, C+1, H, W+H-1, B) -> W+H-1 x (D, C+1, H, B)
        ones = x.new_ones(d_, b_, 1, h_, w_)
        x_cols = _skew(torch.cat([x, ones], dim=2).permute(0, 2, 3, 4, 1)).permute(3, 0, 1, 2, 4).contiguous()
        # All weights of a cell side by side: (D, G, C+1+2N) for [x, 1, h_left, h_up]
        w_all = torch.cat([self.weight_ih, self.bias[:, :, None], self.weight_hh_left, self.weight_hh_up], dim=2)
        rows = torch.arange(h_, device=x.device)
        zero_row = x.new_zeros(d_, n, 1, b_)
        h_prev = c_prev = x.new_zeros(d_, n, h_, b_)  # (D, N, H, B): the column before the first
        h_cols = []
        for d, x_col in enumerate(x_cols.unbind(0)):
            h_up = torch.cat([zero_row, h_prev[:, :, :-1]], dim=2)  # row i-1 of the previous column
            c_up = torch.cat([zero_row, c_prev[:, :, :-1]], dim=2)
            inputs = torch.cat([x_col, h_prev, h_up], dim=1)  # (D, C+1+2N, H, B): input, left, up
            z = torch.bmm(w_all, inputs.view(d_, -1, h_ * b_)).view(d_, 5 * n, h_, b_)  # (D, G, H, B)
            z_sig, z_g = z.split([4 * n, n], dim=1)  # (D, G, H, B) -> (D, 4N, H, B), (D, N, H, B)
            i, f_left, f_up, o = torch.sigmoid(z_sig).chunk(4, dim=1)  # 4 x (D, N, H, B)
            c = torch.addcmul(torch.addcmul(i * torch.tanh(z_g), f_left, c_prev), f_up, c_up)
            h = o * torch.tanh(c)
            if d < h_ - 1 or d > w_ - 1:  # some rows of this column lie outside the image: zero them
                inside = ((d - rows >= 0) & (d - rows < w_)).to(x.dtype)[None, None, :, None]  # (1, 1, H, 1)
                c, h = c * inside, h * inside
            h_cols.append(h)
            h_prev, c_prev = h, c
        h_skewed = torch.stack(h_cols, dim=3)  # W+H-1 x (D, N, H, B) -> (D, N, H, W+H-1, B)
        return _unskew(h_skewed, w_).permute(0, 4, 1, 2, 3)  # (D, N, H, W, B) -> (D, B, N, H, W)


def _skew(t: torch.Tensor) -> torch.Tensor:
    """Shift row ``i`` right by ``i``: (..., H, W, B) -> (..., H, W+H-1, B), zeros elsewhere.
    Cell (i, j) lands at (i, i+j), so anti-diagonal ``i + j = d`` becomes column ``d``."""
    *lead, h, w, b = t.shape
    t = nn.functional.pad(t, (0, 0, 0, h))  # (..., H, W, B) -> (..., H, W+H, B)
    # Row i starts at flat offset i*(W+H) = i*(W+H-1) + i: re-read with rows of W+H-1, it is shifted by i.
    flat = t.reshape(*lead, h * (w + h), b)[..., :h * (w + h - 1), :]  # -> (..., H*(W+H-1), B)
    return flat.view(*lead, h, w + h - 1, b)  # -> (..., H, W+H-1, B)


def _unskew(t: torch.Tensor, width: int) -> torch.Tensor:
    """Inverse of ``_skew``: (..., H, W+H-1, B) -> (..., H, W, B)."""
    *lead, h, _, b = t.shape
    flat = t.reshape(*lead, h * (width + h - 1), b)  # (..., H, W+H-1, B) -> (..., H*(W+H-1), B)
    flat = nn.functional.pad(flat, (0, 0, 0, h))  # -> (..., H*(W+H), B)
    return flat.view(*lead, h, width + h, b)[..., :width, :]  # -> (..., H, W, B)


class SeparableLSTM2d(nn.Module, Shaped):
    """Separable 2-D LSTM: a bidirectional LSTM along each row, then one along each column.

    Rows are folded into the batch (``B*H`` sequences of length ``W``), then columns
    (``B*W`` sequences of length ``H``); no loop in Python. Each pass sees a whole row or column in
    both directions, so every output depends on the whole image, for the cost of two 1-D LSTMs.

    Args:
        input_size: channels ``C`` of the input.
        hidden_size: units ``N`` per direction of each pass.
        combine: ``'concat'`` joins forward and backward outputs (``2N`` channels),
            ``'sum'`` adds them (``N`` channels); applied after both passes.

    Shape:
        - Input: ``(B, C, H, W)``; optional ``lengths`` ``(B,)`` valid widths: the row pass packs
          each row to its valid width, so padding does not leak into the valid columns.
        - Output: ``(B, 2N, H, W)`` for ``'concat'``, ``(B, N, H, W)`` for ``'sum'``.
    """

    uses_lengths = True

    def __init__(self, input_size: int, hidden_size: int, *, combine: str = "concat"):
        super().__init__()
        if combine not in COMBINE_MODES:
            raise ValueError(f"SeparableLSTM2d combine must be one of {COMBINE_MODES}, got {combine!r}")
        self.input_size, self.hidden_size, self.combine = input_size, hidden_size, combine
        mid = 2 * hidden_size if combine == "concat" else hidden_size
        self.rows = nn.LSTM(input_size, hidden_size, batch_first=True, bidirectional=True)
        self.cols = nn.LSTM(mid, hidden_size, batch_first=True, bidirectional=True)

    @property
    def out_channels(self) -> int:
        return 2 * self.hidden_size if self.combine == "concat" else self.hidden_size

    def output_shape(self, input_shape: Sequence[Optional[int]]) -> tuple:
        return image_of_size(self, input_shape, self.out_channels)

    def _combine(self, y: torch.Tensor) -> torch.Tensor:
        if self.combine == "concat":
            return y
        fwd, bwd = y.chunk(2, dim=-1)  # (..., 2N) -> 2 x (..., N)
        return fwd + bwd

    def forward(self, x: torch.Tensor, lengths: Optional[torch.Tensor] = None) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.input_size:
            raise ValueError(f"SeparableLSTM2d expects images (B, {self.input_size}, H, W), "
                             f"got shape {tuple(x.shape)}")
        b, c, h, w = x.shape
        rows = x.permute(0, 2, 3, 1).reshape(b * h, w, c)  # (B, C, H, W) -> (B*H, W, C)
        if lengths is None:
            y, _ = self.rows(rows)
        else:
            row_lengths = lengths.to("cpu").repeat_interleave(h)  # (B,) -> (B*H,)
            packed = pack_padded_sequence(rows, row_lengths, batch_first=True, enforce_sorted=False)
            y, _ = pad_packed_sequence(self.rows(packed)[0], batch_first=True, total_length=w)
        y = self._combine(y)  # (B*H, W, 2N) -> (B*H, W, F)
        f = y.shape[-1]
        cols = y.view(b, h, w, f).transpose(1, 2).reshape(b * w, h, f)  # (B*H, W, F) -> (B*W, H, F)
        y, _ = self.cols(cols)
        y = self._combine(y)  # (B*W, H, 2N) -> (B*W, H, F)
        return y.view(b, w, h, -1).permute(0, 3, 2, 1)  # (B*W, H, F) -> (B, F, H, W)


class Tile(nn.Module, Shaped):
    """Space-to-depth: each ``kh x kw`` tile of pixels becomes one pixel with ``C*kh*kw`` channels.

    H and W are zero-padded at the bottom and right up to multiples of ``kh`` and ``kw``, so the
    output has ``ceil(H/kh)`` rows and ``ceil(W/kw)`` columns; valid widths map to ``ceil(len/kw)``.
    Channels are ordered ``(c, dy, dx)`` (channel-major).

    Shape:
        - Input: ``(B, C, H, W)``
        - Output: ``(B, C*kh*kw, ceil(H/kh), ceil(W/kw))``
    """

    def __init__(self, kh: int, kw: int):
        super().__init__()
        if kh < 1 or kw < 1:
            raise ValueError(f"Tile expects a positive tile size, got {kh}x{kw}")
        self.kh, self.kw = kh, kw

    def output_shape(self, input_shape: Sequence[Optional[int]]) -> tuple:
        expect_rank("Tile", input_shape, (4,), "images (B, C, H, W)")
        b, c, h, w = input_shape
        up = lambda size, k: None if size is None else -(-size // k)  # noqa: E731 - ceil division
        return (b, None if c is None else c * self.kh * self.kw, up(h, self.kh), up(w, self.kw))

    def output_lengths(self, lengths: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
        if lengths is None:
            return None
        return torch.div(lengths + self.kw - 1, self.kw, rounding_mode="floor")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4:
            raise ValueError(f"Tile expects images (B, C, H, W), got shape {tuple(x.shape)}")
        b, c, h, w = x.shape
        pad_h, pad_w = (-h) % self.kh, (-w) % self.kw
        x = nn.functional.pad(x, (0, pad_w, 0, pad_h))  # (B, C, H, W) -> (B, C, H+ph, W+pw)
        h2, w2 = (h + pad_h) // self.kh, (w + pad_w) // self.kw
        x = x.view(b, c, h2, self.kh, w2, self.kw)  # -> (B, C, H', kh, W', kw)
        x = x.permute(0, 1, 3, 5, 2, 4)  # -> (B, C, kh, kw, H', W')
        return x.reshape(b, c * self.kh * self.kw, h2, w2)  # -> (B, C*kh*kw, H', W')


class Collapse(nn.Module, Shaped):
    """Collapse the height of a feature map into a sequence along the width.

    Shape:
        - Input: ``(B, C, H, W)``
        - Output: ``(B, W, C)``: a feature sequence with ``T = W`` (lengths unchanged).
    """

    MODES = ("sum", "mean", "max")

    def __init__(self, mode: str = "sum"):
        super().__init__()
        if mode not in self.MODES:
            raise ValueError(f"Collapse mode must be one of {self.MODES}, got {mode!r}")
        self.mode = mode

    def output_shape(self, input_shape: Sequence[Optional[int]]) -> tuple:
        expect_rank("Collapse", input_shape, (4,), "images (B, C, H, W)")
        b, c, _, w = input_shape
        return (b, w, c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4:
            raise ValueError(f"Collapse expects images (B, C, H, W), got shape {tuple(x.shape)}")
        if self.mode == "max":
            y = x.amax(dim=2)
        else:
            y = x.sum(dim=2) if self.mode == "sum" else x.mean(dim=2)  # (B, C, H, W) -> (B, C, W)
        return y.transpose(1, 2)  # (B, C, W) -> (B, W, C)
