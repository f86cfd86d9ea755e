"""Random distortions of text-line batches: the look of other hands, pens and scans, for training.

Every training batch is distorted afresh, line by line, with draws from a generator seeded by the
run's seed and the batch's line indices (``batch_rng``), so the same batch fetched again (a resumed
run) is distorted the same way; no global random state is read or advanced.

``augment_lines`` applies, in this order:

- geometry, as one bilinear resampling of the batch (``line_grid`` + ``grid_sample``): a slant
  (horizontal shear about the middle row), a small rotation about the line's centre, a vertical
  scale about the middle row, a horizontal scale from the line's left end, and a smooth random
  bend (control points ``BEND_SPACING`` pixels apart, the elastic distortion of Simard et al. 2003).
  A horizontal scale changes a line's valid width: the returned ``lengths`` follow it, and the
  batch grows to the widest scaled line (rounded up to ``pad_to``);
- stroke width: a grey dilation (3x3 maximum) or erosion (3x3 minimum) blended in by a random
  fraction, so strokes get up to one pixel thicker or thinner on each side;
- contrast and brightness: ``clip(gain * x + offset, 0, 1)`` on the ink-bright image;

and clears every pixel past a line's valid width, as the padding of an undistorted batch is.
"""
# B batch, C channels (1), H height, W width
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Iterable, Optional

import numpy as np
import torch
import torch.nn.functional as F

from convrnn.data.sequences import smooth_field

BEND_SPACING = 8  # pixels between a bend's control points along the width (3 rows of them over the height)


@dataclass(frozen=True)
class LineAugment:
    """How strongly to distort training lines; each is drawn per line, uniformly within its range, 0 = off."""

    slant: float = 0.0       # shear, up to this many pixels per pixel of height either way
    bend: float = 0.0        # smooth displacement, up to this many pixels along each axis
    tilt: float = 0.0        # rotation, up to this many degrees either way
    stretch_x: float = 0.0   # horizontal scale within 1 +- stretch_x (the line's width in frames follows)
    stretch_y: float = 0.0   # vertical scale within 1 +- stretch_y
    stroke: float = 0.0      # strokes up to this many pixels thicker or thinner on each side (at most 1)
    contrast: float = 0.0    # ink gain within 1 +- contrast
    brightness: float = 0.0  # offset within +-brightness added to every pixel of the line

    @property
    def active(self) -> bool:
        return any(v > 0 for v in asdict(self).values())

    @property
    def warp_only(self) -> bool:
        """Only slant and bend: what ``convrnn.data.lines.warp_lines`` does on its own."""
        rest = {k: v for k, v in asdict(self).items() if k not in ("slant", "bend")}
        return not any(v > 0 for v in rest.values())


# Named sets of distortions (``data.augment``): each fills the distortions a run does not set itself.
# ``handwriting`` was measured on real handwritten pages (docs/decisions.md).
AUGMENT_SETS: dict[str, dict[str, float]] = {
    "none": {},
    "handwriting": {"slant": 0.2, "bend": 1.0, "tilt": 1.0, "stretch_x": 0.1, "stretch_y": 0.1, "stroke": 0.5,
                    "contrast": 0.3},
}


