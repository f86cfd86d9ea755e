"""The ``mnist`` recipe: a plain CNN that classifies single digits, to compare with the digits recipe.

Its first layers match ``caine2016`` (8 kernels of 4x4, then 16 of 3x3), so ``convrnn plot filters``
can put its first-layer kernels beside those the sequence model learned. Training uses MNIST's
training digits; validation and test are the disjoint halves of its test digits that the digits
recipe uses for its validation and test sequences.

Shape:
    batch ``x``: ``(B, 1, H, W)`` float in 0..1, ``y``: ``(B,)`` int64 digit classes.
    B batch, H height, W width (28x28 MNIST, 8x8 for the bundled fallback).
"""
# B batch, C channels (1), H height, W width
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from convrnn.data.batching import IndexedBatches, array_fetcher
from convrnn.data.mnist import load_mnist_splits, mnist_source
from convrnn.data.sequences import val_test_pools
from convrnn.fields import checked, path_field
from convrnn.recipes.base import CliOption, DataBundle, Recipe, register_recipe
from convrnn.recipes.digits import DATA_DIR_HELP, digit_fill, read_digit
from convrnn.tasks.classify import ClassifyTask

CLASSES = [str(d) for d in range(10)]


@dataclass
class MnistDataConfig:
    # MNIST IDX files, or "sklearn" for scikit-learn's 8x8 digits; empty = $CONVRNN_MNIST_DIR, else
    # ~/.cache/convrnn/mnist, else the 8x8 digits (the run's config records which)
    data_dir: str = path_field(keep=("sklearn",))
    max_train: int = checked(0, lambda v: v >= 0, "0 or more")  # use only the first N training digits; 0 = all


class _Rows:
    """A length for IndexedBatches: the number of digits of a split's subset."""

    def __init__(self, n: int):
        self.n = n

    def __len__(self) -> int:
        return self.n


@register_recipe
class MnistRecipe(Recipe):
    """Single-digit classification with caine2016's first conv layers (to compare their filters)."""

    name = "mnist"
    default_preset = "mnist_cnn"
    data_config = MnistDataConfig
    train_defaults = {"epochs": 3, "max_time": 120.0, "batch_size": 64, "lr": 2e-3, "schedule": "cosine",
                      "checkpoint_every": 500, "log_every": 50}
    cli_options = (
        CliOption("--data-dir", "data.data_dir", DATA_DIR_HELP),
        CliOption("--max-train", "data.max_train", "use only the first N training digits (0 = all)", type=int),
    )

    input_meta = ("image_shape", "max_value")
    label_meta = ("classes",)

    def resolve_data(self, data_cfg: MnistDataConfig) -> None:
        data_cfg.data_dir = mnist_source(data_cfg.data_dir, what="--data-dir")

    def make_data(self, data_cfg: MnistDataConfig, train_cfg, *, progress=None) -> DataBundle:
        train, test = load_mnist_splits(data_cfg.data_dir)
        n_train = min(len(train), data_cfg.max_train) if data_cfg.max_train else len(train)
        val_rows, test_rows = val_test_pools(len(test))
        bs = train_cfg.batch_size

        def source(split, rows, shuffle):
            fetch = array_fetcher(split.images, split.labels, rows=rows, max_value=float(split.max_value))
            return IndexedBatches(_Rows(len(rows)), bs if shuffle else max(bs, 512), fetch=fetch,
                                  shuffle=shuffle, seed=train_cfg.seed)

        meta = {"classes": CLASSES, "source": train.source, "image_shape": [1, *train.image_shape],
                "max_value": train.max_value}
        return DataBundle(train=source(train, np.arange(n_train), True), val=source(test, val_rows, False),
                          test=source(test, test_rows, False), input_shape=(1, *train.image_shape),
                          num_outputs=10, meta=meta)

    def make_task(self, meta: dict, output_shape: tuple) -> ClassifyTask:
        return ClassifyTask(meta["classes"])

    def predict(self, loaded, inputs: list[str], **options) -> list[str]:
        """The digit and its probability for each image (bright ink, fitted to the model's size like MNIST's
        digits: :func:`convrnn.recipes.digits.read_digit`)."""
        size, fill = tuple(loaded.ckpt["input_shape"][1:]), digit_fill(loaded.ckpt["meta"])
        x = torch.from_numpy(np.stack([read_digit(p, size, fill) for p in inputs]))
        x = x.unsqueeze(1)  # (B, H, W) -> (B, 1, H, W)
        with torch.inference_mode():
            logits = loaded.model(x)
        return [f"{path}\t{name}\t{p:.3f}" for path, (name, p) in zip(inputs, loaded.task.predict(logits))]

    def report_sections(self, ctx) -> list:
        from convrnn.viz.sections import classify_sections
        return classify_sections(ctx)
