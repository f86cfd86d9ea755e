"""Sequences of 1..N digit images whose target is their sum, product or running sum.

``DigitSequences`` draws each sequence's length and digits from a pool of digit images with numpy,
once, from ``seed``: item ``i`` is the same in every run and on every machine, and only index arrays
are stored. Training sequences must be drawn from training digits and validation/test sequences from
test digits; ``make_digit_sequences`` does that, and splits the test digits into disjoint halves
for validation and test. ``collate_sequences`` pads a batch to its longest sequence, with a mask so
padding never reaches a loss.

Shape:
    item.x: ``(T, 1, H, W)`` float32 in 0..1, T = the sequence's length
    item.y: ``()`` int64 for sum/product, ``(T,)`` int64 for running-sum (exact values)
    batch x: ``(B, T, 1, H, W)``; lengths, ids: ``(B,)`` int64; mask, digits, indices: ``(B, T)``
    batch y: ``(B,)`` float32 for sum/product, ``(B, T)`` for running-sum; y_int the same as int64

    B batch, T time steps (digits of a sequence, padded to the longest), H height, W width,
    N digits in the pool.
"""
# B batch, T time steps, C channels (1), H height, W width, N digits in the pool
from __future__ import annotations

import logging
from typing import NamedTuple, Sequence

import numpy as np
import torch
from torch.nn.utils.rnn import pad_sequence

from convrnn.errors import ConfigError, DataError

logger = logging.getLogger(__name__)

OPS = ("sum", "product", "running-sum")
MAX_PRODUCT_DIGITS = 19  # 9 ** 19 fits an int64 target; 9 ** 20 does not (it would wrap around)
VAL_TEST_SEED = 0  # fixes which test digits validate and which test, whatever the sequence seed


class DigitItem(NamedTuple):
    """One sequence: images, exact target, digit labels, indices of its digits in the split, item id."""

    x: torch.Tensor        # (T, 1, H, W) float32
    y: torch.Tensor        # () or (T,) int64
    digits: torch.Tensor   # (T,) int64
    indices: torch.Tensor  # (T,) int64, rows of the images array the digits came from
    id: int


def check_op(op: str) -> str:
    if op not in OPS:
        raise ConfigError(f"expected op one of {', '.join(OPS)}, got {op!r}")
    return op


def num_target_classes(op: str, max_len: int) -> int:
    """Number of classes for a classification head over the possible target values 0..max.

    sum and running-sum: ``9 * max_len + 1``; product: ``9 ** max_len + 1`` (many of them unused).
    """
    check_op(op)
    if max_len < 1:
        raise ConfigError(f"expected max_len >= 1, got {max_len}")
    return 9 ** max_len + 1 if op == "product" else 9 * max_len + 1


def sequence_targets(digits: np.ndarray, lengths: np.ndarray, op: str) -> np.ndarray:
    """Targets of padded label rows: ``digits`` (S, T) with anything past ``lengths`` (S,) ignored.

    Returns int64 ``(S,)`` for sum/product and ``(S, T)`` for running-sum, zero past each length.
    """
    check_op(op)
    digits = np.asarray(digits, dtype=np.int64)
    if op == "product" and digits.shape[1] > MAX_PRODUCT_DIGITS:
        raise ConfigError(f"expected products of at most {MAX_PRODUCT_DIGITS} digits (a longer one can exceed a "
                          f"64-bit integer), got sequences of up to {digits.shape[1]}")
    valid = np.arange(digits.shape[1])[None, :] < np.asarray(lengths)[:, None]  # (S, T)
    if op == "sum":
        return np.where(valid, digits, 0).sum(axis=1)
    if op == "product":
        return np.where(valid, digits, 1).prod(axis=1)
    return np.where(valid, np.cumsum(np.where(valid, digits, 0), axis=1), 0)


