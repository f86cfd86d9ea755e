"""Text lines from page XML: ALTO (v2-v4) and PAGE (2013, 2019), as exported by eScriptorium,
Transkribus or kraken.

Reading: every ``TextLine`` of a page, in file order, is cut from the page image named in the XML
(``sourceImageInformation/fileName`` in ALTO, ``Page/@imageFilename`` in PAGE; looked up next to the
XML file, then one folder up, where Transkribus puts its ``page/`` folder):

- the line's region is its polygon (ALTO ``Shape/Polygon``, PAGE ``Coords``), else its ALTO rectangle
  (``HPOS``/``VPOS``/``WIDTH``/``HEIGHT``), else a band around its baseline reaching ``BAND_ABOVE`` of
  the page's line spacing above it and ``BAND_BELOW`` below it;
- the line is read along its baseline (first point to last), so a baseline that runs vertically or
  right to left is turned to read left to right; a line without a baseline is read along the long side
  of its polygon, left to right (top to bottom when it stands upright);
- a curved baseline is straightened by moving every column of pixels up or down until the baseline is
  straight: characters lean where the line bends, but no ink inside the polygon is cut off;
- pixels outside the region become the line's background, and the levels are stretched so the
  background (a high percentile of the pixels inside the region) is 0 and the darkest ink 255.

The cut lines are scaled to a fixed height and cached on disk, one file per page, keyed by the
contents of the XML and of the image and by the extraction parameters; pages are cut in parallel.

Writing: :func:`write_page_texts` copies an XML file, giving chosen lines new text (ALTO: one
``String`` with ``CONTENT`` and ``WC``; PAGE: ``TextEquiv`` with ``@conf`` and ``Unicode``), dropping what
describes their old text (PAGE: their ``Word`` elements, their regions' ``TextEquiv``, Transkribus tags
at character offsets and the Transkribus page status; ALTO: ``CC`` and the correction status ``CS``) and
leaving every other byte of the file as it was.
"""
# H height, W width, N points (x, y), P pixels
from __future__ import annotations

import glob
import hashlib
import io
import json
import logging
import math
import os
import re
import sys
import time
import unicodedata
import warnings
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np

from convrnn.data.images import load_gray, scale_to_height
from convrnn import files
from convrnn.errors import ConfigError, DataError, DataNotFound

log = logging.getLogger(__name__)

ALTO, PAGE = "alto", "page"
NORMAL_FORMS = ("NFC", "NFD", "NFKC", "NFKD", "none")
# a baseline-only line reaches this many line spacings above its baseline, and BAND_BELOW below it
# (descenders). Against the polygons of 34 Copiste pages (handwriting), this band leaves out more than
# 2% of a line's ink for 5% of the lines and takes in a median 3% more ink from neighbouring lines
# (0.75/0.35: 8% and 2%; 0.9/0.45: 2% and 6%)
BAND_ABOVE = 0.8
BAND_BELOW = 0.4
DEFAULT_LINES_PER_PAGE = 40  # line spacing = page height / this, where the page has no two baselines to measure
BACKGROUND_PERCENTILE = 80   # of the pixels inside a line: its paper
INK_PERCENTILE = 1           # of the pixels inside a line: its darkest ink
MIN_CONTRAST = 32            # grey levels: a line fainter than this is not stretched further
EXTRACT_VERSION = 3          # bump when extraction or text reading changes, so cached lines are cut again
ASPECT_TOLERANCE = 0.02      # relative: a page image whose aspect ratio differs more from the XML's is another image

# kinds of bad input, as counted in the skip summary
BAD_XML = "XML does not parse"
NO_XML = "XML file missing or unreadable"
NOT_PAGE = "not ALTO or PAGE XML"
BAD_IMAGE = "page image missing or unreadable"
NO_AREA = "polygon with no area"
OUTSIDE = "polygon outside the page"
NO_GEOMETRY = "no polygon or baseline"
BAD_COORDS = "coordinates do not parse"
NO_TEXT = "no text"
UNCLEAR_TEXT = "transcription not usable"
BLANK = "blank line"
TOO_WIDE = "too wide"
CANNOT_CUT = "cannot be cut"


class PageError(DataError):
    """A page or line that cannot be used; ``kind`` is one of the kinds above."""

    def __init__(self, message: str, kind: str):
        super().__init__(message)
        self.kind = kind

    def __reduce__(self):  # pickled back from extraction workers with its kind
        return PageError, (str(self), self.kind)


class NotPageXml(PageError):
    """An XML file whose root is neither ALTO's ``alto`` nor PAGE's ``PcGts`` (e.g. a METS file)."""

    def __init__(self, message: str):
        super().__init__(message, NOT_PAGE)

    def __reduce__(self):
        return NotPageXml, (str(self),)


@dataclass
class BadLine:
    """A line left out: its id, the kind of problem, the rest of the one-line message, and its position
    among the file's lines."""

    id: str
    kind: str
    detail: str = ""
    index: int = -1

    def message(self, page_name: str) -> str:
        return f"{page_name}:{self.id}: {self.kind}{self.detail}"


# ------------------------------------------------------------------------------------------ text

def normalize_text(text: str, form: str = "NFC") -> str:
    """``text`` in Unicode normal form ``form`` (or as it is for ``none``), whitespace runs collapsed to
    one space and stripped."""
    if form != "none":
        text = unicodedata.normalize(form, text)
    return " ".join(text.split())


def check_normal_form(form: str) -> str:
    if form not in NORMAL_FORMS:
        raise ConfigError(f"data.normalize: expected one of {', '.join(NORMAL_FORMS)}, got {form!r}")
    return form


# --------------------------------------------------------------------------------------- parsing

@dataclass
class PageLine:
    """One ``TextLine``: its position among the file's lines, id, transcription and geometry."""

    index: int                        # 0-based, among all TextLine elements in file order
    id: str                           # the line's ID, or line_<index+1> when it has none
    text: Optional[str]               # as in the file (None: no transcription element)
    polygon: Optional[np.ndarray]     # (N, 2) region outline in page pixels
    baseline: Optional[np.ndarray]    # (N, 2) baseline in page pixels, first point = start of reading
    error: Optional[BadLine] = None   # a geometry problem found while parsing
    text_problem: Optional[str] = None  # why a transcription in the file cannot be used (text is then None)


@dataclass
class Page:
    path: Path
    kind: str                         # ALTO or PAGE
    image_name: str                   # as written in the XML
    size: Optional[tuple[float, float]]  # declared (width, height), when the XML gives one
    lines: list[PageLine] = field(default_factory=list)


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def parse_points(text: Optional[str]) -> np.ndarray:
    """``"x1,y1 x2,y2"``, ``"x1 y1 x2 y2"`` or ``"(x1, y1) ..."`` -> ``(N, 2)`` floats; ValueError when the
    text is not an even number of finite numbers."""
    if text is None or not text.strip():
        raise ValueError("missing")
    tokens = text.replace(",", " ").replace("(", " ").replace(")", " ").split()
    if not tokens or len(tokens) % 2:
        raise ValueError(f"expected pairs of numbers, got {text[:60]!r}")
    try:
        values = np.array([float(t) for t in tokens], dtype=np.float64)
    except ValueError:
        bad = next(t for t in tokens if _number(t) is None and t.lower() not in ("inf", "-inf", "nan"))
        raise ValueError(f"{bad!r} is not a number, in {text[:60]!r}") from None
    if not np.all(np.isfinite(values)):
        raise ValueError(f"expected finite numbers, got {text[:60]!r}")
    return values.reshape(-1, 2)


def _number(value: Optional[str]) -> Optional[float]:
    try:
        x = float(value) if value is not None else None
    except ValueError:
        return None
    return x if x is not None and math.isfinite(x) else None


