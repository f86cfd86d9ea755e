"""The ``digits`` recipe: the sum, product or running sum of a sequence of 1..N handwritten digits (seed 002).

Training sequences draw from MNIST's training digits, validation and test sequences from disjoint
halves of its test digits (``convrnn.data.sequences``). Validation holds lengths 1..N like training;
the test split holds lengths 1..2N (uniform) from the test half, so ``convrnn eval RUN --split test``
reports how the model generalises to longer sequences, per length.

The head is a regression (``reg``: one standardised real value, MSE), a classification over the
possible values (``cls``: ``0..9N`` for sums, ``0..9^N`` for products) or, for sums, a distribution
over 0..9 per digit whose convolution is the distribution of the sum (``dist``, trained by the sum's
likelihood: ``SumOfValuesTask``). ``auto`` picks ``dist`` for sums, ``cls`` for products (a
regression head must learn a multiplication table's large, sparse values with a squared error
dominated by the rare big products, see docs/digits.md) and ``reg`` for running sums. Training
digits are shifted, turned and scaled a little per batch (``shift``, ``rotate``, ``zoom``).

Shape:
    batch ``x``: ``(B, T, 1, H, W)``; ``lengths``: ``(B,)``; ``mask``: ``(B, T)``;
    ``y_int``: ``(B,)`` (sum, product) or ``(B, T)`` (running-sum).
    B batch, T time steps (digits), H height, W width (28x28 MNIST, 8x8 for the offline fallback).
"""
# B batch, T time steps, C channels (1), H height, W width
from __future__ import annotations

import logging
from dataclasses import dataclass
import numpy as np
import torch
from PIL import Image

from convrnn.data.images import load_gray, to_ink
from convrnn.data.batching import IndexedBatches
from convrnn.data.mnist import load_mnist, mnist_source
from convrnn.data.sequences import (OPS, DigitSequences, make_digit_sequences, num_target_classes,
                                    val_test_pools)
from convrnn.errors import ConfigError, DataError
from convrnn.recipes import CliOption, DataBundle, Recipe, register_recipe
from convrnn.tasks.regress import RegressTask, SumOfValuesTask, ValueClassifyTask
from convrnn.train.config import path_field

log = logging.getLogger(__name__)

HEADS = ("auto", "reg", "cls", "dist")
DIGIT_VALUES = 10  # a digit is worth 0..9: the per-step distributions of the ``dist`` head
ACTIVATIONS = ("", "relu", "tanh", "sigmoid", "gelu", "elu", "leaky", "linear")


@dataclass
class DigitsDataConfig:
    """Which digits, which target, how many sequences; and the model choices the data decides."""

    # MNIST IDX files, or "sklearn" for scikit-learn's 8x8 digits; empty = $CONVRNN_MNIST_DIR, else
    # ~/.cache/convrnn/mnist, else the 8x8 digits (the run's config records which)
    data_dir: str = path_field(keep=("sklearn",))
    op: str = "sum"            # sum, product, running-sum
    max_len: int = 4           # N: training and validation sequences have 1..N digits; test 1..2N
    min_len: int = 1
    num_train: int = 20000     # training sequences (index arrays over the training digits: cheap)
    num_val: int = 1000
    num_test: int = 2000       # lengths 1..2N, about num_test / 2N of each
    shift: int = 2             # training digits move by up to this many pixels (at most a tenth of the width; 0 = off)
    rotate: float = 10.0       # training digits turn by up to this many degrees (0 = off)
    zoom: float = 0.1          # training digits scale by up to 1 +- zoom (0 = off)
    elastic: float = 0.0       # training digits bend smoothly by up to this many pixels (0 = off)
    head: str = "auto"         # reg, cls, dist (sums only), or auto (dist for sum, cls for product, reg otherwise)
    activation: str = ""       # rewrites the preset's conv activations (relu, tanh, ...); empty = the preset's
    seed: int = 0              # which sequences are drawn (the training order follows train.seed)


def resolve_head(cfg: DigitsDataConfig) -> str:
    if cfg.head not in HEADS:
        raise ConfigError(f"data.head: expected one of {', '.join(HEADS)}, got {cfg.head!r}")
    if cfg.head == "auto":  # before DigitsRecipe.prepare knows the model: a head any spec can have
        return "cls" if cfg.op == "product" else "reg"
    return cfg.head


