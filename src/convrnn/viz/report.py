"""``convrnn report RUN``: one self-contained HTML page about a run.

The page opens with the results: the final and the best checkpoint's validation metrics and the
run's own totals (steps, epochs, training time). Then the run's config as one table, environment,
model summary, throughput, a small learning curve per metric that changed (training and validation
together), the first convolution layer's kernels, and the recipe's own sections (confusion matrix
and misclassified examples, per-length error and worst sequences, worst-read lines and CTC
alignments, generated samples; see :mod:`convrnn.viz.html`). Images are base64 PNG
``data:`` URIs and the CSS is inline: the file opens offline, by itself, anywhere. The page is laid
out for a laptop's width (a centred column of at most 1200 px, images scaled down, wide tables scroll).

Shape:
    first convolution weights ``(F, C, KH, KW)``: F filters, C input channels, KH x KW kernel.
"""
# F filters, C input channels, KH kernel height, KW kernel width
from __future__ import annotations

import json
import logging
import math
import os
import platform
import statistics
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

from convrnn.errors import CheckpointError, ConfigError, ConvrnnError
from convrnn.train.cpu import cpu_model
from convrnn.viz.plots import LOG_SPAN  # the one rule of both pictures of curves
from convrnn.viz.html import (DENSITY, EVAL_BATCHES, EvalContext, Section, esc, figure_img, gray_png, img,
                              missing, note, split_samples, table)

log = logging.getLogger(__name__)

CSS = """
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif;
       margin: 0; color: #1d2329; background: #f6f7f9; }
main { max-width: 1200px; margin: 0 auto; padding: 16px 24px 48px; }
header h1 { margin: 8px 0 2px; font-size: 26px; }
header p { margin: 0 0 10px; color: #56606b; }
nav { display: flex; flex-wrap: wrap; gap: 4px 14px; margin: 6px 0 14px; font-size: 14px; }
nav a { color: #2457a6; text-decoration: none; }
section { background: #fff; border: 1px solid #dde1e6; border-radius: 6px; padding: 12px 18px; margin: 14px 0; }
section h2 { margin: 2px 0 10px; font-size: 19px; }
h3 { font-size: 15px; margin: 12px 0 4px; }
img { max-width: 100%; height: auto; display: block; }
img.wide { margin: 6px 0; }
img.px { image-rendering: pixelated; }
.grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(350px, 1fr)); gap: 8px; }
.grid figure { margin: 0; border: 1px solid #eef0f3; border-radius: 4px; padding: 4px; }
.stats { display: flex; flex-wrap: wrap; gap: 10px; margin: 2px 0 10px; }
.stat { border: 1px solid #dde1e6; border-radius: 6px; padding: 6px 14px; min-width: 120px; }
.stat .v { display: block; font-size: 22px; font-weight: 600; font-variant-numeric: tabular-nums; }
.stat .k { display: block; font-size: 13px; color: #56606b; }
table.config { width: 100%; table-layout: fixed; }
table.config td { white-space: normal; overflow-wrap: anywhere; }
table.config td.key { color: #56606b; }
table.config td.set { font-weight: 600; }
table.config tr.group th { background: #e6ebf2; font-size: 14px; padding-top: 5px; }
.samples { display: grid; grid-template-columns: repeat(auto-fill, minmax(200px, 1fr)); gap: 8px; }
figure.sample, figure.sequence, figure.line { margin: 0 0 8px; border: 1px solid #eef0f3; border-radius: 4px; padding: 6px; }
figure.sample img, figure.sequence img, figure.line img { border: 1px solid #dde1e6; }
figcaption { font-size: 14px; margin-top: 4px; overflow-wrap: anywhere; }
figcaption .p { color: #56606b; white-space: nowrap; }
figcaption code { font-size: 14px; background: #f3f4f6; padding: 0 3px; white-space: pre-wrap; }
.scroll { overflow-x: auto; max-width: 100%; }
table { border-collapse: collapse; font-size: 13px; margin: 6px 0; }
th, td { border-bottom: 1px solid #e4e7eb; padding: 3px 10px; text-align: left; vertical-align: top; white-space: nowrap; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
th { background: #f0f2f5; }
pre { background: #f3f4f6; padding: 8px 10px; border-radius: 4px; overflow-x: auto; font-size: 13px; }
pre.sample { white-space: pre-wrap; word-break: break-word; }
.note { color: #56606b; font-size: 13px; margin: 4px 0; }
"""
COUNT_METRICS = ("errors", "skipped_too_long")  # validation metrics that count samples (shown as k/N)
LINEAR_ONLY = ("lr",)  # never on a log axis: a schedule's shape reads best on a linear one
LOG_CANDIDATES = ("loss", "mse", "mae")  # on a log axis when they span more than LOG_SPAN