def _alto_line(el: ET.Element, ns: str, index: int) -> PageLine:
    line_id = el.get("ID") or f"line_{index + 1}"
    error, polygon, baseline = None, None, None
    # text: Strings are words, SP spaces and HYP the hyphen at the end of the line
    parts, texted, missing = [], False, 0
    for child in el:
        tag = child.tag
        if tag == ns + "String":
            content = child.get("CONTENT")
            missing += content is None  # CONTENT is required: a word whose text is not there
            parts.append(" " + (content or "") if parts else (content or ""))
            texted = True
        elif tag == ns + "SP":
            parts.append(" ")
        elif tag == ns + "HYP":
            parts.append(child.get("CONTENT") or "")
    text = "".join(parts) if texted else None
    problem = None
    if missing:
        text, problem = None, f"Strings without CONTENT: {missing} of {sum(c.tag == ns + 'String' for c in el)}"
    shape = el.find(f"{ns}Shape/{ns}Polygon")
    try:
        if shape is not None and (shape.get("POINTS") or "").strip():
            polygon = parse_points(shape.get("POINTS"))
        raw = el.get("BASELINE")
        if raw is not None and raw.strip():
            numbers = raw.replace(",", " ").split()
            if len(numbers) == 1:  # ALTO v2/v3: the y of a horizontal baseline across the line's box
                y, x, w = _number(numbers[0]), _number(el.get("HPOS")), _number(el.get("WIDTH"))
                if y is None:
                    raise ValueError(f"{numbers[0]!r} is not a number, in BASELINE")
                if x is not None and w is not None:
                    baseline = np.array([[x, y], [x + w, y]])
            else:
                baseline = parse_points(raw)
    except ValueError as e:
        error = BadLine(line_id, BAD_COORDS, f" ({e})", index)
    if polygon is None and error is None:  # the line's rectangle, when it has one
        box = [_number(el.get(k)) for k in ALTO_BOX]
        if all(v is not None for v in box) and box[2] > 0 and box[3] > 0:
            x, y, w, h = box
            polygon = np.array([[x, y], [x + w, y], [x + w, y + h], [x, y + h]])
    return PageLine(index, line_id, text, polygon, baseline, error, problem)


def _page_text(el: ET.Element, ns: str) -> tuple[Optional[str], Optional[str]]:
    """``(text, problem)``: the Unicode of an element's own TextEquiv (the lowest @index when there are
    several, the first of equal ones), or None and why that TextEquiv cannot be read (PAGE requires
    exactly one Unicode of plain text); ``(None, None)`` without a TextEquiv."""
    equivs = el.findall(ns + "TextEquiv")
    if not equivs:
        return None, None
    ranks = [_number(eq.get("index")) for eq in equivs]
    main = min(range(len(equivs)), key=lambda k: ranks[k] if ranks[k] is not None else math.inf)
    unis = equivs[main].findall(ns + "Unicode")
    if len(unis) != 1:
        if unis:
            return None, f"a TextEquiv with {len(unis)} Unicode elements"
        plain = ", only PlainText" if equivs[main].find(ns + "PlainText") is not None else ""
        return None, f"a TextEquiv without Unicode{plain}"
    if len(unis[0]):
        return None, "a Unicode element holding elements"
    return unis[0].text or "", None


def _page_points(el: Optional[ET.Element], ns: str) -> Optional[np.ndarray]:
    if el is None:
        return None
    if el.get("points") is not None:  # an empty outline (some exports write one) is no outline
        return parse_points(el.get("points")) if el.get("points").strip() else None
    pts = [(p.get("x"), p.get("y")) for p in el.findall(ns + "Point")]  # the 2010 schema's form
    return parse_points(" ".join(f"{x} {y}" for x, y in pts)) if pts else None


def _page_line(el: ET.Element, ns: str, index: int) -> PageLine:
    line_id = el.get("id") or f"line_{index + 1}"
    text, problem = _page_text(el, ns)
    words = el.findall(ns + "Word")
    if text is None and problem is None and words:  # no line-level text: the words', when they have some
        read = [_page_text(w, ns) for w in words]
        bad = next((f"Word {w.get('id')}: {p}" for w, (_, p) in zip(words, read) if p), None)
        untexted = sum(t is None for t, _ in read)
        if bad:
            problem = bad
        elif untexted < len(words):
            if untexted:  # joining the others would drop words from the transcription
                problem = f"Words without text: {untexted} of {len(words)}, and no line-level text"
            else:
                text = " ".join(t for t, _ in read if t)
    error, polygon, baseline = None, None, None
    try:
        polygon = _page_points(el.find(ns + "Coords"), ns)
        baseline = _page_points(el.find(ns + "Baseline"), ns)
    except ValueError as e:
        error = BadLine(line_id, BAD_COORDS, f" ({e})", index)
    return PageLine(index, line_id, text, polygon, baseline, error, problem)


def xml_root(path: Path, data: bytes) -> ET.Element:
    # expat knows UTF-8 only by that name; a file declaring it as "UTF8" or "utf_8" (which other XML
    # readers take) would fail at its first non-ASCII character, so UTF-8 by any name is parsed as such
    parser = ET.XMLParser(encoding="UTF-8") if _is_utf8(_declared_encoding(data)) else None
    try:
        return ET.fromstring(data, parser=parser)
    except ET.ParseError as e:
        raise PageError(f"{path}: {BAD_XML} ({e})", BAD_XML) from None


def page_kind(root: ET.Element) -> tuple[str, str]:
    """``(ALTO or PAGE, "{namespace}")`` of a parsed root element; NotPageXml for anything else."""
    tag = root.tag
    ns = tag[: tag.index("}") + 1] if tag.startswith("{") else ""
    local = _local(tag)
    if local.lower() == "alto":
        return ALTO, ns
    if local == "PcGts":
        return PAGE, ns
    raise NotPageXml(f"{NOT_PAGE} (root element {local!r})")


def parse_page(path: str | Path, data: Optional[bytes] = None) -> Page:
    """The lines of one ALTO or PAGE file, in file order; DataError (one line) when it does not parse."""
    path = Path(path)
    if data is None:
        try:
            data = path.read_bytes()
        except OSError as e:
            raise PageError(f"{path}: cannot read ({e.strerror or e})", NO_XML) from None
    root = xml_root(path, data)
    try:
        kind, ns = page_kind(root)
    except NotPageXml as e:
        raise NotPageXml(f"{path}: {e}") from None
    if kind == ALTO:
        file_el = root.find(f"{ns}Description/{ns}sourceImageInformation/{ns}fileName")
        image_name = (file_el.text or "").strip() if file_el is not None else ""
        page_el = root.find(f".//{ns}Page")
        size = None
        if page_el is not None:
            w, h = _number(page_el.get("WIDTH")), _number(page_el.get("HEIGHT"))
            size = (w, h) if w and h and w > 0 and h > 0 else None
        unit_el = root.find(f"{ns}Description/{ns}MeasurementUnit")
        unit = (unit_el.text or "").strip() if unit_el is not None else ""
        if unit not in ("", "pixel"):
            # mm10 and inch1200 are scaled to the image by the Page's size, as the ALTO schema says to
            if unit not in ("mm10", "inch1200"):
                raise PageError(f"{path}: MeasurementUnit {unit!r} is none of ALTO's (pixel, mm10, inch1200)",
                                BAD_COORDS)
            if size is None:
                raise PageError(f"{path}: coordinates in {unit!r} and no Page WIDTH and HEIGHT to scale them to "
                                f"the image by (export the ALTO file with pixel coordinates)", BAD_COORDS)
        lines = [_alto_line(el, ns, k) for k, el in enumerate(root.iter(ns + "TextLine"))]
    else:
        page_el = root.find(ns + "Page")
        image_name = (page_el.get("imageFilename") or "").strip() if page_el is not None else ""
        size = None
        if page_el is not None:
            w, h = _number(page_el.get("imageWidth")), _number(page_el.get("imageHeight"))
            size = (w, h) if w and h and w > 0 and h > 0 else None
        lines = [_page_line(el, ns, k) for k, el in enumerate(root.iter(ns + "TextLine"))]
    if not image_name:
        raise PageError(f"{path}: names no page image (expected "
                        f"{'sourceImageInformation/fileName' if kind == ALTO else 'Page/@imageFilename'})", BAD_IMAGE)
    return Page(path, kind, image_name, size, lines)


def _image_names(name: str) -> list[str]:
    """The file name an XML gives for its image, and the same name decoded when it is a URL (``file:///``,
    ``https://``) or holds %-escapes (``scan%20001.jpg``)."""
    from urllib.parse import unquote, urlsplit

    names = [name]
    url = urlsplit(name)
    if len(url.scheme) > 1 and url.path:  # a scheme, not a Windows drive letter
        names.append(unquote(url.path))
    elif "%" in name:
        names.append(unquote(name))
    return list(dict.fromkeys(names))