def validate(cfg: DigitsDataConfig) -> None:
    checks = [
        (cfg.op in OPS, "data.op", "one of " + ", ".join(OPS), cfg.op),
        (1 <= cfg.min_len <= cfg.max_len, "data.min_len/max_len", "1 <= min_len <= max_len",
         f"{cfg.min_len}/{cfg.max_len}"),
        (cfg.num_train >= 1 and cfg.num_val >= 1, "data.num_train/num_val", "at least 1 each",
         f"{cfg.num_train}/{cfg.num_val}"),
        (cfg.num_test >= 0, "data.num_test", "0 or more", cfg.num_test),
        (cfg.activation in ACTIVATIONS, "data.activation", "one of " + ", ".join(a for a in ACTIVATIONS if a),
         cfg.activation),
        (cfg.shift >= 0, "data.shift", "0 or more pixels", cfg.shift),
        (0 <= cfg.rotate <= 45, "data.rotate", "0..45 degrees", cfg.rotate),
        (0 <= cfg.zoom < 0.5, "data.zoom", "0 <= zoom < 0.5", cfg.zoom),
        (0 <= cfg.elastic <= 5, "data.elastic", "0..5 pixels", cfg.elastic),
        (resolve_head(cfg) != "dist" or cfg.op == "sum", "data.head",
         "reg, cls or auto for a product or running sum (dist models a sum of per-digit values)", cfg.head),
        (not (cfg.op == "product" and cfg.max_len > 4 and resolve_head(cfg) == "cls"), "data.max_len",
         "at most 4 for a product classification head (9^N + 1 classes)", cfg.max_len),
    ]
    for ok, key, expected, got in checks:
        if not ok:
            raise ConfigError(f"{key}: expected {expected}, got {got!r}")


def sequence_batches(data: DigitSequences, batch_size: int, *, shuffle: bool, seed: int = 0) -> IndexedBatches:
    """Batches gathered in one numpy step; shuffled batches group sequences of similar length (less padding)."""
    key = (lambda i: int(data.lengths[i])) if shuffle else None
    return IndexedBatches(data, batch_size, fetch=data.batch, shuffle=shuffle, seed=seed, sort_key=key)


def load_splits(data_dir: str):
    """MNIST train and test splits (or the scikit-learn fallback, with a warning from ``load_mnist``)."""
    directory = data_dir or None
    return load_mnist(directory, "train"), load_mnist(directory, "test")