# -------------------------------------------------------------------------------- run totals

@dataclass
class RunTotals:
    """How far the whole run went, from its last checkpoint (else metrics.csv)."""

    steps: int
    epochs: int                   # completed epochs
    batch_in_epoch: int           # batches into the next one
    train_time: Optional[float]   # seconds in training steps; None when only metrics.csv was readable
    source: str
    stale: int = 0                # validations since the best one


def run_totals(run_path: Path, rows: list[dict]) -> Optional[RunTotals]:
    """The run's own totals: its last checkpoint's position (``load_latest_checkpoint``), else the last
    row of metrics.csv; None when neither is there. Not the best checkpoint's: that one may be early."""
    from convrnn.train.checkpoint import load_latest_checkpoint
    try:
        last = load_latest_checkpoint(run_path)
    except CheckpointError:
        last = None
    if last is not None:
        return RunTotals(int(last.get("step", 0)), int(last.get("epoch", 0)), int(last.get("batch_in_epoch", 0)),
                         float(last.get("train_time", 0.0)), "the run's last checkpoint", int(last.get("stale") or 0))
    if rows:
        return RunTotals(max(r["step"] for r in rows), max(r["epoch"] for r in rows), 0, None, "metrics.csv")
    return None


def stop_reason(totals: RunTotals, train: dict, monitor: str) -> str:
    """How the run ended, as far as its last checkpoint and config tell: the limit it reached."""
    epochs, max_steps, max_time = train.get("epochs") or 0, train.get("max_steps") or 0, train.get("max_time") or 0
    patience = train.get("early_stopping") or 0
    if max_steps and totals.steps >= max_steps:
        return f"it stopped at max_steps ({max_steps:,})"
    if max_time and totals.train_time is not None and totals.train_time >= max_time:
        return f"it stopped at max_time ({max_time:g} s)"
    if epochs and totals.epochs >= epochs:
        return f"it ran all {epochs} epochs"
    if patience and totals.stale >= patience:
        return f"early stopping ended it (no better val {monitor} in {patience} validations)"
    return "it reached no limit (still training, or interrupted)"


def duration(seconds: float) -> str:
    if seconds < 100:
        return f"{seconds:.1f} s"
    minutes, sec = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {sec:02d} s"
    return f"{minutes // 60} h {minutes % 60:02d} min"


def epochs_text(t: RunTotals, short: bool = True) -> str:
    """Completed epochs and the batches into the next: ``3``, ``1 + 9 batches`` (short) or ``1 epoch and 9 batches``."""
    if short:
        return f"{t.epochs} + {t.batch_in_epoch} batches" if t.batch_in_epoch else str(t.epochs)
    text = f"{t.epochs} epoch{'' if t.epochs == 1 else 's'}"
    return text + (f" and {t.batch_in_epoch} batch{'' if t.batch_in_epoch == 1 else 'es'}" if t.batch_in_epoch else "")


def metric_text(name: str, value: Optional[float], samples: Optional[int]) -> str:
    """A metric for the page: counts as whole numbers out of ``samples`` when known, others to 4 digits."""
    if value is None:
        return "–"
    if name in COUNT_METRICS and math.isfinite(value):
        return f"{round(value):,}" + (f"/{samples:,}" if samples else "")
    if math.isfinite(value) and value == round(value) and abs(value) >= 1e4:  # a total (characters): 28,591
        return f"{round(value):,}"
    return f"{value:.4g}"