def find_image(page: Page) -> Path:
    """The page image: the XML's file name next to the XML file (also its base name alone, and both one
    folder up, where Transkribus exports keep the images of their ``page/`` folder); a URL or %-escaped
    name also decoded. Only these exact names: an image of another extension or case is named in the
    error, never used."""
    folder = page.path.parent
    candidates, bases = [], []
    for name in _image_names(page.image_name):
        base = name.replace("\\", "/").rsplit("/", 1)[-1]
        if os.path.isabs(name):
            candidates.append(Path(name))
        # one folder up, the name as given too: OCR-D workspaces name images from the folder above the XML's
        candidates += [folder / name, folder / base, folder.parent / name, folder.parent / base]
        bases.append(base)
    for p in candidates:
        if p.is_file():
            return p
    # files that differ only in extension or case (scan.jpg for scan.tif, scan.jpg for scan.JPG)
    stems = {Path(b).stem.lower() for b in bases if b}
    near = []
    for d in (folder, folder.parent):
        try:
            near += sorted(str(p) for p in d.iterdir()
                           if p.stem.lower() in stems and p.suffix.lower() != ".xml" and p.is_file())
        except OSError:  # a folder that cannot be listed only loses the hint
            pass
    hint = (f"; found {', '.join(near[:3])}, whose name differs in extension or case (fix the XML or the "
            f"file name)" if near else "")
    looked = f"{folder}" if folder.resolve() == folder.parent.resolve() else f"{folder} and {folder.parent}"
    raise PageError(f"{page.path}: page image {page.image_name!r} not found (looked in {looked}){hint}", BAD_IMAGE)


# ------------------------------------------------------------------------------------ geometry

