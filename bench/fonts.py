"""Benchmarks of the fonts recipe.

- ``fonts_accuracy``: validation accuracy of ``convrnn train fonts`` (default fonts, default preset)
  after at most 2 minutes of training on this machine's CPU cores. The original Keras model: about 60%
  after 300,000 examples.
  Its details also give ``real_lines``: how ``convrnn predict`` reads lines drawn as a user would with PIL
  (validation text, every font, glyph heights 12-18 px from ascenders to descenders, 40x600 black on
  white), by glyph height and by font (:func:`real_line_accuracy`).
- ``fwtk_throughput``: training samples/s of the ``fwtk`` preset through convrnn's Trainer divided by an
  equivalent hand-written PyTorch loop (folded conv + nn.LSTM) on the same batches, measured side by side.
"""
# B batch, T blocks, C channels, H height, W width
from __future__ import annotations

import tempfile
import statistics
import time

import torch
from torch import nn

TARGET_ACCURACY = 0.99
TRAIN_SECONDS = 100.0  # plus data loading and validation passes: the whole run stays within 2 minutes


def fonts_accuracy(quick: bool = False) -> dict:
    from bench.harness import trained

    torch.set_num_threads(2)
    budget = 20.0 if quick else TRAIN_SECONDS
    with trained("fonts", {"train.max_time": budget, "train.threads": 2}) as (result, loaded, bundle, wall):
        metrics = dict(result.metrics)
        best = result.best_metrics.get("accuracy")
        steps, train_time = result.step, result.train_time
        spec = loaded.model.spec
        n_train = len(bundle.train.dataset)
        n_val = len(bundle.val.dataset)
        real = real_line_accuracy(loaded, lines_per_height=5 if quick else REAL_LINES_PER_HEIGHT)
    value = float(metrics.get("accuracy", 0.0))
    return {
        "metric": "validation accuracy after <= 2 min of CPU training (default fonts, default preset)",
        "value": value, "unit": "fraction", "target": TARGET_ACCURACY, "target_text": ">= 0.99",
        "baseline": 0.60, "baseline_note": "the original Keras font classifier: about 60% after ~300,000 examples (one epoch)",
        "met": value >= TARGET_ACCURACY,
        "details": {"best_val_accuracy": best, "final_val": metrics, "steps": steps,
                    "training_seconds": round(train_time, 1), "wall_seconds_incl_data_and_validation": round(wall, 1),
                    "spec": spec, "train_images": n_train, "val_images": n_val, "quick": quick,
                    "real_lines": real},
    }


REAL_GLYPH_HEIGHTS = (12, 14, 16, 18)  # ascender-to-descender ink height of the drawn lines, pixels
REAL_IMAGE_SIZE = (40, 600)            # height, width of the drawn line images
REAL_LINES_PER_HEIGHT = 20             # validation lines drawn in every font at every glyph height