@register_recipe
class DigitsRecipe(Recipe):
    name = "digits"
    description = "sum, product or running sum of 1..N MNIST digits (seed 002)"
    default_preset = "digits"
    preset_tasks = ("regress", "value_classify", "value_sum")
    data_config = DigitsDataConfig
    # AdamW with decoupled weight decay 0.2: the reader memorises its 19,690 training digits well within
    # the 5 minutes, and decay is a remedy that costs no steps (docs/digits.md)
    train_defaults = {"epochs": 200, "max_time": 300.0, "batch_size": 64, "optimizer": "adamw", "lr": 3e-3,
                      "weight_decay": 0.2, "schedule": "cosine",
                      "clip_grad_norm": 1.0, "checkpoint_every": 500, "log_every": 50}
    cli_options = (
        CliOption("--op", "data.op", "target: sum, product or running-sum (a value after every digit)"),
        CliOption("--max-len", "data.max_len", "longest training sequence N (test sequences go to 2N)", type=int),
        CliOption("--data-dir", "data.data_dir", "folder of MNIST IDX files (default $CONVRNN_MNIST_DIR, "
                  "else ~/.cache/convrnn/mnist; scikit-learn's 8x8 digits when none are found)"),
        CliOption("--head", "data.head", "reg (regression), cls (a class per possible value), dist (sums: a "
                  "distribution per digit, the sum's by convolution) or auto"),
        CliOption("--activation", "data.activation", "conv activation replacing the preset's (relu, tanh, ...)"),
        CliOption("--num-train", "data.num_train", "number of training sequences", type=int),
    )

    def prepare(self, cfg) -> None:
        """Resolve ``head=auto`` once the model is known: ``dist`` for sums when the preset builds its head
        from the op (the ``digits`` preset); ``reg`` for a seed reproduction (caine2016's dense 1) or a
        user's spec, whose head the user wrote; ``cls`` for products."""
        from convrnn.models import preset_fields

        d = cfg.data
        if d.head == "auto":
            builds_head = not cfg.model.spec and "op" in preset_fields(cfg.model.preset or self.default_preset)
            d.head = "dist" if d.op == "sum" and builds_head else resolve_head(d)

    def resolve_data(self, data_cfg: DigitsDataConfig) -> None:
        data_cfg.data_dir = mnist_source(data_cfg.data_dir, what="--data-dir")

    def make_data(self, data_cfg: DigitsDataConfig, train_cfg, *, progress=None) -> DataBundle:
        validate(data_cfg)
        head = resolve_head(data_cfg)
        train_split, test_split = load_splits(data_cfg.data_dir)
        train, val, _, meta = make_digit_sequences(
            train_split, test_split, op=data_cfg.op, max_len=data_cfg.max_len, min_len=data_cfg.min_len,
            num_train=data_cfg.num_train, num_val=data_cfg.num_val, num_test=0, seed=data_cfg.seed)
        train.shift = min(data_cfg.shift, train.image_shape[-1] // 10)  # at most a tenth of the width: off for 8x8
        train.rotate, train.zoom, train.elastic = data_cfg.rotate, data_cfg.zoom, data_cfg.elastic
        test_pool = val_test_pools(len(test_split))[1]
        test = DigitSequences.from_split(test_split, op=data_cfg.op, min_len=1, max_len=2 * data_cfg.max_len,
                                         num_sequences=data_cfg.num_test, seed=(data_cfg.seed, 3), pool=test_pool)
        per_step = data_cfg.op == "running-sum"
        if data_cfg.op == "sum":
            # scale only: a head that adds per-step values (reg:sum) has no constant to subtract a mean
            # with, and the sum of an empty sequence is 0 either way
            meta["target_mean"] = 0.0
        fields = {"head": head, "per_step": per_step}
        if data_cfg.activation:
            fields["activation"] = data_cfg.activation
        meta.update(head=head, per_step=per_step, preset_fields=fields, preset_hints={"op": data_cfg.op},
                    image_shape=list(train.image_shape), test_max_len=2 * data_cfg.max_len)
        meta["sizes"]["test"] = len(test)
        num_outputs = {"cls": meta["num_target_classes"], "dist": DIGIT_VALUES}.get(head, 1)
        bs = train_cfg.batch_size
        return DataBundle(train=sequence_batches(train, bs, shuffle=True, seed=train_cfg.seed),
                          val=sequence_batches(val, max(bs, 256), shuffle=False),
                          test=sequence_batches(test, max(bs, 256), shuffle=False) if len(test) else None,
                          input_shape=(None, *train.image_shape), num_outputs=num_outputs, meta=meta)

    def make_task(self, meta: dict):
        if meta["head"] == "cls":
            return ValueClassifyTask(meta["num_target_classes"], per_step=meta["per_step"])
        if meta["head"] == "dist":
            return SumOfValuesTask(DIGIT_VALUES)
        return RegressTask(per_step=meta["per_step"], target_mean=meta["target_mean"],
                           target_std=meta["target_std"])

    def predict(self, model, ckpt: dict, inputs: list[str], **options) -> list[str]:
        """The images, in order, are one sequence: its value (sum, product), or a value after each image."""
        meta = ckpt["meta"]
        x = torch.from_numpy(np.stack([read_digit(p, tuple(meta["image_shape"][1:])) for p in inputs]))
        x = x[None, :, None]  # (T, H, W) -> (1, T, 1, H, W)
        lengths = torch.tensor([len(inputs)])
        task = self.make_task(meta)
        with torch.inference_mode():
            out = model.run(x, lengths, need_state=False)
            values = task.values(out)[0]  # (1,) or (1, T) -> () or (T,)
        if meta["per_step"]:
            return [f"{path}\t{int(round(float(v)))}" for path, v in zip(inputs, values.reshape(-1))]
        value = float(values)
        if meta["head"] == "cls":
            p = float(out.y[0].float().softmax(-1).max())
            return [f"{meta['op']}\t{int(value)}\tp={p:.3f}"]
        return [f"{meta['op']}\t{int(round(value))}\traw={value:.3f}"]


def read_digit(path: str, size: tuple[int, int]) -> np.ndarray:
    """One digit image as float32 ``(H, W)`` in 0..1 with bright ink (MNIST's polarity), resized to ``size``."""
    gray = load_gray(path)
    if gray.shape != size:
        if min(gray.shape) < 4:
            raise DataError(f"{path}: expected a digit image of {size[0]}x{size[1]} pixels (or larger, to be "
                            f"resized), got {gray.shape[0]}x{gray.shape[1]}")
        ink = to_ink(gray)
        resized = Image.fromarray((ink * 255).astype(np.uint8)).resize((size[1], size[0]), Image.BILINEAR)
        log.info("%s: resized %dx%d -> %dx%d", path, *gray.shape, *size)
        return np.asarray(resized, dtype=np.float32) / 255.0
    return to_ink(gray).astype(np.float32)

