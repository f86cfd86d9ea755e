"""Confusion matrices of classification runs (fonts, mnist): which class is mistaken for which.

The counts come from the classification task's metric accumulator (``ClassifyMetrics.confusion``,
rows: true class, columns: predicted class) after evaluating a run's best checkpoint on a capped
number of validation batches.

Shape:
    confusion: ``(V, V)`` int counts, V classes; row ``i`` holds the samples of true class ``i``.
"""
# V classes
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np

from convrnn.errors import DataError

log = logging.getLogger(__name__)


def confusion_figure(counts: np.ndarray, classes: Sequence[str], *, title: Optional[str] = None):
    """A matplotlib figure of ``counts`` ``(V, V)``: colour is each row's share, text the count.

    Row shares (recall per cell) make rare classes as visible as common ones; the numbers keep the
    absolute counts. Counts are written in the cells up to 30 classes.
    """
    import matplotlib
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    counts = np.asarray(counts)
    v = len(classes)
    if counts.shape != (v, v):
        raise DataError(f"expected a {v}x{v} confusion matrix for {v} classes, got shape {counts.shape}")
    share = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)  # (V, V) row-normalised
    side = min(10.0, 2.5 + 0.5 * v)
    fig, ax = plt.subplots(figsize=(side + 1.2, side))
    im = ax.imshow(share, cmap="Blues", vmin=0.0, vmax=1.0, interpolation="nearest")
    ax.set_xticks(range(v), [str(c) for c in classes], rotation=45 if v > 4 else 0, ha="right" if v > 4 else "center",
                  fontsize=9)
    ax.set_yticks(range(v), [str(c) for c in classes], fontsize=9)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    if v <= 30:
        for i in range(v):
            for j in range(v):
                if counts[i, j]:
                    ax.text(j, i, str(int(counts[i, j])), ha="center", va="center", fontsize=8,
                            color="white" if share[i, j] > 0.5 else "black")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="share of the true class")
    ax.set_title(title or "confusion matrix", fontsize=10)
    fig.tight_layout()
    return fig


def run_confusion(run: str | os.PathLike, *, split: str = "val", max_batches: int = 20,
                  progress: Optional[Callable] = None, data_progress: Optional[Callable] = None
                  ) -> tuple[np.ndarray, list[str]]:
    """Counts ``(V, V)`` and class names of a classification run's best checkpoint on ``split``."""
    from convrnn.viz.html import eval_context, evaluate_metrics

    ctx = eval_context(str(run), split=split, max_batches=max_batches, progress=progress, data_progress=data_progress)
    if not hasattr(ctx.task.new_metrics(), "confusion"):  # before any data is built
        raise DataError(f"{run}: expected a classification run, got one of recipe {ctx.loaded.recipe.name!r} "
                        "whose metrics keep no confusion matrix")
    acc = evaluate_metrics(ctx)
    classes = list(ctx.ckpt["meta"].get("classes") or ctx.task.classes)
    return acc.confusion.cpu().numpy(), classes


def plot_confusion(run: str | os.PathLike, out: str | os.PathLike, *, split: str = "val", max_batches: int = 20,
                   progress: Optional[Callable] = None, data_progress: Optional[Callable] = None) -> Path:
    """Evaluate ``run`` and write its confusion matrix to the PNG ``out`` (atomically). Returns the path."""
    from convrnn.files import atomic_write_bytes, check_writable
    from convrnn.viz.html import figure_png

    from convrnn.train.rundir import run_files
    check_writable(out, keep=run_files(run), png=True)  # an unwritable --out fails before the evaluation, not after it
    counts, classes = run_confusion(run, split=split, max_batches=max_batches, progress=progress,
                                    data_progress=data_progress)
    n = int(counts.sum())
    acc = float(np.trace(counts)) / max(n, 1)
    fig = confusion_figure(counts, classes, title=f"{Path(run).name} ({split}): {n} samples, accuracy {acc:.3f}")
    path = Path(out)
    atomic_write_bytes(path, figure_png(fig, dpi=110))  # makes the folder; refuses a folder or special file
    return path
