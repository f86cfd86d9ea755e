"""Several readings of one input, combined: ensembles at inference and test-time views.

``EnsembleModel`` holds the K members of a run trained with ``train.ensemble=K``
(``convrnn.train.ensemble``) and runs them all on each input. How the members' outputs combine
depends on what they are, which the task knows (``Task.ensemble_combine``): ``probs`` averages the
softmax over the last axis and returns its log (classes, per-step digit values, characters), ``mean``
averages the outputs (regression), and ``labellings`` (CTC) returns the frame average as ``y`` and
every member's per-frame log-probabilities as ``ModelOutput.members``. CTC members emit a character at
frames of their own, so averaging frames mixes one member's character with another's blank; the CTC
task instead decodes the members jointly, scoring each candidate text by the product of the members'
probabilities of it, each member summing over its own alignments (``convrnn.tasks.ctc.beam_search``).

``ShiftedViews`` reads every line image several times, moved right by 0, 1, ... pixels, and hands all
the views to the CTC task as members of one ensemble (``--shifts N`` of ``convrnn eval`` and
``convrnn predict``). ``MovedViews`` is the same for models that are not decoded jointly (digits,
fonts): every image moved by one pixel in up to eight directions, the views' distributions
multiplied (values averaged). ``with_views`` picks the one a model and task call for.

Shape: as the member model; ``run`` returns ``ModelOutput(y, lengths, [])`` (no carried state), with
``members`` ``(K, *y.shape)`` for ``labellings``.
"""
# B batch, K members
from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from convrnn.layers.base import ModelOutput

COMBINES = ("probs", "mean", "labellings")
# MovedViews' views after the image itself: one pixel right, left, down, up, then the diagonals (dx, dy)
MOVES = ((1, 0), (-1, 0), (0, 1), (0, -1), (1, 1), (1, -1), (-1, 1), (-1, -1))


def log_mean_prob(log_probs: torch.Tensor) -> torch.Tensor:
    """``(K, ...)`` log-probabilities -> the log of their mean probability, ``log sum_k p_k - log K``."""
    return torch.logsumexp(log_probs, dim=0) - math.log(log_probs.shape[0])


def refuse_state(state: Optional[list], what: str) -> None:
    """Models that combine several runs of a model (ensembles, views) carry no recurrent state."""
    if state:
        raise ValueError(f"{what} carry no recurrent state; call run() without state")


def combine_outputs(outs: Sequence[ModelOutput], combine: str) -> ModelOutput:
    """The members' outputs as one: their mean (``mean``), the log of their mean probability (``probs``;
    every member's log-probabilities kept as ``members`` for ``labellings``), or the product of their
    distributions (``product``: the mean of the log-probabilities, renormalised)."""
    ys = torch.stack([o.y.float() for o in outs])  # (K, B, ...)
    if combine == "mean":
        return ModelOutput(ys.mean(0), outs[0].lengths, [])
    log_probs = torch.log_softmax(ys, dim=-1)
    if combine == "product":
        return ModelOutput(torch.log_softmax(log_probs.mean(0), dim=-1), outs[0].lengths, [])
    return ModelOutput(log_mean_prob(log_probs), outs[0].lengths, [], log_probs if combine == "labellings" else None)


class EnsembleModel(nn.Module):
    """``members`` copies of the model of ``spec``, run on the same input and combined by ``combine``."""

    def __init__(self, spec: str, input_shape: Sequence, num_outputs: Optional[int], members: int, combine: str):
        super().__init__()
        from convrnn.spec.builder import SpecModel

        if members < 2:
            raise ValueError(f"an ensemble needs at least 2 members, got {members}")
        if combine not in COMBINES:
            raise ValueError(f"ensemble combine must be one of {', '.join(COMBINES)}, got {combine!r}")
        self.members = nn.ModuleList(SpecModel(spec, input_shape, num_outputs) for _ in range(members))
        first = self.members[0]
        self.spec, self.input_shape, self.num_outputs = first.spec, first.input_shape, first.num_outputs
        self.output_shape, self.combine = first.output_shape, combine
        self.num_stateful = 0  # members run without carried state

    def run(self, x: torch.Tensor, lengths: Optional[torch.Tensor] = None, state: Optional[list] = None,
            *, need_state: bool = True) -> ModelOutput:
        refuse_state(state, "ensembles")
        return combine_outputs([m.run(x, lengths, need_state=False) for m in self.members], self.combine)

    def forward(self, x: torch.Tensor, lengths: Optional[torch.Tensor] = None) -> torch.Tensor:
        return self.run(x, lengths).y


