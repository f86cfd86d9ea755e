"""The ``fonts`` dataset: text lines rendered in K fonts, labelled by font.

The fonts recipe classifies the font of a small text-line image. Every
sample is one ``height x width`` crop of a text line drawn in one font, white ink (255) on black (0),
so ``x / 255`` puts ink at 1. To take away size cues, every font is drawn at the size
that makes its ascender-to-descender height fill about ``height - 2`` pixels, and each sample
fills the whole width: it starts at a random character of its line and keeps the glyphs that fit,
stopping before the glyph that would overflow the right edge. Around that size, each crop's glyph
scale varies (``scale_jitter``), and a fraction of crops is drawn at another resolution and resized
(``resample``), so that a user's line scaled to the model's height reads like the training crops.

:func:`read_line_windows` turns a user's line image of any size into windows like the training
crops: ink bright, cropped to the ink, scaled so the ink fills ``height - 2`` rows, cut into windows.

Lines are split into train and val *before* rendering, so a line never appears in both splits.
Rendered arrays are cached on disk as ``.npz``, keyed by everything that changes the pixels.

Shape:
    - render_line: ``(H, W)`` uint8.
    - normalise_line: float ``(H_in, W_in)`` -> float32 ``(H, W')``; line_windows: ``(H, W')`` ->
      ``(N, H, W)``; read_line_windows: a file -> float32 ``(N, H, W)``, ink 1.
    - FontsDataset item: ``x`` ``(1, H, W)`` float32 in 0..1 (ink 1), ``y`` int font index.

    H image height, W image width, W' a scaled line's width, N windows.
"""
# H height, W width, N windows
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import time
import unicodedata
from collections import Counter
from dataclasses import asdict, dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from convrnn.data.text import decode_utf8, right_to_left
from convrnn.errors import DataError
from convrnn.fields import check, checked, path_field, seed_field
from convrnn.files import atomic_write_with, cache_dir
from convrnn.wording import plural

log = logging.getLogger(__name__)

FORMAT_VERSION = 2
FONT_SUFFIXES = (".ttf", ".otf", ".ttc", ".otc")
# font formats that are not read: a folder's files of these kinds are named rather than passed over
OTHER_FONT_SUFFIXES = (".woff", ".woff2", ".pfb", ".pfa", ".afm", ".dfont", ".fon", ".fnt", ".bdf", ".pcf")
DEFAULT_FACES = ("DejaVuSans", "DejaVuSerif", "DejaVuSansMono", "STIXGeneral", "cmr10")
# Ascenders and descenders: the ink height of this string is what fills ``height - 2`` pixels.
REFERENCE_TEXT = "bdfghjklpqtyHJQ"

# PostScript names of the ASCII punctuation glyphs. TeX-encoded fonts (cmr10 and friends) map
# some ASCII codes to other glyphs ('<' is drawn as an inverted exclamation mark); a character whose
# glyph has neither the expected name nor an accepted typographic variant is left out of the text.
_ASCII_GLYPHS = {
    "!": "exclam", '"': "quotedbl quotedblright", "#": "numbersign", "$": "dollar", "%": "percent",
    "&": "ampersand", "'": "quotesingle quoteright", "(": "parenleft", ")": "parenright",
    "*": "asterisk", "+": "plus", ",": "comma", "-": "hyphen minus", ".": "period", "/": "slash",
    ":": "colon", ";": "semicolon", "<": "less", "=": "equal", ">": "greater", "?": "question",
    "@": "at", "[": "bracketleft", "\\": "backslash", "]": "bracketright", "^": "asciicircum circumflex",
    "_": "underscore", "`": "grave quoteleft", "{": "braceleft", "|": "bar", "}": "braceright",
    "~": "asciitilde tilde",
}


@dataclass(frozen=True)
class FontSpec:
    """One font class: a short ``name`` (the class name) and the font file ``path``."""

    name: str
    path: str