def draw_user_line(text: str, font_path: str, glyph_height: int, size: tuple[int, int] = REAL_IMAGE_SIZE):
    """``text`` drawn as a user might with PIL: black on white, ``size`` (height, width), in the integer
    font size whose ascender-to-descender ink comes closest to ``glyph_height`` pixels, from 8 pixels
    in, centred vertically, the words that fit in the width. Returns a PIL image."""
    from PIL import Image, ImageDraw, ImageFont

    from convrnn.data.fonts import REFERENCE_TEXT

    def ink_height(pt: int) -> int:
        _, top, _, bottom = ImageFont.truetype(font_path, pt).getbbox(REFERENCE_TEXT)
        return bottom - top

    pt = min(range(4, 8 * glyph_height), key=lambda p: (abs(ink_height(p) - glyph_height), p))
    face = ImageFont.truetype(font_path, pt)
    height, width = size
    words, kept = text.split(), []
    for word in words:
        if face.getlength(" ".join(kept + [word])) > width - 16:
            break
        kept.append(word)
    line = " ".join(kept) or words[0]
    _, top, _, bottom = face.getbbox(REFERENCE_TEXT)
    image = Image.new("L", (width, height), 255)
    ImageDraw.Draw(image).text((8, (height - (bottom - top)) // 2 - top), line, font=face, fill=0)
    return image


def real_line_accuracy(loaded, lines_per_height: int = REAL_LINES_PER_HEIGHT) -> dict:
    """``convrnn predict`` accuracy of a loaded fonts run on lines drawn with :func:`draw_user_line` in each of
    its fonts at every REAL_GLYPH_HEIGHTS, from the validation lines of the run's data config."""
    import os

    import numpy as np

    from convrnn.data.fonts import FontsDataConfig, clean_lines, load_text_lines, resolve_fonts, split_lines
    ckpt, recipe = loaded.ckpt, loaded.recipe
    fields = FontsDataConfig.__dataclass_fields__
    data = FontsDataConfig(**{k: v for k, v in ckpt["config"]["data"].items() if k in fields})
    fonts = resolve_fonts(list(data.fonts))
    lines = clean_lines(load_text_lines(data.text), fonts)
    _, val_ids = split_lines(len(lines), data.val_fraction, data.seed)
    picked = [lines[i] for i in np.random.default_rng(0).permutation(val_ids)[:lines_per_height]]
    classes = ckpt["meta"]["classes"]
    with tempfile.TemporaryDirectory() as tmp:
        paths, truth, heights = [], [], []
        for font in fonts:
            for g in REAL_GLYPH_HEIGHTS:
                for i, text in enumerate(picked):
                    path = os.path.join(tmp, f"{font.name}-{g}-{i}.png")
                    draw_user_line(text, font.path, g).save(path)
                    paths.append(path)
                    truth.append(font.name)
                    heights.append(g)
        t0 = time.perf_counter()
        out = recipe.predict(loaded, paths)
        seconds = time.perf_counter() - t0
    names = [line.split("\t")[1] for line in out]
    right = np.array([n == t for n, t in zip(names, truth)])
    heights, truth = np.array(heights), np.array(truth)
    by_font = {c: float(right[truth == c].mean()) for c in classes}
    return {"accuracy": float(right.mean()), "images": len(paths),
            "by_glyph_height": {str(g): float(right[heights == g].mean()) for g in REAL_GLYPH_HEIGHTS},
            "by_font": by_font, "image_size": list(REAL_IMAGE_SIZE), "predict_seconds": round(seconds, 2)}


class HandWrittenFWTK(nn.Module):
    """The fwtk font classifier written directly: 8 blocks of 16x8, conv 4@5x5 relu 'same', 2x2 max pool, LSTM 32."""

    def __init__(self, num_classes: int):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 5, padding=2)
        self.pool = nn.MaxPool2d(2)
        self.lstm = nn.LSTM(4 * 8 * 4, 32, batch_first=True)
        self.fc = nn.Linear(32, num_classes)

    def forward(self, x):
        b = x.shape[0]
        blocks = x.unfold(3, 8, 8)                                  # (B, 1, 16, 64) -> (B, 1, 16, 8, 8)
        blocks = blocks.permute(0, 3, 1, 2, 4).reshape(b * 8, 1, 16, 8)  # -> (B*T, 1, 16, 8)
        f = self.pool(torch.relu(self.conv(blocks)))                # -> (B*T, 4, 8, 4)
        f = f.reshape(b, 8, -1)                                     # -> (B, T, 128)
        out, _ = self.lstm(f)
        return self.fc(out[:, -1])


def _hand_loop(model, batches, lr: float, clip: float) -> float:
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    t0 = time.perf_counter()
    n = 0
    for batch in batches:
        loss = nn.functional.cross_entropy(model(batch["x"]), batch["y"])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        n += batch["x"].shape[0]
    return n / (time.perf_counter() - t0)


def fwtk_throughput(quick: bool = False) -> dict:
    from convrnn.data.batching import IndexedBatches
    from convrnn.data.fonts import FontsDataConfig, make_fonts_data
    from convrnn.spec.presets import create_model
    from convrnn.recipes.fonts import array_fetcher
    from convrnn.tasks.classify import ClassifyTask
    from convrnn.train.config import TrainConfig
    from convrnn.train.trainer import Trainer

    torch.set_num_threads(2)
    train, _, meta = make_fonts_data(FontsDataConfig())
    k = len(meta["classes"])
    steps = 60 if quick else 300
    bs = 64
    source = IndexedBatches(train, bs, fetch=array_fetcher(train.images, train.labels), seed=0)
    batches = [b for _, b in zip(range(steps), source.batches(0))]
    # one pass is 125 batches (8,000 lines), about half a second: pass over them three times per round,
    # so that a round is long enough for the timer and the scheduler's noise to average out
    batches = batches * (1 if quick else 3)

    class Fixed(IndexedBatches):
        def num_batches(self, epoch):
            return len(batches)

        def batches(self, epoch, start=0):
            return iter(batches[start:])

    fixed = Fixed(train, bs, fetch=lambda i: {})
    rounds = 2 if quick else 9  # the median of many short rounds outlasts a slow spell of the machine
    ours, theirs = [], []
    for r in range(rounds):  # interleave so both see the same machine conditions
        torch.manual_seed(r)
        model = create_model("fwtk", num_outputs=k)
        cfg = TrainConfig(epochs=1, batch_size=bs, lr=3e-3, clip_grad_norm=1.0, log_every=10 ** 9,
                          checkpoint_every=10 ** 9, device="cpu", threads=2)
        trainer = Trainer(model, ClassifyTask(meta["classes"]), fixed, None, cfg)
        t0 = time.perf_counter()
        trainer.fit()
        ours.append(len(batches) * bs / (time.perf_counter() - t0))
        torch.manual_seed(r)
        theirs.append(_hand_loop(HandWrittenFWTK(k), batches, 3e-3, 1.0))
    from bench.harness import paired_ratio
    paired = paired_ratio(ours, theirs)
    ratio = paired.pop("value")
    params_ours = sum(p.numel() for p in create_model("fwtk", num_outputs=k).parameters())
    params_hand = sum(p.numel() for p in HandWrittenFWTK(k).parameters())
    return {
        "metric": "fwtk training samples/s: convrnn Trainer / hand-written PyTorch loop (same batches, same run)",
        "value": ratio, "unit": "ratio", "target": 0.9, "target_text": ">= 0.90 (within 10%)",
        "baseline": statistics.median(theirs), "met": ratio >= 0.9,
        "details": {"convrnn_samples_per_s": [round(v) for v in ours], "hand_samples_per_s": [round(v) for v in theirs],
                    **paired, "steps_per_round": len(batches), "batch_size": bs, "rounds": rounds,
                    "params_convrnn": params_ours, "params_hand": params_hand,
                    "note": "median over interleaved rounds of the round's ratio; both clip gradients at norm 1 and "
                            "use Adam"},
    }
