"""The ``mnist`` recipe: a plain CNN that classifies single digits (seed 002's comparison model).

Its first layers match ``caine2016`` (8 kernels of 4x4, then 16 of 3x3), so ``convrnn plot filters``
can put its first-layer kernels beside those the sequence model learned. Training uses MNIST's
training digits; validation and test are the disjoint halves of its test digits that the digits
recipe uses for its validation and test sequences.

Shape:
    batch ``x``: ``(B, 1, H, W)`` float in 0..1, ``y``: ``(B,)`` int64 digit classes.
    B batch, H height, W width (28x28 MNIST, 8x8 for the offline fallback).
"""
# B batch, C channels (1), H height, W width
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from convrnn.data.batching import IndexedBatches
from convrnn.data.mnist import mnist_source
from convrnn.data.sequences import val_test_pools
from convrnn.recipes import CliOption, DataBundle, Recipe, register_recipe
from convrnn.recipes.digits import load_splits, read_digit
from convrnn.errors import ConfigError
from convrnn.tasks.classify import ClassifyTask
from convrnn.train.config import path_field

CLASSES = [str(d) for d in range(10)]


@dataclass
class MnistDataConfig:
    # MNIST IDX files, or "sklearn" for scikit-learn's 8x8 digits; empty = $CONVRNN_MNIST_DIR, else
    # ~/.cache/convrnn/mnist, else the 8x8 digits (the run's config records which)
    data_dir: str = path_field(keep=("sklearn",))
    activation: str = ""       # rewrites the preset's conv activations; empty = the preset's
    max_train: int = 0         # use only the first N training digits; 0 = all


def digit_fetcher(images: np.ndarray, labels: np.ndarray, rows: np.ndarray, max_value: float):
    """Batches from uint8 arrays: item k is digit ``rows[k]``; ``x`` ``(B, 1, H, W)`` float in 0..1."""
    images_t, labels_t, rows_t = torch.from_numpy(images), torch.from_numpy(labels), torch.from_numpy(rows)

    def fetch(idx: np.ndarray) -> dict:
        i = rows_t[torch.from_numpy(idx)]
        x = images_t[i].unsqueeze(1).float().div_(max_value)  # (B, H, W) -> (B, 1, H, W)
        return {"x": x, "y": labels_t[i], "ids": i}

    return fetch


class _Rows:
    """A length for IndexedBatches: the number of digits of a split's subset."""

    def __init__(self, n: int):
        self.n = n

    def __len__(self) -> int:
        return self.n


@register_recipe
class MnistRecipe(Recipe):
    name = "mnist"
    description = "single MNIST digit classification with caine2016's first conv layers (to compare filters)"
    default_preset = "mnist_cnn"
    preset_tasks = ("classify",)
    data_config = MnistDataConfig
    train_defaults = {"epochs": 3, "max_time": 120.0, "batch_size": 64, "lr": 2e-3, "schedule": "cosine",
                      "checkpoint_every": 500, "log_every": 50}
    cli_options = (
        CliOption("--data-dir", "data.data_dir", "folder of MNIST IDX files (default $CONVRNN_MNIST_DIR, "
                  "else ~/.cache/convrnn/mnist; scikit-learn's 8x8 digits when none are found)"),
        CliOption("--activation", "data.activation", "conv activation replacing the preset's (relu, tanh, ...)"),
        CliOption("--max-train", "data.max_train", "use only the first N training digits (0 = all)", type=int),
    )

    def resolve_data(self, data_cfg: MnistDataConfig) -> None:
        data_cfg.data_dir = mnist_source(data_cfg.data_dir, what="--data-dir")

    def make_data(self, data_cfg: MnistDataConfig, train_cfg, *, progress=None) -> DataBundle:
        if data_cfg.max_train < 0:
            raise ConfigError(f"data.max_train: expected 0 or more, got {data_cfg.max_train}")
        train, test = load_splits(data_cfg.data_dir)
        n_train = min(len(train), data_cfg.max_train) if data_cfg.max_train else len(train)
        val_rows, test_rows = val_test_pools(len(test))
        bs = train_cfg.batch_size

        def source(split, rows, shuffle):
            fetch = digit_fetcher(split.images, split.labels, rows, float(split.max_value))
            return IndexedBatches(_Rows(len(rows)), bs if shuffle else max(bs, 512), fetch=fetch,
                                  shuffle=shuffle, seed=train_cfg.seed)

        meta = {"classes": CLASSES, "source": train.source, "image_shape": [1, *train.image_shape],
                "max_value": train.max_value,
                "preset_fields": {"activation": data_cfg.activation} if data_cfg.activation else {}}
        return DataBundle(train=source(train, np.arange(n_train), True), val=source(test, val_rows, False),
                          test=source(test, test_rows, False), input_shape=(1, *train.image_shape),
                          num_outputs=10, meta=meta)

    def make_task(self, meta: dict) -> ClassifyTask:
        return ClassifyTask(meta["classes"])

    def predict(self, model, ckpt: dict, inputs: list[str], **options) -> list[str]:
        """The digit and its probability for each image (resized to the model's size, bright ink)."""
        size = tuple(ckpt["input_shape"][1:])
        x = torch.from_numpy(np.stack([read_digit(p, size) for p in inputs])).unsqueeze(1)  # (B, H, W) -> (B, 1, H, W)
        with torch.inference_mode():
            logits = model(x)
        task = self.make_task(ckpt["meta"])
        return [f"{path}\t{name}\t{p:.3f}" for path, (name, p) in zip(inputs, task.predict(logits))]