@dataclass
class FontsDataConfig:
    """Everything that decides the rendered pixels (and so the cache key), plus where to cache."""

    fonts: list[str] = path_field([])                # files or folders; empty = default_fonts()
    text: str | None = path_field(None)             # UTF-8 file of lines; None = embedded corpus
    height: int = checked(16, lambda v: v >= 6, "at least 6")
    width: int = checked(64, lambda v: v >= 4, "at least 4")
    # train + val: each font needs a crop in both splits
    samples_per_font: int = checked(2000, lambda v: v >= 2, "at least 2 (a crop to train and one to validate per font)")
    val_fraction: float = checked(0.2, lambda v: 0.0 < v < 1.0, "a fraction in (0, 1)")
    jitter: int = checked(2, lambda v: v >= 0, "at least 0")
    # glyph height drawn per sample in (1 +- this) x (height - 2)
    scale_jitter: float = checked(0.15, lambda v: 0.0 <= v < 0.5, "in [0, 0.5)")
    # fraction of training crops drawn at another size, then resized
    resample: float = checked(0.25, lambda v: 0.0 <= v <= 1.0, "in [0, 1]")
    seed: int = seed_field()
    cache_dir: str | None = path_field(None)         # None = $CONVRNN_CACHE/fonts or ~/.cache/convrnn/fonts

    def check_together(self) -> list[tuple]:
        # an empty split would train on nothing or score nothing (loss 0, accuracy 0 out of 0 crops)
        n = self.samples_per_font
        return [(1 <= round(n * self.val_fraction) <= n - 1, "val_fraction",
                 f"a share of the {n} samples per font that rounds to 1..{n - 1} validation crops "
                 f"(the rest train)", self.val_fraction)]


# ---------------------------------------------------------------------------------------- fonts

def default_fonts() -> list[FontSpec]:
    """Five visibly different faces bundled with matplotlib: sans, serif, mono, STIX and Computer Modern."""
    import matplotlib

    folder = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
    specs = [FontSpec(name, str(folder / f"{name}.ttf")) for name in DEFAULT_FACES]
    for spec in specs:
        if not os.path.isfile(spec.path):
            raise DataError(f"matplotlib's bundled font {spec.name} is missing: expected file {spec.path}")
    return specs


def resolve_fonts(paths: list[str]) -> list[FontSpec]:
    """Font files (.ttf/.otf/.ttc/.otc) or folders of them -> one FontSpec per file, names made unique.

    A folder gives its font files (not those of its subfolders, nor hidden ones such as the ``._NAME``
    companions macOS writes); files of other font formats in it are named in a warning. A collection
    (.ttc) of several faces gives its first face, named in a warning. An empty list gives
    :func:`default_fonts`. Raises DataError naming the path for a missing path, a folder without fonts,
    a file of another kind, a font file PIL cannot read, or one font given twice (the same file, also
    through a link: two classes no model can tell apart); two files of identical bytes, or of one face
    (family and style), are named in a warning.
    """
    if not paths:
        return default_fonts()
    files: list[str] = []
    for p in paths:
        if os.path.isdir(p):
            listed = sorted(f for f in Path(p).iterdir() if f.is_file() and not f.name.startswith("."))
            found = [str(f) for f in listed if f.suffix.lower() in FONT_SUFFIXES]
            other = [f.name for f in listed if f.suffix.lower() in OTHER_FONT_SUFFIXES]
            unread = (f"; {len(other)} font file{'s' if len(other) != 1 else ''} of a format not read "
                      f"({', '.join(other[:3])}{', ...' if len(other) > 3 else ''}): convert them to .ttf or .otf"
                      if other else "")
            if not found:
                subfolders = sum(1 for f in Path(p).iterdir() if f.is_dir())
                raise DataError(f"expected font files ({', '.join(FONT_SUFFIXES)}) in folder {p}, found none" + unread
                                + (f" (its {subfolders} subfolder{'s are' if subfolders != 1 else ' is'} not "
                                   f"searched: give each)" if subfolders and not unread else ""))
            if other:
                log.warning("folder %s: %d font files read%s", p, len(found), unread)
            files.extend(found)
        elif os.path.isfile(p):
            if Path(p).suffix.lower() not in FONT_SUFFIXES:
                raise DataError(f"expected a font file ({', '.join(FONT_SUFFIXES)}), got {p}")
            files.append(p)
        else:
            raise DataError(f"font path does not exist: {p}")
    specs, seen = [], {}
    by_file: dict[tuple[int, int], str] = {}  # (device, inode) -> the path the file was first given as
    by_digest: dict[str, str] = {}            # SHA-256 of the bytes -> the path first given with them
    by_face: dict[tuple, str] = {}            # (family, style) -> the path first given with that face
    for path in files:
        try:
            face = ImageFont.truetype(path, 12)
        except (OSError, ValueError) as e:
            raise DataError(f"cannot read font file {path}: {e}") from e
        _note_collection(path)
        stat = os.stat(path)
        file_id = (stat.st_dev, stat.st_ino)
        if file_id in by_file:
            also = "" if by_file[file_id] == path else f" (also as {by_file[file_id]})"
            raise DataError(f"font file {path} is given twice{also}: two classes of one font cannot be told "
                            f"apart; give each font once")
        digest = file_digest(path)
        names = face.getname()
        if digest in by_digest:
            log.warning("font files %s and %s hold identical bytes: their two classes cannot be told apart",
                        by_digest[digest], path)
        elif names[0] and names in by_face:
            log.warning("font files %s and %s are both the face %s: two versions or formats of one font make two "
                        "classes that can hardly be told apart", by_face[names], path, " ".join(filter(None, names)))
        by_file[file_id], by_digest[digest] = path, path
        by_face.setdefault(names, path)
        stem = Path(path).stem
        seen[stem] = seen.get(stem, 0) + 1
        name = stem if seen[stem] == 1 else f"{stem}-{seen[stem]}"
        specs.append(FontSpec(name, path))
    return specs