def _polygon_area(poly: np.ndarray) -> float:
    x, y = poly[:, 0], poly[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


def _second_moments(poly: np.ndarray) -> np.ndarray:
    """``(2, 2)`` covariance of the area inside a simple polygon ``(N, 2)`` (not of its vertices, so
    unevenly spaced vertices do not tilt it): Green's theorem, edge by edge."""
    x, y = poly[:, 0] - poly[:, 0].mean(), poly[:, 1] - poly[:, 1].mean()  # centred for precision
    x1, y1 = np.roll(x, -1), np.roll(y, -1)
    c = x * y1 - x1 * y
    area = c.sum() / 2
    cx = ((x + x1) * c).sum() / (6 * area)
    cy = ((y + y1) * c).sum() / (6 * area)
    sxx = ((x * x + x * x1 + x1 * x1) * c).sum() / (12 * area) - cx * cx
    syy = ((y * y + y * y1 + y1 * y1) * c).sum() / (12 * area) - cy * cy
    sxy = ((x * y1 + 2 * x * y + 2 * x1 * y1 + x1 * y) * c).sum() / (24 * area) - cx * cy
    return np.array([[sxx, sxy], [sxy, syy]])


def _distinct(points: Optional[np.ndarray]) -> Optional[np.ndarray]:
    """Points without consecutive repeats; None when fewer than 2 distinct points remain."""
    if points is None or len(points) < 2:
        return None
    keep = np.ones(len(points), dtype=bool)
    keep[1:] = np.any(np.abs(np.diff(points, axis=0)) > 1e-9, axis=1)
    points = points[keep]
    return points if len(points) >= 2 else None


def _unit(v: np.ndarray) -> Optional[np.ndarray]:
    n = float(np.hypot(v[0], v[1]))
    return v / n if n > 1e-9 else None


def reading_direction(baseline: Optional[np.ndarray], polygon: Optional[np.ndarray]) -> np.ndarray:
    """Unit vector along which the line reads: its baseline's first to last point; without one, the long
    axis of its polygon (left to right, or top to bottom when upright); else left to right."""
    if baseline is not None:
        d = _unit(baseline[-1] - baseline[0])
        if d is not None:
            return d
    if polygon is not None and len(polygon) >= 3 and _polygon_area(polygon) >= 1.0:
        evals, evecs = np.linalg.eigh(_second_moments(polygon))  # ascending eigenvalues
        if evals[1] > 4.0 * max(evals[0], 1e-9):  # clearly longer than wide (2:1 in extent)
            d = evecs[:, 1]
            if abs(d[1]) > abs(d[0]):
                return d if d[1] > 0 else -d
            return d if d[0] > 0 else -d
    return np.array([1.0, 0.0])


def line_spacing(baselines: Sequence[np.ndarray], page_height: float) -> float:
    """The typical distance between neighbouring baselines of a page (median over lines of the nearest
    baseline that overlaps along the reading direction); page height / DEFAULT_LINES_PER_PAGE without
    two such baselines."""
    lines = [b for b in baselines if b is not None]
    gaps = []
    if len(lines) >= 2:
        longest = max(lines, key=lambda b: float(np.hypot(*(b[-1] - b[0]))))
        d = _unit(longest[-1] - longest[0])
        n = np.array([-d[1], d[0]])
        spans = [((b @ d).min(), (b @ d).max(), float((b @ n).mean())) for b in lines]
        for i, (lo, hi, v) in enumerate(spans):
            near = [abs(v2 - v) for j, (lo2, hi2, v2) in enumerate(spans)
                    if j != i and lo2 < hi and lo < hi2 and abs(v2 - v) > 1.0]
            if near:
                gaps.append(min(near))
    return float(np.median(gaps)) if gaps else page_height / DEFAULT_LINES_PER_PAGE


def baseline_band(baseline: np.ndarray, spacing: float) -> np.ndarray:
    """``(N, 2)`` polygon around ``baseline``: BAND_ABOVE spacings above it, BAND_BELOW below (perpendicular
    to the line's overall direction)."""
    d = reading_direction(baseline, None)
    n = np.array([-d[1], d[0]])  # "down" for a line read along d
    top = baseline - BAND_ABOVE * spacing * n
    bottom = baseline + BAND_BELOW * spacing * n
    return np.concatenate([top, bottom[::-1]])


def _row_extremes(mask: np.ndarray) -> np.ndarray:
    """``(P, 2)`` x, y of the first and last set pixel of every row of ``mask`` ``(H, W)``: every extreme
    point of the set in any direction is among them (a pixel between two others of its row is not)."""
    on = mask > 0
    rows = np.nonzero(on.any(axis=1))[0]
    first = on[rows].argmax(axis=1)
    last = on.shape[1] - 1 - on[rows, ::-1].argmax(axis=1)
    return np.concatenate([np.stack([first, rows], 1), np.stack([last, rows], 1)]).astype(np.float64)


def _affine(image, size: tuple[int, int], origin: np.ndarray, du: np.ndarray, dv: np.ndarray):
    """Pillow image ``size`` (W, H) whose pixel (c, r) is ``image`` bilinearly sampled at pixel coordinates
    ``origin + c * du + r * dv`` (0 outside). Pillow maps pixel centres (offset 0.5), hence the shift."""
    from PIL import Image

    x0 = origin[0] + 0.5 - 0.5 * du[0] - 0.5 * dv[0]
    y0 = origin[1] + 0.5 - 0.5 * du[1] - 0.5 * dv[1]
    coeffs = (du[0], dv[0], x0, du[1], dv[1], y0)
    return image.transform(size, Image.AFFINE, coeffs, resample=Image.BILINEAR, fillcolor=0)


def cut_line(gray: np.ndarray, line: PageLine, spacing: float) -> np.ndarray:
    """Ink-bright uint8 ``(H, W)`` of one line of a dark-on-light page ``gray`` ``(H, W)``, at the page's
    resolution, read left to right; raises _Unusable (with the BadLine) when the line cannot be cut."""
    from PIL import Image, ImageDraw

    page_h, page_w = gray.shape
    baseline = _distinct(line.baseline)
    polygon = line.polygon
    if polygon is not None and (len(polygon) < 3 or _polygon_area(polygon) < 1.0):
        if baseline is None:
            raise _bad(line.id, NO_AREA)
        polygon = None  # a degenerate outline, but a baseline to go by
    if polygon is None:
        if baseline is None:
            raise _bad(line.id, NO_GEOMETRY)
        polygon = baseline_band(baseline, spacing)
    # the region on the page, clipped; coordinates far off the page are pulled in so that drawing stays
    # exact on the page and integer-safe off it
    far = 4.0 * max(page_w, page_h)
    polygon = np.clip(polygon, -far, far)
    lo, hi = polygon.min(axis=0), polygon.max(axis=0)
    x0, y0 = max(0, int(math.floor(lo[0]))), max(0, int(math.floor(lo[1])))
    x1, y1 = min(page_w, int(math.ceil(hi[0])) + 1), min(page_h, int(math.ceil(hi[1])) + 1)
    if x1 - x0 < 1 or y1 - y0 < 1:
        raise _bad(line.id, OUTSIDE, f" ({page_w}x{page_h} pixels)")
    mask_im = Image.new("L", (x1 - x0, y1 - y0), 0)
    ImageDraw.Draw(mask_im).polygon([(float(x) - x0, float(y) - y0) for x, y in polygon], fill=255, outline=255)
    mask = np.asarray(mask_im)
    crop = gray[y0:y1, x0:x1]
    counts = np.bincount(crop[mask > 0], minlength=256)  # the line's grey levels
    if counts.sum() == 0:
        raise _bad(line.id, OUTSIDE, f" ({page_w}x{page_h} pixels)")
    cdf = np.cumsum(counts) / counts.sum()
    paper = int(np.searchsorted(cdf, BACKGROUND_PERCENTILE / 100.0))
    ink = int(np.searchsorted(cdf, INK_PERCENTILE / 100.0))
    # levels: paper and brighter -> 0, the darkest ink -> 255; outside the region -> 0
    lut = np.clip((paper - np.arange(256)) * (255.0 / max(paper - ink, MIN_CONTRAST)), 0, 255).astype(np.uint16)
    inked = ((lut[crop] * mask + 127) // 255).astype(np.uint8)
    # the line's frame: u along the reading direction d, v towards the bottom of the letters (n)
    d = reading_direction(baseline, polygon)
    n = np.array([-d[1], d[0]])
    origin = (baseline[0] if baseline is not None else polygon.mean(axis=0)) - [x0, y0]  # crop coordinates
    if baseline is not None and len(baseline) > 2:  # a bent baseline: its offset from the straight one
        bu = (baseline - [x0, y0] - origin) @ d
        bv = (baseline - [x0, y0] - origin) @ n
        order = np.argsort(bu, kind="stable")
        bu, bv = bu[order], bv[order]
        bend = lambda u: np.round(np.interp(u, bu, bv))  # noqa: E731  whole pixels keep strokes crisp
    else:
        bend = lambda u: np.zeros_like(u)  # noqa: E731
    edge = _row_extremes(mask) - origin  # (P, 2)
    pu = edge @ d
    pv = edge @ n - bend(pu)
    # a grid of one-pixel steps placed so that an axis-aligned line samples whole pixels (an exact copy)
    ou, on = float(origin @ d), float(origin @ n)
    u0 = math.floor(ou + pu.min()) - ou
    v0 = math.floor(on + pv.min()) - on
    width = int(math.floor(pu.max() - u0)) + 1
    height = int(math.floor(pv.max() - v0)) + 1
    shifts = bend(u0 + np.arange(width)).astype(np.int64)  # (W,)
    low, high = int(shifts.min()), int(shifts.max())
    corner = origin + (u0 * d) + (v0 + low) * n
    size = (width, height + high - low)
    pixels = np.asarray(_affine(Image.fromarray(inked), size, corner, d, n))  # (H + bend range, W)
    if high > low:  # straighten: each column moves by its baseline's offset
        rows = np.arange(height)[:, None] + (shifts - low)[None, :]
        pixels = pixels[rows, np.arange(width)[None, :]]
    if int(pixels.max()) == 0:
        raise _bad(line.id, BLANK, " (no ink inside its region)")
    return pixels


class _Unusable(Exception):
    def __init__(self, bad: BadLine):
        self.bad = bad


def _bad(line_id: str, kind: str, detail: str = "") -> _Unusable:
    return _Unusable(BadLine(line_id, kind, detail))


def dark_on_light(gray: np.ndarray) -> bool:
    """True when a page's ink is darker than its background: the darker tail of its pixel values is the
    longer one (the ink is the minority). Independent of how bright the paper is (dark parchment)."""
    sample = gray[::4, ::4]
    lo, mid, hi = np.percentile(sample, [1, 50, 99])
    return bool(mid - lo >= hi - mid)


# ------------------------------------------------------------------------------------ one page

@dataclass
class PageLines:
    """The lines cut from one page file: images at one height with their ids and raw texts."""

    path: Path
    kind: str = ""
    images: list[np.ndarray] = field(default_factory=list)   # ink-bright uint8 (height, W_i)
    ids: list[str] = field(default_factory=list)
    indices: list[int] = field(default_factory=list)         # positions among the file's TextLines
    texts: list[Optional[str]] = field(default_factory=list)  # as in the file; None when absent
    problems: list[Optional[str]] = field(default_factory=list)  # why a text is None though the file has one
    bad: list[BadLine] = field(default_factory=list)          # lines left out
    page_error: Optional[PageError] = None                    # the whole page left out
    cached: bool = False
    notes: list[str] = field(default_factory=list)            # warnings about the page as a whole

    def line_ids(self) -> dict[int, str]:
        """Each line's id by its position in the file, good and bad lines alike, unique within the page
        (:func:`unique_ids`)."""
        order = sorted([(k, self.ids[j]) for j, k in enumerate(self.indices)] + [(b.index, b.id) for b in self.bad])
        return dict(zip([k for k, _ in order], unique_ids([line_id for _, line_id in order])))


def unique_ids(ids: Sequence[str]) -> list[str]:
    """The ids of a page's lines in file order, made unique: lines that share an id (schema-invalid, but
    exports have them) are told apart as ``id``, ``id#2``, ``id#3``, ... so that no two results or
    messages name the same line."""
    seen: dict[str, int] = {}
    out = []
    for line_id in ids:
        seen[line_id] = seen.get(line_id, 0) + 1
        out.append(line_id if seen[line_id] == 1 else f"{line_id}#{seen[line_id]}")
    return out


def _turned(shape: tuple[int, int], size: tuple[float, float]) -> bool:
    """True when an image of ``shape`` (H, W) has the aspect of a page of ``size`` (W, H) only when
    turned a quarter: its XML was made from the image as its EXIF orientation shows it."""
    h, w = shape
    page_w, page_h = size
    if min(h, w, page_w, page_h) <= 0:
        return False
    return abs((w / h) / (page_w / page_h) - 1) > 0.02 and abs((h / w) / (page_w / page_h) - 1) <= 0.02


_EXIF_TURNS = {2: "mirrored", 3: "turned 180°", 4: "mirrored upside down", 5: "mirrored and turned a quarter",
               6: "turned a quarter clockwise", 7: "mirrored and turned a quarter", 8: "turned a quarter anticlockwise"}


def _orientation_note(path: Path, image: Path, shape: tuple[int, int], size: Optional[tuple[float, float]],
                      turned: bool) -> Optional[str]:
    """A warning for a scan whose EXIF orientation is not applied where the page's size cannot tell
    whether its XML was drawn on the pixels as stored or as a viewer shows them (a half turn or a
    mirroring keeps the size; so does any turn of a square page, or a page of no declared size)."""
    from PIL import Image

    try:
        with Image.open(image) as im:
            orientation = im.getexif().get(0x0112)
    except Exception:  # noqa: BLE001 - the pixels were read; a header that cannot be read again has no tag
        return None
    if turned or orientation not in _EXIF_TURNS:
        return None
    if orientation >= 5 and size is not None and _turned(shape[::-1], size):
        return None  # the XML's page has the stored pixels' shape, not the turned one: read as stored
    return (f"{path}: page image {image.name} is stored {_EXIF_TURNS[orientation]} from how a viewer shows it "
            f"(EXIF orientation {orientation}); its lines are cut from the pixels as stored, as page XML "
            f"coordinates usually are; if its XML was drawn on the image as shown, save the image upright "
            f"(without the tag) and read it again")


def extract_page(xml_path: str | Path, height: int) -> PageLines:
    """Every line of one page file cut and scaled to ``height``; problems recorded, never raised."""
    path = Path(xml_path)
    result = PageLines(path)
    try:
        page = parse_page(path)
        result.kind = page.kind
        image_path = find_image(page)
        try:
            # the pixels as stored, unless the page XML's size is that of the image turned as its EXIF
            # orientation says (an export made from the turned image)
            gray = load_gray(image_path, upright=False)
            turned = page.size is not None and _turned(gray.shape, page.size)
            if turned:
                gray = load_gray(image_path)
        except DataError as e:
            raise PageError(f"{path}: {e}", BAD_IMAGE) from None
        note = _orientation_note(path, image_path, gray.shape, page.size, turned)
        if note:
            result.notes.append(note)
    except PageError as e:
        result.page_error = e
        return result
    if not dark_on_light(gray):  # light ink on a dark page: turn it dark on light like a paper scan
        gray = 255 - gray
    if page.size is not None:  # coordinates of a page declared at another size (a resized image)
        sx, sy = gray.shape[1] / page.size[0], gray.shape[0] / page.size[1]
        if abs(sx / sy - 1) > ASPECT_TOLERANCE:  # not this image resized: coordinates would land elsewhere
            result.page_error = PageError(
                f"{path}: page image {image_path.name} is {gray.shape[1]}x{gray.shape[0]} pixels, and the XML "
                f"describes a page of {page.size[0]:g}x{page.size[1]:g}, another shape (not the image its lines "
                f"were drawn on)", BAD_IMAGE)
            return result
        if abs(sx - 1) > 1e-3 or abs(sy - 1) > 1e-3:
            for line in page.lines:
                line.polygon = None if line.polygon is None else line.polygon * [sx, sy]
                line.baseline = None if line.baseline is None else line.baseline * [sx, sy]
    spacing = line_spacing([_distinct(ln.baseline) for ln in page.lines], gray.shape[0])
    for line in page.lines:
        if line.error is not None:
            result.bad.append(line.error)
            continue
        try:
            ink = cut_line(gray, line, spacing)
        except _Unusable as e:
            e.bad.index = line.index
            result.bad.append(e.bad)
            continue
        except (ValueError, ArithmeticError, IndexError, MemoryError) as e:  # geometry nothing above foresaw
            result.bad.append(BadLine(line.id, CANNOT_CUT, f" ({type(e).__name__}: {str(e)[:100]})", line.index))
            continue
        result.images.append(scale_to_height(ink, height))
        result.ids.append(line.id)
        result.indices.append(line.index)
        result.texts.append(line.text)
        result.problems.append(line.text_problem)
    return result


def _extract_job(args: tuple) -> PageLines:
    return extract_page(*args)


# ------------------------------------------------------------------------------------ the cache

def cache_key(xml: bytes, image: bytes, height: int) -> str:
    h = hashlib.sha256()
    params = {"version": EXTRACT_VERSION, "height": height, "band": [BAND_ABOVE, BAND_BELOW],
              "levels": [BACKGROUND_PERCENTILE, INK_PERCENTILE, MIN_CONTRAST], "spacing": DEFAULT_LINES_PER_PAGE}
    h.update(json.dumps(params, sort_keys=True).encode())
    for part in (xml, image):
        h.update(len(part).to_bytes(8, "little"))
        h.update(part)
    return h.hexdigest()


def _save_cache(path: Path, lines: PageLines) -> None:
    from convrnn.files import atomic_write_bytes

    widths = np.array([im.shape[1] for im in lines.images], dtype=np.int64)
    height = lines.images[0].shape[0] if lines.images else 0
    pixels = np.concatenate(lines.images, axis=1) if lines.images else np.zeros((0, 0), np.uint8)  # (H, sum W)
    meta = {"kind": lines.kind, "ids": lines.ids, "indices": lines.indices, "texts": lines.texts,
            "problems": lines.problems, "notes": lines.notes,
            "bad": [[b.id, b.kind, b.detail, b.index] for b in lines.bad], "height": height}
    buffer = io.BytesIO()
    # compressed: ink-bright lines are mostly 0 (copiste/train: 54 MB instead of about 330)
    np.savez_compressed(buffer, pixels=pixels, widths=widths, meta=np.array(json.dumps(meta)))
    try:
        atomic_write_bytes(path, buffer.getvalue())
    except Exception as e:  # noqa: BLE001 - the cache only saves time; a read-only disk is not an error
        log.debug("page cache: cannot write %s (%s)", path, e)


def _load_cache(path: Path, xml_path: Path) -> Optional[PageLines]:
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            pixels, widths, meta = z["pixels"], z["widths"], json.loads(str(z["meta"]))
        edges = np.concatenate([[0], np.cumsum(widths)])
        images = [np.ascontiguousarray(pixels[:, a:b]) for a, b in zip(edges[:-1], edges[1:])]
        return PageLines(xml_path, meta["kind"], images, list(meta["ids"]), list(meta["indices"]),
                         list(meta["texts"]), list(meta["problems"]), [BadLine(*b) for b in meta["bad"]],
                         cached=True, notes=list(meta.get("notes", [])))
    except Exception as e:  # noqa: BLE001 - an unreadable cache file is cut again
        log.debug("page cache: ignoring %s (%s)", path, e)
        return None


# -------------------------------------------------------------------------------------- sources

GLOB_CHARS = "*?["
ALTO_BOX = ("HPOS", "VPOS", "WIDTH", "HEIGHT")  # an ALTO element's rectangle


def page_sources(source: str) -> Optional[list[Path]]:
    """The XML files ``source`` names (one file, a folder's ``*.xml``, or a glob pattern), sorted; None
    when ``source`` is something else (a folder of line images, a TSV manifest)."""
    path = Path(source)
    if path.is_file():
        return [path] if path.suffix.lower() == ".xml" else None
    if path.is_dir():
        entries = list(path.iterdir())
        xmls = sorted(p for p in entries if p.is_file() and p.suffix.lower() == ".xml")
        transcribed = any(p.name.endswith(".gt.txt") for p in entries)
        if not xmls:
            if not transcribed:
                _refuse_xml_one_folder_down(source, path)
            return None
        if transcribed:
            raise DataError(f"{source}: holds both page XML files and .gt.txt line transcriptions; "
                            f"expected one kind (point at a folder of either)")
        if all(is_other_xml(p) for p in xmls):  # a Transkribus document folder: mets.xml, metadata.xml, page/
            _refuse_xml_one_folder_down(source, path)
        return xmls
    if path.suffix.lower() == ".xml" and not any(c in source for c in GLOB_CHARS):
        raise DataNotFound(f"{source}: no such page XML file")
    if any(c in source for c in GLOB_CHARS):
        matches = sorted(Path(p) for p in glob.glob(source, recursive=True))
        xmls = [p for p in matches if p.is_file() and p.suffix.lower() == ".xml"]
        if not xmls:
            raise DataNotFound(f"{source}: the pattern matches no .xml files"
                            + (f" ({len(matches)} other files)" if matches else ""))
        return xmls
    return None


def _refuse_xml_one_folder_down(source: str, path: Path) -> None:
    """A folder without page XML or line transcriptions whose subfolder holds page XML (a Transkribus
    export keeps it in ``page/`` beside the scans) is a DataError saying where the XML is: read as a
    folder of line images, its page scans would each be taken for one text line."""
    found = [p for pattern in ("*/*.xml", "*/*/*.xml") for p in path.glob(pattern)]
    nested = sorted({p.parent for p in found if p.is_file() and not is_other_xml(p)})
    if nested:
        raise DataError(f"{source}: no page XML in this folder, and some in {nested[0]}"
                        + (f" and {len(nested) - 1} other subfolder(s)" if len(nested) > 1 else "")
                        + f"; give that folder, or the pattern '{path / '**' / '*.xml'}'")


def is_other_xml(path: Path) -> bool:
    """Whether ``path`` is well-formed XML whose root is neither ALTO nor PAGE (an export's METS or
    metadata file), from its first element only; a file that cannot be read or parsed is not (reading
    it as a page names its problem)."""
    try:
        for _, element in ET.iterparse(path, events=("start",)):
            page_kind(element)  # the reader's own test of the root element
            return False
    except NotPageXml:
        return True
    except (ET.ParseError, OSError, ValueError, UnicodeError, LookupError):
        return False
    return False


def page_root(source: str) -> Path:
    """The folder that page names are relative to: the source folder, a file's folder, or a pattern's
    leading folders without wildcards."""
    p = Path(source)
    if p.is_dir():
        return p
    if p.is_file():
        return p.parent
    fixed = []
    for part in p.parts:
        if any(c in part for c in GLOB_CHARS):
            break
        fixed.append(part)
    return Path(*fixed) if fixed else Path(".")


def page_name(path: Path, root: Path) -> str:
    """How a page file is named in line names and messages: its path below ``root``."""
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.as_posix()


def _pool_context():
    """fork on Linux: workers start at once and a user's script needs no ``if __name__ == "__main__"``
    guard; spawn elsewhere (fork is unsafe on macOS and absent on Windows)."""
    import multiprocessing

    return multiprocessing.get_context("fork" if sys.platform.startswith("linux") else "spawn")


def read_pages(paths: Sequence[Path], *, height: int, workers: Optional[int] = None, cache: bool = True,
               progress: Optional[Callable[[int, int], None]] = None) -> list[PageLines]:
    """Every line of every page file, cut and scaled to ``height``, in file order: from the cache when a
    page's XML, image and the parameters are unchanged, else cut over ``workers`` processes (default:
    torch's thread count, ``--threads``, within the cores this process may use). Problems are recorded per page and line, never raised."""
    results: list[Optional[PageLines]] = [None] * len(paths)
    todo, keys = [], {}
    cache_dir = files.cache_dir("pages")
    done = 0
    for i, path in enumerate(paths):
        if cache:
            try:
                xml = path.read_bytes()
                page = parse_page(path, xml)
                image = find_image(page).read_bytes()
            except (DataError, OSError):
                todo.append(i)  # the extraction names the problem
                continue
            keys[i] = cache_dir / f"{cache_key(xml, image, height)}.npz"
            hit = _load_cache(keys[i], path)
            if hit is not None:
                results[i] = hit
                done += 1
                if progress is not None:
                    progress(done, len(paths))
                continue
        todo.append(i)
    if workers is None:  # as many as the threads torch was given (--threads), within the cores allowed
        import torch
        workers = min(len(os.sched_getaffinity(0)), torch.get_num_threads())
    n_workers = min(len(todo), workers)
    t0 = time.monotonic()
    jobs = [(paths[i], height) for i in todo]

    def finish(i: int, lines: PageLines) -> None:
        nonlocal done
        results[i] = lines
        if i in keys and lines.page_error is None:
            _save_cache(keys[i], lines)
        done += 1
        if progress is not None:
            progress(done, len(paths))

    if n_workers > 1:
        from concurrent.futures import ProcessPoolExecutor

        pool = ProcessPoolExecutor(n_workers, mp_context=_pool_context())
        try:
            with warnings.catch_warnings():
                # Python 3.12+ warns when a process with threads forks; the workers run numpy and Pillow
                # code only and take none of the locks the parent's threads (torch, progress bars) hold
                warnings.filterwarnings("ignore", message=".*fork.*", category=DeprecationWarning)
                for i, lines in zip(todo, pool.map(_extract_job, jobs, chunksize=1)):
                    finish(i, lines)
        except BaseException:
            # Ctrl-C (or an error): the workers stop now. Waiting for them to finish the queue, as leaving
            # the executor's block does, could wait forever on a worker that the same Ctrl-C stopped
            # mid-task; the pages already cut are cached, the rest are cut on the next run.
            for process in list((getattr(pool, "_processes", None) or {}).values()):
                process.terminate()
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        pool.shutdown()
    else:
        for i, job in zip(todo, jobs):
            finish(i, _extract_job(job))
    if todo:
        errors = [results[i].page_error for i in todo if results[i] is not None and results[i].page_error is not None]
        other = sum(isinstance(e, NotPageXml) for e in errors)  # a METS file beside the pages, say
        failed = len(errors) - other
        if failed == len(paths):  # every page unusable: the error that follows names the problem, alone
            return results  # type: ignore[return-value]
        log.info("pages: %d of %d read in %.1f s (%d process%s)%s%s, %d from the cache", len(todo), len(paths),
                 time.monotonic() - t0, max(1, n_workers), "es" if n_workers > 1 else "",
                 f", {failed} unusable (named below)" if failed else "",
                 f", {other} not ALTO or PAGE XML" if other else "", len(paths) - len(todo))
    return results  # type: ignore[return-value]


# ---------------------------------------------------------------------------------- collecting

@dataclass
class Collected:
    """Lines of many pages as flat lists, with what was left out (name -> message) and counts by kind."""

    images: list[np.ndarray] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    names: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    kinds: dict[str, int] = field(default_factory=dict)
    lines: int = 0          # lines seen on pages that could be read
    pages: int = 0          # page files used
    bad_pages: int = 0      # page files left out

    def skip(self, name: str, kind: str, message: str) -> None:
        key, n = name, 2
        while key in self.skipped:  # two inputs listed under one name: count each
            key, n = f"{name}#{n}", n + 1
        self.skipped[key] = message
        self.kinds[kind] = self.kinds.get(kind, 0) + 1

    def summary(self) -> str:
        """``skipped 3 of 120 lines and 1 of 6 pages (no text 3, XML does not parse 1): a.xml:l1: ...``"""
        bad_lines = len(self.skipped) - self.bad_pages
        parts = [f"{bad_lines} of {self.lines} lines"] if bad_lines else []
        if self.bad_pages:
            parts.append(f"{self.bad_pages} of {self.pages + self.bad_pages} pages")
        kinds = ", ".join(f"{k} {n}" for k, n in sorted(self.kinds.items(), key=lambda kv: -kv[1]))
        shown = "; ".join(list(self.skipped.values())[:10])
        return (f"skipped {' and '.join(parts)} ({kinds}): {shown}"
                + ("; ..." if len(self.skipped) > 10 else ""))


def collect_lines(pages: Sequence[PageLines], names: Sequence[str], *, normalize: str = "NFC",
                  require_text: bool = True, strict: bool = False, ignore_other_xml: bool = True) -> Collected:
    """The lines of ``pages`` (shown as ``names``) in file order, texts normalised (``normalize_text``).
    Lines without text are left out when ``require_text``; ``strict`` raises the first problem as a
    DataError; XML files that are not ALTO or PAGE (a METS file in an export folder) are passed over
    with an INFO line when ``ignore_other_xml``."""
    out = Collected()
    for page, name in zip(pages, names):
        err = page.page_error
        if err is not None:
            if isinstance(err, NotPageXml) and ignore_other_xml:
                log.info("%s", f"{err}; passed over")
                continue
            if strict or isinstance(err, NotPageXml):
                raise DataError(str(err))
            out.bad_pages += 1
            out.skip(name, err.kind, str(err))
            continue
        for note in page.notes:
            log.warning("%s", note)
        out.pages += 1
        out.lines += len(page.indices) + len(page.bad)
        order = sorted([(k, j) for j, k in enumerate(page.indices)] + [(b.index, b) for b in page.bad],
                       key=lambda item: item[0])  # file order, good and bad lines together
        ids = page.line_ids()
        for k, j in order:
            if isinstance(j, BadLine):
                j = replace(j, id=ids[k])
                if strict:
                    raise DataError(j.message(name))
                out.skip(f"{name}:{j.id}", j.kind, j.message(name))
                continue
            raw = page.texts[j]
            text = normalize_text(raw, normalize) if raw is not None else ""
            line_name = f"{name}:{ids[k]}"
            problem = page.problems[j] if j < len(page.problems) else None
            if require_text and not text:
                bad = (BadLine(ids[k], UNCLEAR_TEXT, f" ({problem})") if problem
                       else BadLine(ids[k], NO_TEXT))
                if strict:
                    raise DataError(bad.message(name))
                out.skip(line_name, bad.kind, bad.message(name))
                continue
            out.images.append(page.images[j])
            out.texts.append(text)
            out.names.append(line_name)
    return out


# ------------------------------------------------------------------------------------- writing

@dataclass
class _Node:
    """An element of a page file as its bytes lie: ``[start, end)`` and where its start tag ends."""

    uri: str
    local: str
    qname: str                       # as written, with its prefix
    attrs: list[tuple[str, str]]     # qualified names and values, in order
    start: int
    tag_end: int = 0
    end: int = 0
    children: list["_Node"] = field(default_factory=list)
    parent: Optional["_Node"] = None

    @property
    def empty(self) -> bool:
        return self.end == self.tag_end


def _tag_end(buf: bytes, i: int) -> int:
    """The offset just past the ``>`` that closes the tag starting at ``buf[i] == '<'``."""
    quote = 0
    for j in range(i + 1, len(buf)):
        c = buf[j]
        if quote:
            if c == quote:
                quote = 0
        elif c in (0x22, 0x27):  # " '
            quote = c
        elif c == 0x3E:  # >
            return j + 1
    raise ValueError(f"unterminated tag at byte {i}")


def _split_name(name: str) -> tuple[str, str, str]:
    """expat's ``uri local prefix`` -> ``(uri, local, qualified name)``."""
    parts = name.split(" ")
    if len(parts) == 1:
        return "", parts[0], parts[0]
    if len(parts) == 2:
        return parts[0], parts[1], parts[1]
    return parts[0], parts[1], f"{parts[2]}:{parts[1]}"


def _text_lines(buf: bytes, every: Optional[list] = None) -> list[_Node]:
    """Every ``TextLine`` of UTF-8 page XML ``buf`` (in the root's namespace), in file order, with its
    direct children, its ancestors (``parent``, and their children) and their byte offsets; ``every``,
    when given, receives every element of the file in order."""
    import xml.parsers.expat as expat

    parser = expat.ParserCreate(encoding="UTF-8", namespace_separator=" ")
    parser.namespace_prefixes = True
    parser.ordered_attributes = True
    stack: list[_Node] = []
    lines: list[_Node] = []
    root_uri: list[str] = []

    def start(name, attrs):
        uri, local, qname = _split_name(name)
        pairs = [(_split_name(attrs[k])[2], attrs[k + 1]) for k in range(0, len(attrs), 2)]
        node = _Node(uri, local, qname, pairs, parser.CurrentByteIndex)
        node.tag_end = _tag_end(buf, node.start)
        if not root_uri:
            root_uri.append(uri)
        if stack:
            node.parent = stack[-1]
            stack[-1].children.append(node)
        if local == "TextLine" and uri == root_uri[0]:
            lines.append(node)
        if every is not None:
            every.append(node)
        stack.append(node)

    def end(name):
        node = stack.pop()
        closed_empty = buf[node.tag_end - 2: node.tag_end] == b"/>"
        node.end = node.tag_end if closed_empty else _tag_end(buf, parser.CurrentByteIndex)

    parser.StartElementHandler = start
    parser.EndElementHandler = end
    parser.Parse(buf, True)
    return lines


_INVALID_XML_CHARS = {c: None for c in range(0x20) if c not in (0x09, 0x0A, 0x0D)} | {0xFFFE: None, 0xFFFF: None}


def _escape(text: str, attribute: bool) -> str:
    text = text.translate(_INVALID_XML_CHARS)
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    if attribute:
        text = text.replace('"', "&quot;").replace("\n", "&#10;").replace("\r", "&#13;").replace("\t", "&#9;")
    return text


def _start_tag(qname: str, attrs: list[tuple[str, str]], empty: bool) -> str:
    body = "".join(f' {k}="{_escape(v, True)}"' for k, v in attrs)
    return f"<{qname}{body}{'/>' if empty else '>'}"


def _indent_before(buf: bytes, pos: int) -> bytes:
    """The run of whitespace just before ``pos`` (a child's indentation)."""
    i = pos
    while i > 0 and buf[i - 1] in b" \t\r\n":
        i -= 1
    return buf[i:pos]


def _prefix(qname: str) -> str:
    return qname.split(":", 1)[0] + ":" if ":" in qname else ""


_ATTRIBUTE = re.compile(rb"""(\s+)([^\s=/>]+)(\s*=\s*)("[^"]*"|'[^']*')""")
_CUSTOM_ENTRY = re.compile(rb"[^\s{}]+\s*\{[^}]*\}")


def _edited_start_tag(buf: bytes, node: _Node, drop: Sequence[str] = (), custom: bool = False,
                      values: Optional[dict[str, str]] = None) -> bytes:
    """``node``'s start tag as written, less the attributes named in ``drop``, with the attributes named
    in ``values`` given those values (in their own quotes) and, with ``custom``, less the entries of a
    Transkribus ``custom`` attribute that mark characters of the old text (``textStyle {offset:0;
    length:5; ...}``, ``abbrev``, ``unclear``, ...): on a new text they would mark other characters.
    Every other byte as it was."""
    def fix(m: re.Match) -> bytes:
        name = m.group(2).decode("utf-8")
        if name in drop:
            return b""
        if values and name in values:
            quote = m.group(4)[:1]
            return m.group(1) + m.group(2) + m.group(3) + quote + _escape(values[name], True).encode("utf-8") + quote
        if custom and name == "custom":
            quote, value = m.group(4)[:1], m.group(4)[1:-1]
            entries = _CUSTOM_ENTRY.findall(value)
            kept = [e for e in entries if b"offset:" not in e]
            if len(kept) == len(entries):
                return m.group(0)
            return m.group(1) + m.group(2) + m.group(3) + quote + b" ".join(kept) + quote if kept else b""
        return m.group(0)

    return _ATTRIBUTE.sub(fix, buf[node.start: node.tag_end])


def _removals(buf: bytes, node: _Node, local: str) -> list[tuple[int, int, bytes]]:
    """The splices that remove ``node``'s children named ``local`` (in its namespace), each with the
    indent before it."""
    return [(c.start - len(_indent_before(buf, c.start)), c.end, b"") for c in node.children
            if c.uri == node.uri and c.local == local]


def _conf_text(conf: float) -> str:
    """A confidence as ALTO's WC and PAGE's @conf take it (0..1); ValueError for anything else (a NaN
    from a broken model), which a schema would reject and a reader could take for a score."""
    if not (math.isfinite(conf) and -1e-6 <= conf <= 1 + 1e-6):
        raise ValueError(f"confidence {conf!r} outside 0..1")
    return f"{min(max(conf, 0.0), 1.0) + 0.0:.4f}"


def _alto_edit(buf: bytes, line: _Node, text: str, conf: float) -> list[tuple[int, int, bytes]]:
    """One String with CONTENT and WC in place of the line's String/SP/HYP children (with their Glyphs and
    ALTERNATIVEs); the old String's character confidences (CC) and the line's correction status (CS),
    which describe the old text, go."""
    words = _alto_words(line)
    strings = [c for c in words if c.local == "String"]
    line_attrs = dict(line.attrs)
    tag = _edited_start_tag(buf, line, drop=("CS",))
    if len(strings) == 1:  # one word: its own attributes (ID, style, ...), its box only if it is alone
        attrs = [(k, v) for k, v in strings[0].attrs if k not in ("SUBS_TYPE", "SUBS_CONTENT", "CC", "CS")]
        if len(words) > 1:
            attrs = [(k, line_attrs.get(k, v)) if k in ALTO_BOX else (k, v) for k, v in attrs]
    else:  # several words: one word's style, tags or box would now claim the whole line; the ID stays
        kept = _alto_kept_id(line)
        attrs = ([("ID", kept)] if kept else []) + list(zip(ALTO_BOX, _alto_line_box(line)))
    values = {"CONTENT": text, "WC": _conf_text(conf)}
    attrs = [(k, values.pop(k)) if k in values else (k, v) for k, v in attrs]
    if "CONTENT" in values:
        has_id = bool(attrs) and attrs[0][0] == "ID"
        attrs.insert(1 if has_id else 0, ("CONTENT", values.pop("CONTENT")))
    attrs += list(values.items())
    element = _start_tag(_prefix(line.qname) + "String", attrs, empty=True).encode("utf-8")
    if words:
        return [(words[0].start, words[-1].end, element)] + _tag_edit(buf, line, tag)
    # an empty <TextLine/> is rewritten whole, its start tag included
    return [_insert_child(buf, line, element, before=(), tag=tag)] + ([] if line.empty else _tag_edit(buf, line, tag))


def _alto_words(line: _Node) -> list[_Node]:
    return [c for c in line.children if c.uri == line.uri and c.local in ("String", "SP", "HYP")]


def _alto_kept_id(line: _Node) -> Optional[str]:
    """The ID the line's one new String takes: its first String's that has one."""
    return next((dict(c.attrs)["ID"] for c in _alto_words(line) if c.local == "String" and "ID" in dict(c.attrs)),
                None)


def _alto_line_box(line: _Node) -> tuple[str, ...]:
    """HPOS, VPOS, WIDTH, HEIGHT for a String holding the whole line: the line's own, else the union of its
    Strings' boxes, else none."""
    own = dict(line.attrs)
    if all(k in own for k in ALTO_BOX):
        return tuple(own[k] for k in ALTO_BOX)
    try:
        boxes = [[float(dict(c.attrs)[k]) for k in ALTO_BOX] for c in _alto_words(line) if c.local == "String"]
    except (KeyError, ValueError):
        return ()
    if not boxes:
        return ()
    x0, y0 = min(b[0] for b in boxes), min(b[1] for b in boxes)
    x1, y1 = max(b[0] + b[2] for b in boxes), max(b[1] + b[3] for b in boxes)
    return tuple(f"{v:g}" for v in (x0, y0, x1 - x0, y1 - y0))


def _alto_reference_edits(buf: bytes, lines: Sequence[_Node], every: Sequence[_Node]) -> list[tuple[int, int, bytes]]:
    """Reading-order references (``ElementRef REF``) to the Strings, spaces and hyphens that rewritten
    ``lines`` lost point to the line's new String instead; one that would then repeat a reference of its
    group goes (the group keeps the first), so no REF names an ID the file no longer has."""
    moved: dict[str, Optional[str]] = {}
    for line in lines:
        kept = _alto_kept_id(line)
        for word in _alto_words(line):
            old = dict(word.attrs).get("ID")
            if old is not None and old != kept:
                moved[old] = kept
    edits = []
    for group in {id(n.parent): n.parent for n in every if n.local == "ElementRef" and n.parent is not None}.values():
        refs = [c for c in group.children if c.local == "ElementRef"]
        named = {dict(ref.attrs).get("REF") for ref in refs}
        for ref in refs:
            target = dict(ref.attrs).get("REF")
            if target not in moved:
                continue
            new = moved[target]
            if new is None or new in named:  # nothing left to point to, or a repeat: the reference goes
                edits.append((ref.start - len(_indent_before(buf, ref.start)), ref.end, b""))
            else:
                named.add(new)
                edits += _tag_edit(buf, ref, _edited_start_tag(buf, ref, values={"REF": new}))
    return edits


def _page_edit(buf: bytes, line: _Node, text: str, conf: float) -> list[tuple[int, int, bytes]]:
    """One TextEquiv (conf, Unicode) in place of the line's own TextEquiv elements; the line's Words
    (with their Glyphs), whose texts and boxes are those of the old text, go, as do Transkribus tags in
    its ``custom`` attribute that mark characters of the old text."""
    p = _prefix(line.qname)
    element = (f'<{p}TextEquiv conf="{_conf_text(conf)}"><{p}Unicode>{_escape(text, False)}</{p}Unicode>'
               f'</{p}TextEquiv>').encode("utf-8")
    tag = _edited_start_tag(buf, line, custom=True)
    equivs = [c for c in line.children if c.uri == line.uri and c.local == "TextEquiv"]
    edits = _removals(buf, line, "Word")
    if equivs:
        edits.append((equivs[0].start, equivs[-1].end, element))
    else:  # the schema's order: ... Baseline, Word*, TextEquiv, TextStyle, UserDefined, Labels
        edits.append(_insert_child(buf, line, element, before=("TextStyle", "UserDefined", "Labels"), tag=tag))
    return edits + ([] if line.empty else _tag_edit(buf, line, tag))  # an empty line is rewritten whole


def _tag_edit(buf: bytes, node: _Node, tag: bytes) -> list[tuple[int, int, bytes]]:
    """The splice that gives ``node`` the start tag ``tag``, if it changed."""
    return [] if tag == buf[node.start: node.tag_end] else [(node.start, node.tag_end, tag)]


def _ancestor_edits(buf: bytes, kind: str, lines: Sequence[_Node],
                    every: Sequence[_Node] = ()) -> list[tuple[int, int, bytes]]:
    """What the elements around rewritten ``lines`` lose: in PAGE, their own TextEquivs (a region's text
    is that of its lines, and these would be the old ones) and the page's Transkribus status (``GT``,
    ``FINAL``: a claim about the old transcription), and the page's ``Metadata/LastChange`` becomes the
    time of writing (UTC, as the schema asks); in ALTO, the correction status (CS) and confidence (PC)
    of a block or page that now holds machine-read text. ``every`` (every element, when every line is
    written): in PAGE, the TextEquivs of regions without lines go too, so no text of the input is left."""
    seen: dict[int, _Node] = {}
    for line in lines:
        node = line.parent
        while node is not None:
            seen.setdefault(id(node), node)
            node = node.parent
    if kind == PAGE:
        for node in every:
            if node.local not in ("TextLine", "Word", "Glyph", "TextEquiv") and any(
                    c.local == "TextEquiv" and c.uri == node.uri for c in node.children):
                seen.setdefault(id(node), node)
    edits = []
    root = next((n for n in seen.values() if n.parent is None), None)
    if kind == PAGE and root is not None:
        for meta in (c for c in root.children if c.local == "Metadata"):
            for tm in (c for c in meta.children if c.local == "TranskribusMetadata"):
                edits += _tag_edit(buf, tm, _edited_start_tag(buf, tm, drop=("status",)))
            for lc in (c for c in meta.children if c.uri == meta.uri and c.local == "LastChange"):
                stamp = _utc_now().encode("ascii")
                if lc.empty:
                    edits.append((lc.start, lc.end, buf[lc.start: lc.tag_end - 2].rstrip() + b">" + stamp
                                  + f"</{lc.qname}>".encode("utf-8")))
                else:
                    edits.append((lc.tag_end, _tag_end_start(buf, lc), stamp))
    for node in seen.values():
        if kind == PAGE:
            edits += _removals(buf, node, "TextEquiv")
        else:
            edits += _tag_edit(buf, node, _edited_start_tag(buf, node, drop=("CS", "PC")))
    return edits


def _utc_now() -> str:
    """The time of writing as PAGE's LastChange takes it (xsd:dateTime, UTC)."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _insert_child(buf: bytes, line: _Node, element: bytes, before: Sequence[str],
                  tag: Optional[bytes] = None) -> tuple[int, int, bytes]:
    """Where and what to splice to add ``element`` as a child of ``line``: before the first child named in
    ``before``, else after the last child, indented like its siblings. An empty ``<TextLine .../>`` is
    rewritten whole, with the start tag ``tag`` (default: as written)."""
    later = [c for c in line.children if c.uri == line.uri and c.local in before]
    if later:
        pos = later[0].start
        return pos, pos, element + _indent_before(buf, pos)
    if line.children:
        last = line.children[-1]
        return last.end, last.end, _indent_before(buf, last.start) + element
    if line.empty:  # <TextLine .../>: open it, add the child, close it
        tag = buf[line.start: line.tag_end] if tag is None else tag
        opened = tag[:-2].rstrip() + b">"
        return line.start, line.end, opened + element + f"</{line.qname}>".encode("utf-8")
    pos = _tag_end_start(buf, line)
    return pos, pos, element


def _tag_end_start(buf: bytes, node: _Node) -> int:
    """The offset of the ``</`` of ``node``'s end tag."""
    return buf.rindex(b"</", node.tag_end, node.end)


def _is_utf8(encoding: str) -> bool:
    """True for UTF-8 by any of its names ("UTF-8", and "UTF8", "utf_8", "U8", which expat does not know)."""
    import codecs

    try:
        return codecs.lookup(encoding).name == "utf-8"
    except LookupError:
        return False


def _declared_encoding(data: bytes) -> str:
    import xml.parsers.expat as expat

    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        return "utf-16"
    found: list[str] = []
    parser = expat.ParserCreate()
    parser.XmlDeclHandler = lambda version, encoding, standalone: found.append(encoding or "")
    try:
        parser.Parse(data[:1024], False)
    except expat.ExpatError:
        pass
    return (found[0] if found else "") or "utf-8"


def write_page_texts(src: str | Path, dst: str | Path, texts: dict[int, tuple[str, float]], *,
                     others: Optional[tuple[str, float]] = None) -> int:
    """Write a copy of page XML ``src`` to ``dst`` in which the TextLine at each position ``k`` of
    ``texts`` (0-based, file order) carries ``texts[k] = (text, confidence 0..1)``: ALTO, one ``String``
    with ``CONTENT`` and ``WC`` (keeping the first old String's ID, and its other attributes when it
    was the line's one word); PAGE, one
    ``TextEquiv`` with ``@conf`` and ``Unicode``. With ``others``, every line not in ``texts`` carries
    that pair instead of its old text. What describes a written line's old text goes (``_page_edit``,
    ``_alto_edit``, ``_ancestor_edits``) and a PAGE file's LastChange becomes the time of writing; every
    other byte is kept; the file is written atomically.
    Returns the number of lines written."""
    from convrnn.files import atomic_write_bytes

    src, dst = Path(src), Path(dst)
    try:
        data = src.read_bytes()
    except OSError as e:
        raise DataError(f"{src}: cannot read ({e.strerror or e})") from None
    root = xml_root(src, data)
    kind, _ = page_kind(root)
    encoding = _declared_encoding(data)
    utf8 = _is_utf8(encoding) or encoding.lower() in ("us-ascii", "ascii")
    try:
        buf = data if utf8 else data.decode(encoding).encode("utf-8")
        every: list[_Node] = []
        lines = _text_lines(buf, every)
    except (LookupError, UnicodeError, ValueError) as e:
        raise DataError(f"{src}: cannot rewrite this file ({e})") from None
    edit = _alto_edit if kind == ALTO else _page_edit
    if others is not None:
        texts = {k: texts.get(k, others) for k in range(len(lines))}
    written = [k for k in sorted(texts) if 0 <= k < len(lines)]
    edits = []
    for k in written:
        try:
            edits += edit(buf, lines[k], *texts[k])
        except ValueError as e:
            ids = unique_ids([dict(ln.attrs).get("ID" if kind == ALTO else "id") or f"line_{j + 1}"
                              for j, ln in enumerate(lines)])  # named as the reader names them
            raise DataError(f"{src}:{ids[k]}: cannot write its text ({e})") from None
    around = _ancestor_edits(buf, kind, [lines[k] for k in written],
                             every if written and len(written) == len(lines) else ())  # no lines: as it was
    if kind == ALTO:
        around += _alto_reference_edits(buf, [lines[k] for k in written], every)
    edits = sorted(edits + around)
    pieces, pos = [], 0
    for start, end, new in edits:
        if start < pos:  # two changes to one stretch of the file (elements out of the schema's order)
            raise DataError(f"{src}: cannot rewrite this file (overlapping changes at byte {start}; "
                            f"are its TextLines' children in the schema's order?)")
        pieces += [buf[pos:start], new]
        pos = end
    pieces.append(buf[pos:])
    out = b"".join(pieces)
    if not utf8:  # back to the file's own encoding; characters it cannot hold become references
        out = out.decode("utf-8").encode(encoding, errors="xmlcharrefreplace")
    xml_root(dst, out)  # what is written parses
    atomic_write_bytes(dst, out)
    return len(written)
