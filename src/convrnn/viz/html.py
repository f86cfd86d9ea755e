"""The building blocks of the HTML run report: sections, tables, embedded figures and images, and the
evaluation context a section reads a run's checkpoint and data through.

A section is a title and an HTML fragment. Figures are embedded as base64 PNG ``data:`` URIs, so the
report is one file that needs no network. A recipe lists its own sections (``Recipe.report_sections``,
each a function of an :class:`EvalContext`); when a piece a section needs is not there (data that
cannot be rebuilt here) the section says what is missing instead of failing the report.

Shape:
    an image shown: ``(H, W)`` ink in 0..1 (1: ink); pictures on the page show dark ink on white paper.
"""
# H height, W width
from __future__ import annotations

import base64
import html
import io
import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch

log = logging.getLogger(__name__)

EVAL_BATCHES = 20  # validation batches the report evaluates at most: a report takes seconds, not minutes
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


def captioned(kind: str, picture: str, caption: str) -> str:
    """A figure of class ``kind``: an image (HTML) above its caption (HTML, already escaped)."""
    return f'<figure class="{esc(kind)}">{picture}<figcaption>{caption}</figcaption></figure>'


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
    """What a section evaluating a run's best checkpoint needs: the loaded run and the data of one
    split, rebuilt from the run's config the first time ``data`` is used (samples need none)."""

    loaded: Any                    # convrnn.infer.run.Loaded
    split: str
    max_batches: int = EVAL_BATCHES
    progress: Optional[Callable[[int, int], None]] = None
    data_progress: Optional[Callable[[int, int], None]] = None
    _cache: dict = field(default_factory=dict)

    @property
    def model(self):
        return self.loaded.model

    @property
    def ckpt(self) -> dict:
        return self.loaded.ckpt

    @property
    def task(self):
        return self.loaded.task

    @property
    def data(self):
        if "data" not in self._cache:
            from convrnn.infer.run import run_data
            self._cache["data"] = run_data(self.loaded, self.split, progress=self.data_progress)
        return self._cache["data"]


def eval_context(run: str, *, split: str = "val", max_batches: int = EVAL_BATCHES,
                 progress: Optional[Callable] = None, data_progress: Optional[Callable] = None) -> EvalContext:
    """A run's best checkpoint, loaded; its data is rebuilt from its config on first use (as ``convrnn eval``)."""
    from convrnn.infer.run import load_run
    return EvalContext(load_run(run), split, max_batches, progress, data_progress)


def evaluate_metrics(ctx: EvalContext, on_batch: Optional[Callable[[Any, dict], None]] = None):
    """The task's metric accumulator after the capped evaluation (cached per context).

    ``on_batch(out, batch)`` sees every batch's model output during that one pass (to keep examples
    without evaluating twice); it is not called when the metrics are already cached."""
    if "metrics" not in ctx._cache:
        from convrnn.infer.evaluate import evaluate
        ctx._cache["metrics"] = evaluate(ctx.model, ctx.task, ctx.data, max_batches=ctx.max_batches,
                                         progress=ctx.progress,
                                         on_batch=None if on_batch is None else lambda b, out: on_batch(out, b))
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