def final_validation(rows: list[dict]) -> tuple[Optional[int], dict[str, float]]:
    """The step and metrics of the last validation row(s) of metrics.csv (None, {} without validation)."""
    val = [r for r in rows if r["split"] == "val"]
    if not val:
        return None, {}
    step = max(r["step"] for r in val)
    return step, {r["metric"]: r["value"] for r in val if r["step"] == step}


def results_section(ckpt: dict, has_best: bool, totals: Optional[RunTotals], rows: list[dict], task,
                    samples: Optional[int]) -> Section:
    """The summary at the top: final and best validation metrics, the run's totals, and which
    checkpoint the sections below evaluate."""
    train = (ckpt.get("config") or {}).get("train", {})
    monitor, mode = getattr(task, "monitor", "loss"), getattr(task, "monitor_mode", "min")
    final_step, final = final_validation(rows)
    best = dict(ckpt.get("metrics") or {}) if has_best else {}
    best_step = int(ckpt.get("step", 0))
    at_best = RunTotals(best_step, int(ckpt.get("epoch", 0)), int(ckpt.get("batch_in_epoch", 0)), None, "best.pt")
    stats = []
    if monitor in final:
        stats.append((metric_text(monitor, final[monitor], samples), f"final val {monitor}"))
    if monitor in best:
        stats.append((metric_text(monitor, best[monitor], samples), f"best.pt val {monitor} (step {best_step:,})"))
    if "errors" in final and "errors" != monitor:
        stats.append((metric_text("errors", final["errors"], samples), "final val errors"))
    if totals is not None:
        stats.append((f"{totals.steps:,}", "steps trained"))
        stats.append((epochs_text(totals), "epochs completed"))
        if totals.train_time is not None:
            stats.append((duration(totals.train_time), "training time"))
    body = '<div class="stats">' + "".join(
        f'<div class="stat"><span class="v">{esc(v)}</span><span class="k">{esc(k)}</span></div>'
        for v, k in stats) + "</div>"

    names = [m for m in dict.fromkeys([monitor, *final, *best]) if (m in final or m in best) and "_len" not in m]
    if names:
        header = ["val metric", f"final (step {final_step:,})" if final_step is not None else "final",
                  f"best checkpoint (step {best_step:,})" if has_best else "best checkpoint"]
        body += table(header, [(m + (" *" if m == monitor else ""), metric_text(m, final.get(m), samples),
                                metric_text(m, best.get(m), samples)) for m in names], numeric=(1, 2))
    else:
        body += note("No validation metrics were logged (metrics.csv holds no val rows).")
    facts = []
    if has_best:
        facts.append(f"* selects the best checkpoint: the {'highest' if mode == 'max' else 'lowest'} val {monitor}; "
                     f"checkpoints/best.pt is from step {best_step:,} (after {epochs_text(at_best, short=False)}), "
                     "and the sections below evaluate it.")
    else:
        facts.append(f"The run has no checkpoints/best.pt (it never validated); the sections below evaluate "
                     f"checkpoints/last.pt (step {best_step:,}).")
    if totals is not None:
        facts.append(f"The run trained {totals.steps:,} steps ({epochs_text(totals, short=False)})"
                     + (f", {duration(totals.train_time)} in training steps" if totals.train_time is not None else "")
                     + f" (from {totals.source}); {stop_reason(totals, train, monitor)}.")
    if any(m in COUNT_METRICS for m in names):
        facts.append(f"Counts are out of the {samples:,} validation samples training evaluated." if samples else
                     "Counts are of the validation samples training evaluated (their number is not known here).")
    per_length = [m for m in dict.fromkeys([*final, *best]) if "_len" in m]
    if per_length:
        facts.append(f"{len(per_length)} per-length metrics ({per_length[0]}, ...) are in metrics.csv and the "
                     "learning curves.")
    return Section("Results", body + "".join(note(f) for f in facts), "results")


