"""The ``fonts`` recipe: which font is a text-line image in?

Images of ``height x width`` pixels (default 16x64) rendered from text lines in K fonts; the model
slices them into blocks or columns, runs one convolution on every step, and an LSTM over the steps.
``convrnn fonts preview`` draws what the model sees.
"""
# B batch (images), N windows of all images, C channels, H height, W width, V classes
from __future__ import annotations

import logging
import os
from collections import Counter
from pathlib import Path

import click
import numpy as np
import torch

from convrnn.data.batching import IndexedBatches, array_fetcher
from convrnn.data.fonts import (FontSpec, FontsDataConfig, drawable_lines, file_digest, make_fonts_data,
                                read_line_windows, render_line, resolve_fonts)
from convrnn.errors import DataError
from convrnn.recipes.base import (CliOption, DataBundle, DOES_NOT_FIT, Recipe, check_meta, missing_split,
                                   register_recipe)
from convrnn.tasks.classify import ClassifyTask

log = logging.getLogger(__name__)

# Windows per model call in predict: a few tens of MB of activations for the default model.
PREDICT_CHUNK = 1024


def _val_batches(val, labels: np.ndarray, batch_size: int) -> IndexedBatches:
    return IndexedBatches(val, max(batch_size, 256), fetch=array_fetcher(val.images, labels), shuffle=False)


@register_recipe
class FontsRecipe(Recipe):
    """Which font a rendered text-line image is in (blocks or columns through one conv, into an LSTM)."""

    name = "fonts"
    default_preset = "fonts"
    data_config = FontsDataConfig
    train_defaults = {"epochs": 30, "max_time": 100.0, "batch_size": 64, "lr": 3e-3, "schedule": "cosine",
                      "checkpoint_every": 500}
    cli_options = (
        CliOption("--fonts", "data.fonts", "font file (.ttf/.otf/.ttc/.otc) or folder of them, one class per font "
                  "file; repeatable (default: five faces bundled with matplotlib)", multiple=True),
        CliOption("--text", "data.text", "UTF-8 text file whose lines are rendered (default: embedded text)"),
        CliOption("--height", "data.height", "image height in pixels", type=int),
        CliOption("--width", "data.width", "image width in pixels", type=int),
        CliOption("--samples-per-font", "data.samples_per_font", "images rendered per font (train + val)", type=int),
    )

    input_meta = ("height", "width")
    label_meta = ("classes",)

    def make_data(self, data_cfg: FontsDataConfig, train_cfg, *, progress=None) -> DataBundle:
        train, val, meta = make_fonts_data(data_cfg, progress=progress, min_fonts=2)
        bs = train_cfg.batch_size
        train_src = IndexedBatches(train, bs, fetch=array_fetcher(train.images, train.labels), seed=train_cfg.seed)
        val_src = _val_batches(val, val.labels, bs)
        return DataBundle(train=train_src, val=val_src, input_shape=(1, data_cfg.height, data_cfg.width),
                          num_outputs=len(meta["classes"]), meta=meta)

    def make_split(self, data_cfg: FontsDataConfig, train_cfg, split: str, meta: dict, *, progress=None):
        """The validation crops, labelled with the checkpoint's classes by font name, so that fonts given
        in another order, or some of them, are scored by what the model's outputs mean; a font the
        model was not trained on is an error that names it."""
        if split != "val":
            raise missing_split(split)
        check_meta(self.input_meta, meta, {"height": data_cfg.height, "width": data_cfg.width}, DOES_NOT_FIT)
        known = list(meta["classes"])
        # named before any line is drawn: a font added to the run's font folder since it was trained
        # would otherwise be found only after rendering every font
        unknown = [spec.name for spec in resolve_fonts(list(data_cfg.fonts)) if spec.name not in known]
        if unknown:
            given = ", ".join(map(str, data_cfg.fonts)) or "the default faces"
            raise DataError(f"font{'s' if len(unknown) > 1 else ''} {', '.join(unknown)} (in {given}): not among "
                            f"the classes this model was trained on ({', '.join(known)}); a font added since "
                            f"training? give the trained ones with --set data.fonts=...")
        _, val, data_meta = make_fonts_data(data_cfg, progress=progress)
        unknown = [c for c in data_meta["classes"] if c not in known]
        if unknown:
            raise DataError(f"font{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}: not among the classes "
                            f"this model was trained on ({', '.join(known)})")
        check_same_fonts(meta, data_meta)
        to_model = np.array([known.index(c) for c in data_meta["classes"]], dtype=np.int64)
        return _val_batches(val, to_model[val.labels], train_cfg.batch_size)

    def make_task(self, meta: dict, output_shape: tuple) -> ClassifyTask:
        return ClassifyTask(meta["classes"])

    def predict(self, loaded, inputs: list[str], **options) -> list[str]:
        """Font name and probability for each line image, of any size (see :func:`read_line_windows`).

        The line is scaled to the model's height and read in windows of the model's width, half a window
        apart; the windows' distributions are multiplied (mean of their log-probabilities, renormalised).
        Every image is read before the model runs, so a bad file fails before any output. The windows
        of all images are batched together, at most PREDICT_CHUNK of them per model call.
        """
        _, height, width = loaded.ckpt["input_shape"]
        windows = [read_line_windows(path, int(height), int(width)) for path in inputs]
        counts = torch.tensor([len(w) for w in windows])
        x = torch.from_numpy(np.concatenate(windows)).unsqueeze(1)  # (N, H, W) -> (N, 1, H, W), N windows in all
        with torch.inference_mode():
            logits = torch.cat([loaded.model(chunk) for chunk in x.split(PREDICT_CHUNK)])
            log_probs = torch.log_softmax(logits.float(), dim=-1)  # (N, V)
            image = torch.repeat_interleave(torch.arange(len(inputs)), counts)  # (N,) image of each window
            summed = torch.zeros(len(inputs), log_probs.shape[1]).index_add_(0, image, log_probs)
            combined = summed / counts.unsqueeze(1)  # (B, V) mean log-probability per image
        return [f"{path}\t{name}\t{p:.3f}" for path, (name, p) in zip(inputs, loaded.task.predict(combined))]

    def report_sections(self, ctx) -> list:
        from convrnn.viz.sections import classify_sections
        return classify_sections(ctx)

    def commands(self) -> list:
        return [("fonts", preview)]


