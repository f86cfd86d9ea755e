"""Synthetic text lines, so the lines recipe runs offline: handwritten digit strings and printed text.

(a) ``digit_lines``: strings of 1..L MNIST digits (or scikit-learn's 8x8 fallback) pasted side by side
    with random gaps and overlaps and a small vertical jitter. Training strings use MNIST's training
    digits; validation and test strings use its test digits.
(b) ``text_lines``: lines of a text rendered in the fonts module's fonts, augmented with stroke
    width, small rotation and shear, blur and noise.

In both, a sample's text goes to training or to held-out splits by a salted hash of the text itself
(``heldout_text``), so no validation or test text ever appears in training.
"""
# H height, W width
from __future__ import annotations

import logging
import zlib
from functools import lru_cache
from typing import Callable, Optional

import numpy as np

from convrnn.data.lines import LineSet, scale_to_height
from convrnn.data.text import display_order

log = logging.getLogger(__name__)

DIGIT_CANVAS = 32          # digit strings are composed 32 px high (28 px digits, jitter) before scaling
RENDER_SCALE = 2           # printed lines are drawn at twice the target height, augmented, scaled down


def heldout_text(text: str, fraction: float = 0.1, salt: str = "convrnn-lines") -> bool:
    """Deterministic: True for about ``fraction`` of all distinct texts (the held-out ones)."""
    return zlib.crc32((salt + "\x00" + text).encode("utf-8")) % 10000 < int(fraction * 10000)


def _draw_texts(sample: Callable[[np.random.Generator], str], count: int, heldout: bool,
                rng: np.random.Generator, fraction: float) -> list[str]:
    """``count`` texts from ``sample`` on the requested side of :func:`heldout_text`."""
    texts, tries = [], 0
    while len(texts) < count:
        tries += 1
        if tries > 200 * count + 1000:
            raise RuntimeError(f"could only draw {len(texts)} of {count} {'held-out' if heldout else 'training'} "
                               f"texts; the text source is too small")
        text = sample(rng)
        if heldout_text(text, fraction) == heldout:
            texts.append(text)
    return texts


# ------------------------------------------------------------------------------------ digit strings

def _crop_columns(digit: np.ndarray) -> np.ndarray:
    """Drop empty columns left and right of the ink (keep at least one column)."""
    cols = np.flatnonzero(digit.max(axis=0) > 0)
    return digit[:, cols[0]: cols[-1] + 1] if len(cols) else digit[:, :1]


def compose_digits(digits: list[np.ndarray], rng: np.random.Generator, *, max_gap: int = 6,
                   max_overlap: int = 4, jitter: int = 2) -> np.ndarray:
    """Paste uint8 ``(28, w)`` digits left to right on a ``DIGIT_CANVAS``-high canvas, ink combined by max.

    Each gap is drawn from ``-max_overlap..max_gap`` pixels (negative: the digits overlap), each digit
    shifted up or down by up to ``jitter``; 2 to 4 pixels of margin on both sides.
    """
    margin = (int(rng.integers(2, 5)), int(rng.integers(2, 5)))
    gaps = rng.integers(-max_overlap, max_gap + 1, size=max(len(digits) - 1, 0))
    xs, x = [], margin[0]
    for k, d in enumerate(digits):
        xs.append(x)
        x += d.shape[1] + (int(gaps[k]) if k < len(gaps) else 0)
    width = max(x0 + d.shape[1] for x0, d in zip(xs, digits)) + margin[1]
    canvas = np.zeros((DIGIT_CANVAS, width), dtype=np.uint8)
    top0 = (DIGIT_CANVAS - digits[0].shape[0]) // 2
    for x0, d in zip(xs, digits):
        top = top0 + int(rng.integers(-jitter, jitter + 1))
        region = canvas[top: top + d.shape[0], x0: x0 + d.shape[1]]
        np.maximum(region, d, out=region)
    return canvas


