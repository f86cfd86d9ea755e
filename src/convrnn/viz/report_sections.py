"""Pieces of the HTML run report: HTML helpers, evaluation data, and one section builder per recipe.

A section is a title and an HTML fragment. Figures are embedded as base64 PNG ``data:`` URIs, so the
report is one file that needs no network. Each recipe's section builder (``RECIPE_SECTIONS[name]``)
calls that recipe's own library functions; when a piece it needs is not there (a module not yet
written, data that cannot be rebuilt) the section says what is missing instead of failing the report.

Shape:
    classification evaluation: logits ``(B, V)``, labels ``(B,)``; confusion ``(V, V)`` truth x prediction.
    CTC evaluation: logits ``(B, T, V)`` with valid frames ``(B,)``; a line image ``(H, W)`` uint8.
"""
# B batch, T frames, V classes or labels, H height, W width
from __future__ import annotations

import base64
import html
import io
import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence

import numpy as np
import torch

from convrnn.errors import ConfigError, ConvrnnError

log = logging.getLogger(__name__)

EVAL_BATCHES = 20  # validation batches the report evaluates at most: a report takes seconds, not minutes
SAMPLE_TEMPERATURES = (0.5, 0.8, 1.0)
SAMPLE_LENGTH = 300


# ------------------------------------------------------------------------------------------- HTML

