"""Pictures of runs: learning curves from ``metrics.csv`` and the first convolution layer's kernels.

Both take several runs and put them on one figure (curves: one line per run on shared axes;
filters: one row per run, one panel per kernel), are drawn with matplotlib's Agg backend (no
display needed), sized to stay readable at laptop width, and written atomically with
``convrnn.files.atomic_write_bytes`` (a temporary file in the target folder, renamed over the final
name; the ``--out`` path is checked before any work, so a folder or special file there fails at once).

Shape:
    first-layer weights: ``(F, C, KH, KW)``; one panel per (kernel, input channel) pair.
    F filters, C input channels, KH x KW kernel size.
"""
# F filters, C input channels, KH kernel height, KW kernel width
from __future__ import annotations

import io
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from convrnn.errors import CheckpointError, DataError
from convrnn.files import atomic_write_bytes, check_writable
from convrnn.train.rundir import run_files

LOG_SPAN = 20.0  # loss, mse, mae on a log axis when their values span more than this (as the report's)

log = logging.getLogger(__name__)

FIGURE_WIDTH = 11.0  # inches: about a laptop screen's width at 100 dpi
DPI = 110


def _pyplot():
    import matplotlib
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    return plt


def save_figure(fig, out: str | os.PathLike) -> Path:
    """Write ``fig`` as PNG to ``out`` atomically (``convrnn.files.atomic_write_bytes``: the folder is
    created, a symlink's target is written, a folder or special file is refused). Closes the figure."""
    path = Path(out)
    try:
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=DPI)  # rendered in memory: a failed drawing writes nothing
    finally:
        _pyplot().close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return path


def run_label(run: str | os.PathLike) -> str:
    """A short name for a run: its directory name (a checkpoint file's run directory)."""
    p = Path(run)
    if p.is_file():
        p = p.parent.parent if p.parent.name == "checkpoints" else p.parent
    return p.name or str(run)


# ----------------------------------------------------------------------------------- curves

def _metrics_rows(run: str | os.PathLike) -> list[dict]:
    from convrnn.train.rundir import read_metrics
    p = Path(run)
    csv = p / "metrics.csv" if p.is_dir() else p
    if not csv.is_file():
        raise DataError(f"{run}: expected a run directory with metrics.csv, found none")
    rows = read_metrics(csv)
    if not rows:
        raise DataError(f"{csv}: expected logged metrics, found an empty file")
    return rows


def default_curve_metrics(rows_by_run: Sequence[list[dict]], limit: int = 3) -> list[str]:
    """The loss, then up to ``limit - 1`` validation metrics all runs share (not per-length or rate ones)."""
    shared = None
    for rows in rows_by_run:
        names = {r["metric"] for r in rows if r["split"] == "val"}
        shared = names if shared is None else shared & names
    shared = shared or set()
    preferred = ["exact", "accuracy", "mse", "mae", "cer", "bits_per_char"]
    extra = [m for m in preferred if m in shared]
    counts = ("errors", "samples", "lines", "chars", "words", "unseen_chars", "skipped_too_long")  # not scores
    extra += sorted(m for m in shared if m not in extra and m != "loss" and "_len" not in m and m not in counts)
    return ["loss"] + extra[:limit - 1]