def _digit_pool(images: np.ndarray, labels: np.ndarray, max_value: int, crop: bool = True) -> list[list[np.ndarray]]:
    """Per digit class, its images as uint8 ``(28, w)`` ink crops, or whole ``(28, 28)`` images with
    ``crop=False`` (8x8 fallback digits upscaled)."""
    from PIL import Image

    pool: list[list[np.ndarray]] = [[] for _ in range(10)]
    for img, label in zip(images, labels):
        img = (img.astype(np.float32) * (255.0 / max_value)).clip(0, 255).astype(np.uint8)
        if img.shape != (28, 28):
            img = np.asarray(Image.fromarray(img).resize((28, 28), Image.BILINEAR))
        pool[int(label)].append(_crop_columns(img) if crop else img)
    missing = [d for d in range(10) if not pool[d]]
    if missing:
        raise ValueError(f"expected images of every digit 0..9, got none of {missing}")
    return pool


def digit_lines(count: int, *, split: str, max_digits: int = 8, height: int = 32, seed: int = 0,
                heldout_fraction: float = 0.1, mnist_dir: Optional[str] = None,
                progress: Optional[Callable[[int, int], None]] = None, rotate: float = 0.0,
                zoom: float = 0.0, elastic: float = 0.0) -> LineSet:
    """``count`` lines of 1..``max_digits`` handwritten digits, scaled to ``height``.

    ``split`` ``'train'`` draws MNIST training digits and training strings; ``'val'`` and ``'test'``
    draw MNIST test digits (val the even-indexed, test the odd-indexed ones) and held-out strings.
    ``rotate`` (degrees) and ``zoom`` turn and scale every digit by a random amount within +-rotate
    and 1 +- zoom before it is pasted, and ``elastic`` bends it smoothly by up to that many pixels
    (``convrnn.data.sequences.random_affine``), so the same MNIST digit looks different in every line.
    """
    from convrnn.data.sequences import random_affine
    from convrnn.data.mnist import load_mnist

    if split not in ("train", "val", "test"):
        raise ValueError(f"split must be 'train', 'val' or 'test', got {split!r}")
    source = load_mnist(mnist_dir or None, "train" if split == "train" else "test")
    images, labels = source.images, source.labels
    if split != "train":
        half = slice(0, None, 2) if split == "val" else slice(1, None, 2)
        images, labels = images[half], labels[half]
    distort = rotate > 0 or zoom > 0 or elastic > 0
    pool = _digit_pool(images, labels, source.max_value, crop=not distort)
    salt = {"train": 0, "val": 1, "test": 2}[split]
    rng = np.random.default_rng([seed, salt])

    def sample(r: np.random.Generator) -> str:
        n = int(r.integers(1, max_digits + 1))
        return "".join(str(d) for d in r.integers(0, 10, size=n))

    texts = _draw_texts(sample, count, split != "train", rng, heldout_fraction)
    out = []
    for k, text in enumerate(texts):
        digits = [pool[int(c)][int(rng.integers(len(pool[int(c)])))] for c in text]
        if distort:
            moved = random_affine(np.stack(digits).astype(np.float32), rng, rotate=rotate, zoom=zoom,
                                  elastic=elastic)
            digits = [_crop_columns(d) for d in moved.round().clip(0, 255).astype(np.uint8)]
        out.append(scale_to_height(compose_digits(digits, rng), height))
        if progress is not None and (k + 1) % 500 == 0:
            progress(k + 1, count)
    return LineSet(out, texts, [f"{split}-digits-{k:06d}" for k in range(count)])


# ------------------------------------------------------------------------------------ printed text

def text_samples(lines: list[str], max_chars: int) -> Callable[[np.random.Generator], str]:
    """A sampler of word-aligned pieces (1..``max_chars`` characters) of random lines."""
    words = [line.split() for line in lines if line.split()]
    if not words:
        raise ValueError("expected text lines with at least one word, got none")

    def sample(rng: np.random.Generator) -> str:
        line = words[int(rng.integers(len(words)))]
        start = int(rng.integers(len(line)))
        piece = line[start]
        for word in line[start + 1:]:
            if len(piece) + 1 + len(word) > max_chars or rng.random() < 0.15:
                break
            piece += " " + word
        return piece[:max_chars]

    return sample


@lru_cache(maxsize=64)
def _face(path: str, size: int):
    from PIL import ImageFont
    return ImageFont.truetype(path, size, layout_engine=ImageFont.Layout.BASIC)


