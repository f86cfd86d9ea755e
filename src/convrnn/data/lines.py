"""Text-line images with transcriptions: folder, TSV manifest and page XML readers, scaling, batching.

Three on-disk formats (the kraken/calamari/ocropy convention, a manifest, and whole pages):

- a folder of ``name.png`` (any image Pillow reads) next to ``name.gt.txt`` (UTF-8 transcription);
- a TSV manifest, one ``path<TAB>text`` per line, paths relative to the manifest's folder. Paths that
  leave that folder (``../x.png``, absolute paths elsewhere) are refused unless allowed;
- page XML (ALTO or PAGE, e.g. an eScriptorium or Transkribus export): one ``.xml`` file, a folder of
  them, or a glob pattern; lines are cut from the page images (``convrnn.data.pages``) and cached.

Every line is read once, before training: turned into ink-bright uint8 (ink 255 on 0, dark-on-light
scans inverted), scaled to a fixed height keeping its aspect ratio. Bad samples (unreadable or empty
images, missing or empty transcriptions, text that is not UTF-8) are skipped, counted and logged by
file name, so nothing can fail mid-epoch; ``strict`` turns the first one into a DataError instead.
Transcriptions are put in a Unicode normal form (NFC unless ``normalize`` says otherwise) with
whitespace runs collapsed to one space.
"""
# B batch, C channels (1), H height, W width
from __future__ import annotations

import logging
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Callable, Iterable, Optional, Sequence

import numpy as np
import torch

from convrnn.data.augment import AUGMENT_SETS, LineAugment, augment_lines, batch_rng, line_grid
from convrnn.data.batching import IndexedBatches
from convrnn.data.images import IMAGE_SUFFIXES, load_gray, scale_to_height, to_ink
from convrnn.data.pages import (NORMAL_FORMS, TOO_WIDE, check_normal_form, collect_lines, normalize_text,
                                page_name, page_root, page_sources, read_pages)
from convrnn.data.text import base_direction, decode_utf8, right_to_left, round_trips
from convrnn.errors import ConfigError, DataError, DataNotFound
from convrnn.fields import checked, one_of, path_field, seed_field

log = logging.getLogger(__name__)

GT_SUFFIX = ".gt.txt"