def _note_collection(path: str) -> None:
    """Warn when a font file is a collection of several faces: its class is drawn in the first only."""
    try:
        from matplotlib.ft2font import FT2Font

        face = FT2Font(path)
    except Exception:  # noqa: BLE001 - PIL has read it; the count of faces is only for the warning
        return
    if face.num_faces > 1:
        log.warning("font file %s holds %d faces: its class is drawn in the first, %s %s (give each face as a "
                    "file of its own to train on the others)", path, face.num_faces, face.family_name,
                    face.style_name)


def file_digest(path: str) -> str:
    """The SHA-256 of a file's bytes, in hex. Remembered by the file's path, size and modification time:
    resolving the fonts, the render cache's key, the checkpoint's meta and eval's check all ask for it."""
    st = os.stat(path)
    return _digest(os.path.abspath(path), st.st_size, st.st_mtime_ns)


@lru_cache(maxsize=256)
def _digest(path: str, size: int, mtime_ns: int) -> str:
    with open(path, "rb") as fh:
        return hashlib.sha256(fh.read()).hexdigest()


@lru_cache(maxsize=None)
def _truetype(path: str, size: int) -> ImageFont.FreeTypeFont:
    # BASIC layout: the same pixels with or without libraqm installed.
    return ImageFont.truetype(path, size, layout_engine=ImageFont.Layout.BASIC)


def _reference_box(face: ImageFont.FreeTypeFont) -> tuple[int, int]:
    """Rows ``(top, bottom)`` of REFERENCE_TEXT's ink drawn at y = 0. A font without any of its letters
    (digits only, say, whose missing glyphs draw nothing) has no such ink: its line box, ascender to
    descender, stands in, so that it is not drawn at the largest size tried."""
    _, top, _, bottom = face.getbbox(REFERENCE_TEXT)
    if bottom > top:
        return top, bottom
    ascent, descent = face.getmetrics()
    return 0, ascent + descent


@lru_cache(maxsize=None)
def _sized_by_line_box(font: FontSpec) -> bool:
    """Whether the font has none of REFERENCE_TEXT's ink, so that :func:`_reference_box` gives its line box."""
    _, top, _, bottom = _truetype(font.path, 200).getbbox(REFERENCE_TEXT)
    return bottom <= top


@lru_cache(maxsize=None)
def font_size_for(font: FontSpec, height: int) -> int:
    """Largest font size whose REFERENCE_TEXT ink height is at most ``height - 2`` pixels."""
    target, size = max(height - 2, 1), 1
    for s in range(2, 4 * height + 1):
        top, bottom = _reference_box(_truetype(font.path, s))
        if bottom - top > target:
            break
        size = s
    return size


@lru_cache(maxsize=None)
def _layout(font: FontSpec, height: int) -> tuple[ImageFont.FreeTypeFont, int]:
    """The face at :func:`font_size_for` size and the y that centres REFERENCE_TEXT's ink vertically."""
    face = _truetype(font.path, font_size_for(font, height))
    top, bottom = _reference_box(face)
    return face, (height - (bottom - top)) // 2 - top


# Resolutions, relative to the output, at which resampled crops are drawn before they are resized: at
# height 16, like a user's line whose glyphs are about 12 to 30 px from ascenders to descenders.
RESAMPLE_RANGE = (0.85, 2.0)
# Font sizes of scaled glyphs are rounded to this step (points), so few faces are loaded and cached.
SIZE_STEP = 0.25


@lru_cache(maxsize=None)
def _ink_per_point(font: FontSpec) -> float:
    """REFERENCE_TEXT's ink height per point of font size, measured where hinting hardly matters."""
    top, bottom = _reference_box(_truetype(font.path, 200))
    return max(bottom - top, 1) / 200.0


