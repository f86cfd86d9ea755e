"""Weight averaging: an exponential moving average of the weights, which validation and inference use.

The averaged weights ``a`` follow the trained ones ``w`` after every optimizer step,
``a <- d * a + (1 - d) * w``, with ``d = min(decay, (1 + n) / (10 + n))`` after ``n`` updates so
that short runs are not dominated by the initial weights. The average sits in a flatter, lower
region of the loss than any single noisy iterate (Polyak and Juditsky 1992; the ASGD of Merity et
al. 2017 for LSTM language models), which is why the last and best checkpoints carry it as their
``model`` and the raw weights, needed to resume, as ``train_model``.

Floating-point buffers (batch norm's running statistics) are averaged with the parameters; integer
buffers (``num_batches_tracked``) are left as they are.
"""
from __future__ import annotations

import torch


class WeightAverage:
    """The moving average of ``model``'s floating tensors, swappable with the live ones in place.

    ``swap()`` exchanges the model's tensors and the averages (in place, so optimizers, DDP and
    compiled graphs keep their references); a second ``swap()`` undoes it. While swapped the model
    holds the averaged weights: evaluate or save then, but do not train.
    """

    def __init__(self, model: torch.nn.Module, decay: float):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"decay must be in (0, 1), got {decay}")
        self.decay = decay
        self.index: dict[int, int] = {}  # id of a model tensor -> its position in tensors and shadow
        self.tensors: list[torch.Tensor] = []
        for t in (*model.parameters(), *model.buffers()):  # each shared (tied) tensor once
            if t.dtype.is_floating_point and id(t) not in self.index:
                self.index[id(t)] = len(self.tensors)
                self.tensors.append(t)
        self.shadow = [t.detach().clone() for t in self.tensors]
        self.updates = 0
        self.swapped = False

    @torch.no_grad()
    def update(self) -> None:
        """Move the averages towards the current weights (call after each optimizer step)."""
        if self.swapped:
            raise RuntimeError("update() while the averaged weights are swapped in")
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        torch._foreach_lerp_(self.shadow, [t.detach() for t in self.tensors], 1.0 - d)

    @torch.no_grad()
    def swap(self) -> None:
        """Exchange the model's weights and the averages, in place."""
        for t, s in zip(self.tensors, self.shadow):
            tmp = t.detach().clone()
            t.detach().copy_(s)
            s.copy_(tmp)
        self.swapped = not self.swapped

    def state_dicts(self, model: torch.nn.Module) -> tuple[dict, dict]:
        """``(averaged, raw)`` state dicts of ``model``, whichever of the two it holds now."""
        held = model.state_dict(keep_vars=True)
        live = {k: v.detach() for k, v in held.items()}
        other = {k: self.shadow[self.index[id(v)]] if id(v) in self.index else live[k] for k, v in held.items()}
        return (live, other) if self.swapped else (other, live)

    @torch.no_grad()
    def load(self, model: torch.nn.Module, averaged: dict, raw: dict) -> None:
        """Put ``raw`` into ``model`` and ``averaged`` into the averages (a resumed run)."""
        model.load_state_dict(averaged)
        self.shadow = [t.detach().clone() for t in self.tensors]
        model.load_state_dict(raw)
        self.swapped = False

    def __enter__(self) -> "WeightAverage":
        self.swap()
        return self

    def __exit__(self, *exc) -> None:
        self.swap()