@dataclass
class LinesDataConfig:
    """Where the lines come from and how they are shaped. ``data`` and ``synthetic`` exclude each other."""

    data: str = path_field()       # folder of name.png + name.gt.txt, a TSV manifest (path<TAB>text), or page
                                   # XML (ALTO/PAGE): a .xml file, a folder of them or a glob pattern
    val: str = path_field()        # validation lines, same forms; empty = val_fraction of `data`
    test: str = path_field()       # optional test lines, same forms
    synthetic: str = one_of("", "digits", "text")  # generated lines instead of `data`
    height: int = checked(32, lambda v: v >= 8, "at least 8")  # every line is scaled to this height, keeping its aspect ratio
    max_width: int = checked(2048, lambda v: v >= 0, "0 or more")  # lines wider than this after scaling are skipped (0 = no limit)
    val_fraction: float = 0.1
    allow_outside_root: bool = False  # manifest paths may leave the manifest's folder
    strict: bool = False           # a bad sample is an error instead of a counted skip
    normalize: str = one_of("NFC", *NORMAL_FORMS)  # Unicode form of the transcriptions (or none)
    # right-to-left scripts: the paragraph direction that texts are put in display order with for
    # training, and readings back in logical order (reading_base): auto = that of most training lines,
    # rtl, ltr; none = texts taken as they are (transcriptions already in display order)
    bidi: str = one_of("auto", "rtl", "ltr", "none")
    seed: int = seed_field()
    # synthetic lines (see convrnn.data.synthetic_lines)
    num_train: int = checked(20000, lambda v: v >= 1, "at least 1")
    num_val: int = checked(1000, lambda v: v >= 1, "at least 1")
    num_test: int = checked(1000, lambda v: v >= 0, "0 or more")
    max_digits: int = checked(8, lambda v: v >= 1, "at least 1")  # digits: strings of 1..max_digits digits
    rotate: float = checked(0.0, lambda v: 0 <= v <= 45, "0..45 degrees")  # digits: training digits turn by up to this (0 = off)
    zoom: float = checked(0.0, lambda v: 0 <= v < 0.5, "0 <= zoom < 0.5")  # digits: training digits scale by up to 1 +- zoom
    elastic: float = checked(0.0, lambda v: 0 <= v <= 5, "0..5 pixels")  # digits: training digits bend by up to this many pixels
    # any lines: every training batch distorted afresh, line by line (convrnn.data.augment); 0 turns each off.
    # `augment` names the set that fills the distortions not set one by one: auto = handwriting for lines
    # read from files, none for synthetic lines (settled when a run starts; the saved config has the values)
    augment: str = one_of("auto", *AUGMENT_SETS)
    # horizontal shear of a whole line, up to this many pixels per pixel of height
    slant: float = checked(0.0, lambda v: 0 <= v <= 1, "0..1 pixels per pixel of height")
    # smooth random displacement, up to this many pixels, control points BEND_SPACING apart
    bend: float = checked(0.0, lambda v: 0 <= v <= 5, "0..5 pixels")
    tilt: float = checked(0.0, lambda v: 0 <= v <= 10, "0..10 degrees")  # rotation about the line's centre
    stretch_x: float = checked(0.0, lambda v: 0 <= v <= 0.5, "0..0.5")  # horizontal scale within 1 +- stretch_x (frames follow)
    stretch_y: float = checked(0.0, lambda v: 0 <= v <= 0.5, "0..0.5")  # vertical scale within 1 +- stretch_y
    stroke: float = checked(0.0, lambda v: 0 <= v <= 1, "0..1 pixels")  # strokes thicker or thinner per side (3x3 max/min)
    contrast: float = checked(0.0, lambda v: 0 <= v <= 1, "0..1")  # ink multiplied by a gain within 1 +- contrast
    brightness: float = checked(0.0, lambda v: 0 <= v <= 1, "0..1")  # within +-brightness added to the pixels (clipped)
    mnist_dir: str = path_field(keep=("sklearn",))  # digits: MNIST IDX folder (empty = $CONVRNN_MNIST_DIR or the cache)
    text: str = path_field()       # text: UTF-8 file of lines to render (empty = embedded corpus)
    fonts: list[str] = path_field([])  # text: font files/folders (empty = matplotlib's)
    max_chars: int = checked(32, lambda v: v >= 2, "at least 2")  # text: longest rendered line in characters

    def check_together(self) -> list[tuple]:
        return [(bool(self.data) != bool(self.synthetic), "data/synthetic",
                 "exactly one of --data DIR|MANIFEST|XML or --synthetic digits|text",
                 f"data={self.data!r}, synthetic={self.synthetic!r}")]


@dataclass
class LineSet:
    """Lines of one split: ink-bright uint8 images ``(H, W_i)`` of one height, texts and names."""

    images: list[np.ndarray]
    texts: list[str]
    names: list[str]
    skipped: dict[str, str] = field(default_factory=dict)  # name -> why it was left out

    def __post_init__(self):
        assert len(self.images) == len(self.texts) == len(self.names)
        self.widths = np.array([im.shape[1] for im in self.images], dtype=np.int64)

    def __len__(self) -> int:
        return len(self.images)

    def subset(self, indices: Iterable[int]) -> "LineSet":
        idx = list(indices)
        return LineSet([self.images[i] for i in idx], [self.texts[i] for i in idx], [self.names[i] for i in idx])


# ---------------------------------------------------------------------------------------- images

def prepare_line(path: str | Path, height: int) -> np.ndarray:
    """An image file -> ink-bright uint8 ``(height, W)``; DataError when unreadable, empty or blank."""
    gray = load_gray(path)
    ink = (to_ink(gray) * 255.0 + 0.5).astype(np.uint8)
    if int(ink.max()) - int(ink.min()) == 0:
        raise DataError(f"{path}: the image is blank (every pixel is {int(ink.max())})")
    return scale_to_height(ink, height)


