"""The ``digits`` recipe: the sum, product or running sum of a sequence of 1..N handwritten digits.

Training sequences draw from MNIST's training digits, validation and test sequences from disjoint
halves of its test digits (``convrnn.data.sequences``). Validation holds lengths 1..N like training;
the test split holds lengths 1..2N (uniform) from the test half, so ``convrnn eval RUN --split test``
reports how the model generalises to longer sequences, per length.

How the model gives the target is its head, a field of the preset (``--preset digits:head=reg``): a
regression (``reg``: one standardised real value, MSE), a classification over the possible values
(``cls``: ``0..9N`` for sums, ``0..9^N`` for products) or, for sums, a distribution over 0..9 per
digit whose convolution is the distribution of the sum (``dist``, trained by the sum's likelihood:
``SumOfValuesTask``). The recipe tells the preset what the target is (``op``) and whether there is
one per step; the task follows from the model's output. Training digits are shifted, turned and
scaled a little per batch (``shift``, ``rotate``, ``zoom``).

Shape:
    batch ``x``: ``(B, T, 1, H, W)``; ``lengths``: ``(B,)``; ``mask``: ``(B, T)``;
    ``y_int``: ``(B,)`` (sum, product) or ``(B, T)`` (running-sum).
    B batch, T time steps (digits), H height, W width (28x28 MNIST, 8x8 for the bundled fallback).
"""
# B batch, T time steps, C channels (1), H height, W width
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from PIL import Image

from convrnn.data.batching import IndexedBatches
from convrnn.data.fonts import ink_box, read_ink
from convrnn.data.images import load_gray, to_ink
from convrnn.data.mnist import FALLBACK_SOURCE, load_mnist_splits, mnist_source
from convrnn.data.sequences import (MAX_PRODUCT_DIGITS, OPS, DigitSequences, describe_sequences, make_digit_sequences,
                                    num_target_classes, val_test_pools)
from convrnn.errors import DataError
from convrnn.fields import checked, one_of, path_field, seed_field
from convrnn.recipes.base import CliOption, DataBundle, Recipe, register_recipe
from convrnn.tasks.values import RegressTask, SumOfValuesTask, ValueClassifyTask
from convrnn.viz.html import (Section, captioned, esc, evaluate_metrics, figure_img, missing, note,
                              sample_id, table, thumbnail)
from convrnn.wording import plural

log = logging.getLogger(__name__)

WORST_SEQUENCES = 6  # worst sequences the report shows
DATA_DIR_HELP = ("folder of MNIST IDX files, or 'sklearn' for scikit-learn's 8x8 digits (default "
                 "$CONVRNN_MNIST_DIR, else ~/.cache/convrnn/mnist, else the 8x8 digits with a notice)")


@dataclass
class DigitsDataConfig:
    """Which digits, which target, how many sequences."""

    # MNIST IDX files, or "sklearn" for scikit-learn's 8x8 digits; empty = $CONVRNN_MNIST_DIR, else
    # ~/.cache/convrnn/mnist, else the 8x8 digits (the run's config records which)
    data_dir: str = path_field(keep=("sklearn",))
    op: str = one_of("sum", *OPS)
    max_len: int = checked(4, lambda v: v >= 1, "at least 1")  # N: training/validation lengths 1..N; test 1..2N
    min_len: int = checked(1, lambda v: v >= 1, "at least 1")
    num_train: int = checked(20000, lambda v: v >= 1, "at least 1")  # training sequences (index arrays: cheap)
    num_val: int = checked(1000, lambda v: v >= 1, "at least 1")
    num_test: int = checked(2000, lambda v: v >= 0, "0 or more")  # lengths 1..2N, about num_test / 2N of each
    # training digits move by up to this many pixels (at most a tenth of the width; 0 = off)
    shift: int = checked(2, lambda v: v >= 0, "0 or more pixels")
    rotate: float = checked(10.0, lambda v: 0 <= v <= 45, "0..45 degrees")  # training digits turn by up to this
    zoom: float = checked(0.1, lambda v: 0 <= v < 0.5, "0 <= zoom < 0.5")  # training digits scale by 1 +- zoom
    elastic: float = checked(0.0, lambda v: 0 <= v <= 5, "0..5 pixels")  # smooth bends of training digits
    seed: int = seed_field()   # which sequences are drawn (the training order follows train.seed)

    def check_together(self) -> list[tuple]:
        longest = 2 * self.max_len if self.num_test else self.max_len  # test sequences go to 2N digits
        return [(self.min_len <= self.max_len, "min_len/max_len", "min_len <= max_len",
                 f"{self.min_len}/{self.max_len}"),
                (self.op != "product" or longest <= MAX_PRODUCT_DIGITS, "max_len",
                 f"at most {MAX_PRODUCT_DIGITS // 2} for products (test sequences have up to 2N digits, and a "
                 f"product of more than {MAX_PRODUCT_DIGITS} digits can exceed a 64-bit integer; "
                 f"{MAX_PRODUCT_DIGITS} with data.num_test=0)", self.max_len)]