def check_same_fonts(meta: dict, data_meta: dict) -> None:
    """Each font given to score a model is the file its class was trained on, by the SHA-256 of its
    bytes the checkpoint records (older checkpoints: where the trained file is still there): a font
    with other bytes is a DataError when its name is ambiguous (two trained or two given files have
    the file name that gave it, so the ``-2`` suffix depends on which fonts are given and in what
    order) and a warning otherwise (another version of a font, say)."""
    trained = dict(zip(meta["classes"], meta.get("fonts") or []))
    digests = dict(zip(meta["classes"], meta.get("font_digests") or []))

    def repeated(paths) -> set[str]:
        stems = Counter(Path(p).stem for p in paths)
        return {stem for stem, n in stems.items() if n > 1}

    ambiguous = repeated(trained.values()) | repeated(data_meta["fonts"])
    for name, path in zip(data_meta["classes"], data_meta["fonts"]):
        was = trained.get(name)
        if was is None:
            continue
        if name in digests:
            if digests[name] == file_digest(path):
                continue
        elif not os.path.isfile(was) or os.path.samefile(was, path) or file_digest(was) == file_digest(path):
            continue
        problem = (f"font {path} is scored as class {name}, which this model learned from {was}, a file with other "
                   f"bytes")
        if Path(path).stem in ambiguous:
            raise DataError(f"{problem}; several fonts share the file name {Path(path).stem!r}, so their classes "
                            f"are told apart by the order they are given in: give the fonts as in training "
                            f"({', '.join(trained.values())})")
        log.warning("%s", problem)


def preview_grid(fonts: list[FontSpec] | list[str], text_lines: list[str], out_png: str, samples: int = 8,
                 height: int = 16, width: int = 64, seed: int = 0, *, jitter: int = 2,
                 scale_jitter: float = FontsDataConfig.scale_jitter, resample: float = FontsDataConfig.resample,
                 scale: int = 4, source: str = "the text") -> str:
    """Write a PNG with one row per font: its name, then ``samples`` renderings scaled ``scale`` times.

    Rows show dark text on white for reading (the model sees the inverse). Characters not every font
    draws are left out, named in a warning about ``source``. Returns ``out_png``.
    """
    from convrnn.viz.grid import image_grid, save_png

    specs: list[FontSpec] = []
    for f in fonts:
        specs.extend([f] if isinstance(f, FontSpec) else resolve_fonts([str(f)]))
    lines, note = drawable_lines(list(text_lines), specs)
    if not lines:
        raise DataError(f"expected at least one text line the fonts can draw for the preview, got none in {source}"
                        + (f": {note}" if note else ""))
    if note:
        log.warning("%s: %s", source, note)
    rng = np.random.default_rng(seed)
    rows = [[255 - render_line(lines[int(rng.integers(len(lines)))], spec, height=height, width=width,
                               rng=rng, jitter=jitter, scale_jitter=scale_jitter, resample=resample)
             for _ in range(samples)] for spec in specs]
    save_png(image_grid(rows, [s.name for s in specs], scale=scale), out_png)
    return out_png


@click.command()
@click.option("--fonts", "font_paths", multiple=True, type=click.Path(),
              help="font file or folder (repeatable); default: bundled faces")
@click.option("--text", type=click.Path(), help="UTF-8 text file (default: embedded text)")
@click.option("--out", type=click.Path(dir_okay=False), default="fonts-preview.png", show_default=True,
              help="the PNG to write")
@click.option("--samples", type=int, default=8, show_default=True, help="samples per font")
@click.option("--height", type=int, default=16, show_default=True, help="line height in pixels, as the recipe's")
@click.option("--width", type=int, default=64, show_default=True, help="line width in pixels, as the recipe's")
@click.option("--seed", type=int, default=0, show_default=True, help="seed of the lines and distortions drawn")
def preview(font_paths, text, out, samples, height, width, seed) -> None:
    """Write a PNG grid of rendered samples, one row per font: what the fonts recipe trains on."""
    from convrnn.data.fonts import load_text_lines
    if samples < 1 or height < 4 or width < 4:
        raise click.BadParameter("--samples must be at least 1 and --height/--width at least 4")
    from convrnn.files import check_writable
    # a leading ~ is the home folder, as in every other command's paths (the shell leaves it after =)
    font_paths = [os.path.expanduser(p) for p in font_paths]
    text, out = (os.path.expanduser(text) if text else text), os.path.expanduser(out)
    specs = resolve_fonts(list(font_paths))
    # never over a font or the text it draws from; a PNG under another name would mislead a viewer
    check_writable(out, keep=[s.path for s in specs] + ([text] if text else []), png=True)
    path = preview_grid(specs, load_text_lines(text), out, samples=samples, height=height, width=width, seed=seed,
                        source=text or "<embedded corpus>")
    click.echo(f"wrote {path} ({len(specs)} fonts x {samples} samples)")
