"""Reading user images: one place that turns a file into a grayscale array or a clear error."""
# H height, W width
from __future__ import annotations

from pathlib import Path

import numpy as np

from convrnn.errors import DataError


def load_gray(path: str | Path) -> np.ndarray:
    """Any image Pillow reads -> uint8 ``(H, W)`` grayscale; unreadable or empty files are DataErrors."""
    from PIL import Image, UnidentifiedImageError

    p = Path(path)
    if not p.is_file():
        raise DataError(f"{path}: no such image file")
    try:
        with Image.open(p) as im:
            im.load()
            gray = np.asarray(im.convert("L"), dtype=np.uint8)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise DataError(f"{path}: not a readable image ({str(e).splitlines()[0][:120] if str(e) else type(e).__name__})") from None
    if gray.size == 0:
        raise DataError(f"{path}: the image is empty (0 pixels)")
    return gray


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