def read_transcription(path: Path, normalize: str = "NFC") -> str:
    """The stripped UTF-8 text of a ``.gt.txt`` file in Unicode form ``normalize``; DataError when
    missing, not UTF-8 or empty."""
    if not path.is_file():
        raise DataError(f"{path}: missing transcription")
    text = decode_utf8(path.read_bytes(), str(path))  # a byte-order mark would become a character of the alphabet
    text = normalize_text(text, normalize)  # one line: newlines and runs of spaces become one space
    if not text:
        raise DataError(f"{path}: empty transcription")
    return text


# --------------------------------------------------------------------------------------- readers

def _folder_entries(folder: Path) -> list[tuple[str, Optional[Path], Optional[str]]]:
    """``(name, image path, transcription)`` for every image/.gt.txt stem in ``folder`` (sorted)."""
    images = {}
    for p in sorted(folder.iterdir()):
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.endswith(GT_SUFFIX):
            images.setdefault(p.name[: -len(p.suffix)], p)
    gts = {p.name[: -len(GT_SUFFIX)] for p in folder.iterdir() if p.name.endswith(GT_SUFFIX)}
    if images and not gts:  # page scans exported without their XML, or line images not yet transcribed
        raise DataError(f"{folder}: {len(images)} image{'s' if len(images) > 1 else ''} and no transcription "
                        f"(name{GT_SUFFIX} beside name.png) or page XML; for page scans, give their ALTO or "
                        f"PAGE XML files (exported with them)")
    entries = []
    for stem in sorted(set(images) | gts):
        entries.append((stem, images.get(stem), None))
    return entries


def _manifest_entries(manifest: Path, allow_outside_root: bool,
                      normalize: str = "NFC") -> list[tuple[str, Optional[Path], Optional[str]]]:
    root = manifest.parent.resolve()
    lines = decode_utf8(manifest.read_bytes(), str(manifest)).splitlines()  # a byte-order mark would lead the first path
    entries = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        if "\t" not in line:
            raise DataError(f"{manifest}:{number}: expected 'path<TAB>text', got {line[:60]!r} (no tab)")
        rel, text = line.split("\t", 1)
        path = (root / rel.strip()).resolve()
        if not allow_outside_root and not path.is_relative_to(root):
            raise DataError(f"{manifest}:{number}: path {rel!r} leaves the dataset folder {root}; "
                            f"set data.allow_outside_root=true to allow it")
        entries.append((f"{rel.strip()} (line {number})", path, normalize_text(text, normalize)))
    return entries


def find_source(source: str) -> Optional[list[Path]]:
    """The page XML files of ``source`` (None for a folder of line images or a manifest); a source that
    does not exist is a DataError naming it. Cheap: run on every source before any is read, so a typo
    in the last one stops the run before minutes of cutting the others."""
    xml_paths = page_sources(source)
    if xml_paths is None and Path(source).is_file() and Path(source).suffix.lower() in IMAGE_SUFFIXES:
        raise DataError(f"{source}: an image file, where lines are read from a folder of name.png + name.gt.txt, "
                        f"a TSV file of path<TAB>text, or ALTO/PAGE XML (for a page scan, give its XML file)")
    if xml_paths is None and not Path(source).exists():
        raise DataNotFound(f"{source}: no such folder or manifest (expected a folder of name.png + name.gt.txt, "
                        f"a TSV file of path<TAB>text, or ALTO/PAGE XML: a .xml file, a folder of them or a glob "
                        f"pattern)")
    return xml_paths


