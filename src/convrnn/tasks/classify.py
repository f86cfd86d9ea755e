"""Classification: cross-entropy loss, accuracy, per-class counts and a confusion matrix."""
# B batch, V classes
from __future__ import annotations

import torch
import torch.nn.functional as F

from convrnn.layers.base import ModelOutput
from convrnn.tasks.base import MetricAccumulator, Task


class ClassifyMetrics(MetricAccumulator):
    def __init__(self, num_classes: int):
        self.num_classes = num_classes
        self.loss_sum, self.n = 0.0, 0
        self.confusion = torch.zeros(num_classes, num_classes, dtype=torch.int64)  # rows: truth, cols: prediction

    def update(self, out: ModelOutput, batch: dict) -> None:
        logits, y = out.y.float(), batch["y"]
        self.loss_sum += float(F.cross_entropy(logits, y, reduction="sum"))
        self.n += int(y.numel())
        pred = logits.argmax(dim=-1)
        idx = (y * self.num_classes + pred).cpu()
        self.confusion += torch.bincount(idx, minlength=self.num_classes ** 2).view(self.num_classes, self.num_classes)

    def compute(self) -> dict[str, float]:
        n = max(self.n, 1)
        correct = int(self.confusion.diag().sum())
        return {"loss": self.loss_sum / n, "accuracy": correct / n, "errors": float(self.n - correct),
                "samples": float(self.n)}


class ClassifyTask(Task):
    """One label per input. ``y`` is ``(B,)`` int64 class indices; the model returns ``(B, V)`` logits."""

    name = "classify"
    monitor = "accuracy"
    monitor_mode = "max"
    counts = {"errors": "samples"}

    def __init__(self, classes: list[str], *, label_smoothing: float = 0.0):
        if len(classes) < 2:
            raise ValueError(f"classification needs at least 2 classes, got {len(classes)}")
        self.classes = list(classes)
        self.label_smoothing = label_smoothing
        self.num_outputs = len(self.classes)

    def loss(self, out: ModelOutput, batch: dict) -> torch.Tensor:
        return F.cross_entropy(out.y.float(), batch["y"], label_smoothing=self.label_smoothing)

    def new_metrics(self) -> ClassifyMetrics:
        return ClassifyMetrics(len(self.classes))

    def state_dict(self) -> dict:
        return {"classes": list(self.classes)}

    @torch.inference_mode()
    def predict(self, logits: torch.Tensor) -> list[tuple[str, float]]:
        """``(B, V)`` logits -> the most likely class name and its probability per input."""
        if logits.dim() != 2 or logits.shape[-1] != len(self.classes):
            raise ValueError(f"expected logits of shape (B, {len(self.classes)}), one per class, got "
                             f"{tuple(logits.shape)}")
        probs = logits.float().softmax(dim=-1)
        p, i = probs.max(dim=-1)
        return [(self.classes[int(k)], float(v)) for k, v in zip(i, p)]