# ------------------------------------------------------------------------------------- sections

def environment_section(run_path: Path, ckpt: dict, rows: list[dict]) -> Section:
    """Where the run ran as recorded (device setting, run start) and where this report was made."""
    import convrnn
    cfg = ckpt.get("config", {})
    started = min((r["time"] for r in rows), default=None)
    cpu = cpu_model()
    cuda = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    items = [
        ("run directory", str(run_path)),
        ("recipe", ckpt.get("recipe", "?")),
        ("first metrics logged", _when(started) if started else "no metrics"),
        ("device (config)", cfg.get("train", {}).get("device", "?")),
        ("report made", _when(datetime.now(timezone.utc).timestamp())),
        ("convrnn", getattr(convrnn, "__version__", "?")),
        ("torch", torch.__version__),
        ("python", platform.python_version()),
        ("platform", platform.platform()),
        ("CPU", f"{cpu} ({os.cpu_count()} logical cores)"),
        ("CUDA device", cuda),
    ]
    return Section("Environment", table(None, items), "environment")


def _when(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def read_config(run_path: Path, ckpt: dict) -> tuple[dict, str]:
    """The run's config.json (else the checkpoint's copy) and where it came from."""
    cfg_file = run_path / "config.json"
    if not cfg_file.is_file():
        return ckpt.get("config", {}), "the checkpoint (no config.json)"
    from convrnn.train.config import read_run_config
    return read_run_config(cfg_file), str(cfg_file)


def recipe_defaults(recipe_name: str) -> dict[str, str]:
    """``section.key`` -> the recipe's default value as config.json writes it ({} when unknown)."""
    from convrnn.recipes import get_recipe
    try:
        cfg = get_recipe(recipe_name).default_config().to_dict()
    except ConvrnnError as e:  # an unknown recipe: mark nothing
        log.debug("no defaults for recipe %s: %s", recipe_name, e)
        return {}
    return {f"{section}.{k}": _value(json.loads(json.dumps(v))) for section, values in cfg.items()
            if isinstance(values, dict) for k, v in values.items()}


def config_section(run_path: Path, ckpt: dict, cfg: dict, source: str, columns: int = 3) -> Section:
    """The config as one table: a heading row per section (run, model, data, train), then its keys in
    alphabetical order down ``columns`` key/value column pairs. Values that differ from the recipe's
    defaults are bold."""
    order = {"run": 0, "model": 1, "data": 2, "train": 3}
    groups = [(k, v) for k, v in cfg.items() if isinstance(v, dict)]
    plain = {k: v for k, v in cfg.items() if not isinstance(v, dict)}
    if plain:
        groups.append(("run", plain))
    groups.sort(key=lambda g: (order.get(g[0], len(order)), g[0]))
    defaults = recipe_defaults(str(cfg.get("recipe") or ckpt.get("recipe", "")))
    rows = []
    for name, values in groups:
        rows.append(f'<tr class="group"><th colspan="{2 * columns}">{esc(name)}</th></tr>')
        items = sorted(values.items())
        height = -(-len(items) // columns)
        for r in range(height):
            cells = []
            for c in range(columns):
                k = r + c * height  # down the first column pair, then the next
                if k >= len(items):
                    cells.append("<td></td><td></td>")
                    continue
                key, value = items[k]
                text = _value(value)
                changed = f"{name}.{key}" in defaults and defaults[f"{name}.{key}"] != text
                mark = ' class="set"' if changed else ""
                cells.append(f'<td class="key">{esc(key)}</td><td{mark}>{esc(text)}</td>')
            rows.append(f"<tr>{''.join(cells)}</tr>")
    width = 100 / columns
    cols = f'<col style="width:{0.4 * width:.1f}%"><col style="width:{0.6 * width:.1f}%">'  # key, value
    body = (f'<div class="scroll"><table class="config"><colgroup>{cols * columns}</colgroup>'
            f'<tbody>{"".join(rows)}</tbody></table></div>')
    command = f"convrnn train {ckpt.get('recipe', 'RECIPE')} --config {run_path / 'config.json'}"
    said = esc(f"From {source}; bold values differ from the {ckpt.get('recipe', 'recipe')} recipe's defaults.")
    return Section("Config", body + f'<p class="note">{said} <code>{esc(command)}</code> re-runs it.</p>', "config")


def _value(v) -> str:
    return v if isinstance(v, str) else json.dumps(v)  # null, true, [..] as in config.json


def summary_section(model, ckpt: dict) -> Section:
    """The spec, per-layer table and memory estimate of ``SpecModel.summary`` (batch size of the run)."""
    batch_size = int(ckpt.get("config", {}).get("train", {}).get("batch_size", 32))
    spec = getattr(model, "spec", "?")
    body = f"<pre>{esc(spec)}</pre>"
    summary = model.summary(batch_size=batch_size) if hasattr(model, "summary") else None
    rows = getattr(summary, "rows", None)
    if rows and hasattr(rows[0], "token"):
        body += table(["#", "op", "layer", "output shape", "params"],
                      [(r.index, r.token, r.layer, _shape(r.shape), f"{r.params:,}") for r in rows], numeric=(0, 4))
        mem = getattr(summary, "memory", {}) or {}
        body += note(f"{summary.params:,} parameters ({summary.trainable_params:,} trainable); estimated "
                     f"training memory at batch size {batch_size}: "
                     + ", ".join(f"{k} {v / 2**20:.1f} MiB" for k, v in mem.items())
                     + f" (total {sum(mem.values()) / 2**20:.1f} MiB).")
    elif summary is not None:
        body += f"<pre>{esc(summary)}</pre>"
    else:
        body += note(f"{sum(p.numel() for p in model.parameters()):,} parameters (no per-layer summary).")
    return Section("Model", body, "model")


def _shape(shape) -> str:
    return "(" + ", ".join("?" if s is None else str(s) for s in shape) + ")" if isinstance(shape, (tuple, list)) else str(shape)


def throughput_section(rows: list[dict]) -> Section:
    """Training throughput from the ``*_per_s`` metrics logged every ``log_every`` steps."""
    rates = defaultdict(list)
    for r in rows:
        if r["split"] == "train" and r["metric"].endswith("_per_s"):
            rates[r["metric"]].append(r["value"])
    if not rates:
        return Section("Throughput", note("No throughput was logged (no train *_per_s metrics)."), "throughput")
    out = []
    for name, values in sorted(rates.items()):
        unit = name[: -len("_per_s")]
        late = values[len(values) // 2:]  # the second half: past start-up and kernel selection
        out.append((f"{unit}/s", f"{statistics.median(late):,.1f}", f"{values[-1]:,.1f}", f"{max(values):,.1f}",
                    len(values)))
    return Section("Throughput", table(["rate", "median (2nd half)", "last", "best", "logged"], out,
                                       numeric=(1, 2, 3, 4))
                   + note("Training speed per logging window (forward, backward and update; no validation)."),
                   "throughput")


def curve_series(rows: list[dict]) -> dict[str, dict[str, list[tuple[int, float]]]]:
    """metric -> split -> [(step, value)] in step order."""
    series = defaultdict(lambda: defaultdict(list))
    for r in rows:
        series[r["metric"]][r["split"]].append((r["step"], r["value"]))
    return {m: {split: sorted(pts) for split, pts in by_split.items()} for m, by_split in series.items()}


def unchanging(by_split: dict[str, list[tuple[int, float]]]) -> Optional[str]:
    """Why a metric's curve would show nothing (no split with two points, or one value throughout), else None."""
    values = [v for pts in by_split.values() for _, v in pts]
    if max(len(pts) for pts in by_split.values()) < 2:
        points = ", ".join(f"{split} {v:.4g} at step {s:,}" for split, pts in by_split.items() for s, v in pts)
        return f"a single point: {points}"
    finite = [v for v in values if math.isfinite(v)]
    if finite and len(finite) == len(values) and max(finite) - min(finite) <= 1e-12 * max(1.0, abs(max(finite))):
        return f"constant {finite[0]:.4g}"
    return None


def curve_figure(name: str, by_split: dict[str, list[tuple[int, float]]], best_step: Optional[int] = None):
    """One small multiple: the metric's splits on shared axes (training thin, validation with dots), the
    best checkpoint's step as a dotted line. Fonts are 9-11 pt at the figure's size (3.7 x 2.4 in),
    which is the size it is shown at."""
    import matplotlib
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(3.7, 2.4))
    # one colour per split in every panel: a validation-only panel's line is not read as training's
    styles = {"train": dict(lw=1.2, alpha=0.8, color="tab:blue"),
              "val": dict(lw=1.8, marker="o", ms=3.5, color="tab:orange")}
    for split in sorted(by_split, key=lambda s: (s != "train", s != "val", s)):
        pts = by_split[split]
        style = styles.get(split, dict(lw=1.2))
        if len(pts) < 10:
            style = dict(style, marker="o", ms=3.5)  # a line of a few points needs its points shown
        xs, ys = zip(*pts)
        ax.plot(xs, ys, label=split, **style)
    values = [v for pts in by_split.values() for _, v in pts if math.isfinite(v)]
    if (name in LOG_CANDIDATES and name not in LINEAR_ONLY and values and min(values) > 0
            and max(values) / min(values) > LOG_SPAN):
        ax.set_yscale("log")
    if name in LINEAR_ONLY:
        ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 4))  # 3e-3 as 3 x 1e-3, on a linear axis
    elif ax.get_yscale() == "linear":
        ax.ticklabel_format(axis="y", useOffset=False)  # a WER of 1.0002 reads 1.0002, not "+1" and 0.0002
    if best_step is not None and "val" in by_split:
        ax.axvline(best_step, color="0.45", linestyle=":", linewidth=1.2)
    ax.set_title(name, fontsize=11)
    ax.set_xlabel("step", fontsize=9)
    ax.tick_params(labelsize=9)
    ax.yaxis.get_offset_text().set_fontsize(9)
    ax.grid(True, alpha=0.3)
    if len(ax.get_legend_handles_labels()[0]) > 1 or "train" not in by_split:
        ax.legend(fontsize=9, framealpha=0.8)  # a validation-only panel says so
    fig.canvas.draw()  # autoscaling settles the tick labels first, or the layout cuts "0.950" to ".950"
    fig.tight_layout(pad=0.4)
    return fig


