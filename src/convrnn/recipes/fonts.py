"""The ``fonts`` recipe: which font is this text-line image in? (seeds 000/001)

Images of ``height x width`` pixels (default 16x64) rendered from text lines in K fonts; the model
slices them into blocks or columns, runs one convolution on every step, and an LSTM over the steps.
"""
# B batch (images), N windows of all images, C channels, H height, W width, V classes
from __future__ import annotations

import numpy as np
import torch

from convrnn.data.batching import IndexedBatches
from convrnn.data.fonts import FontsDataConfig, make_fonts_data, read_line_windows
from convrnn.recipes import CliOption, DataBundle, Recipe, register_recipe
from convrnn.tasks.classify import ClassifyTask


# Windows per model call in predict: a few tens of MB of activations for the default model.
PREDICT_CHUNK = 1024


def array_fetcher(images: np.ndarray, labels: np.ndarray):
    """Batches straight from uint8 arrays: ``(N, H, W)`` -> ``x`` ``(B, 1, H, W)`` float in 0..1."""
    images_t = torch.from_numpy(images)
    labels_t = torch.from_numpy(labels.astype(np.int64))

    def fetch(idx: np.ndarray) -> dict:
        i = torch.from_numpy(idx)
        x = images_t[i].unsqueeze(1).float().div_(255.0)  # (B, H, W) -> (B, 1, H, W)
        return {"x": x, "y": labels_t[i], "ids": i}

    return fetch


@register_recipe
class FontsRecipe(Recipe):
    name = "fonts"
    description = "font classification of rendered text-line images (seeds 000/001)"
    default_preset = "fonts"
    data_config = FontsDataConfig
    train_defaults = {"epochs": 30, "max_time": 100.0, "batch_size": 64, "lr": 3e-3, "schedule": "cosine",
                      "checkpoint_every": 500}
    cli_options = (
        CliOption("--fonts", "data.fonts", "font file (.ttf/.otf) or folder; repeat for each class "
                  "(default: five faces bundled with matplotlib)", multiple=True),
        CliOption("--text", "data.text", "UTF-8 text file whose lines are rendered (default: embedded text)"),
        CliOption("--height", "data.height", "image height in pixels", type=int),
        CliOption("--width", "data.width", "image width in pixels", type=int),
        CliOption("--samples-per-font", "data.samples_per_font", "images rendered per font (train + val)", type=int),
    )

    def make_data(self, data_cfg: FontsDataConfig, train_cfg, *, progress=None) -> DataBundle:
        train, val, meta = make_fonts_data(data_cfg, progress=progress)
        bs = train_cfg.batch_size
        train_src = IndexedBatches(train, bs, fetch=array_fetcher(train.images, train.labels), seed=train_cfg.seed)
        val_src = IndexedBatches(val, max(bs, 256), fetch=array_fetcher(val.images, val.labels), shuffle=False)
        return DataBundle(train=train_src, val=val_src, input_shape=(1, data_cfg.height, data_cfg.width),
                          num_outputs=len(meta["classes"]), meta=meta)

    def make_task(self, meta: dict) -> ClassifyTask:
        return ClassifyTask(meta["classes"])

    def predict(self, model, ckpt: dict, inputs: list[str], **options) -> list[str]:
        """Font name and probability for each line image, of any size (see :func:`read_line_windows`).

        The line is scaled to the model's height and read in windows of the model's width, half a window
        apart; the windows' distributions are multiplied (mean of their log-probabilities, renormalised).
        Every image is read before the model runs, so a bad file fails before any output. The windows
        of all images are batched together, at most PREDICT_CHUNK of them per model call.
        """
        _, height, width = ckpt["input_shape"]
        windows = [read_line_windows(path, int(height), int(width)) for path in inputs]
        counts = torch.tensor([len(w) for w in windows])
        x = torch.from_numpy(np.concatenate(windows)).unsqueeze(1)  # (N, H, W) -> (N, 1, H, W), N windows in all
        with torch.inference_mode():
            logits = torch.cat([model(chunk) for chunk in x.split(PREDICT_CHUNK)])
            log_probs = torch.log_softmax(logits.float(), dim=-1)  # (N, V)
            image = torch.repeat_interleave(torch.arange(len(inputs)), counts)  # (N,) image of each window
            summed = torch.zeros(len(inputs), log_probs.shape[1]).index_add_(0, image, log_probs)
            combined = summed / counts.unsqueeze(1)  # (B, V) mean log-probability per image
        task = self.make_task(ckpt["meta"])
        return [f"{path}\t{name}\t{p:.3f}" for path, (name, p) in zip(inputs, task.predict(combined))]
