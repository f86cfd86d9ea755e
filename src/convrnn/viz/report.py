"""``convrnn report RUN``: one self-contained HTML page about a run.

The page holds the run's config and environment, the model summary, throughput, a small learning
curve per logged metric (training and validation together), the first convolution layer's kernels,
and the recipe's own sections (confusion matrix, per-length error, CTC alignments and worst-read
lines, generated samples; see :mod:`convrnn.viz.report_sections`). Images are base64 PNG ``data:``
URIs and the CSS is inline: the file opens offline, by itself, anywhere. The page is laid out for a
laptop's width (a centred column of at most 1200 px, images scaled down, wide tables scroll).

Shape:
    first convolution weights ``(F, C, KH, KW)``: F filters, C input channels, KH x KW kernel.
"""
# F filters, C input channels, KH kernel height, KW kernel width
from __future__ import annotations

import json
import logging
import os
import platform
import statistics
from collections import defaultdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Optional

import torch

from convrnn.errors import CheckpointError
from convrnn.viz.report_sections import (EVAL_BATCHES, Section, esc, figure_img, missing, note, recipe_sections,
                                         table)

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
.grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(340px, 1fr)); gap: 8px; }
.cols { columns: 3 300px; column-gap: 28px; font-size: 13px; }
.cols h3 { break-after: avoid; margin: 8px 0 2px; }
.kv { display: flex; gap: 12px; border-bottom: 1px solid #e4e7eb; padding: 2px 4px; break-inside: avoid; }
.kv span:first-child { color: #56606b; flex: 0 0 42%; }
.kv span:last-child { overflow-wrap: anywhere; }
.grid figure { margin: 0; border: 1px solid #eef0f3; border-radius: 4px; padding: 4px; }
.scroll { overflow-x: auto; max-width: 100%; }
table { border-collapse: collapse; font-size: 13px; margin: 6px 0; }
th, td { border-bottom: 1px solid #e4e7eb; padding: 3px 10px; text-align: left; vertical-align: top; white-space: nowrap; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
th { background: #f0f2f5; }
pre { background: #f3f4f6; padding: 8px 10px; border-radius: 4px; overflow-x: auto; font-size: 13px; }
pre.sample { white-space: pre-wrap; word-break: break-word; }
.note { color: #56606b; font-size: 13px; margin: 4px 0; }
"""


# ------------------------------------------------------------------------------------- sections

def environment_section(run_path: Path, ckpt: dict, rows: list[dict]) -> Section:
    """Where the run ran as recorded (device setting, run start) and where this report was made."""
    import convrnn
    cfg = ckpt.get("config", {})
    started = min((r["time"] for r in rows), default=None)
    cpu = _cpu_name()
    cuda = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    items = [
        ("run directory", str(run_path)),
        ("recipe", ckpt.get("recipe", "?")),
        ("first metrics logged", _when(started) if started else "no metrics"),
        ("device (config)", cfg.get("train", {}).get("device", "?")),
        ("steps trained", ckpt.get("step", "?")),
        ("training seconds", f"{float(ckpt.get('train_time', 0.0)):.1f}"),
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


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def config_section(run_path: Path, ckpt: dict) -> Section:
    cfg_file = run_path / "config.json"
    cfg = json.loads(cfg_file.read_text(encoding="utf-8")) if cfg_file.is_file() else ckpt.get("config", {})
    source = str(cfg_file) if cfg_file.is_file() else "the checkpoint (no config.json)"
    groups = [(k, v) for k, v in sorted(cfg.items()) if isinstance(v, dict)]
    plain = {k: v for k, v in cfg.items() if not isinstance(v, dict)}
    if plain:
        groups.insert(0, ("run", plain))
    parts = []
    for name, values in groups:  # key/value rows flowing through newspaper columns
        parts.append(f"<h3>{esc(name)}</h3>")
        parts += [f'<div class="kv"><span>{esc(k)}</span><span>{esc(_value(v))}</span></div>'
                  for k, v in sorted(values.items())]
    return Section("Config", f'<div class="cols">{"".join(parts)}</div>'
                   + note(f"From {source}; `convrnn train {ckpt.get('recipe', 'RECIPE')} --config "
                          f"{cfg_file}` re-runs it."), "config")


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


def curves_section(rows: list[dict]) -> Section:
    """A small plot per logged metric; training and validation on the same axes when both exist."""
    import matplotlib
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    series = defaultdict(lambda: defaultdict(list))  # metric -> split -> [(step, value)]
    for r in rows:
        series[r["metric"]][r["split"]].append((r["step"], r["value"]))
    if not series:
        return Section("Learning curves", note("metrics.csv holds no rows yet."), "curves")
    order = sorted(series, key=lambda m: (m != "loss", "val" not in series[m], m))
    figures = []
    for name in order:
        fig, ax = plt.subplots(figsize=(4.2, 2.6))
        for split, style in (("train", dict(lw=1.2, alpha=0.75)), ("val", dict(lw=1.8, marker="o", ms=3))):
            pts = sorted(series[name].get(split, []))
            if split == "train" and len(pts) < 10:
                style = dict(style, marker="o", ms=3)  # a line of one or two points would not show
            if pts:
                xs, ys = zip(*pts)
                ax.plot(xs, ys, label=split, **style)
        for split in sorted(set(series[name]) - {"train", "val"}):
            xs, ys = zip(*sorted(series[name][split]))
            ax.plot(xs, ys, label=split, lw=1.2)
        values = [v for pts in series[name].values() for _, v in pts]
        if name in ("loss", "mse", "lr") and min(values) > 0 and max(values) / min(values) > 20:
            ax.set_yscale("log")
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=8)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
        fig.tight_layout()
        figures.append(f"<figure>{figure_img(fig, f'learning curve: {name}')}</figure>")
    return Section("Learning curves", f'<div class="grid">{"".join(figures)}</div>'
                   + note(f"Every metric in metrics.csv ({len(order)}): thin line training, dots validation."),
                   "curves")


def filters_section(model, run_path: Path) -> Section:
    """The first convolution layer's kernels, drawn by :func:`convrnn.viz.plots.filters_figure`."""
    weights = next((m.weight.detach().cpu().numpy() for m in model.modules() if isinstance(m, torch.nn.Conv2d)), None)
    if weights is None:
        return Section("First-layer filters", note(f"The model has no convolution layer ({getattr(model, 'spec', '')})."),
                       "filters")
    try:
        from convrnn.viz.plots import filters_figure
    except ImportError as e:
        return missing("First-layer filters", f"convrnn.viz.plots.filters_figure is not available ({e})")
    fig = filters_figure([weights], [run_path.name])
    f, c, kh, kw = weights.shape
    return Section("First-layer filters", figure_img(fig, "first-layer filters", css_class="wide")
                   + note(f"{f} kernels of {c} channel(s), {kh}x{kw}, each on its own gray scale."), "filters")


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


def build_report(run: str | os.PathLike, out: str | os.PathLike | None = None, *, split: Optional[str] = None,
                 max_batches: int = EVAL_BATCHES, progress: Optional[Callable] = None,
                 data_progress: Optional[Callable] = None) -> Path:
    """Write the report of the run directory ``run`` to ``out`` (default ``RUN/report.html``).

    ``split``: the data the recipe sections evaluate on (default: the recipe's choice, see
    :func:`~convrnn.viz.report_sections.recipe_sections`); at most ``max_batches`` batches.
    ``progress(done, total)`` reports evaluation batches, ``data_progress`` the data preparation.
    The file is written atomically: a failed report leaves nothing behind.
    """
    from convrnn.recipes.runner import load_run
    from convrnn.train.checkpoint import atomic_write_text
    from convrnn.train.rundir import read_metrics

    run_path = Path(run)
    if not run_path.is_dir():
        raise CheckpointError(f"{run}: expected a run directory (with config.json, metrics.csv, checkpoints/), "
                              "found no such directory")
    model, ckpt, recipe = load_run(str(run_path))  # one-line CheckpointError when there is no checkpoint
    rows = read_metrics(run_path / "metrics.csv") if (run_path / "metrics.csv").is_file() else []
    sections = [config_section(run_path, ckpt), environment_section(run_path, ckpt, rows),
                summary_section(model, ckpt), throughput_section(rows), curves_section(rows),
                filters_section(model, run_path)]
    sections += recipe_sections(str(run_path), recipe.name, split=split, max_batches=max_batches,
                                progress=progress, data_progress=data_progress)
    last = ", ".join(f"{k} {v:.4g}" for k, v in (ckpt.get("metrics") or {}).items() if "_len" not in k)
    subtitle = f"{recipe.name}: {recipe.description}. Best checkpoint at step {ckpt.get('step', '?')}" + (
        f" ({last})" if last else "")
    page = render(f"convrnn run {run_path.name}", subtitle, sections)
    path = Path(out) if out else run_path / "report.html"
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, page)
    log.info("report: %d sections, %.0f KiB", len(sections), len(page) / 1024)
    return path