def curves_section(rows: list[dict], best_step: Optional[int] = None) -> Section:
    """A small plot per metric that changed; training and validation on the same axes when both exist.
    Metrics with a single point or one constant value are listed in a note instead."""
    series = curve_series(rows)
    if not series:
        return Section("Learning curves", note("metrics.csv holds no rows yet."), "curves")
    order = sorted(series, key=lambda m: (m != "loss", "val" not in series[m], m))
    skipped = {m: why for m in order if (why := unchanging(series[m])) is not None}
    figures = [f"<figure>{figure_img(curve_figure(m, series[m], best_step), f'learning curve: {m}')}</figure>"
               for m in order if m not in skipped]
    body = f'<div class="grid">{"".join(figures)}</div>' if figures else ""
    body += note(f"{len(figures)} of the {len(order)} metrics in metrics.csv: thin line training, dots "
                 "validation, dotted line the best checkpoint's step; lr on a linear axis, loss on a log axis "
                 f"when it spans more than {LOG_SPAN:g}x.")
    if skipped:
        body += note("Not plotted: " + "; ".join(f"{m} ({why})" for m, why in skipped.items()) + ".")
    return Section("Learning curves", body, "curves")


FILTER_TILE = 48  # CSS pixels a kernel is enlarged to (nearest neighbour), about
FILTER_COLUMNS = 16