def _scaled_layout(font: FontSpec, height: int, scale: float) -> tuple[ImageFont.FreeTypeFont, int]:
    """Like :func:`_layout`, with REFERENCE_TEXT's ink about ``scale * (height - 2)`` pixels high."""
    size = max(SIZE_STEP, round(scale * max(height - 2, 1) / _ink_per_point(font) / SIZE_STEP) * SIZE_STEP)
    return _sized_layout(font, height, size)


@lru_cache(maxsize=None)
def _sized_layout(font: FontSpec, height: int, size: float) -> tuple[ImageFont.FreeTypeFont, int]:
    face = _truetype(font.path, size)
    top, bottom = _reference_box(face)
    return face, (height - (bottom - top)) // 2 - top


@lru_cache(maxsize=65536)
def _advance(face: ImageFont.FreeTypeFont, char: str) -> float:
    return face.getlength(char)


def _ink_span(face: ImageFont.FreeTypeFont, text: str) -> tuple[int, int]:
    """Columns ``[left, right)`` that the ink of ``text`` drawn at x = 0 covers (exact, unlike getbbox)."""
    mask, (offset, _) = face.getmask2(text, "L")
    box = mask.getbbox()
    return (offset + box[0], offset + box[2]) if box else (0, 0)


@lru_cache(maxsize=65536)
def _ink_left(face: ImageFont.FreeTypeFont, char: str) -> int:
    return _ink_span(face, char)[0]


@lru_cache(maxsize=None)
def supported_chars(font: FontSpec) -> frozenset[str] | None:
    """Characters the font maps to their proper glyph; None when the character map cannot be read."""
    try:
        from matplotlib.ft2font import FT2Font

        face = FT2Font(font.path)
        charmap = face.get_charmap()
    except Exception as e:  # noqa: BLE001 - any failure means "unknown", not "broken"
        log.debug("cannot read the character map of %s (%s); assuming every character is drawn", font.path, e)
        return None
    chars = set()
    for code, glyph in charmap.items():
        c = chr(code)
        expected = _ASCII_GLYPHS.get(c)
        if expected is not None:
            name = face.get_glyph_name(glyph)
            if name and not _glyph_draws(name.split(".")[0], c, expected):
                continue
        chars.add(c)
    return frozenset(chars)


def _glyph_draws(name: str, char: str, expected: str) -> bool:
    """Whether a glyph of this PostScript name draws ``char``: one of the ``expected`` names, or a
    ``uniXXXX`` / ``uXXXXX`` name of a character that is ``char`` once normalised (NFKC) or a hyphen
    for ``-`` (fonts share one glyph among such characters: Liberation draws ';' with ``uni037E``,
    the Greek question mark, and '-' with ``uni00AD``, the soft hyphen)."""
    if name in expected.split():
        return True
    match = re.fullmatch(r"uni([0-9A-Fa-f]{4})|u([0-9A-Fa-f]{4,6})", name)
    if match is None:
        return False
    other = chr(int(match.group(1) or match.group(2), 16))
    return unicodedata.normalize("NFKC", other) == char or (char == "-" and other in HYPHENS)


HYPHENS = "\u00ad\u2010\u2011\u2212"  # soft hyphen, hyphen, non-breaking hyphen, minus: what '-' may share a glyph with


LEFT_OUT_SHOWN = 20  # distinct left-out characters a note names


def unshaped_chars(lines: list[str]) -> list[str]:
    """The distinct characters of ``lines`` that a layout without shaping cannot draw as they are printed
    (glyphs are drawn one after another, left to right): letters of right-to-left scripts (Hebrew,
    Arabic...) and spacing marks of scripts that reorder or join them (Devanagari and other Indic
    scripts), sorted."""
    return sorted(c for c in set("".join(lines))
                  if right_to_left(c) or unicodedata.category(c) == "Mc")