def batch_rng(seed: int, indices: Iterable[int]) -> np.random.Generator:
    """The generator for one batch: a function of the seed and the batch's line indices only."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), *np.asarray(indices, dtype=np.int64).tolist()]))


def line_grid(b: int, h: int, w: int, rng: np.random.Generator, *, slant: float = 0.0, bend: float = 0.0,
              tilt: float = 0.0, stretch_x: float = 0.0, stretch_y: float = 0.0,
              lengths: Optional[torch.Tensor] = None, out_width: Optional[int] = None,
              new_lengths: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Where each output pixel samples its input: a ``(B, H, W_out, 2)`` grid for ``grid_sample``
    (x then y, in -1..1 of the ``(H, w)`` input, ``align_corners=False``).

    Draws, in this order and only for the distortions that are on: the shear (B), the bend's control
    points, the angle (B), the horizontal scale (B), the vertical scale (B). The horizontal scale is
    read from ``new_lengths / lengths`` (``stretch_lengths`` draws it); ``lengths`` (``(B,)`` valid
    widths) also centre each line's rotation, and default to ``w``.
    """
    w_out = w if out_width is None else out_width
    ys = torch.arange(h, dtype=torch.float32) + 0.5  # pixel centres
    xs = torch.arange(w_out, dtype=torch.float32) + 0.5
    shear = torch.from_numpy(rng.uniform(-slant, slant, size=b).astype(np.float32)) if slant > 0 else torch.zeros(b)
    field = None
    if bend > 0:
        cols = max(2, -(-w_out // BEND_SPACING) + 1)
        field = smooth_field(rng, b, (3, cols), (h, w_out), bend)  # (B, 2, H, W_out) in pixels: (dx, dy)
    if tilt <= 0 and stretch_x <= 0 and stretch_y <= 0:
        src_x = xs.view(1, 1, w_out) + shear.view(b, 1, 1) * (ys.view(1, h, 1) - h / 2)  # (B, H, W_out)
        src_y = ys.view(1, h, 1).expand(b, h, w_out)
    else:
        angle = np.deg2rad(rng.uniform(-tilt, tilt, size=b)) if tilt > 0 else np.zeros(b)
        valid = torch.full((b,), float(w)) if lengths is None else lengths.float()
        out_valid = valid if new_lengths is None else new_lengths.float()
        sx = (out_valid / valid).view(b, 1, 1)
        sy = torch.from_numpy(rng.uniform(1 - stretch_y, 1 + stretch_y, size=b).astype(np.float32)).view(b, 1, 1) \
            if stretch_y > 0 else torch.ones(b, 1, 1)
        cos = torch.from_numpy(np.cos(angle).astype(np.float32)).view(b, 1, 1)
        sin = torch.from_numpy(np.sin(angle).astype(np.float32)).view(b, 1, 1)
        cx = (out_valid / 2).view(b, 1, 1)  # rotate about the middle of the line as drawn
        du, dv = xs.view(1, 1, w_out) - cx, ys.view(1, h, 1) - h / 2
        ru, rv = cos * du + sin * dv, cos * dv - sin * du  # output -> input: the inverse rotation
        su, sv = ru / sx, rv / sy
        src_x = cx / sx + su + shear.view(b, 1, 1) * sv
        src_y = h / 2 + sv
    if field is not None:
        src_x, src_y = src_x + field[:, 0], src_y + field[:, 1]
    return torch.stack((src_x * (2.0 / w) - 1.0, src_y * (2.0 / h) - 1.0), dim=-1)


def stretch_lengths(lengths: torch.Tensor, rng: np.random.Generator, stretch_x: float) -> torch.Tensor:
    """Each line's valid width after a horizontal scale drawn within ``1 +- stretch_x`` (at least 1)."""
    scale = rng.uniform(1 - stretch_x, 1 + stretch_x, size=len(lengths))
    return torch.from_numpy(np.maximum(1, np.rint(lengths.numpy() * scale)).astype(np.int64))


def stroke_width(x: torch.Tensor, amount: torch.Tensor) -> torch.Tensor:
    """Thicken (``amount`` > 0) or thin (< 0) the strokes of each line of ``x`` ``(B, 1, H, W)``: a grey
    3x3 dilation or erosion blended in by ``|amount|`` (``(B,)``, within -1..1)."""
    a = amount.view(-1, 1, 1, 1)
    grown = F.max_pool2d(x, 3, stride=1, padding=1)
    shrunk = -F.max_pool2d(-x, 3, stride=1, padding=1)
    return x + a.clamp(min=0) * (grown - x) + (-a).clamp(min=0) * (shrunk - x)


def augment_lines(x: torch.Tensor, lengths: torch.Tensor, rng: np.random.Generator, aug: LineAugment,
                  pad_to: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """Distort each line of a padded batch ``x`` ``(B, 1, H, W)`` in 0..1 (valid widths ``lengths``,
    ``(B,)``) as ``aug`` says; returns the new batch (its width a multiple of ``pad_to`` that holds every
    line) and the lines' new valid widths. With nothing on, ``x`` and ``lengths`` come back as they are."""
    b, _, h, w = x.shape
    if b == 0 or not aug.active:
        return x, lengths
    new_lengths, w_out = lengths, w
    if aug.stretch_x > 0:
        new_lengths = stretch_lengths(lengths, rng, aug.stretch_x)
        w_out = max(pad_to, -(-int(new_lengths.max()) // pad_to) * pad_to)
    if aug.slant > 0 or aug.bend > 0 or aug.tilt > 0 or aug.stretch_x > 0 or aug.stretch_y > 0:
        grid = line_grid(b, h, w, rng, slant=aug.slant, bend=aug.bend, tilt=aug.tilt, stretch_x=aug.stretch_x,
                         stretch_y=aug.stretch_y, lengths=lengths, out_width=w_out, new_lengths=new_lengths)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    if aug.stroke > 0:
        x = stroke_width(x, torch.from_numpy(rng.uniform(-aug.stroke, aug.stroke, size=b).astype(np.float32)))
    if aug.contrast > 0 or aug.brightness > 0:
        gain = rng.uniform(1 - aug.contrast, 1 + aug.contrast, size=b) if aug.contrast > 0 else np.ones(b)
        offset = rng.uniform(-aug.brightness, aug.brightness, size=b) if aug.brightness > 0 else np.zeros(b)
        x = (x * torch.from_numpy(gain.astype(np.float32)).view(b, 1, 1, 1)
             + torch.from_numpy(offset.astype(np.float32)).view(b, 1, 1, 1)).clamp_(0.0, 1.0)
    inside = torch.arange(x.shape[-1]).view(1, 1, 1, -1) < new_lengths.view(b, 1, 1, 1)
    return x * inside, new_lengths
