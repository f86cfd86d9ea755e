"""Pieces of the HTML run report: HTML helpers, evaluation data, and one section builder per recipe.

A section is a title and an HTML fragment. Figures are embedded as base64 PNG ``data:`` URIs, so the
report is one file that needs no network. Each recipe's section builder (``RECIPE_SECTIONS[name]``)
calls that recipe's own library functions; when a piece it needs is not there (a module not yet
written, data that cannot be rebuilt) the section says what is missing instead of failing the report.

Shape:
    classification evaluation: logits ``(B, V)``, labels ``(B,)``; confusion ``(V, V)`` truth x prediction.
    digit sequences: ``x`` ``(B, T, 1, H, W)``, one digit image per step; targets ``(B,)`` or ``(B, T)``.
    CTC evaluation: logits ``(B, T, V)`` with valid frames ``(B,)``; a line image ``(H, W)`` uint8.
    inputs are ink in 0..1 (1: ink); pictures on the page show dark ink on white paper.
"""
# B batch, T frames or steps, V classes or labels, H height, W width
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
MISCLASSIFIED = 16   # misclassified images shown for classification runs
WORST_SEQUENCES = 6  # worst digit sequences shown
THUMB_HEIGHT = 48    # CSS pixels: small input images are enlarged (nearest neighbour) to about this height


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


CSS_DPI = 96  # CSS pixels per inch: a matplotlib point is then a CSS point at the figure's own size
DENSITY = 2    # figure pixels per CSS pixel, so figures stay sharp on high-density screens


def figure_png(fig, *, dpi: int = CSS_DPI) -> bytes:
    """PNG bytes of a matplotlib figure; the figure is closed."""
    import matplotlib.pyplot as plt
    buf = io.BytesIO()
    try:
        fig.savefig(buf, format="png", dpi=dpi)
    finally:
        plt.close(fig)
    return buf.getvalue()


def img(png: bytes, alt: str, *, css_class: str = "", width: Optional[int] = None) -> str:
    """An ``<img>`` of ``png``; ``width`` (CSS pixels) shows it at that size (or narrower, never wider)."""
    cls = f' class="{esc(css_class)}"' if css_class else ""
    size = f' width="{int(width)}"' if width else ""
    return f'<img{cls}{size} alt="{esc(alt)}" src="{png_data_uri(png)}">'


def figure_img(fig, alt: str, *, css_class: str = "") -> str:
    """A matplotlib figure at its own size in CSS pixels (``figsize`` x 96), drawn at twice the density:
    a font size of 9 in the figure reads as 9pt on the page (when the window leaves room for it)."""
    width = round(fig.get_figwidth() * CSS_DPI)
    return img(figure_png(fig, dpi=CSS_DPI * DENSITY), alt, css_class=css_class, width=width)