def read_lines(source: str, *, height: int, max_width: int = 0, allow_outside_root: bool = False,
               strict: bool = False, normalize: str = "NFC", workers: Optional[int] = None,
               progress: Optional[Callable[[int, int], None]] = None) -> LineSet:
    """Every good line of a folder, TSV manifest or page XML source (a ``.xml`` file, a folder of them, a
    glob pattern), scaled to ``height``; bad ones skipped and counted. Page lines are cut over
    ``workers`` processes (default: every core this process may use) and cached."""
    check_normal_form(normalize)
    xml_paths = find_source(source)
    if xml_paths is not None:
        return _read_page_lines(source, xml_paths, height=height, max_width=max_width, strict=strict,
                                normalize=normalize, workers=workers, progress=progress)
    path = Path(source)
    if path.is_dir():
        entries = _folder_entries(path)
    else:
        entries = _manifest_entries(path, allow_outside_root, normalize)
    if not entries:
        raise DataError(f"{source}: expected line images with transcriptions, found none")
    images, texts, names, skipped = [], [], [], {}
    for k, (name, image_path, text) in enumerate(entries):
        try:
            if image_path is None:
                raise DataError(f"{path / name}: a transcription without an image ({name}{GT_SUFFIX})")
            if text is None:  # folder format: read the .gt.txt next to the image
                text = read_transcription(image_path.with_name(name + GT_SUFFIX), normalize)
            elif not text:
                raise DataError(f"{name}: empty transcription")
            ink = prepare_line(image_path, height)
            if max_width and ink.shape[1] > max_width:
                raise DataError(f"{image_path}: {ink.shape[1]} pixels wide at height {height}, "
                                f"more than data.max_width={max_width}")
        except DataError as e:
            if strict:
                raise
            skipped[name] = str(e)
            continue
        finally:
            if progress is not None:
                progress(k + 1, len(entries))
        images.append(ink)
        texts.append(text)
        names.append(name)
    if skipped:
        shown = "; ".join(list(skipped.values())[:10])
        log.warning("%s: skipped %d of %d lines (%s%s)", source, len(skipped), len(entries), shown,
                    "; ..." if len(skipped) > 10 else "")
    if not images:
        raise DataError(f"{source}: {'its one line is' if len(entries) == 1 else f'all {len(entries):,} lines are'} "
                        f"bad, none left to use "
                        f"(first problem: {next(iter(skipped.values()))})")
    lines = LineSet(images, texts, names)
    lines.skipped = skipped
    return lines


def _read_page_lines(source: str, paths: list[Path], *, height: int, max_width: int, strict: bool,
                     normalize: str, workers: Optional[int], progress) -> LineSet:
    """The transcribed lines of page XML files (``read_lines`` for ALTO/PAGE sources)."""
    root = page_root(source)
    names = [page_name(p, root) for p in paths]
    pages = read_pages(paths, height=height, workers=workers, progress=progress)
    got = collect_lines(pages, names, normalize=normalize, require_text=True, strict=strict,
                        ignore_other_xml=len(paths) > 1 or Path(source).is_dir())
    if max_width:
        for k in reversed(range(len(got.images))):
            width = got.images[k].shape[1]
            if width > max_width:
                message = (f"{got.names[k]}: {width} pixels wide at height {height}, "
                           f"more than data.max_width={max_width}")
                if strict:
                    raise DataError(message)
                got.skip(got.names[k], TOO_WIDE, message)
                del got.images[k], got.texts[k], got.names[k]
    if got.pages == 0 and got.bad_pages == 0:
        raise DataError(f"{source}: expected ALTO or PAGE XML files, found none ({len(paths)} other .xml files)")
    if got.skipped and got.images:  # with none left, the error below names the first problem alone
        log.warning("%s: %s", source, got.summary())
    if not got.images:
        first = next(iter(got.skipped.values()), "the pages have no lines")
        if first.startswith(f"{source}: "):  # one file: its problem is the message
            raise DataError(f"{first}; no transcribed lines left to use")
        n = got.pages + got.bad_pages
        raise DataError(f"{source}: no transcribed lines left to use in {n} page{'s' if n != 1 else ''} "
                        f"(first problem: {first})")
    lines = LineSet(got.images, got.texts, got.names)
    lines.skipped = got.skipped
    return lines


# ------------------------------------------------------------------------------------ alphabets

def build_alphabet(texts: Iterable[str]) -> list[str]:
    """The sorted distinct characters of the training transcriptions (the CTC labels 1..V-1)."""
    chars = sorted(set("".join(texts)))
    if not chars:
        raise DataError("expected training transcriptions with at least one character, got none")
    return chars