def sequence_batches(data: DigitSequences, batch_size: int, *, shuffle: bool, seed: int = 0) -> IndexedBatches:
    """Batches gathered in one numpy step; shuffled batches group sequences of similar length (less padding)."""
    key = (lambda i: int(data.lengths[i])) if shuffle else None
    return IndexedBatches(data, batch_size, fetch=data.batch, shuffle=shuffle, seed=seed, sort_key=key)


@register_recipe
class DigitsRecipe(Recipe):
    """The sum, product or running sum of a sequence of handwritten digits (a CNN per digit, into a GRU)."""

    name = "digits"
    default_preset = "digits"
    preset_tasks = ("regress", "value_classify", "value_sum")
    data_config = DigitsDataConfig
    report_split = "test"  # the per-length error needs the test split's longer sequences
    # AdamW with decoupled weight decay 0.2: the reader memorises its training digits well within the
    # budget, and decay is a remedy that costs no steps (docs/decisions.md)
    train_defaults = {"epochs": 200, "max_time": 300.0, "batch_size": 64, "optimizer": "adamw", "lr": 3e-3,
                      "weight_decay": 0.2, "schedule": "cosine",
                      "clip_grad_norm": 1.0, "checkpoint_every": 500, "log_every": 50}
    cli_options = (
        CliOption("--op", "data.op", "target: sum, product or running-sum (a value after every digit)"),
        CliOption("--max-len", "data.max_len", "longest training sequence N (test sequences go to 2N)", type=int),
        CliOption("--data-dir", "data.data_dir", DATA_DIR_HELP),
        CliOption("--num-train", "data.num_train", "number of training sequences", type=int),
    )

    input_meta = ("image_shape", "max_value")
    label_meta = ("op",)

    def resolve_data(self, data_cfg: DigitsDataConfig) -> None:
        data_cfg.data_dir = mnist_source(data_cfg.data_dir, what="--data-dir")

    def model_fields(self, data_cfg: DigitsDataConfig) -> dict:
        return {"op": data_cfg.op, "per_step": data_cfg.op == "running-sum"}

    def make_data(self, data_cfg: DigitsDataConfig, train_cfg, *, progress=None) -> DataBundle:
        train_split, test_split = load_mnist_splits(data_cfg.data_dir)
        train, val, _, meta = make_digit_sequences(
            train_split, test_split, op=data_cfg.op, max_len=data_cfg.max_len, min_len=data_cfg.min_len,
            num_train=data_cfg.num_train, num_val=data_cfg.num_val, num_test=0, seed=data_cfg.seed, quiet=True)
        train.shift = min(data_cfg.shift, train.image_shape[-1] // 10)  # at most a tenth of the width: off for 8x8
        train.rotate, train.zoom, train.elastic = data_cfg.rotate, data_cfg.zoom, data_cfg.elastic
        test_pool = val_test_pools(len(test_split))[1]
        # test sequences reach 2N digits; without any (num_test=0), products of up to 19 digits may train
        test_max_len = 2 * data_cfg.max_len if data_cfg.num_test else data_cfg.max_len
        test = DigitSequences.from_split(test_split, op=data_cfg.op, min_len=1, max_len=test_max_len,
                                         num_sequences=data_cfg.num_test, seed=(data_cfg.seed, 3), pool=test_pool)
        log.info(describe_sequences(data_cfg.op, meta["source"], train=train, val=val, test=test))
        if data_cfg.op == "sum":
            # scale only: a head that adds per-step values (reg:sum) has no constant to subtract a mean
            # with, and the sum of an empty sequence is 0 either way
            meta["target_mean"] = 0.0
        meta.update(per_step=data_cfg.op == "running-sum", image_shape=list(train.image_shape),
                    test_max_len=test_max_len)
        meta["sizes"]["test"] = len(test)
        bs = train_cfg.batch_size
        return DataBundle(train=sequence_batches(train, bs, shuffle=True, seed=train_cfg.seed),
                          val=sequence_batches(val, max(bs, 256), shuffle=False),
                          test=sequence_batches(test, max(bs, 256), shuffle=False) if len(test) else None,
                          input_shape=(None, *train.image_shape), num_outputs=meta["num_target_classes"], meta=meta)

    def make_task(self, meta: dict, output_shape: tuple):
        """One output: a regression; several per step for a sum: a distribution per digit; else a class
        per possible value (per step for running sums)."""
        per_step = meta["op"] == "running-sum"
        if output_shape[-1] == 1:
            return RegressTask(per_step=per_step, target_mean=meta["target_mean"], target_std=meta["target_std"])
        if meta["op"] == "sum" and len(output_shape) == 3:
            return SumOfValuesTask(output_shape[-1])
        return ValueClassifyTask(output_shape[-1], per_step=per_step)

    def predict(self, loaded, inputs: list[str], **options) -> list[str]:
        """The images, in order, are one sequence: its value (sum, product), or a value after each image.

        A sequence longer than the run's training sequences is refused when the model's classes cannot
        hold every value it may have (a ``cls`` head), and read with a warning otherwise."""
        meta, task = loaded.ckpt["meta"], loaded.task
        check_length(len(inputs), meta, task)
        size, fill = tuple(meta["image_shape"][1:]), digit_fill(meta)
        x = torch.from_numpy(np.stack([read_digit(p, size, fill) for p in inputs]))
        x = x[None, :, None]  # (T, H, W) -> (1, T, 1, H, W)
        lengths = torch.tensor([len(inputs)])
        with torch.inference_mode():
            out = loaded.model.run(x, lengths, need_state=False)
            values = task.values(out)[0]  # (1,) or (1, T) -> () or (T,)
        if task.per_step:
            return [f"{path}\t{int(round(float(v)))}" for path, v in zip(inputs, values.reshape(-1))]
        value = float(values)
        if isinstance(task, ValueClassifyTask):
            p = float(out.y[0].float().softmax(-1).max())
            return [f"{meta['op']}\t{int(value)}\tp={p:.3f}"]
        return [f"{meta['op']}\t{int(round(value))}\traw={value:.3f}"]

    def report_sections(self, ctx) -> list:
        return digits_sections(ctx)


def check_length(count: int, meta: dict, task) -> None:
    """A sequence of ``count`` digits for a run trained on ``meta``'s lengths: a DataError when its
    value may lie past the classes of a classification head (which would answer with a wrong value
    it can hold), a warning when it is longer than any training sequence."""
    op, trained = meta["op"], int(meta.get("max_len") or 0)
    if not trained or count <= trained:
        return
    if isinstance(task, ValueClassifyTask) and num_target_classes(op, count) > task.num_values:
        largest = num_target_classes(op, count) - 1
        raise DataError(f"{count} images: a sequence of {count} digits can have a {op} up to {largest:,}, but this "
                        f"run's classification head gives 0..{task.num_values - 1:,} (sequences of at most "
                        f"{plural(trained, 'digit')}); predict at most {plural(trained, 'image')}, or train a run with a longer "
                        f"--max-len or a regression head (--preset digits:head=reg)")
    log.warning("%d images: a sequence longer than this run's training sequences (at most %s), which it "
                "reads less well (`convrnn eval RUN --split test` shows the error per length)", count,
                plural(trained, "digit"))


# The share of the image a digit's ink spans along its longer side: MNIST centres each digit's 20x20 box
# in 28x28 pixels; scikit-learn's 8x8 digits fill their image.
MNIST_FILL = 20 / 28
WIDEST_DIGIT = 1.5  # width / height of the widest ink a single digit has (MNIST's are at most about 1.2)


def digit_fill(meta: dict) -> float:
    """The :data:`MNIST_FILL` of a run's digits: 1 for scikit-learn's 8x8 digits, MNIST's otherwise."""
    return 1.0 if meta.get("source") == FALLBACK_SOURCE else MNIST_FILL


def read_digit(path: str, size: tuple[int, int], fill: float = MNIST_FILL) -> np.ndarray:
    """One digit image as float32 ``(H, W)`` in 0..1 with bright ink (MNIST's polarity), at ``size``.

    An image of ``size`` is taken as it is, as a training digit. Any other is prepared the way MNIST's
    digits were: its ink contrast-stretched (background 0), cropped to its box, scaled with its aspect
    ratio kept so that the longer side spans ``fill`` of the image, and placed with its centre of mass at
    the centre, so that a tall "1" or a small digit on a large photo reads like a training digit.
    A blank image (all one gray, all black, all white) is a DataError naming the file: it shows no digit."""
    gray = load_gray(path)
    ink = read_ink(path, gray, what="digit")  # the fonts recipe's blank check: nothing stands out from the background
    top, bottom, left, right = ink_box(ink)
    if right - left > WIDEST_DIGIT * (bottom - top):
        log.warning("%s: its ink is %d pixels wide and %d high, wider than a digit: if it shows several digits, "
                    "give one image per digit (it is read as one)", path, right - left, bottom - top)
    if gray.shape == size:
        return to_ink(gray).astype(np.float32)
    if min(gray.shape) < 4:
        raise DataError(f"{path}: expected a digit image of {size[0]}x{size[1]} pixels (or larger, to be "
                        f"resized), got {gray.shape[0]}x{gray.shape[1]}")
    log.info("%s: fitted %dx%d -> %dx%d", path, *gray.shape, *size)
    return fit_digit(ink, size, fill)


def fit_digit(ink: np.ndarray, size: tuple[int, int], fill: float = MNIST_FILL) -> np.ndarray:
    """Stretched ink ``(H, W)`` with some ink -> float32 ``size``: the ink's box scaled, aspect kept, so that
    it spans at most ``fill`` of each side (one side exactly), its centre of mass at the image centre."""
    top, bottom, left, right = ink_box(ink)
    box = ink[top:bottom, left:right].astype(np.float32)  # (h, w)
    h, w = box.shape
    scale = min(fill * size[0] / h, fill * size[1] / w)
    new_h, new_w = min(size[0], max(1, round(h * scale))), min(size[1], max(1, round(w * scale)))
    digit = np.asarray(Image.fromarray(box).resize((new_w, new_h), Image.BOX if scale < 1 else Image.BILINEAR),
                       dtype=np.float32)  # mode "F": (h, w) -> (new_h, new_w)
    digit = np.clip(digit, 0.0, 1.0)
    mass = float(digit.sum()) or 1.0
    cy = float(digit.sum(axis=1) @ np.arange(new_h)) / mass
    cx = float(digit.sum(axis=0) @ np.arange(new_w)) / mass
    y0 = int(np.clip(round((size[0] - 1) / 2 - cy), 0, size[0] - new_h))
    x0 = int(np.clip(round((size[1] - 1) / 2 - cx), 0, size[1] - new_w))
    out = np.zeros(size, dtype=np.float32)
    out[y0:y0 + new_h, x0:x0 + new_w] = digit
    return out


# ----------------------------------------------------------------------------------------- report

def digits_sections(ctx, *, shown: int = WORST_SEQUENCES) -> list:
    """Error per sequence length, on the test split when it exists (lengths up to 2N), and the
    ``shown`` sequences with the largest error (their digit images, target and prediction)."""
    import matplotlib.pyplot as plt
    worst = []  # (-error, id, digits (L, H, W) ink, targets, predictions), largest error first
    values = getattr(ctx.task, "values", None)

    def keep_worst(out, batch) -> None:
        if values is None:
            return
        pred = values(out).double().cpu()                   # (B,) or (B, T)
        truth = batch["y_int"] if "y_int" in batch else batch["y"].round().long()
        lengths = batch["lengths"].tolist()
        per_step = pred.dim() == 2
        for k, n in enumerate(lengths):
            p = pred[k, :n] if per_step else pred[k:k + 1]
            t = truth[k, :n].double() if per_step else truth[k:k + 1].double()
            error = float((p - t).abs().sum())
            if len(worst) < shown or error > -worst[-1][0]:
                digits = batch["x"][k, :n, 0].numpy().copy()  # (B, T, 1, H, W) -> (L, H, W)
                worst.append((-error, sample_id(batch, k), digits, t.tolist(), p.tolist()))
                worst.sort(key=lambda w: w[0])  # stable: ties stay in data order
                del worst[shown:]

    metrics = evaluate_metrics(ctx, keep_worst).compute()
    lengths = sorted(int(k[len("mae_len"):]) for k in metrics if k.startswith("mae_len"))
    if not lengths:
        return [missing("Error per sequence length", "the digits evaluation reported no per-length metrics "
                        "(mae_lenL, exact_lenL)")]
    mae = [metrics[f"mae_len{n}"] for n in lengths]
    exact = [metrics.get(f"exact_len{n}", float("nan")) for n in lengths]
    train_max = int(ctx.ckpt["config"].get("data", {}).get("max_len", 0) or 0)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10.0, 3.2))
    ax1.plot(lengths, mae, marker="o")
    ax1.set_title("mean absolute error", fontsize=11)
    ax2.plot(lengths, exact, marker="o", color="tab:green")
    ax2.set_title("exact after rounding", fontsize=11)
    ax2.set_ylim(-0.02, 1.02)
    for ax in (ax1, ax2):
        ax.set_xlabel("sequence length", fontsize=10)
        ax.tick_params(labelsize=9)
        ax.grid(True, alpha=0.3)
        if train_max:
            ax.axvline(train_max + 0.5, color="0.5", linestyle="--", linewidth=1)
    fig.tight_layout()
    rows = [(n, f"{metrics.get(f'mse_len{n}', float('nan')):.4g}", f"{a:.4g}", f"{e:.3f}")
            for n, a, e in zip(lengths, mae, exact)]
    body = (figure_img(fig, "error per sequence length", css_class="wide")
            + note(f"Best checkpoint on the {ctx.split} split (at most {ctx.max_batches} batches); the dashed "
                   f"line marks the longest training length{f' ({train_max})' if train_max else ''}.")
            + table(["length", "mse", "mae", "exact"], rows, numeric=(0, 1, 2, 3)))
    sections = [Section("Error per sequence length", body, "per-length")]
    if worst:
        items = "".join(captioned("sequence", thumbnail(_side_by_side(digits), f"{ctx.split} sequence {sid}"),
                                  f'{esc(sid)}: target <b>{esc(_values_text(t))}</b>, predicted '
                                  f'<b>{esc(_values_text(q))}</b> (length {len(digits)}, error {-neg:.2f})')
                        for neg, sid, digits, t, q in worst)
        sections.append(Section("Worst sequences", items + note(
            f"The {len(worst)} {ctx.split} sequences with the largest absolute error (summed over the steps of a "
            f"running sum), largest first, among at most {ctx.max_batches} batches."), "worst-sequences"))
    return sections


def _side_by_side(images: np.ndarray, gap: int = 2) -> np.ndarray:
    """``(L, H, W)`` ink images -> one ``(H, L * (W + gap) - gap)`` ink image, left to right."""
    count, height, width = images.shape
    row = np.full((height, max(count * (width + gap) - gap, 1)), 0.25, dtype=np.float32)  # light gray gaps
    for i in range(count):
        row[:, i * (width + gap): i * (width + gap) + width] = images[i]
    return row


def _values_text(values: Sequence[float]) -> str:
    """Targets or predictions as text: whole numbers without decimals, others to two decimals."""
    return " ".join(str(int(round(v))) if abs(v - round(v)) < 1e-9 else f"{v:.2f}" for v in values)