def plot_curves(runs: Sequence[str | os.PathLike], out: str | os.PathLike, *,
                metrics: Sequence[str] | None = None) -> Path:
    """Learning curves of ``runs`` on one PNG: a panel per metric, a colour per run.

    The loss panel shows training (thin) and validation (thick, dots) loss; other panels show the
    validation metric. ``metrics`` default: loss and two shared validation metrics.
    """
    if not runs:
        raise DataError("expected at least one run to plot, got none")
    # an unwritable --out, or one of the runs' own files, fails before any run is read
    check_writable(out, keep=[f for r in runs for f in run_files(r)], png=True)
    rows_by_run = [_metrics_rows(r) for r in runs]
    names = list(metrics) if metrics else default_curve_metrics(rows_by_run)
    logged = sorted({r["metric"] for rows in rows_by_run for r in rows})
    unknown = [n for n in names if n not in logged]
    if unknown:  # an empty panel for a misspelt name would look like a run that logged nothing
        raise DataError(f"--metric {unknown[0]}: no run logged it; logged: {', '.join(logged) or 'nothing'}")
    plt = _pyplot()
    cols = min(len(names), 3)
    nrows = math.ceil(len(names) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(FIGURE_WIDTH, 3.6 * nrows), squeeze=False)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for k, name in enumerate(names):
        ax = axes[k // cols][k % cols]
        drawn = False
        for i, (run, rows) in enumerate(zip(runs, rows_by_run)):
            colour, label = colours[i % len(colours)], run_label(run)
            for split, style in (("train", dict(lw=1.0, alpha=0.6)), ("val", dict(lw=2.0, marker="o", ms=3))):
                if split == "train" and name != "loss":
                    continue
                pts = sorted((r["step"], r["value"]) for r in rows if r["split"] == split and r["metric"] == name)
                if pts:
                    xs, ys = zip(*pts)
                    ax.plot(xs, ys, color=colour, label=f"{label} {split}", **style)
                    drawn = True
        ax.set_title(name)
        ax.set_xlabel("step")
        ax.grid(True, alpha=0.3)
        values = [v for rows in rows_by_run for r in rows if r["metric"] == name and (v := r["value"]) > 0
                  and math.isfinite(v)]
        if name in ("loss", "mse", "mae") and drawn and values and max(values) / min(values) > LOG_SPAN:
            ax.set_yscale("log")  # as the report: a log axis only where the values span more than LOG_SPAN
        else:
            ax.ticklabel_format(axis="y", useOffset=False)
        if drawn:
            ax.legend(fontsize=8)
        else:
            log.warning("no run logged %s", name)
    for k in range(len(names), nrows * cols):
        axes[k // cols][k % cols].axis("off")
    fig.canvas.draw()  # tick labels settle before the layout measures them
    fig.tight_layout()
    return save_figure(fig, out)


# ---------------------------------------------------------------------------------- filters

def first_conv_weights(run: str | os.PathLike) -> np.ndarray:
    """The first convolution layer's weights ``(F, C, KH, KW)`` of a run's best (else last) checkpoint."""
    import torch
    from convrnn.infer.run import load_model

    try:
        model, _ = load_model(run)
    except FileNotFoundError:
        raise CheckpointError(f"{run}: expected a run directory or checkpoint file, found nothing") from None
    for module in model.modules():
        if isinstance(module, torch.nn.Conv2d):
            return module.weight.detach().cpu().numpy()
    raise DataError(f"{run}: expected a model with a convolution layer, found none in {model.spec!r}")


@dataclass(frozen=True)
class FilterPlot:
    """What ``plot_filters`` wrote: the PNG and how many kernel panels each run got."""

    path: Path
    panels: list[int]


def filters_figure(weights: Sequence[np.ndarray], labels: Sequence[str], *, per_kernel_scale: bool = True):
    """The figure of ``plot_filters``: a row per ``(F, C, KH, KW)`` array, a panel per (kernel, channel)."""
    kernels = [np.asarray(w).reshape(-1, *np.shape(w)[2:]) for w in weights]  # (F, C, KH, KW) -> (F*C, KH, KW)
    width = max(len(k) for k in kernels)
    plt = _pyplot()
    panel = min(1.1, FIGURE_WIDTH / (width + 1.5))
    fig, axes = plt.subplots(len(kernels), width, figsize=(panel * width + 1.5, panel * len(kernels) * 1.25 + 0.3),
                             squeeze=False)
    for i, (label, ks, w) in enumerate(zip(labels, kernels, weights)):
        bound = float(np.abs(ks).max()) or 1.0
        for j in range(width):
            ax = axes[i][j]
            ax.set_xticks([])
            ax.set_yticks([])
            if j >= len(ks):
                ax.axis("off")
                continue
            k = ks[j]
            lo, hi = (float(k.min()), float(k.max())) if per_kernel_scale else (-bound, bound)
            ax.imshow(k, cmap="gray", vmin=lo, vmax=hi if hi > lo else lo + 1e-6, interpolation="nearest")
            if j == 0:
                ax.set_ylabel(f"{label}\n{w.shape[0]}@{w.shape[2]}x{w.shape[3]}", fontsize=8,
                              rotation=0, ha="right", va="center")
    fig.suptitle("first convolution layer: one panel per kernel", fontsize=10)
    fig.tight_layout()
    return fig


def plot_filters(runs: Sequence[str | os.PathLike], out: str | os.PathLike, *, per_kernel_scale: bool = True) -> FilterPlot:
    """First-layer kernels of ``runs`` on one PNG: a row of panels per run, one panel per kernel.

    Each panel is drawn in grayscale (``per_kernel_scale``: scaled to its own min..max, so the
    pattern shows whatever the magnitude; otherwise one symmetric scale per run, dark negative,
    light positive). Kernels with several input channels get one panel per channel.
    """
    if not runs:
        raise DataError("expected at least one run to plot, got none")
    check_writable(out, keep=[f for r in runs for f in run_files(r)], png=True)  # fails before any checkpoint is loaded
    weights = [first_conv_weights(r) for r in runs]
    fig = filters_figure(weights, [run_label(r) for r in runs], per_kernel_scale=per_kernel_scale)
    return FilterPlot(save_figure(fig, out), [w.shape[0] * w.shape[1] for w in weights])