def reading_base(texts: Sequence[str], setting: str, source: Optional[str] = None) -> Optional[str]:
    """The paragraph direction (``"L"`` or ``"R"``) a run puts its texts in display order with
    (``CTCTask.visual``), from ``data.bidi`` (``setting``): ``auto`` takes that of most training
    ``texts`` (:func:`~convrnn.data.text.base_direction`), ``rtl`` and ``ltr`` force one; ``none``
    gives None (texts taken as they are). With ``source``, says so when some texts hold right-to-left
    characters."""
    if setting == "none":
        return None
    base = {"rtl": "R", "ltr": "L"}.get(setting) or base_direction(texts)
    rtl = [t for t in texts if right_to_left(t)] if source else []
    if rtl and source:
        log.info("%s: %d of %d training lines hold right-to-left characters (%r); the model learns texts in "
                 "display order, paragraphs %s (data.bidi=%s), and its readings come back in logical order",
                 source, len(rtl), len(texts), rtl[0][:40], "right to left" if base == "R" else "left to right",
                 setting)
        astray = [t for t in rtl if not round_trips(t, base)]
        if astray:  # a reading in display order cannot tell these from another logical order
            log.warning("%s: %d of those %d texts would not come back as written from their display order "
                        "with paragraphs %s, e.g. %r; readings of such lines can differ from the transcription "
                        "in the order of numbers or words around right-to-left text%s", source, len(astray),
                        len(rtl), "right to left" if base == "R" else "left to right", astray[0][:40],
                        " (--bidi rtl reads them as right-to-left paragraphs)" if base == "L" else "")
    return base


def unseen_characters(texts: Iterable[str], alphabet: Sequence[str]) -> dict[str, int]:
    """``{character: count}`` of characters in ``texts`` that are not in ``alphabet``."""
    known, counts = set(alphabet), {}
    for text in texts:
        for ch in text:
            if ch not in known:
                counts[ch] = counts.get(ch, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: -kv[1]))


def split_lines(lines: LineSet, val_fraction: float, seed: int) -> tuple[LineSet, LineSet]:
    """A seeded split by distinct transcription, so no validation text appears in training."""
    if not 0.0 < val_fraction < 1.0:
        raise ConfigError(f"data.val_fraction: expected a fraction in (0, 1) to split off validation lines, "
                          f"got {val_fraction}")
    distinct = sorted(set(lines.texts))
    if len(distinct) < 2:
        raise DataError(f"need at least 2 distinct transcriptions to split off validation lines, got {len(distinct)}")
    order = np.random.default_rng(seed).permutation(len(distinct))
    n_val = min(max(1, int(round(len(distinct) * val_fraction))), len(distinct) - 1)
    val_texts = {distinct[i] for i in order[:n_val]}
    val_idx = [i for i, t in enumerate(lines.texts) if t in val_texts]
    train_idx = [i for i, t in enumerate(lines.texts) if t not in val_texts]
    return lines.subset(train_idx), lines.subset(val_idx)


# -------------------------------------------------------------------------------------- batches

PAD_WIDTH_TO = 32  # batch widths are rounded up to a multiple: few distinct shapes for the CPU kernels


def warp_lines(x: torch.Tensor, rng: np.random.Generator, *, slant: float = 0.0, bend: float = 0.0) -> torch.Tensor:
    """Warp each line of ``x`` ``(B, 1, H, W)`` by a random slant and a smooth random bend (one resampling).

    The slant is a horizontal shear about the middle row, drawn within +-``slant`` pixels per pixel of
    height (0.2 leans a 32-pixel line by up to 3 pixels at its top and bottom). The bend moves control
    points ``BEND_SPACING`` pixels apart along the width (three over the height) by up to ``bend``
    pixels along each axis and interpolates between them bicubically, so neighbouring characters of one
    line bend differently: the per-character distortion of Simard et al. (2003) for whole lines. The
    width, and so the line's length in frames, does not change; ink moved past the padding is cut off.
    ``convrnn.data.augment.augment_lines`` adds rotation, scale, stroke width and contrast to these.
    """
    b, _, h, w = x.shape
    if b == 0 or (slant <= 0 and bend <= 0):
        return x
    grid = line_grid(b, h, w, rng, slant=slant, bend=bend)  # (B, H, W, 2) in -1..1
    return torch.nn.functional.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def line_augment(cfg: LinesDataConfig) -> LineAugment:
    """The training-batch distortions ``cfg`` asks for."""
    return LineAugment(**{f.name: getattr(cfg, f.name) for f in fields(LineAugment)})