class DigitSequences(torch.utils.data.Dataset):
    """``num_sequences`` sequences of ``min_len..max_len`` digits (length uniform) drawn from a pool.

    Args:
        images: ``(N, H, W)`` digit images (uint8 or float); labels: ``(N,)`` digit classes 0..9.
        op: ``"sum"``, ``"product"`` or ``"running-sum"`` (a target per step).
        seed: an int or a tuple of ints; lengths and digits come from two streams spawned from it, so
            the first k items are the same whatever ``num_sequences`` is.
        pool: indices into ``images`` that may be drawn (default all). The caller keeps training and
            evaluation pools apart: train digits for training, test digits for validation and test.
        max_value: pixels are divided by it (default 255 for integer images, 1 for float images;
            16 for scikit-learn's digits: ``from_split`` passes the split's own).

    Attributes ``lengths`` (S,), ``indices`` (S, max_len) with -1 past each length, ``digits``
    (S, max_len) with -1 padding and ``targets`` ((S,) or (S, max_len)) hold every sequence.
    ``shift`` (default 0: off), set on a training set, moves every digit of a batch by a random
    whole number of pixels, up to ``shift`` in each direction (zeros shifted in), drawn from the
    batch's item ids and ``seed``: the same batch is always augmented the same way, so resuming
    replays it exactly. ``rotate`` (degrees) and ``zoom`` (a fraction), also 0 by default, add a
    random rotation within +-rotate and a scale within 1 +- zoom about the image centre, and
    ``elastic`` (pixels, 0 by default) a smooth random bend (``random_affine``), drawn the same way.
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray, *, max_len: int = 4, min_len: int = 1,
                 op: str = "sum", num_sequences: int = 1000, seed: int | Sequence[int] = 0,
                 pool: np.ndarray | None = None, max_value: float | None = None):
        self.op = check_op(op)
        if not 1 <= min_len <= max_len:
            raise ConfigError(f"expected 1 <= min_len <= max_len, got min_len={min_len}, max_len={max_len}")
        if num_sequences < 0:
            raise ConfigError(f"expected num_sequences >= 0, got {num_sequences}")
        images, labels = np.asarray(images), np.asarray(labels, dtype=np.int64)
        if images.ndim != 3 or labels.shape != images.shape[:1]:
            raise DataError(f"expected images (N, H, W) and labels (N,), got {images.shape} and {labels.shape}")
        pool = np.arange(len(labels)) if pool is None else np.asarray(pool, dtype=np.int64)
        if pool.ndim != 1 or len(pool) == 0 or pool.min() < 0 or pool.max() >= len(labels):
            raise DataError(f"expected a non-empty pool of indices in 0..{len(labels) - 1}, "
                            f"got {len(pool)} indices" + (f" in {pool.min()}..{pool.max()}" if len(pool) else ""))
        self.images, self.labels, self.pool = images, labels, pool
        self.max_len, self.min_len, self.seed = max_len, min_len, seed
        self.max_value = float(max_value if max_value is not None
                               else 255 if np.issubdtype(images.dtype, np.integer) else 1)
        length_rng, pick_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(2))
        self.lengths = length_rng.integers(min_len, max_len + 1, size=num_sequences)
        valid = np.arange(max_len)[None, :] < self.lengths[:, None]  # (S, max_len)
        picks = pool[pick_rng.integers(0, len(pool), size=(num_sequences, max_len))]
        self.indices = np.where(valid, picks, -1)
        self.digits = np.where(valid, labels[picks], -1)
        self.targets = sequence_targets(self.digits, self.lengths, op)
        self.shift = 0
        self.rotate = 0.0
        self.zoom = 0.0
        self.elastic = 0.0

    @classmethod
    def from_split(cls, split, **kwargs) -> "DigitSequences":
        """From an ``MnistSplit`` (or anything with ``images``, ``labels``, ``max_value``)."""
        kwargs.setdefault("max_value", split.max_value)
        return cls(split.images, split.labels, **kwargs)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """Per-step input shape ``(1, H, W)``."""
        return (1, *self.images.shape[1:])

    def __len__(self) -> int:
        return len(self.lengths)

    def __getitem__(self, i: int) -> DigitItem:
        if not -len(self) <= i < len(self):
            raise IndexError(f"expected an item index in 0..{len(self) - 1}, got {i}")
        i = int(i) % len(self)
        length = int(self.lengths[i])
        rows = self.indices[i, :length]
        x = torch.from_numpy(self.images[rows].astype(np.float32) / np.float32(self.max_value))
        x = x.unsqueeze(1)  # (T, H, W) -> (T, 1, H, W)
        y = self.targets[i, :length] if self.op == "running-sum" else self.targets[i]
        return DigitItem(x, torch.as_tensor(y, dtype=torch.int64), torch.from_numpy(self.digits[i, :length].copy()),
                         torch.from_numpy(rows.copy()), i)

    def batch(self, ids: Sequence[int]) -> dict[str, torch.Tensor]:
        """``collate_sequences([self[i] for i in ids])`` gathered in one numpy step (several times faster)."""
        ids = np.asarray(ids, dtype=np.int64)
        if ids.ndim != 1 or len(ids) == 0 or ids.min() < -len(self) or ids.max() >= len(self):
            raise IndexError(f"expected a non-empty list of item indices in 0..{len(self) - 1}, got {ids.tolist()}")
        ids %= len(self)
        lengths = self.lengths[ids]
        steps = int(lengths.max())
        rows = self.indices[ids, :steps]  # (B, T), -1 past each length
        mask = rows >= 0
        x = np.zeros((len(ids), steps, *self.images.shape[1:]), dtype=np.float32)  # (B, T, H, W)
        x[mask] = self.images[rows[mask]].astype(np.float32) / np.float32(self.max_value)
        warp = self.rotate > 0 or self.zoom > 0 or self.elastic > 0
        if self.shift > 0 or warp:
            rng = np.random.default_rng(np.random.SeedSequence([*np.atleast_1d(self.seed), *ids.tolist()]))
            if warp:
                x[mask] = random_affine(x[mask], rng, rotate=self.rotate, zoom=self.zoom, elastic=self.elastic)
            if self.shift > 0:
                x[mask] = random_shift(x[mask], self.shift, rng)
        y_int = self.targets[ids, :steps] if self.op == "running-sum" else self.targets[ids]
        y_int = torch.from_numpy(np.ascontiguousarray(y_int))
        return {
            "x": torch.from_numpy(x).unsqueeze(2),  # (B, T, H, W) -> (B, T, 1, H, W)
            "lengths": torch.from_numpy(lengths.astype(np.int64)),
            "mask": torch.from_numpy(mask),
            "y": y_int.to(torch.float32),
            "y_int": y_int,
            "digits": torch.from_numpy(self.digits[ids, :steps].copy()),
            "indices": torch.from_numpy(rows.copy()),
            "ids": torch.from_numpy(ids),
        }


ELASTIC_GRID = 5  # control points per side of an elastic field: one bend spans about a quarter of the image


def smooth_field(rng: np.random.Generator, n: int, points: tuple[int, int], size: tuple[int, int],
                 amplitude: float) -> torch.Tensor:
    """``(N, 2, H, W)`` random displacements in pixels, (dx, dy) per pixel: a ``points`` (rows, columns)
    grid of control points each moved by up to ``amplitude`` along each axis, interpolated bicubically
    over ``size`` (H, W). The bend of Simard, Steinkraus and Platt (2003), shared by digits and lines."""
    control = rng.uniform(-amplitude, amplitude, size=(n, 2, *points)).astype(np.float32)
    return torch.nn.functional.interpolate(torch.from_numpy(control), size=size, mode="bicubic", align_corners=True)


def random_affine(images: np.ndarray, rng: np.random.Generator, *, rotate: float, zoom: float,
                  elastic: float = 0.0) -> np.ndarray:
    """Rotate each ``(N, H, W)`` image by a random angle within +-``rotate`` degrees and scale it by a
    random factor within ``1 +- zoom`` about its centre (bilinear; pixels from outside are 0).

    ``elastic`` > 0 also bends each image by a smooth random displacement field (Simard, Steinkraus and
    Platt 2003): every one of ``ELASTIC_GRID`` x ``ELASTIC_GRID`` control points moves by up to
    ``elastic`` pixels along each axis, and bicubic interpolation spreads that over the pixels. The
    warp and the affine map share one resampling. With ``elastic=0`` the random draws are the same as
    without the argument."""
    n, h, w = images.shape
    angle = np.deg2rad(rng.uniform(-rotate, rotate, size=n))
    scale = rng.uniform(1.0 - zoom, 1.0 + zoom, size=n)
    cos, sin = np.cos(angle) / scale, np.sin(angle) / scale  # output -> input coordinates: the inverse map
    theta = np.zeros((n, 2, 3), dtype=np.float32)
    theta[:, 0, 0], theta[:, 0, 1], theta[:, 1, 0], theta[:, 1, 1] = cos, -sin, sin, cos
    x = torch.from_numpy(images).unsqueeze(1)  # (N, H, W) -> (N, 1, H, W)
    grid = torch.nn.functional.affine_grid(torch.from_numpy(theta), list(x.shape), align_corners=False)
    if elastic > 0:
        field = smooth_field(rng, n, (ELASTIC_GRID, ELASTIC_GRID), (h, w), elastic)  # (N, 2, H, W) in pixels
        pixel = torch.tensor([2.0 / w, 2.0 / h]).view(1, 2, 1, 1)  # a pixel in grid_sample's -1..1 units
        grid = grid + (field * pixel).permute(0, 2, 3, 1)  # (N, H, W, 2)
    out = torch.nn.functional.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return out.squeeze(1).numpy()  # (N, 1, H, W) -> (N, H, W)


def random_shift(images: np.ndarray, shift: int, rng: np.random.Generator) -> np.ndarray:
    """Move each ``(N, H, W)`` image by whole pixels, independently up to ``shift`` along each axis;
    pixels shifted in are 0 (MNIST's background)."""
    n, h, w = images.shape
    padded = np.pad(images, ((0, 0), (shift, shift), (shift, shift)))  # (N, H + 2s, W + 2s)
    top, left = rng.integers(0, 2 * shift + 1, size=(2, n))
    rows = top[:, None] + np.arange(h)  # (N, H)
    cols = left[:, None] + np.arange(w)  # (N, W)
    return padded[np.arange(n)[:, None, None], rows[:, :, None], cols[:, None, :]]  # (N, H, W)


def collate_sequences(items: Sequence[DigitItem]) -> dict[str, torch.Tensor]:
    """Pad a list of items to the longest one (zeros; -1 for digits and indices).

    Keys: ``x`` (B, T, 1, H, W) float32, ``lengths`` (B,) int64, ``mask`` (B, T) bool (valid steps),
    ``y`` float32 and ``y_int`` int64 ((B,) for sum/product, (B, T) for running-sum, 0 where padded),
    ``digits`` and ``indices`` (B, T) int64, ``ids`` (B,) int64.
    """
    if not items:
        raise DataError("expected at least one item to collate, got none")
    shapes = {tuple(item.x.shape[1:]) for item in items}
    kinds = {item.y.dim() for item in items}
    if len(shapes) != 1 or len(kinds) != 1:
        raise DataError(f"expected items of one image shape and one target kind, got shapes {sorted(shapes)} "
                        f"and target ranks {sorted(kinds)}")
    lengths = torch.tensor([len(item.x) for item in items], dtype=torch.int64)
    x = pad_sequence([item.x for item in items], batch_first=True)  # B x (T_b, 1, H, W) -> (B, T, 1, H, W)
    mask = torch.arange(x.shape[1])[None, :] < lengths[:, None]  # (B, T)
    if kinds == {0}:
        y_int = torch.stack([item.y for item in items])  # B x () -> (B,)
    else:
        y_int = pad_sequence([item.y for item in items], batch_first=True)  # B x (T_b,) -> (B, T)
    return {
        "x": x,
        "lengths": lengths,
        "mask": mask,
        "y": y_int.to(torch.float32),
        "y_int": y_int,
        "digits": pad_sequence([item.digits for item in items], batch_first=True, padding_value=-1),
        "indices": pad_sequence([item.indices for item in items], batch_first=True, padding_value=-1),
        "ids": torch.tensor([item.id for item in items], dtype=torch.int64),
    }


def val_test_pools(num_test_digits: int, seed: int = VAL_TEST_SEED) -> tuple[np.ndarray, np.ndarray]:
    """Disjoint halves of the test digits' indices (sorted): ``(validation, test)``.

    A fixed permutation rather than the first/second half: MNIST's test set is ordered by writer group.
    """
    order = np.random.default_rng(seed).permutation(num_test_digits)
    half = num_test_digits // 2
    return np.sort(order[:half]), np.sort(order[half:])


def make_digit_sequences(train_split, test_split, *, op: str = "sum", max_len: int = 4, min_len: int = 1,
                         num_train: int = 10000, num_val: int = 1000, num_test: int = 1000,
                         seed: int = 0, quiet: bool = False) -> tuple[DigitSequences, DigitSequences, DigitSequences,
                                                                     dict]:
    """Training sequences from ``train_split`` digits; validation and test sequences from disjoint
    halves of ``test_split`` digits. Returns ``(train, val, test, meta)``, and logs their sizes
    (:func:`describe_sequences`) unless ``quiet``: a caller that builds its own test split logs them.

    ``meta`` is JSON-friendly: op, lengths, ``input_shape`` ``[None, 1, H, W]``, ``num_target_classes``,
    the source, and the training targets' mean and std (to scale a regression output).
    """
    if train_split.image_shape != test_split.image_shape:
        raise DataError(f"expected train and test digits of one size, got {train_split.image_shape} "
                        f"and {test_split.image_shape}")
    val_pool, test_pool = val_test_pools(len(test_split))
    common = dict(op=op, max_len=max_len, min_len=min_len)
    train = DigitSequences.from_split(train_split, num_sequences=num_train, seed=(seed, 0), **common)
    val = DigitSequences.from_split(test_split, num_sequences=num_val, seed=(seed, 1), pool=val_pool, **common)
    test = DigitSequences.from_split(test_split, num_sequences=num_test, seed=(seed, 2), pool=test_pool, **common)
    valid_targets = train.targets[np.arange(train.max_len)[None, :] < train.lengths[:, None]] \
        if op == "running-sum" else train.targets
    meta = {
        "op": op, "min_len": min_len, "max_len": max_len, "seed": seed,
        "input_shape": [None, *train.image_shape],
        "num_target_classes": num_target_classes(op, max_len),
        "source": getattr(train_split, "source", "unknown"),
        "max_value": train.max_value,
        "sizes": {"train": len(train), "val": len(val), "test": len(test)},
        "pool_sizes": {"train": len(train_split), "val": len(val_pool), "test": len(test_pool)},
        "target_mean": float(valid_targets.mean()) if valid_targets.size else 0.0,
        "target_std": float(valid_targets.std()) if valid_targets.size else 1.0,
    }
    if not quiet:
        logger.info(describe_sequences(op, meta["source"], train=train, val=val, test=test))
    return train, val, test, meta


def describe_sequences(op: str, source: str, **sets: DigitSequences) -> str:
    """One line of what a run reads: ``digit sequences (sum) from SOURCE: 20,000 train of 1..4 digits,
    1,000 val of 1..4 digits, 2,000 test of 1..8 digits`` (``sets`` by split name, in order)."""
    sizes = ", ".join(f"{len(s):,} {name} of {s.min_len}..{s.max_len} digits" for name, s in sets.items())
    return f"digit sequences ({op}) from {source}: {sizes}"


def make_length_eval_sets(test_split, max_len: int, *, op: str = "sum", num_per_length: int = 500,
                          seed: int = 0, pool: np.ndarray | None = None) -> dict[int, DigitSequences]:
    """One set of sequences of exactly L digits for each L in ``1..2*max_len`` (length generalisation).

    Digits come from the test half of ``test_split`` (``val_test_pools``) unless ``pool`` is given.
    Lengths past ``max_len`` have targets beyond a classification head of ``num_target_classes(op, max_len)``.
    """
    if pool is None:
        pool = val_test_pools(len(test_split))[1]
    return {length: DigitSequences.from_split(test_split, op=op, min_len=length, max_len=length,
                                              num_sequences=num_per_length, seed=(seed, 100 + length), pool=pool)
            for length in range(1, 2 * max_len + 1)}