class _Views(nn.Module):
    """A model read at several views of its input: describes itself as ``model`` does, carries no state."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.spec, self.input_shape = model.spec, model.input_shape
        self.num_outputs, self.output_shape = model.num_outputs, model.output_shape
        self.num_stateful = 0

    def forward(self, x: torch.Tensor, lengths: Optional[torch.Tensor] = None) -> torch.Tensor:
        return self.run(x, lengths).y


class ShiftedViews(_Views):
    """``model`` run on ``shifts`` copies of each line, moved right by 0..shifts-1 pixels; the views
    (times the members of an ensemble) become ``ModelOutput.members`` for a joint CTC decoding.

    A line recogniser that pools the width by s gives one frame per s pixels, so where a character
    falls on that grid is an accident of the line's left margin. Views moved by 0..s-1 pixels see
    every phase of the grid; each reads a few characters differently, and the joint decoding keeps
    the text they agree on (docs/decisions.md). Every view is padded to the same width (``shifts - 1``
    columns of background, 0, split between the left and the right), so all views have the same
    frames. For inputs ``(B, C, H, W)`` with ``lengths`` in pixels along W (the lines recipe).
    """

    def __init__(self, model: nn.Module, shifts: int):
        super().__init__(model)
        if shifts < 1:
            raise ValueError(f"shifts must be >= 1, got {shifts}")
        self.shifts = int(shifts)

    def run(self, x: torch.Tensor, lengths: Optional[torch.Tensor] = None, state: Optional[list] = None,
            *, need_state: bool = True) -> ModelOutput:
        refuse_state(state, "views of a model")
        pad = self.shifts - 1
        wide = None if lengths is None else lengths + pad  # every view ends at the same column
        outs = [self.model.run(F.pad(x, (d, pad - d)), wide, need_state=False) for d in range(self.shifts)]
        members = torch.cat([o.members if o.members is not None else torch.log_softmax(o.y.float(), -1)[None]
                             for o in outs])  # (views x members, B, T, V)
        return ModelOutput(log_mean_prob(members), outs[0].lengths, [], members)


def move_image(x: torch.Tensor, dx: int, dy: int) -> torch.Tensor:
    """``x`` ``(..., H, W)`` moved ``dx`` pixels right and ``dy`` down (negative: left, up); the
    columns and rows moved in are background (0), what leaves the frame is lost."""
    h, w = x.shape[-2:]
    out = torch.zeros_like(x)
    out[..., max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = \
        x[..., max(-dy, 0):h + min(-dy, 0), max(-dx, 0):w + min(-dx, 0)]
    return out


class MovedViews(_Views):
    """``model`` run on ``views`` copies of its input images: as drawn, then moved by one pixel right,
    left, down, up and along the diagonals (``MOVES``, up to 9 views). Values (``combine="mean"``) are
    averaged; distributions (``"probs"``) are multiplied, as the joint CTC decoding multiplies the
    views of a line: the mean of the views' log-probabilities, renormalised.

    Test-time augmentation for models that read images (``(B, T, C, H, W)`` per-step digits, or
    ``(B, C, H, W)``): a digit read with confidence from where it was drawn may be read otherwise one
    pixel away, and the views together keep what they agree on. The training augmentation of the
    digits recipe moves digits by up to 2 pixels, so every view is one the model has learnt to read.
    The product lowers the error as much as the mean of the probabilities does and keeps the exact
    matches of a single reading, which the mean loses (docs/decisions.md).
    """

    def __init__(self, model: nn.Module, views: int, combine: str):
        super().__init__(model)
        if not 1 <= views <= len(MOVES) + 1:
            raise ValueError(f"views must be 1..{len(MOVES) + 1} (the image and its one-pixel moves), got {views}")
        if combine not in ("probs", "mean"):
            raise ValueError(f"moved views combine by probs or mean, got {combine!r}")
        self.views, self.combine = int(views), combine

    def run(self, x: torch.Tensor, lengths: Optional[torch.Tensor] = None, state: Optional[list] = None,
            *, need_state: bool = True) -> ModelOutput:
        refuse_state(state, "views of a model")
        moves = ((0, 0),) + MOVES[:self.views - 1]
        outs = [self.model.run(move_image(x, dx, dy), lengths, need_state=False) for dx, dy in moves]
        return combine_outputs(outs, "product" if self.combine == "probs" else "mean")


def with_views(model: nn.Module, task, views: int) -> nn.Module:
    """``model`` itself for ``views`` 1; else, for a task that decodes labellings jointly (CTC line
    recognisers), its :class:`ShiftedViews` (moved right by 0..views-1 pixels), and for other models of
    images its :class:`MovedViews` (the image and its first views-1 one-pixel moves, distributions
    multiplied, values averaged). A ConfigError for models that do not read images."""
    from convrnn.errors import ConfigError

    if views == 1:
        return model
    if views < 1:
        raise ConfigError(f"shifts must be >= 1, got {views}")
    if task.ensemble_combine == "labellings":
        return ShiftedViews(model, views)
    if len(model.input_shape) < 3:
        raise ConfigError(f"shifts: reading shifted copies applies to models of images, not to this run's model "
                          f"(its input is {tuple(model.input_shape)})")
    if views > len(MOVES) + 1:
        raise ConfigError(f"shifts: at most {len(MOVES) + 1} for a model of images (the image and its eight "
                          f"one-pixel moves), got {views}")
    return MovedViews(model, views, task.ensemble_combine)