def filter_tiles(weights: np.ndarray, *, tile: int = FILTER_TILE, columns: int = FILTER_COLUMNS,
                 gap: int = 6) -> tuple[np.ndarray, int]:
    """``(F, C, KH, KW)`` kernels -> a uint8 ``(H, W)`` picture: one tile per (kernel, channel), each on its
    own gray scale (black its minimum, white its maximum), enlarged by a whole factor to about ``tile``
    pixels, framed in mid gray on white, ``columns`` tiles a row. Returns the picture and the factor."""
    f, c, kh, kw = weights.shape
    kernels = weights.reshape(f * c, kh, kw).astype(np.float64)  # (F, C, KH, KW) -> (F*C, KH, KW)
    scale = max(1, round(tile / max(kh, kw)))
    th, tw = kh * scale + 2, kw * scale + 2  # with a one-pixel frame
    cols = min(columns, len(kernels))
    rows = -(-len(kernels) // cols)
    picture = np.full((rows * (th + gap) - gap, cols * (tw + gap) - gap), 255, dtype=np.uint8)
    for i, k in enumerate(kernels):
        lo, hi = k.min(), k.max()
        gray = (k - lo) / (hi - lo) * 255.0 if hi > lo else np.full_like(k, 128.0)
        big = np.repeat(np.repeat(np.round(gray).astype(np.uint8), scale, axis=0), scale, axis=1)
        r, q = divmod(i, cols)
        top, left = r * (th + gap), q * (tw + gap)
        picture[top:top + th, left:left + tw] = 128  # the frame
        picture[top + 1:top + th - 1, left + 1:left + tw - 1] = big
    return picture, scale


def filters_section(model, run_path: Path) -> Section:
    """The first convolution layer's kernels, enlarged (nearest neighbour) to be seen."""
    weights = next((m.weight.detach().cpu().numpy() for m in model.modules() if isinstance(m, torch.nn.Conv2d)), None)
    if weights is None:
        return Section("First-layer filters", note(f"The model has no convolution layer ({getattr(model, 'spec', '')})."),
                       "filters")
    f, c, kh, kw = weights.shape
    picture, scale = filter_tiles(weights)
    shown = img(gray_png(picture, DENSITY), "first-layer filters", css_class="px wide", width=picture.shape[1])
    per = f"{c} channels each, one tile per channel" if c > 1 else "1 channel"
    return Section("First-layer filters", shown + note(
        f"{f} kernels of {kh}x{kw} ({per}), enlarged {scale}x; each tile on its own gray scale from its "
        "minimum (black) to its maximum (white)."), "filters")


# --------------------------------------------------------------------------------------- page

def render(title: str, subtitle: str, sections: list[Section]) -> str:
    nav = "".join(f'<a href="#{esc(s.anchor or i)}">{esc(s.title)}</a>' for i, s in enumerate(sections))
    body = "".join(f'<section id="{esc(s.anchor or i)}"><h2>{esc(s.title)}</h2>{s.body}</section>'
                   for i, s in enumerate(sections))
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{esc(title)}</title><style>{CSS}</style></head>"
            f"<body><main><header><h1>{esc(title)}</h1><p>{esc(subtitle)}</p></header>"
            f"<nav>{nav}</nav>{body}</main></body></html>\n")