def line_fetcher(lines: LineSet, pad_to: int = PAD_WIDTH_TO, *, slant: float = 0.0, bend: float = 0.0,
                 seed: int = 0, augment: Optional[LineAugment] = None) -> Callable[[np.ndarray], dict]:
    """Batches padded on the right: ``x`` ``(B, 1, H, W)`` in 0..1, ``lengths`` the lines' own widths.

    ``W`` is the widest line rounded up to a multiple of ``pad_to``: CPU convolution kernels are
    prepared once per input shape (seconds each), so a few width buckets train much faster than a
    new width in every batch; ``lengths`` keep the padding out of the loss and the decoding.

    Targets are not encoded here: the CTC task encodes ``texts`` with its own alphabet (the
    checkpoint's at evaluation), so a validation text with unseen characters cannot break a batch.
    ``augment`` (or only ``slant`` and ``bend``) distorts every batch with draws from ``seed`` and the
    batch's line indices (``augment.batch_rng``): the same batch is distorted the same way, so a resumed
    run replays it. Slant and bend alone warp as ``warp_lines``; anything more goes through
    ``augment_lines``, which may also change ``lengths`` (a horizontal scale) and ``W``.
    """
    aug = augment if augment is not None else LineAugment(slant=slant, bend=bend)

    def fetch(idx: np.ndarray) -> dict:
        items = [lines.images[int(i)] for i in idx]
        height, widest = items[0].shape[0], max(im.shape[1] for im in items)
        width = -(-widest // pad_to) * pad_to
        x = np.zeros((len(items), height, width), dtype=np.uint8)
        for k, im in enumerate(items):
            x[k, :, : im.shape[1]] = im
        x_t = torch.from_numpy(x).unsqueeze(1).float().div_(255.0)  # (B, H, W) -> (B, 1, H, W)
        lengths = torch.from_numpy(lines.widths[idx])
        if aug.active:
            rng = batch_rng(seed, idx)
            if aug.warp_only:
                x_t = warp_lines(x_t, rng, slant=aug.slant, bend=aug.bend)
            else:
                x_t, lengths = augment_lines(x_t, lengths, rng, aug, pad_to)
        return {"x": x_t, "lengths": lengths,
                "texts": [lines.texts[int(i)] for i in idx], "ids": [lines.names[int(i)] for i in idx]}

    return fetch


def line_batches(lines: LineSet, batch_size: int, *, shuffle: bool = True, seed: int = 0, slant: float = 0.0,
                 bend: float = 0.0, augment: Optional[LineAugment] = None) -> IndexedBatches:
    """Batches of lines of similar width (``sort_key``): less padding, same resumable order; ``augment``
    (or only ``slant`` and ``bend``) distorts each batch (``line_fetcher``; for training batches)."""
    widths = lines.widths
    fetch = line_fetcher(lines, slant=slant, bend=bend, seed=seed, augment=augment)
    return IndexedBatches(range(len(lines)), batch_size, fetch=fetch, shuffle=shuffle, seed=seed,
                          sort_key=lambda i: int(widths[i]))


def write_line_folder(lines: LineSet, folder: str | Path, *, dark_on_light: bool = True) -> Path:
    """Write ``lines`` as ``NNNNNN.png`` + ``NNNNNN.gt.txt`` (for other tools, e.g. kraken's ketos)."""
    from PIL import Image

    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    for k, (image, text) in enumerate(zip(lines.images, lines.texts)):
        pixels = 255 - image if dark_on_light else image
        Image.fromarray(pixels).save(out / f"{k:06d}.png")
        (out / f"{k:06d}{GT_SUFFIX}").write_text(text + "\n", encoding="utf-8")
    return out
