"""Reading user images: one place that turns a file into a grayscale array or a clear error.

Every reader of user images (predict inputs, training line folders, page scans) goes through
:func:`load_gray`, so they all see the same pixels: EXIF orientation applied (for a page scan, only
when its page XML describes the turned image), 16-bit and float
images scaled to 8 bits by their value range, transparency laid over white, and images above
Pillow's decompression-bomb limit refused with one line.
"""
# H height, W width
from __future__ import annotations

import os
import re
import warnings
from pathlib import Path

import numpy as np

from convrnn.errors import DataError

U16_MAX = 65535
FAINT_OVER_WHITE = 32  # grey levels: an image with transparency fainter than this over white is tried over black

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".gif", ".webp", ".pgm", ".ppm")  # what a folder of images holds


def load_gray(path: str | Path, *, upright: bool = True) -> np.ndarray:
    """Any image Pillow reads -> uint8 ``(H, W)`` grayscale, upright as its EXIF orientation says
    (``upright=False``: the pixels as stored, which a page XML's coordinates may refer to).

    Unreadable, empty, too large or non-finite images and paths that are not files are DataErrors
    naming ``path``; see :func:`_to_uint8` for how images of more than 8 bits are scaled.
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    p = Path(path)
    if p.is_dir():
        suffixes = sorted({f.suffix for f in p.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES})
        raise DataError(f"{path}: expected an image file, found a folder; give the image files in it "
                        f"(for example {p / ('*' + (suffixes[0] if suffixes else '.png'))})")
    if not p.is_file():
        raise DataError(f"{path}: no such folder" if str(path).endswith(("/", os.sep)) else f"{path}: no such image file")
    if p.suffix.lower() == ".xml":
        raise DataError(f"{path}: page XML, not an image; page XML is read by text-line runs (convrnn train lines)")
    try:
        with warnings.catch_warnings():
            # Pillow warns (two lines, on stderr) above MAX_IMAGE_PIXELS and raises above twice that;
            # both become the one DataError below. The limit itself stays as the user's Pillow has it.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(p)
        with im:
            _check_size(path, im.size, Image.MAX_IMAGE_PIXELS)
            im.load()
            # A camera's JPEG stores the sensor's pixels and says in EXIF how to turn them upright:
            # read it as a viewer shows it, or a line shot upside down reads as other characters.
            gray = _to_uint8(path, ImageOps.exif_transpose(im) if upright else im)
    except Image.DecompressionBombError as e:
        found = re.search(r"\((\d+) pixels\)", str(e))
        _check_size(path, None, Image.MAX_IMAGE_PIXELS, pixels=int(found.group(1)) if found else None)
        raise DataError(f"{path}: the image is too large to read safely ({e})") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        if isinstance(e, DataError):
            raise
        raise DataError(f"{path}: not a readable image ({str(e).splitlines()[0][:120] if str(e) else type(e).__name__})") from None
    if gray.size == 0:
        raise DataError(f"{path}: the image is empty (0 pixels)")
    return gray


def _check_size(path, size, limit, *, pixels=None) -> None:
    """Refuse an image of more pixels than Pillow's decompression-bomb limit (``limit``, None: no limit).

    Such a file is either an attack (a small file that decodes to gigabytes) or a scan far larger
    than any text line or page needs; refusing it names the size, so the user can scale it down
    (or raise ``PIL.Image.MAX_IMAGE_PIXELS`` in a library call that really needs it).
    """
    if limit is None:
        return
    n = size[0] * size[1] if size is not None else pixels
    if n is None or n <= limit:
        return
    shape = f"{size[0]}x{size[1]} = " if size is not None else ""
    raise DataError(f"{path}: the image is too large ({shape}{n:,} pixels; at most {limit:,} are read, "
                    f"Pillow's decompression-bomb limit); scale it down")


def _to_uint8(path, im) -> np.ndarray:
    """A loaded Pillow image -> uint8 ``(H, W)`` grayscale.

    ``convert("L")`` clips images of more than 8 bits (every value above 255 becomes white), so:
    16-bit images (modes ``I;16*``) are divided by 257, which maps 0..65535 onto 0..255 exactly
    as 8-bit values were widened (``v * 257``), so a faint scan stays faint. 32-bit integers
    (mode ``I``, also how some readers hand over 16-bit data) within 0..65535 are taken as 16-bit
    samples the same way; floats (mode ``F``) within 0..1 as fractions of white (``* 255``), within
    0..255 as 8-bit values. Data outside those ranges has no agreed white, and the data type's own
    range (2**31 or a float's) would turn every real image black, so it is stretched from its
    minimum (black) to its maximum (white): ink stays distinct from the background, which is what
    recognition reads. Not-a-number or infinite pixels are refused. Images with transparency are
    laid over white, as on a page, so transparent pixels are background rather than their hidden
    (often black) colour; one that would vanish over white (white ink on a transparent ground) is
    laid over black.
    """
    from PIL import Image

    mode = im.mode
    if mode.startswith("I;16") or mode in ("I", "F"):
        values = np.asarray(im)
        if mode == "F":
            if not np.isfinite(values).all():
                raise DataError(f"{path}: {int((~np.isfinite(values)).sum())} pixels are not finite numbers "
                                f"(NaN or infinite) in this floating-point image")
        values = values.astype(np.float64)
        lo, hi = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
        if mode == "F" and lo >= 0 and hi <= 1:
            scaled = values * 255.0
        elif mode == "F" and lo >= 0 and hi <= 255:
            scaled = values
        elif lo >= 0 and hi <= U16_MAX:  # unsigned 16-bit, or 32-bit holding 16-bit samples
            scaled = values / 257.0
        elif hi > lo:
            scaled = (values - lo) * (255.0 / (hi - lo))
        else:  # one value everywhere: a blank image, whatever its level
            scaled = np.full_like(values, 255.0)
        return np.clip(np.round(scaled), 0, 255).astype(np.uint8)
    if "A" in mode or "transparency" in im.info:  # LA, RGBA, PA, or a palette/colour key marked transparent
        rgba = im.convert("RGBA")

        def over(level: int) -> np.ndarray:
            ground = Image.new("RGBA", rgba.size, (level, level, level, 255))
            return np.asarray(Image.alpha_composite(ground, rgba).convert("L"), dtype=np.uint8)

        white = over(255)
        if white.size and int(np.ptp(white)) < FAINT_OVER_WHITE:
            # light ink on a transparent ground (made for a dark page) all but vanishes over white;
            # its text is where it is opaque, so it is laid over black when that shows it better
            black = over(0)
            if int(np.ptp(black)) > int(np.ptp(white)):
                return black
        return white
    return np.asarray(im.convert("L"), dtype=np.uint8)


def ink_is_bright(gray: np.ndarray) -> bool:
    """True when the image is light ink on a dark background (the median pixel is dark)."""
    return float(np.median(gray)) < 128


def to_ink(gray: np.ndarray) -> np.ndarray:
    """uint8 ``(H, W)`` -> float32 in 0..1 with ink 1, inverting dark-on-light scans."""
    x = gray.astype(np.float32) / 255.0
    return x if ink_is_bright(gray) else 1.0 - x


def scale_to_height(ink: np.ndarray, height: int) -> np.ndarray:
    """uint8 ``(H, W)`` -> uint8 ``(height, W')`` with ``W' = max(1, round(W * height / H))``."""
    from PIL import Image

    h, w = ink.shape
    if h == height:
        return ink
    new_w = max(1, int(round(w * height / h)))
    return np.asarray(Image.fromarray(ink).resize((new_w, height), Image.BILINEAR), dtype=np.uint8)
