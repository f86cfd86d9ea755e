"""Labelled image grids saved as PNG: one row per label, small images scaled up (nearest) to be seen.

Shape:
    each image is ``(H, W)`` uint8 (0..255) or float (0..1); the grid is one ``L`` (grayscale) image of
    ``rows * (H * scale + gap) + gap`` by ``label_width + cols * (W * scale + gap) + gap`` pixels.

    H image height, W image width.
"""
# H height, W width
from __future__ import annotations

import io
import os
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from convrnn.files import atomic_write_bytes


def to_uint8(image: np.ndarray) -> np.ndarray:
    """A 2-D image as uint8: floats are read as 0..1 and clipped, integers as 0..255."""
    a = np.asarray(image)
    if a.ndim != 2:
        raise ValueError(f"expected a 2-D (H, W) image, got shape {a.shape}")
    if np.issubdtype(a.dtype, np.floating):
        return (np.clip(a, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    return np.clip(a, 0, 255).astype(np.uint8)


def label_font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """A readable font for labels: DejaVu Sans from matplotlib, else PIL's default."""
    try:
        import matplotlib

        return ImageFont.truetype(os.path.join(matplotlib.get_data_path(), "fonts", "ttf", "DejaVuSans.ttf"), size)
    except (ImportError, OSError):
        return ImageFont.load_default()


def image_grid(rows: Sequence[Sequence[np.ndarray]], labels: Sequence[str] | None = None, *, scale: int = 4,
               gap: int = 4, label_width: int | None = None, label_size: int | None = None,
               background: int = 200) -> Image.Image:
    """Lay out ``rows`` of images on a ``background`` canvas, each row's label on its left.

    Every cell is as large as the largest image times ``scale``; smaller images sit at its top left.
    ``label_width`` defaults to the widest label plus ``2 * gap`` (0 without labels).
    """
    if scale < 1:
        raise ValueError(f"expected scale >= 1, got {scale}")
    if labels is not None and len(labels) != len(rows):
        raise ValueError(f"expected one label per row ({len(rows)} rows), got {len(labels)} labels")
    cells = [[to_uint8(im) for im in row] for row in rows]
    flat = [c for row in cells for c in row]
    cell_h = max((c.shape[0] for c in flat), default=0) * scale
    cell_w = max((c.shape[1] for c in flat), default=0) * scale
    ncols = max((len(row) for row in cells), default=0)
    font = label_font(label_size or max(10, min(cell_h // 2, 24))) if labels else None
    if label_width is None:
        label_width = 0
        if labels:
            label_width = max(int(np.ceil(font.getlength(str(t)))) for t in labels) + 2 * gap
    width = label_width + ncols * (cell_w + gap) + gap
    height = len(cells) * (cell_h + gap) + gap
    canvas = Image.new("L", (max(width, 1), max(height, 1)), background)
    draw = ImageDraw.Draw(canvas)
    for r, row in enumerate(cells):
        top = gap + r * (cell_h + gap)
        if labels:
            draw.text((gap, top + cell_h // 2), str(labels[r]), font=font, fill=0, anchor="lm")
        for c, im in enumerate(row):
            big = np.repeat(np.repeat(im, scale, axis=0), scale, axis=1)  # (H, W) -> (H*scale, W*scale)
            canvas.paste(Image.fromarray(big), (label_width + gap + c * (cell_w + gap), top))
    return canvas


def save_png(image: Image.Image, path: str) -> str:
    """Write ``image`` as PNG atomically with ``convrnn.files.atomic_write_bytes`` (a temporary file in
    the target's folder, then rename; a symlink's target is written, a folder or special file refused)."""
    buf = io.BytesIO()
    image.save(buf, format="PNG")  # encoded in memory: a failed encoding writes nothing
    atomic_write_bytes(path, buf.getvalue())
    return path
