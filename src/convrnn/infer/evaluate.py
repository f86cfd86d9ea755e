"""The one evaluation loop: a model, a task and batches in, the task's metrics out.

The trainer validates with it, ``convrnn eval`` scores a run with it, and the report collects its
examples (misread lines, misclassified images) through ``on_batch`` while it runs.
"""
# B batch
from __future__ import annotations

import functools
import inspect
from typing import Callable, Optional

import torch

from convrnn.layers.base import ModelOutput
from convrnn.tasks.base import MetricAccumulator, Task


def run_model(model, x, lengths=None, state=None, *, need_state: bool = True) -> ModelOutput:
    """``model.run(x, lengths, state, need_state=...)``, leaving ``need_state`` out for models whose
    ``run`` does not take it (a model of your own written before it existed)."""
    if _takes_need_state(type(model)):
        return model.run(x, lengths, state, need_state=need_state)
    return model.run(x, lengths, state)


@functools.lru_cache(maxsize=None)
def _takes_need_state(cls) -> bool:
    try:
        return "need_state" in inspect.signature(cls.run).parameters
    except (TypeError, ValueError):
        return False


def to_device(batch: dict, device: torch.device) -> dict:
    return {k: (v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}


@torch.inference_mode()
def evaluate(model: torch.nn.Module, task: Task, data, *, max_batches: int = 0,
             device: Optional[torch.device] = None, progress: Optional[Callable[[int, int], None]] = None,
             on_batch: Optional[Callable[[dict, ModelOutput], None]] = None) -> MetricAccumulator:
    """The task's metrics of ``model`` over the batches of ``data`` (a BatchSource; epoch 0, in order),
    at most ``max_batches`` (0: all). A stateful task's recurrent state is carried from batch to batch
    and reset where a batch says ``reset``. ``progress(done, total)`` counts batches; ``on_batch(batch,
    out)`` sees each batch and the model's output. The model is evaluated in eval mode and left in
    the mode it was in. Returns the accumulator: ``.compute()`` gives the metrics."""
    total = data.num_batches(0)
    if max_batches:
        total = min(total, max_batches)
    was_training = model.training
    model.eval()
    acc = task.new_metrics()
    state = None
    try:
        for i, batch in enumerate(data.batches(0)):
            if i >= total:
                break
            if device is not None:
                batch = to_device(batch, device)
            if task.stateful and batch.get("reset") is True:
                state = None
            out = run_model(model, batch["x"], batch.get("lengths"), state if task.stateful else None,
                            need_state=task.stateful)
            state = out.state
            acc.update(out, batch)
            if on_batch is not None:
                on_batch(batch, out)
            if progress is not None:
                progress(i + 1, total)
    finally:
        model.train(was_training)
    return acc