def drawable_lines(lines: list[str], fonts: list[FontSpec]) -> tuple[list[str], str]:
    """Lines restricted to the characters every font draws properly (others become spaces), spaces
    collapsed, lines left with fewer than two characters dropped; and a note of what was left out
    ("" when nothing was): each character with its count and the font(s) that lack it, and the
    number of lines dropped.

    The same alphabet for all fonts, so the set of characters never gives the font away.
    """
    charsets = [(f, supported_chars(f)) for f in fonts]
    sets = [s for _, s in charsets if s is not None]
    alphabet = frozenset.intersection(*sets) if sets else None
    out, left_out, dropped = [], Counter(), 0
    for line in lines:
        if alphabet is not None:
            left_out.update(c for c in line if c not in alphabet and not c.isspace())
            line = "".join(c if c in alphabet else " " for c in line)
        line = " ".join(line.split())
        if len(line) >= 2:
            out.append(line)
        else:
            dropped += 1
    parts = []
    if left_out:
        def lacking(c: str) -> str:
            names = [f.name for f, s in charsets if s is not None and c not in s]
            return "all fonts" if len(names) == len(sets) else names[0] if len(names) == 1 else f"{len(names)} fonts"

        shown = left_out.most_common(LEFT_OUT_SHOWN)
        listing = ", ".join(f"{c!r} x{n} ({lacking(c)})" for c, n in shown)
        more = f" and {len(left_out) - len(shown)} more" if len(left_out) > len(shown) else ""
        parts.append(f"left out {plural(sum(left_out.values()), 'character')} that not every font draws (the fonts share "
                     f"one alphabet, so that no character gives a font away): {listing}{more}")
    if dropped:
        parts.append(f"dropped {dropped:,} line{'s' if dropped != 1 else ''} left with fewer than 2 characters")
    return out, "; ".join(parts)


def clean_lines(lines: list[str], fonts: list[FontSpec], *, source: str = "the text") -> list[str]:
    """:func:`drawable_lines`, with what was left out named in one warning about ``source``."""
    out, note = drawable_lines(lines, fonts)
    if note:
        log.warning("%s: %s", source, note)
    return out


# ----------------------------------------------------------------------------------------- text

def load_text_lines(path: str | None) -> list[str]:
    """Non-empty stripped lines of a UTF-8 file (:func:`convrnn.data.text.decode_utf8`: no byte-order mark,
    UTF-16 refused with a way to convert it); ``None`` gives the embedded English corpus."""
    if path is None:
        raw = resources.files("convrnn.data").joinpath("corpus_default.txt").read_bytes()
        path = "<embedded corpus_default.txt>"
    else:
        if not os.path.exists(path):
            raise DataError(f"text file does not exist: {path}")
        if os.path.isdir(path):
            raise DataError(f"expected a text file, got a folder: {path}")
        with open(path, "rb") as fh:
            raw = fh.read()
    lines = [line.strip() for line in decode_utf8(raw, str(path)).splitlines()]
    lines = [line for line in lines if line]
    if not lines:
        raise DataError(f"expected at least one non-empty line of text, got none in {path}")
    return lines


# ------------------------------------------------------------------------------------ rendering

def render_line(text: str, font: FontSpec, *, height: int = 16, width: int = 64,
                rng: np.random.Generator | None = None, jitter: int = 2, scale_jitter: float = 0.0,
                resample: float = 0.0) -> np.ndarray:
    """Draw a width-filling crop of ``text`` in ``font``: uint8 ``(H, W)``, ink 255 on 0.

    With ``rng`` the crop starts at a random character (the line wraps around after a space) and the
    text is shifted by up to ``jitter`` pixels right and up or down; without it, the crop starts
    at the first character with no shift. With ``rng`` and ``scale_jitter`` > 0 the glyphs are also
    drawn at a random scale: REFERENCE_TEXT's ink is ``s * (height - 2)`` pixels high, ``s`` uniform in
    ``1 +- scale_jitter``, centred before the vertical shift. With ``rng``, a ``resample`` fraction of
    crops is drawn on a canvas ``r`` times larger (``r`` log-uniform in RESAMPLE_RANGE, glyphs and
    jitter scaled with it) and resized to ``height x width`` with an area filter, the way
    :func:`normalise_line` resizes a line drawn at another size. Glyphs are added while their ink
    fits inside the width.
    """
    if not text.strip():
        raise ValueError(f"expected text with at least one visible character, got {text!r}")
    if rng is not None and resample > 0 and rng.random() < resample:
        r = float(np.exp(rng.uniform(*np.log(RESAMPLE_RANGE))))
        big = _render_crop(text, font, max(6, round(height * r)), max(4, round(width * r)), rng,
                           round(jitter * r), scale_jitter)
        return np.asarray(Image.fromarray(big).resize((width, height), Image.BOX), dtype=np.uint8)
    return _render_crop(text, font, height, width, rng, jitter, scale_jitter)