@dataclass
class Section:
    """One ``<section>`` of the report: a heading and an HTML body (already escaped)."""

    title: str
    body: str
    anchor: str = ""


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def png_data_uri(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def figure_png(fig, *, dpi: int = 96) -> bytes:
    """PNG bytes of a matplotlib figure; the figure is closed."""
    import matplotlib.pyplot as plt
    buf = io.BytesIO()
    try:
        fig.savefig(buf, format="png", dpi=dpi)
    finally:
        plt.close(fig)
    return buf.getvalue()


def img(png: bytes, alt: str, *, css_class: str = "") -> str:
    cls = f' class="{esc(css_class)}"' if css_class else ""
    return f'<img{cls} alt="{esc(alt)}" src="{png_data_uri(png)}">'


def figure_img(fig, alt: str, *, css_class: str = "", dpi: int = 96) -> str:
    return img(figure_png(fig, dpi=dpi), alt, css_class=css_class)


def table(header: Optional[Sequence[str]], rows: Sequence[Sequence[Any]], *, numeric: Sequence[int] = ()) -> str:
    """A table in a horizontally scrolling wrapper; cells are escaped, ``numeric`` columns right-aligned.

    ``header`` None: no header row (key/value tables)."""
    head = f'<thead><tr>{"".join(f"<th>{esc(h)}</th>" for h in header)}</tr></thead>' if header else ""
    body = []
    for row in rows:
        cells = "".join(f'<td class="num">{esc(c)}</td>' if i in numeric else f"<td>{esc(c)}</td>"
                        for i, c in enumerate(row))
        body.append(f"<tr>{cells}</tr>")
    return f'<div class="scroll"><table>{head}<tbody>{"".join(body)}</tbody></table></div>'


def note(text: str) -> str:
    return f'<p class="note">{esc(text)}</p>'


def missing(what: str, why: str) -> Section:
    """The section shown when a piece of a recipe is not available."""
    log.warning("report: %s not shown: %s", what, why)
    return Section(what, note(f"Not available: {why}"))


# ------------------------------------------------------------------------------- evaluation data

@dataclass
class EvalContext:
    """What evaluating a run's best checkpoint needs: model, checkpoint, recipe, task, and the data of
    one split, rebuilt from the run's config the first time ``data`` is used (samples need none)."""

    model: torch.nn.Module
    ckpt: dict
    recipe: Any
    task: Any
    make_data: Callable[[], Any]   # -> BatchSource of the chosen split
    split: str
    max_batches: int = EVAL_BATCHES
    progress: Optional[Callable[[int, int], None]] = None
    _cache: dict = field(default_factory=dict)

    @property
    def data(self):
        if "data" not in self._cache:
            self._cache["data"] = self.make_data()
        return self._cache["data"]

    def batches(self) -> Iterator[dict]:
        """At most ``max_batches`` batches of the split, reporting ``progress(done, total)``."""
        total = self.data.num_batches(0)
        if self.max_batches:
            total = min(total, self.max_batches)
        for i, batch in enumerate(self.data.batches(0)):
            if i >= total:
                break
            yield batch
            if self.progress is not None:
                self.progress(i + 1, total)


def eval_context(run: str, *, split: str = "val", max_batches: int = EVAL_BATCHES,
                 progress: Optional[Callable] = None, data_progress: Optional[Callable] = None) -> EvalContext:
    """Load a run's best checkpoint; its data is rebuilt from its config on first use (as ``convrnn eval``)."""
    from convrnn.recipes.runner import load_run, resolve_config
    from convrnn.train.config import flatten_config_dict

    model, ckpt, recipe = load_run(run)

    def make_data():
        cfg = resolve_config(recipe.name)
        cfg.override(flatten_config_dict(ckpt["config"]))
        bundle = recipe.make_data(cfg.data, cfg.train, progress=data_progress)
        data = bundle.test if split == "test" else bundle.val
        if data is None:
            raise ConfigError(f"recipe {recipe.name} has no {split} split")
        return data

    model.eval()
    return EvalContext(model, ckpt, recipe, recipe.make_task(ckpt["meta"]), make_data, split, max_batches, progress)


def _run_batch(ctx: EvalContext, batch: dict):
    with torch.inference_mode():
        return ctx.model.run(batch["x"], batch.get("lengths"), need_state=False)


def evaluate_metrics(ctx: EvalContext):
    """The task's metric accumulator after the capped evaluation (cached per context)."""
    if "metrics" not in ctx._cache:
        acc = ctx.task.new_metrics()
        state = None
        for batch in ctx.batches():
            if getattr(ctx.task, "stateful", False) and batch.get("reset") is True:
                state = None
            with torch.inference_mode():
                out = ctx.model.run(batch["x"], batch.get("lengths"), state if ctx.task.stateful else None,
                                    need_state=ctx.task.stateful)
            state = out.state
            acc.update(out, batch)
        ctx._cache["metrics"] = acc
    return ctx._cache["metrics"]


# --------------------------------------------------------------------------------- recipe sections

def classify_sections(ctx: EvalContext) -> list[Section]:
    """fonts, mnist: the confusion matrix of the best checkpoint on the split."""
    from convrnn.viz.confusion import confusion_figure
    acc = evaluate_metrics(ctx)
    confusion = getattr(acc, "confusion", None)
    if confusion is None:
        return [missing("Confusion matrix", f"the {ctx.task.name} task's metrics keep no confusion matrix")]
    classes = list(ctx.ckpt["meta"].get("classes") or ctx.task.classes)
    counts = confusion.cpu().numpy()
    n = int(counts.sum())
    accuracy = float(np.trace(counts)) / max(n, 1)
    fig = confusion_figure(counts, classes, title=f"{ctx.split}: {n} samples, accuracy {accuracy:.3f}")
    body = (figure_img(fig, "confusion matrix", css_class="wide")
            + note(f"Best checkpoint on {n} {ctx.split} samples (at most {ctx.max_batches} batches). "
                   "Rows: true class, columns: predicted class; cells show counts, colour the row share."))
    per_class = [(c, int(counts[i].sum()), f"{counts[i, i] / max(counts[i].sum(), 1):.3f}")
                 for i, c in enumerate(classes)]
    body += table(["class", "samples", "recall"], per_class, numeric=(1, 2))
    return [Section("Confusion matrix", body, "confusion")]


def digits_sections(ctx: EvalContext) -> list[Section]:
    """digits: error per sequence length, on the test split when it exists (lengths up to 2N)."""
    import matplotlib.pyplot as plt
    metrics = evaluate_metrics(ctx).compute()
    lengths = sorted(int(k[len("mae_len"):]) for k in metrics if k.startswith("mae_len"))
    if not lengths:
        return [missing("Error per sequence length", "the digits evaluation reported no per-length metrics "
                        "(mae_lenL, exact_lenL)")]
    mae = [metrics[f"mae_len{n}"] for n in lengths]
    exact = [metrics.get(f"exact_len{n}", float("nan")) for n in lengths]
    train_max = int(ctx.ckpt["config"].get("data", {}).get("max_len", 0) or 0)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9.0, 3.0))
    ax1.plot(lengths, mae, marker="o")
    ax1.set_title("mean absolute error")
    ax2.plot(lengths, exact, marker="o", color="tab:green")
    ax2.set_title("exact after rounding")
    ax2.set_ylim(-0.02, 1.02)
    for ax in (ax1, ax2):
        ax.set_xlabel("sequence length")
        ax.grid(True, alpha=0.3)
        if train_max:
            ax.axvline(train_max + 0.5, color="0.5", linestyle="--", linewidth=1)
    fig.tight_layout()
    rows = [(n, f"{metrics.get(f'mse_len{n}', float('nan')):.4g}", f"{a:.4g}", f"{e:.3f}")
            for n, a, e in zip(lengths, mae, exact)]
    body = (figure_img(fig, "error per sequence length", css_class="wide")
            + note(f"Best checkpoint on the {ctx.split} split (at most {ctx.max_batches} batches); the dashed "
                   f"line marks the longest training length{f' ({train_max})' if train_max else ''}.")
            + table(["length", "mse", "mae", "exact"], rows, numeric=(0, 1, 2, 3)))
    return [Section("Error per sequence length", body, "per-length")]