def load_metrics(run_path: Path) -> list[dict]:
    """Rows of the run's metrics.csv ([] when there is none); a file that does not parse is a one-line error."""
    from convrnn.train.rundir import read_metrics
    path = run_path / "metrics.csv"
    if not path.is_file():
        return []
    return read_metrics(path)  # the reader plot curves uses: skips a cut-short last line, names a bad one


def build_report(run: str | os.PathLike, out: str | os.PathLike | None = None, *, split: Optional[str] = None,
                 max_batches: int = EVAL_BATCHES, progress: Optional[Callable] = None,
                 data_progress: Optional[Callable] = None) -> Path:
    """Write the report of the run directory ``run`` to ``out`` (default ``RUN/report.html``).

    ``split``: the data the recipe sections evaluate on (default: the recipe's ``report_split`` when
    the run has it, else val; see :func:`recipe_report`); at most ``max_batches`` batches.
    ``progress(done, total)`` reports evaluation batches, ``data_progress`` the data preparation.
    The file is written atomically: a failed report leaves nothing behind.
    """
    from convrnn.infer.run import load_run
    from convrnn.files import atomic_write_text, check_writable

    run_path = Path(run)
    if not run_path.is_dir():
        if run_path.is_file():
            # a checkpoint alone has no curves, totals or config file: name the run it came from, if any
            owner = run_path.parent.parent if run_path.parent.name == "checkpoints" else None
            hint = (f"; give its run directory {owner}" if owner is not None and (owner / "config.json").is_file()
                    else "; a checkpoint alone is read by eval, predict and export")
            raise CheckpointError(f"{run}: is a file; a report reads a run directory (config.json, metrics.csv, "
                                  f"checkpoints/){hint}")
        raise CheckpointError(f"{run}: expected a run directory (with config.json, metrics.csv, checkpoints/), "
                              "found no such directory")
    from convrnn.train.rundir import run_files
    # an unwritable --out, or one of the run's own files, fails before evaluating
    check_writable(Path(out) if out else run_path / "report.html", keep=run_files(run_path))
    loaded = load_run(run_path)  # best.pt, else last.pt; one-line CheckpointError without either
    model, ckpt, recipe, task = loaded.model, loaded.ckpt, loaded.recipe, loaded.task
    has_best = (run_path / "checkpoints" / "best.pt").is_file()
    rows = load_metrics(run_path)
    cfg, cfg_source = read_config(run_path, ckpt)
    totals = run_totals(run_path, rows)
    own, ctx = recipe_report(loaded, split=split, max_batches=max_batches, progress=progress,
                             data_progress=data_progress)
    val_batches = int(((ckpt.get("config") or {}).get("train") or {}).get("val_batches") or 0)
    samples = split_samples(ctx, val_batches) if ctx is not None and ctx.split == "val" else None
    sections = [results_section(ckpt, has_best, totals, rows, task, samples),
                config_section(run_path, ckpt, cfg, cfg_source), environment_section(run_path, ckpt, rows),
                summary_section(model, ckpt), throughput_section(rows),
                curves_section(rows, int(ckpt.get("step", 0)) if has_best else None),
                filters_section(model, run_path), *own]
    page = render(f"convrnn run {run_path.name}", f"{recipe.name}: {recipe.description}", sections)
    path = Path(out) if out else run_path / "report.html"
    atomic_write_text(path, page)  # makes the folder; writes a symlink's target, refuses a folder or FIFO
    log.info("report: %d sections, %.0f KiB", len(sections), len(page) / 1024)
    return path


def recipe_report(loaded, *, split: Optional[str] = None, max_batches: int = EVAL_BATCHES,
                  progress: Optional[Callable] = None,
                  data_progress: Optional[Callable] = None) -> tuple[list[Section], Optional[EvalContext]]:
    """The recipe's own sections (``Recipe.report_sections``) and the evaluation context they used,
    whose data the results summary reuses to count the validation samples; one section saying why
    when they cannot be made (data that cannot be rebuilt here...).

    ``split`` None: the recipe's ``report_split`` (the digits' test split holds longer sequences than
    training's), falling back to val when the run has no such split.
    """
    recipe = loaded.recipe
    chosen = split or recipe.report_split
    ctx = EvalContext(loaded, chosen, max_batches, progress, data_progress)
    try:
        if split is None and chosen != "val":
            try:
                ctx.data  # noqa: B018  (builds the data: does the run have this split?)
            except ConfigError:
                ctx = EvalContext(loaded, "val", max_batches, progress, data_progress)
        return recipe.report_sections(ctx), ctx
    except ConvrnnError as e:  # data that cannot be rebuilt here, a split the run lacks...
        return [missing(f"{recipe.name} sections", str(e))], ctx