def _render_crop(text: str, font: FontSpec, height: int, width: int, rng: np.random.Generator | None,
                 jitter: int, scale_jitter: float) -> np.ndarray:
    """:func:`render_line` drawn directly at ``height x width``."""
    face, top_y = _layout(font, height)
    start, dx, dy = 0, 0, 0
    if rng is not None:
        start = int(rng.integers(len(text)))
        if jitter:
            dx, dy = int(rng.integers(0, jitter + 1)), int(rng.integers(-jitter, jitter + 1))
        if scale_jitter > 0:
            face, top_y = _scaled_layout(font, height, float(rng.uniform(1.0 - scale_jitter, 1.0 + scale_jitter)))
    # Enough wrapped copies of the line to cover the width at any start (one char is >= 1 px).
    copies = 1 + (width + len(text)) // len(text)
    run = ((text + " ") * (copies + 1))[start:].lstrip()[: width + 1]
    x = dx - _ink_left(face, run[0])

    def fits(k: int) -> bool:
        return x + _ink_span(face, run[:k].rstrip())[1] <= width

    # Guess from the cached advances, then correct with the exact ink box (kerning, overhangs).
    k, pen = 0, x
    while k < len(run) and pen + _advance(face, run[k]) <= width:
        pen += _advance(face, run[k])
        k += 1
    k = max(k, 1)
    while k > 1 and not fits(k):
        k -= 1
    while k < len(run) and fits(k + 1):
        k += 1
    y = top_y + dy
    image = Image.new("L", (width, height), 0)
    ImageDraw.Draw(image).text((x, y), run[:k].rstrip(), font=face, fill=255)
    return np.asarray(image, dtype=np.uint8)


# ------------------------------------------------------------------------------- reading lines

# A pixel is ink when its contrast-stretched value (background 0, strongest ink 1) reaches this.
INK_THRESHOLD = 0.25
# An image whose strongest ink is this close to its background (as a fraction of 0..1) has no text.
MIN_CONTRAST = 0.1


def stretch_ink(ink: np.ndarray) -> np.ndarray | None:
    """Float ``(H, W)`` ink in 0..1 -> the same with the background (median) at 0 and the strongest ink
    at 1, clipped; None when nothing stands out from the background by :data:`MIN_CONTRAST`."""
    ink = np.asarray(ink, dtype=np.float32)
    background, strongest = float(np.median(ink)), float(ink.max())
    if strongest - background < MIN_CONTRAST:
        return None
    return np.clip((ink - background) / (strongest - background), 0.0, 1.0)


def ink_box(ink: np.ndarray) -> tuple[int, int, int, int]:
    """``(top, bottom, left, right)``, ends exclusive, of the pixels of stretched ink ``(H, W)`` that
    reach :data:`INK_THRESHOLD`. The ink must have some (see :func:`stretch_ink`)."""
    mask = ink >= INK_THRESHOLD
    rows, cols = np.nonzero(mask.any(axis=1))[0], np.nonzero(mask.any(axis=0))[0]
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1


def normalise_line(ink: np.ndarray, height: int) -> np.ndarray:
    """A line image of any size -> float32 ``(height, W')`` drawn like the training images.

    ``ink`` is float ``(H, W)`` in 0..1 with ink bright (``convrnn.data.images.to_ink``), already
    contrast-stretched (:func:`stretch_ink`). The box of its ink is cropped with a margin of one output
    pixel on every side and scaled, aspect ratio kept, so that the ink's rows fill ``height - 2``
    pixels: the height that a line's ascender-to-descender ink has in training. ``W'`` is the ink's
    width at that scale plus the two margin pixels, at least 1.
    """
    from PIL import Image

    top, bottom, left, right = ink_box(ink)
    scale = max(height - 2, 1) / (bottom - top)
    margin = 1.0 / scale                     # one output pixel, in input pixels
    out_w = max(1, int(round((right - left) * scale)) + 2)
    # zeros around the image: the margin (and the filter's reach past it) reads background
    pad = int(np.ceil(margin)) + 2
    padded = np.pad(ink.astype(np.float32), pad)
    box = (left - margin + pad, top - margin + pad, left - margin + pad + out_w / scale, bottom + margin + pad)
    image = Image.fromarray(padded).resize((out_w, height), Image.BOX, box=box)  # float32: mode "F"
    return np.clip(np.asarray(image, dtype=np.float32), 0.0, 1.0)