def lines_sections(ctx: EvalContext, *, worst: int = 8, plots: int = 3) -> list[Section]:
    """lines: worst-read lines (reference vs greedy prediction) and CTC alignments of the worst few."""
    from convrnn.metrics_text import edit_distance
    from convrnn.tasks.base import ModelOutput
    from convrnn.viz.ctc_plot import plot_ctc

    alphabet = ctx.ckpt["meta"]["alphabet"]
    scored = []  # (cer, ref, hyp, name, image (H, W) uint8, probs (T, V))
    for batch in ctx.batches():
        out = _run_batch(ctx, batch)
        frames = out.lengths if out.lengths is not None else torch.full((out.y.shape[0],), out.y.shape[1])
        hyps = ctx.task.decode(ModelOutput(out.y, frames))
        for k, (ref, hyp) in enumerate(zip(batch["texts"], hyps)):
            cer = edit_distance(ref, hyp) / max(len(ref), 1)
            scored.append((cer, k, ref, hyp, batch, out.y, frames))
        scored.sort(key=lambda s: -s[0])
        scored = scored[:worst]  # keep only the worst lines (and their batches) while evaluating
    if not scored:
        return [missing("Worst-read lines", f"the {ctx.split} split has no lines")]
    rows = [(str(b["ids"][k]), f"{cer:.3f}", ref, hyp) for cer, k, ref, hyp, b, _, _ in scored]
    sections = [Section("Worst-read lines", table(["line", "CER", "reference", "prediction"], rows, numeric=(1,))
                        + note(f"Greedy decoding of the best checkpoint; the {len(rows)} lines with the highest "
                               f"character error rate among at most {ctx.max_batches} {ctx.split} batches."),
                        "worst-lines")]
    figures = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, (cer, k, ref, hyp, b, logits, frames) in enumerate(scored[:plots]):
            n, width = int(frames[k]), int(b["lengths"][k])
            image = (b["x"][k, 0, :, :width] * 255).round().to(torch.uint8).numpy()  # (1, H, W) -> (H, W)
            probs = torch.softmax(logits[k, :n].float(), dim=-1).numpy()  # (T, V)
            png = Path(plot_ctc(image, probs, alphabet, Path(tmp) / f"ctc{i}.png",
                                title=f"reference {ref!r}\ngreedy    {hyp!r}  (CER {cer:.2f})")).read_bytes()
            figures.append(img(png, f"CTC alignment of {b['ids'][k]}", css_class="wide"))
    sections.append(Section("CTC alignments", "".join(figures) + note(
        "Per-frame label probabilities under the line image (dashed: blank); a peak sits under the "
        "glyph it reads."), "ctc"))
    return sections


def charlm_sections(ctx: EvalContext) -> list[Section]:
    """charlm: samples at a few temperatures from the best checkpoint (fixed seed)."""
    from convrnn.data.text import Vocab
    from convrnn.sampling import safe_text, sample

    vocab = Vocab.from_dict(ctx.ckpt["meta"]["vocab"])
    parts = []
    for t in SAMPLE_TEMPERATURES:
        text = sample(ctx.model, vocab, length=SAMPLE_LENGTH, temperature=t, seed=0)[0]
        text = safe_text(text) if isinstance(text, bytes) else text
        parts.append(f"<h3>temperature {t:g}</h3><pre class=\"sample\">{esc(text)}</pre>")
    return [Section("Generated samples", "".join(parts) + note(
        f"{SAMPLE_LENGTH} symbols per sample from the best checkpoint, seed 0, starting after a newline."),
        "samples")]


RECIPE_SECTIONS: dict[str, Callable[[EvalContext], list[Section]]] = {
    "fonts": classify_sections,
    "mnist": classify_sections,
    "digits": digits_sections,
    "lines": lines_sections,
    "charlm": charlm_sections,
}
SPLIT_FOR = {"digits": "test"}  # per-length error needs the longer test sequences when the run has them


def recipe_sections(run: str, recipe: str, *, split: Optional[str] = None, max_batches: int = EVAL_BATCHES,
                    progress: Optional[Callable] = None, data_progress: Optional[Callable] = None) -> list[Section]:
    """The recipe's own sections, or one section saying why they could not be made.

    ``split`` None: the recipe's preferred split (digits: test, whose sequences are up to twice as long
    as training's), falling back to val when the run has no such split.
    """
    builder = RECIPE_SECTIONS.get(recipe)
    if builder is None:
        return [missing("Recipe sections", f"the report has no sections for recipe {recipe!r}")]
    try:
        chosen = split or SPLIT_FOR.get(recipe, "val")
        ctx = eval_context(run, split=chosen, max_batches=max_batches, progress=progress, data_progress=data_progress)
        if split is None and chosen != "val":
            try:
                ctx.data  # noqa: B018  (builds the data: does the run have this split?)
            except ConfigError:
                ctx = eval_context(run, split="val", max_batches=max_batches, progress=progress,
                                   data_progress=data_progress)
        return builder(ctx)
    except ImportError as e:  # a recipe piece not written yet
        return [missing(f"{recipe} sections", f"a module they need is missing ({e})")]
    except ConvrnnError as e:  # data that cannot be rebuilt here, a split the recipe lacks...
        return [missing(f"{recipe} sections", str(e))]