def render_printed(text: str, font_path: str, *, height: int, rng: np.random.Generator,
                   augment: bool = True) -> np.ndarray:
    """``text`` in one font as ink-bright uint8 ``(height, W)``, with random augmentation.

    Drawn at ``RENDER_SCALE * height`` pixels: stroke width 0 or 1, then an affine warp (rotation up
    to 1.5 degrees, shear up to 0.25), Gaussian blur (radius up to 1), scaled to ``height``, and
    Gaussian pixel noise (sigma up to 12 of 255).
    """
    from PIL import Image, ImageDraw, ImageFilter

    from convrnn.data.fonts import FontSpec, font_size_for

    big = RENDER_SCALE * height
    size = font_size_for(FontSpec("f", font_path), int(0.8 * big))  # room for rotation and shear
    face = _face(font_path, size)
    stroke = int(rng.integers(0, 2)) if augment else 0
    left, top, right, bottom = face.getbbox(text, stroke_width=stroke)
    _, ref_top, _, ref_bottom = face.getbbox("bdfghjklpqtyHJQ")
    pad = big // 4
    width = right - left + 2 * pad
    y = (big - (ref_bottom - ref_top)) // 2 - ref_top
    image = Image.new("L", (width, big), 0)
    ImageDraw.Draw(image).text((pad - left, y), text, font=face, fill=255, stroke_width=stroke, stroke_fill=255)
    if augment:
        angle = np.deg2rad(rng.uniform(-1.5, 1.5))
        shear = rng.uniform(-0.25, 0.25)
        cx, cy = width / 2, big / 2
        # inverse map output -> input: rotation combined with a horizontal shear about the centre
        a, b = np.cos(angle), np.sin(angle) + shear
        d, e = -np.sin(angle), np.cos(angle)
        coeffs = (a, b, cx - a * cx - b * cy, d, e, cy - d * cx - e * cy)
        image = image.transform(image.size, Image.AFFINE, coeffs, resample=Image.BILINEAR)
        radius = rng.uniform(0.0, 1.0)
        if radius > 0.2:
            image = image.filter(ImageFilter.GaussianBlur(radius))
    ink = np.asarray(image, dtype=np.uint8)
    cols = np.flatnonzero(ink.max(axis=0) > 32)
    if len(cols):  # trim to the ink with a margin of a few pixels
        lo, hi = max(cols[0] - pad // 3, 0), min(cols[-1] + pad // 3 + 1, ink.shape[1])
        ink = ink[:, lo:hi]
    ink = scale_to_height(ink, height)
    if augment:
        noise = rng.normal(0.0, rng.uniform(0.0, 12.0), size=ink.shape)
        ink = (ink.astype(np.float32) + noise).clip(0, 255).astype(np.uint8)
    return ink


def text_lines(count: int, *, split: str, height: int = 32, seed: int = 0, text: Optional[str] = None,
               fonts: Optional[list[str]] = None, max_chars: int = 32, heldout_fraction: float = 0.1,
               base: Optional[str] = None, progress: Optional[Callable[[int, int], None]] = None) -> LineSet:
    """``count`` printed lines: word-aligned pieces of ``text`` (a file; None = embedded corpus) in
    random fonts; training pieces and held-out pieces (val, test) never share a text. Glyphs are drawn
    one after another from left to right (no shaping), in display order for paragraph direction
    ``base`` (``"L"``/``"R"``: right-to-left runs reversed, as they are printed; None: as stored)."""
    from convrnn.data.fonts import clean_lines, load_text_lines, resolve_fonts

    if split not in ("train", "val", "test"):
        raise ValueError(f"split must be 'train', 'val' or 'test', got {split!r}")
    specs = resolve_fonts(list(fonts or []))
    corpus = clean_lines(load_text_lines(text), specs)
    salt = {"train": 0, "val": 1, "test": 2}[split]
    rng = np.random.default_rng([seed, salt, 7])
    texts = _draw_texts(text_samples(corpus, max_chars), count, split != "train", rng, heldout_fraction)
    out = []
    for k, t in enumerate(texts):
        font = specs[int(rng.integers(len(specs)))]
        out.append(render_printed(display_order(t, base) if base else t, font.path, height=height, rng=rng))
        if progress is not None and (k + 1) % 500 == 0:
            progress(k + 1, count)
    return LineSet(out, texts, [f"{split}-text-{k:06d}" for k in range(count)])