def line_windows(line: np.ndarray, width: int, stride: int | None = None) -> np.ndarray:
    """``(H, W')`` -> ``(N, H, width)``: windows of ``width`` columns every ``stride`` (default half a
    window), the last one ending at the line's right end. A line narrower than a window is one window,
    padded with background on the right as training images are after their last glyph."""
    h, w = line.shape
    stride = max(1, width // 2) if stride is None else stride
    if stride < 1:
        raise ValueError(f"stride must be at least 1, got {stride}")
    if w <= width:
        return np.pad(line, ((0, 0), (0, width - w)))[None]
    starts = list(range(0, w - width + 1, stride))
    if starts[-1] != w - width:
        starts.append(w - width)
    return np.stack([line[:, s:s + width] for s in starts])


def read_line_windows(path: str, height: int, width: int, stride: int | None = None) -> np.ndarray:
    """An image file of a text line (any size, dark-on-light or light-on-dark) -> float32 windows
    ``(N, height, width)`` with ink 1: :func:`normalise_line` then :func:`line_windows`.
    DataError naming the file when it is unreadable or blank."""
    from convrnn.data.images import load_gray

    return line_windows(normalise_line(read_ink(path, load_gray(path)), height), width, stride)


def read_ink(path: str, gray: np.ndarray, what: str = "text") -> np.ndarray:
    """Gray ``(H, W)`` uint8 read from ``path`` -> contrast-stretched ink (:func:`stretch_ink`); a
    DataError naming the file when the image is blank, so that nothing is read from an empty image.
    ``what`` names what the image should show, for the error."""
    from convrnn.data.images import to_ink

    ink = stretch_ink(to_ink(gray))
    if ink is None:
        raise DataError(f"{path}: the image is blank (no pixel differs from the background by "
                        f"{MIN_CONTRAST:.0%} of the gray range), so there is no {what} to read")
    return ink


# -------------------------------------------------------------------------------------- dataset

class FontsDataset:
    """Rendered samples of one split: ``images`` (N, H, W) uint8, ``labels`` (N,), ``line_ids`` (N,).

    ``line_ids[i]`` is the index, in the cleaned line list, of the line sample i was cut from.
    ``dataset[i]`` is ``(x, y)``: x ``(1, H, W)`` float32 in 0..1 with ink 1, y the font index.
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray, line_ids: np.ndarray, classes: list[str]):
        assert len(images) == len(labels) == len(line_ids)
        self.images, self.labels, self.line_ids, self.classes = images, labels, line_ids, classes

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        x = torch.from_numpy(self.images[i].astype(np.float32) / 255.0).unsqueeze(0)  # (H, W) -> (1, H, W)
        return x, int(self.labels[i])


def split_lines(num_lines: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded split of line indices into (train, val); val gets round(fraction * n), at least 1 if fraction > 0."""
    order = np.random.default_rng([seed, 0]).permutation(num_lines)
    n_val = 0 if val_fraction == 0 else max(1, round(val_fraction * num_lines))
    return np.sort(order[n_val:]), np.sort(order[:n_val])


def _render_split(fonts: list[FontSpec], lines: list[str], line_set: np.ndarray, per_font: int,
                  config: FontsDataConfig, rng: np.random.Generator, tick: Callable[[], None], *,
                  resample: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    n = per_font * len(fonts)
    images = np.zeros((n, config.height, config.width), dtype=np.uint8)
    labels = np.repeat(np.arange(len(fonts), dtype=np.int64), per_font)
    line_ids = rng.choice(line_set, size=n) if n else np.zeros(0, dtype=np.int64)
    for i in range(n):
        images[i] = render_line(lines[line_ids[i]], fonts[labels[i]], height=config.height, width=config.width,
                                rng=rng, jitter=config.jitter, scale_jitter=config.scale_jitter,
                                resample=resample)
        tick()
    return images, labels, line_ids.astype(np.int64)


def _cache_key(fonts: list[FontSpec], lines: list[str], config: FontsDataConfig) -> str:
    from PIL import __version__ as pil_version

    key = {"format": FORMAT_VERSION, "pillow": pil_version, "freetype": ImageFont.core.freetype2_version,
           # a font sized by its line box (no REFERENCE_TEXT ink) is marked, as its size follows another rule
           "fonts": [[f.name, os.path.abspath(f.path), file_digest(f.path)] + (["line box"] if _sized_by_line_box(f) else [])
                     for f in fonts],
           "text": hashlib.sha256("\n".join(lines).encode("utf-8")).hexdigest(),
           **{k: v for k, v in asdict(config).items() if k not in ("fonts", "text", "cache_dir")}}
    return json.dumps(key, sort_keys=True)


def _load_cache(path: str, key: str) -> dict | None:
    if not os.path.exists(path):
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        if str(arrays.pop("key")) != key:
            raise ValueError("key mismatch")
        return arrays
    except Exception as e:  # noqa: BLE001 - any unreadable cache is rebuilt
        log.warning("fonts cache %s is unreadable (%s: %s); rendering again", path, type(e).__name__, e)
        return None


def _save_cache(path: str, key: str, arrays: dict) -> None:
    # atomic_write_with streams np.savez into a temporary file beside the cache (no second copy of the
    # arrays in memory) and renames it; on failure it removes the temporary file and raises WriteError
    try:
        atomic_write_with(path, lambda fh: np.savez(fh, key=np.array(key), **arrays))
    except OSError as e:  # WriteError included: the data is rendered, only the cache is lost
        log.warning("fonts cache not written, the next run renders again: %s", e if str(path) in str(e) else f"{path}: {e}")


def make_fonts_data(config: FontsDataConfig, *, progress: Callable[[int, int], None] | None = None,
                    use_cache: bool = True, min_fonts: int = 1) -> tuple[FontsDataset, FontsDataset, dict]:
    """Render (or load from the cache) the train and val splits of the fonts dataset; fewer fonts than
    ``min_fonts`` (training needs 2 to tell apart) is a DataError before any line is drawn.

    Returns ``(train, val, meta)`` with meta ``{"classes", "height", "width", "fonts", "alphabet",
    "num_lines", "cache"}``. ``progress(done, total)`` is called while rendering.
    """
    check(config, "data")
    fonts = resolve_fonts(list(config.fonts))
    if len(fonts) < min_fonts:
        raise DataError(f"--fonts {', '.join(config.fonts)}: {len(fonts)} font ({fonts[0].name}); telling fonts "
                        f"apart needs at least {min_fonts}: give each with --fonts, or a folder of them")
    source = config.text if config.text is not None else "<embedded corpus>"
    lines, note = drawable_lines(load_text_lines(config.text), fonts)
    if len(lines) < 2:
        raise DataError(f"expected at least 2 text lines the fonts can draw (to split train/val), "
                        f"got {len(lines)} in {source}" + (f": {note}" if note else ""))
    if not config.fonts:
        log.info("fonts: the %d faces bundled with matplotlib (no --fonts given)", len(fonts))
    if config.text is None:
        log.info("text: the English text embedded in the package (no --text given)")
    if note:
        log.warning("%s: %s", source, note)
    unshaped = unshaped_chars(lines)
    if unshaped:
        log.warning("%s: characters of scripts written right to left or with joined or reordered letters (%s%s, "
                    "%d distinct) are drawn without shaping, one glyph after another from left to right, so the "
                    "crops look unlike printed lines of these scripts", source, " ".join(unshaped[:10]),
                    " ..." if len(unshaped) > 10 else "", len(unshaped))
    train_lines, val_lines = split_lines(len(lines), config.val_fraction, config.seed)
    n_val = round(config.samples_per_font * config.val_fraction)
    n_train = config.samples_per_font - n_val

    key = _cache_key(fonts, lines, config)
    cache_path = None
    if use_cache:
        name = "fonts-" + hashlib.sha256(key.encode("utf-8")).hexdigest()[:24] + ".npz"
        cache_path = os.path.join(config.cache_dir or cache_dir("fonts"), name)
    t0 = time.perf_counter()
    arrays = _load_cache(cache_path, key) if cache_path else None
    if arrays is not None:
        log.info("loaded %d fonts images from cache %s in %.2f s",
                 len(arrays["train_images"]) + len(arrays["val_images"]), cache_path, time.perf_counter() - t0)
    else:
        total, done = len(fonts) * config.samples_per_font, [0]

        def tick() -> None:
            done[0] += 1
            if progress is not None and (done[0] % 64 == 0 or done[0] == total):
                progress(done[0], total)

        arrays = {}
        for split, line_set, per_font in (("train", train_lines, n_train), ("val", val_lines, n_val)):
            rng = np.random.default_rng([config.seed, 1 if split == "train" else 2])
            # resized crops teach robustness; validation reads crops drawn at the model's size
            resample = config.resample if split == "train" else 0.0
            images, labels, line_ids = _render_split(fonts, lines, line_set, per_font, config, rng, tick,
                                                     resample=resample)
            arrays.update({f"{split}_images": images, f"{split}_labels": labels, f"{split}_line_ids": line_ids})
        log.info("rendered %d fonts images (%d fonts) in %.2f s", total, len(fonts), time.perf_counter() - t0)
        if cache_path:
            _save_cache(cache_path, key, arrays)

    classes = [f.name for f in fonts]
    train, val = (FontsDataset(arrays[f"{s}_images"], arrays[f"{s}_labels"], arrays[f"{s}_line_ids"], classes)
                  for s in ("train", "val"))
    alphabet = "".join(sorted(set("".join(lines))))
    meta = {"classes": classes, "height": config.height, "width": config.width,
            "fonts": [f.path for f in fonts], "font_digests": [file_digest(f.path) for f in fonts],
            "alphabet": alphabet, "num_lines": {"train": len(train_lines), "val": len(val_lines)},
            "cache": cache_path}
    return train, val, meta