def paper(ink: np.ndarray) -> np.ndarray:
    """Ink ``(H, W)`` in 0..1 (1: ink) -> a uint8 picture with dark ink on white paper."""
    return (255.0 - np.clip(np.asarray(ink, dtype=np.float32), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def gray_png(image: np.ndarray, scale: int = 1) -> bytes:
    """PNG bytes of a uint8 ``(H, W)`` picture, each pixel repeated ``scale`` x ``scale`` times."""
    from PIL import Image
    big = np.repeat(np.repeat(image, scale, axis=0), scale, axis=1)  # (H, W) -> (H*s, W*s)
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(big)).save(buf, format="PNG")
    return buf.getvalue()


def enlargement(height: int, target: int = THUMB_HEIGHT) -> int:
    """The whole-number enlargement that brings an image of ``height`` pixels nearest to ``target``."""
    return max(1, round(target / max(height, 1)))


def thumbnail(ink: np.ndarray, alt: str, *, target: int = THUMB_HEIGHT) -> str:
    """An ``<img>`` of an ink image ``(H, W)``, dark on white, enlarged (nearest neighbour) to about
    ``target`` CSS pixels high and drawn at twice that density."""
    picture = paper(ink)
    scale = enlargement(picture.shape[0], target)
    return img(gray_png(picture, scale * DENSITY), alt, css_class="px", width=picture.shape[1] * scale)


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


def evaluate_metrics(ctx: EvalContext, on_batch: Optional[Callable[[Any, dict], None]] = None):
    """The task's metric accumulator after the capped evaluation (cached per context).

    ``on_batch(out, batch)`` sees every batch's model output during that one pass (to keep examples
    without evaluating twice); it is not called when the metrics are already cached."""
    if "metrics" not in ctx._cache:
        acc = ctx.task.new_metrics()
        state = None
        for batch in ctx.batches():
            if getattr(ctx.task, "stateful", False) and batch.get("reset") is True:
                state = None
            with torch.inference_mode():
                out = ctx.model.run(batch["x"], batch.get("lengths"), state if ctx.task.stateful else None,
                                    need_state=ctx.task.stateful)
                if on_batch is not None:
                    on_batch(out, batch)
            state = out.state
            acc.update(out, batch)
        ctx._cache["metrics"] = acc
    return ctx._cache["metrics"]


def sample_id(batch: dict, k: int) -> str:
    """The ``ids`` entry of item ``k`` of a batch (a tensor or a list), else its position."""
    ids = batch.get("ids")
    if ids is None:
        return str(k)
    v = ids[k]
    return str(v.item() if isinstance(v, torch.Tensor) else v)


def split_samples(ctx: Optional[EvalContext], batches: int = 0) -> Optional[int]:
    """How many samples the first ``batches`` batches (0: all) of the context's split hold, when its data
    was built and is a plain batched dataset; else None. Training validated ``train.val_batches``
    batches of the same data, so this is the denominator of its count metrics (errors)."""
    from convrnn.data.batching import IndexedBatches
    data = ctx._cache.get("data") if ctx is not None else None
    if not isinstance(data, IndexedBatches):
        return None
    n, size = len(data.dataset), data.batch_size
    if data.drop_last:
        n -= n % size
    return min(n, batches * size) if batches else n


# --------------------------------------------------------------------------------- recipe sections

def classify_sections(ctx: EvalContext, *, shown: int = MISCLASSIFIED) -> list[Section]:
    """fonts, mnist: the confusion matrix of the best checkpoint on the split, and its most confident
    mistakes (up to ``shown`` images with the true and predicted class)."""
    from convrnn.viz.confusion import confusion_figure
    classes = list(ctx.ckpt["meta"].get("classes") or ctx.task.classes)
    wrong = []  # (-probability, true index, predicted index, id, image (H, W) ink), most confident first

    def keep_mistakes(out, batch) -> None:
        probs = out.y.float().softmax(dim=-1)  # (B, V)
        p, pred = probs.max(dim=-1)
        for k in torch.nonzero(pred != batch["y"]).flatten().tolist():
            image = batch["x"][k].reshape(-1, batch["x"].shape[-1])  # (C, H, W) -> (C*H, W); C is 1 here
            wrong.append((-float(p[k]), int(batch["y"][k]), int(pred[k]), sample_id(batch, k), image.numpy().copy()))
        wrong.sort(key=lambda w: w[0])  # stable: ties stay in data order
        del wrong[shown:]

    acc = evaluate_metrics(ctx, keep_mistakes)
    confusion = getattr(acc, "confusion", None)
    if confusion is None:
        return [missing("Confusion matrix", f"the {ctx.task.name} task's metrics keep no confusion matrix")]
    counts = confusion.cpu().numpy()
    n = int(counts.sum())
    errors = n - int(np.trace(counts))
    accuracy = float(np.trace(counts)) / max(n, 1)
    fig = confusion_figure(counts, classes, title=f"{ctx.split}: {n} samples, accuracy {accuracy:.3f}")
    body = (figure_img(fig, "confusion matrix", css_class="wide")
            + note(f"Best checkpoint on {n} {ctx.split} samples (at most {ctx.max_batches} batches). "
                   "Rows: true class, columns: predicted class; cells show counts, colour the row share."))
    per_class = [(c, int(counts[i].sum()), f"{counts[i, i] / max(counts[i].sum(), 1):.3f}")
                 for i, c in enumerate(classes)]
    body += table(["class", "samples", "recall"], per_class, numeric=(1, 2))
    sections = [Section("Confusion matrix", body, "confusion")]
    if wrong:
        tiles = "".join(
            f'<figure class="sample">{thumbnail(image, f"{ctx.split} sample {sid}: {classes[t]} read as {classes[q]}")}'
            f'<figcaption>true <b>{esc(classes[t])}</b><br>predicted <b>{esc(classes[q])}</b> '
            f'<span class="p">(p {-neg_p:.2f})</span></figcaption></figure>'
            for neg_p, t, q, sid, image in wrong)
        shown_note = (f"The {len(wrong)} most confident of the {errors} misclassified {ctx.split} samples"
                      if errors > len(wrong) else f"All {errors} misclassified {ctx.split} samples")
        mistakes = (f'<div class="samples">{tiles}</div>'
                    + note(f"{shown_note} (errors {errors}/{n}), the most confident first; p is the "
                           "probability the best checkpoint gave its (wrong) prediction."))
    else:
        mistakes = note(f"No misclassified samples: the best checkpoint reads all {n} {ctx.split} samples right.")
    sections.append(Section("Misclassified examples", mistakes, "misclassified"))
    return sections


def digits_sections(ctx: EvalContext, *, shown: int = WORST_SEQUENCES) -> list[Section]:
    """digits: error per sequence length, on the test split when it exists (lengths up to 2N), and the
    ``shown`` sequences with the largest error (their digit images, target and prediction)."""
    import matplotlib.pyplot as plt
    worst = []  # (-error, id, digits (L, H, W) ink, targets, predictions), largest error first
    values = getattr(ctx.task, "values", None)

    def keep_worst(out, batch) -> None:
        if values is None:
            return
        pred = values(out).double().cpu()                   # (B,) or (B, T)
        truth = batch["y_int"] if "y_int" in batch else batch["y"].round().long()
        lengths = batch["lengths"].tolist()
        per_step = pred.dim() == 2
        for k, n in enumerate(lengths):
            p = pred[k, :n] if per_step else pred[k:k + 1]
            t = truth[k, :n].double() if per_step else truth[k:k + 1].double()
            error = float((p - t).abs().sum())
            if len(worst) < shown or error > -worst[-1][0]:
                digits = batch["x"][k, :n, 0].numpy().copy()  # (B, T, 1, H, W) -> (L, H, W)
                worst.append((-error, sample_id(batch, k), digits, t.tolist(), p.tolist()))
                worst.sort(key=lambda w: w[0])  # stable: ties stay in data order
                del worst[shown:]

    metrics = evaluate_metrics(ctx, keep_worst).compute()
    lengths = sorted(int(k[len("mae_len"):]) for k in metrics if k.startswith("mae_len"))
    if not lengths:
        return [missing("Error per sequence length", "the digits evaluation reported no per-length metrics "
                        "(mae_lenL, exact_lenL)")]
    mae = [metrics[f"mae_len{n}"] for n in lengths]
    exact = [metrics.get(f"exact_len{n}", float("nan")) for n in lengths]
    train_max = int(ctx.ckpt["config"].get("data", {}).get("max_len", 0) or 0)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10.0, 3.2))
    ax1.plot(lengths, mae, marker="o")
    ax1.set_title("mean absolute error", fontsize=11)
    ax2.plot(lengths, exact, marker="o", color="tab:green")
    ax2.set_title("exact after rounding", fontsize=11)
    ax2.set_ylim(-0.02, 1.02)
    for ax in (ax1, ax2):
        ax.set_xlabel("sequence length", fontsize=10)
        ax.tick_params(labelsize=9)
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
    sections = [Section("Error per sequence length", body, "per-length")]
    if worst:
        items = "".join(
            f'<figure class="sequence">{thumbnail(_side_by_side(digits), f"{ctx.split} sequence {sid}")}'
            f'<figcaption>{esc(sid)}: target <b>{esc(_values_text(t))}</b>, predicted '
            f'<b>{esc(_values_text(q))}</b> (length {len(digits)}, error {-neg:.2f})</figcaption></figure>'
            for neg, sid, digits, t, q in worst)
        sections.append(Section("Worst sequences", items + note(
            f"The {len(worst)} {ctx.split} sequences with the largest absolute error (summed over the steps of a "
            f"running sum), largest first, among at most {ctx.max_batches} batches."), "worst-sequences"))
    return sections


