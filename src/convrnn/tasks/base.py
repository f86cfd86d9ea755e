"""What every task provides: a loss, metrics that accumulate over batches, and a monitor metric."""
# B batch, T time steps, V classes/vocabulary
from __future__ import annotations

import re
from typing import Any, Optional

import torch

from convrnn.errors import ConfigError
from convrnn.layers.base import ModelOutput


class MetricAccumulator:
    """Sums per-batch statistics; ``compute()`` turns them into named floats."""

    def update(self, out: ModelOutput, batch: dict) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def compute(self) -> dict[str, float]:  # pragma: no cover - abstract
        raise NotImplementedError


_PER_LENGTH = re.compile(r"_len\d+$")


def format_metrics(metrics: dict, counts: Optional[dict[str, str]] = None) -> str:
    """``loss 0.03121  accuracy 0.9985  errors 3/2000``: the headline metrics on one line.

    ``counts`` maps a count metric to the metric that is its denominator (``{"errors": "samples"}``):
    the count is shown over it and the denominator itself is not shown. Per-length breakdowns
    (``mae_len3``) and rates (``*_per_s``) stay in metrics.csv and the report.
    """
    counts = counts or {}
    denominators = {d for d in counts.values() if d in metrics}
    parts = []
    for name, value in metrics.items():
        if name in denominators or _PER_LENGTH.search(name) or name.endswith("_per_s"):
            continue
        if name in counts and counts[name] in metrics:
            parts.append(f"{name} {int(value):,}/{int(metrics[counts[name]]):,}")
        elif isinstance(value, float) and value.is_integer() and abs(value) < 1e15 and name in counts:
            parts.append(f"{name} {int(value):,}")
        else:
            parts.append(f"{name} {value:.4g}" if isinstance(value, float) else f"{name} {value}")
    return "  ".join(parts)


def metric_lines(metrics: dict, counts: Optional[dict[str, str]] = None) -> list[str]:
    """``name: value`` lines of every metric (counts over their denominators), then the per-length
    breakdowns (``mse_len3``...) as a table with a row per length."""
    counts = counts or {}
    denominators = {d for d in counts.values() if d in metrics}
    lines, by_length = [], {}
    for name, value in metrics.items():
        m = _PER_LENGTH.search(name)
        if m:
            by_length.setdefault(int(m.group()[4:]), {})[name[:m.start()]] = value
        elif name in denominators:
            continue
        elif name in counts and counts[name] in metrics:
            lines.append(f"{name}: {int(value)}/{int(metrics[counts[name]])}")
        else:
            lines.append(f"{name}: {value:.6g}" if isinstance(value, float) else f"{name}: {value}")
    if by_length:
        columns = list(dict.fromkeys(k for row in by_length.values() for k in row))
        lines.append("per length: " + "  ".join(f"{c:>8}" for c in ["length", *columns]))
        for length in sorted(by_length):
            row = by_length[length]
            lines.append("            " + "  ".join([f"{length:>8}"] + [f"{row.get(c, float('nan')):>8.4g}" for c in columns]))
    return lines


class Task:
    """Loss + metrics + decoding for one kind of output.

    ``monitor`` names the validation metric that selects the ``best`` checkpoint and
    ``monitor_mode`` says whether larger (``"max"``) or smaller (``"min"``) is better.
    ``stateful`` tasks (language models trained with truncated BPTT) have the trainer carry the
    recurrent state from one batch to the next.
    ``ensemble_combine`` says how an ensemble averages its members' outputs (convrnn.infer.views):
    ``probs`` for logits (the softmax over the last axis is averaged), ``mean`` for values,
    ``labellings`` for CTC (the members' log-probabilities go to ``ModelOutput.members`` and the
    task decodes them jointly).
    """

    name: str = "task"
    monitor: str = "loss"
    monitor_mode: str = "min"
    stateful: bool = False
    ensemble_combine: str = "probs"
    unit: str = "samples"  # what ``count`` counts, for throughput (samples/s, lines/s, chars/s)
    counts: dict[str, str] = {}  # count metric -> the metric that is its denominator (format_metrics)

    output_ndim: int = 2  # dimensions of the model output the task scores: (B, V) 2, (B, T, V) 3
    num_outputs: Optional[int] = None  # the size of its last axis, where the task fixes it

    def output_problem(self, shape: tuple) -> str:
        """Why a model output of ``shape`` (batch first, None for variable sizes) cannot be scored by
        this task, or ``""`` when it can."""
        def text(dims) -> str:
            return "(" + ", ".join("?" if d is None else str(d) for d in dims) + ")"
        wanted = "one output per input (B, V)" if self.output_ndim == 2 else "an output per step (B, T, V)"
        if len(shape) != self.output_ndim:
            return f"it gives outputs of shape {text(shape)} where the {self.name} task needs {wanted}"
        if self.num_outputs is not None and shape[-1] != self.num_outputs:
            return f"it gives {shape[-1]} outputs per {'input' if self.output_ndim == 2 else 'step'} where the " \
                   f"{self.name} task needs {self.num_outputs}"
        return ""

    def with_decoding(self, **options) -> "Task":
        """This task decoding another way (``CTCTask``: beam search, a word list, a language model);
        a task with one way of reading its outputs refuses options."""
        if any(v is not None for v in options.values()):
            given = ", ".join(f"--{k}" for k, v in options.items() if v is not None)
            raise ConfigError(f"{given}: decoding options apply to text-line (CTC) runs, not to a {self.name} task")
        return self

    def count(self, batch: dict) -> int:
        """How many ``unit`` a batch holds (by default its inputs)."""
        return int(batch["x"].shape[0])

    def format_metrics(self, metrics: dict) -> str:
        """The headline metrics on one line, counts over their denominators (:func:`format_metrics`)."""
        return format_metrics(metrics, self.counts)

    def metric_lines(self, metrics: dict) -> list[str]:
        """Every metric, a line each (:func:`metric_lines`): what ``convrnn eval`` prints."""
        return metric_lines(metrics, self.counts)

    def loss(self, out: ModelOutput, batch: dict) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def new_metrics(self) -> MetricAccumulator:  # pragma: no cover - abstract
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        """Anything the task needs to rebuild itself from a checkpoint (class names, vocabulary)."""
        return {}