def _side_by_side(images: np.ndarray, gap: int = 2) -> np.ndarray:
    """``(L, H, W)`` ink images -> one ``(H, L * (W + gap) - gap)`` ink image, left to right."""
    count, height, width = images.shape
    row = np.full((height, max(count * (width + gap) - gap, 1)), 0.25, dtype=np.float32)  # light gray gaps
    for i in range(count):
        row[:, i * (width + gap): i * (width + gap) + width] = images[i]
    return row


def _values_text(values: Sequence[float]) -> str:
    """Targets or predictions as text: whole numbers without decimals, others to two decimals."""
    return " ".join(str(int(round(v))) if abs(v - round(v)) < 1e-9 else f"{v:.2f}" for v in values)


def lines_sections(ctx: EvalContext, *, worst: int = 8, plots: int = 3) -> list[Section]:
    """lines: worst-read lines (reference vs greedy prediction) and CTC alignments of the worst few."""
    from convrnn.metrics_text import edit_distance
    from convrnn.tasks.base import ModelOutput
    from convrnn.viz.ctc_plot import plot_ctc

    alphabet = ctx.ckpt["meta"]["alphabet"]
    scored = []  # (cer, index in its batch, reference, prediction, batch, logits (B, T, V), frames (B,))
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
    items = []
    for cer, k, ref, hyp, b, _, _ in scored:
        ink = b["x"][k, 0, :, :int(b["lengths"][k])].numpy()  # (1, H, W) padded -> (H, width)
        line_id = sample_id(b, k)
        picture = thumbnail(ink, f"line {line_id}")  # low lines enlarged to about THUMB_HEIGHT
        items.append(f'<figure class="line">{picture}'
                     f'<figcaption><span class="id">{esc(line_id)}</span> CER <span class="cer">{cer:.3f}</span>'
                     f'<br>reference <code class="ref">{esc(ref)}</code>'
                     f'<br>prediction <code class="hyp">{esc(hyp)}</code>'
                     + (' <span class="p">(nothing read)</span>' if not hyp else "") + "</figcaption></figure>")
    sections = [Section("Worst-read lines", "".join(items)
                        + note(f"Greedy decoding of the best checkpoint; the {len(items)} lines with the highest "
                               f"character error rate among at most {ctx.max_batches} {ctx.split} batches, worst "
                               "first: the line image above its reference and the prediction."),
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
    return recipe_report(run, recipe, split=split, max_batches=max_batches, progress=progress,
                         data_progress=data_progress)[0]


def recipe_report(run: str, recipe: str, *, split: Optional[str] = None, max_batches: int = EVAL_BATCHES,
                  progress: Optional[Callable] = None,
                  data_progress: Optional[Callable] = None) -> tuple[list[Section], Optional[EvalContext]]:
    """:func:`recipe_sections` and the evaluation context they used (None when there was none), whose
    data the results summary reuses to count the validation samples."""
    builder = RECIPE_SECTIONS.get(recipe)
    if builder is None:
        return [missing("Recipe sections", f"the report has no sections for recipe {recipe!r}")], None
    ctx = None
    try:
        chosen = split or SPLIT_FOR.get(recipe, "val")
        ctx = eval_context(run, split=chosen, max_batches=max_batches, progress=progress, data_progress=data_progress)
        if split is None and chosen != "val":
            try:
                ctx.data  # noqa: B018  (builds the data: does the run have this split?)
            except ConfigError:
                ctx = eval_context(run, split="val", max_batches=max_batches, progress=progress,
                                   data_progress=data_progress)
        return builder(ctx), ctx
    except ImportError as e:  # a recipe piece not written yet
        return [missing(f"{recipe} sections", f"a module they need is missing ({e})")], ctx
    except ConvrnnError as e:  # data that cannot be rebuilt here, a split the recipe lacks...
        return [missing(f"{recipe} sections", str(e))], ctx
